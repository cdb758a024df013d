//! Pruning from Parquet statistics, before anything is read:
//!
//! * row groups by the min/max statistics of their column chunks;
//! * row groups by the split-block Bloom filters of their column chunks, for `column =
//!   literal` and `column IN (...)` conjuncts;
//! * pages by the page index (column index min/max per page, offset index for where pages
//!   start), for conjuncts over one column: the rows of pages that cannot match are skipped
//!   and their bytes are never read.
//!
//! Formats: [Parquet statistics and page index](https://github.com/apache/parquet-format/blob/master/PageIndex.md),
//! [Bloom filters](https://github.com/apache/parquet-format/blob/master/BloomFilter.md).
//! Anything the statistics cannot decide keeps the rows (conservative).

use std::collections::BTreeSet;
use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Datum, Scalar};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::RowSelection;
use parquet::basic::Type as PhysicalType;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::ChunkReader;
use pushdown_plugins_builtin::literal_array;
use pushdown_protocol::{CmpOp, Expr};

/// Min and max of a column over some rows: a row group or a page.
trait MinMax {
    /// Min and max of `column`, as arrays of length 1 (None when unknown).
    fn min_max(&self, column: &str) -> Option<(ArrayRef, ArrayRef)>;
}

struct RowGroupStats<'a> {
    metadata: &'a ParquetMetaData,
    schema: &'a Schema,
    row_group: usize,
}

/// The column index entry of one page of one column.
struct PageStats<'a> {
    column: &'a str,
    mins: &'a ArrayRef,
    maxes: &'a ArrayRef,
    page: usize,
}

impl MinMax for PageStats<'_> {
    fn min_max(&self, column: &str) -> Option<(ArrayRef, ArrayRef)> {
        if column != self.column {
            return None;
        }
        let (min, max) = (
            self.mins.slice(self.page, 1),
            self.maxes.slice(self.page, 1),
        );
        (min.is_valid(0) && max.is_valid(0)).then_some((min, max))
    }
}

impl MinMax for RowGroupStats<'_> {
    fn min_max(&self, column: &str) -> Option<(ArrayRef, ArrayRef)> {
        let converter = StatisticsConverter::try_new(
            column,
            self.schema,
            self.metadata.file_metadata().schema_descr(),
        )
        .ok()?;
        let rg = [self.metadata.row_group(self.row_group)];
        let min = converter.row_group_mins(rg.iter().copied()).ok()?;
        let max = converter.row_group_maxes(rg.iter().copied()).ok()?;
        (min.is_valid(0) && max.is_valid(0)).then_some((min, max))
    }
}

fn holds(
    f: impl Fn(&dyn Datum, &dyn Datum) -> Result<BooleanArray, arrow_schema::ArrowError>,
    a: &ArrayRef,
    b: &ArrayRef,
) -> bool {
    // An error (types the kernel cannot compare) keeps the row group.
    match f(&Scalar::new(a.clone()), &Scalar::new(b.clone())) {
        Ok(r) => !r.is_valid(0) || r.value(0),
        Err(_) => true,
    }
}

fn literal_of(e: &Expr) -> Option<ArrayRef> {
    match e {
        Expr::Literal(l) => literal_array(l).ok().filter(|a| a.is_valid(0)),
        _ => None,
    }
}

