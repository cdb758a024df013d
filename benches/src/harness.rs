//! Measurements shared by the criterion benches and `pushdown bench`: every pipeline stage
//! native vs Wasm on identical code and data, plugin start-up, whole tasks, and whole
//! processes (`pushdown query` beside the DuckDB CLI).
//!
//! A stage is timed as the guest runs it: the request names the stage and a repeat count
//! ([`StageRun`]); the stages before it run once, untimed in effect, because the harness
//! subtracts the time of a call with `repeat = 0` from a call with `repeat = n` and divides
//! by `n`. Native and Wasm go through the same request, the same input bytes and the same
//! function ([`pushdown_plugins_builtin::run_task`]); only the compilation target differs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pushdown_protocol::{FileFormat, Stage, StageRun, Task, TaskUnit};
use pushdown_storage_node::{decode_result, StorageNode, BUILTIN_PLUGIN, BUILTIN_WASM};

use crate::{q1_task, q6_task};

/// TPC-H Q1 as in `datasets/queries/tpch/q1.sql`.
pub const Q1_SQL: &str = include_str!("../../datasets/queries/tpch/q1.sql");
/// TPC-H Q6 as in `datasets/queries/tpch/q6.sql`.
pub const Q6_SQL: &str = include_str!("../../datasets/queries/tpch/q6.sql");

/// Where the same code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compiled for the host, called directly.
    Native,
    /// Compiled to `wasm32-wasip1`, run by the storage node's wasmtime sandbox.
    Wasm,
}

impl Mode {
    /// `native` or `wasm`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Wasm => "wasm",
        }
    }
}

/// One stage of one task, runnable natively and in Wasm.
pub struct StageCase {
    /// Short identifier, e.g. `parquet_parse`.
    pub id: &'static str,
    /// What it measures, for tables.
    pub label: &'static str,
    /// The stage timed.
    pub stage: Stage,
    node: Arc<StorageNode>,
    task: Task,
}

impl StageCase {
    /// Runs the stage `repeat` times in `mode` (plus the earlier stages once); returns
    /// the rows the stage saw.
    ///
    /// # Errors
    /// When the task is pruned or the pipeline fails.
    pub fn call(&self, mode: Mode, repeat: u32) -> Result<u64> {
        let run = StageRun {
            stage: self.stage,
            repeat,
        };
        match mode {
            Mode::Native => {
                let (request, input) = self
                    .node
                    .guest_input(&self.task, Some(run))?
                    .ok_or_else(|| anyhow!("{}: the row group is pruned", self.id))?;
                let out = pushdown_plugins_builtin::run_task(&request, input)
                    .map_err(|e| anyhow!("{}: {e}", self.id))?;
                Ok(u64::from_le_bytes(out[..8].try_into()?))
            }
            Mode::Wasm => {
                let (rows, _) = self
                    .node
                    .run_stage(&self.task, run)?
                    .ok_or_else(|| anyhow!("{}: the row group is pruned", self.id))?;
                Ok(rows)
            }
        }
    }

    /// Wall time of [`StageCase::call`] with `repeat`.
    ///
    /// # Errors
    /// As [`StageCase::call`].
    pub fn time(&self, mode: Mode, repeat: u32) -> Result<Duration> {
        let start = Instant::now();
        self.call(mode, repeat)?;
        Ok(start.elapsed())
    }

    /// The fixed cost of a call (reading the input, the earlier stages): the median of
    /// five calls with `repeat = 0`.
    ///
    /// # Errors
    /// As [`StageCase::call`].
    pub fn baseline(&self, mode: Mode) -> Result<Duration> {
        let mut samples = (0..5)
            .map(|_| self.time(mode, 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(&mut samples))
    }

    /// The time of one run of the stage in `mode`: the median over `samples` of
    /// `(time(repeat = n) − baseline) / n`, with `n` chosen so one sample takes about
    /// `sample_time`.
    ///
    /// # Errors
    /// As [`StageCase::call`].
    pub fn measure(&self, mode: Mode, sample_time: Duration, samples: usize) -> Result<Duration> {
        let baseline = self.baseline(mode)?;
        let mut repeat = 1u32;
        loop {
            let t = self.time(mode, repeat)?.saturating_sub(baseline);
            if t >= sample_time || repeat >= 1 << 16 {
                break;
            }
            let scale = (sample_time.as_secs_f64() / t.as_secs_f64().max(1e-6)).clamp(2.0, 16.0);
            repeat = ((f64::from(repeat) * scale).ceil() as u32).min(1 << 16);
        }
        let mut per_run = (0..samples.max(1))
            .map(|_| Ok(self.time(mode, repeat)?.saturating_sub(baseline) / repeat))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(&mut per_run))
    }
}

