//! `pushdown`: run SQL over Parquet and CSV files, with projection, predicates and partial
//! aggregates pushed into WebAssembly sandboxes next to the data.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use pushdown_intermediary::{Engine, Progress};
use pushdown_storage_node::NodeOptions;

mod csv_args;
mod output;
mod plugin;
mod serve;

#[derive(Parser)]
#[command(
    name = "pushdown",
    version,
    about = "SQL over Parquet and CSV, evaluated in Wasm sandboxes where the data lives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a SQL query over a folder of Parquet and CSV files (embedded mode: no servers).
    ///
    /// Every DIR/<t>.parquet, DIR/<t>.csv and folder DIR/<t>/ of such files is table <t>.
    Query(QueryArgs),
    /// Generate datasets.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Benchmark: every pipeline stage native vs Wasm, plugin start-up, and TPC-H Q1/Q6 as
    /// whole processes beside DuckDB; writes OUT/report.md and OUT/bench.svg.
    Bench(BenchArgs),
    /// User plugins: scalar functions, aggregates and parsers compiled to wasm32-wasip1.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a storage node as an Arrow Flight server.
    #[command(subcommand)]
    StorageNode(serve::StorageNodeCommand),
    /// Run the intermediary as an Arrow Flight SQL server over remote storage nodes.
    #[command(subcommand)]
    Intermediary(serve::IntermediaryCommand),
}

#[derive(Parser)]
struct BenchArgs {
    /// TPC-H scale factor of lineitem.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Folder of the TPC-H data (parquet/, csv/); generated when missing
    /// [default: datasets/generated/tpch-sf<SCALE>].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Folder for report.md and bench.svg.
    #[arg(long, value_name = "DIR", default_value = "benches/results")]
    out: PathBuf,
    /// Threads of both engines in the whole-process runs (default: the number of cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Timed runs of each whole-process measurement, after one warm-up.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// The DuckDB CLI [default: `duckdb` on PATH, else .venv/bin/duckdb].
    #[arg(long, value_name = "PATH")]
    duckdb: Option<PathBuf>,
}

#[derive(Parser)]
struct QueryArgs {
    /// Folder whose Parquet and CSV files are the tables (embedded mode).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "connect",
        conflicts_with = "connect"
    )]
    data: Option<PathBuf>,
    /// An intermediary's Flight SQL URL (`http://host:port`) to send the query to instead.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    /// Bearer token for --connect [default: $PUSHDOWN_TOKEN].
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "connect",
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File whose first line is the bearer token for --connect.
    #[arg(long, value_name = "FILE", requires = "connect")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an `https://` intermediary [default: the system's roots].
    #[arg(long, value_name = "FILE", requires = "connect")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an intermediary that requires one; needs --tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["connect", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Print the pushdown split before the result, and tasks, bytes and rows after it (on
    /// stderr). With --connect, the intermediary's run report after the result: what the
    /// storage nodes did (tasks, pruning, cache hits, passthrough, folds).
    #[arg(long)]
    explain: bool,
    /// Target size of a CSV chunk (one task each), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    csv_chunk_size: u64,
    #[command(flatten)]
    csv: csv_args::CsvArgs,
    /// Tasks run in parallel (default: the number of cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Deadline of one plugin call, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    task_deadline: u64,
    /// Read table TABLE (DIR/TABLE.* or folder DIR/TABLE/) with the registered parser
    /// plugin PARSER, e.g. `--format access=access_log`. Repeatable.
    #[arg(long, value_name = "TABLE=PARSER")]
    format: Vec<String>,
    #[command(flatten)]
    registry: plugin::RegistryArg,
    /// Linear-memory cap of one plugin instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=4096))]
    plugin_memory: u64,
    /// Fraction of tasks (0 to 1) run again with the native build of the pipeline and
    /// compared with the sandbox's result; differences are counted (--explain) and logged.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = pushdown_storage_node::audit::parse_rate)]
    audit_rate: f64,
    /// The SQL query (it may start with a `--` comment).
    #[arg(allow_hyphen_values = true)]
    sql: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// An aligned text table.
    Table,
    /// A header row and RFC 4180 rows.
    Csv,
    /// A JSON array of objects.
    Json,
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// TPC-H tables (from the tpchgen crates) as DIR/parquet/<table>.parquet and DIR/csv/<table>.csv.
    Tpch {
        /// TPC-H scale factor (1 ≈ 6 million lineitem rows).
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Rows per Parquet row group.
        #[arg(long, default_value_t = 122_880)]
        row_group_size: usize,
        /// Comma-separated tables to write.
        #[arg(long, value_delimiter = ',', default_value = "lineitem")]
        tables: Vec<String>,
    },
}

