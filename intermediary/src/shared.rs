//! Identical subplans run once: a physical optimizer rule finds subtrees of a plan that
//! return the same rows (the same scans with the same tasks, under the same operators),
//! such as a view used twice (TPC-H Q15's `revenue0`, once in `FROM` and once in the
//! `max` subquery), and puts a [`SharedExec`] over each. The first consumer to run a
//! partition runs the subplan and keeps its batches; the others replay them.
//!
//! DataFusion plans each use of a view or CTE on its own (it has no common subplan
//! elimination for physical plans); DuckDB materialises CTEs used more than once. Kept
//! batches count against the session's memory pool and at most [`MAX_SHARED_BYTES`] per
//! subplan; past that, the consumer that ran it streams the rest and the others run the
//! subplan themselves.
//!
//! A subtree is shared only when its text identifies its rows and running it has no other
//! effect: every leaf is a [`PushdownScanExec`], no node is a [`crate::BloomBuildExec`]
//! (it hands its keys to one probe-side scan), and no node shows a value settled at run time (a scalar
//! subquery's `<pending>` result, a dynamic filter) or a volatile function. Join filters
//! (a hash join's build-side keys pushed into a scan on its probe side) only drop rows the
//! join drops: the shared run has none, so that every consumer gets all its rows.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    displayable, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use crate::scan::PushdownScanExec;

/// The most bytes of batches one shared subplan keeps (64 MiB, all partitions together).
pub const MAX_SHARED_BYTES: usize = 64 << 20;

/// Text in a node's one-line display that means its output is not settled by the plan's
/// text alone.
const NOT_SETTLED: [&str; 5] = [
    "<pending>",
    "scalar_subquery",
    "DynamicFilter",
    "random(",
    "uuid(",
];

/// The physical optimizer rule that puts a [`SharedExec`] over each largest subtree that
/// occurs more than once in the plan (see the module doc). It runs after
/// [`crate::PushdownRule`] and [`crate::BloomJoinFilters`]; not in an intermediary tier.
#[derive(Debug, Default)]
pub struct SharedSubplans;

