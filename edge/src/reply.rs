//! The answers the edge gives itself, and how a protected request's checks map onto
//! them. The entry only writes these out.

use crate::{INVALID_TOKEN_CHALLENGE, MISSING_TOKEN_CHALLENGE};

/// Seconds a client should wait after a 503 from the edge.
pub const RETRY_AFTER_SECS: &str = "5";

/// A response the edge makes up: a JSON error body (RFC 6749 §5.2 shape), never
/// cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn error(status: u16, code: &str, description: &str) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": code, "error_description": description })
                .to_string(),
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
            ],
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// No credentials: the realm challenge without an error code (RFC 6750 §3.1).
    pub fn missing_token() -> Reply {
        Reply::error(401, "invalid_token", "an access token is required")
            .with("www-authenticate", MISSING_TOKEN_CHALLENGE)
    }

    pub fn invalid_token() -> Reply {
        Reply::error(401, "invalid_token", "the access token is not valid")
            .with("www-authenticate", INVALID_TOKEN_CHALLENGE)
    }

    /// The edge cannot decide (store, fallback or keys unreachable). Never 401 for our
    /// own outage (DESIGN §3): a 401 sends every client to `/auth/refresh` at once.
    pub fn unavailable(what: &str) -> Reply {
        Reply::error(503, "temporarily_unavailable", what).with("retry-after", RETRY_AFTER_SECS)
    }

    pub fn ambiguous_credentials() -> Reply {
        Reply::error(
            400,
            "invalid_request",
            "exactly one Authorization header with one bearer token is allowed",
        )
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "not_found", "no such resource")
    }

    pub fn method_not_allowed() -> Reply {
        Reply::error(405, "invalid_request", "method not allowed")
            .with("allow", crate::request::allow_header())
    }

    pub fn too_large() -> Reply {
        Reply::error(413, "invalid_request", "the request body is too large")
    }

    pub fn server_error(description: &str) -> Reply {
        Reply::error(500, "server_error", description)
    }

    pub fn forbidden(description: &str) -> Reply {
        Reply::error(403, "invalid_request", description)
    }
}

/// What the session check came to when the store could not answer and the origin's
/// fallback check was asked: `Some(Some(scope))` active, `Some(None)` not active,
/// `None` no answer either.
pub fn after_fallback(answer: Option<Option<String>>) -> Result<String, Reply> {
    match answer {
        Some(Some(scope)) => Ok(scope),
        Some(None) => Err(Reply::invalid_token()),
        None => Err(Reply::unavailable(
            "the session cannot be checked right now; retry",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_and_the_fallback_both_silent_is_503_never_401_or_200() {
        assert_eq!(after_fallback(Some(Some("s".into()))), Ok("s".into()));
        let revoked = after_fallback(Some(None)).unwrap_err();
        assert_eq!(revoked.status, 401);
        assert_eq!(
            revoked.header("www-authenticate"),
            Some(INVALID_TOKEN_CHALLENGE)
        );
        let unknown = after_fallback(None).unwrap_err();
        assert_eq!(unknown.status, 503);
        assert_eq!(unknown.header("retry-after"), Some(RETRY_AFTER_SECS));
        assert_eq!(unknown.header("www-authenticate"), None);
    }

    #[test]
    fn every_reply_is_json_and_never_cached() {
        for reply in [
            Reply::missing_token(),
            Reply::invalid_token(),
            Reply::unavailable("x"),
            Reply::not_found(),
            Reply::method_not_allowed(),
            Reply::too_large(),
            Reply::server_error("x"),
            Reply::ambiguous_credentials(),
        ] {
            assert_eq!(reply.header("cache-control"), Some("no-store"));
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert!(body["error"].is_string() && body["error_description"].is_string());
        }
        assert_eq!(
            Reply::missing_token().header("www-authenticate"),
            Some(MISSING_TOKEN_CHALLENGE)
        );
        assert!(
            Reply::method_not_allowed()
                .header("allow")
                .unwrap()
                .contains("GET")
        );
    }
}
