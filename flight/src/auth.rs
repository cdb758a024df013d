//! Bearer tokens on every Flight call (RFC 6750 `Authorization: Bearer <token>`).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// A tonic interceptor that lets a call through only when it carries
/// `authorization: Bearer <token>` (any call when `token` is `None`). A refused call is
/// logged (warn) with the peer's address and answered `UNAUTHENTICATED`.
pub fn require_token(
    token: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    // Compared by digest, so the time taken does not depend on where they first differ.
    let expected: Option<Arc<[u8]>> =
        token.map(|t| Sha256::digest(format!("Bearer {t}")).to_vec().into());
    move |request: Request<()>| {
        let Some(expected) = &expected else {
            return Ok(request);
        };
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
                log::warn!(
                    "refused a call from {}: {why}",
                    request
                        .remote_addr()
                        .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string())
                );
                Err(Status::unauthenticated(format!(
                    "refused: {why} (send `authorization: Bearer <token>`)"
                )))
            }
        }
    }
}
