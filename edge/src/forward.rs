//! Header hygiene for forwarded requests.

use shared::proof::{self, Identity};

/// Headers a client may not set: the identity the edge vouches for, and the client
/// address the origin trusts for throttling.
pub const CLIENT_IP_HEADER: &str = "x-forwarded-for";

pub fn is_stripped(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    proof::header::ALL.contains(&name.as_str()) || name == CLIENT_IP_HEADER
}

/// The identity headers (and proof) to add to a request to `method` `path` at `now`.
pub fn identity_headers(
    secret: &[u8],
    id: &Identity<'_>,
    method: &str,
    path: &str,
    now: u64,
) -> Vec<(&'static str, String)> {
    vec![
        (proof::header::USER_ID, id.user_id.to_string()),
        (proof::header::SESSION_ID, id.session_id.to_string()),
        (proof::header::SCOPE, id.scope.to_string()),
        (proof::header::CLIENT_IP, id.client_ip.to_string()),
        (proof::header::TIME, now.to_string()),
        (
            proof::header::PROOF,
            proof::sign(secret, id, method, path, now),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_address_headers_from_clients_are_stripped_in_any_case() {
        for name in [
            "X-Auth-User-Id",
            "x-auth-proof",
            "X-AUTH-SCOPE",
            "x-auth-time",
            "X-Forwarded-For",
            "x-auth-client-ip",
            "x-auth-session-id",
        ] {
            assert!(is_stripped(name), "{name}");
        }
        for name in ["authorization", "content-type", "x-request-id", "cookie"] {
            assert!(!is_stripped(name), "{name}");
        }
    }

    #[test]
    fn the_headers_carry_a_proof_the_upstream_accepts() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let id = Identity {
            user_id: "u",
            session_id: "s",
            scope: "profile",
            client_ip: "203.0.113.1",
        };
        let headers = identity_headers(secret, &id, "GET", "/api/me", 1000);
        let get = |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(
            proof::verify(
                secret,
                &id,
                "GET",
                "/api/me",
                1000,
                get(proof::header::PROOF),
                1001
            ),
            Ok(())
        );
    }
}
