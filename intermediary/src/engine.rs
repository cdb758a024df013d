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

/// Runs SQL over the tables of a storage node.
pub struct Engine {
    ctx: SessionContext,
    /// Names of the plugin functions registered, sorted.
    plugin_functions: std::sync::Mutex<Vec<String>>,
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
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let runtime = runtime
            .build_arc()
            .expect("a runtime with a memory pool builds");
        let mut config = SessionConfig::new().with_information_schema(false);
        // Decimal literals stay decimal (`0.06 - 0.01` is exactly 0.05), as in DuckDB.
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(PushdownRule))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udaf(FloatAvg::udaf());
        if let Some(catalog) = ctx.catalog("datafusion") {
            let _ =
                catalog.register_schema("public", Arc::new(PushdownSchema::new(node, progress)));
        }
        Self {
            ctx,
            plugin_functions: Default::default(),
        }
    }

    /// Embedded mode: a storage node over the local folder `data`, in this process.
    ///
    /// # Errors
    /// When `data` is not a directory or the built-in plugins do not load.
    pub fn embedded(
        data: impl AsRef<Path>,
        options: NodeOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<Self> {
        let node = Arc::new(StorageNode::open(data, options)?);
        let engine = Self::new(Arc::new(LocalStorage(node.clone())), progress);
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
        Ok(datafusion::physical_plan::execute_stream(
            self.plan.clone(),
            self.ctx.task_ctx(),
        )?)
    }

    /// Runs the query.
    ///
    /// # Errors
    /// The first task's error (naming the file, row group or byte range, and plugin), or
    /// an error of the final merge.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        Ok(collect(self.plan.clone(), self.ctx.task_ctx()).await?)
    }

    fn scans(&self) -> Vec<PushdownScanExec> {
        let mut scans = Vec::new();
        let _ = self.plan.apply(|node| {
            if let Some(scan) = node.downcast_ref::<PushdownScanExec>() {
                scans.push(scan.clone());
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
        for scan in self.scans() {
            let m = scan.metrics();
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let (tasks, pruned) = (get(&m.tasks), get(&m.tasks_pruned));
            let _ = writeln!(
                out,
                "table {}: tasks {} scanned, {pruned} pruned (of {tasks}); pages skipped {}; bytes read from storage {}; bytes returned by the storage node {}; rows in {}, selected {}, out {}",
                scan.table().name,
                tasks - pruned,
                get(&m.pages_skipped),
                get(&m.bytes_read),
                get(&m.bytes_returned),
                get(&m.rows_in),
                get(&m.rows_selected),
                get(&m.rows_out),
            );
        }
        out
    }
}

impl From<pushdown_storage_node::Error> for Error {
    fn from(e: pushdown_storage_node::Error) -> Self {
        Error::Storage(e)
    }
}
