//! The query engine: a DataFusion session whose tables live on a storage node, with the
//! pushdown split installed as a physical optimizer rule.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::{collect, displayable, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use pushdown_protocol::PluginRef;
use pushdown_protocol::{needed_columns, Pushdown};
use pushdown_storage_node::{NodeOptions, RegisteredPlugin, StorageNode};

use crate::avg::FloatAvg;
use crate::client::{LocalStorage, StorageClient};
use crate::error::{Error, Result};
use crate::plugins::PluginLoader;
use crate::rule::PushdownRule;
use crate::scan::{Progress, PushdownScanExec};
use crate::table::PushdownSchema;

/// Names of DataFusion's built-in scalar, aggregate and window functions (lower case), which
/// plugins may not take.
pub fn builtin_function_names() -> std::collections::BTreeSet<String> {
    let state = SessionStateBuilder::new().with_default_features().build();
    let mut names = std::collections::BTreeSet::new();
    for (name, f) in state.scalar_functions() {
        names.insert(name.clone());
        names.extend(f.aliases().iter().cloned());
    }
    for (name, f) in state.aggregate_functions() {
        names.insert(name.clone());
        names.extend(f.aliases().iter().cloned());
    }
    for name in state.window_functions().keys() {
        names.insert(name.clone());
    }
    names
}

/// The machine's cores (at least 1).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs SQL over the tables of a storage node.
pub struct Engine {
    ctx: SessionContext,
    /// Names of the plugin functions registered, sorted.
    plugin_functions: std::sync::Mutex<Vec<String>>,
    /// In a tier ([`Engine::with_tier`]): the worker peers run this engine's stages on.
    worker: Option<datafusion_distributed::Worker>,
}

/// An intermediary tier this engine spreads its queries over ([`crate::tier`]).
#[derive(Clone)]
pub struct TierOptions {
    /// The URLs of the tier's workers (this intermediary's own among them), asked at each
    /// query's planning: it may leave out peers found down.
    pub workers: Arc<dyn Fn() -> Vec<url::Url> + Send + Sync>,
    /// This intermediary's own URL as its peers reach it: its stages run in-process.
    pub self_url: url::Url,
    /// Opens (and keeps) the connections to peers, with TLS where they serve it.
    pub channels: Arc<dyn datafusion_distributed::ChannelResolver + Send + Sync>,
    /// Headers sent with every call to a peer (`authorization: Bearer <token>`).
    pub headers: http::HeaderMap,
}

impl std::fmt::Debug for TierOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierOptions")
            .field("workers", &(self.workers)())
            .field("self_url", &self.self_url)
            .finish_non_exhaustive()
    }
}

/// [`TierOptions::workers`] as `datafusion-distributed` asks for it.
struct TierWorkers(Arc<dyn Fn() -> Vec<url::Url> + Send + Sync>);

impl datafusion_distributed::WorkerResolver for TierWorkers {
    fn get_urls(&self) -> std::result::Result<Vec<url::Url>, datafusion::common::DataFusionError> {
        Ok((self.0)())
    }
}

/// A planned query: the physical plan, with the pushdown split applied.
pub struct Query {
    plan: Arc<dyn ExecutionPlan>,
    ctx: SessionContext,
}

impl Engine {
    /// An engine over `node`. `progress`, when given, hears of every task.
    pub fn new(node: Arc<dyn StorageClient>, progress: Option<Arc<dyn Progress>>) -> Self {
        Self::with_memory_limit(node, progress, None)
    }

    /// An engine over `node` whose operators (final aggregates, sorts, joins) hold at most
    /// `memory_limit` bytes (DataFusion's memory pool); past it they spill where they can
    /// and otherwise fail with "memory budget exceeded". `None`: no limit.
    pub fn with_memory_limit(
        node: Arc<dyn StorageClient>,
        progress: Option<Arc<dyn Progress>>,
        memory_limit: Option<usize>,
    ) -> Self {
        Self::with_partitions(node, progress, memory_limit, default_threads())
    }

