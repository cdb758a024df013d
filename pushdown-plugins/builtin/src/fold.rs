//! Folding the partial aggregates of many tasks into one set of states held in this
//! instance: the storage node's side of checkpointed aggregates (see
//! `pushdown-plugins/ABI.md`, "Checkpointed aggregates").
//!
//! [`fold`] merges one task's partial output (an Arrow IPC stream of the task's partial
//! output schema) into the states, with the merge step of each aggregate
//! ([`crate::merge_aggregator`]); [`drain`] returns the merged states and empties them.
//! The states live only in the instance's linear memory, so a host that snapshots that
//! memory between calls and restores it into a fresh instance of the same module resumes
//! the fold exactly where it was: nothing here knows it is being persisted.

use std::cell::RefCell;
use std::io::Cursor;

use arrow_ipc::reader::StreamReader;
use pushdown_protocol::{FoldRequest, PROTOCOL_VERSION};

use crate::aggregate::GroupedAggregator;
use crate::pipeline::{encode_ipc, merge_aggregator};

struct Folded {
    /// The encoded request of the first fold: every later one must be equal.
    request: Vec<u8>,
    output_schema: arrow_schema::Schema,
    merger: GroupedAggregator,
    /// Partial outputs folded so far.
    folds: u64,
}

thread_local! {
    static FOLDED: RefCell<Option<Folded>> = const { RefCell::new(None) };
}

/// Merges `partial` (an Arrow IPC stream of `request`'s partial output schema) into the
/// states this instance holds. Returns the number of partial outputs folded so far
/// (8 bytes, little-endian).
///
/// # Errors
/// A message when the request is malformed, is for another aggregate than the states
/// held, or the stream does not match its schema; the states are then unchanged only
/// when the error comes before the first batch is merged, so a host drops the instance
/// after any error.
pub fn fold(request: &[u8], partial: &[u8]) -> Result<Vec<u8>, String> {
    let decoded: FoldRequest =
        serde_json::from_slice(request).map_err(|e| format!("malformed fold request: {e}"))?;
    if decoded.version != PROTOCOL_VERSION {
        return Err(format!(
            "fold request version {} is not the supported version {PROTOCOL_VERSION}",
            decoded.version
        ));
    }
    FOLDED.with(|cell| {
        let mut cell = cell.borrow_mut();
        let folded = match cell.as_mut() {
            Some(f) if f.request != request => {
                return Err("this instance folds another aggregate".to_string())
            }
            Some(f) => f,
            None => cell.insert(Folded {
                request: request.to_vec(),
                merger: merge_aggregator(&decoded.pushdown, &decoded.output_schema)?,
                output_schema: decoded.output_schema.clone(),
                folds: 0,
            }),
        };
        let reader = StreamReader::try_new(Cursor::new(partial), None)
            .map_err(|e| format!("malformed partial aggregate: {e}"))?;
        let fields = |s: &arrow_schema::Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        if fields(&reader.schema()) != fields(&folded.output_schema) {
            return Err("the partial aggregate's columns differ from the fold's".to_string());
        }
        for batch in reader {
            crate::host::check_deadline();
            let batch = batch.map_err(|e| format!("malformed partial aggregate: {e}"))?;
            let batch = batch
                .with_schema(std::sync::Arc::new(folded.output_schema.clone()))
                .map_err(|e| e.to_string())?;
            folded.merger.update(&batch)?;
        }
        folded.folds += 1;
        Ok(folded.folds.to_le_bytes().to_vec())
    })
}

/// The merged states as an Arrow IPC stream of one batch of the partial output schema,
/// after which the instance holds none.
///
/// # Errors
/// A message when nothing was folded, or a state does not cast to its output type.
pub fn drain() -> Result<Vec<u8>, String> {
    let folded = FOLDED
        .with(|cell| cell.borrow_mut().take())
        .ok_or_else(|| "nothing was folded in this instance".to_string())?;
    let batch = folded.merger.finish()?;
    encode_ipc(&folded.output_schema, &[batch])
}
