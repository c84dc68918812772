//! Header hygiene for forwarded requests, and the proof the receiver checks.

use shared::proof::{self, Identity, RequestProof};

/// The client address sent when the runtime gave none (`cf-connecting-ip` is always
/// set at Cloudflare; only local runs lack it).
pub const UNKNOWN_CLIENT_IP: &str = "0.0.0.0";

/// Whether a client's header is removed before anything is forwarded: the whole
/// `x-auth-` family (the identity and address the edge vouches for, whatever a client
/// puts after the prefix), and every header that claims a client address, which only
/// the edge's signed `x-auth-client-ip` may do.
pub fn is_stripped(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with(proof::header::PREFIX)
        || name.starts_with("x-forwarded-")
        || matches!(
            name.as_str(),
            "forwarded" | "x-real-ip" | "true-client-ip" | "x-client-ip" | "x-cluster-client-ip"
        )
}

/// The path and the path with its raw query of a request URL as the runtime gives it
/// (absolute, already normalised by its WHATWG URL parser), without parsing it again.
/// The fragment, which never reaches a server, is dropped.
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let after_scheme = url.split_once("://")?.1;
    let start = after_scheme.find('/')?;
    let path_and_query = after_scheme[start..].split('#').next()?;
    let path = path_and_query.split('?').next()?;
    Some((path, path_and_query))
}

/// Whether a client's header goes on to the receiver: not if stripped (above), not
/// `host` (the receiver's own), and `authorization` only when `keep_authorization`:
/// to the origin (its `/auth/*` endpoints take bearer tokens), never where the edge
/// vouches for the identity instead, and to public paths only when configured.
pub fn is_forwarded(name: &str, keep_authorization: bool) -> bool {
    !is_stripped(name)
        && !name.eq_ignore_ascii_case("host")
        && (keep_authorization || !name.eq_ignore_ascii_case("authorization"))
}

/// The answer when forwarding failed with the error named `name`: 504 when the time
/// budget ran out (`TimeoutError`), else 502.
pub fn failed_reply(name: &str) -> crate::reply::Reply {
    if name == "TimeoutError" {
        crate::reply::Reply::error(
            504,
            "gateway_timeout",
            "the upstream did not answer in time",
        )
    } else {
        crate::reply::Reply::error(502, "bad_gateway", "the upstream did not answer")
    }
}

/// The headers that carry the client's address, the identity (on protected paths)
/// and their proof, for a request to `method` `path_and_query` at `authority` (the
/// receiver's `host:port`) at `now`, signed with the key of the receiver's purpose.
pub fn proof_headers(
    key: &shared::proof::MacKey,
    authority: &str,
    method: &str,
    path_and_query: &str,
    client_ip: &str,
    identity: Option<Identity<'_>>,
    now: u64,
) -> Vec<(&'static str, String)> {
    let request = RequestProof {
        authority,
        method,
        path_and_query,
        client_ip,
        identity,
        time: now,
    };
    let mut headers = Vec::with_capacity(6);
    if let Some(id) = identity {
        headers.push((proof::header::USER_ID, id.user_id.to_string()));
        headers.push((proof::header::SESSION_ID, id.session_id.to_string()));
        headers.push((proof::header::SCOPE, id.scope.to_string()));
    }
    headers.push((proof::header::CLIENT_IP, client_ip.to_string()));
    headers.push((proof::header::TIME, now.to_string()));
    headers.push((proof::header::PROOF, request.sign(key)));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proof::ProofKeys;

    #[test]
    fn every_x_auth_header_and_every_address_header_from_clients_is_stripped() {
        for name in [
            "X-Auth-User-Id",
            "x-auth-proof",
            "X-AUTH-SCOPE",
            "x-auth-time",
            "x-auth-client-ip",
            "x-auth-session-id",
            "x-auth-anything-else",
            "X-Forwarded-For",
            "x-forwarded-host",
            "x-forwarded-proto",
            "Forwarded",
            "x-real-ip",
            "True-Client-IP",
        ] {
            assert!(is_stripped(name), "{name}");
        }
        for name in [
            "authorization",
            "content-type",
            "x-request-id",
            "cookie",
            "x-authx",
        ] {
            assert!(!is_stripped(name), "{name}");
        }
    }

    #[test]
    fn urls_are_split_into_path_and_raw_query() {
        assert_eq!(
            split_url("https://edge.example/api/me?a=1&b=%20"),
            Some(("/api/me", "/api/me?a=1&b=%20"))
        );
        assert_eq!(split_url("http://127.0.0.1:8787/"), Some(("/", "/")));
        assert_eq!(split_url("http://h/p?q#frag"), Some(("/p", "/p?q")));
        assert_eq!(split_url("http://h"), None);
        assert_eq!(split_url("nonsense"), None);
    }

    #[test]
    fn authorization_goes_on_only_where_it_is_kept() {
        assert!(is_forwarded("Authorization", true));
        assert!(!is_forwarded("Authorization", false));
        assert!(!is_forwarded("Host", true));
        assert!(!is_forwarded("x-auth-user-id", true));
        assert!(is_forwarded("cookie", false));
    }

    #[test]
    fn the_headers_carry_a_proof_the_receiver_accepts_and_only_with_its_key() {
        let keys = ProofKeys::derive(b"0123456789abcdef0123456789abcdef");
        let id = Identity {
            user_id: "u",
            session_id: "s",
            scope: "profile",
        };
        let headers = proof_headers(
            &keys.upstream,
            "api.internal:443",
            "GET",
            "/api/me?a=1",
            "203.0.113.1",
            Some(id),
            1000,
        );
        let get = |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(proof::header::USER_ID), Some("u"));
        let request = RequestProof {
            authority: "api.internal:443",
            method: "GET",
            path_and_query: "/api/me?a=1",
            client_ip: get(proof::header::CLIENT_IP).unwrap(),
            identity: Some(id),
            time: get(proof::header::TIME).unwrap().parse().unwrap(),
        };
        let given = get(proof::header::PROOF).unwrap();
        assert_eq!(request.verify(&keys.upstream, given, 1001), Ok(()));
        assert!(request.verify(&keys.origin, given, 1001).is_err());
        let elsewhere = RequestProof {
            authority: "billing.internal:443",
            ..request
        };
        assert!(elsewhere.verify(&keys.upstream, given, 1001).is_err());

        let anonymous = proof_headers(
            &keys.origin,
            "auth.internal:443",
            "POST",
            "/auth/login",
            "203.0.113.1",
            None,
            1000,
        );
        assert!(anonymous.iter().all(|(n, _)| *n != proof::header::USER_ID));
        assert_eq!(anonymous.len(), 3, "address, time and proof only");
    }
}
