//! Remote storage nodes as the intermediary's [`StorageClient`]: tables found by listing
//! every node, files replicated on several nodes checked by size and SHA-256, tasks spread
//! over the replicas with bounded concurrency per node, and a task whose node fails or
//! times out run again on the next replica. A task's batches are handed to the merge only
//! once its whole stream has arrived, so every partial result is merged exactly once.
//!
//! Every call is async on the caller's tokio runtime: no runtime of its own, no thread
//! waiting on the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, Ticket};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use pushdown_intermediary::StorageClient;
use pushdown_protocol::{FoldRef, PluginRef, Task};
use pushdown_storage_node::passthrough::{PassthroughRunner, RawTask};
use pushdown_storage_node::{
    Error, FileInfo, Result, SandboxConfig, TableInfo, TaskMetrics, TaskOutput,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::node_server::TableDescription;

/// How the intermediary talks to storage nodes.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Bearer token sent with every call, when the nodes require one.
    pub token: Option<String>,
    /// A task not finished within this time is abandoned and run on another replica.
    /// Defaults to 60 s.
    pub task_timeout: Duration,
    /// Tasks in flight per node. Defaults to 4.
    pub tasks_per_node: usize,
    /// Time to establish a connection. Defaults to 5 s.
    pub connect_timeout: Duration,
    /// TLS toward `https://` nodes. Defaults to none (the system's roots for `https://`).
    pub tls: Option<crate::ClientTls>,
    /// The nodes' admin token, sent with `put_module` only. Defaults to none: plugins are
    /// not sent, and a node that lacks one answers that it does not have it.
    pub admin_token: Option<String>,
    /// Fold partial aggregates on the storage nodes (checkpointed aggregates,
    /// [`pushdown_storage_node::fold`]). Defaults to false.
    pub fold_on_nodes: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            token: None,
            task_timeout: Duration::from_secs(60),
            tasks_per_node: 4,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            admin_token: None,
            fold_on_nodes: false,
        }
    }
}

struct Node {
    url: String,
    channel: Channel,
    permits: Arc<Semaphore>,
    /// Set when the node last failed: until then its replicas are tried first.
    down_until: Mutex<Option<Instant>>,
}

impl Node {
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| Instant::now() < t)
    }

    fn mark(&self, failed: bool) {
        *self.down_until.lock().expect("not poisoned") = failed.then(|| Instant::now() + DOWN_FOR);
    }
}

/// How long a node that failed is tried last (and not listed, when its listing is known).
const DOWN_FOR: Duration = Duration::from_secs(30);

/// Fold jobs whose folded tasks are remembered at once (runs that failed before their
/// finish leave theirs behind).
const MAX_FOLDS: usize = 4096;

/// A failed call shorter than this counts as a refused connection, worth one more try.
const FAST_FAILURE: Duration = Duration::from_secs(2);

/// Wait before that try.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Longest wait for a node's table listing.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the intermediary gets the bytes of a registered plugin to send to a node.
pub type ModuleSource = Arc<dyn Fn(&PluginRef) -> Result<Vec<u8>> + Send + Sync>;

/// A set of storage nodes behind Arrow Flight; see the module doc.
pub struct RemoteStorage {
    /// Plugins are sent (by hash) to a node before its first task that runs them.
    modules: Option<ModuleSource>,
    /// (node, sha256) of the modules each node has been sent.
    sent: Mutex<BTreeSet<(usize, String)>>,
    nodes: Vec<Node>,
    options: RemoteOptions,
    /// The nodes holding each file (by path), from the last listing.
    replicas: Mutex<HashMap<String, Vec<usize>>>,
    /// Each node's last successful listing, used while it is down.
    listings: Mutex<Vec<Option<Vec<TableDescription>>>>,
    /// Runs the tasks nodes pass through, made on the first one.
    runner: std::sync::OnceLock<std::result::Result<Arc<PassthroughRunner>, String>>,
    /// Passed-through tasks running here at once (one per core).
    passthrough_slots: Arc<Semaphore>,
    /// Per fold job and run: the nodes that folded its tasks, with their content hashes.
    folded: Mutex<HashMap<FoldRef, BTreeMap<usize, BTreeSet<String>>>>,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.nodes.iter().map(|n| n.url.as_str()).collect();
        write!(f, "RemoteStorage({})", urls.join(", "))
    }
}

/// Why a call to one node failed.
enum Failure {
    /// The task itself failed (bad data, a plugin error) or was refused: another replica
    /// would fail the same way.
    Task(String),
    /// The node failed, is unreachable or timed out: try another replica.
    Node(String),
    /// The node lacks something the task names (a plugin module it never received or
    /// forgot): send the task's modules again, then try once more.
    Missing(String),
}