impl PhysicalOptimizerRule for SharedSubplans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        plan.apply(|node| {
            if let Some(key) = share_key(node) {
                *counts.entry(key).or_default() += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        counts.retain(|_, n| *n > 1);
        // A subtree inside a larger shared one is not met on its own: count the
        // occurrences met top-down, not descending into a shared subtree, until the set
        // of shared keys is stable (it only shrinks).
        loop {
            let mut met: HashMap<String, usize> = HashMap::new();
            plan.apply(|node| match share_key(node) {
                Some(key) if counts.contains_key(&key) => {
                    *met.entry(key).or_default() += 1;
                    Ok(TreeNodeRecursion::Jump)
                }
                _ => Ok(TreeNodeRecursion::Continue),
            })?;
            met.retain(|_, n| *n > 1);
            if met == counts {
                break;
            }
            counts = met;
        }
        if counts.is_empty() {
            return Ok(plan);
        }
        // One state per repeated subtree; the first occurrence met (top-down) is the one
        // every consumer runs.
        let mut shared: HashMap<String, (Arc<dyn ExecutionPlan>, Arc<SharedState>)> =
            HashMap::new();
        let next_id = AtomicUsize::new(1);
        let out = plan.transform_down(|node| {
            let Some(key) = share_key(&node) else {
                return Ok(Transformed::no(node));
            };
            if !counts.contains_key(&key) {
                return Ok(Transformed::no(node));
            }
            let consumers = counts[&key];
            let (input, state) = shared
                .entry(key)
                .or_insert_with(|| {
                    let partitions = node.properties().partitioning.partition_count();
                    let state = SharedState::new(
                        next_id.fetch_add(1, Ordering::Relaxed),
                        partitions,
                        consumers,
                    );
                    (without_join_filters(node.clone()), Arc::new(state))
                })
                .clone();
            let exec: Arc<dyn ExecutionPlan> = Arc::new(SharedExec { input, state });
            Ok(Transformed::new(exec, true, TreeNodeRecursion::Jump))
        })?;
        Ok(out.data)
    }

    fn name(&self) -> &str {
        "shared_subplans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The text that identifies the rows `node` returns, or `None` when it does not (see the
/// module doc). Only a subtree that aggregates is shared: keeping the rows of a projecting
/// scan would hold a table's rows in memory to save one scan of it.
fn share_key(node: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if node.downcast_ref::<SharedExec>().is_some() {
        return None;
    }
    let mut aggregates = false;
    let _ = node.apply(|n| {
        let partial = n.downcast_ref::<PushdownScanExec>().is_some_and(|s| {
            matches!(
                s.pushdown(),
                pushdown_protocol::Pushdown::PartialAggregate { .. }
            )
        });
        aggregates |= partial || n.downcast_ref::<AggregateExec>().is_some();
        Ok(if aggregates {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if !aggregates {
        return None;
    }
    key_of(node)
}

fn key_of(node: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if let Some(scan) = node.downcast_ref::<PushdownScanExec>() {
        return scan.share_key();
    }
    // It hands its keys to one probe-side scan: each consumer needs its own.
    if node.downcast_ref::<crate::BloomBuildExec>().is_some() {
        return None;
    }
    let children = node.children();
    if children.is_empty() {
        return None;
    }
    let line = displayable(node.as_ref()).one_line().to_string();
    if NOT_SETTLED.iter().any(|marker| line.contains(marker)) {
        return None;
    }
    let mut key = line;
    for child in children {
        key.push_str(" [");
        key.push_str(&key_of(child)?);
        key.push(']');
    }
    Some(key)
}

/// `plan` with its scans' join filters removed (see the module doc).
fn without_join_filters(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    plan.clone()
        .transform_up(|node| match node.downcast_ref::<PushdownScanExec>() {
            Some(scan) => Ok(Transformed::yes(
                Arc::new(scan.without_join_filters()) as Arc<dyn ExecutionPlan>
            )),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
        .unwrap_or(plan)
}

/// What the consumers of one shared subplan have in common.
pub struct SharedState {
    /// Numbers the shared subplans of a plan (1, 2, …) in `EXPLAIN`.
    id: usize,
    /// How many consumers the plan has.
    consumers: usize,
    /// One slot per output partition; a consumer holds the lock while it runs the
    /// partition, so the others wait for its batches instead of running it again.
    slots: Vec<tokio::sync::Mutex<Slot>>,
    /// Bytes kept so far, all partitions together.
    kept: AtomicUsize,
    /// At most this many bytes are kept ([`MAX_SHARED_BYTES`]).
    budget: usize,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState")
            .field("id", &self.id)
            .field("consumers", &self.consumers)
            .finish()
    }
}

impl SharedState {
    fn new(id: usize, partitions: usize, consumers: usize) -> Self {
        Self::with_budget(id, partitions, consumers, MAX_SHARED_BYTES)
    }

    /// A state keeping at most `budget` bytes.
    pub fn with_budget(id: usize, partitions: usize, consumers: usize, budget: usize) -> Self {
        Self {
            id,
            consumers,
            slots: (0..partitions.max(1))
                .map(|_| tokio::sync::Mutex::new(Slot::NotRun))
                .collect(),
            kept: AtomicUsize::new(0),
            budget,
        }
    }
}

/// One partition of a shared subplan.
enum Slot {
    /// No consumer has run it to the end (or the one that started failed or stopped).
    NotRun,
    /// Its batches, for the consumers still to come, and how many consumers have had
    /// them (the one that ran it included).
    /// (The reservation is held, not read: dropping it returns the bytes to the pool.)
    Kept(
        Arc<Vec<RecordBatch>>,
        #[allow(dead_code)] MemoryReservation,
        usize,
    ),
    /// Every consumer has had its batches, which are dropped; a consumer that runs it
    /// again (a subplan under a nested loop join) runs the subplan.
    Served,
    /// Too large to keep: each consumer runs it.
    TooLarge,
}

/// A subplan that several parts of a plan consume: runs once per partition, its batches
/// replayed to the other consumers (see the module doc). Each consumer has its own
/// `SharedExec` over the same input and [`SharedState`].
#[derive(Debug, Clone)]
pub struct SharedExec {
    input: Arc<dyn ExecutionPlan>,
    state: Arc<SharedState>,
}

impl SharedExec {
    /// A consumer of `input` sharing `state` with the others.
    pub fn new(input: Arc<dyn ExecutionPlan>, state: Arc<SharedState>) -> Self {
        Self { input, state }
    }

    /// The same subplan as `other` (they share one run).
    pub fn same_run(&self, other: &SharedExec) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SharedExec: subplan={}, consumers={} (run once, its batches replayed)",
            self.state.id, self.state.consumers
        )
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(
                "SharedExec has one child".into(),
            ));
        }
        // A new input is another subplan: it no longer shares this one's run.
        let input = children.remove(0);
        if Arc::ptr_eq(&input, &self.input) {
            return Ok(self);
        }
        let partitions = input.properties().partitioning.partition_count();
        Ok(Arc::new(Self {
            input,
            state: Arc::new(SharedState::new(self.state.id, partitions, 1)),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let (input, state, schema) = (self.input.clone(), self.state.clone(), self.schema());
        let stream = futures::stream::once(async move {
            let Some(slot) = state.slots.get(partition) else {
                return input.execute(partition, context);
            };
            let mut slot = slot.lock().await;
            match &mut *slot {
                Slot::Kept(batches, _, served) => {
                    let batches = batches.clone();
                    *served += 1;
                    if *served >= state.consumers {
                        *slot = Slot::Served;
                    }
                    return Ok(replay(&input, batches));
                }
                Slot::TooLarge | Slot::Served => {
                    drop(slot);
                    return input.execute(partition, context);
                }
                Slot::NotRun => {}
            }
            let reservation = MemoryConsumer::new(format!("SharedExec[{partition}]"))
                .register(context.memory_pool());
            let mut stream = input.execute(partition, context.clone())?;
            let mut batches = Vec::new();
            let mut mine = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let size = batch.get_array_memory_size();
                let total = state.kept.fetch_add(size, Ordering::Relaxed) + size;
                mine += size;
                if total > state.budget || reservation.try_grow(size).is_err() {
                    state.kept.fetch_sub(mine, Ordering::Relaxed);
                    *slot = Slot::TooLarge;
                    drop(slot);
                    batches.push(batch);
                    let kept = futures::stream::iter(batches.into_iter().map(Ok));
                    return Ok(Box::pin(RecordBatchStreamAdapter::new(
                        input.schema(),
                        kept.chain(stream),
                    )) as SendableRecordBatchStream);
                }
                batches.push(batch);
            }
            let batches = Arc::new(batches);
            *slot = if state.consumers > 1 {
                Slot::Kept(batches.clone(), reservation, 1)
            } else {
                Slot::Served
            };
            Ok(replay(&input, batches))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// A stream of `batches`, cloned (Arrow arrays share their buffers).
fn replay(
    input: &Arc<dyn ExecutionPlan>,
    batches: Arc<Vec<RecordBatch>>,
) -> SendableRecordBatchStream {
    let rows = (0..batches.len()).map(move |i| Ok(batches[i].clone()));
    Box::pin(RecordBatchStreamAdapter::new(
        input.schema(),
        futures::stream::iter(rows),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect_partitioned;

    /// An input that counts how often each of its partitions is run.
    #[derive(Debug)]
    struct Counting {
        input: Arc<dyn ExecutionPlan>,
        runs: Arc<AtomicUsize>,
    }

    impl DisplayAs for Counting {
        fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "Counting")
        }
    }

    impl ExecutionPlan for Counting {
        fn name(&self) -> &str {
            "Counting"
        }
        fn properties(&self) -> &Arc<PlanProperties> {
            self.input.properties()
        }
        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![]
        }
        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> Result<TreeNodeRecursion>,
        ) -> Result<TreeNodeRecursion> {
            Ok(TreeNodeRecursion::Continue)
        }
        fn with_new_children(
            self: Arc<Self>,
            _children: Vec<Arc<dyn ExecutionPlan>>,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            Ok(self)
        }
        fn execute(
            &self,
            partition: usize,
            context: Arc<TaskContext>,
        ) -> Result<SendableRecordBatchStream> {
            self.runs.fetch_add(1, Ordering::Relaxed);
            self.input.execute(partition, context)
        }
    }

    /// Two partitions of three batches of 1000 rows each.
    fn input() -> (Arc<dyn ExecutionPlan>, Arc<AtomicUsize>) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let partitions: Vec<Vec<RecordBatch>> = (0..2)
            .map(|p| {
                (0..3)
                    .map(|b| {
                        let values = Int64Array::from_iter_values(
                            (0..1000).map(|i| p * 10_000 + b * 1000 + i),
                        );
                        RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap()
                    })
                    .collect()
            })
            .collect();
        let exec = MemorySourceConfig::try_new_exec(&partitions, schema, None).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        (
            Arc::new(Counting {
                input: exec,
                runs: runs.clone(),
            }),
            runs,
        )
    }

    /// Runs two consumers of `input` sharing a state of `budget` bytes, both at once or
    /// one after the other; returns their outputs.
    async fn two_consumers(
        input: Arc<dyn ExecutionPlan>,
        budget: usize,
        at_once: bool,
    ) -> (Vec<Vec<RecordBatch>>, Vec<Vec<RecordBatch>>) {
        let state = Arc::new(SharedState::with_budget(1, 2, 2, budget));
        let a = Arc::new(SharedExec::new(input.clone(), state.clone()));
        let b = Arc::new(SharedExec::new(input, state));
        let ctx = Arc::new(TaskContext::default());
        if at_once {
            let (x, y) = futures::join!(
                collect_partitioned(a, ctx.clone()),
                collect_partitioned(b, ctx)
            );
            (x.unwrap(), y.unwrap())
        } else {
            let x = collect_partitioned(a, ctx.clone()).await.unwrap();
            (x, collect_partitioned(b, ctx).await.unwrap())
        }
    }

    #[tokio::test]
    async fn the_second_consumer_replays_the_first_ones_batches() {
        for at_once in [false, true] {
            let (input, runs) = input();
            let expected = collect_partitioned(input.clone(), Arc::new(TaskContext::default()))
                .await
                .unwrap();
            runs.store(0, Ordering::Relaxed);
            let (a, b) = two_consumers(input, MAX_SHARED_BYTES, at_once).await;
            assert_eq!(a, expected);
            assert_eq!(b, expected);
            assert_eq!(runs.load(Ordering::Relaxed), 2, "one run per partition");
        }
    }

    #[tokio::test]
    async fn a_subplan_over_the_budget_runs_for_each_consumer() {
        for at_once in [false, true] {
            let (input, runs) = input();
            let expected = collect_partitioned(input.clone(), Arc::new(TaskContext::default()))
                .await
                .unwrap();
            runs.store(0, Ordering::Relaxed);
            // Room for about one batch of the six.
            let budget = expected[0][0].get_array_memory_size() + 1;
            let (a, b) = two_consumers(input, budget, at_once).await;
            assert_eq!(a, expected);
            assert_eq!(b, expected);
            assert_eq!(
                runs.load(Ordering::Relaxed),
                4,
                "each consumer runs each partition"
            );
        }
    }
}
