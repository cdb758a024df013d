//! `pushdown storage-node serve`, `pushdown intermediary serve` and `pushdown query --connect`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use pushdown_flight::{RemoteOptions, RemoteStorage};
use pushdown_intermediary::Engine;
use std::collections::HashMap;
use std::sync::Mutex;

use pushdown_intermediary::plugins::PluginLoader;
use pushdown_protocol::PluginRef;
use pushdown_storage_node::{
    NodeOptions, PluginModule, Registry, Sandbox, SandboxConfig, StorageNode,
};

use crate::plugin::RegistryArg;

#[derive(Subcommand)]
pub enum StorageNodeCommand {
    /// Serve DIR's tables over Arrow Flight and run pushdown tasks on them.
    Serve(NodeServeArgs),
}

#[derive(Parser)]
pub struct NodeServeArgs {
    /// Folder whose Parquet and CSV files are the tables.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Bearer token every call must carry [default: $PUSHDOWN_TOKEN; none: no check].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Tasks run at once; more wait (bounds the node's memory).
    #[arg(long, value_name = "N")]
    max_tasks: Option<usize>,
    /// Target size of a CSV chunk (one task each), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    csv_chunk_size: u64,
    /// Deadline of one plugin call, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    task_deadline: u64,
    /// Read table TABLE (DIR/TABLE.* or folder DIR/TABLE/) with the parser plugin PARSER
    /// of this node's registry, e.g. `--format access=access_log`. Repeatable.
    #[arg(long, value_name = "TABLE=PARSER")]
    format: Vec<String>,
    #[command(flatten)]
    registry: RegistryArg,
}

#[derive(Subcommand)]
pub enum IntermediaryCommand {
    /// Serve SQL over Arrow Flight SQL, with the tables of the given storage nodes.
    Serve(IntermediaryServeArgs),
}

#[derive(Parser)]
pub struct IntermediaryServeArgs {
    /// A storage node's URL (`http://host:port`); repeat for each node.
    #[arg(long = "storage-node", value_name = "URL", required = true)]
    storage_nodes: Vec<String>,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50050")]
    listen: String,
    /// Bearer token clients must send [default: $PUSHDOWN_TOKEN; none: no check].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Bearer token sent to the storage nodes [default: --token].
    #[arg(long, value_name = "TOKEN")]
    node_token: Option<String>,
    /// A task not finished within this many seconds runs on another replica.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    task_timeout: u64,
    /// Tasks in flight per storage node.
    #[arg(long, value_name = "N", default_value_t = 4)]
    tasks_per_node: usize,
    /// Memory budget of the intermediary's operators (final aggregates, sorts, joins), in
    /// MiB; past it they spill or fail with "memory budget exceeded".
    #[arg(long, value_name = "MIB")]
    memory_limit: Option<u64>,
    /// The plugin registry whose scalar functions and aggregates SQL may call; their
    /// modules are sent to the storage nodes by hash.
    #[command(flatten)]
    registry: RegistryArg,
}

fn token(flag: &Option<String>) -> Option<String> {
    flag.clone()
        .or_else(|| std::env::var("PUSHDOWN_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn storage_node(command: StorageNodeCommand) -> Result<()> {
    let StorageNodeCommand::Serve(args) = command;
    let registry_dir = args.registry.dir();
    let formats = crate::plugin::formats(&args.format, &registry_dir)?;
    let options = NodeOptions {
        formats,
        csv_chunk_size: args.csv_chunk_size,
        // Always a registry: intermediaries send the plugins their queries run.
        registry: Some(registry_dir),
        sandbox: SandboxConfig {
            deadline: Duration::from_secs(args.task_deadline),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = Arc::new(StorageNode::open(&args.data, options)?);
    let max_tasks = args
        .max_tasks
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let token = token(&args.token);
    runtime()?.block_on(async move {
        let (listener, addr) = pushdown_flight::bind(&args.listen).await?;
        println!(
            "storage node serving {} on http://{addr} ({} tasks at once{})",
            args.data.display(),
            max_tasks,
            if token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
        std::io::stdout().flush()?;
        pushdown_flight::serve_node(node, listener, token, max_tasks).await?;
        Ok(())
    })
}

pub fn intermediary(command: IntermediaryCommand) -> Result<()> {
    let IntermediaryCommand::Serve(args) = command;
    let token = token(&args.token);
    let options = RemoteOptions {
        token: args.node_token.clone().or_else(|| token.clone()),
        task_timeout: Duration::from_secs(args.task_timeout),
        tasks_per_node: args.tasks_per_node,
        ..Default::default()
    };
    // Tasks wait on the network, not the CPU: enough threads to keep every node busy.
    let threads = (args.storage_nodes.len() * args.tasks_per_node).max(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the task pool")?;
    let registry_dir = args.registry.dir();
    let registry = match registry_dir.join("registry.sqlite3").is_file() {
        true => Some(Arc::new(Registry::open(&registry_dir)?)),
        false => None,
    };
    let mut storage = RemoteStorage::connect(&args.storage_nodes, options)?;
    if let Some(r) = &registry {
        let r = r.clone();
        storage = storage.with_modules(Arc::new(move |p: &PluginRef| r.module(p)));
    }
    let engine = Arc::new(Engine::with_memory_limit(
        Arc::new(storage),
        None,
        args.memory_limit.map(|m| (m as usize) << 20),
    ));
    if let Some(registry) = registry {
        // Calls that stay in the intermediary, and merges and finalizes, run here.
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
        let loaded: Arc<Mutex<HashMap<String, PluginModule>>> = Arc::default();
        let plugins = registry.list()?;
        let loader: PluginLoader = Arc::new(move |p: &PluginRef| {
            if let Some(m) = loaded.lock().expect("not poisoned").get(&p.sha256) {
                return Ok(m.clone());
            }
            let (module, _) = sandbox.load_plugin(&p.name, &registry.module(p)?)?;
            loaded
                .lock()
                .expect("not poisoned")
                .insert(p.sha256.clone(), module.clone());
            Ok(module)
        });
        engine.register_plugins(&plugins, loader)?;
    }
    runtime()?.block_on(async move {
        let (listener, addr) = pushdown_flight::bind(&args.listen).await?;
        println!(
            "intermediary serving Flight SQL on http://{addr} over {} storage node(s){}",
            args.storage_nodes.len(),
            if token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
        std::io::stdout().flush()?;
        pushdown_flight::serve_sql(engine, listener, token).await?;
        Ok(())
    })
}

pub fn query_remote(
    url: &str,
    token_flag: Option<String>,
    sql: &str,
    print: impl FnOnce(SchemaRef, &[RecordBatch]) -> Result<()>,
) -> Result<()> {
    let token = token(&token_flag);
    let (schema, batches) =
        runtime()?.block_on(pushdown_flight::query_remote(url, token.as_deref(), sql))?;
    print(schema, &batches)
}
