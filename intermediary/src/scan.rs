//! [`PushdownScanExec`]: the leaf of every plan over a pushdown table. It sends one task per
//! row group or CSV chunk to the storage node and streams the partial results into
//! DataFusion, which merges them (final aggregate, ORDER BY, LIMIT, joins).
//!
//! The tasks are dealt round-robin over the scan's output partitions (as many as
//! DataFusion's `target_partitions`, at most one per task), so the operators above run
//! in parallel. Each partition is an async stream that keeps at most
//! [`TASKS_IN_FLIGHT`] of its tasks started: a consumer that stops polling (a slow client,
//! a join still reading its other side) stops new tasks from starting, and dropping the
//! stream (a satisfied `LIMIT`, an error, a client that went away) drops the tasks not yet
//! started.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use pushdown_protocol::{Expr, FoldRef, PartialAggregate, Pushdown, Task};
use pushdown_storage_node::{TableInfo, TaskMetrics};

use crate::client::StorageClient;

/// Tasks each output partition of a scan keeps started at once: one running, one queued,
/// so the pool never idles between two tasks of a partition.
pub const TASKS_IN_FLIGHT: usize = 2;

/// Counters of one scan, summed over its tasks.
#[derive(Debug, Default)]
pub struct ScanMetrics {
    /// Tasks planned.
    pub tasks: AtomicU64,
    /// The join filter added to the tasks' predicate (its first 200 characters per
    /// conjunct), when a hash join above pushed one that translates.
    pub join_filter: std::sync::Mutex<Option<String>>,
    /// Tasks started (sent to the storage node); the rest were not needed.
    pub tasks_started: AtomicU64,
    /// Tasks finished (scanned or pruned).
    pub tasks_done: AtomicU64,
    /// Tasks skipped by row-group statistics, Bloom filters or the page index.
    pub tasks_pruned: AtomicU64,
    /// Of those, tasks a plugin's `pushdown_can_skip` ruled out (plugin-aware pruning).
    pub tasks_pruned_by_plugins: AtomicU64,
    /// Data pages skipped by page-index pruning in the tasks that ran.
    pub pages_skipped: AtomicU64,
    /// Bytes read from storage.
    pub bytes_read: AtomicU64,
    /// Bytes of Arrow IPC the storage node returned.
    pub bytes_returned: AtomicU64,
    /// Rows parsed.
    pub rows_in: AtomicU64,
    /// Rows that passed the predicate.
    pub rows_selected: AtomicU64,
    /// Rows returned to the intermediary.
    pub rows_out: AtomicU64,
    /// CSV records a lenient dialect padded with NULL.
    pub rows_repaired: AtomicU64,
    /// Tasks a storage node answered from its result cache.
    pub tasks_cached: AtomicU64,
    /// Tasks a storage node ran again natively and compared (`--audit-rate`).
    pub tasks_audited: AtomicU64,
    /// Of those, tasks whose native result differed.
    pub audit_mismatches: AtomicU64,
    /// Tasks a storage node passed through (it read the input, this tier ran the pipeline).
    pub tasks_passed_through: AtomicU64,
    /// Why, with how many tasks each.
    pub passthrough_reasons: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Tasks a storage node folded into the query's fold job instead of returning them.
    pub tasks_folded: AtomicU64,
    /// Of those, tasks the job held from a checkpoint written before the node restarted:
    /// not run again.
    pub tasks_from_checkpoint: AtomicU64,
    /// Fold jobs drained (one per scan partition and storage node).
    pub folds_finished: AtomicU64,
    /// Tasks that only counted a row group's rows, answered from its footer (nothing read).
    pub tasks_from_footer: AtomicU64,
}

impl ScanMetrics {
    fn add(&self, m: &TaskMetrics) {
        self.tasks_done.fetch_add(1, Ordering::Relaxed);
        self.tasks_pruned
            .fetch_add(u64::from(m.pruned), Ordering::Relaxed);
        self.tasks_pruned_by_plugins
            .fetch_add(u64::from(m.pruned_by_plugin), Ordering::Relaxed);
        self.bytes_read.fetch_add(m.bytes_read, Ordering::Relaxed);
        self.bytes_returned
            .fetch_add(m.bytes_returned, Ordering::Relaxed);
        self.rows_in.fetch_add(m.rows_in, Ordering::Relaxed);
        self.rows_selected
            .fetch_add(m.rows_selected, Ordering::Relaxed);
        self.rows_out.fetch_add(m.rows_out, Ordering::Relaxed);
        self.pages_skipped
            .fetch_add(m.pages_skipped, Ordering::Relaxed);
        self.rows_repaired
            .fetch_add(m.rows_repaired, Ordering::Relaxed);
        self.tasks_cached
            .fetch_add(u64::from(m.cached), Ordering::Relaxed);
        self.tasks_audited
            .fetch_add(u64::from(m.audited), Ordering::Relaxed);
        self.audit_mismatches
            .fetch_add(u64::from(m.audit_mismatch), Ordering::Relaxed);
        self.tasks_passed_through
            .fetch_add(u64::from(m.passed_through), Ordering::Relaxed);
        self.tasks_folded
            .fetch_add(u64::from(m.folded), Ordering::Relaxed);
        self.tasks_from_checkpoint
            .fetch_add(u64::from(m.from_checkpoint), Ordering::Relaxed);
        self.tasks_from_footer
            .fetch_add(u64::from(m.from_footer), Ordering::Relaxed);
    }

