//! The task executor: prune, read the needed bytes straight into the sandbox, run the
//! built-in pipeline, decode its Arrow IPC result.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use pushdown_protocol::plugin::EXPORT_CAN_SKIP;
use pushdown_protocol::{
    encode_request, ByteRange, FileFormat, FoldRef, FoldRequest, GuestRequest, PluginKind,
    PluginRef, Pushdown, StageRun, Task, TaskUnit, PROTOCOL_VERSION,
};

use crate::audit::{AuditPipeline, AuditStats, Auditor};
use crate::catalog::{self, FileInfo, TableInfo, TableSource};
use crate::dialect::CsvOptions;
use crate::error::{Error, Result};
use crate::fold::{Claim, FoldJobs, FoldOptions};
use crate::passthrough::{run_pipeline, PassthroughPolicy, RawTask};
use crate::registry::Registry;
use crate::result_cache::{self, CacheStats, ResultCache};
use crate::sandbox::{PluginModule, Sandbox, SandboxConfig};
use pushdown_footer::plan::page_segments;
use pushdown_footer::prune::{plugin_skip_checks, prune_row_group, row_group_may_match, Verdict};
use pushdown_footer::{row_group_footer, row_group_metadata};

/// The built-in pipeline module, built for `wasm32-wasip1` by `build.rs`.
pub static BUILTIN_WASM: &[u8] = include_bytes!(env!("PUSHDOWN_BUILTIN_WASM_PATH"));

/// Name under which the built-in pipeline reports errors.
pub const BUILTIN_PLUGIN: &str = "pushdown-builtin";

/// Options of a storage node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Target size of a CSV chunk in bytes. Defaults to 16 MiB.
    pub csv_chunk_size: u64,
    /// Rows per record batch inside the sandbox. Defaults to 65 536.
    pub batch_size: usize,
    /// Read every CSV column as text, empty fields as empty strings (DuckDB's
    /// `all_varchar`). Defaults to false: types are inferred and empty fields are NULL.
    pub csv_all_varchar: bool,
    /// Limits of every plugin call.
    pub sandbox: SandboxConfig,
    /// The plugin registry user plugins are fetched from (by SHA-256). None: no user plugins.
    pub registry: Option<PathBuf>,
    /// Tables whose files a parser plugin reads, by table name (`--format TABLE=PARSER`).
    pub formats: BTreeMap<String, PluginRef>,
    /// What the user fixed of the CSV dialects (`--csv-delimiter` and the like), for every
    /// table and per table; the rest is sniffed from each file.
    pub csv: CsvOptions,
    /// Bytes of modules received from intermediaries (`put_module`) kept in the registry;
    /// the least recently received beyond it are forgotten. Defaults to 1 GiB.
    pub received_modules_bytes: u64,
    /// Bytes of task results kept in memory to answer the same task again
    /// ([`crate::result_cache`]). Defaults to 0: no cache.
    pub result_cache_bytes: u64,
    /// Fraction of tasks (0 to 1) run again with the native pipeline and compared
    /// ([`crate::audit`]). Defaults to 0: none.
    pub audit_rate: f64,
    /// The native pipeline audits compare with. Defaults to
    /// [`crate::audit::native_pipeline`]; tests give a deliberately different one.
    pub audit_pipeline: Option<AuditPipeline>,
    /// Pass tasks through (return their input for the tier above to run) when a plugin
    /// traps or is quarantined ([`crate::passthrough`]). Defaults to `None`: a trap fails
    /// the task. Only for nodes whose clients run passed-through tasks (the Flight server's).
    pub passthrough: Option<PassthroughPolicy>,
    /// Folding partial aggregates into jobs and checkpointing them ([`crate::fold`]).
    pub fold: FoldOptions,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            csv_chunk_size: 16 << 20,
            batch_size: 65_536,
            csv_all_varchar: false,
            sandbox: SandboxConfig::default(),
            registry: None,
            formats: BTreeMap::new(),
            csv: CsvOptions::default(),
            received_modules_bytes: 1 << 30,
            result_cache_bytes: 0,
            audit_rate: 0.0,
            audit_pipeline: None,
            passthrough: None,
            fold: FoldOptions::default(),
        }
    }
}

/// What one task did, for `--explain` and the benchmarks; JSON on the wire between tiers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskMetrics {
    /// True when statistics proved no row can match, so nothing was read.
    pub pruned: bool,
    /// Bytes read from storage (footer and column chunks, or the CSV chunk).
    pub bytes_read: u64,
    /// Bytes of the Arrow IPC result the sandbox returned.
    pub bytes_returned: u64,
    /// Rows the parser produced.
    pub rows_in: u64,
    /// Rows that passed the predicate.
    pub rows_selected: u64,
    /// Rows returned (partial aggregate groups, or selected rows).
    pub rows_out: u64,
    /// Data pages of the projected column chunks skipped by page-index pruning.
    #[serde(default)]
    pub pages_skipped: u64,
    /// CSV with `--csv-lenient`: records with missing fields padded with NULL.
    #[serde(default)]
    pub rows_repaired: u64,
    /// True when the node's result cache answered the task: nothing was read or run (the
    /// row counts are those of the run that filled the cache).
    #[serde(default)]
    pub cached: bool,
    /// True when the task was audited: run again natively and compared.
    #[serde(default)]
    pub audited: bool,
    /// True when that audit found the native result different (see the node's log).
    #[serde(default)]
    pub audit_mismatch: bool,
    /// True when `pruned` and the pruning was a plugin's `pushdown_can_skip`.
    #[serde(default)]
    pub pruned_by_plugin: bool,
    /// True when the node passed the task through: it read the input and the tier above
    /// ran the pipeline ([`crate::passthrough`]).
    #[serde(default)]
    pub passed_through: bool,
    /// True when the node folded the task's partial aggregate into the query's fold job
    /// ([`crate::fold`]) instead of returning it.
    #[serde(default)]
    pub folded: bool,
    /// True when `folded` and the job held the task already, from a checkpoint written
    /// before the node restarted: it was not run again.
    #[serde(default)]
    pub from_checkpoint: bool,
    /// True when the task only counted the rows of a whole row group and the footer's row
    /// count answered it: nothing was read or run.
    #[serde(default)]
    pub from_footer: bool,
}

