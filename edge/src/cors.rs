//! CORS, owned by the edge (DESIGN §7): preflights are answered here, never
//! forwarded and never challenged for a token (a browser sends no credentials on a
//! preflight, Fetch standard §3.2.2), and responses to allowed origins say so.

use shared::origins::AllowedOrigins;

/// Exact origins allowed to call the edge from a browser (`ALLOWED_ORIGINS`, parsed
/// by `shared::origins`, the rule the origin applies too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    allowed: AllowedOrigins,
}

/// Methods a preflight may ask for.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers a preflight may ask for: the bearer token, JSON bodies, cookie
/// delivery of the refresh token (DESIGN §7).
const REQUEST_HEADERS: [&str; 3] = ["authorization", "content-type", "x-token-delivery"];
/// Response headers a page's script may read: what tells it to refresh, when to retry,
/// and the server's time for clock skew.
const EXPOSED: &str = "WWW-Authenticate, Retry-After, Date";
/// How long a browser may cache a preflight, seconds.
const MAX_AGE: &str = "600";

/// The answer to a preflight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preflight {
    /// 204 with these headers.
    Allowed(Vec<(&'static str, String)>),
    /// 403: the origin is not listed, or it asked for a method or header we do not take.
    Refused(&'static str),
}

impl Cors {
    /// Parses `ALLOWED_ORIGINS` (`shared::origins::AllowedOrigins::parse`).
    pub fn parse(value: &str) -> Result<Cors, String> {
        AllowedOrigins::parse(value).map(|allowed| Cors { allowed })
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.allowed.allows(origin)
    }

    /// Whether a request from `origin` (its `Origin` header) may go on to a route of
    /// the edge serving `url`: no `Origin`, the edge's own, or a listed one. Anything
    /// else is refused with 403 before it is forwarded anywhere (DESIGN §7).
    pub fn admits(&self, origin: Option<&str>, url: &str) -> bool {
        self.allowed
            .admits(origin, shared::origins::origin_of(url).unwrap_or_default())
    }

    /// Whether a request is a CORS preflight (Fetch standard §3.2.2).
    pub fn is_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
        method == "OPTIONS" && origin.is_some() && request_method.is_some()
    }

    pub fn preflight(
        &self,
        origin: &str,
        request_method: &str,
        request_headers: Option<&str>,
    ) -> Preflight {
        if !self.allows(origin) {
            return Preflight::Refused("origin not allowed");
        }
        if !METHODS.split(", ").any(|m| m == request_method) {
            return Preflight::Refused("method not allowed");
        }
        let asked = request_headers.unwrap_or("");
        let unknown = asked
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .any(|h| !REQUEST_HEADERS.contains(&h.as_str()));
        if unknown {
            return Preflight::Refused("header not allowed");
        }
        let mut headers = self.allowed_headers(origin);
        headers.push(("access-control-allow-methods", METHODS.to_string()));
        headers.push(("access-control-allow-headers", REQUEST_HEADERS.join(", ")));
        headers.push(("access-control-max-age", MAX_AGE.to_string()));
        Preflight::Allowed(headers)
    }

    /// Headers added to every response: `Vary: Origin` always when origins are
    /// configured (a cache must not serve one origin's answer to another), the
    /// allowance only to a listed origin. Credentials are allowed because the origins
    /// are exact: the refresh cookie travels only with them (DESIGN §7).
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        if self.allowed.is_empty() {
            return Vec::new();
        }
        match origin.filter(|o| self.allows(o)) {
            Some(origin) => self.allowed_headers(origin),
            None => vec![("vary", "Origin".to_string())],
        }
    }

    /// The `Vary` value once `Origin` is in it: `None` when it already is (a preflight
    /// answer, or an upstream that varies on it itself), so it is never listed twice.
    pub fn vary_with_origin(existing: Option<&str>) -> Option<String> {
        match existing.map(str::trim).filter(|v| !v.is_empty()) {
            None => Some("Origin".into()),
            Some(v)
                if v.split(',')
                    .any(|f| f.trim().eq_ignore_ascii_case("origin") || f.trim() == "*") =>
            {
                None
            }
            Some(v) => Some(format!("{v}, Origin")),
        }
    }

    fn allowed_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        vec![
            ("access-control-allow-origin", origin.to_string()),
            ("access-control-allow-credentials", "true".to_string()),
            ("access-control-expose-headers", EXPOSED.to_string()),
            ("vary", "Origin".to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::parse("https://app.example, http://127.0.0.1:5173").unwrap()
    }

    #[test]
    fn requests_from_the_edges_own_origin_or_a_listed_one_go_on_and_others_are_refused() {
        let url = "https://auth.example/auth/refresh";
        assert!(cors().admits(None, url));
        assert!(cors().admits(Some("https://auth.example"), url));
        assert!(cors().admits(Some("https://app.example"), url));
        assert!(!cors().admits(Some("https://evil.example"), url));
        assert!(!cors().admits(Some("https://auth.example:8443"), url));
        assert!(!cors().admits(Some("null"), url));
        assert!(Cors::default().admits(Some("https://auth.example"), url));
        assert!(!Cors::default().admits(Some("https://app.example"), url));
        assert!(Cors::parse("https://*.example").is_err());
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_here() {
        let Preflight::Allowed(headers) =
            cors().preflight("https://app.example", "GET", Some("Authorization"))
        else {
            panic!("refused")
        };
        let get = |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(get("vary"), Some("Origin"));
        assert!(
            get("access-control-allow-headers")
                .unwrap()
                .contains("authorization")
        );
        assert!(
            get("access-control-expose-headers")
                .unwrap()
                .contains("WWW-Authenticate")
        );
    }

    #[test]
    fn a_preflight_from_elsewhere_or_for_something_else_is_refused() {
        assert_eq!(
            cors().preflight("https://evil.example", "GET", None),
            Preflight::Refused("origin not allowed")
        );
        assert_eq!(
            cors().preflight("https://app.example", "TRACE", None),
            Preflight::Refused("method not allowed")
        );
        assert_eq!(
            cors().preflight("https://app.example", "POST", Some("content-type, x-evil")),
            Preflight::Refused("header not allowed")
        );
        assert!(Cors::is_preflight("OPTIONS", Some("o"), Some("GET")));
        assert!(!Cors::is_preflight("OPTIONS", Some("o"), None));
    }

    #[test]
    fn vary_lists_origin_once() {
        assert_eq!(Cors::vary_with_origin(None).as_deref(), Some("Origin"));
        assert_eq!(
            Cors::vary_with_origin(Some("Accept-Encoding")).as_deref(),
            Some("Accept-Encoding, Origin")
        );
        assert_eq!(Cors::vary_with_origin(Some("origin")), None);
        assert_eq!(Cors::vary_with_origin(Some("Accept, Origin")), None);
        assert_eq!(Cors::vary_with_origin(Some("*")), None);
    }

    #[test]
    fn responses_vary_on_origin_and_expose_the_retry_headers_only_to_allowed_origins() {
        let allowed = cors().response_headers(Some("https://app.example"));
        assert!(
            allowed
                .iter()
                .any(|(n, v)| *n == "access-control-expose-headers"
                    && v.contains("Retry-After")
                    && v.contains("Date"))
        );
        let other = cors().response_headers(Some("https://evil.example"));
        assert_eq!(other, vec![("vary", "Origin".to_string())]);
        assert!(
            Cors::default()
                .response_headers(Some("https://app.example"))
                .is_empty()
        );
    }
}
