//! Proof that a request came through the edge (DESIGN.md §4).
//!
//! The edge forwards the verified identity in headers and adds an HMAC-SHA256, keyed
//! with a secret it shares with the upstream, over the identity, the request's method
//! and path, and the time. The upstream recomputes it and accepts the identity only
//! when it matches and is recent, so a client that reaches the upstream directly, or
//! replays headers onto another path, gains nothing.
//!
//! ```
//! use shared::proof::{Identity, sign, verify};
//!
//! let id = Identity { user_id: "u1", session_id: "s1", scope: "read", client_ip: "203.0.113.9" };
//! let proof = sign(b"0123456789abcdef0123456789abcdef", &id, "GET", "/api/me", 1_000);
//! assert!(verify(b"0123456789abcdef0123456789abcdef", &id, "GET", "/api/me", 1_000, &proof, 1_010).is_ok());
//! assert!(verify(b"0123456789abcdef0123456789abcdef", &id, "GET", "/api/admin", 1_000, &proof, 1_010).is_err());
//! ```

use alloc::string::String;

use crate::b64;

/// Most seconds between signing and checking a proof, either way (clock skew included).
pub const MAX_AGE: u64 = 60;

/// Header names the edge sets (after removing any a client sent) and the upstream reads.
pub mod header {
    pub const USER_ID: &str = "x-auth-user-id";
    pub const SESSION_ID: &str = "x-auth-session-id";
    pub const SCOPE: &str = "x-auth-scope";
    pub const CLIENT_IP: &str = "x-auth-client-ip";
    pub const TIME: &str = "x-auth-time";
    pub const PROOF: &str = "x-auth-proof";
    /// Every identity header: the edge strips all of these from client requests.
    pub const ALL: [&str; 6] = [USER_ID, SESSION_ID, SCOPE, CLIENT_IP, TIME, PROOF];
}

/// The identity the edge vouches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub scope: &'a str,
    pub client_ip: &'a str,
}

/// Why a proof was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// The proof does not match the identity, method, path and time.
    Mismatch,
    /// The time is more than [`MAX_AGE`] seconds from now.
    Stale,
}

