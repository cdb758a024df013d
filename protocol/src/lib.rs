//! The pushdown task protocol shared by the intermediary, the storage node and
//! the Wasm plugins.
//!
//! ```text
//! intermediary ──Task──▶ storage node ──GuestRequest + bytes──▶ Wasm pipeline
//!      ▲                      │ (prune by statistics)              │ parse → filter → partial aggregate
//!      └──── TaskOutput ◀─────┴──────────── Arrow IPC stream ◀─────┘
//! ```
//!
//! * To describe one unit of work (a Parquet row group or a CSV byte range) use [`Task`].
//! * To describe what the guest computes use [`Pushdown`]: a projection or a partial aggregate,
//!   and an optional predicate, written as [`Expr`] over the columns of the file.
//! * To hand the guest its input use [`GuestRequest`]; a CSV file's dialect travels in it
//!   as [`CsvDialect`].
//!
//! Every type is plain data that serializes to JSON with serde, so it is free of heavy
//! dependencies and builds for `wasm32-wasip1`. The version of this encoding is
//! [`PROTOCOL_VERSION`]; the ABI that carries it into the sandbox is documented in
//! `pushdown-plugins/ABI.md`.
#![warn(missing_docs)]

mod csv;
mod expr;
pub mod plugin;
mod task;

pub use csv::CsvDialect;
pub use expr::{
    AggregateFunction, ArithmeticOp, BloomBits, CmpOp, Expr, Literal, PartialAggregate,
};
pub use plugin::{PluginKind, PluginRef, PluginSignature};
pub use task::{
    decode_request, encode_request, fold_job_id, needed_columns, ByteRange, ColumnPages,
    FileFormat, FoldRef, FoldRequest, GuestRequest, PageSelection, Pushdown, RowRun, Stage,
    StageRun, Task, TaskUnit, PROTOCOL_VERSION,
};
