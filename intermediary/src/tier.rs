//! An intermediary tier: several intermediaries sharing one query's scans, merges and
//! joins, built on `datafusion-distributed` (datafusion-contrib, version 4, on DataFusion
//! 55: <https://datafusion-contrib.github.io/datafusion-distributed/>).
//!
//! The intermediary a client asks plans the query as usual (DataFusion, then the pushdown
//! split), then `datafusion-distributed`'s planner cuts the plan into stages at its
//! repartitions and spreads each stage's tasks over the tier's workers: every intermediary
//! serves a `Worker` next to its Flight SQL service. A [`PushdownScanExec`] becomes one
//! variant per task ([`DistributedLeafExec`]), each with a contiguous run of the table's
//! row groups or chunks; the worker that runs a variant sends its tasks to the storage
//! nodes itself, merges their partial aggregates, and shuffles by group or join key to the
//! others when the plan repartitions. The final stage runs where the query arrived.
//!
//! ```text
//! client ─Flight SQL─▶ intermediary A (plans; final stage)
//!                        │  stage plans (protobuf, our scans as JSON) ─▶ worker B, worker A
//!                        ▼
//!          scans of A's row groups ─▶ storage nodes ◀─ scans of B's row groups
//!          A ◀──── shuffled partial aggregates / join sides (Arrow Flight) ────▶ B
//! ```
//!
//! A worker trusts nothing in a plan it is sent: a scan names a table and units that are
//! checked against the worker's own listing before a task runs ([`ScanCodec`]), and a plan
//! that reads the worker's files any other way or writes anywhere is refused
//! ([`check_peer_plan`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec, RouteTasksEvent,
    RouteTasksEventResponse, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse,
    WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use pushdown_protocol::{Expr, FileFormat, Pushdown, TaskUnit};
use pushdown_storage_node::{FileInfo, TableInfo};
use serde::{Deserialize, Serialize};

use crate::client::StorageClient;
use crate::scan::PushdownScanExec;

/// Version of [`EncodedScan`]; a peer sending another is refused.
const SCAN_CODEC_VERSION: u32 = 1;

/// Most units one encoded scan may name (a peer's plan is bounded).
const MAX_UNITS: usize = 1 << 20;

/// Most output partitions a peer may ask a scan for.
const MAX_PARTITIONS: usize = 1024;

/// A [`PushdownScanExec`] as it crosses to a peer: what to run, and which units, by file
/// path and unit; never where the files are.
#[derive(Serialize, Deserialize)]
struct EncodedScan {
    version: u32,
    table: String,
    format: FileFormat,
    table_schema: Schema,
    output_schema: Schema,
    predicate: Option<Expr>,
    pushdown: Pushdown,
    partitions: usize,
    limit: Option<usize>,
    units: Vec<(String, TaskUnit)>,
}

/// Encodes and decodes [`PushdownScanExec`] for `datafusion-distributed` (a
/// `datafusion-proto` [`PhysicalExtensionCodec`], as JSON). A decoded scan runs its tasks
/// through `node`, this intermediary's storage nodes, after checking them against its
/// listing.
#[derive(Debug)]
pub struct ScanCodec {
    node: Arc<dyn StorageClient>,
}

impl ScanCodec {
    /// A codec whose decoded scans run on `node`.
    pub fn new(node: Arc<dyn StorageClient>) -> Self {
        Self { node }
    }
}

fn codec_error(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("a scan sent by a peer intermediary: {what}"))
}