    /// As [`Engine::with_memory_limit`], with scans dealing their tasks over
    /// `target_partitions` output partitions (DataFusion's `target_partitions`: the
    /// parallelism of the operators above the scans). At least 1.
    pub fn with_partitions(
        node: Arc<dyn StorageClient>,
        progress: Option<Arc<dyn Progress>>,
        memory_limit: Option<usize>,
        target_partitions: usize,
    ) -> Self {
        Self::build(node, progress, memory_limit, target_partitions, None)
            .expect("an engine without a tier builds")
    }

    /// An engine in an intermediary tier: as [`Engine::with_memory_limit`], and each query
    /// is spread over `tier`'s workers by `datafusion-distributed` (see [`crate::tier`]).
    /// Serve [`Engine::worker`] next to the Flight SQL service so peers can run stages here.
    ///
    /// # Errors
    /// [`Error::Query`] when `tier.headers` holds a header `datafusion-distributed`
    /// reserves.
    pub fn with_tier(
        node: Arc<dyn StorageClient>,
        memory_limit: Option<usize>,
        tier: TierOptions,
    ) -> Result<Self> {
        Self::build(node, None, memory_limit, default_threads(), Some(tier))
    }

    /// The worker service of an engine in a tier (`None` otherwise): peers send it the
    /// stages of their queries; it runs them with this engine's functions and storage nodes.
    pub fn worker(&self) -> Option<datafusion_distributed::Worker> {
        self.worker.clone()
    }