    /// A drained fold job's result: its rows and bytes, not a task.
    fn add_finished_fold(&self, m: &TaskMetrics) {
        self.folds_finished.fetch_add(1, Ordering::Relaxed);
        self.bytes_returned
            .fetch_add(m.bytes_returned, Ordering::Relaxed);
        self.rows_out.fetch_add(m.rows_out, Ordering::Relaxed);
    }

    fn add_passthrough_reason(&self, reason: &str) {
        let mut reasons = self.passthrough_reasons.lock().expect("not poisoned");
        // A bounded report: reasons past the 16th are counted under the last line.
        let key = if reasons.len() < 16 || reasons.contains_key(reason) {
            reason.to_string()
        } else {
            "other reasons".to_string()
        };
        *reasons.entry(key).or_default() += 1;
    }
}

/// Called as tasks finish, for progress reporting.
pub trait Progress: Send + Sync + fmt::Debug {
    /// `n` more tasks were planned.
    fn add_tasks(&self, n: u64);
    /// One task finished, having read `rows` rows and `bytes` bytes from storage (0 and 0
    /// when it failed).
    fn task_done(&self, rows: u64, bytes: u64);
}

/// Scans a pushdown table through the storage node; see the module doc.
#[derive(Debug, Clone)]
pub struct PushdownScanExec {
    table: Arc<TableInfo>,
    node: Arc<dyn StorageClient>,
    predicate: Option<Expr>,
    pushdown: Pushdown,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: Arc<ScanMetrics>,
    progress: Option<Arc<dyn Progress>>,
    /// Output partitions (at least 1).
    partitions: usize,
    /// Rows wanted at most (a `LIMIT` DataFusion pushed into the scan).
    limit: Option<usize>,
    /// The units this scan runs, by index among the table's units (files in order, units
    /// in file order); `None`: all. A scan split over an intermediary tier runs a part.
    selection: Option<Arc<std::collections::BTreeSet<usize>>>,
    /// Set on a scan decoded from a peer intermediary's plan: its files and units are the
    /// peer's claims, checked against this intermediary's own listing of the table before
    /// any task runs.
    from_peer: bool,
    /// Join filters: dynamic filters a hash join above pushed down (DataFusion's
    /// `DynamicFilterPhysicalExpr`, filled in when the join's build side is complete),
    /// added to the tasks' predicate when the scan's stream is first polled.
    join_filters: Vec<JoinFilter>,
}

/// The min, max (non-NULL) and NULL count of file column `name` over the row groups
/// `groups`, from their footers' statistics; `None` when a row group lacks them or they
/// are not of type `data_type`.
fn column_range(
    groups: &[(&Arc<pushdown_storage_node::FileInfo>, Vec<usize>)],
    name: &str,
    data_type: &DataType,
) -> Option<(
    datafusion::common::ScalarValue,
    datafusion::common::ScalarValue,
    u64,
)> {
    use datafusion::common::ScalarValue;
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    let (mut min, mut max, mut nulls): (Option<ScalarValue>, Option<ScalarValue>, u64) =
        (None, None, 0);
    for (file, rgs) in groups {
        let metadata = &file.footer.as_ref()?.metadata;
        let converter = StatisticsConverter::try_new(
            name,
            &file.schema,
            metadata.file_metadata().schema_descr(),
        )
        .ok()?;
        let row_groups = rgs.iter().map(|&rg| metadata.row_group(rg));
        let mins = converter.row_group_mins(row_groups.clone()).ok()?;
        let maxes = converter.row_group_maxes(row_groups.clone()).ok()?;
        let null_counts = converter.row_group_null_counts(row_groups).ok()?;
        if mins.data_type() != data_type || mins.null_count() > 0 || maxes.null_count() > 0 {
            return None;
        }
        nulls += null_counts.iter().map(|n| n.unwrap_or(0)).sum::<u64>();
        for i in 0..mins.len() {
            let lo = ScalarValue::try_from_array(&mins, i).ok()?;
            let hi = ScalarValue::try_from_array(&maxes, i).ok()?;
            if min.as_ref().is_none_or(|m| lo < *m) {
                min = Some(lo);
            }
            if max.as_ref().is_none_or(|m| hi > *m) {
                max = Some(hi);
            }
        }
    }
    Some((min?, max?, nulls))
}

/// A dynamic filter pushed into the scan, with the scan's output columns as they were when
/// it was pushed (the filter's column indices refer to them).
#[derive(Debug, Clone)]
struct JoinFilter {
    filter: Arc<dyn PhysicalExpr>,
    inputs: Vec<Expr>,
    schema: SchemaRef,
    /// The join's Bloom filter of its build-side keys ([`crate::bloom`]) and the probe key
    /// over the file's columns, when the join has one.
    bloom: Option<(Arc<crate::bloom::BloomSlot>, Expr)>,
}

