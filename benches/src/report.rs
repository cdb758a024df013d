//! `pushdown bench`: runs the whole comparison and writes `report.md` (Markdown tables)
//! and `bench.svg` (plotters chart) into the output folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::harness::{
    duckdb_command, geometric_mean, measure_process, measure_startup, pushdown_command, Mode,
    Nodes, ProcessRun, Startup, Q1_SQL, Q6_SQL,
};

/// What `pushdown bench` measures, and where.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// TPC-H scale factor of the lineitem data.
    pub scale: f64,
    /// Folder of the TPC-H data (`parquet/`, `csv/`); generated there when missing.
    pub data: PathBuf,
    /// Folder for `report.md` and `bench.svg`.
    pub out: PathBuf,
    /// Threads of both engines in the whole-process runs.
    pub threads: usize,
    /// Timed runs per whole-process measurement (after one warm-up).
    pub runs: usize,
    /// The `pushdown` executable for whole-process runs.
    pub pushdown: PathBuf,
    /// The `duckdb` executable, if any.
    pub duckdb: Option<PathBuf>,
}

/// A stage or task timed natively and in Wasm.
#[derive(Debug, Clone)]
pub struct NativeVsWasm {
    /// What was measured.
    pub label: String,
    /// Median native time.
    pub native: Duration,
    /// Median Wasm time.
    pub wasm: Duration,
}

impl NativeVsWasm {
    /// Wasm time over native time.
    pub fn ratio(&self) -> f64 {
        self.wasm.as_secs_f64() / self.native.as_secs_f64().max(1e-12)
    }
}

/// One query over one format as whole processes.
#[derive(Debug, Clone)]
pub struct EndToEnd {
    /// `Q1` or `Q6`.
    pub query: &'static str,
    /// `Parquet` or `CSV`.
    pub format: &'static str,
    /// `pushdown query`.
    pub pushdown: ProcessRun,
    /// The DuckDB CLI, when found.
    pub duckdb: Option<ProcessRun>,
    /// Bytes the storage node read from storage.
    pub bytes_read: u64,
    /// Bytes of partial results the storage node returned to the intermediary.
    pub bytes_returned: u64,
}

/// Everything `pushdown bench` measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The options it ran with.
    pub options: BenchOptions,
    /// CPU, cores, memory.
    pub machine: String,
    /// Per stage.
    pub stages: Vec<NativeVsWasm>,
    /// Whole tasks.
    pub tasks: Vec<NativeVsWasm>,
    /// Plugin start-up.
    pub startup: (Duration, Duration, Duration, usize),
    /// Whole processes.
    pub end_to_end: Vec<EndToEnd>,
}

/// Steps of [`run`], for a progress bar.
pub fn step_count() -> u64 {
    // data, 5 stages × 2, 3 tasks × 2, start-up, 4 end-to-end.
    1 + 10 + 6 + 1 + 4
}

/// Runs every measurement. `step` hears the name of each step as it starts.
///
/// # Errors
/// When data cannot be generated, a node does not open, or a run fails.
pub fn run(options: &BenchOptions, step: &mut dyn FnMut(&str)) -> Result<Report> {
    step("TPC-H data");
    ensure_data(options)?;
    let nodes = Nodes::open(&options.data)?;
    let mut stages = Vec::new();
    for case in nodes.stage_cases()? {
        let mut time = |mode: Mode| {
            step(&format!("{} ({})", case.label, mode.name()));
            case.measure(mode, Duration::from_millis(200), 7)
                .with_context(|| format!("stage {} ({})", case.id, mode.name()))
        };
        let native = time(Mode::Native)?;
        let wasm = time(Mode::Wasm)?;
        stages.push(NativeVsWasm {
            label: case.label.to_string(),
            native,
            wasm,
        });
    }
    let mut tasks = Vec::new();
    for case in nodes.task_cases()? {
        let mut time = |mode: Mode| {
            step(&format!("{} ({})", case.label, mode.name()));
            case.measure(mode, 15)
                .with_context(|| format!("task {} ({})", case.id, mode.name()))
        };
        let native = time(Mode::Native)?;
        let wasm = time(Mode::Wasm)?;
        tasks.push(NativeVsWasm {
            label: case.label.to_string(),
            native,
            wasm,
        });
    }
    step("plugin start-up");
    let Startup {
        compile,
        load_precompiled,
        instantiate,
        module_bytes,
    } = measure_startup(&nodes.parquet, 3, 2000)?;
    drop(nodes);
    let mut end_to_end = Vec::new();
    for (format, ext) in [("Parquet", "parquet"), ("CSV", "csv")] {
        let dir = options.data.join(ext);
        let file = dir.join(format!("lineitem.{ext}"));
        for (query, sql) in [("Q1", Q1_SQL), ("Q6", Q6_SQL)] {
            step(&format!("{query} over {format}, whole processes"));
            let pushdown = measure_process(options.runs, || {
                pushdown_command(&options.pushdown, &dir, options.threads, sql)
            })?;
            let duckdb = match &options.duckdb {
                Some(exe) => Some(measure_process(options.runs, || {
                    duckdb_command(exe, &file, options.threads, sql)
                })?),
                None => None,
            };
            let (bytes_read, bytes_returned) = scan_bytes(&dir, sql)?;
            end_to_end.push(EndToEnd {
                query,
                format,
                pushdown,
                duckdb,
                bytes_read,
                bytes_returned,
            });
        }
    }
    Ok(Report {
        options: options.clone(),
        machine: machine(),
        stages,
        tasks,
        startup: (compile, load_precompiled, instantiate, module_bytes),
        end_to_end,
    })
}