fn mac(secret: &[u8], id: &Identity<'_>, method: &str, path: &str, time: u64) -> [u8; 32] {
    // Newline-separated: no field may contain a newline (ids and scopes cannot; the
    // method and path of an HTTP request cannot), so the encoding is unambiguous.
    let mut mac = hmac_sha256::HMAC::new(secret);
    for field in [
        "edge-auth identity v1",
        id.user_id,
        id.session_id,
        id.scope,
        id.client_ip,
        method,
        path,
    ] {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac.update(alloc::format!("{time}").as_bytes());
    mac.finalize()
}

/// The proof header value for `id` on a request with `method` and `path` at `time`.
pub fn sign(secret: &[u8], id: &Identity<'_>, method: &str, path: &str, time: u64) -> String {
    b64::encode(&mac(secret, id, method, path, time))
}

/// Checks a proof in constant time, and that `time` is within [`MAX_AGE`] of `now`.
pub fn verify(
    secret: &[u8],
    id: &Identity<'_>,
    method: &str,
    path: &str,
    time: u64,
    proof: &str,
    now: u64,
) -> Result<(), ProofError> {
    let expected = mac(secret, id, method, path, time);
    let Ok(given) = b64::decode_array::<32>(proof.as_bytes()) else {
        return Err(ProofError::Mismatch);
    };
    if !constant_time_eq(&expected, &given) {
        return Err(ProofError::Mismatch);
    }
    if time.abs_diff(now) > MAX_AGE {
        return Err(ProofError::Stale);
    }
    Ok(())
}

/// Header names of a signed message (the origin's pushes to the edge's KV sync).
pub mod message_header {
    pub const TIME: &str = "x-edge-sync-time";
    pub const PROOF: &str = "x-edge-sync-proof";
}

fn message_mac(secret: &[u8], context: &str, time: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = hmac_sha256::HMAC::new(secret);
    mac.update(b"edge-auth message v1\n");
    mac.update(context.as_bytes());
    mac.update(alloc::format!("\n{time}\n").as_bytes());
    mac.update(body);
    mac.finalize()
}

/// Proof over a whole request body for `context` (what the message is for) at `time`.
pub fn sign_message(secret: &[u8], context: &str, time: u64, body: &[u8]) -> String {
    b64::encode(&message_mac(secret, context, time, body))
}

/// Checks [`sign_message`]'s proof in constant time, and that `time` is recent.
pub fn verify_message(
    secret: &[u8],
    context: &str,
    time: u64,
    body: &[u8],
    proof: &str,
    now: u64,
) -> Result<(), ProofError> {
    let Ok(given) = b64::decode_array::<32>(proof.as_bytes()) else {
        return Err(ProofError::Mismatch);
    };
    if !constant_time_eq(&message_mac(secret, context, time, body), &given) {
        return Err(ProofError::Mismatch);
    }
    if time.abs_diff(now) > MAX_AGE {
        return Err(ProofError::Stale);
    }
    Ok(())
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";
    const ID: Identity<'static> = Identity {
        user_id: "u1",
        session_id: "s1",
        scope: "read",
        client_ip: "198.51.100.7",
    };

    #[test]
    fn a_fresh_proof_for_the_same_request_verifies() {
        let proof = sign(SECRET, &ID, "GET", "/api/me", 100);
        assert_eq!(
            verify(SECRET, &ID, "GET", "/api/me", 100, &proof, 100 + MAX_AGE),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, &ID, "GET", "/api/me", 100, &proof, 100 - MAX_AGE),
            Ok(())
        );
    }

    #[test]
    fn any_changed_field_or_secret_breaks_the_proof() {
        let proof = sign(SECRET, &ID, "GET", "/api/me", 100);
        let check = |id: &Identity<'_>, method, path, time, secret: &[u8]| {
            verify(secret, id, method, path, time, &proof, 100)
        };
        assert_eq!(
            check(
                &Identity {
                    user_id: "u2",
                    ..ID
                },
                "GET",
                "/api/me",
                100,
                SECRET
            ),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(
                &Identity {
                    session_id: "s2",
                    ..ID
                },
                "GET",
                "/api/me",
                100,
                SECRET
            ),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(
                &Identity {
                    scope: "read admin",
                    ..ID
                },
                "GET",
                "/api/me",
                100,
                SECRET
            ),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(
                &Identity {
                    client_ip: "10.0.0.1",
                    ..ID
                },
                "GET",
                "/api/me",
                100,
                SECRET
            ),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(&ID, "POST", "/api/me", 100, SECRET),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(&ID, "GET", "/api/other", 100, SECRET),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(&ID, "GET", "/api/me", 101, SECRET),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check(&ID, "GET", "/api/me", 100, b"another secret"),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &ID, "GET", "/api/me", 100, "not-base64!", 100),
            Err(ProofError::Mismatch)
        );
    }

    #[test]
    fn a_message_proof_covers_context_time_and_every_body_byte() {
        let proof = sign_message(SECRET, "kv-sync", 100, b"{\"ops\":[]}");
        assert_eq!(
            verify_message(SECRET, "kv-sync", 100, b"{\"ops\":[]}", &proof, 110),
            Ok(())
        );
        assert_eq!(
            verify_message(SECRET, "kv-sync", 100, b"{\"ops\":[1]}", &proof, 110),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify_message(SECRET, "other", 100, b"{\"ops\":[]}", &proof, 110),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify_message(SECRET, "kv-sync", 101, b"{\"ops\":[]}", &proof, 110),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify_message(
                SECRET,
                "kv-sync",
                100,
                b"{\"ops\":[]}",
                &proof,
                100 + MAX_AGE + 1
            ),
            Err(ProofError::Stale)
        );
    }

    #[test]
    fn an_old_or_future_proof_is_stale() {
        let proof = sign(SECRET, &ID, "GET", "/api/me", 100);
        assert_eq!(
            verify(
                SECRET,
                &ID,
                "GET",
                "/api/me",
                100,
                &proof,
                100 + MAX_AGE + 1
            ),
            Err(ProofError::Stale)
        );
        let early = sign(SECRET, &ID, "GET", "/api/me", 200);
        assert_eq!(
            verify(
                SECRET,
                &ID,
                "GET",
                "/api/me",
                200,
                &early,
                200 - MAX_AGE - 1
            ),
            Err(ProofError::Stale)
        );
    }
}