impl JoinFilter {
    /// The conjuncts of the filter's current expression that translate into the sandbox's
    /// [`Expr`] (a min/max range, an `IN` list); a hash-table lookup or a per-partition
    /// `CASE` does not translate and is left out, which only makes the filter looser.
    fn translated(&self) -> Vec<Expr> {
        use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
        let current = match self.filter.downcast_ref::<DynamicFilterPhysicalExpr>() {
            Some(d) => match d.current() {
                Ok(e) => e,
                Err(_) => return Vec::new(),
            },
            None => self.filter.clone(),
        };
        log::trace!("join filter as DataFusion has it: {current}");
        let conjuncts = |e: &Arc<dyn PhysicalExpr>| -> Vec<Expr> {
            crate::translate::conjuncts(e)
                .iter()
                .filter_map(|c| crate::translate::translate(c, &self.inputs, &self.schema))
                .filter(|e| !matches!(e, Expr::Literal(pushdown_protocol::Literal::Bool(true))))
                .filter(one_pass_in_guest)
                .collect()
        };
        // A partitioned join's filter is `CASE hash(key) % n WHEN 0 THEN <partition 0's
        // filter> ...`: every row passes one branch, so it passes their OR.
        if let Some(case) =
            current.downcast_ref::<datafusion::physical_expr::expressions::CaseExpr>()
        {
            let branches = case
                .when_then_expr()
                .iter()
                .map(|(_, then)| then)
                .chain(case.else_expr());
            let mut branch_conjuncts: Vec<Vec<Expr>> = Vec::new();
            for branch in branches {
                // A branch that is `false` (the `ELSE` of partitions with an empty build
                // side) lets no row through: nothing to add to the OR.
                if branch
                    .downcast_ref::<datafusion::physical_expr::expressions::Literal>()
                    .is_some_and(|l| {
                        l.value() == &datafusion::common::ScalarValue::Boolean(Some(false))
                    })
                {
                    continue;
                }
                match conjuncts(branch) {
                    // A branch that does not translate lets any row through.
                    c if c.is_empty() => return Vec::new(),
                    c => branch_conjuncts.push(c),
                }
            }
            if let Some(union) = union_of_in_lists(&branch_conjuncts) {
                return vec![union];
            }
            let any: Vec<Expr> = branch_conjuncts
                .into_iter()
                .map(|mut c| {
                    if c.len() == 1 {
                        c.remove(0)
                    } else {
                        Expr::And(c)
                    }
                })
                .collect();
            return match any.len() {
                // Every branch is `false`: the build side is empty, no row can match.
                0 => vec![Expr::Literal(pushdown_protocol::Literal::Bool(false))],
                1 => any,
                _ => vec![Expr::Or(any)],
            };
        }
        conjuncts(&current)
    }
}

/// Whether the guest evaluates `e` in about one pass over the rows: anything but an `IN`
/// list of more than 8 values other than integers of an integer or `Date32` column, which
/// the guest probes in a set; any other long list costs one pass per value, so a join
/// filter's list of up to 1024 strings or decimals is left out (its min/max range stays).
fn one_pass_in_guest(e: &Expr) -> bool {
    use datafusion::arrow::datatypes::DataType as T;
    use pushdown_protocol::Literal;
    match e {
        Expr::InList { list, .. } if list.len() > 8 => list.iter().all(|v| match v {
            Expr::Literal(Literal::Int(_, t)) => {
                matches!(t, T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::Date32)
            }
            Expr::Literal(Literal::UInt(_, t)) => matches!(t, T::UInt8 | T::UInt16 | T::UInt32),
            _ => false,
        }),
        _ => true,
    }
}

/// A partitioned join's filter is the OR of its partitions' filters; when every partition's
/// filter holds `key IN (list)` for the same key, a row that passes any of them has its key
/// in the union of the lists: one `IN` (one set probe per row in the guest) instead of an
/// OR of each partition's range and list. `None` when some partition has no such list.
fn union_of_in_lists(branches: &[Vec<Expr>]) -> Option<Expr> {
    let in_list = |c: &[Expr]| {
        c.iter().find_map(|e| match e {
            Expr::InList {
                expr,
                list,
                negated: false,
            } => Some((expr.clone(), list.clone())),
            _ => None,
        })
    };
    let (key, mut union) = in_list(branches.first()?)?;
    let mut seen: std::collections::HashSet<String> =
        union.iter().map(ToString::to_string).collect();
    for branch in &branches[1..] {
        let (k, list) = in_list(branch)?;
        if k != key {
            return None;
        }
        for v in list {
            if seen.insert(v.to_string()) {
                union.push(v);
            }
        }
    }
    Some(Expr::InList {
        expr: key,
        list: union,
        negated: false,
    })
}

/// The scan's properties: its partitions, and cooperative scheduling (its streams consume
/// tokio's task budget, see `execute`), so DataFusion does not wrap it in a
/// `CooperativeExec` that would hide it from the pushdown split.
fn properties(schema: &SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(
        PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative),
    )
}