/// Generates lineitem at the scale into `options.data` unless both files are there.
fn ensure_data(options: &BenchOptions) -> Result<()> {
    let have = |ext: &str| {
        options
            .data
            .join(ext)
            .join(format!("lineitem.{ext}"))
            .is_file()
    };
    if have("parquet") && have("csv") {
        return Ok(());
    }
    let tpch = pushdown_datasets::TpchOptions {
        scale: options.scale,
        out: options.data.clone(),
        ..Default::default()
    };
    pushdown_datasets::generate_tpch(&tpch, |_, _| {})
        .with_context(|| format!("generating TPC-H into {}", options.data.display()))?;
    Ok(())
}

/// Bytes read and returned by the scan of `sql` over `dir`, in this process.
fn scan_bytes(dir: &Path, sql: &str) -> Result<(u64, u64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let engine = pushdown_intermediary::Engine::embedded(dir, Default::default(), None)?;
        let query = engine.plan(sql).await?;
        query.collect().await?;
        Ok(query.scan_bytes())
    })
}

/// CPU model, cores and memory of this machine, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1 << 20) as f64);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB memory")
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

impl Report {
    /// Geometric mean of Wasm/native over the stages, and the largest ratio.
    pub fn stage_summary(&self) -> (f64, f64) {
        let ratios: Vec<f64> = self.stages.iter().map(NativeVsWasm::ratio).collect();
        (
            geometric_mean(&ratios),
            ratios.iter().copied().fold(0.0, f64::max),
        )
    }

