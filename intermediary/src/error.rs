//! The intermediary's error type.

use datafusion::common::DataFusionError;

/// Errors of the intermediary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage node failed: bad data, a plugin error, a missing path.
    #[error("{0}")]
    Storage(pushdown_storage_node::Error),
    /// Planning or running the query failed: SQL syntax, unknown table or column,
    /// unsupported SQL, or an error of the final merge.
    #[error("{}", describe(.0))]
    Query(DataFusionError),
    /// A plugin function is unknown or its registration is unusable.
    #[error("{0}")]
    Plugins(String),
    /// A request from an untrusted client was refused: over a limit, or not a read-only
    /// query.
    #[error("{0}")]
    Refused(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        Error::Query(e)
    }
}

/// A one-line message: DataFusion's wrapping of a storage-node error is peeled off.
fn describe(e: &DataFusionError) -> String {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m) => format!("memory budget exceeded: {m}"),
        DataFusionError::External(inner) => inner.to_string(),
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            datafusion::arrow::error::ArrowError::ExternalError(inner) => inner.to_string(),
            other => format!("Arrow error: {other}"),
        },
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// `Result` with the intermediary's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