/// A whole task (read, parse, filter, aggregate, encode the result, decode it), native vs Wasm.
pub struct TaskCase {
    /// Short identifier, e.g. `q6_parquet_row_group`.
    pub id: &'static str,
    /// What it measures, for tables.
    pub label: &'static str,
    node: Arc<StorageNode>,
    task: Task,
}

impl TaskCase {
    /// Runs the task once in `mode`; returns the rows of its result.
    ///
    /// # Errors
    /// When the task is pruned or fails.
    pub fn call(&self, mode: Mode) -> Result<u64> {
        match mode {
            Mode::Native => {
                let (request, input) = self
                    .node
                    .guest_input(&self.task, None)?
                    .ok_or_else(|| anyhow!("{}: the row group is pruned", self.id))?;
                let out = pushdown_plugins_builtin::run_task(&request, input)
                    .map_err(|e| anyhow!("{}: {e}", self.id))?;
                let (_, _, batches, _) =
                    decode_result(BUILTIN_PLUGIN, &out, &self.task.output_schema)?;
                Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
            }
            Mode::Wasm => Ok(self.node.run_task(&self.task)?.metrics.rows_out),
        }
    }

    /// The median wall time of one task over `samples` runs (after one warm-up run).
    ///
    /// # Errors
    /// As [`TaskCase::call`].
    pub fn measure(&self, mode: Mode, samples: usize) -> Result<Duration> {
        self.call(mode)?;
        let mut times = (0..samples.max(1))
            .map(|_| {
                let start = Instant::now();
                self.call(mode)?;
                Ok(start.elapsed())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(median(&mut times))
    }
}

/// Storage nodes over TPC-H lineitem as Parquet (`parquet/lineitem.parquet`) and CSV
/// (`csv/lineitem.csv`) under one folder, as `pushdown datasets tpch` writes it.
pub struct Nodes {
    /// Node over the Parquet folder.
    pub parquet: Arc<StorageNode>,
    /// Node over the CSV folder.
    pub csv: Arc<StorageNode>,
}

impl Nodes {
    /// Opens both nodes over `tpch_dir` with default options.
    ///
    /// # Errors
    /// When a folder or lineitem is missing, or the built-in module does not load.
    pub fn open(tpch_dir: &Path) -> Result<Self> {
        let open = |sub: &str| -> Result<Arc<StorageNode>> {
            let dir = tpch_dir.join(sub);
            let node = StorageNode::open(&dir, Default::default())
                .with_context(|| format!("opening a storage node over {}", dir.display()))?;
            node.table("lineitem")?
                .ok_or_else(|| anyhow!("{} has no lineitem table", dir.display()))?;
            Ok(Arc::new(node))
        };
        Ok(Self {
            parquet: open("parquet")?,
            csv: open("csv")?,
        })
    }

    fn first_csv_chunk(&self) -> Result<TaskUnit> {
        let table = self.csv.table("lineitem")?.expect("opened in Nodes::open");
        table
            .files
            .first()
            .and_then(|f| f.units.first())
            .cloned()
            .ok_or_else(|| anyhow!("lineitem.csv has no chunk"))
    }

    /// The stages measured: Parquet row-group parse, CSV chunk parse, filter, partial
    /// aggregate and merge, each on the first row group or chunk of lineitem.
    ///
    /// # Errors
    /// When the CSV table has no chunk.
    pub fn stage_cases(&self) -> Result<Vec<StageCase>> {
        let case = |id, label, stage, node: &Arc<StorageNode>, task| StageCase {
            id,
            label,
            stage,
            node: node.clone(),
            task,
        };
        let q1 = q1_task("lineitem.parquet", 0);
        let q6 = q6_task(
            "lineitem.parquet",
            TaskUnit::RowGroup(0),
            FileFormat::Parquet,
        );
        let q6_csv = q6_task("lineitem.csv", self.first_csv_chunk()?, FileFormat::Csv);
        Ok(vec![
            case(
                "parquet_parse",
                "Parquet row-group parse (Q1's 7 columns)",
                Stage::Parse,
                &self.parquet,
                q1.clone(),
            ),
            case(
                "csv_parse",
                "CSV chunk parse (Q6's 4 columns)",
                Stage::Parse,
                &self.csv,
                q6_csv,
            ),
            case(
                "filter",
                "filter (Q6 predicate)",
                Stage::Filter,
                &self.parquet,
                q6,
            ),
            case(
                "partial_aggregate",
                "partial aggregate (Q1: 2 group keys, 8 sums, 4 counts)",
                Stage::PartialAggregate,
                &self.parquet,
                q1.clone(),
            ),
            case(
                "merge",
                "merge (Q1 partial states, one per 8192 rows)",
                Stage::Merge,
                &self.parquet,
                q1,
            ),
        ])
    }

    /// Whole tasks: Q6 and Q1 on a Parquet row group, Q6 on a CSV chunk.
    ///
    /// # Errors
    /// When the CSV table has no chunk.
    pub fn task_cases(&self) -> Result<Vec<TaskCase>> {
        let case = |id, label, node: &Arc<StorageNode>, task| TaskCase {
            id,
            label,
            node: node.clone(),
            task,
        };
        Ok(vec![
            case(
                "q6_parquet_task",
                "Q6 task on a Parquet row group",
                &self.parquet,
                q6_task(
                    "lineitem.parquet",
                    TaskUnit::RowGroup(0),
                    FileFormat::Parquet,
                ),
            ),
            case(
                "q1_parquet_task",
                "Q1 task on a Parquet row group",
                &self.parquet,
                q1_task("lineitem.parquet", 0),
            ),
            case(
                "q6_csv_task",
                "Q6 task on a CSV chunk",
                &self.csv,
                q6_task("lineitem.csv", self.first_csv_chunk()?, FileFormat::Csv),
            ),
        ])
    }
}

/// Start-up steps of the built-in plugin module.
pub struct Startup {
    /// Compile the module from its bytes (Cranelift), no cache.
    pub compile: Duration,
    /// Load the compiled artefact (what a cache hit costs).
    pub load_precompiled: Duration,
    /// Create a store and instantiate from the pre-linked template, pooling allocator.
    pub instantiate: Duration,
    /// Size of the module in bytes.
    pub module_bytes: usize,
}

/// Measures start-up on `node`'s engine: medians of `compiles` compilations, 20 loads of
/// the precompiled artefact and `instances` instantiations.
///
/// # Errors
/// When the module does not compile or instantiate.
pub fn measure_startup(node: &StorageNode, compiles: usize, instances: usize) -> Result<Startup> {
    let sandbox = node.sandbox();
    let mut compile = Vec::new();
    let mut artefact = pushdown_storage_node::Precompiled::default();
    for _ in 0..compiles.max(1) {
        let start = Instant::now();
        artefact = sandbox.compile_uncached(BUILTIN_PLUGIN, BUILTIN_WASM)?;
        compile.push(start.elapsed());
    }
    let mut load = (0..20)
        .map(|_| {
            let start = Instant::now();
            sandbox.load_precompiled(BUILTIN_PLUGIN, &artefact)?;
            Ok(start.elapsed())
        })
        .collect::<Result<Vec<_>>>()?;
    let module = node.builtin();
    module.instantiate_once()?;
    let mut instantiate = (0..instances.max(1))
        .map(|_| {
            let start = Instant::now();
            module.instantiate_once()?;
            Ok(start.elapsed())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Startup {
        compile: median(&mut compile),
        load_precompiled: median(&mut load),
        instantiate: median(&mut instantiate),
        module_bytes: BUILTIN_WASM.len(),
    })
}

/// One whole-process run: wall time and peak resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcessRun {
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// Peak resident set size in bytes, from GNU time's `%M` (`None` without `/usr/bin/time`).
    pub max_rss: Option<u64>,
}

/// GNU time, which reports a child's peak RSS (Debian package `time`).
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `command` with stdout discarded and waits for it; the peak RSS comes from GNU time
/// when it is installed. (Our own `wait4(2)` would not do: Linux carries a parent's peak
/// RSS into a child across fork and exec, so a child of a large process reports the
/// parent's size; GNU time's child is forked from a small process.)
///
/// # Errors
/// When it cannot start or exits unsuccessfully (the error names the program and quotes
/// the last line of its stderr).
pub fn run_process(command: &Command) -> Result<ProcessRun> {
    let program = command.get_program().to_string_lossy().into_owned();
    let rss_file = tempfile::NamedTempFile::new()?;
    let mut run = if Path::new(GNU_TIME).is_file() {
        let mut c = Command::new(GNU_TIME);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(rss_file.path())
            .arg(command.get_program());
        c
    } else {
        Command::new(command.get_program())
    };
    run.args(command.get_args());
    let start = Instant::now();
    let output = run
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {program}"))?;
    let wall = start.elapsed();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{program} failed ({}): {}",
            output.status,
            stderr
                .lines()
                .rfind(|l| !l.starts_with("Command exited"))
                .unwrap_or("")
        );
    }
    let max_rss = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024);
    Ok(ProcessRun { wall, max_rss })
}

