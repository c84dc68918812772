//! CORS, owned by the edge (DESIGN §7): preflights are answered here, never
//! forwarded and never challenged for a token (a browser sends no credentials on a
//! preflight, Fetch standard §3.2.2), and responses to allowed origins say so.

/// Exact origins allowed to call the edge from a browser (`ALLOWED_ORIGINS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    allowed: Vec<String>,
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
    /// Parses `ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]`, no path, no
    /// wildcard, never `null` (a sandboxed or file page's origin, which any page can
    /// claim). `https` except for loopback development origins.
    pub fn parse(value: &str) -> Result<Cors, String> {
        let mut allowed = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| format!("ALLOWED_ORIGINS entry {origin:?} needs a scheme"))?;
            if host.is_empty() || host.contains(['/', '*', '?', '#', '@', ' ']) {
                return Err(format!(
                    "ALLOWED_ORIGINS entry {origin:?} must be an exact origin (scheme://host[:port])"
                ));
            }
            if origin.starts_with("http://") && !crate::config::is_loopback_host(host) {
                return Err(format!(
                    "ALLOWED_ORIGINS entry {origin:?} must use https (http only for loopback)"
                ));
            }
            allowed.push(origin.to_ascii_lowercase());
        }
        Ok(Cors { allowed })
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.allowed.iter().any(|a| a == origin)
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
    fn origins_must_be_exact_and_https_except_loopback() {
        assert!(cors().allows("https://app.example"));
        assert!(cors().allows("http://127.0.0.1:5173"));
        assert!(!cors().allows("https://app.example.evil"));
        assert!(!cors().allows("null"));
        for bad in [
            "*",
            "null",
            "app.example",
            "https://*.example",
            "https://app.example/",
            "http://app.example",
        ] {
            assert!(Cors::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cors::parse("").unwrap(), Cors::default());
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