/// Query progress on stderr: tasks done of total, rows and bytes read.
#[derive(Debug)]
struct TaskProgress {
    bar: ProgressBar,
    rows: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Progress for TaskProgress {
    fn add_tasks(&self, n: u64) {
        self.bar.inc_length(n);
    }

    fn task_done(&self, rows: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let rows = self.rows.fetch_add(rows, Relaxed) + rows;
        let bytes = self.bytes.fetch_add(bytes, Relaxed) + bytes;
        self.bar
            .set_message(format!("{rows} rows, {}", indicatif::HumanBytes(bytes)));
        self.bar.inc(1);
    }
}

/// A bar that appears on stderr after one second, only when both stdout and stderr are
/// terminals (so piped or redirected output gets nothing extra).
fn query_bar(template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::hidden());
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return bar;
    }
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    let delayed = bar.downgrade();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(bar) = delayed.upgrade() {
            if !bar.is_finished() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
        }
    });
    bar
}

fn progress_bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn query(args: QueryArgs) -> Result<()> {
    if let Some(url) = &args.connect {
        let tls = (args.tls_ca.is_some() || args.tls_cert.is_some()).then(|| {
            pushdown_flight::ClientTls {
                ca: args.tls_ca.clone(),
                identity: args.tls_cert.clone().zip(args.tls_key.clone()),
            }
        });
        let connect = serve::ConnectArgs {
            url,
            token: args.token.as_deref(),
            token_file: args.token_file.as_deref(),
            tls,
        };
        return serve::query_remote(connect, &args.sql, args.explain, |schema, batches| {
            let mut stdout = std::io::stdout().lock();
            match args.output {
                OutputFormat::Table => output::table(&mut stdout, schema, batches)?,
                OutputFormat::Csv => output::csv(&mut stdout, schema, batches)?,
                OutputFormat::Json => output::json(&mut stdout, batches)?,
            }
            stdout.flush()?;
            Ok(())
        });
    }
    let data = args
        .data
        .clone()
        .context("--data DIR or --connect URL is needed")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let registry_dir = args.registry.dir();
    let formats = plugin::formats(&args.format, &registry_dir)?;
    // The registry is opened only when it exists: queries without plugins create nothing.
    let registry = registry_dir
        .join("registry.sqlite3")
        .is_file()
        .then_some(registry_dir);
    let options = NodeOptions {
        registry,
        formats,
        csv_chunk_size: args.csv_chunk_size,
        csv_all_varchar: args.csv.csv_all_varchar,
        csv: args.csv.options()?,
        sandbox: pushdown_storage_node::SandboxConfig {
            deadline: Duration::from_secs(args.task_deadline),
            max_memory_bytes: (args.plugin_memory as usize) << 20,
            ..Default::default()
        },
        audit_rate: args.audit_rate,
        ..Default::default()
    };
    let bar = query_bar("{spinner} tasks {pos}/{len} {wide_bar} {msg} {elapsed}");
    let progress: Arc<dyn Progress> = Arc::new(TaskProgress {
        bar: bar.clone(),
        rows: Default::default(),
        bytes: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let engine = Engine::embedded_with_threads(&data, options, Some(progress), threads)?;
        let query = engine.plan(&args.sql).await?;
        if args.explain {
            eprintln!("{}", query.explain_split());
        }
        let batches = query.collect().await?;
        Ok::<_, pushdown_intermediary::Error>((query, batches))
    });
    bar.finish_and_clear();
    let (query, batches) = result?;
    let mut stdout = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => output::table(&mut stdout, query.plan().schema(), &batches)?,
        OutputFormat::Csv => output::csv(&mut stdout, query.plan().schema(), &batches)?,
        OutputFormat::Json => output::json(&mut stdout, &batches)?,
    }
    stdout.flush()?;
    if args.explain {
        eprint!("{}", query.run_report());
    }
    Ok(())
}

