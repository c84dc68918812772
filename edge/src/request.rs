//! What the edge accepts from a client before anything is forwarded: the bearer
//! credentials, the method and the size of a body bound for the origin.

/// The largest body the edge forwards to `/auth/*`: the origin's own limit, refused
/// here so an oversized body never crosses to the origin.
pub const AUTH_BODY_LIMIT: u64 = 16 * 1024;

/// What the `Authorization` header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No header, or an empty one: answered with the realm challenge (RFC 6750 §3.1).
    Missing,
    /// `Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
    Bearer(&'a str),
    /// Another scheme, or a bearer without a token: an invalid token.
    Invalid,
    /// Two headers (which the runtime merges with `, `) or a comma in one: a bad
    /// request (RFC 6750 §2.1 allows one token), since which one counted would depend
    /// on the hop.
    Ambiguous,
}

/// Reads the `Authorization` header's value as the runtime gives it (repeated
/// headers joined by `, `).
pub fn credentials(value: Option<&str>) -> Credentials<'_> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Credentials::Missing;
    };
    if value.contains(',') {
        return Credentials::Ambiguous;
    }
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => match token.trim() {
            "" => Credentials::Invalid,
            token => Credentials::Bearer(token),
        },
        _ => Credentials::Invalid,
    }
}

/// Methods forwarded as they are. Anything else is answered 405 by the edge: a method
/// it does not know has no meaning the upstream promised to honour (and the runtime
/// refuses some before the worker sees them, see the README).
pub const FORWARDED_METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
];

/// The `Allow` header for a 405.
pub fn allow_header() -> String {
    FORWARDED_METHODS.join(", ")
}

pub fn is_forwarded_method(method: &str) -> bool {
    FORWARDED_METHODS.contains(&method)
}

/// Whether a request may carry a body the edge forwards.
pub fn has_body(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

/// What to do with the body of a request bound for `/auth/*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySize {
    /// Declared and within the limit: stream it through.
    Within,
    /// Declared over the limit (or a declaration that is not a number): 413, nothing
    /// forwarded.
    TooLarge,
    /// Not declared (chunked): read it, at most up to the limit, then decide.
    Unknown,
}

pub fn auth_body_size(content_length: Option<&str>) -> BodySize {
    match content_length.map(|v| v.trim().parse::<u64>()) {
        None => BodySize::Unknown,
        Some(Ok(n)) if n <= AUTH_BODY_LIMIT => BodySize::Within,
        Some(_) => BodySize::TooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_strictly() {
        assert_eq!(credentials(None), Credentials::Missing);
        assert_eq!(credentials(Some("  ")), Credentials::Missing);
        assert_eq!(credentials(Some("Bearer abc")), Credentials::Bearer("abc"));
        assert_eq!(
            credentials(Some("bearer  abc ")),
            Credentials::Bearer("abc")
        );
        assert_eq!(credentials(Some("Basic dTpw")), Credentials::Invalid);
        assert_eq!(credentials(Some("Bearer")), Credentials::Invalid);
        assert_eq!(credentials(Some("Bearer ")), Credentials::Invalid);
        assert_eq!(
            credentials(Some("Bearer a, Bearer b")),
            Credentials::Ambiguous
        );
        assert_eq!(credentials(Some("Bearer a,b")), Credentials::Ambiguous);
    }

    #[test]
    fn known_methods_are_forwarded_and_others_get_an_allow_list() {
        for method in ["GET", "POST", "PATCH", "PROPFIND", "DELETE"] {
            assert!(is_forwarded_method(method), "{method}");
        }
        for method in ["TRACE", "CONNECT", "BREW", "get"] {
            assert!(!is_forwarded_method(method), "{method}");
        }
        assert!(allow_header().contains("PATCH"));
        assert!(has_body("PROPFIND") && !has_body("HEAD"));
    }

    #[test]
    fn auth_bodies_over_the_limit_are_refused_before_forwarding() {
        assert_eq!(auth_body_size(Some("16384")), BodySize::Within);
        assert_eq!(auth_body_size(Some("16385")), BodySize::TooLarge);
        assert_eq!(auth_body_size(Some("1000000")), BodySize::TooLarge);
        assert_eq!(auth_body_size(Some("-1")), BodySize::TooLarge);
        assert_eq!(auth_body_size(None), BodySize::Unknown);
    }
}
