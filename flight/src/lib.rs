//! The tiers of pushdown as servers on the network.
//!
//! ```text
//! ADBC / pushdown query --connect ──Flight SQL──▶ intermediary serve ──Flight DoGet(task)──▶ storage-node serve (×N)
//!                                                 (DataFusion, merge)   replicas, retries      (Wasm pushdown)
//! ```
//!
//! * To serve a storage node, use [`serve_node`] ([`NodeService`]).
//! * To plan over remote storage nodes, use [`RemoteStorage`] as the intermediary's
//!   [`pushdown_intermediary::StorageClient`].
//! * To serve SQL to Flight SQL clients (ADBC, JDBC, `pushdown query --connect`), use
//!   [`serve_sql`]; to query such a server, use [`query_remote`].
//! * Every server checks a bearer token when given one ([`require_token`]).
#![warn(missing_docs)]

mod auth;
mod node_server;
mod remote;
mod sql_server;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use pushdown_storage_node::StorageNode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use auth::require_token;
pub use node_server::{FileDescription, NodeService, RowGroupSummary, TableDescription};
pub use remote::{ModuleSource, RemoteOptions, RemoteStorage};
pub use sql_server::{query_remote, serve_sql, SqlService};

/// Errors of the servers and clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound or served.
    #[error("{0}")]
    Transport(String),
    /// A storage node or the intermediary failed.
    #[error("{0}")]
    Remote(String),
}

/// Binds `addr` (port 0 picks a free port).
///
/// # Errors
/// [`Error::Transport`] when the address cannot be bound.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Transport(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Transport(e.to_string()))?;
    Ok((listener, local))
}

/// Serves `node` over Arrow Flight on `listener` until the process ends.
///
/// # Errors
/// [`Error::Transport`] when serving fails.
pub async fn serve_node(
    node: Arc<StorageNode>,
    listener: TcpListener,
    token: Option<String>,
    max_tasks: usize,
) -> Result<(), Error> {
    serve(NodeService::new(node, max_tasks), listener, token).await
}

/// Serves a Flight service on `listener`, behind the bearer-token check, with no message
/// size limit (results are split into messages of about 2 MiB by the encoder).
async fn serve<S: FlightService>(
    service: S,
    listener: TcpListener,
    token: Option<String>,
) -> Result<(), Error> {
    let service = tonic::service::interceptor::InterceptedService::new(
        FlightServiceServer::new(service)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        require_token(token),
    );
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}