/// The result of one task.
#[derive(Debug)]
pub struct TaskOutput {
    /// Record batches of the task's output schema.
    pub batches: Vec<RecordBatch>,
    /// What it cost.
    pub metrics: TaskMetrics,
    /// When the node passed the task through: the request and input to run above it
    /// ([`crate::passthrough::PassthroughRunner`]); `batches` is then empty.
    pub passthrough: Option<RawTask>,
    /// Why the task was passed through, once it has been run above the node.
    pub passthrough_reason: Option<String>,
}

/// A storage node over one local data directory.
pub struct StorageNode {
    root: PathBuf,
    options: NodeOptions,
    sandbox: Sandbox,
    builtin: PluginModule,
    tables: Mutex<HashMap<String, Arc<TableInfo>>>,
    files: Mutex<HashMap<String, Arc<FileInfo>>>,
    registry: Option<Registry>,
    /// User plugins loaded so far, by SHA-256.
    plugins: Mutex<HashMap<String, PluginModule>>,
    /// The declared schema of each parser of `options.formats`, by SHA-256.
    parser_schemas: BTreeMap<String, SchemaRef>,
    /// Task results by content ([`crate::result_cache`]), when the options give it bytes.
    result_cache: Option<ResultCache>,
    /// Native-vs-Wasm audits, when the options give a rate.
    auditor: Option<Auditor>,
    /// Fold jobs of checkpointed aggregates.
    folds: FoldJobs,
}

/// Describes a task's place for error messages: `lineitem.parquet: row group 3`.
pub fn task_context(task: &Task) -> String {
    match &task.unit {
        TaskUnit::RowGroup(rg) => format!("{}: row group {rg}", task.file),
        TaskUnit::CsvChunk(r) => format!("{}: bytes {}..{}", task.file, r.start, r.end),
        TaskUnit::Lines { range, first_line } => format!(
            "{}: bytes {}..{} (from line {first_line})",
            task.file, range.start, range.end
        ),
    }
}

impl StorageNode {
    /// Opens a node over `root`, compiling (or loading from cache) the built-in pipeline.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `root` is not a directory; [`Error::Plugin`] when the
    /// built-in module does not load.
    pub fn open(root: impl AsRef<Path>, options: NodeOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let tables = catalog::list_tables(&root, &options.formats)?;
        for name in options.csv.tables.keys() {
            if !tables
                .get(name)
                .is_some_and(|t| t.format == FileFormat::Csv)
            {
                return Err(Error::NotFound {
                    path: root.join(name).display().to_string(),
                    message: format!("a --csv-* option names table {name}, which is not a CSV table of this directory"),
                });
            }
        }
        let sandbox = Sandbox::new(options.sandbox.clone())?;
        let builtin = sandbox.load_builtin()?;
        let registry = options.registry.as_ref().map(Registry::open).transpose()?;
        let mut parser_schemas = BTreeMap::new();
        for (table, parser) in &options.formats {
            let registered = registry
                .as_ref()
                .map(|r| r.get(&parser.name))
                .transpose()?
                .flatten()
                .filter(|p| p.sha256 == parser.sha256 && p.kind == PluginKind::Parser)
                .ok_or_else(|| Error::NotFound {
                    path: table.clone(),
                    message: format!("parser {} is not a registered parser plugin", parser.name),
                })?;
            let schema = registered
                .signature
                .schema()
                .map_err(|message| Error::Plugin {
                    plugin: parser.name.clone(),
                    message,
                })?;
            parser_schemas.insert(parser.sha256.clone(), Arc::new(schema));
        }
        Ok(Self {
            root,
            sandbox,
            builtin,
            tables: Mutex::default(),
            files: Mutex::default(),
            registry,
            plugins: Mutex::default(),
            parser_schemas,
            result_cache: (options.result_cache_bytes > 0)
                .then(|| ResultCache::new(options.result_cache_bytes)),
            auditor: (options.audit_rate > 0.0).then(|| {
                let native = options
                    .audit_pipeline
                    .clone()
                    .map_or_else(crate::audit::native_pipeline, |p| p.0);
                Auditor::new(options.audit_rate, native)
            }),
            folds: FoldJobs::new(options.fold.clone())?,
            options,
        })
    }

    /// The user plugin `plugin`, loaded from the registry by SHA-256 and compiled once (the
    /// compiled module is cached on disk too). A module whose bytes do not hash to the
    /// reference's SHA-256 is never run.
    ///
    /// # Errors
    /// [`Error::NotFound`] without a registry or when the module is not in it;
    /// [`Error::Plugin`] when it does not load.
    pub fn plugin(&self, plugin: &PluginRef) -> Result<PluginModule> {
        if let Some(p) = self
            .plugins
            .lock()
            .expect("not poisoned")
            .get(&plugin.sha256)
        {
            return Ok(p.clone());
        }
        let registry = self.registry.as_ref().ok_or_else(|| Error::NotFound {
            path: plugin.name.clone(),
            message: "this node has no plugin registry".into(),
        })?;
        let bytes = registry.module(plugin)?;
        let (module, _) = self.sandbox.load_plugin(&plugin.name, &bytes)?;
        if module.sha256() != plugin.sha256 {
            return Err(Error::Plugin {
                plugin: plugin.name.clone(),
                message: format!(
                    "module hashes to {}, not {}",
                    module.sha256(),
                    plugin.sha256
                ),
            });
        }
        self.plugins
            .lock()
            .expect("not poisoned")
            .insert(plugin.sha256.clone(), module.clone());
        Ok(module)
    }

