//! The storage node of pushdown: it holds the data and runs each pushdown task (one Parquet
//! row group or CSV chunk) as a sandboxed WebAssembly pipeline next to it.
//!
//! ```text
//! Task ─▶ prune by row-group statistics ─▶ read footer + needed column chunks (or the CSV chunk)
//!            │                                 │ straight into the instance's linear memory
//!            ▼                                 ▼
//!       (skipped)            wasmtime instance: parse → filter → project | partial aggregate
//!                                              │ Arrow IPC
//!                                              ▼
//!                                     TaskOutput { batches, metrics }
//! ```
//!
//! * To open a data directory and run tasks, use [`StorageNode`].
//! * To list or open tables without a node, use the functions of [`catalog`].
//! * To sniff a CSV file's dialect (or fix parts of it per table), use [`dialect`].
//! * To run your own module under the same limits, use [`Sandbox`] and [`PluginModule`].
//! * To register, list and fetch user plugins, use [`Registry`].
#![warn(missing_docs)]

pub mod audit;
pub mod catalog;
pub mod dialect;
mod error;
pub mod fold;
mod node;
pub mod passthrough;
pub mod registry;
pub mod result_cache;
mod sandbox;

pub use catalog::{FileInfo, TableInfo, TableSource};
pub use dialect::{CsvOptions, CsvOverrides};
pub use error::{Error, Result};
pub use node::{
    decode_result, task_context, NodeOptions, StorageNode, TaskMetrics, TaskOutput, BUILTIN_PLUGIN,
    BUILTIN_WASM,
};
pub use pushdown_footer::prune::row_group_may_match;
pub use registry::{RegisteredPlugin, Registry};
pub use sandbox::{
    cache_root, checkpointable, CallOutput, GlobalValue, HeldInstance, InstanceSnapshot,
    PluginModule, Precompiled, Sandbox, SandboxConfig, ABI_VERSION, RANDOM_STREAM,
};