    fn build(
        node: Arc<dyn StorageClient>,
        progress: Option<Arc<dyn Progress>>,
        memory_limit: Option<usize>,
        target_partitions: usize,
        tier: Option<TierOptions>,
    ) -> Result<Self> {
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let runtime = runtime
            .build_arc()
            .expect("a runtime with a memory pool builds");
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(target_partitions.max(1));
        // Decimal literals stay decimal (`0.06 - 0.01` is exactly 0.05), as in DuckDB.
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        // A hash join's build side of up to 1024 distinct keys becomes an `IN` list in the
        // join filter pushed to the probe side's storage nodes (DataFusion's default, 150,
        // leaves larger ones a hash-table lookup, which the sandbox cannot evaluate).
        config
            .options_mut()
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values = 1024;
        // A predicate DataFusion's interval analysis cannot estimate (an `OR` of string
        // equalities, `LIKE`) is taken to keep 10 % of the rows, not DataFusion's default 20 %,
        // so that a filtered table is built into a hash join before an unfiltered one of
        // similar size (TPC-H Q12 at SF 1, 2 threads: lineitem's 31 000 shipments, not all
        // 1.5 M orders, are built; 0.30 -> 0.23 s; the 22 queries' sum 5.52 -> 5.36 s).
        config.options_mut().optimizer.default_filter_selectivity = 10;
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.clone())
            .with_default_features()
            .with_optimizer_rule(Arc::new(crate::SemiJoinBelowInnerJoin))
            .with_physical_optimizer_rule(Arc::new(PushdownRule));
        // The engine's session, for the worker's sessions, once it exists.
        let engine_ctx: Arc<std::sync::OnceLock<SessionContext>> = Arc::default();
        let mut worker = None;
        if tier.is_none() {
            builder = builder
                .with_physical_optimizer_rule(Arc::new(crate::BloomJoinFilters))
                .with_physical_optimizer_rule(Arc::new(crate::SharedSubplans));
        }
        if let Some(tier) = tier {
            use datafusion_distributed::{DistributedExt, SessionStateBuilderExt};
            let w =
                datafusion_distributed::Worker::from_session_builder(crate::tier::WorkerSessions {
                    engine: engine_ctx.clone(),
                    node: node.clone(),
                    channels: tier.channels.clone(),
                    headers: tier.headers.clone(),
                })
                .with_runtime_env(runtime);
            builder = builder
                .with_distributed_worker_resolver(TierWorkers(tier.workers.clone()))
                .with_distributed_channel_resolver(tier.channels.clone())
                .with_distributed_passthrough_headers(tier.headers.clone())?
                .with_distributed_user_codec(crate::tier::ScanCodec::new(node.clone()))
                .with_distributed_desired_task_count_handler(crate::tier::desired_task_count)
                .with_distributed_scale_up_leaf_node_handler(crate::tier::scale_up_scan)
                .with_distributed_route_tasks_handler(crate::tier::LocalityRouter::new(
                    node.clone(),
                ))
                .with_distributed_local_worker_context(w.to_local_worker_context(tier.self_url))
                .with_distributed_planner();
            worker = Some(w);
        }
        let state = builder.build();
        let capped = crate::capped::capped_functions(state.scalar_functions().values());
        let ctx = SessionContext::new_with_state(state);
        for f in capped {
            ctx.register_udf(f);
        }
        ctx.register_udaf(FloatAvg::udaf());
        if let Some(catalog) = ctx.catalog("datafusion") {
            let _ =
                catalog.register_schema("public", Arc::new(PushdownSchema::new(node, progress)));
        }
        let _ = engine_ctx.set(ctx.clone());
        Ok(Self {
            ctx,
            plugin_functions: Default::default(),
            worker,
        })
    }

    /// Embedded mode: a storage node over the local folder `data`, in this process, with
    /// as many task threads and partitions as the machine has cores.
    ///
    /// # Errors
    /// When `data` is not a directory or the built-in plugins do not load.
    pub fn embedded(
        data: impl AsRef<Path>,
        options: NodeOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<Self> {
        Self::embedded_with_threads(data, options, progress, default_threads())
    }

    /// Embedded mode with `threads` sandbox threads (the CPU pool tasks run on) and as
    /// many output partitions per scan.
    ///
    /// # Errors
    /// As [`Engine::embedded`].
    pub fn embedded_with_threads(
        data: impl AsRef<Path>,
        options: NodeOptions,
        progress: Option<Arc<dyn Progress>>,
        threads: usize,
    ) -> Result<Self> {
        let node = Arc::new(StorageNode::open(data, options)?);
        let local = LocalStorage::new(node.clone(), threads)?;
        let engine = Self::with_partitions(Arc::new(local), progress, None, threads);
        if let Some(registry) = node.registry() {
            let registered = registry.list()?;
            let loader: PluginLoader = Arc::new(move |r: &PluginRef| node.plugin(r));
            engine.register_plugins(&registered, loader)?;
        }
        Ok(engine)
    }

    /// Makes registered scalar and aggregate plugins callable from SQL, loading their
    /// modules with `loader` when first called.
    ///
    /// # Errors
    /// [`Error::Plugins`] when a stored signature is malformed.
    pub fn register_plugins(
        &self,
        plugins: &[RegisteredPlugin],
        loader: PluginLoader,
    ) -> Result<()> {
        let (scalars, aggregates) =
            crate::plugins::functions(plugins, loader).map_err(Error::Plugins)?;
        let mut names = self.plugin_functions.lock().expect("not poisoned");
        for f in scalars {
            names.push(f.name().to_string());
            self.ctx.register_udf(f);
        }
        for f in aggregates {
            names.push(f.name().to_string());
            self.ctx.register_udaf(f);
        }
        names.sort();
        Ok(())
    }

    /// Parses, plans and splits `sql`.
    ///
    /// # Errors
    /// [`Error::Query`] for SQL syntax errors, unknown tables or columns, and SQL the
    /// engine does not support.
    pub async fn plan(&self, sql: &str) -> Result<Query> {
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| self.unknown_function(e))?;
        let plan = df.create_physical_plan().await?;
        Ok(Query {
            plan,
            ctx: self.ctx.clone(),
        })
    }

    /// Plans and runs `sql`, returning all result batches.
    ///
    /// # Errors
    /// As [`Engine::plan`] and [`Query::collect`].
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.plan(sql).await?.collect().await
    }
}

/// Bounds on SQL text from untrusted clients ([`Engine::plan_read_only`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest SQL text, in bytes. Defaults to 256 KiB.
    pub max_sql_bytes: usize,
    /// Deepest nesting of expressions and subqueries in the parsed statement (a chain
    /// `1+1+...+1` of n terms nests n deep). Defaults to 256.
    pub max_depth: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 256 << 10,
            max_depth: 256,
        }
    }
}