    /// Receives a user plugin's module sent by an intermediary: checks that `bytes` hash
    /// to `plugin.sha256`, validates the module (WebAssembly validation before it is
    /// compiled, then the ABI), and stores it in this node's registry by SHA-256 only.
    /// `plugin.name` only labels messages; no named plugin is created or replaced.
    ///
    /// # Errors
    /// [`Error::Plugin`] when the name is not an identifier, the bytes do not hash to the
    /// reference's SHA-256, are over the module size cap, or are not a valid plugin
    /// (nothing is stored, compiled or run); [`Error::NotFound`] when the node has no
    /// registry.
    pub fn install_plugin(&self, plugin: &PluginRef, bytes: &[u8]) -> Result<()> {
        let refuse = |message: String| Error::Plugin {
            plugin: plugin.name.chars().take(64).collect(),
            message,
        };
        pushdown_protocol::plugin::check_name(&plugin.name).map_err(refuse)?;
        let registry = self.registry.as_ref().ok_or_else(|| Error::NotFound {
            path: plugin.name.clone(),
            message: "this node has no plugin registry".into(),
        })?;
        let actual = crate::registry::sha256_hex(bytes);
        if actual != plugin.sha256 {
            return Err(refuse(format!(
                "the module sent hashes to {actual}, not {}; refused",
                plugin.sha256
            )));
        }
        // Validated before it is compiled (and only then cached): see Sandbox::link.
        self.sandbox.load_plugin(&plugin.name, bytes)?;
        let (_, forgotten) = registry.store_module(bytes, self.options.received_modules_bytes)?;
        let mut loaded = self.plugins.lock().expect("not poisoned");
        for hash in forgotten {
            log::info!("forgot received module {hash}: over the received-module budget");
            loaded.remove(&hash);
        }
        Ok(())
    }

    /// The registry this node fetches user plugins from, when it has one.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's options.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The node's sandbox, to load and call other plugins under the same engine and limits.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The tables of the data directory, by name.
    ///
    /// # Errors
    /// As [`catalog::list_tables`].
    pub fn list_tables(&self) -> Result<BTreeMap<String, TableSource>> {
        catalog::list_tables(&self.root, &self.options.formats)
    }