fn may_match(e: &Expr, stats: &dyn MinMax) -> bool {
    use arrow_ord::cmp;
    match e {
        Expr::And(items) => items.iter().all(|i| may_match(i, stats)),
        Expr::Or(items) => items.iter().any(|i| may_match(i, stats)),
        Expr::Cmp(op, l, r) => {
            let (column, literal, op) = match (l.as_ref(), r.as_ref()) {
                (Expr::Column(c), lit) => (c, lit, *op),
                (lit, Expr::Column(c)) => (c, lit, op.flipped()),
                _ => return true,
            };
            let (Some(v), Some((min, max))) = (literal_of(literal), stats.min_max(column)) else {
                return true;
            };
            if v.data_type() != min.data_type() {
                return true;
            }
            match op {
                CmpOp::Eq => holds(cmp::lt_eq, &min, &v) && holds(cmp::gt_eq, &max, &v),
                CmpOp::NotEq => true,
                CmpOp::Lt => holds(cmp::lt, &min, &v),
                CmpOp::LtEq => holds(cmp::lt_eq, &min, &v),
                CmpOp::Gt => holds(cmp::gt, &max, &v),
                CmpOp::GtEq => holds(cmp::gt_eq, &max, &v),
            }
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } => {
            let Expr::Column(c) = expr.as_ref() else {
                return true;
            };
            list.iter().any(|item| {
                may_match(
                    &Expr::Cmp(
                        CmpOp::Eq,
                        Box::new(Expr::Column(c.clone())),
                        Box::new(item.clone()),
                    ),
                    stats,
                )
            })
        }
        _ => true,
    }
}

/// True when row group `row_group` may hold rows for which `predicate` is true.
pub fn row_group_may_match(
    predicate: &Expr,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
) -> bool {
    may_match(
        predicate,
        &RowGroupStats {
            metadata,
            schema,
            row_group,
        },
    )
}

/// The conjuncts of `predicate` (its top-level AND terms).
fn conjuncts(predicate: &Expr) -> Vec<&Expr> {
    match predicate {
        Expr::And(items) => items.iter().flat_map(conjuncts).collect(),
        other => vec![other],
    }
}

