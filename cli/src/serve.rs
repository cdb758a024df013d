//! `pushdown storage-node serve`, `pushdown intermediary serve` and `pushdown query --connect`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use pushdown_flight::{RemoteOptions, RemoteStorage};
use pushdown_intermediary::Engine;
use std::collections::HashMap;
use std::sync::Mutex;

use pushdown_intermediary::plugins::PluginLoader;
use pushdown_protocol::PluginRef;
use pushdown_storage_node::fold::FoldOptions;
use pushdown_storage_node::passthrough::PassthroughPolicy;
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
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// File whose first line is the admin token an intermediary must send to store plugin
    /// modules here (`put_module`) [default: none: no module is accepted].
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Tasks run at once; more wait (bounds the node's memory).
    #[arg(long, value_name = "N")]
    max_tasks: Option<usize>,
    /// Target size of a CSV chunk (one task each), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    csv_chunk_size: u64,
    /// Deadline of one plugin call, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    task_deadline: u64,
    /// Space kept for modules intermediaries send this node (`put_module`), in MiB; the
    /// least recently received beyond it are forgotten and sent again when needed. 0 keeps
    /// only the latest.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    received_modules_mib: u64,
    /// Memory for task results, in MiB: a task seen before (same file content, unit,
    /// predicate, projection, aggregate, plugins) is answered without reading storage or
    /// running the sandbox. 0 turns it off.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    result_cache: u64,
    /// Fraction of tasks (0 to 1) run again with the native build of the pipeline and
    /// compared with the sandbox's result; differences are logged (warn) and counted in
    /// the intermediary's run report.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = pushdown_storage_node::audit::parse_rate)]
    audit_rate: f64,
    /// Linear-memory cap of one plugin instance (the pipeline's or a user plugin's), in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=4096))]
    plugin_memory: u64,
    /// Pass a task through (read its input and send it to the intermediary, which runs
    /// the pipeline) when more than N tasks are waiting to run here [default: never].
    #[arg(long, value_name = "N")]
    passthrough_queue: Option<usize>,
    /// A user plugin that traps here on this many tasks within --quarantine-window is
    /// quarantined: its tasks are passed through. 0: never quarantine.
    #[arg(long, value_name = "N", default_value_t = 3)]
    quarantine_traps: usize,
    /// The window traps are counted in, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    quarantine_window: u64,
    /// How long a quarantine lasts after the plugin's last trap, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    quarantine_for: u64,
    /// A task whose user plugin traps here fails, instead of being passed through to the
    /// intermediary (which may run it under its own limits); no quarantine either.
    #[arg(long)]
    no_passthrough: bool,
    /// Checkpoint the aggregates folded here (for intermediaries run with
    /// --fold-on-nodes) into this folder: a fold job's Wasm instance, linear memory and
    /// globals, is snapshotted between tasks, so after a restart the node resumes it and
    /// does not run its folded tasks again [default: none: folds are held in memory only].
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Least time between two checkpoints of a fold job, in seconds (decimals allowed);
    /// 0: after every folded task.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_seconds)]
    checkpoint_every: f64,
    /// Disk budget of the checkpoint folder, in MiB; the oldest checkpoints beyond it are deleted.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    checkpoint_budget: u64,
    /// Read table TABLE (DIR/TABLE.* or folder DIR/TABLE/) with the parser plugin PARSER
    /// of this node's registry, e.g. `--format access=access_log`. Repeatable.
    #[arg(long, value_name = "TABLE=PARSER")]
    format: Vec<String>,
    #[command(flatten)]
    csv: crate::csv_args::CsvArgs,
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
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// Bearer token sent to the storage nodes [default: the clients' token].
    #[arg(long, value_name = "TOKEN", conflicts_with = "node_token_file")]
    node_token: Option<String>,
    /// File whose first line is the bearer token sent to the storage nodes.
    #[arg(long, value_name = "FILE")]
    node_token_file: Option<PathBuf>,
    /// File whose first line is the storage nodes' admin token: with it, the plugins a
    /// query calls are sent to the nodes by hash (`put_module`) [default: none: nodes run
    /// only the modules they already hold].
    #[arg(long, value_name = "FILE")]
    node_admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of `https://` storage nodes [default: the system's roots]; the
    /// intermediary presents --tls-cert/--tls-key to nodes that require client certificates.
    #[arg(long, value_name = "FILE")]
    node_tls_ca: Option<PathBuf>,
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
    /// A query not answered within this many seconds (planning included) fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    query_timeout: u64,
    /// Queries running at once; more are refused until one ends.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_queries: u64,
    /// Longest SQL text a client may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10)]
    max_sql_bytes: usize,
    /// Fold each scan's partial aggregates on the storage nodes (one job per scan
    /// partition, drained after its last task) instead of receiving one per row group or
    /// chunk: with `storage-node serve --checkpoint-dir`, a node killed mid-query resumes
    /// its folds from their checkpoints when the query runs again.
    #[arg(long)]
    fold_on_nodes: bool,
    /// Another intermediary of this tier (`http://host:port`); repeat for each. Each query
    /// is then spread over the tier: its scans' row groups divided among the intermediaries
    /// up, partial aggregates and joins shuffled between them by key, the final stage run
    /// here. Every intermediary of a tier lists the others, with the same storage nodes.
    #[arg(long = "peer", value_name = "URL")]
    peers: Vec<String>,
    /// File of peer URLs, one per line (`#` starts a comment); adds to --peer.
    #[arg(long, value_name = "FILE")]
    peers_file: Option<PathBuf>,
    /// This intermediary's URL as its peers reach it [default: http(s)://the listening
    /// address].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// CA certificate (PEM) of `https://` peers [default: --node-tls-ca, else the system's
    /// roots]; this intermediary presents --tls-cert/--tls-key to peers that require
    /// client certificates (--tls-client-ca).
    #[arg(long, value_name = "FILE")]
    peer_tls_ca: Option<PathBuf>,
    /// File whose first line is the bearer token of calls between the tier's intermediaries
    /// (sent to peers, required of them) [default: the clients' token].
    #[arg(long, value_name = "FILE")]
    peer_token_file: Option<PathBuf>,
    /// The plugin registry whose scalar functions and aggregates SQL may call; their
    /// modules are sent to the storage nodes by hash.
    #[command(flatten)]
    registry: RegistryArg,
}

/// Who a server admits, and how.
#[derive(clap::Args)]
pub struct ServerSecurityArgs {
    /// Bearer token every call must carry (visible to other users in the process list:
    /// prefer --token-file or $PUSHDOWN_TOKEN) [default: $PUSHDOWN_TOKEN; none: no check].
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// File whose first line is the bearer token every call must carry.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Listen beyond loopback without a token or without TLS (refused otherwise).
    #[arg(long)]
    insecure: bool,
}

impl ServerSecurityArgs {
    fn security(&self) -> Result<pushdown_flight::Security> {
        let token = pushdown_flight::read_token(
            self.token.as_deref(),
            self.token_file.as_deref(),
            "PUSHDOWN_TOKEN",
        )
        .map_err(anyhow::Error::msg)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(pushdown_flight::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        Ok(pushdown_flight::Security { token, tls })
    }

    /// Refuses to listen beyond loopback without a token and TLS, unless --insecure.
    fn check_exposure(
        &self,
        addr: std::net::SocketAddr,
        security: &pushdown_flight::Security,
    ) -> Result<()> {
        if addr.ip().is_loopback() || self.insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        if security.token.is_none() {
            missing.push("a token (--token-file or $PUSHDOWN_TOKEN)");
        }
        if security.tls.is_none() {
            missing.push("TLS (--tls-cert and --tls-key)");
        }
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to listen on {addr}, beyond loopback, without {}; give them, or --insecure to do it anyway",
            missing.join(" and ")
        )
    }
}

/// `https` when the server speaks TLS.
fn scheme(security: &pushdown_flight::Security) -> &'static str {
    if security.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// What a server requires of its clients, for its start-up line.
fn admission(security: &pushdown_flight::Security) -> String {
    let mut parts = Vec::new();
    if security.token.is_some() {
        parts.push("bearer token required");
    }
    if security.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        parts.push("client certificate required");
    }
    parts.iter().map(|p| format!(", {p}")).collect()
}

