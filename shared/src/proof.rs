//! Proof that a request came through the edge (DESIGN.md §4), and the keys for it.
//!
//! The edge and the origin share one secret (`EDGE_SECRET`). Neither uses it directly:
//! [`ProofKeys::derive`] turns it into one key per purpose (HKDF-SHA256, RFC 5869), so
//! a party that can check one kind of proof cannot forge another. An upstream API that
//! verifies identity proofs holds only the upstream key; it cannot sign the origin's KV
//! pushes nor ask the origin's `/internal/validate`.
//!
//! Every request the edge forwards carries the client's address, the time and an
//! HMAC-SHA256 over them, the receiver's `host:port`, the method, the path with its raw
//! query and, on a protected path, the verified identity ([`RequestProof`]). The
//! receiver recomputes it with its own `host:port` (a setting, never the `Host` header)
//! and accepts what it vouches for only when it matches and is recent, so a client that
//! reaches the origin directly, replays the headers onto another path, query or
//! service sharing the key, or sends its own `x-auth-*` headers, gains nothing.
//!
//! ```
//! use shared::proof::{Identity, ProofKeys, RequestProof};
//!
//! let keys = ProofKeys::derive(b"0123456789abcdef0123456789abcdef");
//! let id = Identity { user_id: "u1", session_id: "s1", scope: "read" };
//! let request = RequestProof { authority: "api.internal:443", method: "GET", path_and_query: "/api/me?x=1", client_ip: "203.0.113.9", identity: Some(id), time: 1_000 };
//! let proof = request.sign(&keys.upstream);
//! assert!(request.verify(&keys.upstream, &proof, 1_010).is_ok());
//! assert!(RequestProof { path_and_query: "/api/me?x=2", ..request }.verify(&keys.upstream, &proof, 1_010).is_err());
//! assert!(RequestProof { authority: "billing.internal:443", ..request }.verify(&keys.upstream, &proof, 1_010).is_err());
//! assert!(request.verify(&keys.origin, &proof, 1_010).is_err()); // another purpose's key
//! ```

use alloc::string::String;

use crate::b64;

/// Most seconds between signing and checking a proof, either way (clock skew included).
pub const MAX_AGE: u64 = 60;

/// Header names the edge sets (after removing every `x-auth-*` a client sent) and the
/// receiver reads.
pub mod header {
    /// Every header of this family starts with it: the edge strips them all from
    /// client requests, whatever follows the prefix.
    pub const PREFIX: &str = "x-auth-";
    pub const USER_ID: &str = "x-auth-user-id";
    pub const SESSION_ID: &str = "x-auth-session-id";
    pub const SCOPE: &str = "x-auth-scope";
    pub const CLIENT_IP: &str = "x-auth-client-ip";
    pub const TIME: &str = "x-auth-time";
    pub const PROOF: &str = "x-auth-proof";
}

/// An HMAC-SHA256 key (RFC 2104 §2) with its two padded blocks already hashed: each
/// MAC then costs its message's blocks and one outer block, not two more for the
/// pads. Every forwarded request is signed, so that is two of its five compressions.
/// Its `Debug` prints no key material.
#[derive(Clone, Copy)]
pub struct MacKey {
    /// SHA-256 after `key ⊕ ipad`.
    inner: hmac_sha256::Hash,
    /// SHA-256 after `key ⊕ opad`.
    outer: hmac_sha256::Hash,
}

impl MacKey {
    pub fn new(key: &[u8; 32]) -> Self {
        let padded = |pad: u8| {
            let mut block = [pad; 64];
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut hash = hmac_sha256::Hash::new();
            hash.update(block);
            hash
        };
        MacKey {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }

    /// The MAC of what `message` writes into the hash.
    fn mac(&self, message: impl FnOnce(&mut hmac_sha256::Hash)) -> [u8; 32] {
        let mut inner = self.inner;
        message(&mut inner);
        let mut outer = self.outer;
        outer.update(inner.finalize());
        outer.finalize()
    }
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// One key per purpose, derived from the shared secret. Its `Debug` prints no key
/// material.
#[derive(Clone)]
pub struct ProofKeys {
    /// Requests forwarded to the upstream API (identity and client address).
    pub upstream: MacKey,
    /// Requests forwarded to the origin (`/auth/*`, the JWKS): the client address.
    pub origin: MacKey,
    /// The edge's calls to the origin's `/internal/validate`.
    pub validate: MacKey,
    /// The origin's pushes of session records to the edge's KV sync.
    pub kv_sync: MacKey,
}

impl core::fmt::Debug for ProofKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ProofKeys(..)")
    }
}

