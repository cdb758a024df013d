//! Runs a plugin natively through the same byte-level entry points the Wasm exports call,
//! encoding inputs the way the host does. For a plugin's own tests and for benchmarks
//! that compare native and Wasm runs of identical code.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, UInt32Array};
use arrow_schema::{Field, Schema};
use pushdown_protocol::plugin::NUM_GROUPS_KEY;

use crate::{entry, ipc, AggregateFunction, Error, Parser, Result, ScalarFunction};

fn batch_of(columns: Vec<ArrayRef>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let batch = if columns.is_empty() {
        RecordBatch::new_empty(schema.clone())
    } else {
        RecordBatch::try_new(schema.clone(), columns)?
    };
    Ok(ipc::write(&schema, &[batch])?)
}

fn first_column(ipc_bytes: &[u8]) -> Result<ArrayRef> {
    let batch = ipc::read_one(ipc_bytes)?;
    batch
        .columns()
        .first()
        .cloned()
        .ok_or_else(|| Error::new("the plugin returned no column"))
}

/// Evaluates a scalar function over `args` as the storage node would.
///
/// # Errors
/// The function's error, or a type or length mismatch the host would also refuse.
pub fn call_scalar<T: ScalarFunction>(args: &[ArrayRef]) -> Result<ArrayRef> {
    let input = batch_of(args.to_vec(), HashMap::new())?;
    first_column(&entry::scalar::<T>(&input)?)
}

/// Asks a scalar function's `can_skip` about a row group through the JSON the host sends.
///
/// # Errors
/// When the request does not round-trip through JSON.
pub fn can_skip<T: ScalarFunction>(request: &crate::SkipRequest) -> Result<bool> {
    let json = serde_json::to_vec(request).map_err(|e| Error::new(e.to_string()))?;
    Ok(entry::can_skip::<T>(&json)? == [1])
}

fn groups_meta(num_groups: usize) -> HashMap<String, String> {
    HashMap::from([(NUM_GROUPS_KEY.to_string(), num_groups.to_string())])
}

/// Computes an aggregate over `args` the distributed way: the rows are cut into `parts`
/// slices, each folded into a partial state (`update`, as on a storage node), the partial
/// states merged (`merge`, as in the intermediary) and finalized. Returns one value.
///
/// # Errors
/// The aggregate's error, or a type mismatch.
pub fn aggregate<T: AggregateFunction>(args: &[ArrayRef], parts: usize) -> Result<ArrayRef> {
    let n = args.first().map_or(0, |a| a.len());
    let parts = parts.max(1);
    let mut states: Vec<Option<Vec<u8>>> = Vec::new();
    for p in 0..parts {
        let (start, end) = (n * p / parts, n * (p + 1) / parts);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt32Array::from(vec![0u32; end - start]))];
        columns.extend(args.iter().map(|a| a.slice(start, end - start)));
        let out = first_column(&entry::update::<T>(&batch_of(columns, groups_meta(1))?)?)?;
        let out = out
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| Error::new("update returned no Binary state"))?;
        states.push(Some(out.value(0).to_vec()));
    }
    let states = BinaryArray::from_iter(states);
    let groups = UInt32Array::from(vec![0u32; states.len()]);
    let merged = entry::merge::<T>(&batch_of(
        vec![Arc::new(groups), Arc::new(states)],
        groups_meta(1),
    )?)?;
    let merged = first_column(&merged)?;
    first_column(&entry::finalize::<T>(&batch_of(
        vec![merged],
        HashMap::new(),
    )?)?)
}

/// Parses `chunk` (whose first line is line `first_line`) as the storage node would.
///
/// # Errors
/// The parser's error, or batches that do not match its declared schema.
pub fn parse<T: Parser>(chunk: &[u8], first_line: u64) -> Result<Vec<RecordBatch>> {
    Ok(ipc::read(&entry::parse::<T>(chunk, first_line)?)?.1)
}

/// The byte-level entry points the Wasm exports call (Arrow IPC in, Arrow IPC out, no
/// status byte), for benchmarks that time the same code natively and in Wasm.
pub mod raw {
    pub use crate::entry::{can_skip, finalize, merge, parse, scalar, update};
}

/// Encodes `columns` as the Arrow IPC input of a scalar call (or, with `num_groups`, of an
/// aggregate update whose first column is the `UInt32` group ids), as the host does.
///
/// # Errors
/// When the columns differ in length.
pub fn encode_input(columns: Vec<ArrayRef>, num_groups: Option<usize>) -> Result<Vec<u8>> {
    batch_of(columns, num_groups.map(groups_meta).unwrap_or_default())
}
