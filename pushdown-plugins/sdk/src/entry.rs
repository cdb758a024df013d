//! The entry points behind the exports, over bytes: the same code runs in the sandbox
//! and natively (see [`crate::testing`]).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Schema};
use pushdown_protocol::plugin::{ColumnSignature, NUM_GROUPS_KEY};
use pushdown_protocol::{PluginKind, PluginSignature};

use crate::state::{decode_state, encode_state};
use crate::{ipc, AggregateFunction, Parser, ScalarFunction, Value};

/// Groups one update or merge call may name; more is a malformed input.
const MAX_GROUPS: usize = 1 << 24;

fn signature_json(s: PluginSignature) -> String {
    serde_json::to_string(&s).expect("a signature serializes")
}

/// The JSON signature of a scalar function.
pub fn scalar_signature<T: ScalarFunction>() -> String {
    signature_json(PluginSignature {
        kind: PluginKind::Scalar,
        name: T::NAME.to_string(),
        arguments: T::arguments().iter().map(ToString::to_string).collect(),
        returns: Some(T::returns().to_string()),
        columns: Vec::new(),
    })
}

/// The JSON signature of an aggregate.
pub fn aggregate_signature<T: AggregateFunction>() -> String {
    signature_json(PluginSignature {
        kind: PluginKind::Aggregate,
        name: T::NAME.to_string(),
        arguments: T::arguments().iter().map(ToString::to_string).collect(),
        returns: Some(T::Output::data_type().to_string()),
        columns: Vec::new(),
    })
}

