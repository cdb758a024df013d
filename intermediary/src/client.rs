//! The task interface between the intermediary and a storage node.
//!
//! Every call is async and nothing waits on a thread: embedded mode runs each task's
//! sandbox call on a bounded pool of CPU threads ([`LocalStorage`]) and hands the result
//! back through a one-shot channel; a remote node is a plain async Flight call on the
//! caller's runtime. A pool thread never waits for a consumer, so a query whose operators
//! read their inputs one after another (a hash join reads its build side before its probe
//! side) cannot starve its own scans.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use futures::future::BoxFuture;
use futures::FutureExt;
use pushdown_protocol::{FoldRef, Task};
use pushdown_storage_node::{Error, Result, StorageNode, TableInfo, TaskOutput};

/// What the intermediary needs of a storage node. Embedded mode implements it in-process
/// for [`StorageNode`]; a remote node implements the same calls over the network.
#[async_trait]
pub trait StorageClient: Send + Sync + fmt::Debug {
    /// Names of the tables known to be on the node (for a remote node, as of its last
    /// listing). Does not wait on the network.
    fn table_names(&self) -> Vec<String>;

    /// Table `name` with its schema, files and units, or `None` when there is none.
    ///
    /// # Errors
    /// When a file of the table is unreadable or malformed, or the node cannot be reached.
    async fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>>;

    /// Starts one task and returns its whole result when it is done. The work starts when
    /// this is called; dropping the future before the task has started means it never
    /// runs (a `LIMIT` that is satisfied, a client that went away).
    ///
    /// # Errors
    /// As [`StorageNode::run_task`], plus transport errors for a remote node.
    fn run_task(self: Arc<Self>, task: Task) -> BoxFuture<'static, Result<TaskOutput>>;

    /// URLs of the storage nodes holding a copy of `file` (a path as listed by
    /// [`StorageClient::table`]), as of the last listing: where work on that file is near
    /// its data. Defaults to none (an embedded node has no network).
    fn replica_urls(&self, _file: &str) -> Vec<String> {
        Vec::new()
    }

    /// Whether scans fold their partial aggregates on the storage nodes (checkpointed
    /// aggregates, `pushdown_storage_node::fold`): each scan partition then names a fold
    /// job in its tasks and calls [`StorageClient::finish_fold`] after its last one.
    /// Defaults to false.
    fn folds(&self) -> bool {
        false
    }

    /// Drains fold job `fold` on every node that folded tasks of it: their merged partial
    /// aggregates, batches of `schema` (the tasks' output schema). Defaults to none.
    ///
    /// # Errors
    /// A node's error (its job was lost in a restart without a checkpoint, or holds other
    /// tasks than the ones it folded for this run), or a transport error.
    fn finish_fold(
        self: Arc<Self>,
        _fold: FoldRef,
        _schema: Schema,
    ) -> BoxFuture<'static, Result<Vec<TaskOutput>>> {
        async { Ok(Vec::new()) }.boxed()
    }
}

/// A storage node in the same process, its sandbox calls run on a pool of `threads` CPU
/// threads of its own.
pub struct LocalStorage {
    node: Arc<StorageNode>,
    pool: rayon::ThreadPool,
}

impl LocalStorage {
    /// Runs `node`'s tasks on a pool of `threads` threads (at least one).
    ///
    /// # Errors
    /// [`Error::Internal`] when the threads cannot be started.
    pub fn new(node: Arc<StorageNode>, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("pushdown-task-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the task pool: {e}")))?;
        Ok(Self { node, pool })
    }

    /// The node.
    pub fn node(&self) -> &Arc<StorageNode> {
        &self.node
    }
}

impl fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LocalStorage({}, {} threads)",
            self.node.root().display(),
            self.pool.current_num_threads()
        )
    }
}

#[async_trait]
impl StorageClient for LocalStorage {
    fn table_names(&self) -> Vec<String> {
        self.node
            .list_tables()
            .map(|t| t.into_keys().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>> {
        self.node.table(name)
    }

    fn run_task(self: Arc<Self>, task: Task) -> BoxFuture<'static, Result<TaskOutput>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = self.node.clone();
        self.pool.spawn(move || {
            // The query no longer wants this task: do not start it.
            if tx.is_closed() {
                return;
            }
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run_task(&task)))
                    .unwrap_or_else(|_| {
                        Err(Error::Internal(format!(
                            "{}: the task panicked",
                            pushdown_storage_node::task_context(&task)
                        )))
                    });
            let _ = tx.send(result);
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Internal("the task pool dropped a task".into())))
        }
        .boxed()
    }
}