fn classify(url: &str, e: FlightError) -> Failure {
    match e {
        FlightError::Tonic(status) => match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                Failure::Task(status.message().to_string())
            }
            tonic::Code::NotFound => Failure::Missing(status.message().to_string()),
            tonic::Code::Unauthenticated => Failure::Task(format!(
                "storage node {url} refused the call: {}",
                status.message()
            )),
            _ => Failure::Node(format!("{}: {}", status.code(), status.message())),
        },
        other => Failure::Node(other.to_string()),
    }
}

impl RemoteStorage {
    /// Connects (lazily) to the storage nodes at `urls` (`http://host:port`). Call it
    /// inside a tokio runtime: the connections live on it.
    ///
    /// # Errors
    /// [`Error::Remote`] for a malformed URL.
    pub fn connect(urls: &[String], options: RemoteOptions) -> Result<Self> {
        let mut nodes = Vec::new();
        for url in urls {
            let endpoint = crate::endpoint(url, options.tls.as_ref())
                .map_err(|e| Error::Remote(format!("storage node {e}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true);
            let channel = endpoint.connect_lazy();
            nodes.push(Node {
                url: url.clone(),
                channel,
                permits: Arc::new(Semaphore::new(options.tasks_per_node.max(1))),
                down_until: Mutex::new(None),
            });
        }
        Ok(Self {
            modules: None,
            sent: Mutex::default(),
            listings: Mutex::new(vec![None; nodes.len()]),
            nodes,
            options,
            replicas: Mutex::default(),
            runner: std::sync::OnceLock::new(),
            passthrough_slots: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            folded: Mutex::default(),
        })
    }

    /// The runner of passed-through tasks: the built-in pipeline and the registered
    /// plugins (from the module source) in this process's own sandbox, default limits.
    fn runner(&self) -> Result<Arc<PassthroughRunner>> {
        self.runner
            .get_or_init(|| {
                let source = self.modules.clone();
                PassthroughRunner::new(SandboxConfig::default(), move |p: &PluginRef| {
                    match &source {
                        Some(source) => source(p),
                        None => Err(Error::NotFound {
                            path: p.name.clone(),
                            message: "this intermediary has no plugin registry to run a passed-through task with".into(),
                        }),
                    }
                })
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Remote)
    }

    /// Runs a task node `url` passed through, on this process's bounded pool of sandbox
    /// calls: the same pipeline over the input the node read.
    async fn run_passed_through(
        &self,
        url: &str,
        task: &Task,
        raw: RawTask,
        metrics: TaskMetrics,
    ) -> Result<TaskOutput> {
        log::info!(
            "{}: storage node {url} passed the task through: {}",
            pushdown_storage_node::task_context(task),
            raw.reason
        );
        let runner = self.runner()?;
        let _slot = self
            .passthrough_slots
            .acquire()
            .await
            .map_err(|_| Error::Internal("the passthrough pool is closed".into()))?;
        let task = task.clone();
        tokio::task::spawn_blocking(move || runner.run(&task, &raw, metrics))
            .await
            .map_err(|e| Error::Internal(format!("a passed-through task panicked: {e}")))?
    }

    /// Sends registered plugins, taken from `source`, to the nodes that run them.
    pub fn with_modules(mut self, source: ModuleSource) -> Self {
        self.modules = Some(source);
        self
    }

    /// Sends node `i` the plugins `task` runs that it has not been sent yet.
    async fn send_modules(&self, i: usize, task: &Task) -> std::result::Result<(), Failure> {
        let Some(source) = &self.modules else {
            return Ok(());
        };
        // Without the nodes' admin token, nodes run only the modules they already hold.
        if self.options.admin_token.is_none() {
            return Ok(());
        }
        for plugin in task.plugins() {
            let key = (i, plugin.sha256.clone());
            if self.sent.lock().expect("not poisoned").contains(&key) {
                continue;
            }
            let bytes = source(&plugin).map_err(|e| Failure::Task(e.to_string()))?;
            let mut body = serde_json::to_vec(&plugin).expect("a reference serializes");
            body.push(b'\n');
            body.extend_from_slice(&bytes);
            let mut client = self.client(&self.nodes[i]);
            if let Some(admin) = &self.options.admin_token {
                let _ = client.add_header(crate::ADMIN_HEADER, &format!("Bearer {admin}"));
            }
            let call = async {
                let mut results = client.do_action(Action::new("put_module", body)).await?;
                while let Some(r) = results.next().await {
                    r?;
                }
                Ok::<_, FlightError>(())
            };
            match tokio::time::timeout(self.options.task_timeout, call).await {
                Err(_) => return Err(Failure::Node("no answer to put_module".into())),
                Ok(Err(e)) => return Err(classify(&self.nodes[i].url, e)),
                Ok(Ok(())) => {
                    self.sent.lock().expect("not poisoned").insert(key);
                }
            }
        }
        Ok(())
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    fn client(&self, node: &Node) -> FlightClient {
        let mut client = FlightClient::new(node.channel.clone());
        if let Some(t) = &self.options.token {
            let _ = client.add_header("authorization", &format!("Bearer {t}"));
        }
        client
    }

    /// Every node's tables: fresh, or the last known listing of a node that is down.
    async fn list(&self) -> Result<Vec<Vec<TableDescription>>> {
        let known: Vec<bool> = {
            let listings = self.listings.lock().expect("not poisoned");
            listings.iter().map(Option::is_some).collect()
        };
        let fetched = futures::future::join_all(self.nodes.iter().enumerate().map(|(i, node)| {
            let mut client = self.client(node);
            let timeout = self.options.task_timeout.min(LIST_TIMEOUT);
            // A node that failed lately is not asked again while its listing is known.
            let skip = known[i] && node.is_down();
            async move {
                if skip {
                    return Err("it failed lately".to_string());
                }
                let call = async {
                    let mut results = client.do_action(Action::new("tables", "")).await?;
                    let mut body = Vec::new();
                    while let Some(r) = results.next().await {
                        body.extend_from_slice(&r?);
                    }
                    Ok::<_, FlightError>(body)
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(body)) => serde_json::from_slice::<Vec<TableDescription>>(&body)
                        .map_err(|e| format!("malformed table listing: {e}")),
                    Ok(Err(e)) => {
                        node.mark(true);
                        Err(e.to_string())
                    }
                    Err(_) => {
                        node.mark(true);
                        Err(format!("no answer within {timeout:?}"))
                    }
                }
            }
        }))
        .await;
        let mut listings = self.listings.lock().expect("not poisoned");
        let mut out = Vec::new();
        for (i, result) in fetched.into_iter().enumerate() {
            match result {
                Ok(tables) => {
                    listings[i] = Some(tables.clone());
                    out.push(tables);
                }
                Err(e) => match &listings[i] {
                    Some(known) => {
                        log::warn!(
                            "storage node {} did not list its tables ({e}); using its last listing",
                            self.nodes[i].url
                        );
                        out.push(known.clone());
                    }
                    None => {
                        return Err(Error::Remote(format!(
                            "storage node {} cannot list its tables: {e}",
                            self.nodes[i].url
                        )))
                    }
                },
            }
        }
        Ok(out)
    }

    /// `task` on node `i`; when the node lacks one of the task's modules, the modules are
    /// sent again and the task tried once more.
    async fn fetch(&self, i: usize, task: &Task) -> std::result::Result<TaskOutput, Failure> {
        match self.fetch_once(i, task).await {
            Err(Failure::Missing(message)) => {
                let plugins = task.plugins();
                let can_send = self.modules.is_some() && self.options.admin_token.is_some();
                if plugins.is_empty() || !can_send {
                    return Err(Failure::Task(message));
                }
                // Other tasks may be doing the same: sending a module twice is harmless.
                {
                    let mut sent = self.sent.lock().expect("not poisoned");
                    for p in &plugins {
                        sent.remove(&(i, p.sha256.clone()));
                    }
                }
                self.fetch_once(i, task).await.map_err(|f| match f {
                    Failure::Missing(m) => Failure::Task(m),
                    other => other,
                })
            }
            other => other,
        }
    }

    /// One attempt of `task` on node `i`.
    async fn fetch_once(&self, i: usize, task: &Task) -> std::result::Result<TaskOutput, Failure> {
        self.send_modules(i, task).await?;
        let node = &self.nodes[i];
        let _permit = node
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Node("closed".into()))?;
        let mut client = self.client(node);
        let ticket = Ticket::new(serde_json::to_vec(task).expect("a task serializes"));
        let call = read_result(&mut client, ticket);
        let timeout = self.options.task_timeout;
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(Failure::Node(format!("no result within {timeout:?}"))),
            Ok(Err(e)) => Err(classify(&node.url, e)),
            Ok(Ok((_, None))) => Err(Failure::Node("the result stream had no metrics".into())),
            Ok(Ok((batches, Some(m)))) if m.passed_through => {
                match crate::node_server::raw_from_batches(&batches) {
                    Some(raw) => Ok(TaskOutput {
                        batches: Vec::new(),
                        metrics: m,
                        passthrough: Some(raw),
                        passthrough_reason: None,
                    }),
                    None => Err(Failure::Node(
                        "a passed-through task came without its input".into(),
                    )),
                }
            }
            Ok(Ok((batches, Some(m)))) => Ok(TaskOutput {
                batches,
                metrics: m,
                passthrough: None,
                passthrough_reason: None,
            }),
        }
    }
}

/// The record batches of a node's `DoGet` result (a task's, or a drained fold job's) and
/// the metrics its first message carries as `app_metadata`, when they parse.
async fn read_result(
    client: &mut FlightClient,
    ticket: Ticket,
) -> std::result::Result<(Vec<arrow_array::RecordBatch>, Option<TaskMetrics>), FlightError> {
    let mut decoder = client.do_get(ticket).await?.into_inner();
    let (mut batches, mut metrics) = (Vec::new(), None);
    while let Some(item) = decoder.next().await {
        let data = item?;
        if !data.inner.app_metadata.is_empty() {
            metrics = serde_json::from_slice::<TaskMetrics>(&data.inner.app_metadata).ok();
        }
        if let DecodedPayload::RecordBatch(b) = data.payload {
            batches.push(b);
        }
    }
    Ok((batches, metrics))
}

/// The first 12 characters of a hex digest a node sent (all of it when shorter).
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[async_trait::async_trait]
impl StorageClient for RemoteStorage {
    fn table_names(&self) -> Vec<String> {
        let listings = self.listings.lock().expect("not poisoned");
        let names: BTreeSet<String> = listings
            .iter()
            .flatten()
            .flatten()
            .map(|t| t.name.clone())
            .collect();
        names.into_iter().collect()
    }

    fn replica_urls(&self, file: &str) -> Vec<String> {
        self.replicas
            .lock()
            .expect("not poisoned")
            .get(file)
            .map(|holders| holders.iter().map(|&i| self.nodes[i].url.clone()).collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>> {
        let listings = self.list().await?;
        let mut found: Option<(TableDescription, usize)> = None;
        let mut files: BTreeMap<String, (crate::FileDescription, Vec<usize>)> = BTreeMap::new();
        for (i, tables) in listings.into_iter().enumerate() {
            let Some(t) = tables.into_iter().find(|t| t.name == name) else {
                continue;
            };
            if let Some((first, j)) = &found {
                if first.format != t.format || first.schema.fields() != t.schema.fields() {
                    return Err(Error::Remote(format!(
                        "table {name} has another format or schema on {} than on {}",
                        self.nodes[i].url, self.nodes[*j].url
                    )));
                }
            }
            for f in &t.files {
                match files.get_mut(&f.path) {
                    Some((known, holders)) => {
                        if known.len != f.len || known.sha256 != f.sha256 {
                            return Err(Error::Remote(format!(
                                "{}: the copies on {} and {} differ (size {} vs {}, sha256 {} vs {})",
                                f.path,
                                self.nodes[holders[0]].url,
                                self.nodes[i].url,
                                known.len,
                                f.len,
                                short(&known.sha256),
                                short(&f.sha256)
                            )));
                        }
                        holders.push(i);
                    }
                    None => {
                        files.insert(f.path.clone(), (f.clone(), vec![i]));
                    }
                }
            }
            if found.is_none() {
                found = Some((t, i));
            }
        }
        let Some((t, _)) = found else {
            return Ok(None);
        };
        let schema = Arc::new(t.schema.clone());
        let mut replicas = self.replicas.lock().expect("not poisoned");
        let infos = files
            .into_values()
            .map(|(f, holders)| {
                replicas.insert(f.path.clone(), holders);
                Arc::new(FileInfo {
                    abs_path: PathBuf::from(&f.path),
                    path: f.path,
                    len: f.len,
                    format: t.format.clone(),
                    units: f.units,
                    footer: None,
                    schema: schema.clone(),
                    csv: f.csv,
                })
            })
            .collect();
        Ok(Some(Arc::new(TableInfo {
            name: t.name,
            format: t.format,
            schema,
            files: infos,
        })))
    }

    fn run_task(self: Arc<Self>, task: Task) -> BoxFuture<'static, Result<TaskOutput>> {
        async move { self.run_on_replicas(&task).await }.boxed()
    }

    fn folds(&self) -> bool {
        self.options.fold_on_nodes
    }

    fn finish_fold(
        self: Arc<Self>,
        fold: FoldRef,
        schema: arrow_schema::Schema,
    ) -> BoxFuture<'static, Result<Vec<TaskOutput>>> {
        async move {
            let nodes = self
                .folded
                .lock()
                .expect("not poisoned")
                .remove(&fold)
                .unwrap_or_default();
            let finishes = nodes.into_iter().map(|(i, tasks)| {
                let ticket = crate::node_server::FinishFoldTicket {
                    finish_fold: crate::node_server::FinishFold {
                        job: fold.job.clone(),
                        lease: fold.lease,
                        tasks,
                        schema: schema.clone(),
                    },
                };
                let this = self.clone();
                let job = fold.job[..12].to_string();
                async move {
                    let node = &this.nodes[i];
                    let ticket = Ticket::new(serde_json::to_vec(&ticket).expect("serializes"));
                    let mut client = this.client(node);
                    let call = async {
                        let _permit = node.permits.acquire().await;
                        let (batches, metrics) = read_result(&mut client, ticket).await?;
                        Ok::<_, FlightError>(TaskOutput {
                            batches,
                            metrics: metrics.unwrap_or_default(),
                            passthrough: None,
                            passthrough_reason: None,
                        })
                    };
                    let timeout = this.options.task_timeout;
                    match tokio::time::timeout(timeout, call).await {
                        Ok(Ok(out)) => Ok(out),
                        Ok(Err(e)) => Err(Error::Remote(format!(
                            "storage node {} could not finish fold job {}: {}",
                            node.url,
                            job,
                            match classify(&node.url, e) {
                                Failure::Task(m) | Failure::Node(m) | Failure::Missing(m) => m,
                            }
                        ))),
                        Err(_) => Err(Error::Remote(format!(
                            "storage node {} did not finish fold job {} within {timeout:?}",
                            node.url, job
                        ))),
                    }
                }
            });
            futures::future::try_join_all(finishes).await
        }
        .boxed()
    }
}

impl RemoteStorage {
    /// Runs `task` on the replicas holding its file, one after another until one answers.
    async fn run_on_replicas(&self, task: &Task) -> Result<TaskOutput> {
        let holders = self
            .replicas
            .lock()
            .expect("not poisoned")
            .get(&task.file)
            .cloned()
            .ok_or_else(|| Error::Remote(format!("{}: no storage node holds it", task.file)))?;
        // Start at a replica chosen by the unit, so the tasks of a file spread over its copies.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", task.unit).hash(&mut h);
        let start = (h.finish() as usize) % holders.len();
        let mut order: Vec<usize> = (0..holders.len())
            .map(|k| holders[(start + k) % holders.len()])
            .collect();
        // Nodes that failed lately go last.
        order.sort_by_key(|&i| self.nodes[i].is_down());
        let mut failures = Vec::new();
        // Nodes that failed fast (refused the connection: a node restarting, or a channel
        // that kept a connection error from a call that was dropped) get one more try once
        // every replica has failed.
        let mut fast_failures = Vec::new();
        let mut retried = false;
        let mut queue: std::collections::VecDeque<usize> = order.into();
        while let Some(i) = queue.pop_front() {
            let attempt = Instant::now();
            match self.fetch(i, task).await {
                Ok(mut out) => {
                    self.nodes[i].mark(false);
                    if let (true, Some(fold)) = (out.metrics.folded, &task.fold) {
                        let mut folded = self.folded.lock().expect("not poisoned");
                        // Runs that failed before their finish leave entries behind.
                        if folded.len() >= MAX_FOLDS && !folded.contains_key(fold) {
                            folded.clear();
                        }
                        folded
                            .entry(fold.clone())
                            .or_default()
                            .entry(i)
                            .or_default()
                            .insert(task.content_hash());
                    }
                    if let Some(raw) = out.passthrough.take() {
                        return self
                            .run_passed_through(&self.nodes[i].url, task, raw, out.metrics)
                            .await;
                    }
                    return Ok(out);
                }
                Err(Failure::Task(message) | Failure::Missing(message)) => {
                    return Err(Error::Remote(message))
                }
                Err(Failure::Node(message)) => {
                    self.nodes[i].mark(true);
                    log::warn!(
                        "storage node {} failed a task of {}: {message}; trying another replica",
                        self.nodes[i].url,
                        task.file
                    );
                    failures.push(format!("{}: {message}", self.nodes[i].url));
                    if attempt.elapsed() < FAST_FAILURE {
                        fast_failures.push(i);
                    }
                }
            }
            if queue.is_empty() && !retried && !fast_failures.is_empty() {
                retried = true;
                tokio::time::sleep(RETRY_AFTER).await;
                queue.extend(fast_failures.drain(..));
            }
        }
        Err(Error::Remote(format!(
            "{}: no replica left to run {:?}: {}",
            task.file,
            task.unit,
            failures.join("; ")
        )))
    }
}