/// Stack of the thread that parses and plans untrusted SQL: deep enough for any statement
/// within [`SqlLimits`]; only the pages touched are committed.
const PLANNING_STACK_BYTES: usize = 256 << 20;

/// Counts the nesting of expressions and queries in a parsed statement, stopping at the
/// limit.
struct Depth {
    now: usize,
    max: usize,
}

impl Depth {
    fn enter(&mut self) -> std::ops::ControlFlow<()> {
        self.now += 1;
        if self.now > self.max {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }

    fn leave(&mut self) -> std::ops::ControlFlow<()> {
        self.now -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

impl datafusion::sql::sqlparser::ast::Visitor for Depth {
    type Break = ();

    fn pre_visit_query(
        &mut self,
        _query: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(
        &mut self,
        _query: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.leave()
    }

    fn pre_visit_expr(
        &mut self,
        _expr: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(
        &mut self,
        _expr: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.leave()
    }
}

/// What kind of statement `statement` is, for refusals: `CREATE EXTERNAL TABLE`, `COPY`,
/// or the first two words of the SQL.
fn statement_kind(statement: &datafusion::sql::parser::Statement) -> String {
    use datafusion::sql::parser::Statement as S;
    match statement {
        S::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".into(),
        S::CopyTo(_) => "COPY".into(),
        S::Reset(_) => "RESET".into(),
        S::Explain(_) => "EXPLAIN".into(),
        S::Statement(s) => {
            // sqlparser prints keywords in upper case: the leading ones name the kind
            // (`CREATE VIEW`, `INSERT INTO`, `SET`).
            let text = s.to_string();
            let words: Vec<&str> = text
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase()))
                .take(4)
                .collect();
            if words.is_empty() {
                "this statement".into()
            } else {
                words.join(" ")
            }
        }
    }
}

impl Engine {
    /// Parses, plans and splits SQL from an untrusted client: only a read-only query
    /// (`SELECT`, `WITH`, `VALUES`, `EXPLAIN [ANALYZE]` of one) is accepted, within `limits`, in a
    /// session state of its own (nothing it does changes what other requests see). The
    /// parse and the plan run on a thread with a large stack, so a deeply nested statement
    /// is refused rather than overflowing a server thread. Follows DataFusion's
    /// `SQLOptions` (no DDL, no DML, no other statements).
    ///
    /// # Errors
    /// [`Error::Refused`] naming the limit or the statement kind (`COPY`, `CREATE VIEW`,
    /// `SET`, ...); otherwise as [`Engine::plan`].
    pub async fn plan_read_only(&self, sql: &str, limits: SqlLimits) -> Result<Query> {
        if sql.len() > limits.max_sql_bytes {
            return Err(Error::Refused(format!(
                "the SQL text is {} bytes, over the limit of {} bytes",
                sql.len(),
                limits.max_sql_bytes
            )));
        }
        // A copy of the session state: settings and temporary objects stay per request.
        let ctx = SessionContext::new_with_state(self.ctx.state());
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sql = sql.to_string();
        std::thread::Builder::new()
            .name("pushdown-plan".into())
            .stack_size(PLANNING_STACK_BYTES)
            .spawn(move || {
                let result = handle.block_on(plan_read_only(ctx, &sql, limits));
                let _ = tx.send(result);
            })
            .map_err(|e| Error::Refused(format!("cannot start a planning thread: {e}")))?;
        let (plan, ctx) = match rx.await {
            Ok(Ok(planned)) => planned,
            Ok(Err(Error::Query(e))) => return Err(self.unknown_function(e)),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Refused("planning failed".into())),
        };
        let query = Query { plan, ctx };
        Ok(query)
    }
}

/// The body of [`Engine::plan_read_only`], on its planning thread.
async fn plan_read_only(
    ctx: SessionContext,
    sql: &str,
    limits: SqlLimits,
) -> Result<(Arc<dyn ExecutionPlan>, SessionContext)> {
    use datafusion::sql::sqlparser::ast::Visit;
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect.clone();
    let statement = state.sql_to_statement(sql, &dialect)?;
    // `EXPLAIN [ANALYZE]` of a query is read-only too.
    let inner = match &statement {
        datafusion::sql::parser::Statement::Explain(e) => e.statement.as_ref(),
        other => other,
    };
    let read_only = match inner {
        datafusion::sql::parser::Statement::Statement(s) => {
            let mut depth = Depth {
                now: 0,
                max: limits.max_depth,
            };
            if s.visit(&mut depth).is_break() {
                return Err(Error::Refused(format!(
                    "the statement nests expressions or subqueries more than {} deep",
                    limits.max_depth
                )));
            }
            matches!(
                s.as_ref(),
                datafusion::sql::sqlparser::ast::Statement::Query(_)
            )
        }
        _ => false,
    };
    if !read_only {
        return Err(Error::Refused(format!(
            "only read-only queries are served; {} is not allowed",
            statement_kind(&statement)
        )));
    }
    let plan = state.statement_to_plan(statement).await?;
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| Error::Refused(format!("only read-only queries are served: {e}")))?;
    let df = ctx.execute_logical_plan(plan).await?;
    let plan = df.create_physical_plan().await?;
    Ok((plan, ctx))
}

impl Engine {
    /// Rewrites DataFusion's "Invalid function 'f'" into a message that names `f` and lists
    /// the registered plugin functions.
    fn unknown_function(&self, e: datafusion::common::DataFusionError) -> Error {
        let text = e.to_string();
        let name = text
            .split_once("Invalid function '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(name, _)| name.to_string());
        match name {
            Some(name) => {
                let registered = self.plugin_functions.lock().expect("not poisoned");
                let list = if registered.is_empty() {
                    "none".to_string()
                } else {
                    registered.join(", ")
                };
                Error::Plugins(format!(
                    "unknown function {name}: it is neither built in nor a registered plugin (registered plugin functions: {list}; see `pushdown plugin list`)"
                ))
            }
            None => Error::Query(e),
        }
    }
}

impl Query {
    /// The physical plan.
    pub fn plan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.plan
    }

