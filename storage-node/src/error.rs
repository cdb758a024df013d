//! The storage node's error type.

/// Errors of the storage node, grouped by whose fault they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- the request --
    /// The data directory, a table or a file does not exist or cannot be listed.
    #[error("{path}: {message}")]
    NotFound {
        /// The path asked for.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Two files claim the same table name.
    #[error("table {table} is defined twice: {first} and {second}")]
    DuplicateTable {
        /// The table name.
        table: String,
        /// One source.
        first: String,
        /// The other source.
        second: String,
    },

    // -- the data --
    /// A file is not valid Parquet or CSV.
    #[error("{file}: {message}")]
    BadData {
        /// The file.
        file: String,
        /// What is wrong and where.
        message: String,
    },

    // -- the plugin --
    /// The plugin reported an error, trapped or broke the ABI.
    #[error("plugin {plugin}: {message}")]
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// What happened, with the plugin's captured stderr where it said something.
        message: String,
    },

    // -- resources --
    /// Reading a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },

    /// An error with the task it happened in: file and row group or byte range.
    #[error("{context}: {inner}")]
    Context {
        /// Where: `lineitem.parquet: row group 3`.
        context: String,
        /// The error (its message is part of this one's, so it is not a `source`).
        inner: Box<Error>,
    },

    // -- internal --
    /// A bug: a state the code should never reach.
    #[error("internal error: {0}")]
    Internal(String),
    /// A remote storage node refused or failed a call, or no replica was left to run it.
    #[error("{0}")]
    Remote(String),
}

impl Error {
    /// The error under any [`Error::Context`] layers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            other => other,
        }
    }

    /// Wraps the error with the place it happened.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            inner: Box::new(self),
        }
    }
}

/// `Result` with the storage node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