impl PhysicalExtensionCodec for ScanCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(codec_error("a scan has no inputs"));
        }
        let e: EncodedScan = serde_json::from_slice(buf).map_err(codec_error)?;
        if e.version != SCAN_CODEC_VERSION {
            return Err(codec_error(format!(
                "encoding version {}, this intermediary reads {SCAN_CODEC_VERSION}: run the same pushdown release on every intermediary",
                e.version
            )));
        }
        if e.units.len() > MAX_UNITS || e.partitions == 0 || e.partitions > MAX_PARTITIONS {
            return Err(codec_error(format!(
                "{} units in {} partitions, over the bounds ({MAX_UNITS} units, 1 to {MAX_PARTITIONS} partitions)",
                e.units.len(),
                e.partitions
            )));
        }
        let table_schema = Arc::new(e.table_schema);
        // The peer's claims, grouped by file in their order; checked when the scan runs.
        let mut files: Vec<(String, Vec<TaskUnit>)> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (path, unit) in e.units {
            let i = *index.entry(path.clone()).or_insert_with(|| {
                files.push((path, Vec::new()));
                files.len() - 1
            });
            files[i].1.push(unit);
        }
        let files = files
            .into_iter()
            .map(|(path, units)| {
                Arc::new(FileInfo {
                    path,
                    abs_path: PathBuf::new(),
                    len: 0,
                    format: e.format.clone(),
                    units,
                    footer: None,
                    schema: table_schema.clone(),
                    csv: None,
                })
            })
            .collect();
        let table = Arc::new(TableInfo {
            name: e.table,
            format: e.format,
            schema: table_schema,
            files,
        });
        Ok(Arc::new(PushdownScanExec::from_peer(
            table,
            self.node.clone(),
            e.predicate,
            e.pushdown,
            Arc::new(e.output_schema),
            e.partitions,
            e.limit,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<PushdownScanExec>() else {
            return Err(DataFusionError::Internal(format!(
                "ScanCodec encodes PushdownScanExec, not {}",
                node.name()
            )));
        };
        let table = scan.table();
        let encoded = EncodedScan {
            version: SCAN_CODEC_VERSION,
            table: table.name.clone(),
            format: table.format.clone(),
            table_schema: table.schema.as_ref().clone(),
            output_schema: scan.schema().as_ref().clone(),
            predicate: scan.predicate().cloned(),
            pushdown: scan.pushdown().clone(),
            partitions: scan.partitions(),
            limit: scan.limit(),
            units: scan
                .selected_units()
                .into_iter()
                .map(|(f, u)| (f.path.clone(), u.clone()))
                .collect(),
        };
        serde_json::to_writer(buf, &encoded)
            .map_err(|e| DataFusionError::Internal(format!("encoding a scan: {e}")))
    }
}

/// How many tier tasks a scan's stage asks for: one per row group or chunk (the planner
/// caps it at the tier's size); a scan with a `LIMIT` runs as one task.
pub(crate) fn desired_task_count(
    ev: DesiredTaskCountEvent,
) -> Option<Result<DesiredTaskCountEventResponse>> {
    let scan = ev.plan.downcast_ref::<PushdownScanExec>()?;
    if scan.limit().is_some() {
        return Some(Ok(DesiredTaskCountEventResponse::maximum(1)));
    }
    Some(Ok(DesiredTaskCountEventResponse::desired(
        scan.selected_units().len().max(1),
    )))
}

/// Splits a scan over `task_count` tier tasks: task `t` runs the `t`-th contiguous run of
/// the table's units (so a file's row groups mostly stay with one intermediary), with the
/// scan's output partitions.
pub(crate) fn scale_up_scan(
    ev: ScaleUpLeafNodeEvent,
) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = ev.plan.downcast_ref::<PushdownScanExec>()?;
    let k = ev.task_count.max(1);
    if k == 1 {
        return Some(Ok(ScaleUpLeafNodeEventResponse::new(ev.plan.clone())));
    }
    let n = scan.table_units();
    let variants = (0..k).map(|t| {
        let selection = (t * n / k..(t + 1) * n / k).collect();
        Arc::new(scan.with_selection(selection)) as Arc<dyn ExecutionPlan>
    });
    Some(
        DistributedLeafExec::try_new(ev.plan.clone(), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// Routes a stage's tasks to the intermediaries near their data: an intermediary is near
/// a storage node when both URLs name the same host (node-local placement, as HDFS's and
/// Spark's `NODE_LOCAL` level). A stage whose tasks run pushdown scans
/// ([`DistributedLeafExec`] variants of [`PushdownScanExec`]) counts, for each task and
/// each worker, the task's row groups or chunks whose file has a copy on a node near that
/// worker, and [`assign_near`] places the tasks. Other stages, and stages where no task has
/// a unit near any worker, keep `datafusion-distributed`'s round-robin (`None`).
#[derive(Debug)]
pub(crate) struct LocalityRouter {
    node: Arc<dyn StorageClient>,
}

impl LocalityRouter {
    pub(crate) fn new(node: Arc<dyn StorageClient>) -> Self {
        Self { node }
    }

    /// `near[t][w]`: units of task `t` whose file has a replica on `workers[w]`'s host;
    /// `None` when the stage runs no pushdown scan.
    fn near(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        task_count: usize,
        workers: &[url::Url],
    ) -> Option<Vec<Vec<usize>>> {
        use datafusion_distributed::NetworkBoundaryExt;
        let mut near = vec![vec![0usize; workers.len()]; task_count];
        let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut found = false;
        let _ = plan.apply(|p| {
            // The stage ends at its network boundaries: below them are other stages.
            if p.is_network_boundary() {
                return Ok(TreeNodeRecursion::Jump);
            }
            let Some(leaf) = p.downcast_ref::<DistributedLeafExec>() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            for (t, variant) in leaf.variants().iter().enumerate().take(task_count) {
                let Some(scan) = variant.downcast_ref::<PushdownScanExec>() else {
                    continue;
                };
                found = true;
                for (file, _) in scan.selected_units() {
                    let file_hosts = hosts.entry(file.path.clone()).or_insert_with(|| {
                        self.node
                            .replica_urls(&file.path)
                            .iter()
                            .filter_map(|u| url::Url::parse(u).ok())
                            .filter_map(|u| u.host_str().map(str::to_string))
                            .collect()
                    });
                    for (w, worker) in workers.iter().enumerate() {
                        if worker
                            .host_str()
                            .is_some_and(|h| file_hosts.iter().any(|f| f == h))
                        {
                            near[t][w] += 1;
                        }
                    }
                }
            }
            Ok(TreeNodeRecursion::Jump)
        });
        found.then_some(near)
    }
}

impl datafusion_distributed::RouteTasksHandler for LocalityRouter {
    fn handle(&self, ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
        let workers =
            datafusion_distributed::get_distributed_worker_resolver(ev.task_ctx.session_config())
                .ok()?
                .get_urls()
                .ok()?;
        if workers.len() < 2 || ev.task_count < 2 {
            return None;
        }
        let near = self.near(ev.plan, ev.task_count, &workers)?;
        if near.iter().flatten().all(|&n| n == 0) {
            return None;
        }
        let placed = assign_near(&near, workers.len());
        for (t, &w) in placed.iter().enumerate() {
            log::debug!(
                "task {t} of a scan stage goes to {} ({} of its units near it)",
                workers[w],
                near[t][w]
            );
        }
        Some(Ok(RouteTasksEventResponse::new(
            placed.into_iter().map(|w| workers[w].clone()).collect(),
        )))
    }
}

/// Places tasks on `workers` workers, near their data but evenly: `near[t][w]` is how
/// many of task `t`'s units are near worker `w`. Each worker takes at most
/// ⌈tasks / workers⌉ tasks (the round-robin's balance); tasks with the most units near one
/// worker choose first, each the worker with room that has the most of its units near,
/// ties going to the least loaded. Returns each task's worker index, in task order.
pub(crate) fn assign_near(near: &[Vec<usize>], workers: usize) -> Vec<usize> {
    let tasks = near.len();
    let room = tasks.div_ceil(workers.max(1));
    let mut load = vec![0usize; workers];
    let mut placed = vec![0usize; tasks];
    let mut order: Vec<usize> = (0..tasks).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(near[t].iter().copied().max().unwrap_or(0)));
    for t in order {
        let w = (0..workers)
            .filter(|&w| load[w] < room)
            .max_by_key(|&w| {
                (
                    near[t].get(w).copied().unwrap_or(0),
                    std::cmp::Reverse(load[w]),
                    std::cmp::Reverse((w + workers - t % workers) % workers),
                )
            })
            .unwrap_or(t % workers);
        load[w] += 1;
        placed[t] = w;
    }
    placed
}

/// Refuses a stage plan sent by a peer that would read this intermediary's own files
/// (DataFusion's file scans: only in-memory sources such as `VALUES` pass) or write
/// anything (`DataSinkExec`); every other operator only transforms its inputs, and every
/// scan of a pushdown table is checked against this intermediary's listing when it runs.
///
/// # Errors
/// A plan error naming the operator.
pub fn check_peer_plan(ev: WorkerPlanRewriteEvent) -> Result<WorkerPlanRewriteEventResponse> {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::source::DataSourceExec;
    ev.plan.apply(|node| {
        if node.name() == "DataSinkExec" {
            return Err(DataFusionError::Plan(
                "a peer intermediary sent a plan that writes (DataSinkExec): refused".into(),
            ));
        }
        if let Some(source) = node.downcast_ref::<DataSourceExec>() {
            if source
                .data_source()
                .downcast_ref::<MemorySourceConfig>()
                .is_none()
            {
                return Err(DataFusionError::Plan(
                    "a peer intermediary sent a plan that reads files of this intermediary (DataSourceExec): refused".into(),
                ));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(WorkerPlanRewriteEventResponse::new(ev.plan))
}

/// Builds the session each stage a peer sends runs in: this engine's functions (built-in,
/// capped, plugins), the scan codec over this intermediary's storage nodes, the tier's
/// connections and headers for the stages it calls in turn, and [`check_peer_plan`].
pub(crate) struct WorkerSessions {
    /// The engine's session, set once it is built.
    pub(crate) engine: Arc<std::sync::OnceLock<datafusion::prelude::SessionContext>>,
    pub(crate) node: Arc<dyn StorageClient>,
    pub(crate) channels: Arc<dyn datafusion_distributed::ChannelResolver + Send + Sync>,
    pub(crate) headers: http::HeaderMap,
}

#[async_trait::async_trait]
impl datafusion_distributed::WorkerSessionBuilder for WorkerSessions {
    async fn build_session_state(
        &self,
        ctx: datafusion_distributed::WorkerQueryContext,
    ) -> Result<datafusion::execution::SessionState> {
        use datafusion_distributed::DistributedExt;
        let Some(engine) = self.engine.get() else {
            return Err(DataFusionError::Execution(
                "this intermediary is still starting; try again".into(),
            ));
        };
        let state = engine.state();
        Ok(ctx
            .builder
            .with_scalar_functions(state.scalar_functions().values().cloned().collect())
            .with_aggregate_functions(state.aggregate_functions().values().cloned().collect())
            .with_window_functions(state.window_functions().values().cloned().collect())
            .with_distributed_user_codec(ScanCodec::new(self.node.clone()))
            .with_distributed_channel_resolver(self.channels.clone())
            .with_distributed_passthrough_headers(self.headers.clone())?
            .with_distributed_worker_plan_rewrite_handler(check_peer_plan)
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::assign_near;

    #[test]
    fn tasks_go_near_their_data_while_workers_stay_balanced() {
        // Task 0's units are all near worker 1, task 1's near worker 0.
        assert_eq!(assign_near(&[vec![0, 5], vec![4, 0]], 2), vec![1, 0]);
        // All four tasks are near worker 0: it takes two (its share), worker 1 the rest,
        // the most local ones staying on worker 0.
        let placed = assign_near(&[vec![1, 0], vec![9, 0], vec![8, 0], vec![2, 0]], 2);
        assert_eq!(placed, vec![1, 0, 0, 1]);
        // Nothing near anyone: round-robin.
        assert_eq!(assign_near(&vec![vec![0, 0, 0]; 3], 3), vec![0, 1, 2]);
        // More workers than tasks.
        assert_eq!(assign_near(&[vec![0, 0, 3]], 3), vec![2]);
    }
}