/// `(column, literals)` when `e` is `column = literal`, `literal = column`,
/// `column IN (literals)` or an OR of those over one column.
fn equality(e: &Expr) -> Option<(&str, Vec<&Expr>)> {
    match e {
        Expr::Or(items) => {
            let mut column = None;
            let mut literals = Vec::new();
            for item in items {
                let (c, mut l) = equality(item)?;
                if column.is_some_and(|first| first != c) {
                    return None;
                }
                column = Some(c);
                literals.append(&mut l);
            }
            Some((column?, literals))
        }
        Expr::Cmp(CmpOp::Eq, l, r) => match (l.as_ref(), r.as_ref()) {
            (Expr::Column(c), lit @ Expr::Literal(_))
            | (lit @ Expr::Literal(_), Expr::Column(c)) => Some((c, vec![lit])),
            _ => None,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } => match expr.as_ref() {
            Expr::Column(c) if list.iter().all(|i| matches!(i, Expr::Literal(_))) => {
                Some((c, list.iter().collect()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether the Bloom filter may hold `literal`, hashed as the column's physical type stores
/// it (plain encoding). `true` for types this does not map.
fn bloom_may_hold(
    filter: &Sbbf,
    physical: PhysicalType,
    column: &DataType,
    literal: &Expr,
) -> bool {
    let Some(value) = literal_of(literal) else {
        // NULL never equals anything; other literals that do not convert keep the rows.
        return !matches!(literal, Expr::Literal(_));
    };
    let Ok(value) = arrow_cast::cast(&value, column) else {
        return true;
    };
    match (physical, column) {
        (PhysicalType::INT32, DataType::Int32) => {
            filter.check(&value.as_primitive::<Int32Type>().value(0))
        }
        (PhysicalType::INT32, DataType::Date32) => {
            filter.check(&value.as_primitive::<Date32Type>().value(0))
        }
        (PhysicalType::INT64, DataType::Int64) => {
            filter.check(&value.as_primitive::<Int64Type>().value(0))
        }
        (PhysicalType::BYTE_ARRAY, DataType::Utf8) => {
            filter.check(value.as_string::<i32>().value(0))
        }
        (PhysicalType::BYTE_ARRAY, DataType::LargeUtf8) => {
            filter.check(value.as_string::<i64>().value(0))
        }
        _ => true,
    }
}

/// What the Bloom filters of row group `row_group` say about `predicate`: `Ok(false)` when
/// one proves that no row can match. Also returns the bytes of the filters read.
///
/// Only `column = literal` and `column IN (...)` conjuncts over columns with a Bloom
/// filter are checked. A filter that does not read keeps the row group.
pub fn bloom_filters_may_match<R: ChunkReader>(
    predicate: &Expr,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
    file: &R,
) -> (bool, u64) {
    let descr = metadata.file_metadata().schema_descr();
    let rg = metadata.row_group(row_group);
    let mut bytes_read = 0;
    for conjunct in conjuncts(predicate) {
        let Some((column, literals)) = equality(conjunct) else {
            continue;
        };
        let Ok(converter) = StatisticsConverter::try_new(column, schema, descr) else {
            continue;
        };
        let Some(chunk) = converter.parquet_column_index().map(|leaf| rg.column(leaf)) else {
            continue;
        };
        if chunk.bloom_filter_offset().is_none() {
            continue;
        }
        let Ok(Some(filter)) = Sbbf::read_from_column_chunk(chunk, file) else {
            continue;
        };
        bytes_read += chunk
            .bloom_filter_length()
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        let data_type = converter.arrow_field().data_type();
        let physical = chunk.column_type();
        if !literals
            .iter()
            .any(|l| bloom_may_hold(&filter, physical, data_type, l))
        {
            return (false, bytes_read);
        }
    }
    (true, bytes_read)
}

/// The rows of row group `row_group` that the page index cannot rule out, when it rules
/// out some: `None` when the file has no page index or every page may match. The selection
/// may select no row at all.
///
/// Each conjunct over a single column is checked page by page against the column index;
/// the selections of the conjuncts are intersected.
pub fn page_selection(
    predicate: &Expr,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
) -> Option<RowSelection> {
    let (column_index, offset_index) = (metadata.column_index()?, metadata.offset_index()?);
    let num_rows = usize::try_from(metadata.row_group(row_group).num_rows()).ok()?;
    let descr = metadata.file_metadata().schema_descr();
    let mut selection: Option<RowSelection> = None;
    for conjunct in conjuncts(predicate) {
        let mut columns = BTreeSet::new();
        conjunct.collect_columns(&mut columns);
        if columns.len() != 1 {
            continue;
        }
        let Some(column) = columns.pop_first() else {
            continue;
        };
        let Ok(converter) = StatisticsConverter::try_new(&column, schema, descr) else {
            continue;
        };
        let Some(leaf) = converter.parquet_column_index() else {
            continue;
        };
        let Some(pages) = offset_index
            .get(row_group)
            .and_then(|columns| columns.get(leaf))
            .map(|o| page_rows(o.page_locations(), num_rows))
        else {
            continue;
        };
        let Some(pages) = pages else { continue };
        let rg = [row_group];
        let (Ok(mins), Ok(maxes)) = (
            converter.data_page_mins(column_index, offset_index, rg.iter()),
            converter.data_page_maxes(column_index, offset_index, rg.iter()),
        ) else {
            continue;
        };
        if mins.len() != pages.len() || maxes.len() != pages.len() {
            continue;
        }
        let kept = pages.iter().enumerate().filter_map(|(page, rows)| {
            let stats = PageStats {
                column: &column,
                mins: &mins,
                maxes: &maxes,
                page,
            };
            may_match(conjunct, &stats).then(|| rows.clone())
        });
        let this = RowSelection::from_consecutive_ranges(kept, num_rows);
        selection = Some(match selection {
            None => this,
            Some(s) => s.intersection(&this),
        });
    }
    selection.filter(|s| s.row_count() < num_rows)
}

/// The rows of each page from its offset index entries, or `None` when the entries are
/// not a valid cover of `num_rows` rows (first page at row 0, first rows increasing).
pub fn page_rows(
    locations: &[parquet::file::page_index::offset_index::PageLocation],
    num_rows: usize,
) -> Option<Vec<Range<usize>>> {
    if locations.first()?.first_row_index != 0 {
        return None;
    }
    let mut rows = Vec::with_capacity(locations.len());
    for (i, page) in locations.iter().enumerate() {
        let start = usize::try_from(page.first_row_index).ok()?;
        let end = match locations.get(i + 1) {
            Some(next) => usize::try_from(next.first_row_index).ok()?,
            None => num_rows,
        };
        if start >= end || end > num_rows {
            return None;
        }
        rows.push(start..end);
    }
    Some(rows)
}

/// What pruning decided for one row group of a task.
#[derive(Debug)]
pub enum Verdict {
    /// No row can match: the row group is not read.
    NoRows,
    /// Only these rows can match (page index); the selection selects at least one row.
    Rows(RowSelection),
    /// Any row may match.
    AllRows,
}

/// Runs the pruning steps on row group `row_group` in order of cost: min/max statistics,
/// Bloom filters (read through `open`, called only when a projected column chunk has one),
/// page index. Returns the verdict and the bytes of Bloom filters read.
///
/// Statistics are untrusted bytes: a panic in any step keeps the rows (the step's answer
/// is "may match").
///
/// # Errors
/// The error of `open`.
pub fn prune_row_group<R: ChunkReader, E>(
    predicate: &Expr,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
    open: impl FnOnce() -> Result<R, E>,
) -> Result<(Verdict, u64), E> {
    use crate::catch_quietly;
    use std::panic::AssertUnwindSafe;
    let Some(rg) = metadata.row_groups().get(row_group) else {
        return Ok((Verdict::AllRows, 0));
    };
    if !catch_quietly(AssertUnwindSafe(|| {
        row_group_may_match(predicate, metadata, schema, row_group)
    }))
    .unwrap_or(true)
    {
        return Ok((Verdict::NoRows, 0));
    }
    let mut index_bytes = 0;
    if rg
        .columns()
        .iter()
        .any(|c| c.bloom_filter_offset().is_some())
    {
        let file = open()?;
        let (may_match, bytes) = catch_quietly(AssertUnwindSafe(|| {
            bloom_filters_may_match(predicate, metadata, schema, row_group, &file)
        }))
        .unwrap_or((true, 0));
        index_bytes = bytes;
        if !may_match {
            return Ok((Verdict::NoRows, index_bytes));
        }
    }
    let selection = catch_quietly(AssertUnwindSafe(|| {
        page_selection(predicate, metadata, schema, row_group)
    }))
    .unwrap_or(None);
    let verdict = match selection {
        Some(s) if s.selects_any() => Verdict::Rows(s),
        Some(_) => Verdict::NoRows,
        None => Verdict::AllRows,
    };
    Ok((verdict, index_bytes))
}

/// One predicate conjunct that calls a scalar plugin in a shape its `pushdown_can_skip`
/// can decide, with what the row group's statistics say about the call's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSkipCheck {
    /// The plugin called.
    pub plugin: pushdown_protocol::PluginRef,
    /// What its `pushdown_can_skip` is asked.
    pub request: pushdown_protocol::plugin::SkipRequest,
}

/// The conjuncts of `predicate` that plugin-aware pruning can ask about, each with the
/// request for row group `row_group`: `call(...)` returning Boolean, and `call(...) <op>
/// constant` (either side) for `<`, `<=`, `>`, `>=`, `=`.
///
/// Arguments that are a column (or a column cast to another numeric type) get the column
/// chunk's min, max, null count and distinct count from the footer; constants their
/// value; anything else nothing. Statistics are untrusted: a panic reading them leaves
/// that argument unknown. (`pushdown-plugins/ABI.md`, plugin-aware pruning.)
pub fn plugin_skip_checks(
    predicate: &Expr,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
) -> Vec<PluginSkipCheck> {
    use pushdown_protocol::plugin::ResultTest;
    let Some(rg) = metadata.row_groups().get(row_group) else {
        return Vec::new();
    };
    let rows = u64::try_from(rg.num_rows()).unwrap_or(0);
    let stats = RowGroupStats {
        metadata,
        schema,
        row_group,
    };
    let mut checks = Vec::new();
    for conjunct in conjuncts(predicate) {
        let (call, test) = match conjunct {
            Expr::Call {
                return_type: DataType::Boolean,
                ..
            } => (conjunct, ResultTest::IsTrue),
            Expr::Cmp(op, l, r) => {
                let (side, constant, op) = match (l.as_ref(), r.as_ref()) {
                    (side, constant @ Expr::Literal(_)) => (side, constant, *op),
                    (constant @ Expr::Literal(_), side) => (side, constant, op.flipped()),
                    _ => continue,
                };
                let Some(constant) = literal_of(constant) else {
                    continue;
                };
                let (call, op, value) = match side {
                    call @ Expr::Call { .. } => match json_value(&constant) {
                        Some(value) => (call, op, value),
                        None => continue,
                    },
                    // SQL compares a float result with a decimal constant as
                    // `CAST(call AS Decimal128(p, s)) <= 800.5`.
                    Expr::Cast(call, to) => match cast_comparison(call, to, op, &constant) {
                        Some((op, value)) => (call.as_ref(), op, value),
                        None => continue,
                    },
                    _ => continue,
                };
                let test = match op {
                    CmpOp::Lt => ResultTest::Lt { value },
                    CmpOp::LtEq => ResultTest::LtEq { value },
                    CmpOp::Gt => ResultTest::Gt { value },
                    CmpOp::GtEq => ResultTest::GtEq { value },
                    CmpOp::Eq => ResultTest::Eq { value },
                    CmpOp::NotEq => continue,
                };
                (call, test)
            }
            _ => continue,
        };
        let Expr::Call { plugin, args, .. } = call else {
            continue;
        };
        let arguments = args
            .iter()
            .map(|a| {
                crate::catch_quietly(std::panic::AssertUnwindSafe(|| {
                    argument_stats(a, &stats, metadata, schema, row_group)
                }))
                .unwrap_or_default()
            })
            .collect();
        checks.push(PluginSkipCheck {
            plugin: plugin.clone(),
            request: pushdown_protocol::plugin::SkipRequest {
                rows,
                arguments,
                test,
            },
        });
    }
    checks
}

/// `CAST(call AS to) <op> constant` as a test of the call's own numeric result: the
/// constant as a float, moved outwards by the cast's rounding step (`10^-s` for a decimal
/// of scale `s`, 1 for an integer) and a few float ulps, since a cast (rounding or
/// truncating) never reorders values but can make unequal results equal. `None` for `=`
/// and for casts or results that are not numeric.
fn cast_comparison(
    call: &Expr,
    to: &DataType,
    op: CmpOp,
    constant: &ArrayRef,
) -> Option<(CmpOp, serde_json::Value)> {
    use arrow_array::types::Float64Type;
    let Expr::Call { return_type, .. } = call else {
        return None;
    };
    if !return_type.is_numeric() || !to.is_numeric() {
        return None;
    }
    let v = arrow_cast::cast(constant, &DataType::Float64).ok()?;
    let v = v.as_primitive::<Float64Type>().value(0);
    let step = match to {
        DataType::Decimal32(_, s)
        | DataType::Decimal64(_, s)
        | DataType::Decimal128(_, s)
        | DataType::Decimal256(_, s) => 10f64.powi(-i32::from(*s)),
        t if t.is_integer() => 1.0,
        _ => 0.0,
    };
    let margin = step
        .max(v.abs() * f64::EPSILON * 16.0)
        .max(f64::MIN_POSITIVE);
    let (op, bound) = match op {
        CmpOp::Lt | CmpOp::LtEq => (CmpOp::LtEq, v + margin),
        CmpOp::Gt | CmpOp::GtEq => (CmpOp::GtEq, v - margin),
        CmpOp::Eq | CmpOp::NotEq => return None,
    };
    bound
        .is_finite()
        .then(|| (op, serde_json::Value::from(bound)))
}

fn argument_stats(
    arg: &Expr,
    stats: &RowGroupStats<'_>,
    metadata: &ParquetMetaData,
    schema: &Schema,
    row_group: usize,
) -> pushdown_protocol::plugin::ArgumentStats {
    use pushdown_protocol::plugin::ArgumentStats;
    let (column, cast_to) = match arg {
        Expr::Literal(l) => {
            return ArgumentStats {
                constant: Some(
                    literal_array(l)
                        .ok()
                        .and_then(|a| json_value(&a))
                        .unwrap_or(serde_json::Value::Null),
                ),
                ..Default::default()
            }
        }
        Expr::Column(c) => (c, None),
        Expr::Cast(inner, to) => match inner.as_ref() {
            Expr::Column(c) if to.is_numeric() => (c, Some(to)),
            _ => return ArgumentStats::default(),
        },
        _ => return ArgumentStats::default(),
    };
    let mut out = ArgumentStats {
        column: Some(column.clone()),
        ..Default::default()
    };
    let Ok(converter) =
        StatisticsConverter::try_new(column, schema, metadata.file_metadata().schema_descr())
    else {
        return out;
    };
    // A cast keeps min and max only between numeric types (monotonic conversions).
    let order_kept = cast_to.is_none() || converter.arrow_field().data_type().is_numeric();
    if order_kept {
        if let Some((min, max)) = stats.min_max(column) {
            let cast = |a: ArrayRef| match cast_to {
                Some(t) => arrow_cast::cast(&a, t).ok(),
                None => Some(a),
            };
            out.min = cast(min).and_then(|a| json_value(&a));
            out.max = cast(max).and_then(|a| json_value(&a));
        }
    }
    let rg = [metadata.row_group(row_group)];
    out.null_count = converter
        .row_group_null_counts(rg.iter().copied())
        .ok()
        .filter(|c| c.is_valid(0))
        .map(|c| c.value(0));
    out.distinct_count = converter.parquet_column_index().and_then(|leaf| {
        metadata
            .row_group(row_group)
            .column(leaf)
            .statistics()
            .and_then(|s| s.distinct_count_opt())
    });
    out
}

/// The JSON of the first value of `a` as [`pushdown_protocol::plugin::SkipRequest`]
/// writes it: numbers for integers and finite floats, booleans, else Arrow's display
/// string. `None` for NULL or a non-finite float.
fn json_value(a: &ArrayRef) -> Option<serde_json::Value> {
    use arrow_array::types::{Float64Type, UInt64Type};
    use serde_json::Value;
    if a.is_empty() || !a.is_valid(0) {
        return None;
    }
    let t = a.data_type();
    if t.is_signed_integer() {
        let v = arrow_cast::cast(a, &DataType::Int64).ok()?;
        return Some(Value::from(v.as_primitive::<Int64Type>().value(0)));
    }
    if t.is_unsigned_integer() {
        let v = arrow_cast::cast(a, &DataType::UInt64).ok()?;
        return Some(Value::from(v.as_primitive::<UInt64Type>().value(0)));
    }
    if t.is_floating() {
        let v = arrow_cast::cast(a, &DataType::Float64).ok()?;
        let v = v.as_primitive::<Float64Type>().value(0);
        return v.is_finite().then(|| Value::from(v));
    }
    if t == &DataType::Boolean {
        return Some(Value::from(a.as_boolean().value(0)));
    }
    let formatter =
        arrow_cast::display::ArrayFormatter::try_new(a.as_ref(), &Default::default()).ok()?;
    Some(Value::from(formatter.value(0).to_string()))
}