    /// Runs the query as a stream of result batches.
    ///
    /// # Errors
    /// When execution cannot start.
    pub fn stream(&self) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        self.stream_with(self.plan.clone())
    }

    /// Runs the query as a stream of result batches, on the tokio runtime this is called
    /// from: its operators spawn their tasks there. The returned stream is `'static` and
    /// may be moved to another runtime's task.
    ///
    /// # Errors
    /// When execution cannot start.
    fn stream_with(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        Ok(datafusion::physical_plan::execute_stream(
            plan,
            self.ctx.task_ctx(),
        )?)
    }

    /// Runs the query on `cpu` (a runtime for CPU-bound work, apart from the one serving
    /// the network), handing batches back through a channel of two: the caller's runtime
    /// stays free for I/O and deadlines even while an operator computes for long between
    /// two batches. Dropping the stream aborts the work on `cpu` at its next yield.
    ///
    /// `hold` (a permit, say) is dropped when the work on `cpu` has really ended, which
    /// after an abort is at the operator's next yield, not when the stream is dropped.
    pub fn stream_on(
        &self,
        cpu: &tokio::runtime::Handle,
        hold: impl Send + 'static,
    ) -> datafusion::physical_plan::SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let plan = self.plan.clone();
        let ctx = self.ctx.task_ctx();
        let schema = plan.schema();
        let task = cpu.spawn(async move {
            let _hold = hold;
            let mut stream = match datafusion::physical_plan::execute_stream(plan, ctx) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            use futures::StreamExt;
            while let Some(item) = stream.next().await {
                if item.is_err() {
                    // Free the query's memory reservations (and stop its operators)
                    // before the client hears of the failure and sends its next query.
                    drop(stream);
                    let _ = tx.send(item).await;
                    return;
                }
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let guard = AbortOnDrop(task.abort_handle());
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|item| (item, (rx, guard)))
        });
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream))
    }

    /// Runs the query.
    ///
    /// # Errors
    /// The first task's error (naming the file, row group or byte range, and plugin), or
    /// an error of the final merge.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        Ok(collect(self.plan.clone(), self.ctx.task_ctx()).await?)
    }

    /// The plan's scans, each once: a subplan several consumers share
    /// ([`crate::SharedExec`]) is looked into at its first consumer only.
    fn scans(&self) -> Vec<PushdownScanExec> {
        let mut scans = Vec::new();
        let mut shared: Vec<crate::SharedExec> = Vec::new();
        let _ = self.plan.apply(|node| {
            if let Some(scan) = node.downcast_ref::<PushdownScanExec>() {
                scans.push(scan.clone());
            }
            if let Some(s) = node.downcast_ref::<crate::SharedExec>() {
                if shared.iter().any(|seen| seen.same_run(s)) {
                    return Ok(TreeNodeRecursion::Jump);
                }
                shared.push(s.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        scans
    }

    /// Describes the split: what runs in Wasm on the storage node, what in the intermediary.
    pub fn explain_split(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== Storage node: in the Wasm sandbox (plugin pushdown-builtin), one task per row group / CSV chunk");
        for scan in self.scans() {
            let t = scan.table();
            let units: usize = t.files.iter().map(|f| f.units.len()).sum();
            let unit = match &t.format {
                pushdown_protocol::FileFormat::Parquet => "row groups",
                pushdown_protocol::FileFormat::Csv => "CSV chunks",
                pushdown_protocol::FileFormat::Plugin(_) => "line chunks",
            };
            let _ = writeln!(
                out,
                "table {} ({}, {} file(s), {units} {unit})",
                t.name,
                t.format,
                t.files.len()
            );
            // Each distinct CSV dialect, with the files read in it.
            let mut dialects: Vec<(&pushdown_protocol::CsvDialect, Vec<&str>)> = Vec::new();
            for f in &t.files {
                if let Some(d) = &f.csv {
                    match dialects.iter_mut().find(|(known, _)| *known == d) {
                        Some((_, files)) => files.push(&f.path),
                        None => dialects.push((d, vec![&f.path])),
                    }
                }
            }
            for (d, files) in &dialects {
                let which = if dialects.len() == 1 {
                    String::new()
                } else {
                    format!(" ({})", files.join(", "))
                };
                let _ = writeln!(out, "  CSV dialect{which}: {d}");
            }
            let read = needed_columns(scan.predicate(), scan.pushdown(), &t.schema);
            let _ = writeln!(out, "  projection (columns read): {}", read.join(", "));
            match scan.predicate() {
                Some(p) => {
                    let _ = writeln!(out, "  predicate: {p}");
                    if t.format == pushdown_protocol::FileFormat::Parquet {
                        let _ = writeln!(out, "  pruning: row groups by min/max statistics and Bloom filters, pages by the page index");
                    }
                }
                None => {
                    let _ = writeln!(out, "  predicate: none");
                }
            }
            match scan.pushdown() {
                Pushdown::Project(exprs) => {
                    let list: Vec<String> =
                        exprs.iter().map(|(n, e)| format!("{e} AS {n}")).collect();
                    let _ = writeln!(out, "  returns rows: {}", list.join(", "));
                }
                Pushdown::PartialAggregate {
                    group_by,
                    aggregates,
                } => {
                    let g: Vec<String> = group_by.iter().map(|(_, e)| e.to_string()).collect();
                    let _ = writeln!(out, "  partial aggregate: group by [{}]", g.join(", "));
                    for (name, a) in aggregates {
                        let _ = writeln!(out, "    {a}  as {name}");
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "== Intermediary: DataFusion merges the partial results"
        );
        let _ = write!(out, "{}", displayable(self.plan.as_ref()).indent(false));
        out
    }

    /// Bytes read from storage and bytes of partial results the storage node returned,
    /// summed over the plan's scans: `(read, returned)`. Call after [`Query::collect`].
    pub fn scan_bytes(&self) -> (u64, u64) {
        self.scans().iter().fold((0, 0), |(read, returned), scan| {
            let m = scan.metrics();
            (
                read + m.bytes_read.load(Ordering::Relaxed),
                returned + m.bytes_returned.load(Ordering::Relaxed),
            )
        })
    }

    /// What the run did, per scanned table: tasks, bytes and rows. Call after [`Query::collect`].
    pub fn run_report(&self) -> String {
        let mut out = String::from("== Run\n");
        if self.plan.name() == "DistributedExec" {
            let _ = writeln!(
                out,
                "(spread over the intermediary tier: its scans ran as stages on the tier's intermediaries and are not counted here; `EXPLAIN ANALYZE` shows every stage, its tasks and the bytes between them)"
            );
        }
        for scan in self.scans() {
            let m = scan.metrics();
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let (tasks, pruned) = (get(&m.tasks), get(&m.tasks_pruned));
            let done = get(&m.tasks_done);
            let _ = writeln!(
                out,
                "table {}: tasks {} scanned, {pruned} pruned, {} not run (of {tasks}); pages skipped {}; bytes read from storage {}; bytes returned by the storage node {}; rows in {}, selected {}, out {}",
                scan.table().name,
                done.saturating_sub(pruned),
                tasks.saturating_sub(done),
                get(&m.pages_skipped),
                get(&m.bytes_read),
                get(&m.bytes_returned),
                get(&m.rows_in),
                get(&m.rows_selected),
                get(&m.rows_out),
            );
            if let Some(filter) = m.join_filter.lock().expect("not poisoned").as_ref() {
                let _ = writeln!(
                    out,
                    "  join filter pushed to the storage nodes (from a hash join's build side; rows parsed that it and the predicate removed: {}): {filter}",
                    get(&m.rows_in).saturating_sub(get(&m.rows_selected))
                );
            }
            let from_footer = get(&m.tasks_from_footer);
            if from_footer > 0 {
                let _ = writeln!(
                    out,
                    "  row groups counted from the footer (COUNT(*) with no predicate: nothing read or run): {from_footer}"
                );
            }
            let by_plugins = get(&m.tasks_pruned_by_plugins);
            if by_plugins > 0 {
                let _ = writeln!(
                    out,
                    "  row groups skipped by plugins (their can_skip ruled out every row from the statistics): {by_plugins}"
                );
            }
            let passed = get(&m.tasks_passed_through);
            if passed > 0 {
                let _ = writeln!(
                    out,
                    "  tasks passed through (the storage node read the input, the intermediary ran the pipeline): {passed}"
                );
                for (reason, n) in m.passthrough_reasons.lock().expect("not poisoned").iter() {
                    let _ = writeln!(out, "    {n}: {reason}");
                }
            }
            let folded = get(&m.tasks_folded);
            if folded > 0 {
                let _ = writeln!(
                    out,
                    "  tasks folded on the storage nodes (partial aggregates merged there, {} fold jobs drained): {folded}, of which held from checkpoints (not run again): {}",
                    get(&m.folds_finished),
                    get(&m.tasks_from_checkpoint)
                );
            }
            let audited = get(&m.tasks_audited);
            if audited > 0 {
                let _ = writeln!(
                    out,
                    "  tasks audited (run again with the native pipeline and compared): {audited}, results that differed: {}",
                    get(&m.audit_mismatches)
                );
            }
            let cached = get(&m.tasks_cached);
            if cached > 0 {
                let _ = writeln!(
                    out,
                    "  tasks answered from the storage nodes' result cache (nothing read or run): {cached}"
                );
            }
            if scan
                .table()
                .files
                .iter()
                .any(|f| f.csv.as_ref().is_some_and(|d| d.lenient))
            {
                let _ = writeln!(
                    out,
                    "  records repaired (--csv-lenient: missing fields read as NULL): {}",
                    get(&m.rows_repaired)
                );
            }
        }
        out
    }
}

impl From<pushdown_storage_node::Error> for Error {
    fn from(e: pushdown_storage_node::Error) -> Self {
        Error::Storage(e)
    }
}
