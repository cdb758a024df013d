//! Entry points of the cargo-fuzz targets over untrusted footers (`fuzz/fuzz_targets/`),
//! also replayed over `fuzz/corpus/` and the shared Parquet corpora by the tests. Each
//! takes a whole file's bytes and must neither panic, hang nor allocate without bound.

use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use pushdown_protocol::{CmpOp, Expr, Literal};

use crate::plan::page_segments;
use crate::prune::{prune_row_group, Verdict};
use crate::{decode_footer, row_group_footer, row_group_metadata};

/// Row groups and columns looked at per input, so one input stays fast.
const MAX_PLANNED: usize = 64;

/// Target `parquet_footer`: decodes and checks the footer, then re-encodes the one-row-group
/// footer of each row group as the storage node does for a task.
pub fn parquet_footer(data: &[u8]) {
    let Ok(footer) = decode_footer(&Bytes::copy_from_slice(data)) else {
        return;
    };
    for rg in 0..footer.metadata.num_row_groups().min(MAX_PLANNED) {
        let _ = row_group_footer(&footer.metadata, rg);
    }
}

/// Target `page_plan`: decodes the footer, then for each row group reads its page index
/// ([`row_group_metadata`]) and runs every pruning step (statistics, Bloom filters, page
/// index, as `prune_row_group` does for the storage node, panics in arrow-rs caught) and
/// the page planning of a task over all leaf
/// columns, for predicates on each column (`<`, `>`, `=` and `IN` against a literal of the
/// column's type).
pub fn page_plan(data: &[u8]) {
    let file = Bytes::copy_from_slice(data);
    let Ok(footer) = decode_footer(&file) else {
        return;
    };
    let metadata = &footer.metadata;
    let predicates: Vec<Expr> = footer
        .schema
        .fields()
        .iter()
        .take(MAX_PLANNED)
        .filter_map(|f| {
            let literal = literal_for(f.data_type())?;
            let column = || Box::new(Expr::Column(f.name().clone()));
            let lit = || Box::new(Expr::Literal(literal.clone()));
            Some(Expr::Or(vec![
                Expr::And(vec![
                    Expr::Cmp(CmpOp::Gt, column(), lit()),
                    Expr::Cmp(CmpOp::Lt, lit(), column()),
                ]),
                Expr::Cmp(CmpOp::Eq, column(), lit()),
                Expr::InList {
                    expr: column(),
                    list: vec![Expr::Literal(literal.clone())],
                    negated: false,
                },
            ]))
        })
        .collect();
    let leaves: Vec<usize> = (0..metadata.file_metadata().schema_descr().num_columns())
        .take(MAX_PLANNED)
        .collect();
    for rg in 0..metadata.num_row_groups().min(MAX_PLANNED) {
        let Some((one, _)) = row_group_metadata(metadata, rg, Some(&file)) else {
            continue;
        };
        let num_rows = usize::try_from(one.row_group(0).num_rows()).unwrap_or(0);
        for predicate in &predicates {
            // As the storage node runs it: a panic inside arrow-rs's statistics readers
            // keeps the rows (see `prune_row_group`).
            let open = || Ok::<_, ()>(file.clone());
            if let Ok((Verdict::Rows(selection), _)) =
                prune_row_group(predicate, &one, &footer.schema, 0, open)
            {
                let _ = page_segments(&one, 0, &leaves, &selection);
            }
        }
        // A selection of every other thousand rows, as a selective page index gives.
        let runs = (0..num_rows.div_ceil(1000).min(1 << 16)).map(|i| {
            let rows = 1000.min(num_rows - i * 1000);
            if i % 2 == 0 {
                RowSelector::select(rows)
            } else {
                RowSelector::skip(rows)
            }
        });
        let selection = RowSelection::from(runs.collect::<Vec<_>>());
        let _ = page_segments(&one, 0, &leaves, &selection);
    }
}

/// A literal of `data_type` for comparisons, for the types pruning looks at.
fn literal_for(data_type: &DataType) -> Option<Literal> {
    Some(match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(_, _) => Literal::Int(7, data_type.clone()),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            Literal::UInt(7, data_type.clone())
        }
        DataType::Float32 | DataType::Float64 => Literal::Float(0.5, data_type.clone()),
        DataType::Decimal128(_, _) => Literal::Decimal("7".into(), data_type.clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            Literal::Utf8("m".into(), data_type.clone())
        }
        DataType::Boolean => Literal::Bool(true),
        _ => return None,
    })
}
