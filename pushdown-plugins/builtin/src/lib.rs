//! The built-in pushdown pipeline that storage nodes run inside a wasmtime sandbox.
//!
//! ```text
//! GuestRequest (JSON) + input bytes
//!      │
//!      ▼
//! parse: Parquet row group (footer + column chunks) | CSV chunk (whole records)
//!      │  Arrow record batches, only the projected columns
//!      ▼
//! filter: the predicate, with SQL three-valued logic (rows where it is not true are dropped)
//!      ▼
//! project | partial aggregate (COUNT, SUM, MIN, MAX with GROUP BY)
//!      │
//!      ▼
//! Arrow IPC stream of the result batches
//! ```
//!
//! The same code builds natively (for benchmarks and tests) and for `wasm32-wasip1`, where
//! [`abi`] exports it under the ABI written down in `pushdown-plugins/ABI.md`.
//!
//! * To run a whole task natively, use [`run_task`].
//! * To evaluate an expression over a record batch, use [`evaluate`].
//! * To decode one Parquet row group or CSV chunk, use [`parse_parquet`] / [`parse_csv`].
#![warn(missing_docs)]

mod aggregate;
mod csv_fast;
mod eval;
pub mod fold;
pub mod fuzz;
mod groups;
mod host;
mod mem;
mod narrow;
mod parse;
mod pipeline;

#[cfg(target_arch = "wasm32")]
pub mod abi;

pub use aggregate::GroupedAggregator;
pub use eval::{evaluate, evaluate_to_array, literal_array, Value};
pub use host::{set_native_host, NativeHost, PluginOp};
pub use parse::{parse_csv, parse_parquet};
pub use pipeline::{encode_ipc, merge_aggregator, run_pipeline, run_stage, run_task, TaskStats};

/// Version of the plugin ABI this crate exports (see `pushdown-plugins/ABI.md`).
pub const ABI_VERSION: u32 = 1;

#[cfg(test)]
mod tests;