/// The JSON signature of a parser.
pub fn parser_signature<T: Parser>() -> String {
    let columns = T::schema()
        .fields()
        .iter()
        .map(|f| ColumnSignature {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect();
    signature_json(PluginSignature {
        kind: PluginKind::Parser,
        name: T::NAME.to_string(),
        arguments: Vec::new(),
        returns: None,
        columns,
    })
}

fn check_types(what: &str, columns: &[ArrayRef], want: &[DataType]) -> Result<(), String> {
    if columns.len() != want.len() {
        return Err(format!(
            "{what}: expected {} argument column(s), got {}",
            want.len(),
            columns.len()
        ));
    }
    for (i, (c, t)) in columns.iter().zip(want).enumerate() {
        if c.data_type() != t {
            return Err(format!(
                "{what}: argument {} is {}, expected {t}",
                i + 1,
                c.data_type()
            ));
        }
    }
    Ok(())
}

fn one_column_ipc(name: &str, column: ArrayRef) -> Result<Vec<u8>, String> {
    let schema = ipc::one_column(name, column.data_type().clone());
    let batch = RecordBatch::try_new(schema.clone(), vec![column]).map_err(|e| e.to_string())?;
    ipc::write(&schema, &[batch])
}

/// `pushdown_scalar`: IPC of the argument columns in, IPC of the result column out.
pub fn scalar<T: ScalarFunction>(input: &[u8]) -> Result<Vec<u8>, String> {
    let batch = ipc::read_one(input)?;
    check_types(T::NAME, batch.columns(), &T::arguments())?;
    let out = T::evaluate(batch.columns()).map_err(|e| e.0)?;
    if out.len() != batch.num_rows() {
        return Err(format!(
            "{} returned {} values for {} rows",
            T::NAME,
            out.len(),
            batch.num_rows()
        ));
    }
    if out.data_type() != &T::returns() {
        return Err(format!(
            "{} returned {}, but declares {}",
            T::NAME,
            out.data_type(),
            T::returns()
        ));
    }
    one_column_ipc("result", out)
}

/// `pushdown_can_skip`: a [`crate::SkipRequest`] as JSON in, one byte out (`1`: skip).
pub fn can_skip<T: ScalarFunction>(input: &[u8]) -> Result<Vec<u8>, String> {
    let request: crate::SkipRequest = serde_json::from_slice(input)
        .map_err(|e| format!("{}: malformed can_skip request: {e}", T::NAME))?;
    Ok(vec![u8::from(T::can_skip(&request))])
}

fn groups_of(batch: &RecordBatch) -> Result<(usize, &UInt32Array), String> {
    let num_groups: usize = batch
        .schema_ref()
        .metadata()
        .get(NUM_GROUPS_KEY)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("input lacks the schema metadata {NUM_GROUPS_KEY}"))?;
    if num_groups > MAX_GROUPS {
        return Err(format!(
            "{num_groups} groups is over the limit of {MAX_GROUPS}"
        ));
    }
    let groups = batch
        .columns()
        .first()
        .and_then(|c| c.as_primitive_opt::<UInt32Type>())
        .ok_or("the first input column must be the UInt32 group ids")?;
    if let Some(g) = groups.values().iter().find(|&&g| g as usize >= num_groups) {
        return Err(format!(
            "group id {g} is out of range for {num_groups} groups"
        ));
    }
    Ok((num_groups, groups))
}

fn states_ipc<T: AggregateFunction>(states: &[T::State]) -> Result<Vec<u8>, String> {
    let encoded: Vec<Vec<u8>> = states.iter().map(encode_state).collect();
    let array = BinaryArray::from_iter_values(encoded.iter());
    one_column_ipc("state", Arc::new(array))
}

/// `pushdown_aggregate_update`: IPC of `[group: UInt32, args...]` with the number of groups
/// in the schema metadata in, IPC of one `Binary` state per group out.
pub fn update<T: AggregateFunction>(input: &[u8]) -> Result<Vec<u8>, String> {
    let batch = ipc::read_one(input)?;
    let (num_groups, groups) = groups_of(&batch)?;
    let args = &batch.columns()[1..];
    check_types(T::NAME, args, &T::arguments())?;
    let mut states: Vec<T::State> = (0..num_groups).map(|_| T::init()).collect();
    if num_groups == 1 {
        T::update(&mut states[0], args).map_err(|e| e.0)?;
    } else {
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); num_groups];
        for (i, &g) in groups.values().iter().enumerate() {
            rows[g as usize].push(i as u32);
        }
        for (state, rows) in states.iter_mut().zip(rows) {
            if rows.is_empty() {
                continue;
            }
            let indices = UInt32Array::from(rows);
            let taken = args
                .iter()
                .map(|a| arrow_select::take::take(a.as_ref(), &indices, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            T::update(state, &taken).map_err(|e| e.0)?;
        }
    }
    states_ipc::<T>(&states)
}

/// `pushdown_aggregate_merge`: IPC of `[group: UInt32, state: Binary]` with the number of
/// groups in the schema metadata in, IPC of one merged `Binary` state per group out (the
/// initial state for a group without input).
pub fn merge<T: AggregateFunction>(input: &[u8]) -> Result<Vec<u8>, String> {
    let batch = ipc::read_one(input)?;
    let (num_groups, groups) = groups_of(&batch)?;
    let partials = batch
        .columns()
        .get(1)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or("the second input column must be the Binary states")?;
    let mut states: Vec<T::State> = (0..num_groups).map(|_| T::init()).collect();
    for (i, &g) in groups.values().iter().enumerate() {
        if partials.is_null(i) {
            continue;
        }
        let other = decode_state::<T::State>(partials.value(i)).map_err(|e| e.0)?;
        T::merge(&mut states[g as usize], other).map_err(|e| e.0)?;
    }
    states_ipc::<T>(&states)
}

/// `pushdown_aggregate_finalize`: IPC of `[state: Binary]` in, IPC of the result column out.
pub fn finalize<T: AggregateFunction>(input: &[u8]) -> Result<Vec<u8>, String> {
    let batch = ipc::read_one(input)?;
    let partials = batch
        .columns()
        .first()
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or("the input column must be the Binary states")?;
    let mut values = Vec::with_capacity(partials.len());
    for i in 0..partials.len() {
        let state = if partials.is_null(i) {
            T::init()
        } else {
            decode_state::<T::State>(partials.value(i)).map_err(|e| e.0)?
        };
        values.push(T::finalize(state).map_err(|e| e.0)?);
    }
    one_column_ipc("result", T::Output::into_array(values))
}

/// `pushdown_parse`: the chunk's bytes in, IPC of the parsed batches out.
pub fn parse<T: Parser>(chunk: &[u8], first_line: u64) -> Result<Vec<u8>, String> {
    let schema: Schema = T::schema();
    let batches = T::parse(chunk, first_line).map_err(|e| e.0)?;
    for b in &batches {
        let types = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        if types(b.schema_ref()) != types(&schema) {
            return Err(format!(
                "{} produced a batch of schema {:?}, but declares {:?}",
                T::NAME,
                b.schema_ref(),
                schema
            ));
        }
    }
    let batches = batches
        .into_iter()
        .map(|b| RecordBatch::try_new(Arc::new(schema.clone()), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    ipc::write(&schema, &batches)
}
