//! DataFusion catalog over a storage node: one [`PushdownTable`] per table it holds,
//! resolved when a query names it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use pushdown_storage_node::TableInfo;

use crate::client::StorageClient;
use crate::scan::{Progress, PushdownScanExec};

/// A table whose scans run as pushdown tasks on a storage node.
#[derive(Debug)]
pub struct PushdownTable {
    table: Arc<TableInfo>,
    node: Arc<dyn StorageClient>,
    progress: Option<Arc<dyn Progress>>,
}

#[async_trait]
impl TableProvider for PushdownTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(PushdownScanExec::new(
            self.table.clone(),
            self.node.clone(),
            projection,
            self.progress.clone(),
            state.config().target_partitions(),
            limit,
        )?))
    }
}

/// The schema of all tables of a storage node.
#[derive(Debug)]
pub struct PushdownSchema {
    node: Arc<dyn StorageClient>,
    progress: Option<Arc<dyn Progress>>,
}

impl PushdownSchema {
    /// A schema over `node`'s tables.
    pub fn new(node: Arc<dyn StorageClient>, progress: Option<Arc<dyn Progress>>) -> Self {
        Self { node, progress }
    }
}

#[async_trait]
impl SchemaProvider for PushdownSchema {
    fn table_names(&self) -> Vec<String> {
        self.node.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let table = self
            .node
            .table(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(table.map(|table| {
            Arc::new(PushdownTable {
                table,
                node: self.node.clone(),
                progress: self.progress.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.node.table_names().iter().any(|t| t == name)
    }
}
