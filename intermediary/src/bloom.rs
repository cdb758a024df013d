//! Bloom join filters: a hash join's build-side keys, as a split-block Bloom filter, go to
//! the storage nodes of its probe-side scan.
//!
//! DataFusion's join filter (its dynamic filter, see [`crate::PushdownScanExec`]) holds the
//! build side's keys as an `IN` list only up to 1024 keys; past that it holds a min/max
//! range and a lookup into the join's own hash table, which the sandbox cannot evaluate. On
//! TPC-H the range removes nothing (the keys of a few orders spread over all order keys), so
//! lineitem's 6 M rows all come back from the storage nodes to meet 3 % of them in the join.
//! Here the build side's keys are also gathered as they stream into the join, made into a
//! Parquet-format split-block Bloom filter ([`parquet::bloom_filter::Sbbf`], 1 % false
//! positives) once every build partition is complete, and added to the probe-side tasks'
//! predicate as [`pushdown_protocol::Expr::BloomFilter`]: the sandbox drops the rows whose
//! key is surely absent. This is Oracle Exadata's Bloom join filter offload, and the Bloom
//! filter a distributed join sends to its probe side's scans (Spark's runtime filters).
//!
//! Applies to a hash join with an integer key whose probe side holds the join's dynamic
//! filter in a [`crate::PushdownScanExec`] over Parquet or CSV: DataFusion then already
//! filters that scan by membership in the build side, and a Bloom filter only lets through
//! a superset of those rows. A join on several keys gets a filter on its first integer key
//! alone (a row whose key is not among the build side's cannot match on all keys): TPC-H
//! Q20's lineitem aggregate meets partsupp on `(partkey, suppkey)`, and DataFusion's filter
//! for two keys holds, besides their ranges, an `IN` list of pairs the sandbox cannot
//! evaluate. A filter is used only when complete and when it fits
//! [`MAX_BITSET_BYTES`] at [`FALSE_POSITIVE_RATE`] (about 430 000 keys) and its keys are
//! sparse in their range (see [`bitset`]); a build side of up to 1024 keys needs none
//! (DataFusion's filter holds them as an `IN` list).

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{NullEquality, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::scan::PushdownScanExec;

/// Most build-side keys gathered for a Bloom join filter; past this the build side gets
/// none (its filter would not fit [`MAX_BITSET_BYTES`] at [`FALSE_POSITIVE_RATE`]).
pub const MAX_KEYS: usize = 1 << 19;

/// The largest bitset made: every task of the probe-side scan carries a copy (base64 in
/// its request), so a large one costs more to send and decode than it saves; 512 KiB holds
/// about 430 000 keys at 1 % false positives.
const MAX_BITSET_BYTES: usize = 512 << 10;

/// False positive rate the bitset is sized for.
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The build side's keys, gathered partition by partition, and the filter made of them.
#[derive(Debug)]
pub(crate) struct BloomSlot {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    /// Keys of the partitions complete so far (`None` once over [`MAX_KEYS`]).
    keys: Option<Vec<i64>>,
    /// Which build partitions are complete.
    done: Vec<bool>,
    /// The filter's bitset, once every partition is complete.
    bitset: Option<Arc<Vec<u8>>>,
}

impl BloomSlot {
    fn new(partitions: usize) -> Self {
        Self {
            state: Mutex::new(SlotState {
                keys: Some(Vec::new()),
                done: vec![false; partitions],
                bitset: None,
            }),
        }
    }

    /// Adds build partition `partition`'s keys (`None`: too many); makes the filter when it
    /// was the last partition.
    fn complete(&self, partition: usize, keys: Option<Vec<i64>>) {
        let mut state = self.state.lock().expect("not poisoned");
        match (state.keys.as_mut(), keys) {
            (Some(all), Some(keys)) if all.len() + keys.len() <= MAX_KEYS => all.extend(keys),
            _ => state.keys = None,
        }
        if let Some(done) = state.done.get_mut(partition) {
            *done = true;
        }
        if state.done.iter().all(|d| *d) {
            state.bitset = state
                .keys
                .take()
                .and_then(|mut keys| bitset(&mut keys))
                .map(Arc::new);
        }
    }

    /// The filter's bitset, once every build partition is complete, if it fits.
    pub(crate) fn bitset(&self) -> Option<Arc<Vec<u8>>> {
        self.state.lock().expect("not poisoned").bitset.clone()
    }
}

/// A split-block Bloom filter of `keys` (each hashed as its little-endian `i64`), sized
/// for [`FALSE_POSITIVE_RATE`]; `None` when that is over [`MAX_BITSET_BYTES`], or when the
/// distinct keys fill at least half of the range from their min to their max: the join
/// filter's range already keeps the probe keys to that range, and a Bloom filter could
/// drop at most half of the rows in it (TPC-H Q9's 10 000 supplier keys 1 to 10 000: none).
fn bitset(keys: &mut Vec<i64>) -> Option<Vec<u8>> {
    use parquet::bloom_filter::Sbbf;
    let (min, max) = (keys.iter().min()?, keys.iter().max()?);
    let span = (*max as i128 - *min as i128 + 1) as f64;
    if keys.len() as f64 >= span / 2.0 {
        // Counted with duplicates so far; dense only if the distinct keys are.
        keys.sort_unstable();
        keys.dedup();
        if keys.len() as f64 >= span / 2.0 {
            return None;
        }
    }
    let sized = |n: usize| {
        Sbbf::new_with_ndv_fpp(n.max(1) as u64, FALSE_POSITIVE_RATE)
            .ok()
            .filter(|s| s.num_blocks() * 32 <= MAX_BITSET_BYTES)
    };
    let mut sbbf = match sized(keys.len()) {
        Some(s) => s,
        None => {
            // Too large counted with duplicates: size it for the distinct keys.
            keys.sort_unstable();
            keys.dedup();
            sized(keys.len())?
        }
    };
    for k in keys {
        sbbf.insert(k);
    }
    let mut out = Vec::with_capacity(sbbf.num_blocks() * 32);
    sbbf.write_bitset(&mut out).ok()?;
    Some(out)
}

/// Whether a join key of this type can go into a Bloom join filter (the sandbox hashes it
/// as an `i64`).
pub(crate) fn integer_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
    )
}

