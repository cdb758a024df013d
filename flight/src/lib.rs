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
mod tier;

use std::net::SocketAddr;
use std::path::PathBuf;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use auth::{read_token, require_token, MAX_REFUSALS, REFUSAL_WINDOW};
pub use node_server::{
    FileDescription, NodeService, RowGroupSummary, TableDescription, ADMIN_HEADER,
};
pub use remote::{ModuleSource, RemoteOptions, RemoteStorage};
pub use sql_server::{
    query_remote, query_remote_with_report, serve_sql, QueryLimits, SqlService, TierServe,
    MAX_REQUEST_BYTES, RUN_REPORT_HEADER,
};
pub use tier::{PeerChannels, Peers, PROBE_EVERY};

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

/// TLS of a server: its certificate chain and key (PEM files), and optionally the CA
/// whose certificates clients must present (mutual TLS).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate chain, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// How a server admits clients: a bearer token and TLS, each optional.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Bearer token every call must carry; `None`: no check.
    pub token: Option<String>,
    /// TLS; `None`: plain HTTP/2.
    pub tls: Option<ServerTls>,
}

/// TLS of a client: the CA that signs the servers' certificates (else the system's
/// roots), and optionally the client's own certificate and key for mutual TLS (PEM).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificate (PEM) the server's certificate must chain to; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// The client's certificate chain and key (PEM), for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Transport(format!("{what} {}: {e}", path.display())))
}

impl ClientTls {
    /// The tonic configuration.
    ///
    /// # Errors
    /// [`Error::Transport`] when a file cannot be read.
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig, Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => {
                config.ca_certificate(Certificate::from_pem(read_pem(ca, "CA certificate")?))
            }
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            ));
        }
        Ok(config)
    }
}

/// An endpoint for `url` (`http://` or `https://host:port`), with `tls` for `https://`.
///
/// # Errors
/// [`Error::Transport`] for a malformed URL, an `https://` URL without TLS settings, TLS
/// settings for an `http://` URL, or unreadable certificate files.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<tonic::transport::Endpoint, Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Transport(format!("{url}: {e}")))?;
    let https = url.starts_with("https://");
    match (https, tls) {
        (true, tls) => {
            let config = tls.cloned().unwrap_or_default().config()?;
            endpoint
                .tls_config(config)
                .map_err(|e| Error::Transport(format!("{url}: TLS: {e}")))
        }
        (false, Some(_)) => Err(Error::Transport(format!(
            "{url}: TLS options are given but the URL is not https://"
        ))),
        (false, None) => Ok(endpoint),
    }
}

/// Serves `service` (a storage node: [`NodeService`]) over Arrow Flight on `listener`
/// until the process ends.
///
/// # Errors
/// [`Error::Transport`] when the TLS files are unusable or serving fails.
pub async fn serve_node(
    service: NodeService,
    listener: TcpListener,
    security: Security,
) -> Result<(), Error> {
    serve(
        service,
        listener,
        security,
        node_server::MAX_REQUEST_BYTES,
        None,
    )
    .await
}

/// An intermediary tier's worker service as [`serve`] mounts it.
struct WorkerServe {
    worker: datafusion_distributed::Worker,
    /// The bearer token peers must send.
    token: Option<String>,
    /// Where peers' stages run (the CPU runtime), when not on the serving runtime.
    cpu: Option<tokio::runtime::Handle>,
}

/// A gRPC service whose calls run on `runtime` (when given) instead of the serving
/// runtime: the future of each call, and so whatever it spawns (`datafusion-distributed`
/// drives a stage's partitions in tasks spawned by the call), run there, while the
/// serving runtime only moves bytes. A call whose task could not finish is answered
/// `INTERNAL` (it panicked) or `UNAVAILABLE` (the runtime is shutting down).
#[derive(Clone)]
struct OnRuntime<S> {
    inner: S,
    runtime: Option<tokio::runtime::Handle>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for OnRuntime<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for OnRuntime<S>
where
    S: tonic::codegen::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.inner.call(request);
        match &self.runtime {
            None => Box::pin(call),
            Some(runtime) => {
                let task = runtime.spawn(call);
                Box::pin(async move {
                    match task.await {
                        Ok(answer) => answer,
                        Err(e) if e.is_panic() => {
                            log::error!("a peer's call panicked: {e}");
                            Ok(
                                tonic::Status::internal("the call failed in this intermediary")
                                    .into_http(),
                            )
                        }
                        Err(_) => Ok(tonic::Status::unavailable(
                            "this intermediary is shutting down",
                        )
                        .into_http()),
                    }
                })
            }
        }
    }
}

/// Largest request message a peer may send the worker service of an intermediary in a
/// tier (a stage's plan): 64 MiB.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// Serves a Flight service on `listener`, behind the bearer-token check and TLS when
/// given. Request messages over `max_request_bytes` are refused from their length
/// prefix, before they are read; results are not limited (the encoder splits them into
/// messages of about 2 MiB).
///
/// `worker`, when given, is an intermediary tier's worker service, served on the same
/// port behind its own bearer token (the peers').
async fn serve<S: FlightService>(
    service: S,
    listener: TcpListener,
    security: Security,
    max_request_bytes: usize,
    worker: Option<WorkerServe>,
) -> Result<(), Error> {
    let service = tonic::service::interceptor::InterceptedService::new(
        FlightServiceServer::new(service)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(usize::MAX),
        require_token(security.token),
    );
    let worker = worker.map(|w| {
        tonic::service::interceptor::InterceptedService::new(
            OnRuntime {
                inner: w
                    .worker
                    .into_worker_server()
                    .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES),
                runtime: w.cpu,
            },
            require_token(w.token),
        )
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read_pem(&tls.cert, "TLS certificate")?,
                read_pem(&tls.key, "TLS key")?,
            ))
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem(ca, "client CA")?));
        }
        builder = builder
            .tls_config(config)
            .map_err(|e| Error::Transport(format!("TLS: {e}")))?;
    }
    // Small messages (task requests, partial aggregates of a few rows) leave at once:
    // with Nagle's algorithm on, each waited for the peer's delayed ACK (up to 40 ms).
    let incoming = futures::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    builder
        .add_service(service)
        .add_optional_service(worker)
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}
