//! The task interface between the intermediary and a storage node.

use std::fmt;
use std::sync::Arc;

use pushdown_protocol::Task;
use pushdown_storage_node::{Result, StorageNode, TableInfo, TaskOutput};

/// What the intermediary needs of a storage node. Embedded mode implements it in-process
/// for [`StorageNode`]; a remote node implements the same calls over the network.
pub trait StorageClient: Send + Sync + fmt::Debug {
    /// Names of the tables the node holds.
    ///
    /// # Errors
    /// When the node's data directory cannot be listed or holds a name twice.
    fn table_names(&self) -> Result<Vec<String>>;

    /// Table `name` with its schema, files and units, or `None` when there is none.
    ///
    /// # Errors
    /// When a file of the table is unreadable or malformed.
    fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>>;

    /// Runs one task.
    ///
    /// # Errors
    /// As [`StorageNode::run_task`].
    fn run_task(&self, task: &Task) -> Result<TaskOutput>;
}

/// A storage node in the same process.
pub struct LocalStorage(pub Arc<StorageNode>);

impl fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStorage({})", self.0.root().display())
    }
}

impl StorageClient for LocalStorage {
    fn table_names(&self) -> Result<Vec<String>> {
        Ok(self.0.list_tables()?.into_keys().collect())
    }

    fn table(&self, name: &str) -> Result<Option<Arc<TableInfo>>> {
        self.0.table(name)
    }

    fn run_task(&self, task: &Task) -> Result<TaskOutput> {
        self.0.run_task(task)
    }
}
