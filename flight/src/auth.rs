//! Bearer tokens on every Flight call (RFC 6750 `Authorization: Bearer <token>`), with
//! refused calls rate-limited per peer address and their log lines aggregated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Refused calls a peer address may make within [`REFUSAL_WINDOW`]; past it, every call
/// from that address is refused until the window ends, even with the right token.
pub const MAX_REFUSALS: u32 = 10;

/// The window refused calls are counted in, per peer address.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// At most one log line about refused calls per this interval; it counts the others.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Peers tracked at most; older entries are forgotten first.
const MAX_PEERS: usize = 10_000;

#[derive(Default)]
struct Refusals {
    /// Per peer address: when its window started and the calls refused in it.
    peers: HashMap<Option<IpAddr>, (Instant, u32)>,
    /// Refusals not yet logged, and when the last line was written.
    unlogged: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    /// Whether `peer` is over its refusal budget now.
    fn blocked(&mut self, peer: Option<IpAddr>) -> Option<Duration> {
        let (start, n) = *self.peers.get(&peer)?;
        let elapsed = start.elapsed();
        if elapsed >= REFUSAL_WINDOW {
            self.peers.remove(&peer);
            return None;
        }
        (n >= MAX_REFUSALS).then(|| REFUSAL_WINDOW - elapsed)
    }

    /// Counts a refusal of `peer` and logs (warn) at most one line per [`LOG_EVERY`].
    fn refuse(&mut self, peer: Option<IpAddr>, why: &str) {
        if self.peers.len() >= MAX_PEERS {
            self.peers
                .retain(|_, (start, _)| start.elapsed() < REFUSAL_WINDOW);
            if self.peers.len() >= MAX_PEERS {
                self.peers.clear();
            }
        }
        let entry = self.peers.entry(peer).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= REFUSAL_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        self.unlogged += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let peer = peer.map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
            if self.unlogged == 1 {
                log::warn!("refused a call from {peer}: {why}");
            } else {
                log::warn!(
                    "refused {} calls since the last report; the latest from {peer}: {why}",
                    self.unlogged
                );
            }
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

/// A tonic interceptor that lets a call through only when it carries
/// `authorization: Bearer <token>` (any call when `token` is `None`). A refused call is
/// answered `UNAUTHENTICATED`; a peer address with [`MAX_REFUSALS`] refused calls within
/// [`REFUSAL_WINDOW`] is answered `RESOURCE_EXHAUSTED` for the rest of the window, right
/// token or not. Refusals are logged (warn) at most once per 10 s, with a count.
pub fn require_token(
    token: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    // Compared by digest, so the time taken does not depend on where they first differ.
    let expected: Option<Arc<[u8]>> = token.map(|t| bearer_digest(&t).into());
    let refusals: Arc<Mutex<Refusals>> = Arc::default();
    move |request: Request<()>| {
        let Some(expected) = &expected else {
            return Ok(request);
        };
        let peer = request.remote_addr().map(|a| a.ip());
        let mut refusals = refusals.lock().expect("not poisoned");
        if let Some(wait) = refusals.blocked(peer) {
            refusals.refuse(peer, "too many refused calls");
            return Err(Status::resource_exhausted(format!(
                "refused: too many calls with a missing or wrong token from this address; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| Sha256::digest(v).to_vec());
        match given {
            Some(d) if d.as_slice() == expected.as_ref() => Ok(request),
            other => {
                let why = if other.is_none() {
                    "no bearer token"
                } else {
                    "a wrong bearer token"
                };
                refusals.refuse(peer, why);
                Err(Status::unauthenticated(format!(
                    "refused: {why} (send `authorization: Bearer <token>`)"
                )))
            }
        }
    }
}

/// SHA-256 of `Bearer <token>`, what the checks compare.
pub(crate) fn bearer_digest(token: &str) -> Vec<u8> {
    Sha256::digest(format!("Bearer {token}")).to_vec()
}

/// Reads a token: `--token-file FILE` (its first line, surrounding whitespace trimmed),
/// else the flag's value, else the environment variable `env`.
///
/// # Errors
/// A message when the file cannot be read or the token is empty: an empty token would
/// silently turn checking off, so it is refused.
pub fn read_token(
    flag: Option<&str>,
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<Option<String>, String> {
    let (token, source) = if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
        (
            Some(text.lines().next().unwrap_or_default().trim().to_string()),
            format!("--token-file {}", file.display()),
        )
    } else if let Some(t) = flag {
        (Some(t.to_string()), "the token given".to_string())
    } else {
        match std::env::var(env) {
            Ok(t) => (Some(t), format!("${env}")),
            Err(_) => (None, String::new()),
        }
    };
    match token {
        Some(t) if t.trim().is_empty() => Err(format!(
            "{source} is empty; give a non-empty token, or none to run without one"
        )),
        other => Ok(other),
    }
}