fn read_token_file(file: Option<&std::path::Path>) -> Result<Option<String>> {
    match file {
        // An environment variable no one sets: only the file counts.
        Some(f) => pushdown_flight::read_token(None, Some(f), "PUSHDOWN_UNSET_TOKEN")
            .map_err(anyhow::Error::msg),
        None => Ok(None),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn storage_node(command: StorageNodeCommand) -> Result<()> {
    let StorageNodeCommand::Serve(args) = command;
    // A node keeps the modules intermediaries send it in a registry of its own (by default
    // beside, not in, the user's registry), unless told which one or unless its parsers
    // (--format) come from the user's registry.
    let registry_dir = match &args.registry.registry {
        Some(dir) => dir.clone(),
        None if !args.format.is_empty() => args.registry.dir(),
        None => Registry::default_dir().join("node"),
    };
    let formats = crate::plugin::formats(&args.format, &registry_dir)?;
    let options = NodeOptions {
        formats,
        csv_chunk_size: args.csv_chunk_size,
        csv_all_varchar: args.csv.csv_all_varchar,
        csv: args.csv.options()?,
        // Always a registry: intermediaries send the plugins their queries run.
        registry: Some(registry_dir),
        received_modules_bytes: args.received_modules_mib.saturating_mul(1 << 20),
        result_cache_bytes: args.result_cache.saturating_mul(1 << 20),
        audit_rate: args.audit_rate,
        sandbox: SandboxConfig {
            deadline: Duration::from_secs(args.task_deadline),
            max_memory_bytes: (args.plugin_memory as usize) << 20,
            ..Default::default()
        },
        passthrough: (!args.no_passthrough).then(|| PassthroughPolicy {
            quarantine_traps: args.quarantine_traps,
            quarantine_window: Duration::from_secs(args.quarantine_window),
            quarantine_for: Duration::from_secs(args.quarantine_for),
        }),
        fold: FoldOptions {
            checkpoint_dir: args.checkpoint_dir.clone(),
            checkpoint_every: Duration::from_secs_f64(args.checkpoint_every),
            checkpoint_budget_bytes: args.checkpoint_budget.saturating_mul(1 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = Arc::new(StorageNode::open(&args.data, options)?);
    let max_tasks = args
        .max_tasks
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let security = args.security.security()?;
    let admin_token = read_token_file(args.admin_token_file.as_deref())?;
    let accepts_modules = admin_token.is_some();
    let service = pushdown_flight::NodeService::new(node, max_tasks)
        .with_admin_token(admin_token)
        .with_passthrough_queue(args.passthrough_queue);
    runtime()?.block_on(async move {
        let (listener, addr) = pushdown_flight::bind(&args.listen).await?;
        args.security.check_exposure(addr, &security)?;
        println!(
            "storage node serving {} on {}://{addr} ({} tasks at once{}{})",
            args.data.display(),
            scheme(&security),
            max_tasks,
            admission(&security),
            if accepts_modules {
                ", plugin modules accepted with the admin token"
            } else {
                ""
            }
        );
        std::io::stdout().flush()?;
        pushdown_flight::serve_node(service, listener, security).await?;
        Ok(())
    })
}

pub fn intermediary(command: IntermediaryCommand) -> Result<()> {
    let IntermediaryCommand::Serve(args) = command;
    let security = args.security.security()?;
    let node_token = match (&args.node_token, &args.node_token_file) {
        (Some(t), _) if t.trim().is_empty() => anyhow::bail!("--node-token is empty"),
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => read_token_file(Some(f))?,
        (None, None) => security.token.clone(),
    };
    let node_tls = args
        .node_tls_ca
        .as_ref()
        .map(|ca| pushdown_flight::ClientTls {
            ca: Some(ca.clone()),
            identity: security
                .tls
                .as_ref()
                .map(|t| (t.cert.clone(), t.key.clone())),
        });
    let options = RemoteOptions {
        token: node_token,
        task_timeout: Duration::from_secs(args.task_timeout),
        tasks_per_node: args.tasks_per_node,
        tls: node_tls,
        admin_token: read_token_file(args.node_admin_token_file.as_deref())?,
        fold_on_nodes: args.fold_on_nodes,
        ..Default::default()
    };
    let registry_dir = args.registry.dir();
    let registry = match registry_dir.join("registry.sqlite3").is_file() {
        true => Some(Arc::new(Registry::open(&registry_dir)?)),
        false => None,
    };
    let runtime = runtime()?;
    // Queries execute on a runtime of their own: network I/O, other clients and
    // deadlines are served while an operator computes.
    let cpu = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .thread_name("pushdown-cpu")
        .enable_all()
        .build()?;
    let cpu_handle = cpu.handle().clone();
    // The connections to the nodes live on the server's runtime.
    let mut storage = {
        let _guard = runtime.enter();
        RemoteStorage::connect(&args.storage_nodes, options)?
    };
    if let Some(r) = &registry {
        let r = r.clone();
        storage = storage.with_modules(Arc::new(move |p: &PluginRef| r.module(p)));
    }
    let mut peer_urls = args.peers.clone();
    if let Some(file) = &args.peers_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--peers-file {}: {e}", file.display()))?;
        peer_urls.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    let peer_token = match &args.peer_token_file {
        Some(f) => read_token_file(Some(f))?,
        None => security.token.clone(),
    };
    let storage: Arc<dyn pushdown_intermediary::StorageClient> = Arc::new(storage);
    let memory_limit = args.memory_limit.map(|m| (m as usize) << 20);
    runtime.block_on(async move {
        let (listener, addr) = pushdown_flight::bind(&args.listen).await?;
        args.security.check_exposure(addr, &security)?;
        let mut tier_serve = None;
        let engine = if peer_urls.is_empty() {
            Engine::with_memory_limit(storage, None, memory_limit)
        } else {
            let self_url = args
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{}://{addr}", scheme(&security)));
            let peers = pushdown_flight::Peers::new(&self_url, &peer_urls)?;
            tier_serve = Some(pushdown_flight::TierServe {
                peers: peers.clone(),
                token: peer_token.clone(),
            });
            let mut headers = http::HeaderMap::new();
            if let Some(t) = &peer_token {
                headers.insert(
                    http::header::AUTHORIZATION,
                    format!("Bearer {t}").parse().map_err(|_| {
                        anyhow::anyhow!("the peer token is not a valid header value")
                    })?,
                );
            }
            // `https://` peers: their certificates chain to --peer-tls-ca (else
            // --node-tls-ca, else the system's roots); this intermediary presents its own
            // for mutual TLS.
            let peer_tls = Some(pushdown_flight::ClientTls {
                ca: args
                    .peer_tls_ca
                    .clone()
                    .or_else(|| args.node_tls_ca.clone()),
                identity: security
                    .tls
                    .as_ref()
                    .map(|t| (t.cert.clone(), t.key.clone())),
            });
            let channels = Arc::new(pushdown_flight::PeerChannels::new(
                peer_tls,
                peer_token.as_deref(),
            )?);
            peers.spawn_probes(channels.clone());
            let tier = pushdown_intermediary::TierOptions {
                workers: {
                    let peers = peers.clone();
                    Arc::new(move || peers.workers())
                },
                self_url: peers.self_url().clone(),
                channels,
                headers,
            };
            Engine::with_tier(storage, memory_limit, tier)?
        };
        let engine = Arc::new(engine);
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
        let tier = if peer_urls.is_empty() {
            String::new()
        } else {
            format!(", in a tier with {} peer(s)", peer_urls.len())
        };
        println!(
            "intermediary serving Flight SQL on {}://{addr} over {} storage node(s){tier}{}",
            scheme(&security),
            args.storage_nodes.len(),
            admission(&security),
        );
        std::io::stdout().flush()?;
        let limits = pushdown_flight::QueryLimits {
            sql: pushdown_intermediary::SqlLimits {
                max_sql_bytes: args.max_sql_bytes,
                ..Default::default()
            },
            timeout: Duration::from_secs(args.query_timeout),
            max_queries: args.max_queries as usize,
        };
        pushdown_flight::serve_sql(
            engine,
            listener,
            security,
            limits,
            Some(cpu_handle),
            tier_serve,
        )
        .await?;
        Ok(())
    })
}

/// How `pushdown query --connect` reaches the intermediary.
pub struct ConnectArgs<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub token_file: Option<&'a std::path::Path>,
    pub tls: Option<pushdown_flight::ClientTls>,
}

/// Runs `sql` on the intermediary and prints the result with `print`; with `explain`,
/// then prints the intermediary's run report of it on stderr.
pub fn query_remote(
    connect: ConnectArgs<'_>,
    sql: &str,
    explain: bool,
    print: impl FnOnce(SchemaRef, &[RecordBatch]) -> Result<()>,
) -> Result<()> {
    let token = pushdown_flight::read_token(connect.token, connect.token_file, "PUSHDOWN_TOKEN")
        .map_err(anyhow::Error::msg)?;
    let (schema, batches, report) =
        runtime()?.block_on(pushdown_flight::query_remote_with_report(
            connect.url,
            token.as_deref(),
            connect.tls.as_ref(),
            sql,
            explain,
        ))?;
    print(schema, &batches)?;
    if explain {
        match report {
            Some(r) => eprint!("{r}"),
            None => eprintln!("(the intermediary sent no run report)"),
        }
    }
    Ok(())
}

/// A non-negative number of seconds, finite, at most a day.
fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}
