//! Row-group pruning from Parquet min/max statistics.
//!
//! A row group is skipped when its statistics prove the predicate cannot be true for any
//! of its rows. Anything the statistics cannot decide keeps the row group (conservative).

use arrow_array::{Array, ArrayRef, BooleanArray, Datum, Scalar};
use arrow_schema::Schema;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;
use pushdown_plugins_builtin::literal_array;
use pushdown_protocol::{CmpOp, Expr};

struct RowGroupStats<'a> {
    metadata: &'a ParquetMetaData,
    schema: &'a Schema,
    row_group: usize,
}

impl RowGroupStats<'_> {
    /// Min and max of `column` in the row group, as arrays of length 1 (None when unknown).
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

fn may_match(e: &Expr, stats: &RowGroupStats<'_>) -> bool {
    use arrow_ord::cmp;
    match e {
        Expr::And(items) => items.iter().all(|i| may_match(i, stats)),
        Expr::Or(items) => items.iter().any(|i| may_match(i, stats)),
        Expr::Cmp(op, l, r) => {
            let (column, literal, op) = match (l.as_ref(), r.as_ref()) {
                (Expr::Column(c), lit) => (c, lit, *op),
                (lit, Expr::Column(c)) => {
                    let flipped = match op {
                        CmpOp::Lt => CmpOp::Gt,
                        CmpOp::LtEq => CmpOp::GtEq,
                        CmpOp::Gt => CmpOp::Lt,
                        CmpOp::GtEq => CmpOp::LtEq,
                        other => *other,
                    };
                    (c, lit, flipped)
                }
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