fn datasets(command: DatasetsCommand) -> Result<()> {
    match command {
        DatasetsCommand::Tpch {
            scale,
            out,
            row_group_size,
            tables,
        } => {
            let total: u64 = tables
                .iter()
                .map(|t| pushdown_datasets::tpch_rows(t, scale))
                .sum();
            let bar = progress_bar(
                total,
                "{spinner} {msg} {pos}/{len} rows {wide_bar} {elapsed}",
            );
            let options = pushdown_datasets::TpchOptions {
                scale,
                out,
                row_group_size,
                tables,
                ..Default::default()
            };
            let mut done_before = 0u64;
            let mut current = String::new();
            let mut last_rows = 0u64;
            let files = pushdown_datasets::generate_tpch(&options, |table, rows| {
                if table != current {
                    done_before += last_rows;
                    current = table.to_string();
                    bar.set_message(format!("writing {table}"));
                }
                last_rows = rows;
                bar.set_position(done_before + rows);
            })?;
            bar.finish_and_clear();
            for f in files {
                let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "wrote {} ({:.1} MiB)",
                    f.display(),
                    size as f64 / (1 << 20) as f64
                );
            }
            Ok(())
        }
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        anyhow::bail!("--scale must be a positive number, got {}", args.scale);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let duckdb = args.duckdb.or_else(pushdown_benches::harness::find_duckdb);
    if let Some(path) = &duckdb {
        if !path.is_file() {
            anyhow::bail!("--duckdb {}: no such file", path.display());
        }
    } else {
        eprintln!(
            "note: no duckdb executable found (PATH, .venv/bin); end-to-end runs without DuckDB"
        );
    }
    let options = pushdown_benches::report::BenchOptions {
        scale: args.scale,
        data: args
            .data
            .unwrap_or_else(|| PathBuf::from(format!("datasets/generated/tpch-sf{}", args.scale))),
        out: args.out,
        threads,
        runs: args.runs as usize,
        pushdown: std::env::current_exe().context("locating the pushdown executable")?,
        duckdb,
    };
    let bar = progress_bar(
        pushdown_benches::report::step_count(),
        "{spinner} {pos}/{len} {wide_bar} {elapsed} {msg}",
    );
    let mut started = 0;
    let report = pushdown_benches::report::run_and_write(&options, &mut |step| {
        if started > 0 {
            bar.inc(1);
        }
        started += 1;
        bar.set_message(step.to_string());
    });
    bar.finish_and_clear();
    let report = report?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {} and {}",
        options.out.join("report.md").display(),
        options.out.join("bench.svg").display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // Logs (plugin failures, denied calls) go to stderr only when asked: RUST_LOG=warn.
    let cli = Cli::parse();
    // Servers log refused calls and failing nodes (warn) by default; other commands only
    // when asked: RUST_LOG=warn.
    let serving = matches!(
        cli.command,
        Command::StorageNode(_) | Command::Intermediary(_)
    );
    let default_filter = if serving {
        "warn,pushdown_flight=info,pushdown_storage_node=info"
    } else {
        "off"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    let result = match cli.command {
        Command::Query(args) => {
            if args.sql.trim().is_empty() {
                Err(anyhow::anyhow!("the SQL query is empty"))
            } else {
                query(args)
            }
        }
        Command::Datasets(c) => datasets(c),
        Command::Bench(args) => bench(args),
        Command::Plugin(c) => plugin::run(c),
        Command::StorageNode(c) => serve::storage_node(c),
        Command::Intermediary(c) => serve::intermediary(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