/// Passes the build side of a hash join through unchanged, gathering its key column; when
/// a partition's stream ends, hands its keys to the [`BloomSlot`] the probe side's scan reads.
#[derive(Debug)]
pub struct BloomBuildExec {
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    slot: Arc<BloomSlot>,
}

impl DisplayAs for BloomBuildExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "BloomBuildExec: key={}", self.key)
    }
}

impl ExecutionPlan for BloomBuildExec {
    fn name(&self) -> &str {
        "BloomBuildExec"
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.key)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(
                "BloomBuildExec has one child".into(),
            ));
        }
        Ok(Arc::new(Self {
            input: children.remove(0),
            key: self.key.clone(),
            slot: self.slot.clone(),
        }))
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<datafusion::common::Statistics>],
        _args: &datafusion::physical_plan::statistics::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        Ok(input_stats[0].clone())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(Gather {
            input: self.input.execute(partition, context)?,
            key: self.key.clone(),
            keys: Some(Vec::new()),
            slot: self.slot.clone(),
            partition,
            ended: false,
        }))
    }
}

/// The stream of one build partition: its batches unchanged, their keys gathered.
struct Gather {
    input: SendableRecordBatchStream,
    key: Arc<dyn PhysicalExpr>,
    /// Keys so far; `None` once over [`MAX_KEYS`], not evaluable, or after an error.
    keys: Option<Vec<i64>>,
    slot: Arc<BloomSlot>,
    partition: usize,
    ended: bool,
}

impl Gather {
    fn gather(&mut self, batch: &RecordBatch) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let column = self
            .key
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .and_then(|a| Ok(datafusion::arrow::compute::cast(&a, &DataType::Int64)?));
        match column {
            Ok(a) if keys.len() + a.len() <= MAX_KEYS => {
                keys.extend(a.as_primitive::<Int64Type>().iter().flatten());
            }
            _ => self.keys = None,
        }
    }
}