    /// The report as Markdown: machine and command, then one table per part.
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# pushdown bench: TPC-H lineitem, scale factor {}\n",
            o.scale
        );
        let _ = writeln!(md, "Machine: {}. Threads: {}.\n", self.machine, o.threads);
        let _ = writeln!(
            md,
            "Command: `pushdown bench --scale {} --threads {} --runs {}`\n",
            o.scale, o.threads, o.runs
        );
        let _ = writeln!(
            md,
            "## Stages, native vs Wasm (one row group / CSV chunk, same code)\n"
        );
        native_vs_wasm_table(&mut md, "stage", &self.stages);
        let (geo, max) = self.stage_summary();
        let _ = writeln!(
            md,
            "\nGeometric mean of Wasm / native over the stages: **{geo:.2}×** (target ≤ 1.25×); largest: **{max:.2}×** (target ≤ 2×).\n"
        );
        let _ = writeln!(md, "## Whole tasks, native vs Wasm (read, parse, filter, aggregate, encode and decode the result)\n");
        native_vs_wasm_table(&mut md, "task", &self.tasks);
        let (compile, load, instantiate, size) = self.startup;
        let _ = writeln!(
            md,
            "\n## Plugin start-up (built-in module, {})\n",
            fmt_bytes(size as u64)
        );
        let _ = writeln!(md, "| step | median |");
        let _ = writeln!(md, "|:---|---:|");
        let _ = writeln!(
            md,
            "| compile from bytes (Cranelift) | {} |",
            fmt_duration(compile)
        );
        let _ = writeln!(
            md,
            "| load precompiled module (cache hit) | {} |",
            fmt_duration(load)
        );
        let _ = writeln!(
            md,
            "| instantiate from pre-linked template, pooling allocator (target ≤ 10 µs) | {} |",
            fmt_duration(instantiate)
        );
        let _ = writeln!(
            md,
            "\n## End to end, whole processes, same files and threads\n"
        );
        let _ = writeln!(md, "| query | format | pushdown | DuckDB | pushdown / DuckDB | pushdown peak RSS | bytes read from storage | bytes returned to the intermediary |");
        let _ = writeln!(md, "|:---|:---|---:|---:|---:|---:|---:|---:|");
        for e in &self.end_to_end {
            let (duck, ratio) = match e.duckdb {
                Some(d) => (
                    fmt_duration(d.wall),
                    format!(
                        "{:.2}×",
                        e.pushdown.wall.as_secs_f64() / d.wall.as_secs_f64()
                    ),
                ),
                None => ("no duckdb found".into(), "–".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                e.query,
                e.format,
                fmt_duration(e.pushdown.wall),
                duck,
                ratio,
                e.pushdown.max_rss.map_or("–".into(), fmt_bytes),
                fmt_bytes(e.bytes_read),
                fmt_bytes(e.bytes_returned)
            );
        }
        let _ = writeln!(
            md,
            "\nTimes are medians of {} runs after one warm-up; peak RSS is the whole `pushdown query` process (storage node and intermediary together), the largest over the runs.",
            o.runs
        );
        md
    }

    /// Draws the chart: native vs Wasm per stage (left), pushdown vs DuckDB end to end
    /// (right), as bars in milliseconds.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn svg(&self, path: &Path) -> Result<()> {
        let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(640);
        let stage_bars: Vec<(String, [f64; 2])> = self
            .stages
            .iter()
            .map(|s| {
                (
                    s.label.split(" (").next().unwrap_or(&s.label).to_string(),
                    [ms(s.native), ms(s.wasm)],
                )
            })
            .collect();
        bars(
            &left,
            "Stages: native vs Wasm (ms per row group / chunk)",
            &stage_bars,
            ["native", "Wasm"],
        )?;
        let e2e: Vec<(String, [f64; 2])> = self
            .end_to_end
            .iter()
            .map(|e| {
                (
                    format!("{} {}", e.query, e.format),
                    [ms(e.pushdown.wall), e.duckdb.map_or(0.0, |d| ms(d.wall))],
                )
            })
            .collect();
        bars(
            &right,
            &format!(
                "End to end, SF {}, {} threads (ms)",
                self.options.scale, self.options.threads
            ),
            &e2e,
            ["pushdown", "DuckDB"],
        )?;
        root.present().map_err(draw_err)?;
        Ok(())
    }
}

/// A Markdown table of `rows`: `first` (what each row is), native, Wasm, their ratio.
fn native_vs_wasm_table(md: &mut String, first: &str, rows: &[NativeVsWasm]) {
    let _ = writeln!(md, "| {first} | native | Wasm | Wasm / native |");
    let _ = writeln!(md, "|:---|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}× |",
            r.label,
            fmt_duration(r.native),
            fmt_duration(r.wasm),
            r.ratio()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

/// A grouped bar chart: one group per label, two bars per group.
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    data: &[(String, [f64; 2])],
    series: [&str; 2],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max = data
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let n = data.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..max)
        .map_err(draw_err)?;
    let labels: Vec<String> = data.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(data.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(draw_err)?;
    let colors = [RGBColor(70, 130, 180), RGBColor(230, 120, 40)];
    for (k, (name, color)) in series.iter().zip(colors).enumerate() {
        chart
            .draw_series(data.iter().enumerate().map(|(i, (_, v))| {
                let x0 = i as f64 + 0.1 + 0.4 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.38, v[k])], color.filled())
            }))
            .map_err(draw_err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Runs [`run`] and writes `report.md` and `bench.svg` into `options.out`; returns the report.
///
/// # Errors
/// As [`run`], or when the files cannot be written.
pub fn run_and_write(options: &BenchOptions, step: &mut dyn FnMut(&str)) -> Result<Report> {
    let report = run(options, step)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let md = options.out.join("report.md");
    std::fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    report.svg(&options.out.join("bench.svg"))?;
    Ok(report)
}
