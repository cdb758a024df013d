//! The whole pipeline of one task: parse → filter → project or partial aggregate.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_select::filter::filter_record_batch;
use bytes::Bytes;
use pushdown_protocol::{decode_request, FileFormat, GuestRequest, Pushdown, TaskUnit};

use crate::aggregate::GroupedAggregator;
use crate::eval::{cast_checked, evaluate, predicate_mask};
use crate::parse::{parse_csv, parse_parquet};

/// Row counts of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Rows the parser produced.
    pub rows_in: u64,
    /// Rows that passed the predicate.
    pub rows_selected: u64,
}

/// Runs a decoded request over its input bytes.
///
/// # Errors
/// A message from the parser, the predicate or the aggregation (see [`crate::evaluate`]).
pub fn run_pipeline(
    request: &GuestRequest,
    input: Bytes,
) -> Result<(Vec<RecordBatch>, TaskStats), String> {
    let columns = request.task.needed_columns(&request.file_schema);
    let batches = match (&request.task.format, &request.task.unit) {
        (FileFormat::Parquet, TaskUnit::RowGroup(rg)) => parse_parquet(
            input,
            &request.segments,
            request.file_len,
            *rg,
            &columns,
            request.batch_size,
        )?,
        (FileFormat::Csv, TaskUnit::CsvChunk(_)) => parse_csv(
            input,
            &request.file_schema,
            &columns,
            request.batch_size,
            !request.csv_all_varchar,
        )?,
        (format, unit) => return Err(format!("a {format:?} file cannot be read as {unit:?}")),
    };
    let mut stats = TaskStats::default();
    let output_schema = Arc::new(request.task.output_schema.clone());
    let mut aggregator = match &request.task.pushdown {
        Pushdown::PartialAggregate {
            group_by,
            aggregates,
        } => Some(GroupedAggregator::try_new(
            group_by.clone(),
            aggregates.clone(),
            output_schema.clone(),
        )?),
        Pushdown::Project(_) => None,
    };
    let mut out = Vec::new();
    for batch in batches {
        stats.rows_in += batch.num_rows() as u64;
        let batch = match &request.task.predicate {
            Some(p) => {
                let mask = predicate_mask(p, &batch)?;
                filter_record_batch(&batch, &mask).map_err(|e| e.to_string())?
            }
            None => batch,
        };
        stats.rows_selected += batch.num_rows() as u64;
        if batch.num_rows() == 0 {
            continue;
        }
        match (&request.task.pushdown, aggregator.as_mut()) {
            (_, Some(agg)) => agg.update(&batch)?,
            (Pushdown::Project(exprs), None) => {
                let columns = exprs
                    .iter()
                    .zip(output_schema.fields())
                    .map(|((_, e), f)| {
                        cast_checked(
                            &evaluate(e, &batch)?.into_array(batch.num_rows())?,
                            f.data_type(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let options =
                    arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                out.push(
                    RecordBatch::try_new_with_options(output_schema.clone(), columns, &options)
                        .map_err(|e| e.to_string())?,
                );
            }
            (Pushdown::PartialAggregate { .. }, None) => {
                unreachable!("aggregator is set for aggregates")
            }
        }
    }
    if let Some(agg) = aggregator {
        out.push(agg.finish()?);
    }
    Ok((out, stats))
}

/// Encodes batches as an Arrow IPC stream (schema message, then one message per batch).
///
/// # Errors
/// A message when a batch does not match the schema.
pub fn encode_ipc(
    schema: &arrow_schema::Schema,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, String> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).map_err(|e| e.to_string())?;
    for b in batches {
        writer.write(b).map_err(|e| e.to_string())?;
    }
    writer.into_inner().map_err(|e| e.to_string())
}

/// Runs one task from its JSON request and input bytes, as the Wasm export does.
///
/// Returns `rows_in` (8 bytes, little-endian), `rows_selected` (8 bytes) and then the
/// Arrow IPC stream of the result batches.
///
/// # Errors
/// A one-line message when the request is malformed or any stage fails.
pub fn run_task(request: &[u8], input: Vec<u8>) -> Result<Vec<u8>, String> {
    let request = decode_request(request)?;
    let (batches, stats) = run_pipeline(&request, Bytes::from(input))?;
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&stats.rows_in.to_le_bytes());
    out.extend_from_slice(&stats.rows_selected.to_le_bytes());
    let ipc = encode_ipc(&request.task.output_schema, &batches)?;
    out.extend_from_slice(&ipc);
    Ok(out)
}
