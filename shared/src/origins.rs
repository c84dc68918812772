//! Which browser origins may use the API (`ALLOWED_ORIGINS`, DESIGN §7), one rule for
//! the edge and the origin so the setting means the same at both.
//!
//! ```
//! use shared::origins::AllowedOrigins;
//!
//! let allowed = AllowedOrigins::parse("https://app.example, http://127.0.0.1:5173").unwrap();
//! assert!(allowed.admits(Some("https://app.example"), "https://auth.example"));
//! assert!(allowed.admits(Some("https://auth.example"), "https://auth.example")); // same origin
//! assert!(allowed.admits(None, "https://auth.example")); // no browser, or a same-origin GET
//! assert!(!allowed.admits(Some("https://evil.example"), "https://auth.example"));
//! assert!(AllowedOrigins::parse("https://*.example").is_err());
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Exact origins (`scheme://host[:port]`, lower case) allowed besides the server's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    allowed: Vec<String>,
}

impl AllowedOrigins {
    /// Parses a comma-separated list. Every entry is an exact origin: a scheme, a host
    /// and an optional port; no path, no wildcard, never `null` (the origin of sandboxed
    /// and `file:` pages, which any page can claim, Fetch standard §3.2.5). `http` only
    /// for loopback development origins. The error names the bad entry.
    pub fn parse(value: &str) -> Result<AllowedOrigins, String> {
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
            if origin.starts_with("http://") && !is_loopback_host(host) {
                return Err(format!(
                    "ALLOWED_ORIGINS entry {origin:?} must use https (http only for loopback)"
                ));
            }
            allowed.push(origin.to_ascii_lowercase());
        }
        Ok(AllowedOrigins { allowed })
    }

    /// Whether no origin is listed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `origin` (an `Origin` header's value) is listed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }

    /// Whether a request with `origin` (its `Origin` header, if any) may go on to a
    /// server whose own origin is `own`: no `Origin` (not a browser, or a browser's
    /// same-origin `GET`), the server's own, or a listed one.
    pub fn admits(&self, origin: Option<&str>, own: &str) -> bool {
        match origin {
            None => true,
            Some(origin) => origin.eq_ignore_ascii_case(own) || self.allows(origin),
        }
    }
}

/// The origin (`scheme://host[:port]`) of an absolute URL, as a browser writes it in
/// `Origin`: `None` for a URL without a scheme or host.
pub fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    (!scheme.is_empty() && end > 0).then(|| &url[..scheme.len() + 3 + end])
}

/// Whether `authority` (`host[:port]`) names this machine: `localhost`, `127.0.0.0/8`
/// or `[::1]`, where browsers treat plain `http` as a secure context.
pub fn is_loopback_host(authority: &str) -> bool {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next() == Some("::1");
    }
    let host = authority.split(':').next().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<core::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl core::fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.allowed.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedOrigins {
        AllowedOrigins::parse("https://app.example, http://127.0.0.1:5173").unwrap()
    }

    #[test]
    fn origins_must_be_exact_and_https_except_loopback() {
        assert!(allowed().allows("https://app.example"));
        assert!(allowed().allows("HTTPS://APP.example"));
        assert!(allowed().allows("http://127.0.0.1:5173"));
        assert!(!allowed().allows("https://app.example.evil"));
        assert!(!allowed().allows("https://app.example:8443"));
        assert!(!allowed().allows("null"));
        for bad in [
            "*",
            "null",
            "app.example",
            "https://*.example",
            "https://app.example/",
            "http://app.example",
            "https://user@app.example",
            "https://",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
        assert!(AllowedOrigins::parse("").unwrap().is_empty());
        assert!(AllowedOrigins::parse(" , ").unwrap().is_empty());
        assert_eq!(
            allowed().to_string(),
            "https://app.example,http://127.0.0.1:5173"
        );
    }

    #[test]
    fn a_request_is_admitted_from_no_origin_its_own_or_a_listed_one() {
        let own = "https://auth.example";
        assert!(allowed().admits(None, own));
        assert!(allowed().admits(Some("https://auth.example"), own));
        assert!(allowed().admits(Some("https://app.example"), own));
        assert!(!allowed().admits(Some("https://evil.example"), own));
        assert!(
            !allowed().admits(Some("http://auth.example"), own),
            "scheme"
        );
        assert!(
            !allowed().admits(Some("https://auth.example:444"), own),
            "port"
        );
        assert!(!allowed().admits(Some("null"), own));
        assert!(AllowedOrigins::default().admits(Some(own), own));
        assert!(!AllowedOrigins::default().admits(Some("https://app.example"), own));
    }

    #[test]
    fn the_origin_of_a_url_is_its_scheme_and_authority() {
        assert_eq!(
            origin_of("https://auth.example/auth/login?x=1"),
            Some("https://auth.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8787"),
            Some("http://127.0.0.1:8787")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8787?q"),
            Some("http://127.0.0.1:8787")
        );
        assert_eq!(origin_of("/relative"), None);
        assert_eq!(origin_of("https:///path"), None);
    }

    #[test]
    fn loopback_hosts_are_localhost_127_slash_8_and_ipv6_one() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]:80",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1",
            "[::2]",
            "localhost.evil",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
