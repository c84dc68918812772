//! What the edge vouches for (DESIGN.md §4): the client's address on every request it
//! forwards, and on protected paths the verified identity, with a proof made by the
//! key of the receiver's purpose (`shared::proof`). Without a valid proof nothing of
//! it is believed.

use std::net::IpAddr;

use axum::http::request::Parts;
use shared::proof::{self, Identity, ProofKeys, RequestProof};
use uuid::Uuid;

/// What this origin needs to believe the edge: the keys derived from `EDGE_SECRET`
/// and the `host:port` the edge reaches it at, per role.
pub struct EdgeTrust {
    pub keys: ProofKeys,
    /// `ORIGIN_AUTHORITY`: for `/auth/*` and `/internal/validate`.
    pub origin_authority: String,
    /// `UPSTREAM_AUTHORITY`: for the example API, where this origin is the upstream.
    pub upstream_authority: String,
}

impl EdgeTrust {
    /// A request the edge forwarded to the origin (`/auth/*`): the client's address.
    pub fn origin(&self, parts: &Parts) -> Option<Vouched> {
        vouched(
            parts,
            &self.keys.origin,
            &self.origin_authority,
            shared::unix_now(),
        )
    }

    /// The edge's degraded-mode check (`/internal/validate`).
    pub fn validate(&self, parts: &Parts) -> Option<Vouched> {
        vouched(
            parts,
            &self.keys.validate,
            &self.origin_authority,
            shared::unix_now(),
        )
    }

    /// A request the edge forwarded to the API with a verified identity.
    pub fn upstream(&self, parts: &Parts) -> Option<Vouched> {
        vouched(
            parts,
            &self.keys.upstream,
            &self.upstream_authority,
            shared::unix_now(),
        )
    }
}

/// An identity forwarded by the edge.
#[derive(Debug)]
pub struct EdgeIdentity {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub scope: String,
}

/// What a request's valid proof vouches for.
#[derive(Debug)]
pub struct Vouched {
    pub client_ip: IpAddr,
    pub identity: Option<EdgeIdentity>,
}

/// Checks the edge's headers on a request against `key` and this receiver's
/// `authority` at `now`. `None` when they are absent, malformed, stale, or made for
/// another receiver, method, path, query, address, identity or purpose.
pub fn vouched(parts: &Parts, key: &proof::MacKey, authority: &str, now: u64) -> Option<Vouched> {
    let get = |name: &str| {
        let mut values = parts.headers.get_all(name).iter();
        let value = values.next()?.to_str().ok()?;
        // A second header of one name would leave it open which one was signed.
        values.next().is_none().then_some(value)
    };
    let identity = match get(proof::header::USER_ID) {
        Some(user_id) => Some(Identity {
            user_id,
            session_id: get(proof::header::SESSION_ID)?,
            scope: get(proof::header::SCOPE)?,
        }),
        None => None,
    };
    let client_ip = get(proof::header::CLIENT_IP)?;
    let request = RequestProof {
        authority,
        method: parts.method.as_str(),
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        client_ip,
        identity,
        time: get(proof::header::TIME)?.parse().ok()?,
    };
    request.verify(key, get(proof::header::PROOF)?, now).ok()?;
    let identity = match identity {
        Some(id) => Some(EdgeIdentity {
            user_id: id.user_id.parse().ok()?,
            session_id: id.session_id.parse().ok()?,
            scope: id.scope.into(),
        }),
        None => None,
    };
    Some(Vouched {
        client_ip: client_ip.parse().ok()?,
        identity,
    })
}
