//! Semi joins moved below inner joins: a logical optimizer rule.
//!
//! DataFusion decorrelates `x IN (SELECT k FROM ... GROUP BY ... HAVING ...)` into a left
//! semi join, placed above the joins of the outer query's `FROM` list (TPC-H Q18: the
//! semi join on `o_orderkey` sits above `customer ⋈ orders ⋈ lineitem`, so the 6 M rows of
//! that join are built into a hash table only to keep 57 orders). A semi join on keys of
//! one side of an inner join filters that side's rows and nothing else:
//!
//! ```text
//! LeftSemi(Inner(A, B), S) on a = s   ==   Inner(LeftSemi(A, S) on a = s, B)
//! ```
//!
//! (a row of `A ⋈ B` is kept iff its `A` part has a match in `S`). The rule applies this
//! rewrite repeatedly, through projections that pass the key columns through, until the semi
//! join sits on the input that owns its keys. There the subquery's keys reach the scan as a
//! join filter (DataFusion's dynamic filter, pushed to the storage nodes by
//! [`crate::PushdownScanExec`]) and the inner joins above see only the rows kept.
//!
//! Only semi joins without a non-equi filter move: a correlated `EXISTS` with a filter
//! (TPC-H Q21, `l2.l_suppkey <> l1.l_suppkey`) compares against a subquery as large as the
//! table, and applying it before a selective inner join would probe more rows, not fewer.
//! Anti joins stay where they are.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The logical optimizer rule; see the module doc.
#[derive(Debug, Default)]
pub struct SemiJoinBelowInnerJoin;

impl OptimizerRule for SemiJoinBelowInnerJoin {
    fn name(&self) -> &str {
        "semi_join_below_inner_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if semi.join_type != JoinType::LeftSemi || semi.filter.is_some() || semi.on.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let mut keys = HashSet::new();
        for (left, _) in &semi.on {
            for column in left.column_refs() {
                keys.insert(column.clone());
            }
        }
        match push(&semi.left, semi, &keys)? {
            Some(moved) => Ok(Transformed::yes(moved)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// `input` with the semi join `semi` applied below its top node, if that node is an inner
/// join or a projection over one whose side owns every column of `keys`; `None` when the
/// semi join cannot move below `input`'s top node. The result has `input`'s schema.
fn push(input: &LogicalPlan, semi: &Join, keys: &HashSet<Column>) -> Result<Option<LogicalPlan>> {
    match input {
        LogicalPlan::Projection(p) => {
            // A key column passes through only as a plain column (same name in and out).
            let passed: HashSet<&Column> = p
                .expr
                .iter()
                .filter_map(|e| match e {
                    Expr::Column(c) => Some(c),
                    _ => None,
                })
                .collect();
            if !keys.iter().all(|k| passed.contains(k)) {
                return Ok(None);
            }
            let below = push(&p.input, semi, keys)?;
            let Some(below) = below else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                p.expr.clone(),
                Arc::new(below),
            )?)))
        }
        LogicalPlan::Join(join) if join.join_type == JoinType::Inner => {
            let owns = |side: &LogicalPlan| keys.iter().all(|k| side.schema().has_column(k));
            let (on_left, on_right) = (owns(&join.left), owns(&join.right));
            let (left, right) = match (on_left, on_right) {
                (true, false) => (filtered(&join.left, semi, keys)?, join.right.clone()),
                (false, true) => (join.left.clone(), filtered(&join.right, semi, keys)?),
                _ => return Ok(None),
            };
            Ok(Some(LogicalPlan::Join(Join::try_new(
                left,
                right,
                join.on.clone(),
                join.filter.clone(),
                join.join_type,
                join.join_constraint,
                join.null_equality,
                join.null_aware,
            )?)))
        }
        _ => Ok(None),
    }
}

/// `side` with the semi join applied: below its top node if it can move there, else on top,
/// as a right semi join with the subquery on the left, the side DataFusion builds its hash
/// table from (the subquery's keys, not the table's rows, are hashed, and they become the
/// join filter of `side`'s scan); DataFusion's join selection may still swap the two when
/// statistics show the subquery is the larger.
fn filtered(
    side: &Arc<LogicalPlan>,
    semi: &Join,
    keys: &HashSet<Column>,
) -> Result<Arc<LogicalPlan>> {
    if let Some(below) = push(side, semi, keys)? {
        return Ok(Arc::new(below));
    }
    let on = semi
        .on
        .iter()
        .map(|(l, r)| (r.clone(), l.clone()))
        .collect();
    Ok(Arc::new(LogicalPlan::Join(Join::try_new(
        semi.right.clone(),
        side.clone(),
        on,
        None,
        JoinType::RightSemi,
        semi.join_constraint,
        semi.null_equality,
        false,
    )?)))
}