impl ProofKeys {
    /// HKDF-SHA256 (RFC 5869) of `secret`, one expansion per purpose.
    pub fn derive(secret: &[u8]) -> Self {
        let prk = hmac_sha256::HKDF::extract(b"edge-auth proof keys v1", secret);
        let expand = |info: &[u8]| {
            let mut key = [0u8; 32];
            hmac_sha256::HKDF::expand(&mut key, prk, info);
            MacKey::new(&key)
        };
        ProofKeys {
            upstream: expand(b"upstream request"),
            origin: expand(b"origin request"),
            validate: expand(b"internal validate"),
            kv_sync: expand(b"kv sync"),
        }
    }
}

/// The identity the edge vouches for on a protected path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub scope: &'a str,
}

/// What a request proof covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestProof<'a> {
    /// Where the edge sent it, in [`authority`]'s form (`host:port`): the receiver
    /// puts its own configured value here, so a proof made for one service sharing
    /// the key is refused by another.
    pub authority: &'a str,
    pub method: &'a str,
    /// The path and the raw query string as sent (`/a?b=c`; no `?` without a query).
    pub path_and_query: &'a str,
    /// The client's address as the edge saw it.
    pub client_ip: &'a str,
    /// The verified identity, on protected paths only.
    pub identity: Option<Identity<'a>>,
    /// Unix seconds when the edge signed it.
    pub time: u64,
}

/// Why a proof was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// The proof does not match what it claims to cover, or another key made it.
    Mismatch,
    /// The time is more than [`MAX_AGE`] seconds from now.
    Stale,
}

impl RequestProof<'_> {
    fn mac(&self, key: &MacKey) -> [u8; 32] {
        // Newline-separated, every field present: no field may contain a newline (ids,
        // scopes and addresses cannot; an authority, method, path or query cannot), so the
        // encoding is unambiguous. An absent identity is three empty fields, which no
        // real identity has (ids are never empty).
        let id = self.identity.unwrap_or(Identity {
            user_id: "",
            session_id: "",
            scope: "",
        });
        key.mac(|hash| {
            for field in [
                "edge-auth request v3",
                self.authority,
                self.method,
                self.path_and_query,
                self.client_ip,
                id.user_id,
                id.session_id,
                id.scope,
            ] {
                hash.update(field.as_bytes());
                hash.update(b"\n");
            }
            hash.update(decimal(&mut [0; 20], self.time));
        })
    }

    /// The proof header value.
    pub fn sign(&self, key: &MacKey) -> String {
        b64::encode(&self.mac(key))
    }

    /// Checks a proof in constant time, and that the time is within [`MAX_AGE`] of `now`.
    pub fn verify(&self, key: &MacKey, proof: &str, now: u64) -> Result<(), ProofError> {
        let Ok(given) = b64::decode_array::<32>(proof.as_bytes()) else {
            return Err(ProofError::Mismatch);
        };
        if !constant_time_eq(&self.mac(key), &given) {
            return Err(ProofError::Mismatch);
        }
        if self.time.abs_diff(now) > MAX_AGE {
            return Err(ProofError::Stale);
        }
        Ok(())
    }
}

/// The `host:port` of an `http` or `https` URL, as a proof covers it: the host in
/// lower case (hosts are case-insensitive, RFC 3986 §3.2.2), the port always written
/// (80 and 443 when the URL leaves it out). `None` for any other scheme, userinfo, an
/// empty host or a bad port.
///
/// ```
/// use shared::proof::authority;
/// assert_eq!(authority("https://API.example/v1").as_deref(), Some("api.example:443"));
/// assert_eq!(authority("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1:8080"));
/// assert_eq!(authority("http://[::1]/x").as_deref(), Some("[::1]:80"));
/// assert_eq!(authority("ftp://h/"), None);
/// ```
pub fn authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_port = &rest[..end];
    if host_port.contains('@') {
        return None;
    }
    // An IPv6 literal holds colons: the port separator comes after its `]`.
    let host_end = match host_port.strip_prefix('[') {
        Some(v6) => v6.find(']')? + 2,
        None => host_port.find(':').unwrap_or(host_port.len()),
    };
    let (host, port) = host_port.split_at(host_end);
    let port = match port {
        "" => default_port,
        p => p.strip_prefix(':')?,
    };
    if host.is_empty() || port.parse::<u16>().ok().is_none_or(|p| p == 0) {
        return None;
    }
    Some(alloc::format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Header names of a signed message (the origin's pushes to the edge's KV sync).
pub mod message_header {
    pub const TIME: &str = "x-edge-sync-time";
    pub const PROOF: &str = "x-edge-sync-proof";
}

/// `n` in decimal, written into the end of `buffer` (20 digits hold any `u64`).
fn decimal(buffer: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[start..];
        }
    }
}