/// The median wall time and the largest peak RSS of `runs` runs after one warm-up run.
///
/// # Errors
/// As [`run_process`].
pub fn measure_process(runs: usize, mut make: impl FnMut() -> Command) -> Result<ProcessRun> {
    run_process(&make())?;
    let results = (0..runs.max(1))
        .map(|_| run_process(&make()))
        .collect::<Result<Vec<_>>>()?;
    let mut walls: Vec<Duration> = results.iter().map(|r| r.wall).collect();
    Ok(ProcessRun {
        wall: median(&mut walls),
        max_rss: results.iter().filter_map(|r| r.max_rss).max(),
    })
}

/// The `pushdown query` command for `sql` over `data` with `threads` tasks in parallel.
pub fn pushdown_command(exe: &Path, data: &Path, threads: usize, sql: &str) -> Command {
    let mut c = Command::new(exe);
    c.arg("query")
        .arg("--data")
        .arg(data)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--output")
        .arg("csv")
        .arg(sql);
    c
}

/// The DuckDB CLI command that runs `sql` over `lineitem` read from `file` (Parquet, or CSV
/// with a header) with `threads` threads.
pub fn duckdb_command(duckdb: &Path, file: &Path, threads: usize, sql: &str) -> Command {
    let path = file.display().to_string().replace('\'', "''");
    let reader = if file.extension().is_some_and(|e| e == "parquet") {
        format!("read_parquet('{path}')")
    } else {
        format!("read_csv('{path}', header = true)")
    };
    let mut c = Command::new(duckdb);
    c.arg("-csv").arg("-c").arg(format!(
        "SET threads TO {threads}; CREATE VIEW lineitem AS SELECT * FROM {reader}; {sql}"
    ));
    c
}

/// A `duckdb` executable: `$PATH`, then `.venv/bin/duckdb` (what `scripts/setup.sh`
/// installs) under the current folder or its ancestors.
pub fn find_duckdb() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("duckdb"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let cwd = std::env::current_dir().ok()?;
        cwd.ancestors()
            .map(|d| d.join(".venv/bin/duckdb"))
            .find(|p| p.is_file())
    })
}

/// The median of `samples` (the upper one of the middle two for an even count).
///
/// # Panics
/// When `samples` is empty.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The geometric mean of positive ratios (1.0 for none).
pub fn geometric_mean(ratios: &[f64]) -> f64 {
    if ratios.is_empty() {
        return 1.0;
    }
    (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp()
}
