//! The pushdown split: a physical optimizer rule that moves the filter, projection and
//! partial aggregate directly above a [`PushdownScanExec`] into the scan, so the storage
//! node evaluates them in the sandbox. What does not translate stays in DataFusion;
//! DataFusion's final aggregate merges the partial states the storage node returns.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use pushdown_protocol::{AggregateFunction, Expr, PartialAggregate};

use crate::plugins::PluginAggregate;
use crate::scan::PushdownScanExec;
use crate::translate::{conjuncts, translate};

/// The physical optimizer rule of the pushdown split; see the module doc.
#[derive(Debug, Default)]
pub struct PushdownRule;

impl PhysicalOptimizerRule for PushdownRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(plan.transform_up(absorb)?.data)
    }

    fn name(&self) -> &str {
        "pushdown_split"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The scan directly below `plan`, while it still returns rows (no aggregate yet) and
/// has no `LIMIT` (rows dropped by a predicate or merged by an aggregate would change
/// which rows the limit keeps).
fn row_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<(&PushdownScanExec, Vec<Expr>)> {
    let scan = plan.downcast_ref::<PushdownScanExec>()?;
    if scan.limit().is_some() {
        return None;
    }
    let exprs = scan.output_exprs()?;
    Some((scan, exprs))
}

fn absorb(node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    // Round-robin spreading above the scan serve no purpose once the work
    // happens on the storage node.
    if let Some(r) = node.downcast_ref::<RepartitionExec>() {
        if matches!(r.partitioning(), Partitioning::RoundRobinBatch(_))
            && r.input().is::<PushdownScanExec>()
        {
            return Ok(Transformed::yes(r.input().clone()));
        }
    }
    if let Some(filter) = node.downcast_ref::<FilterExec>() {
        let Some((scan, inputs)) = row_scan(filter.input()) else {
            return Ok(Transformed::no(node));
        };
        let schema = filter.input().schema();
        let parts = conjuncts(filter.predicate());
        let translated: Vec<Expr> = parts
            .iter()
            .filter_map(|p| translate(p, &inputs, &schema))
            .collect();
        if translated.is_empty() {
            return Ok(Transformed::no(node));
        }
        let complete = translated.len() == parts.len();
        let mut new_scan = scan.clone();
        for p in translated {
            new_scan = new_scan.with_predicate(p);
        }
        if !complete {
            // Push what translates; the filter stays above and evaluates the whole predicate.
            let new_scan: Arc<dyn ExecutionPlan> = Arc::new(new_scan);
            return Ok(Transformed::yes(replace_children_if_necessary(
                node.clone(),
                vec![new_scan],
            )?));
        }
        if let Some(projection) = filter.projection() {
            let exprs = projection.iter().map(|&i| inputs[i].clone()).collect();
            new_scan = new_scan.with_projection(exprs, filter.schema());
        }
        return Ok(Transformed::yes(Arc::new(new_scan)));
    }
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let Some((scan, inputs)) = row_scan(projection.input()) else {
            return Ok(Transformed::no(node));
        };
        let schema = projection.input().schema();
        let exprs: Option<Vec<Expr>> = projection
            .expr()
            .iter()
            .map(|p| translate(&p.expr, &inputs, &schema))
            .collect();
        return Ok(match exprs {
            Some(exprs) => {
                Transformed::yes(Arc::new(scan.with_projection(exprs, projection.schema())))
            }
            None => Transformed::no(node),
        });
    }
    if let Some(agg) = node.downcast_ref::<AggregateExec>() {
        let Some((scan, inputs)) = row_scan(agg.input()) else {
            return Ok(Transformed::no(node));
        };
        return match agg.mode() {
            AggregateMode::Partial => Ok(match partial_states(agg, &inputs)? {
                Some((group_by, states)) => Transformed::yes(Arc::new(
                    scan.with_partial_aggregate(group_by, states, agg.schema()),
                )),
                None => Transformed::no(node),
            }),
            AggregateMode::Single | AggregateMode::SinglePartitioned => {
                // Split into partial (on the storage node) and final (here), as DataFusion does
                // for multi-partition input.
                let partial = AggregateExec::try_new(
                    AggregateMode::Partial,
                    agg.group_expr().clone(),
                    agg.aggr_expr().to_vec(),
                    agg.filter_expr().to_vec(),
                    agg.input().clone(),
                    agg.input_schema(),
                )?;
                let Some((group_by, states)) = partial_states(&partial, &inputs)? else {
                    return Ok(Transformed::no(node));
                };
                let new_scan: Arc<dyn ExecutionPlan> =
                    Arc::new(scan.with_partial_aggregate(group_by, states, partial.schema()));
                // The final aggregate reads one partition.
                let new_scan: Arc<dyn ExecutionPlan> = if scan.partitions() > 1 {
                    Arc::new(CoalescePartitionsExec::new(new_scan))
                } else {
                    new_scan
                };
                let final_agg = AggregateExec::try_new(
                    AggregateMode::Final,
                    agg.group_expr().as_final(),
                    agg.aggr_expr().to_vec(),
                    agg.filter_expr().to_vec(),
                    new_scan,
                    agg.input_schema(),
                )?;
                Ok(Transformed::yes(Arc::new(final_agg)))
            }
            _ => Ok(Transformed::no(node)),
        };
    }
    Ok(Transformed::no(node))
}