    /// Opens table `name` (once; later calls return the cached table), or `None` when the
    /// data directory has no such table.
    ///
    /// # Errors
    /// As [`catalog::open_table`].
    pub fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>> {
        if let Some(t) = self.tables.lock().expect("not poisoned").get(name) {
            return Ok(Some(t.clone()));
        }
        let Some(source) = self.list_tables()?.remove(name) else {
            return Ok(None);
        };
        let table = Arc::new(catalog::open_table(
            &self.root,
            &source,
            self.options.csv_chunk_size,
            self.options.csv_all_varchar,
            &self.options.csv.for_table(name),
            &self.parser_schemas,
        )?);
        let mut files = self.files.lock().expect("not poisoned");
        for f in &table.files {
            files.insert(f.path.clone(), f.clone());
        }
        self.tables
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), table.clone());
        Ok(Some(table))
    }

    /// Runs one task.
    ///
    /// # Errors
    /// Any error, wrapped with the task's file and row group or byte range.
    pub fn run_task(&self, task: &Task) -> Result<TaskOutput> {
        match &task.fold {
            Some(fold) => self.run_fold_task(task, fold),
            None => self.run_task_inner(task),
        }
        .map_err(|e| e.context(task_context(task)))
    }

    /// Runs a task that asks to be folded into `fold`'s job ([`crate::fold`]): answered
    /// from the job when it holds the task, run and folded when the job is this run's,
    /// run as usual (its result returned) otherwise. Only a partial aggregate without a
    /// `LIMIT` is folded.
    fn run_fold_task(&self, task: &Task, fold: &FoldRef) -> Result<TaskOutput> {
        let plain = task.unfolded();
        if !matches!(plain.pushdown, Pushdown::PartialAggregate { .. }) || plain.limit.is_some() {
            return self.run_task_inner(&plain);
        }
        let content = plain.content_hash();
        let claim = self
            .folds
            .claim(fold, &plain.shape_hash(), &content, self.builtin.sha256())?;
        let handle = match claim {
            Claim::Unfolded => return self.run_task_inner(&plain),
            Claim::Held { restored } => {
                return Ok(TaskOutput {
                    batches: Vec::new(),
                    metrics: TaskMetrics {
                        folded: true,
                        from_checkpoint: restored,
                        ..TaskMetrics::default()
                    },
                    passthrough: None,
                    passthrough_reason: None,
                })
            }
            Claim::Fold(handle) => handle,
        };
        let mut output = self.run_task_inner(&plain)?;
        if output.passthrough.is_some() {
            return Ok(output);
        }
        let partial = pushdown_plugins_builtin::encode_ipc(&plain.output_schema, &output.batches)
            .map_err(Error::Internal)?;
        let request = serde_json::to_vec(&FoldRequest {
            version: PROTOCOL_VERSION,
            pushdown: plain.pushdown.clone(),
            output_schema: plain.output_schema.clone(),
        })
        .map_err(|e| Error::Internal(format!("fold request: {e}")))?;
        let mut plugins = HashMap::new();
        for p in plain.plugins() {
            plugins.insert(p.name.clone(), self.plugin(&p)?);
        }
        let path = self.open_file(&plain.file)?.abs_path.clone();
        self.folds.fold(
            &handle,
            fold.lease,
            &self.builtin,
            Arc::new(plugins),
            &request,
            &partial,
            &content,
            &path,
        )?;
        output.batches.clear();
        output.metrics.folded = true;
        output.metrics.rows_out = 0;
        output.metrics.bytes_returned = 0;
        Ok(output)
    }

    /// Drains fold job `job` of run `lease`, which saw the tasks with content hashes
    /// `tasks` folded on this node ([`crate::fold::FoldJobs::finish`]): the merged partial
    /// aggregate, as batches of `schema` (the tasks' output schema).
    ///
    /// # Errors
    /// As [`crate::fold::FoldJobs::finish`]; [`Error::Plugin`] when the drained states do
    /// not match `schema`.
    pub fn finish_fold(
        &self,
        job: &str,
        lease: u64,
        tasks: &std::collections::BTreeSet<String>,
        schema: &arrow_schema::Schema,
    ) -> Result<TaskOutput> {
        let ipc = self.folds.finish(job, lease, tasks, &self.builtin)?;
        let batches = decode_ipc(&ipc, schema).map_err(|message| Error::Plugin {
            plugin: BUILTIN_PLUGIN.into(),
            message,
        })?;
        let rows_out = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(TaskOutput {
            batches,
            metrics: TaskMetrics {
                rows_out,
                bytes_returned: ipc.len() as u64,
                ..TaskMetrics::default()
            },
            passthrough: None,
            passthrough_reason: None,
        })
    }

    /// Waits until the checkpoints of fold jobs taken so far are written (they are written
    /// by a thread of their own; dropping the node waits too).
    pub fn flush_checkpoints(&self) {
        self.folds.flush();
    }

    /// The counters of fold jobs and checkpoints.
    pub fn fold_stats(&self) -> &crate::fold::FoldStats {
        self.folds.stats()
    }

    /// Prunes, then lays out the task's input: the file, the byte segments to read and
    /// the encoded request. [`Planned::Pruned`] when statistics, a Bloom filter or the page
    /// index prove that no row of the row group matches.
    fn plan_input(&self, task: &Task, stage: Option<StageRun>) -> Result<Planned> {
        let file = self.open_file(&task.file)?;
        // A task names one of the file's own units, in the file's format: a client cannot
        // pick another byte range or row group, or read a file as another format.
        if task.format != file.format {
            return Err(Error::BadData {
                file: task.file.clone(),
                message: format!(
                    "the task reads it as {}, but it is a {} file",
                    task.format, file.format
                ),
            });
        }
        if !file.units.contains(&task.unit) {
            return Err(Error::BadData {
                file: task.file.clone(),
                message: format!("{:?} is not one of the file's units", task.unit),
            });
        }
        let columns = task.needed_columns(&file.schema);
        let mut pruning = Pruning::default();
        let mut pages = None;
        let mut footer_row_group = None;
        let mut footer_bytes = None;
        let segments: Vec<ByteRange> = match (&task.unit, &file.footer) {
            (TaskUnit::RowGroup(rg), Some(footer)) => {
                let file_metadata = &footer.metadata;
                if *rg >= file_metadata.num_row_groups() {
                    return Err(Error::Internal(format!("row group {rg} does not exist")));
                }
                if stage.is_none() && counts_rows_only(task) {
                    let rows = file_metadata.row_group(*rg).num_rows();
                    if let Ok(rows) = u64::try_from(rows) {
                        return Ok(Planned::Counted(rows));
                    }
                }
                let descr = file_metadata.file_metadata().schema_descr();
                let roots: Vec<usize> = columns
                    .iter()
                    .filter_map(|c| file.schema.index_of(c).ok())
                    .collect();
                let leaves: Vec<usize> = (0..descr.num_columns())
                    .filter(|&leaf| roots.contains(&descr.get_column_root_idx(leaf)))
                    .collect();
                let open = || {
                    std::fs::File::open(&file.abs_path).map_err(|error| Error::Io {
                        path: file.path.clone(),
                        error,
                    })
                };
                // The row group alone, as index 0, with its page index when a predicate
                // the statistics did not rule out may use it.
                let (metadata, index_bytes) = match &task.predicate {
                    Some(p) => {
                        let may_match =
                            pushdown_footer::catch_quietly(std::panic::AssertUnwindSafe(|| {
                                row_group_may_match(p, file_metadata, &file.schema, *rg)
                            }))
                            .unwrap_or(true);
                        if !may_match {
                            return Ok(Planned::Pruned(pruning));
                        }
                        row_group_metadata(file_metadata, *rg, Some(&open()?))
                    }
                    None => row_group_metadata::<std::fs::File>(file_metadata, *rg, None),
                }
                .ok_or_else(|| Error::Internal(format!("row group {rg} does not exist")))?;
                pruning.index_bytes += index_bytes;
                let mut selection = None;
                if let Some(p) = &task.predicate {
                    let (verdict, index_bytes) =
                        prune_row_group(p, &metadata, &file.schema, 0, open)?;
                    pruning.index_bytes += index_bytes;
                    match verdict {
                        Verdict::NoRows => return Ok(Planned::Pruned(pruning)),
                        Verdict::Rows(s) => selection = Some(s),
                        Verdict::AllRows => {}
                    }
                    if self.plugin_can_skip(task, p, &metadata, &file.schema, 0)? {
                        pruning.by_plugin = true;
                        return Ok(Planned::Pruned(pruning));
                    }
                }
                // The guest decodes the footer of every task: hand it one row group's.
                let task_footer = row_group_footer(&metadata, 0);
                let footer_range = match &task_footer {
                    Some(bytes) => {
                        footer_row_group = Some(0);
                        ByteRange {
                            start: footer.range.start,
                            end: footer.range.start + bytes.len() as u64,
                        }
                    }
                    None => footer.range,
                };
                footer_bytes = task_footer.map(Bytes::from);
                let mut segments = vec![footer_range];
                match selection.and_then(|s| page_segments(&metadata, 0, &leaves, &s)) {
                    Some((selection, chunks, skipped)) => {
                        pruning.pages_skipped = skipped;
                        segments.extend(chunks);
                        pages = Some(selection);
                    }
                    None => {
                        let row_group = metadata.row_group(0);
                        segments.extend(leaves.iter().map(|&leaf| {
                            let (start, len) = row_group.column(leaf).byte_range();
                            ByteRange {
                                start,
                                end: start + len,
                            }
                        }));
                    }
                }
                segments
            }
            (TaskUnit::CsvChunk(range), None) if task.format == FileFormat::Csv => vec![*range],
            (TaskUnit::Lines { range, .. }, None)
                if matches!(task.format, FileFormat::Plugin(_)) =>
            {
                vec![*range]
            }
            _ => {
                return Err(Error::Internal(format!(
                    "task unit {:?} does not fit a {:?} file",
                    task.unit, file.format
                )))
            }
        };
        let input_len: u64 = segments.iter().map(ByteRange::len).sum();
        let mut request = GuestRequest {
            version: PROTOCOL_VERSION,
            task: task.clone(),
            file_schema: file.schema.as_ref().clone(),
            segments: segments.clone(),
            file_len: file.len,
            batch_size: self.options.batch_size,
            csv_all_varchar: self.options.csv_all_varchar,
            csv: file.csv.clone().unwrap_or_default(),
            stage,
            pages,
            footer_row_group,
            blobs: Vec::new(),
        };
        // Bloom filter bitsets go raw after the segments, not as base64 in the JSON (a
        // parser plugin reads the whole input, so its tasks keep them in the JSON).
        let blobs = match task.format {
            FileFormat::Plugin(_) => Vec::new(),
            _ => request.take_blobs(),
        };
        let request = encode_request(&request);
        let blob_len: u64 = blobs.iter().map(|b| b.len() as u64).sum();
        let input_len = usize::try_from(input_len + blob_len)
            .map_err(|_| Error::Internal("input too large".into()))?;
        Ok(Planned::Run(PlannedInput {
            file,
            footer: footer_bytes,
            segments,
            request,
            blobs,
            input_len,
            pruning,
        }))
    }

    /// The file at `path` (relative to the data directory) of one of the node's tables.
    /// A table not opened yet (a node restarted under an intermediary that still knows
    /// its listing) is opened first: the table whose name is the path's first component
    /// without its extension.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no table of the data directory holds the path; as
    /// [`StorageNode::table`] when that table does not open.
    fn open_file(&self, path: &str) -> Result<Arc<FileInfo>> {
        let lookup = || self.files.lock().expect("not poisoned").get(path).cloned();
        if let Some(f) = lookup() {
            return Ok(f);
        }
        let first = path.split('/').next().unwrap_or_default();
        let table = first.split('.').next().unwrap_or_default();
        if !table.is_empty() {
            self.table(table)?;
        }
        lookup().ok_or_else(|| Error::NotFound {
            path: path.to_string(),
            message: "not a file of a table of this storage node".into(),
        })
    }

    /// Plugin-aware pruning: true when a scalar plugin that a conjunct of `predicate` calls
    /// exports `pushdown_can_skip` and it answers that no row of row group `rg` can pass
    /// (see [`plugin_skip_checks`]). A plugin that fails or traps there keeps the row group
    /// (its error is logged): the call itself still runs on every row.
    ///
    /// # Errors
    /// A plugin of the task this node cannot load.
    fn plugin_can_skip(
        &self,
        task: &Task,
        predicate: &pushdown_protocol::Expr,
        metadata: &parquet::file::metadata::ParquetMetaData,
        schema: &arrow_schema::Schema,
        rg: usize,
    ) -> Result<bool> {
        let mut called = std::collections::BTreeSet::new();
        predicate.collect_plugins(&mut called);
        if called.is_empty() {
            return Ok(false);
        }
        for check in plugin_skip_checks(predicate, metadata, schema, rg) {
            let module = self.plugin(&check.plugin)?;
            if !module.has_export(EXPORT_CAN_SKIP) {
                continue;
            }
            let request = serde_json::to_vec(&check.request)
                .map_err(|e| Error::Internal(format!("can_skip request: {e}")))?;
            match module.invoke(EXPORT_CAN_SKIP, &request, None) {
                Ok(out) if out.payload == [1] => {
                    log::debug!(
                        "{}: plugin {} skipped the row group (can_skip)",
                        task_context(task),
                        check.plugin.name
                    );
                    return Ok(true);
                }
                Ok(out) if out.payload == [0] => {}
                Ok(out) => log::warn!(
                    "{}: plugin {}: can_skip returned {} bytes, not one byte 0 or 1; the row group is kept",
                    task_context(task),
                    check.plugin.name,
                    out.payload.len()
                ),
                Err(e) => log::warn!(
                    "{}: can_skip failed, the row group is kept: {e}",
                    task_context(task)
                ),
            }
        }
        Ok(false)
    }

    /// The encoded request and the input bytes the sandbox would get for `task` (with
    /// `stage`, a stage run instead of the task), or `None` when the row group is pruned.
    /// For benchmarks that run the same pipeline natively.
    ///
    /// # Errors
    /// As [`StorageNode::run_task`], before the plugin runs.
    pub fn guest_input(
        &self,
        task: &Task,
        stage: Option<StageRun>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Planned::Run(planned) = self.plan_input(task, stage)? else {
            return Ok(None);
        };
        let mut input = vec![0u8; planned.input_len];
        fill_input(&planned, &mut input)?;
        Ok(Some((planned.request, input)))
    }

    /// Runs one stage of `task`'s pipeline `run.repeat` times in the sandbox over input
    /// prepared once by the earlier stages (see [`StageRun`]). Returns the row counts the
    /// guest reports, `None` when the row group is pruned. For the benchmarks.
    ///
    /// # Errors
    /// As [`StorageNode::run_task`].
    pub fn run_stage(&self, task: &Task, run: StageRun) -> Result<Option<(u64, u64)>> {
        let Planned::Run(planned) = self
            .plan_input(task, Some(run))
            .map_err(|e| e.context(task_context(task)))?
        else {
            return Ok(None);
        };
        let output = self
            .builtin
            .call(&planned.request, planned.input_len, |slot| {
                fill_input(&planned, slot)
            })
            .map_err(|e| e.context(task_context(task)))?;
        let (rows_in, rows_selected, _) =
            split_output(&output.payload).ok_or_else(|| Error::Plugin {
                plugin: BUILTIN_PLUGIN.into(),
                message: "returned a result shorter than its 16-byte header".into(),
            })?;
        Ok(Some((rows_in, rows_selected)))
    }

    /// The built-in pipeline module.
    pub fn builtin(&self) -> &PluginModule {
        &self.builtin
    }

    /// Tasks audited and mismatches found; `None` when the node does not audit.
    pub fn audit_stats(&self) -> Option<AuditStats> {
        self.auditor.as_ref().map(Auditor::stats)
    }

    /// Hits, misses, entries and bytes of the result cache; `None` without one.
    pub fn result_cache_stats(&self) -> Option<CacheStats> {
        self.result_cache.as_ref().map(ResultCache::stats)
    }

    fn run_task_inner(&self, task: &Task) -> Result<TaskOutput> {
        let planned = match self.plan_input(task, None)? {
            Planned::Run(planned) => planned,
            Planned::Pruned(pruning) => {
                let metrics = TaskMetrics {
                    pruned: true,
                    pruned_by_plugin: pruning.by_plugin,
                    bytes_read: pruning.index_bytes,
                    ..Default::default()
                };
                return Ok(TaskOutput {
                    batches: Vec::new(),
                    metrics,
                    passthrough: None,
                    passthrough_reason: None,
                });
            }
            Planned::Counted(rows) => {
                let batch = count_batch(&task.output_schema, rows)?;
                return Ok(TaskOutput {
                    batches: vec![batch],
                    metrics: TaskMetrics {
                        rows_in: rows,
                        rows_selected: rows,
                        rows_out: 1,
                        from_footer: true,
                        ..Default::default()
                    },
                    passthrough: None,
                    passthrough_reason: None,
                });
            }
        };
        let (request, input_len, pruning) = (&planned.request, planned.input_len, planned.pruning);
        let cache_key = self.result_cache.as_ref().and_then(|cache| {
            // The user plugins the task calls or parses with.
            let shas: Vec<String> = task.plugins().into_iter().map(|p| p.sha256).collect();
            let shas: Vec<&str> = shas.iter().map(String::as_str).collect();
            let key = result_cache::key(
                &planned.file.abs_path,
                env!("PUSHDOWN_BUILTIN_WASM_SHA256"),
                &shas,
                request,
                &planned.blobs,
            )?;
            Some((cache, key))
        });
        if let Some((cache, key)) = &cache_key {
            if let Some((batches, metrics)) = cache.get(key) {
                return Ok(TaskOutput {
                    batches,
                    metrics: TaskMetrics {
                        cached: true,
                        bytes_read: 0,
                        ..metrics
                    },
                    passthrough: None,
                    passthrough_reason: None,
                });
            }
        }
        let mut plugins = HashMap::new();
        for p in task.plugins() {
            plugins.insert(p.name.clone(), self.plugin(&p)?);
        }
        if let Some(policy) = &self.options.passthrough {
            for module in plugins.values() {
                if let Some((traps, last)) = module.quarantined(
                    policy.quarantine_traps,
                    policy.quarantine_window,
                    policy.quarantine_for,
                ) {
                    let reason = format!(
                        "plugin {} is quarantined on the storage node ({traps} traps within {} s; last: {last})",
                        module.name(),
                        policy.quarantine_window.as_secs()
                    );
                    return self.raw_output(task, &planned, reason);
                }
            }
        }
        let parser = match (&task.format, &task.unit) {
            (FileFormat::Plugin(parser), TaskUnit::Lines { first_line, .. }) => {
                Some((self.plugin(parser)?, *first_line))
            }
            _ => None,
        };
        let traps_before: Vec<u64> = plugins.values().map(PluginModule::trap_count).collect();
        let plugins = Arc::new(plugins);
        let run = run_pipeline(
            &self.builtin,
            plugins.clone(),
            parser.as_ref().map(|(m, line)| (m, *line)),
            request,
            input_len,
            |slot| fill_input(&planned, slot),
        );
        let (payload, parsed_input) = match run {
            Ok(out) => out,
            Err(e) if self.options.passthrough.is_some() => {
                // A user plugin that trapped here may run above, under other limits.
                let trapped = plugins
                    .values()
                    .zip(&traps_before)
                    .find(|(m, before)| m.trap_count() > **before);
                match trapped {
                    Some((module, _)) => {
                        let reason =
                            format!("plugin {} trapped on the storage node: {e}", module.name());
                        return self.raw_output(task, &planned, reason);
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let lenient = planned.file.csv.as_ref().is_some_and(|d| d.lenient);
        let (rows_in, rows_selected, rows_repaired, batches, ipc_len) =
            decode_output(&payload, lenient, &task.output_schema)?;
        let (mut audited, mut audit_mismatch) = (false, false);
        if let Some(auditor) = self.auditor.as_ref().filter(|a| a.sample()) {
            let input = match parsed_input {
                Some(parsed) => parsed,
                None => {
                    let mut input = vec![0; input_len];
                    fill_input(&planned, &mut input)?;
                    input
                }
            };
            // The native pipeline calls the task's user plugins in their sandboxes.
            let host_plugins = plugins.clone();
            pushdown_plugins_builtin::set_native_host(Some(Arc::new(
                move |name: &str, op: pushdown_plugins_builtin::PluginOp, input: &[u8]| {
                    let plugin = host_plugins
                        .get(name)
                        .ok_or_else(|| format!("plugin {name} is not available to this task"))?;
                    let export = crate::sandbox::host_op_export(op as u32)
                        .ok_or_else(|| format!("unknown operation {}", op as u32))?;
                    plugin
                        .invoke(export, input, None)
                        .map(|out| out.payload)
                        .map_err(|e| e.to_string())
                },
            )));
            let native = auditor.run_native(request, input);
            pushdown_plugins_builtin::set_native_host(None);
            let verdict = native
                .and_then(|payload| {
                    decode_output(&payload, lenient, &task.output_schema)
                        .map_err(|e| format!("the native result does not decode: {e}"))
                })
                .and_then(|(n_in, n_selected, n_repaired, n_batches, _)| {
                    if (n_in, n_selected, n_repaired) != (rows_in, rows_selected, rows_repaired) {
                        return Err(format!(
                            "rows in/selected/repaired {rows_in}/{rows_selected}/{rows_repaired} in the sandbox, {n_in}/{n_selected}/{n_repaired} natively"
                        ));
                    }
                    crate::audit::compare(&batches, &n_batches)
                });
            audited = true;
            if let Err(difference) = &verdict {
                audit_mismatch = true;
                log::warn!(
                    "{}: audit: the native pipeline's result differs from the sandbox's: {difference}",
                    task_context(task)
                );
            }
            auditor.record(audit_mismatch);
        }
        let rows_out = batches.iter().map(|b| b.num_rows() as u64).sum();
        let metrics = TaskMetrics {
            pruned: false,
            bytes_read: planned.bytes_read(),
            pages_skipped: pruning.pages_skipped,
            bytes_returned: ipc_len,
            rows_in,
            rows_selected,
            rows_out,
            rows_repaired,
            cached: false,
            audited,
            audit_mismatch,
            pruned_by_plugin: false,
            passed_through: false,
            folded: false,
            from_checkpoint: false,
            from_footer: false,
        };
        if let Some((cache, key)) = cache_key {
            cache.insert(key, &batches, metrics);
        }
        Ok(TaskOutput {
            batches,
            metrics,
            passthrough: None,
            passthrough_reason: None,
        })
    }

    /// Plans and reads `task`'s input as [`StorageNode::run_task`] would, but returns it
    /// raw instead of running the pipeline: a [`TaskOutput`] whose `passthrough` holds the
    /// request and input, for the tier above to run ([`crate::passthrough`]). A pruned
    /// task is answered as usual. `reason` is one line saying why.
    ///
    /// # Errors
    /// As [`StorageNode::run_task`] before the pipeline runs.
    pub fn pass_through(&self, task: &Task, reason: &str) -> Result<TaskOutput> {
        let planned = match self
            .plan_input(task, None)
            .map_err(|e| e.context(task_context(task)))?
        {
            Planned::Run(planned) => planned,
            Planned::Pruned(_) | Planned::Counted(_) => return self.run_task(task),
        };
        self.raw_output(task, &planned, reason.to_string())
            .map_err(|e| e.context(task_context(task)))
    }

    fn raw_output(
        &self,
        task: &Task,
        planned: &PlannedInput,
        reason: String,
    ) -> Result<TaskOutput> {
        let mut input = vec![0u8; planned.input_len];
        fill_input(planned, &mut input)?;
        log::info!("{}: passed through: {reason}", task_context(task));
        Ok(TaskOutput {
            batches: Vec::new(),
            metrics: TaskMetrics {
                passed_through: true,
                bytes_read: planned.bytes_read(),
                pages_skipped: planned.pruning.pages_skipped,
                ..Default::default()
            },
            passthrough: Some(RawTask {
                request: planned.request.clone(),
                input,
                lenient: planned.file.csv.as_ref().is_some_and(|d| d.lenient),
                reason,
            }),
            passthrough_reason: None,
        })
    }
}

/// Decodes a pipeline result payload (ABI.md, without the status byte): `rows_in`,
/// `rows_selected`, the repaired-record count when the CSV dialect is `lenient` (else 0),
/// the batches (checked against `schema`) and the IPC length in bytes.
///
/// # Errors
/// [`Error::Plugin`] naming the built-in pipeline when the payload is short or malformed.
pub(crate) fn decode_output(
    payload: &[u8],
    lenient: bool,
    schema: &arrow_schema::Schema,
) -> Result<(u64, u64, u64, Vec<RecordBatch>, u64)> {
    {
        let output_payload = payload;
        // A lenient CSV dialect adds the count of repaired records to the header.
        let (payload, rows_repaired) = if lenient {
            let count = output_payload
                .get(16..24)
                .and_then(|c| c.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| Error::Plugin {
                    plugin: BUILTIN_PLUGIN.into(),
                    message: "returned a result shorter than its 24-byte header".into(),
                })?;
            (&output_payload[..16], Some((count, &output_payload[24..])))
        } else {
            (output_payload, None)
        };
        let (rows_in, rows_selected, batches, ipc_len) = match rows_repaired {
            None => decode_result(BUILTIN_PLUGIN, payload, schema)?,
            Some((_, ipc)) => {
                let (rows_in, rows_selected, _) =
                    split_output(payload).ok_or_else(|| Error::Plugin {
                        plugin: BUILTIN_PLUGIN.into(),
                        message: "returned a result shorter than its header".into(),
                    })?;
                let batches = decode_ipc(ipc, schema).map_err(|message| Error::Plugin {
                    plugin: BUILTIN_PLUGIN.into(),
                    message,
                })?;
                (rows_in, rows_selected, batches, ipc.len() as u64)
            }
        };
        let rows_repaired = rows_repaired.map_or(0, |(n, _)| n);
        Ok((rows_in, rows_selected, rows_repaired, batches, ipc_len))
    }
}

struct PlannedInput {
    file: Arc<FileInfo>,
    /// The footer handed to the guest in place of the file's, if any.
    footer: Option<Bytes>,
    segments: Vec<ByteRange>,
    request: Vec<u8>,
    /// Bloom filter bitsets, after the segments in the input ([`GuestRequest::blobs`]).
    blobs: Vec<Vec<u8>>,
    /// The segments' bytes and the blobs.
    input_len: usize,
    pruning: Pruning,
}

/// A task's input, or the proof that it has no row to read.
enum Planned {
    Pruned(Pruning),
    /// A `COUNT(*)` of the whole row group, answered from the footer: its row count.
    Counted(u64),
    Run(PlannedInput),
}

/// What pruning cost and saved.
#[derive(Debug, Default, Clone, Copy)]
struct Pruning {
    /// True when a plugin's `pushdown_can_skip` ruled the row group out.
    by_plugin: bool,
    /// Bytes of Bloom filters and page index read.
    index_bytes: u64,
    /// Data pages of the projected column chunks not read.
    pages_skipped: u64,
}

/// True when `task` is a global partial aggregate whose every state is `COUNT` of a
/// non-null constant (`COUNT(*)`, `COUNT(1)`) over all rows: no predicate, no `LIMIT`,
/// nothing grouped. The footer's row count of the row group is then its answer, as
/// DataFusion's `AggregateStatistics` rule answers it from exact statistics.
fn counts_rows_only(task: &Task) -> bool {
    use pushdown_protocol::{AggregateFunction, Expr, Literal};
    let Pushdown::PartialAggregate {
        group_by,
        aggregates,
    } = &task.pushdown
    else {
        return false;
    };
    task.predicate.is_none()
        && task.limit.is_none()
        && group_by.is_empty()
        && !aggregates.is_empty()
        && aggregates.iter().all(|(_, a)| {
            a.function == AggregateFunction::Count
                && matches!(&a.argument, Expr::Literal(l) if !matches!(l, Literal::Null(_)))
        })
        && task.output_schema.fields().len() == aggregates.len()
        && task
            .output_schema
            .fields()
            .iter()
            .all(|f| f.data_type() == &arrow_schema::DataType::Int64)
}

/// The one-row partial result of a [`counts_rows_only`] task over `rows` rows: each
/// column of `schema` (all `Int64`) holds `rows`.
///
/// # Errors
/// [`Error::Internal`] when the count does not fit an `Int64` or the batch does not build.
fn count_batch(schema: &arrow_schema::Schema, rows: u64) -> Result<RecordBatch> {
    let rows = i64::try_from(rows)
        .map_err(|_| Error::Internal(format!("{rows} rows do not fit an Int64 count")))?;
    let columns: Vec<arrow_array::ArrayRef> = schema
        .fields()
        .iter()
        .map(|_| Arc::new(arrow_array::Int64Array::from(vec![rows])) as arrow_array::ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(schema.clone()), columns)
        .map_err(|e| Error::Internal(format!("count from the footer: {e}")))
}

/// Reads the task's segments from the file straight into the guest's input buffer (the
/// first segment of a Parquet task is its one-row-group footer, from memory, or the
/// file's footer when that did not encode).
fn fill_input(planned: &PlannedInput, slot: &mut [u8]) -> Result<()> {
    let file = &planned.file;
    let io = |error| Error::Io {
        path: file.path.clone(),
        error,
    };
    let handle = std::fs::File::open(&file.abs_path).map_err(io)?;
    let mut at = 0usize;
    for (i, s) in planned.segments.iter().enumerate() {
        let len = s.len() as usize;
        let dest = &mut slot[at..at + len];
        match (&planned.footer, i) {
            (Some(task_footer), 0) => dest.copy_from_slice(task_footer),
            _ => handle.read_exact_at(dest, s.start).map_err(io)?,
        }
        at += len;
    }
    for blob in &planned.blobs {
        slot[at..at + blob.len()].copy_from_slice(blob);
        at += blob.len();
    }
    Ok(())
}

impl PlannedInput {
    /// Bytes read from storage: the segments (not the blobs) and the indexes pruning read.
    fn bytes_read(&self) -> u64 {
        let blobs: usize = self.blobs.iter().map(Vec::len).sum();
        (self.input_len - blobs) as u64 + self.pruning.index_bytes
    }
}

/// Decodes the payload of a successful `pushdown_run` (ABI v1): `rows_in` and
/// `rows_selected` (u64 LE each), then an Arrow IPC stream that must have `expected`'s
/// field types. Returns the counts, the batches and the IPC length in bytes.
///
/// # Errors
/// [`Error::Plugin`] naming `plugin` when the payload is short, the IPC is malformed, or
/// the schema differs.
pub fn decode_result(
    plugin: &str,
    payload: &[u8],
    expected: &arrow_schema::Schema,
) -> Result<(u64, u64, Vec<RecordBatch>, u64)> {
    let err = |message: String| Error::Plugin {
        plugin: plugin.to_string(),
        message,
    };
    let (rows_in, rows_selected, ipc) = split_output(payload)
        .ok_or_else(|| err("returned a result shorter than its 16-byte header".into()))?;
    let batches = decode_ipc(ipc, expected).map_err(err)?;
    Ok((rows_in, rows_selected, batches, ipc.len() as u64))
}

fn split_output(payload: &[u8]) -> Option<(u64, u64, &[u8])> {
    let rows_in = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let rows_selected = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((rows_in, rows_selected, &payload[16..]))
}

/// Decodes an Arrow IPC stream and checks it has the expected schema.
fn decode_ipc(
    ipc: &[u8],
    expected: &arrow_schema::Schema,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let reader = StreamReader::try_new(Cursor::new(ipc), None)
        .map_err(|e| format!("returned malformed Arrow IPC: {e}"))?;
    let schema = reader.schema();
    if schema.fields().len() != expected.fields().len()
        || schema
            .fields()
            .iter()
            .zip(expected.fields())
            .any(|(a, b)| a.data_type() != b.data_type())
    {
        return Err(format!("returned schema {schema:?}, expected {expected:?}"));
    }
    reader
        .map(|b| b.map_err(|e| format!("returned malformed Arrow IPC: {e}")))
        .collect()
}