impl PushdownScanExec {
    /// A scan returning the table's columns `projection` (all when `None`), its tasks
    /// dealt over `target_partitions` output partitions (fewer when there are fewer tasks).
    pub fn new(
        table: Arc<TableInfo>,
        node: Arc<dyn StorageClient>,
        projection: Option<&Vec<usize>>,
        progress: Option<Arc<dyn Progress>>,
        target_partitions: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        let units: usize = table.files.iter().map(|f| f.units.len()).sum();
        // With a LIMIT, one partition runs one task at a time and stops once it has the
        // rows: usually the first task is the only one.
        let partitions = match limit {
            Some(_) => 1,
            None => target_partitions.min(units).max(1),
        };
        let schema = match projection {
            Some(p) => Arc::new(table.schema.project(p)?),
            None => table.schema.clone(),
        };
        let exprs = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), Expr::Column(f.name().clone())))
            .collect();
        Ok(Self {
            table,
            node,
            predicate: None,
            pushdown: Pushdown::Project(exprs),
            properties: properties(&schema, partitions),
            schema,
            metrics: Arc::default(),
            progress,
            partitions,
            limit,
            selection: None,
            from_peer: false,
            join_filters: Vec::new(),
        })
    }

    /// A scan of a peer's plan ([`crate::tier`]): `table` as the peer described it (its
    /// files with only the units to run), checked against this intermediary's own listing
    /// when it executes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_peer(
        table: Arc<TableInfo>,
        node: Arc<dyn StorageClient>,
        predicate: Option<Expr>,
        pushdown: Pushdown,
        schema: SchemaRef,
        partitions: usize,
        limit: Option<usize>,
    ) -> Self {
        let partitions = partitions.max(1);
        Self {
            table,
            node,
            predicate,
            pushdown,
            properties: properties(&schema, partitions),
            schema,
            metrics: Arc::default(),
            progress: None,
            partitions,
            limit,
            selection: None,
            from_peer: true,
            join_filters: Vec::new(),
        }
    }

    /// This scan restricted to the units `selection` (indices among the table's units),
    /// with the same output partitions: one task of a scan split over an intermediary tier.
    pub(crate) fn with_selection(&self, selection: std::collections::BTreeSet<usize>) -> Self {
        Self {
            selection: Some(Arc::new(selection)),
            metrics: Arc::default(),
            ..self.clone()
        }
    }

    /// The table's units this scan runs, with their files, in order.
    pub(crate) fn selected_units(
        &self,
    ) -> Vec<(
        &Arc<pushdown_storage_node::FileInfo>,
        &pushdown_protocol::TaskUnit,
    )> {
        self.table
            .files
            .iter()
            .flat_map(|file| file.units.iter().map(move |unit| (file, unit)))
            .enumerate()
            .filter(|(i, _)| self.selection.as_ref().is_none_or(|s| s.contains(i)))
            .map(|(_, u)| u)
            .collect()
    }

    /// This scan with the Bloom filter `slot` attached to its join filter of expression id
    /// `id` (DataFusion's `PhysicalExpr::expression_id` of the join's dynamic filter);
    /// `None` when the scan holds no such filter or its probe key is not one integer
    /// expression the sandbox evaluates.
    pub(crate) fn with_bloom(
        &self,
        id: u64,
        key_index: usize,
        slot: &Arc<crate::bloom::BloomSlot>,
    ) -> Option<Self> {
        let mut scan = self.clone();
        let filter = scan
            .join_filters
            .iter_mut()
            .find(|j| j.filter.expression_id() == Some(id))?;
        // The dynamic filter's children are the probe-side keys, in the join's `on` order.
        let key = *filter.filter.children().get(key_index)?;
        let integer = crate::bloom::integer_key(&key.data_type(&filter.schema).ok()?);
        if !integer {
            return None;
        }
        let key = crate::translate::translate(key, &filter.inputs, &filter.schema)?;
        filter.bloom = Some((slot.clone(), key));
        Some(scan)
    }

    /// Fills in, from the Parquet footers of the selected row groups, the scan's row count
    /// and each returned column's min, max and null count (`Inexact`), so that DataFusion's
    /// filter selectivity estimate (interval analysis of a `FilterExec` above the scan,
    /// before the pushdown split absorbs it) and hence its choice of a hash join's build
    /// side follow the data. Left unknown for a CSV table, a computed column, or a column
    /// whose footer statistics are missing or of another type.
    fn footer_statistics(&self, stats: &mut datafusion::common::Statistics) {
        use datafusion::common::stats::Precision;
        let (Some(outputs), Some(groups)) = (self.output_exprs(), self.row_groups()) else {
            return;
        };
        let mut rows = 0usize;
        for (file, rgs) in &groups {
            let Some(footer) = &file.footer else { return };
            for &rg in rgs {
                rows += footer.metadata.row_group(rg).num_rows().max(0) as usize;
            }
        }
        stats.num_rows = Precision::Inexact(rows);
        for ((output, field), column) in outputs
            .iter()
            .zip(self.schema.fields())
            .zip(stats.column_statistics.iter_mut())
        {
            let Expr::Column(name) = output else { continue };
            if let Some((min, max, nulls)) = column_range(&groups, name, field.data_type()) {
                column.min_value = Precision::Inexact(min);
                column.max_value = Precision::Inexact(max);
                column.null_count = Precision::Inexact(nulls as usize);
            }
        }
    }

    /// The selected row groups by file, for a Parquet table with footers; `None` for CSV.
    fn row_groups(&self) -> Option<Vec<(&Arc<pushdown_storage_node::FileInfo>, Vec<usize>)>> {
        let mut groups: Vec<(&Arc<pushdown_storage_node::FileInfo>, Vec<usize>)> = Vec::new();
        for (file, unit) in self.selected_units() {
            let pushdown_protocol::TaskUnit::RowGroup(rg) = unit else {
                return None;
            };
            let footer = file.footer.as_ref()?;
            if *rg >= footer.metadata.num_row_groups() {
                return None;
            }
            match groups.last_mut() {
                Some((f, rgs)) if Arc::ptr_eq(f, file) => rgs.push(*rg),
                _ => groups.push((file, vec![*rg])),
            }
        }
        Some(groups)
    }

    /// Whether the join filter conjunct `conjunct` leaves out next to nothing of what the
    /// selected row groups' footers allow: a min/max range of the build side's keys whose
    /// bounds are each within 1 % of the probe column's own span from its min and max (or
    /// an `OR` of such ranges, one per partition); it would cost two comparisons per row to
    /// remove at most 2 % of them. Leaving a join filter conjunct out is always safe (the
    /// join still checks every row); NULL keys it would have removed, the join removes.
    fn removes_nothing(&self, conjunct: &Expr) -> bool {
        use datafusion::common::ScalarValue;
        use pushdown_protocol::{CmpOp, Literal};
        let Some(groups) = self.row_groups() else {
            return false;
        };
        let bound = |column: &str, literal: &Literal, lower: bool| -> bool {
            let Literal::Int(v, _) = literal else {
                return false;
            };
            let field = self.table.schema.field_with_name(column).ok();
            let Some((min, max, _)) =
                field.and_then(|f| column_range(&groups, column, f.data_type()))
            else {
                return false;
            };
            let (Ok(ScalarValue::Int64(Some(min))), Ok(ScalarValue::Int64(Some(max)))) =
                (min.cast_to(&DataType::Int64), max.cast_to(&DataType::Int64))
            else {
                return false;
            };
            // Within 1 % of the column's span of its min (or max): the bound leaves out
            // next to nothing.
            let slack = (max as i128 - min as i128) / 100;
            if lower {
                (*v as i128) <= min as i128 + slack
            } else {
                (*v as i128) >= max as i128 - slack
            }
        };
        fn walk(e: &Expr, bound: &dyn Fn(&str, &Literal, bool) -> bool) -> bool {
            match e {
                Expr::Cmp(op, l, r) => match (op, l.as_ref(), r.as_ref()) {
                    (CmpOp::GtEq, Expr::Column(c), Expr::Literal(v)) => bound(c, v, true),
                    (CmpOp::LtEq, Expr::Column(c), Expr::Literal(v)) => bound(c, v, false),
                    _ => false,
                },
                Expr::And(items) => !items.is_empty() && items.iter().all(|i| walk(i, bound)),
                Expr::Or(items) => items.iter().any(|i| walk(i, bound)),
                _ => false,
            }
        }
        walk(conjunct, &bound)
    }

    /// Units of the whole table (all of them, whatever the selection).
    pub(crate) fn table_units(&self) -> usize {
        self.table.files.iter().map(|f| f.units.len()).sum()
    }

    /// The table scanned.
    pub fn table(&self) -> &TableInfo {
        &self.table
    }

    /// The predicate evaluated in the sandbox.
    pub fn predicate(&self) -> Option<&Expr> {
        self.predicate.as_ref()
    }

    /// What the sandbox computes per task.
    pub fn pushdown(&self) -> &Pushdown {
        &self.pushdown
    }

    /// What decides this scan's output, as text: two scans of one plan with the same key
    /// return the same rows ([`crate::SharedSubplans`]), but for the rows their join
    /// filters remove, which the joins above them would drop anyway. `None` for a scan
    /// decoded from a peer's plan.
    pub(crate) fn share_key(&self) -> Option<String> {
        if self.from_peer {
            return None;
        }
        Some(format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
            self.table.name,
            self.predicate,
            self.pushdown,
            self.limit,
            self.selection,
            self.partitions,
            self.properties.eq_properties.schema()
        ))
    }

    /// This scan without join filters, and with counters of its own: the rows of the
    /// table that pass its predicate, for every consumer of a shared subplan.
    pub(crate) fn without_join_filters(&self) -> Self {
        Self {
            join_filters: Vec::new(),
            metrics: Arc::default(),
            ..self.clone()
        }
    }

    /// The scan's counters (shared by clones).
    pub fn metrics(&self) -> &ScanMetrics {
        &self.metrics
    }

    /// The output columns as expressions over the file, while no aggregate is pushed.
    pub fn output_exprs(&self) -> Option<Vec<Expr>> {
        match &self.pushdown {
            Pushdown::Project(exprs) => Some(exprs.iter().map(|(_, e)| e.clone()).collect()),
            Pushdown::PartialAggregate { .. } => None,
        }
    }

    /// Adds a conjunct to the predicate.
    pub fn with_predicate(&self, predicate: Expr) -> Self {
        let predicate = match self.predicate.clone() {
            None => predicate,
            Some(Expr::And(mut items)) => {
                items.push(predicate);
                Expr::And(items)
            }
            Some(p) => Expr::And(vec![p, predicate]),
        };
        Self {
            predicate: Some(predicate),
            ..self.clone()
        }
    }

    /// Replaces the output with `exprs` (over the file's columns), of `schema`.
    pub fn with_projection(&self, exprs: Vec<Expr>, schema: SchemaRef) -> Self {
        let named = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(exprs)
            .collect();
        Self {
            pushdown: Pushdown::Project(named),
            properties: properties(&schema, self.partitions),
            schema,
            ..self.clone()
        }
    }

    /// Makes the scan return partial aggregate states of `schema` (group columns first).
    pub fn with_partial_aggregate(
        &self,
        group_by: Vec<Expr>,
        aggregates: Vec<PartialAggregate>,
        schema: SchemaRef,
    ) -> Self {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let (group_names, state_names) = names.split_at(group_by.len());
        let pushdown = Pushdown::PartialAggregate {
            group_by: group_names.iter().cloned().zip(group_by).collect(),
            aggregates: state_names.iter().cloned().zip(aggregates).collect(),
        };
        Self {
            pushdown,
            properties: properties(&schema, self.partitions),
            schema,
            metrics: Arc::default(),
            ..self.clone()
        }
    }

    /// The tasks of output partition `partition`: every `partitions`-th unit of the table
    /// (of the selection, when there is one).
    fn tasks(&self, partition: usize) -> Vec<Task> {
        let mut tasks = Vec::new();
        for (i, (file, unit)) in self.selected_units().into_iter().enumerate() {
            if i % self.partitions == partition {
                tasks.push(Task {
                    file: file.path.clone(),
                    format: file.format.clone(),
                    unit: unit.clone(),
                    predicate: self.predicate.clone(),
                    pushdown: self.pushdown.clone(),
                    output_schema: self.schema.as_ref().clone(),
                    limit: self.limit.map(|l| l as u64),
                    fold: None,
                });
            }
        }
        tasks
    }

    /// `tasks` with the join filters' current conjuncts added to their predicate; logs
    /// (debug) and counts them in the metrics.
    fn with_join_filters(&self, mut tasks: Vec<Task>) -> Vec<Task> {
        let mut extra: Vec<Expr> = Vec::new();
        for filter in &self.join_filters {
            let mut conjuncts = filter.translated();
            conjuncts.retain(|c| !self.removes_nothing(c));
            // An `IN` list of the build side's keys is exact: no Bloom filter then.
            let exact = conjuncts.iter().any(|c| matches!(c, Expr::InList { .. }));
            extra.extend(conjuncts);
            if let (Some((slot, key)), false) = (&filter.bloom, exact) {
                if let Some(bitset) = slot.bitset() {
                    extra.push(Expr::BloomFilter {
                        expr: Box::new(key.clone()),
                        bitset: pushdown_protocol::BloomBits(bitset.as_ref().clone()),
                    });
                }
            }
        }
        if extra.is_empty() {
            return tasks;
        }
        let text = extra
            .iter()
            .map(|e| {
                let t = e.to_string();
                match t.char_indices().nth(200) {
                    Some((i, _)) => format!("{}...", &t[..i]),
                    None => t,
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        log::debug!(
            "table {}: join filter pushed to the storage nodes: {text}",
            self.table.name
        );
        *self.metrics.join_filter.lock().expect("not poisoned") = Some(text);
        for task in &mut tasks {
            let mut items = match task.predicate.take() {
                None => Vec::new(),
                Some(Expr::And(items)) => items,
                Some(p) => vec![p],
            };
            items.extend(extra.iter().cloned());
            task.predicate = Some(if items.len() == 1 {
                items.remove(0)
            } else {
                Expr::And(items)
            });
        }
        tasks
    }

    /// Output partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The rows wanted at most, when a `LIMIT` was pushed into the scan.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }
}

impl DisplayAs for PushdownScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = self.selected_units().len();
        write!(
            f,
            "PushdownScanExec: table={}, format={}, files={}, tasks={units}",
            self.table.name,
            self.table.format,
            self.table.files.len()
        )?;
        if let Some(p) = &self.predicate {
            write!(f, ", predicate={p}")?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        match &self.pushdown {
            Pushdown::Project(exprs) => {
                let list: Vec<String> = exprs
                    .iter()
                    .map(|(n, e)| {
                        if matches!(e, Expr::Column(c) if c == n) {
                            n.clone()
                        } else {
                            format!("{e} AS {n}")
                        }
                    })
                    .collect();
                write!(f, ", projection=[{}]", list.join(", "))
            }
            Pushdown::PartialAggregate {
                group_by,
                aggregates,
            } => {
                let g: Vec<String> = group_by.iter().map(|(_, e)| e.to_string()).collect();
                let a: Vec<String> = aggregates.iter().map(|(_, a)| a.to_string()).collect();
                write!(
                    f,
                    ", partial_aggregate=[group_by=[{}], states=[{}]]",
                    g.join(", "),
                    a.join(", ")
                )
            }
        }
    }
}

impl ExecutionPlan for PushdownScanExec {
    fn name(&self) -> &str {
        "PushdownScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "PushdownScanExec has no children".into(),
            ))
        }
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // The pushed-down expressions are already translated out of DataFusion's; the
        // join filters are DataFusion's (a hash join fills its filter in only when a node
        // below it holds it).
        for j in &self.join_filters {
            if f(&j.filter)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    /// Takes the dynamic filters a hash join above pushes down after optimization (the
    /// `Post` phase), when the scan returns rows (not partial aggregates, no `LIMIT`):
    /// they narrow the tasks' predicate on the storage nodes (row-group pruning by
    /// statistics and Bloom filters, rows filtered in the sandbox). Every filter is
    /// reported as not applied, so the join above still evaluates it; the scan's use of
    /// it only ever drops rows the join would drop.
    fn handle_child_pushdown_result(
        &self,
        phase: datafusion::physical_plan::filter_pushdown::FilterPushdownPhase,
        child_pushdown_result: datafusion::physical_plan::filter_pushdown::ChildPushdownResult,
        _config: &datafusion::config::ConfigOptions,
    ) -> Result<
        datafusion::physical_plan::filter_pushdown::FilterPushdownPropagation<
            Arc<dyn ExecutionPlan>,
        >,
    > {
        use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
        use datafusion::physical_plan::filter_pushdown::{
            FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
        };
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let answer = vec![PushedDown::No; filters.len()];
        let inputs = match (phase, self.output_exprs(), self.limit, self.from_peer) {
            (FilterPushdownPhase::Post, Some(inputs), None, false) => inputs,
            _ => {
                return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                    answer,
                ))
            }
        };
        let taken: Vec<JoinFilter> = filters
            .into_iter()
            .filter(|f| f.downcast_ref::<DynamicFilterPhysicalExpr>().is_some())
            .map(|filter| JoinFilter {
                filter,
                inputs: inputs.clone(),
                schema: self.schema.clone(),
                bloom: None,
            })
            .collect();
        let propagation = FilterPushdownPropagation::with_parent_pushdown_result(answer);
        if taken.is_empty() {
            return Ok(propagation);
        }
        let mut scan = self.clone();
        scan.join_filters.extend(taken);
        Ok(propagation.with_updated_node(Arc::new(scan)))
    }

    /// Estimated size of the scan's output for DataFusion's join planning (which side of
    /// a hash join is built, and whether it is collected whole): the bytes of the files'
    /// selected units, times the fraction of the table's columns the scan returns
    /// (`Inexact`; compressed Parquet or CSV bytes, not Arrow's); rows unknown. DataFusion's
    /// `FilterExec` above the scan, before the pushdown split absorbs it, scales this by
    /// its default selectivity. A partition's share is the total over the partitions.
    fn partition_statistics(
        &self,
        partition: Option<usize>,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        use datafusion::common::stats::Precision;
        let units = self.table_units().max(1);
        let selected = self.selected_units().len();
        let bytes: u64 = self.table.files.iter().map(|f| f.len).sum();
        let columns = self.table.schema.fields().len().max(1);
        let returned = match &self.pushdown {
            Pushdown::Project(exprs) => exprs.len().max(1),
            Pushdown::PartialAggregate { .. } => columns,
        };
        let mut estimate =
            bytes as f64 * (selected as f64 / units as f64) * (returned as f64 / columns as f64);
        if partition.is_some() {
            estimate /= self.partitions as f64;
        }
        let mut stats = datafusion::common::Statistics::new_unknown(&self.schema);
        stats.total_byte_size = Precision::Inexact(estimate as usize);
        if partition.is_none() && self.predicate.is_none() {
            self.footer_statistics(&mut stats);
        }
        Ok(Arc::new(stats))
    }

    /// The scan's [`ScanMetrics`] as DataFusion metrics (for `EXPLAIN ANALYZE`, and for
    /// `datafusion-distributed` to collect from the tier's workers): counts of tasks,
    /// pruned tasks, result-cache hits, pages skipped, bytes read and returned (bytes), rows
    /// parsed and selected, and output rows.
    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        use datafusion::physical_plan::metrics::{Count, Metric, MetricValue, MetricsSet};
        let m = &self.metrics;
        let mut set = MetricsSet::new();
        let count = |n: &AtomicU64| {
            let c = Count::new();
            c.add(n.load(Ordering::Relaxed) as usize);
            c
        };
        let named = [
            ("tasks", &m.tasks),
            ("tasks_pruned", &m.tasks_pruned),
            ("tasks_cached", &m.tasks_cached),
            ("tasks_from_footer", &m.tasks_from_footer),
            ("pages_skipped", &m.pages_skipped),
            ("bytes_read", &m.bytes_read),
            ("bytes_returned", &m.bytes_returned),
            ("rows_parsed", &m.rows_in),
            ("rows_selected", &m.rows_selected),
        ];
        for (name, n) in named {
            set.push(Arc::new(Metric::new(
                MetricValue::Count {
                    name: name.into(),
                    count: count(n),
                },
                None,
            )));
        }
        set.push(Arc::new(Metric::new(
            MetricValue::OutputRows(count(&m.rows_out)),
            None,
        )));
        Some(set)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return Err(DataFusionError::Internal(format!(
                "PushdownScanExec has {} partition(s), not {partition}",
                self.partitions
            )));
        }
        let tasks = self.tasks(partition);
        let stream: futures::stream::BoxStream<'static, Result<RecordBatch>> =
            if !self.join_filters.is_empty() {
                // The join polls this side once its build side is complete: the join filters
                // are read then, not now.
                let this = self.clone();
                futures::stream::once(async move {
                    let tasks = this.with_join_filters(tasks);
                    this.run(tasks)
                })
                .flatten()
                .boxed()
            } else if self.from_peer {
                // A peer's claims: checked against this intermediary's own listing first.
                let this = self.clone();
                futures::stream::once(async move { this.checked(tasks).await })
                    .flat_map(move |checked| match checked {
                        Ok((scan, tasks)) => scan.run(tasks),
                        Err(e) => futures::stream::iter([Err(e)]).boxed(),
                    })
                    .boxed()
            } else {
                self.run(tasks)
            };
        // Each batch consumes tokio's task budget: a consumer that never waits still
        // yields now and then, so cancellation and other tasks get their turn.
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            RecordBatchStreamAdapter::new(self.schema.clone(), stream),
        )))
    }
}