impl futures::Stream for Gather {
    type Item = Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match self.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.gather(&batch);
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.keys = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if !self.ended {
                    self.ended = true;
                    let keys = self.keys.take();
                    self.slot.complete(self.partition, keys);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl datafusion::physical_plan::RecordBatchStream for Gather {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.input.schema()
    }
}

/// The physical optimizer rule that adds Bloom join filters (see the module doc); it runs
/// after [`crate::PushdownRule`], once DataFusion has pushed its dynamic filters into the
/// scans. Not used in an intermediary tier (a plan split between intermediaries) or in a
/// recursive query (whose joins run again with other build sides).
#[derive(Debug, Default)]
pub struct BloomJoinFilters;

impl PhysicalOptimizerRule for BloomJoinFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut recursive = false;
        plan.apply(|node| {
            recursive |= node.downcast_ref::<RecursiveQueryExec>().is_some();
            Ok(TreeNodeRecursion::Continue)
        })?;
        if recursive {
            return Ok(plan);
        }
        Ok(plan.transform_up(add_bloom_filter)?.data)
    }

    fn name(&self) -> &str {
        "bloom_join_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with a Bloom join filter from its build side to its probe side's scan, when it is
/// a hash join the module doc's conditions hold for.
fn add_bloom_filter(node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return Ok(Transformed::no(node));
    };
    let produced = join.dynamic_expressions_produced();
    let Some(id) = produced.first().and_then(|d| d.expression_id()) else {
        return Ok(Transformed::no(node));
    };
    let build_schema = join.left().schema();
    let Some((key_index, (build_key, _))) = join
        .on()
        .iter()
        .enumerate()
        .find(|(_, (k, _))| k.data_type(&build_schema).is_ok_and(|t| integer_key(&t)))
    else {
        return Ok(Transformed::no(node));
    };
    if join.null_equality() != NullEquality::NullEqualsNothing {
        return Ok(Transformed::no(node));
    }
    let slot = Arc::new(BloomSlot::new(
        join.left().output_partitioning().partition_count(),
    ));
    let probe = join.right().clone().transform_down(|n| {
        let Some(scan) = n.downcast_ref::<PushdownScanExec>() else {
            return Ok(Transformed::no(n));
        };
        Ok(match scan.with_bloom(id, key_index, &slot) {
            Some(scan) => Transformed::new(Arc::new(scan), true, TreeNodeRecursion::Stop),
            None => Transformed::no(n),
        })
    })?;
    if !probe.transformed {
        return Ok(Transformed::no(node));
    }
    let build: Arc<dyn ExecutionPlan> = Arc::new(BloomBuildExec {
        input: join.left().clone(),
        key: build_key.clone(),
        slot,
    });
    let joined = node.clone().replace_children(
        vec![build, probe.data],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )?;
    Ok(Transformed::yes(joined))
}

#[cfg(test)]
mod tests {
    use super::bitset;

    #[test]
    fn keys_that_fill_their_range_get_no_bloom_filter_and_sparse_ones_do() {
        // All supplier keys 1..=10 000 (repeated, as a build side's rows repeat them).
        let mut dense: Vec<i64> = (1..=10_000).chain(1..=10_000).collect();
        assert!(bitset(&mut dense).is_none());
        // One order key in 26 between 1 and 6 000 000, each twice: a filter of 16 KiB or more.
        let mut sparse: Vec<i64> = (0..230_000).map(|i| 1 + i * 26).collect();
        sparse.extend(sparse.clone());
        let bits = bitset(&mut sparse).expect("sparse keys get a filter");
        assert!(bits.len().is_power_of_two() && bits.len() >= 16 << 10);
        // Too many keys for the largest bitset at 1 % false positives: none.
        let mut many: Vec<i64> = (0..1_000_000).map(|i| i * 100).collect();
        assert!(bitset(&mut many).is_none());
    }
}
