//! The whole pipeline of one task: parse → filter → project or partial aggregate.

use std::sync::Arc;

use arrow_array::BooleanArray;
use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_select::filter::filter_record_batch;
use bytes::Bytes;
use pushdown_protocol::{
    decode_request, AggregateFunction, Expr, FileFormat, GuestRequest, PartialAggregate, Pushdown,
    Stage, StageRun, TaskUnit,
};

use crate::aggregate::GroupedAggregator;
use crate::eval::{cast_checked, evaluate, predicate_mask, widen_decimals};
use crate::parse::{parse_csv, parse_parquet};

/// Row counts of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Rows the parser produced.
    pub rows_in: u64,
    /// Rows that passed the predicate.
    pub rows_selected: u64,
    /// CSV with a lenient dialect: records padded with NULL for missing fields.
    pub rows_repaired: u64,
}

/// Runs a decoded request over its input bytes.
///
/// # Errors
/// A message from the parser, the predicate or the aggregation (see [`crate::evaluate`]).
pub fn run_pipeline(
    request: &GuestRequest,
    input: Bytes,
) -> Result<(Vec<RecordBatch>, TaskStats), String> {
    let (batches, rows_repaired) = parse_input(request, input)?;
    let mut stats = TaskStats {
        rows_repaired,
        ..TaskStats::default()
    };
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
    // Rows still wanted by a LIMIT (projections only).
    let mut wanted = match (&request.task.pushdown, request.task.limit) {
        (Pushdown::Project(_), Some(limit)) => limit,
        _ => u64::MAX,
    };
    for batch in batches {
        if wanted == 0 {
            break;
        }
        crate::host::check_deadline();
        stats.rows_in += batch.num_rows() as u64;
        // An aggregate over most of the batch reads the selected rows through a mask
        // rather than a filtered copy of every column.
        let keep_mask = aggregator
            .as_ref()
            .is_some_and(GroupedAggregator::takes_mask);
        let (batch, mask) = select_batch(request, batch, keep_mask)?;
        let selected = mask.as_ref().map_or(batch.num_rows(), |m| m.true_count());
        stats.rows_selected += selected as u64;
        if selected == 0 {
            continue;
        }
        match (&request.task.pushdown, aggregator.as_mut()) {
            (_, Some(agg)) => agg.update_selected(&batch, mask.as_ref())?,
            (Pushdown::Project(exprs), None) => {
                let batch = if (batch.num_rows() as u64) > wanted {
                    batch.slice(0, wanted as usize)
                } else {
                    batch
                };
                wanted -= batch.num_rows() as u64;
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

/// Columns to read dictionary-encoded (string columns only; the parser checks that the
/// chunk is): those used only as plain GROUP BY keys, plain projections (cast to the
/// output type at the end, selected rows only) and the column of predicates that
/// [`crate::eval::dictionary_evaluable`] evaluates once per distinct value. Such a
/// column's strings are never copied row by row before the rows are selected. A column
/// any other expression reads stays plain.
pub(crate) fn dictionary_keys(task: &pushdown_protocol::Task) -> Vec<String> {
    let mut wanted = std::collections::BTreeSet::new();
    let mut plain = std::collections::BTreeSet::new();
    let mut bare = |e: &Expr, plain: &mut std::collections::BTreeSet<String>| match e {
        Expr::Column(c) => {
            wanted.insert(c.clone());
        }
        e => e.collect_columns(plain),
    };
    match &task.pushdown {
        Pushdown::PartialAggregate {
            group_by,
            aggregates,
        } => {
            for (_, a) in aggregates {
                a.argument.collect_columns(&mut plain);
            }
            for (_, e) in group_by {
                bare(e, &mut plain);
            }
        }
        Pushdown::Project(exprs) => {
            for (_, e) in exprs {
                bare(e, &mut plain);
            }
        }
    }
    fn predicate(
        e: &Expr,
        wanted: &mut std::collections::BTreeSet<String>,
        plain: &mut std::collections::BTreeSet<String>,
    ) {
        match e {
            Expr::And(operands) | Expr::Or(operands) => {
                for o in operands {
                    predicate(o, wanted, plain);
                }
            }
            Expr::Not(o) => predicate(o, wanted, plain),
            e => match crate::eval::dictionary_evaluable(e) {
                Some(c) => {
                    wanted.insert(c.to_string());
                }
                None => e.collect_columns(plain),
            },
        }
    }
    if let Some(p) = &task.predicate {
        predicate(p, &mut wanted, &mut plain);
    }
    wanted.difference(&plain).cloned().collect()
}

/// Parse: the task's row group or CSV chunk as record batches of the needed columns, and
/// the records a lenient CSV dialect repaired.
fn parse_input(request: &GuestRequest, input: Bytes) -> Result<(Vec<RecordBatch>, u64), String> {
    let columns = request.task.needed_columns(&request.file_schema);
    match (&request.task.format, &request.task.unit) {
        (FileFormat::Parquet, TaskUnit::RowGroup(rg)) => parse_parquet(
            input,
            &request.segments,
            request.file_len,
            request.footer_row_group.unwrap_or(*rg),
            &columns,
            request.batch_size,
            request.pages.as_ref(),
            &dictionary_keys(&request.task),
            true,
        )
        .map(|b| (b, 0)),
        (FileFormat::Csv, TaskUnit::CsvChunk(_)) => parse_csv(
            input,
            &request.file_schema,
            &columns,
            request.batch_size,
            !request.csv_all_varchar,
            &request.csv,
        ),
        (FileFormat::Plugin(parser), TaskUnit::Lines { .. }) => {
            parse_ipc(input, &request.file_schema, &columns, parser).map(|b| (b, 0))
        }
        (format, unit) => Err(format!("a {format:?} file cannot be read as {unit:?}")),
    }
}

/// The Arrow IPC stream a parser plugin made of the chunk (the storage node ran it), as
/// batches of the needed columns; its schema must be the parser's declared one.
fn parse_ipc(
    input: Bytes,
    file_schema: &arrow_schema::Schema,
    columns: &[String],
    parser: &pushdown_protocol::PluginRef,
) -> Result<Vec<RecordBatch>, String> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(input), None)
        .map_err(|e| format!("parser {parser} returned malformed Arrow IPC: {e}"))?;
    let types = |s: &arrow_schema::Schema| {
        s.fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect::<Vec<_>>()
    };
    if types(&reader.schema()) != types(file_schema) {
        return Err(format!(
            "parser {parser} returned columns of other types than it declares"
        ));
    }
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| file_schema.index_of(c).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let projected = Arc::new(file_schema.project(&indices).map_err(|e| e.to_string())?);
    reader
        .map(|b| {
            let b = b.map_err(|e| format!("parser {parser} returned malformed Arrow IPC: {e}"))?;
            let columns = indices.iter().map(|&i| b.column(i).clone()).collect();
            let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
            RecordBatch::try_new_with_options(projected.clone(), columns, &options)
                .map_err(|e| format!("parser {parser}: {e}"))
        })
        .collect()
}

/// Filter: the rows of `batch` where the task's predicate is true (all rows without one),
/// 64-bit decimals the parser kept widened to the 128-bit type SQL gave them, for the
/// selected rows only.
fn filter_batch(request: &GuestRequest, batch: RecordBatch) -> Result<RecordBatch, String> {
    select_batch(request, batch, false).and_then(|(batch, _)| widen_decimals(batch))
}

/// Share of a batch's rows (in quarters) the predicate must select for [`select_batch`]
/// to hand the batch on whole with a mask rather than copy the selected rows out.
const MASK_QUARTERS: usize = 3;

/// The rows of `batch` where the task's predicate is true: as a filtered batch and
/// `None`, or, when `keep_mask` and at least three quarters but not all rows are
/// selected, as the whole batch and the mask of the selected rows (a consumer that can
/// skip rows then saves copying every column; TPC-H Q1 selects 98.6 %). `Decimal64`
/// columns stay as the parser read them: [`evaluate`] widens a column it reads, and an
/// aggregate argument may be computed in 64 bits ([`crate::narrow`]).
fn select_batch(
    request: &GuestRequest,
    batch: RecordBatch,
    keep_mask: bool,
) -> Result<(RecordBatch, Option<BooleanArray>), String> {
    let (batch, mask) = match &request.task.predicate {
        Some(Expr::And(conjuncts)) => {
            select_conjuncts(conjuncts, batch, keep_mask, Some(&request.task.pushdown))?
        }
        Some(p) => {
            let mask = predicate_mask(p, &batch)?;
            finish_selection(batch, Some(mask), keep_mask, Some(&request.task.pushdown))?
        }
        None => (batch, None),
    };
    Ok((batch, mask))
}

/// The batch and mask of a selection whose rows `mask` (None: all) selects, as
/// [`select_batch`] returns it.
fn finish_selection(
    batch: RecordBatch,
    mask: Option<BooleanArray>,
    keep_mask: bool,
    pushdown: Option<&Pushdown>,
) -> Result<(RecordBatch, Option<BooleanArray>), String> {
    let n = batch.num_rows();
    match mask {
        Some(mask) if mask.true_count() < n => {
            if keep_mask && mask.true_count() * 4 >= n * MASK_QUARTERS {
                Ok((batch, Some(mask)))
            } else {
                let batch = read_later(batch, &[], pushdown)?;
                let batch = filter_record_batch(&batch, &mask).map_err(|e| e.to_string())?;
                Ok((batch, None))
            }
        }
        _ => Ok((batch, None)),
    }
}

/// `batch` cut down, before a filter copies its rows, to the columns that the `later`
/// conjuncts or `pushdown` read (a column only an earlier conjunct read is not copied:
/// TPC-H Q6's `l_shipdate` after its range, `l_quantity` after `< 24`). Unchanged when
/// `pushdown` is `None` (the caller keeps every column) or every column is still read; at
/// least one column is kept, for the row count.
///
/// # Errors
/// None in practice: the indices come from the batch's own schema.
fn read_later(
    batch: RecordBatch,
    later: &[Expr],
    pushdown: Option<&Pushdown>,
) -> Result<RecordBatch, String> {
    let Some(pushdown) = pushdown else {
        return Ok(batch);
    };
    let mut names = std::collections::BTreeSet::new();
    later.iter().for_each(|e| e.collect_columns(&mut names));
    pushdown.collect_columns(&mut names);
    let mut keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| names.contains(f.name()))
        .map(|(i, _)| i)
        .collect();
    if keep.len() == batch.num_columns() {
        return Ok(batch);
    }
    if keep.is_empty() {
        keep.push(0);
    }
    batch.project(&keep).map_err(|e| e.to_string())
}

/// The rows of `batch` where every conjunct is true (test access to [`select_conjuncts`]).
#[cfg(test)]
pub(crate) fn filter_conjuncts(
    conjuncts: &[Expr],
    batch: RecordBatch,
    pushdown: Option<&Pushdown>,
) -> Result<RecordBatch, String> {
    select_conjuncts(conjuncts, batch, false, pushdown).map(|(batch, _)| batch)
}

/// The rows of `batch` where every conjunct is true, evaluated in order: once the rows
/// still selected are at most half of the batch, the batch is cut down to them and the
/// next conjuncts run over those rows only (a selective conjunct first makes a costly
/// one later, such as a join filter's `IN` list, cheap). Same rows as evaluating the
/// whole `AND` (a NULL is false either way); a conjunct that would fail only on rows an
/// earlier one removed no longer fails, as in DataFusion and DuckDB.
/// The selection is returned as [`select_batch`] returns it.
fn select_conjuncts(
    conjuncts: &[Expr],
    mut batch: RecordBatch,
    keep_mask: bool,
    pushdown: Option<&Pushdown>,
) -> Result<(RecordBatch, Option<BooleanArray>), String> {
    let mut pending: Option<BooleanArray> = None;
    for (i, conjunct) in conjuncts.iter().enumerate() {
        if batch.num_rows() == 0 {
            return Ok((batch, None));
        }
        let mask = predicate_mask(conjunct, &batch)?;
        let mask = match pending.take() {
            Some(earlier) => {
                arrow_arith::boolean::and(&earlier, &mask).map_err(|e| e.to_string())?
            }
            None => mask,
        };
        if mask.true_count() * 2 <= batch.num_rows() {
            batch = read_later(batch, &conjuncts[i + 1..], pushdown)?;
            batch = filter_record_batch(&batch, &mask).map_err(|e| e.to_string())?;
        } else {
            pending = Some(mask);
        }
    }
    finish_selection(batch, pending, keep_mask, pushdown)
}

/// The task's partial aggregator, or an error naming `stage` when the task has none.
fn partial_aggregator(request: &GuestRequest, stage: Stage) -> Result<GroupedAggregator, String> {
    match &request.task.pushdown {
        Pushdown::PartialAggregate {
            group_by,
            aggregates,
        } => GroupedAggregator::try_new(
            group_by.clone(),
            aggregates.clone(),
            Arc::new(request.task.output_schema.clone()),
        ),
        Pushdown::Project(_) => Err(format!(
            "stage {} needs a task with a partial aggregate",
            stage.name()
        )),
    }
}

/// The aggregator that merges partial states of `pushdown`'s aggregate (batches of
/// `schema`, the partial output schema) into one batch of the same schema: group columns
/// and states are read by their output names; COUNT states are summed, SUM, MIN and MAX
/// states folded with the same function (the merge step of a distributed aggregate), a
/// user plugin's states with its `pushdown_aggregate_merge`.
///
/// # Errors
/// A message when `pushdown` is not a partial aggregate or a state type is unsupported.
pub fn merge_aggregator(
    pushdown: &Pushdown,
    schema: &arrow_schema::Schema,
) -> Result<GroupedAggregator, String> {
    let Pushdown::PartialAggregate {
        group_by,
        aggregates,
    } = pushdown
    else {
        return Err("merging needs a partial aggregate".into());
    };
    let name = |i: usize| schema.field(i).name().clone();
    let merge_by = (0..group_by.len())
        .map(|i| (name(i), Expr::Column(name(i))))
        .collect();
    let merges = aggregates
        .iter()
        .enumerate()
        .map(|(i, (_, a))| {
            let function = match &a.function {
                AggregateFunction::Count => AggregateFunction::Sum,
                f => f.clone(),
            };
            let argument = Expr::Column(name(group_by.len() + i));
            Ok((
                name(group_by.len() + i),
                PartialAggregate {
                    function,
                    argument,
                    state_type: a.state_type.clone(),
                },
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    GroupedAggregator::merging(merge_by, merges, Arc::new(schema.clone()))
}

/// Rows per partial state in the merge stage's input: the selected rows are aggregated in
/// slices of this many rows, as if each came from its own task.
const MERGE_SLICE_ROWS: usize = 8192;

/// Runs `run.stage` of the request `run.repeat` times over input prepared once by the
/// stages before it. Returns the row counts of the stage's input (`rows_in`) and of the
/// selected rows; nothing else leaves the call, so a benchmark times the stage alone.
///
/// # Errors
/// As [`run_pipeline`]; also when an aggregate stage is asked of a task without one.
pub fn run_stage(request: &GuestRequest, input: Bytes, run: StageRun) -> Result<TaskStats, String> {
    let count = |batches: &[RecordBatch]| batches.iter().map(|b| b.num_rows() as u64).sum();
    if run.stage == Stage::Parse {
        let mut stats = TaskStats::default();
        for _ in 0..run.repeat {
            let (parsed, _) = parse_input(request, input.clone())?;
            stats.rows_in = count(&parsed);
            stats.rows_selected = stats.rows_in;
        }
        return Ok(stats);
    }
    let (parsed, _) = parse_input(request, input)?;
    let rows_in = count(&parsed);
    if run.stage == Stage::Filter {
        let mut rows_selected = 0;
        for _ in 0..run.repeat {
            let mut selected = 0;
            for batch in &parsed {
                crate::host::check_deadline();
                selected += filter_batch(request, batch.clone())?.num_rows() as u64;
            }
            rows_selected = selected;
        }
        return Ok(TaskStats {
            rows_in,
            rows_selected,
            rows_repaired: 0,
        });
    }
    // The aggregate reads the selected rows as a task's does, 64-bit decimals as parsed.
    let selected = parsed
        .into_iter()
        .map(|b| select_batch(request, b, false).map(|(b, _)| b))
        .collect::<Result<Vec<_>, _>>()?;
    let rows_selected = count(&selected);
    let stats = TaskStats {
        rows_in,
        rows_selected,
        rows_repaired: 0,
    };
    if run.stage == Stage::PartialAggregate {
        for _ in 0..run.repeat {
            let mut aggregator = partial_aggregator(request, run.stage)?;
            for batch in &selected {
                crate::host::check_deadline();
                aggregator.update(batch)?;
            }
            aggregator.finish()?;
        }
        return Ok(stats);
    }
    let mut partials = Vec::new();
    for batch in &selected {
        for start in (0..batch.num_rows()).step_by(MERGE_SLICE_ROWS) {
            let len = MERGE_SLICE_ROWS.min(batch.num_rows() - start);
            let mut aggregator = partial_aggregator(request, run.stage)?;
            aggregator.update(&batch.slice(start, len))?;
            partials.push(aggregator.finish()?);
        }
    }
    for _ in 0..run.repeat {
        let mut merger = merge_aggregator(&request.task.pushdown, &request.task.output_schema)?;
        for partial in &partials {
            crate::host::check_deadline();
            merger.update(partial)?;
        }
        merger.finish()?;
    }
    Ok(TaskStats {
        rows_in: count(&partials),
        rows_selected: count(&partials),
        rows_repaired: 0,
    })
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
/// When the request names a stage ([`GuestRequest::stage`], benchmarks only), runs that
/// stage with [`run_stage`] and returns the 16-byte header alone. Otherwise returns `rows_in` (8 bytes, little-endian), `rows_selected` (8 bytes),
/// when the request's CSV dialect is lenient `rows_repaired` (8 bytes), and then the Arrow
/// IPC stream of the result batches.
///
/// # Errors
/// A one-line message when the request is malformed or any stage fails.
pub fn run_task(request: &[u8], mut input: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut request = decode_request(request)?;
    request.restore_blobs(&mut input)?;
    if let Some(run) = request.stage {
        let stats = run_stage(&request, Bytes::from(input), run)?;
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&stats.rows_in.to_le_bytes());
        out.extend_from_slice(&stats.rows_selected.to_le_bytes());
        return Ok(out);
    }
    let (batches, stats) = run_pipeline(&request, Bytes::from(input))?;
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&stats.rows_in.to_le_bytes());
    out.extend_from_slice(&stats.rows_selected.to_le_bytes());
    if request.csv.lenient {
        out.extend_from_slice(&stats.rows_repaired.to_le_bytes());
    }
    let ipc = encode_ipc(&request.task.output_schema, &batches)?;
    out.extend_from_slice(&ipc);
    Ok(out)
}
