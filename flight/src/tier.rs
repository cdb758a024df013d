//! The network side of an intermediary tier ([`pushdown_intermediary::tier`]): which peers
//! are up, and the connections to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::common::DataFusionError;
use datafusion_distributed::grpc::{create_worker_client, BoxCloneSyncChannel};
use datafusion_distributed::{ChannelResolver, WorkerChannel};
use url::Url;

use crate::{ClientTls, Error};

/// How often each peer is probed (a TCP connection to its address, then a call to its
/// worker service).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A peer's worker service that does not answer a call within this time counts as down (a
/// frozen process: its kernel still accepts connections).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A probe not answered within this time counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The tier as this intermediary sees it: itself, and its peers with whether each answered
/// its last probe. A peer found down is left out of the next queries' plans (their stages
/// go to the others) until it answers again.
#[derive(Debug)]
pub struct Peers {
    self_url: Url,
    peers: Vec<(Url, AtomicBool)>,
}

impl Peers {
    /// The tier of `self_url` and `peers` (`http://host:port` or `https://host:port`; this
    /// intermediary's own URL among them is ignored), all taken as up until probed.
    ///
    /// # Errors
    /// [`Error::Transport`] for a URL that does not parse or has no host and port.
    pub fn new(self_url: &str, peers: &[String]) -> Result<Arc<Self>, Error> {
        let parse = |u: &str| -> Result<Url, Error> {
            let url = Url::parse(u).map_err(|e| Error::Transport(format!("peer {u}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.port_or_known_default().is_none()
            {
                return Err(Error::Transport(format!(
                    "peer {u}: give http://host:port or https://host:port"
                )));
            }
            Ok(url)
        };
        let self_url = parse(self_url)?;
        let mut list: Vec<(Url, AtomicBool)> = Vec::new();
        for p in peers {
            let url = parse(p)?;
            if url != self_url && !list.iter().any(|(u, _)| *u == url) {
                list.push((url, AtomicBool::new(true)));
            }
        }
        Ok(Arc::new(Self {
            self_url,
            peers: list,
        }))
    }

    /// This intermediary's URL.
    pub fn self_url(&self) -> &Url {
        &self.self_url
    }

    /// The peers as listed (not this intermediary), up or down.
    pub fn peer_urls(&self) -> Vec<Url> {
        self.peers.iter().map(|(u, _)| u.clone()).collect()
    }

    /// This intermediary and the peers up at the last probe.
    pub fn workers(&self) -> Vec<Url> {
        std::iter::once(self.self_url.clone())
            .chain(
                self.peers
                    .iter()
                    .filter(|(_, up)| up.load(Ordering::Relaxed))
                    .map(|(u, _)| u.clone()),
            )
            .collect()
    }

    /// Probes every peer now, at once, three times 100 ms apart (a peer that is dying may
    /// still accept a connection for a moment), records the answers, and returns the
    /// peers that failed a probe: what a failed query's error names.
    pub async fn down_now(&self) -> Vec<Url> {
        let probes = self.peers.iter().map(|(url, up)| async move {
            let mut ok = true;
            for i in 0..3 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !probe(url, Duration::from_millis(500)).await {
                    ok = false;
                    break;
                }
            }
            up.store(ok, Ordering::Relaxed);
            (!ok).then(|| url.clone())
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Probes every peer each [`PROBE_EVERY`] on the current tokio runtime, for as long as
    /// the runtime runs; logs (warn) a peer going down and (info) coming back.
    ///
    /// A probe opens a TCP connection, then calls the peer's worker service
    /// (`GetWorkerInfo`) over `channels`: a peer that accepts connections but does not
    /// settle the call within [`CALL_TIMEOUT`] (a stopped or wedged process) is down too.
    /// Any answer, a refusal included (another token, a certificate this intermediary does
    /// not trust), counts as up: a misconfigured peer fails the queries sent to it, naming
    /// why, rather than leaving the tier quietly smaller.
    pub fn spawn_probes(self: &Arc<Self>, channels: Arc<PeerChannels>) {
        let peers = self.clone();
        tokio::spawn(async move {
            loop {
                let probes = peers.peers.iter().map(|(url, up)| {
                    let channels = channels.clone();
                    async move {
                        let ok = probe(url, PROBE_TIMEOUT).await
                            && answers(&channels, url, CALL_TIMEOUT).await;
                        let was = up.swap(ok, Ordering::Relaxed);
                        if was && !ok {
                            log::warn!("peer intermediary {url} is down: queries leave it out until it answers");
                        } else if !was && ok {
                            log::info!("peer intermediary {url} is back");
                        }
                    }
                });
                futures::future::join_all(probes).await;
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }
}

/// Whether a TCP connection to `url`'s host and port opens within `timeout`.
async fn probe(url: &Url, timeout: Duration) -> bool {
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await,
        Ok(Ok(_))
    )
}

/// Whether the worker service at `url`, whose port accepts connections, settles a
/// `GetWorkerInfo` call within `timeout`: with its version, or with a refusal (a token or
/// a certificate the two sides do not share; the queries sent there fail naming it).
async fn answers(channels: &PeerChannels, url: &Url, timeout: Duration) -> bool {
    let call = async {
        let mut client = channels.get_worker_client_for_url(url).await?;
        client
            .get_worker_info(datafusion_distributed::GetWorkerInfoRequest {})
            .await
    };
    tokio::time::timeout(timeout, call).await.is_ok()
}

/// Connections to peer intermediaries' workers: one lazily connected channel per URL, with
/// TLS toward `https://` peers and the tier's bearer token on every call; what
/// `datafusion-distributed` calls a channel resolver.
pub struct PeerChannels {
    tls: Option<ClientTls>,
    authorization: Option<http::HeaderValue>,
    channels: Mutex<HashMap<Url, BoxCloneSyncChannel>>,
}

impl PeerChannels {
    /// Channels with `tls` toward `https://` peers, sending `token` (the tier's bearer
    /// token) on calls that do not carry one already (a probe's `GetWorkerInfo`; stage
    /// calls carry it among their passthrough headers).
    ///
    /// # Errors
    /// [`Error::Transport`] when the token is not a valid header value.
    pub fn new(tls: Option<ClientTls>, token: Option<&str>) -> Result<Self, Error> {
        let authorization = token
            .map(|t| {
                http::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::Transport("the peer token is not a valid header value".into())
                })
            })
            .transpose()?;
        Ok(Self {
            tls,
            authorization,
            channels: Mutex::default(),
        })
    }
}

/// A channel that adds `authorization` to calls without one.
#[derive(Clone)]
struct WithToken {
    inner: tonic::transport::Channel,
    authorization: Option<http::HeaderValue>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for WithToken {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as tonic::codegen::Service<
        http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .entry(http::header::AUTHORIZATION)
                .or_insert_with(|| value.clone());
        }
        self.inner.call(request)
    }
}

#[async_trait::async_trait]
impl ChannelResolver for PeerChannels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let mut channels = self.channels.lock().expect("not poisoned");
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let tls = if url.scheme() == "https" {
                    Some(self.tls.clone().unwrap_or_default())
                } else {
                    None
                };
                let text = url.as_str().trim_end_matches('/');
                let endpoint = crate::endpoint(text, tls.as_ref())
                    .map_err(|e| {
                        DataFusionError::Execution(format!("peer intermediary {text}: {e}"))
                    })?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true);
                let channel = BoxCloneSyncChannel::new(WithToken {
                    inner: endpoint.connect_lazy(),
                    authorization: self.authorization.clone(),
                });
                channels.insert(url.clone(), channel.clone());
                channel
            }
        };
        Ok(create_worker_client(channel))
    }
}