impl PushdownScanExec {
    /// Checks a peer's tasks against this intermediary's listing of the table: each task's
    /// file must be one of the table's, and its unit one of that file's. Returns the scan
    /// with the table as listed here, and the tasks with the formats listed here.
    async fn checked(&self, mut tasks: Vec<Task>) -> Result<(Self, Vec<Task>)> {
        let name = &self.table.name;
        let own = self
            .node
            .table(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "a peer intermediary sent a scan of table {name}, which the storage nodes of this intermediary do not have"
                ))
            })?;
        for task in &mut tasks {
            let file = own.files.iter().find(|f| f.path == task.file).ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "a peer intermediary sent a task for file {} of table {name}, which is not a file of that table here",
                    task.file
                ))
            })?;
            if !file.units.contains(&task.unit) {
                return Err(DataFusionError::Plan(format!(
                    "a peer intermediary sent a task for {:?} of file {}, which is not a row group or chunk of that file here",
                    task.unit, task.file
                )));
            }
            task.format = file.format.clone();
        }
        if log::log_enabled!(log::Level::Debug) {
            let files: std::collections::BTreeSet<&str> =
                tasks.iter().map(|t| t.file.as_str()).collect();
            log::debug!(
                "running {} task(s) of table {name} for a tier stage, files: {}",
                tasks.len(),
                files.into_iter().collect::<Vec<_>>().join(" ")
            );
        }
        let scan = Self {
            table: own,
            from_peer: false,
            ..self.clone()
        };
        Ok((scan, tasks))
    }

    /// Runs `tasks` (one output partition's) as a stream of their batches, then drains
    /// their fold job when they were folded on the storage nodes.
    fn run(
        &self,
        mut tasks: Vec<Task>,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        // Checkpointed aggregates: the partition's partial aggregates are folded on the
        // storage nodes into one job, drained after its last task.
        let fold = (self.node.folds()
            && self.limit.is_none()
            && matches!(self.pushdown, Pushdown::PartialAggregate { .. })
            && !tasks.is_empty())
        .then(|| FoldRef {
            job: pushdown_protocol::fold_job_id(&tasks),
            lease: random_lease(),
        });
        if let Some(f) = &fold {
            for t in &mut tasks {
                t.fold = Some(f.clone());
            }
        }
        let finish = fold.map(|f| {
            (
                self.node.clone(),
                f,
                self.schema.as_ref().clone(),
                self.metrics.clone(),
            )
        });
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed_seen = failed.clone();
        self.metrics
            .tasks
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.add_tasks(tasks.len() as u64);
        }
        let node = self.node.clone();
        let started = self.metrics.clone();
        let (metrics, progress) = (self.metrics.clone(), self.progress.clone());
        let window = if self.limit.is_some() {
            1
        } else {
            TASKS_IN_FLIGHT
        };
        // Rows still wanted; no task starts once a LIMIT has its rows.
        let wanted = Arc::new(AtomicU64::new(self.limit.map_or(u64::MAX, |l| l as u64)));
        let (wanted_start, wanted_out) = (wanted.clone(), wanted);
        // Tasks start only as the stream is polled, at most `window` ahead of the
        // consumer; their batches come out in task order.
        let stream = futures::stream::iter(tasks)
            .take_while(move |_| futures::future::ready(wanted_start.load(Ordering::Relaxed) > 0))
            .map(move |task| {
                started.tasks_started.fetch_add(1, Ordering::Relaxed);
                node.clone().run_task(task)
            })
            .buffered(window)
            .flat_map(move |result| {
                if let Some(p) = &progress {
                    let (rows, bytes) = result
                        .as_ref()
                        .map_or((0, 0), |o| (o.metrics.rows_in, o.metrics.bytes_read));
                    p.task_done(rows, bytes);
                }
                let items: Vec<Result<RecordBatch>> = match result {
                    Ok(out) => {
                        metrics.add(&out.metrics);
                        if let Some(reason) = &out.passthrough_reason {
                            metrics.add_passthrough_reason(reason);
                        }
                        let rows: u64 = out.batches.iter().map(|b| b.num_rows() as u64).sum();
                        let left = wanted_out.load(Ordering::Relaxed);
                        wanted_out.store(left.saturating_sub(rows), Ordering::Relaxed);
                        out.batches.into_iter().map(Ok).collect()
                    }
                    Err(e) => {
                        failed_seen.store(true, Ordering::Relaxed);
                        vec![Err(DataFusionError::External(Box::new(e)))]
                    }
                };
                futures::stream::iter(items)
            });
        // After the partition's last task: drain its fold job on every node that folded.
        let drained = futures::stream::iter(finish)
            .filter(move |_| futures::future::ready(!failed.load(Ordering::Relaxed)))
            .then(|(node, fold, schema, metrics)| async move {
                match node.finish_fold(fold, schema).await {
                    Ok(outputs) => outputs
                        .into_iter()
                        .flat_map(|out| {
                            metrics.add_finished_fold(&out.metrics);
                            out.batches.into_iter().map(Ok)
                        })
                        .collect::<Vec<_>>(),
                    Err(e) => vec![Err(DataFusionError::External(Box::new(e)))],
                }
            })
            .flat_map(futures::stream::iter);
        stream.chain(drained).boxed()
    }
}