/// The group-by expressions and state columns of a partial aggregate, when every part
/// translates and every function has the state layout the sandbox computes.
fn partial_states(
    agg: &AggregateExec,
    inputs: &[Expr],
) -> Result<Option<(Vec<Expr>, Vec<PartialAggregate>)>> {
    if !agg.group_expr().is_single() || agg.filter_expr().iter().any(Option::is_some) {
        return Ok(None);
    }
    let schema = agg.input().schema();
    let mut group_by = Vec::new();
    for (e, _) in agg.group_expr().expr() {
        match translate(e, inputs, &schema) {
            Some(x) => group_by.push(x),
            None => return Ok(None),
        }
    }
    let mut states = Vec::new();
    for a in agg.aggr_expr() {
        if a.is_distinct() || !a.order_bys().is_empty() || a.ignore_nulls() {
            return Ok(None);
        }
        let args = a.expressions();
        let [arg] = args.as_slice() else {
            return Ok(None);
        };
        let Some(argument) = translate(arg, inputs, &schema) else {
            return Ok(None);
        };
        let inner: &dyn std::any::Any = a.fun().inner().as_ref();
        if let Some(plugin) = inner.downcast_ref::<PluginAggregate>() {
            // The storage node runs the plugin's update; its Binary state is merged and
            // finalized by the plugin in the intermediary's final aggregate.
            states.push(PartialAggregate {
                function: AggregateFunction::Plugin(plugin.reference().clone()),
                argument,
                state_type: datafusion::arrow::datatypes::DataType::Binary,
            });
            continue;
        }
        let fields = a.state_fields()?;
        let types: Vec<_> = fields.iter().map(|f| f.data_type().clone()).collect();
        use datafusion::arrow::datatypes::DataType;
        let state = |function, state_type: &DataType| PartialAggregate {
            function,
            argument: argument.clone(),
            state_type: state_type.clone(),
        };
        match (a.fun().name(), types.as_slice()) {
            ("count", [DataType::Int64]) => states.push(state(AggregateFunction::Count, &types[0])),
            ("sum", [t]) => states.push(state(AggregateFunction::Sum, t)),
            ("min", [t]) => states.push(state(AggregateFunction::Min, t)),
            ("max", [t]) => states.push(state(AggregateFunction::Max, t)),
            ("avg", [DataType::UInt64, t]) => {
                states.push(state(AggregateFunction::Count, &types[0]));
                states.push(state(AggregateFunction::Sum, t));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some((group_by, states)))
}