fn message_mac(key: &MacKey, context: &str, time: u64, body: &[u8]) -> [u8; 32] {
    key.mac(|hash| {
        hash.update(b"edge-auth message v1\n");
        hash.update(context.as_bytes());
        hash.update(b"\n");
        hash.update(decimal(&mut [0; 20], time));
        hash.update(b"\n");
        hash.update(body);
    })
}

/// Proof over a whole request body for `context` (what the message is for) at `time`.
pub fn sign_message(key: &MacKey, context: &str, time: u64, body: &[u8]) -> String {
    b64::encode(&message_mac(key, context, time, body))
}

/// Checks [`sign_message`]'s proof in constant time, and that `time` is recent.
pub fn verify_message(
    key: &MacKey,
    context: &str,
    time: u64,
    body: &[u8],
    proof: &str,
    now: u64,
) -> Result<(), ProofError> {
    let Ok(given) = b64::decode_array::<32>(proof.as_bytes()) else {
        return Err(ProofError::Mismatch);
    };
    if !constant_time_eq(&message_mac(key, context, time, body), &given) {
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
    };
    const REQUEST: RequestProof<'static> = RequestProof {
        authority: "api.internal:8443",
        method: "GET",
        path_and_query: "/api/me?page=2",
        client_ip: "198.51.100.7",
        identity: Some(ID),
        time: 100,
    };

    fn keys() -> ProofKeys {
        ProofKeys::derive(SECRET)
    }

    /// What a key makes of one message: keys are compared by what they sign.
    fn signs(key: &MacKey) -> [u8; 32] {
        key.mac(|hash| hash.update(b"a message"))
    }

    #[test]
    fn each_purpose_gets_its_own_key_and_the_secret_is_none_of_them() {
        let k = keys();
        let all = [k.upstream, k.origin, k.validate, k.kv_sync].map(|key| signs(&key));
        let secret: [u8; 32] = SECRET[..32].try_into().unwrap();
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a, &signs(&MacKey::new(&secret)));
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            signs(&ProofKeys::derive(SECRET).upstream),
            all[0],
            "deterministic"
        );
        assert_ne!(
            signs(&ProofKeys::derive(b"another secret of 32 bytes, or more").upstream),
            all[0]
        );
        assert_eq!(format!("{k:?}"), "ProofKeys(..)");
        assert_eq!(format!("{:?}", k.upstream), "MacKey(..)");
    }

    /// Computed apart from this code (Python's `hmac` and `hashlib`, HKDF by hand):
    /// the wire format and the keys, pinned.
    #[test]
    fn proofs_match_values_computed_elsewhere() {
        assert_eq!(
            REQUEST.sign(&keys().upstream),
            "Q1Jx1cQ7FB-NtvFlHKav7AEfYXYadDmAPufc38yCZNM"
        );
        let anonymous = RequestProof {
            identity: None,
            ..REQUEST
        };
        assert_eq!(
            anonymous.sign(&keys().upstream),
            "i27ifmqoE12gyoDEsh6OhtntPAYQ3gaeWHvcLCJVr8k"
        );
        assert_eq!(
            sign_message(&keys().kv_sync, "kv-sync", 100, br#"{"a":1}"#),
            "vV2fepFhcvWciM_w9CC3vLSC2GSUVfmWJxsxUUGx6ho"
        );
    }

    #[test]
    fn a_precomputed_key_macs_as_hmac_does() {
        let key = *b"0123456789abcdef0123456789abcdef";
        for message in [&b""[..], b"x", &[7; 55], &[7; 56], &[7; 64], &[7; 200]] {
            assert_eq!(
                MacKey::new(&key).mac(|hash| hash.update(message)),
                hmac_sha256::HMAC::mac(message, key)
            );
        }
        for n in [0, 7, 10, 99, 1_000, u64::MAX] {
            assert_eq!(decimal(&mut [0; 20], n), n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_fresh_proof_for_the_same_request_verifies() {
        let proof = REQUEST.sign(&keys().upstream);
        for now in [100, 100 + MAX_AGE, 100 - MAX_AGE] {
            assert_eq!(REQUEST.verify(&keys().upstream, &proof, now), Ok(()));
        }
    }

    #[test]
    fn any_changed_field_key_or_purpose_breaks_the_proof() {
        let key = keys().upstream;
        let proof = REQUEST.sign(&key);
        let other_id = |f: fn(&mut Identity<'static>)| {
            let mut id = ID;
            f(&mut id);
            RequestProof {
                identity: Some(id),
                ..REQUEST
            }
        };
        for (what, changed) in [
            ("user", other_id(|id| id.user_id = "u2")),
            ("session", other_id(|id| id.session_id = "s2")),
            ("scope", other_id(|id| id.scope = "read admin")),
            (
                "no identity",
                RequestProof {
                    identity: None,
                    ..REQUEST
                },
            ),
            (
                "address",
                RequestProof {
                    client_ip: "10.0.0.1",
                    ..REQUEST
                },
            ),
            (
                "authority",
                RequestProof {
                    authority: "billing.internal:8443",
                    ..REQUEST
                },
            ),
            (
                "port",
                RequestProof {
                    authority: "api.internal:443",
                    ..REQUEST
                },
            ),
            (
                "method",
                RequestProof {
                    method: "POST",
                    ..REQUEST
                },
            ),
            (
                "path",
                RequestProof {
                    path_and_query: "/api/other?page=2",
                    ..REQUEST
                },
            ),
            (
                "query",
                RequestProof {
                    path_and_query: "/api/me?page=3",
                    ..REQUEST
                },
            ),
            (
                "no query",
                RequestProof {
                    path_and_query: "/api/me",
                    ..REQUEST
                },
            ),
            (
                "time",
                RequestProof {
                    time: 101,
                    ..REQUEST
                },
            ),
        ] {
            assert_eq!(
                changed.verify(&key, &proof, 100),
                Err(ProofError::Mismatch),
                "{what}"
            );
        }
        for other in [keys().origin, keys().validate, keys().kv_sync] {
            assert_eq!(
                REQUEST.verify(&other, &proof, 100),
                Err(ProofError::Mismatch)
            );
        }
        assert_eq!(
            REQUEST.verify(&key, "not-base64!", 100),
            Err(ProofError::Mismatch)
        );
    }

    #[test]
    fn authorities_are_written_one_way() {
        for (url, expected) in [
            ("https://api.example", Some("api.example:443")),
            ("HTTPS://Api.Example:8443/x?y#z", Some("api.example:8443")),
            ("http://127.0.0.1:8787/", Some("127.0.0.1:8787")),
            ("http://localhost?q", Some("localhost:80")),
            ("http://[2001:DB8::1]:9000/p", Some("[2001:db8::1]:9000")),
            ("http://[::1]", Some("[::1]:80")),
            ("http://user@host/", None),
            ("http://host:0/", None),
            ("http://host:99999/", None),
            ("http://host:/", None),
            ("http:///p", None),
            ("http://[::1/", None),
            ("ws://host/", None),
            ("host:80", None),
        ] {
            assert_eq!(authority(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn an_old_or_future_proof_is_stale() {
        let key = keys().origin;
        let proof = REQUEST.sign(&key);
        assert_eq!(
            REQUEST.verify(&key, &proof, 100 + MAX_AGE + 1),
            Err(ProofError::Stale)
        );
        let early = RequestProof {
            time: 200,
            ..REQUEST
        };
        let proof = early.sign(&key);
        assert_eq!(
            early.verify(&key, &proof, 200 - MAX_AGE - 1),
            Err(ProofError::Stale)
        );
    }

    #[test]
    fn a_message_proof_covers_context_time_and_every_body_byte() {
        let key = keys().kv_sync;
        let proof = sign_message(&key, "kv-sync", 100, b"{\"ops\":[]}");
        assert_eq!(
            verify_message(&key, "kv-sync", 100, b"{\"ops\":[]}", &proof, 110),
            Ok(())
        );
        for (context, time, body) in [
            ("kv-sync", 100, &b"{\"ops\":[1]}"[..]),
            ("other", 100, b"{\"ops\":[]}"),
            ("kv-sync", 101, b"{\"ops\":[]}"),
        ] {
            assert_eq!(
                verify_message(&key, context, time, body, &proof, 110),
                Err(ProofError::Mismatch)
            );
        }
        assert_eq!(
            verify_message(
                &keys().upstream,
                "kv-sync",
                100,
                b"{\"ops\":[]}",
                &proof,
                110
            ),
            Err(ProofError::Mismatch),
            "an upstream's key cannot sign KV pushes"
        );
        assert_eq!(
            verify_message(
                &key,
                "kv-sync",
                100,
                b"{\"ops\":[]}",
                &proof,
                100 + MAX_AGE + 1
            ),
            Err(ProofError::Stale)
        );
    }
}