/// A random run id for a fold job's lease (`RandomState`'s per-process random keys, the
/// time and a counter).
fn random_lease() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::{one_pass_in_guest, union_of_in_lists};
    use datafusion::arrow::datatypes::DataType;
    use pushdown_protocol::{CmpOp, Expr, Literal};

    fn key() -> Box<Expr> {
        Box::new(Expr::Column("k".into()))
    }

    fn ints(values: &[i64]) -> Expr {
        Expr::InList {
            expr: key(),
            list: values
                .iter()
                .map(|&v| Expr::Literal(Literal::Int(v, DataType::Int64)))
                .collect(),
            negated: false,
        }
    }

    fn at_least(v: i64) -> Expr {
        Expr::Cmp(
            CmpOp::GtEq,
            key(),
            Box::new(Expr::Literal(Literal::Int(v, DataType::Int64))),
        )
    }

    #[test]
    fn partitions_lists_on_one_key_become_one_list_of_their_union() {
        let branches = vec![
            vec![at_least(1), ints(&[1, 5, 9])],
            vec![at_least(2), ints(&[2, 5, 10])],
        ];
        assert_eq!(union_of_in_lists(&branches), Some(ints(&[1, 5, 9, 2, 10])));
        // A partition with only a range: its rows are not bounded by any list.
        let branches = vec![vec![ints(&[1, 5])], vec![at_least(2)]];
        assert_eq!(union_of_in_lists(&branches), None);
    }

    #[test]
    fn long_lists_the_guest_cannot_probe_in_a_set_are_left_out() {
        let long: Vec<i64> = (0..20).collect();
        assert!(one_pass_in_guest(&ints(&long)));
        assert!(one_pass_in_guest(&at_least(3)));
        let strings = Expr::InList {
            expr: key(),
            list: (0..20)
                .map(|i| Expr::Literal(Literal::Utf8(format!("s{i}"), DataType::Utf8)))
                .collect(),
            negated: false,
        };
        assert!(!one_pass_in_guest(&strings));
        let timestamps = Expr::InList {
            expr: key(),
            list: (0..20)
                .map(|i| {
                    Expr::Literal(Literal::Int(
                        i,
                        DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Second, None),
                    ))
                })
                .collect(),
            negated: false,
        };
        assert!(!one_pass_in_guest(&timestamps));
    }
}
