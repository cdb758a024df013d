//! The intermediary of pushdown: it plans SQL with Apache DataFusion, splits each plan
//! between the storage node (projection, predicate and partial aggregate, run in Wasm per
//! row group or CSV chunk) and itself (final aggregate, ORDER BY, LIMIT, joins), dispatches
//! the tasks and merges their partial results.
//!
//! ```text
//! SQL ─▶ DataFusion logical + physical plan ─▶ PushdownRule (the split)
//!                                                  │
//!        DataFusion final aggregate / sort / limit ◀── PushdownScanExec ──tasks──▶ StorageClient
//! ```
//!
//! * To run SQL over a local folder (embedded mode), use [`Engine::embedded`].
//! * To see the split and what a run cost, use [`Query::explain_split`] and [`Query::run_report`].
//! * To connect another storage node, implement [`StorageClient`].
#![warn(missing_docs)]

mod avg;
mod bloom;
mod capped;
mod client;
mod engine;
mod error;
pub mod plugins;
mod rule;
mod scan;
mod semi_join;
mod shared;
mod table;
pub mod tier;
mod translate;

pub use avg::FloatAvg;
pub use bloom::{BloomBuildExec, BloomJoinFilters};
pub use capped::MAX_FUNCTION_RESULT_BYTES;
pub use client::{LocalStorage, StorageClient};
pub use engine::{builtin_function_names, Engine, Query, SqlLimits, TierOptions};
pub use error::{Error, Result};
pub use rule::PushdownRule;
pub use scan::{Progress, PushdownScanExec, ScanMetrics};
pub use semi_join::SemiJoinBelowInnerJoin;
pub use shared::{SharedExec, SharedState, SharedSubplans, MAX_SHARED_BYTES};
pub use table::{PushdownSchema, PushdownTable};
