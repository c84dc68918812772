//! Which way a request goes. The edge forwards only what it was told about:
//! `/auth/*` and the JWKS to the origin, protected paths after validation, public
//! paths as they are; everything else is 404 at the edge (DESIGN §4), so an origin's
//! operational or internal endpoints are never reachable through it by accident.

/// The kinds of request the edge sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/auth/*` and the JWKS: passed to the origin.
    Origin,
    /// A protected path: token and session checked, identity forwarded.
    Protected,
    /// An explicitly configured public path: forwarded without identity.
    Public,
    /// `POST /__edge/kv`: the origin's signed pushes of session records into KV.
    KvSync,
    /// Anything else: 404 at the edge.
    NotFound,
}

/// Prefixes the edge itself owns; configured paths may not overlap them.
const RESERVED: [&str; 4] = ["/auth", "/.well-known/jwks.json", "/internal", "/__edge"];

/// The configured path prefixes, checked once at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    protected: Vec<String>,
    public: Vec<String>,
}

impl Routes {
    /// Parses `PROTECTED_PATHS` and `PUBLIC_PATHS` (comma-separated prefixes). Errors
    /// name the setting and the entry: an entry without a leading `/`, one inside a
    /// path the edge reserves (`/auth`, the JWKS, `/internal`, `/__edge`), or a path both protected and public (either order),
    /// since whichever won, one of the two settings would silently not hold.
    pub fn parse(protected: &str, public: &str) -> Result<Routes, String> {
        let routes = Routes {
            protected: prefixes("PROTECTED_PATHS", protected)?,
            public: prefixes("PUBLIC_PATHS", public)?,
        };
        for p in &routes.protected {
            if let Some(q) = routes.public.iter().find(|q| overlap(p, q)) {
                return Err(format!(
                    "PROTECTED_PATHS {p} and PUBLIC_PATHS {q} overlap: a path cannot be both"
                ));
            }
        }
        Ok(routes)
    }

    pub fn protected(&self) -> &[String] {
        &self.protected
    }

    pub fn public(&self) -> &[String] {
        &self.public
    }

    pub fn classify(&self, path: &str) -> Route {
        if path == crate::sync::PATH {
            Route::KvSync
        } else if under(path, "/internal") || under(path, "/__edge") {
            Route::NotFound
        } else if under(path, "/auth") || path == "/.well-known/jwks.json" {
            Route::Origin
        } else if self.protected.iter().any(|p| under(path, p)) {
            Route::Protected
        } else if self.public.iter().any(|p| under(path, p)) {
            Route::Public
        } else {
            Route::NotFound
        }
    }
}

/// Whether `path` is `prefix` or below it, by whole segments: `/api` covers `/api`
/// and `/api/me`, never `/apiary`. The prefix `/` covers every path.
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether some path is under both prefixes.
fn overlap(a: &str, b: &str) -> bool {
    under(a, b) || under(b, a)
}

fn prefixes(setting: &str, value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !entry.starts_with('/') {
            return Err(format!("{setting} entry {entry:?} must start with /"));
        }
        if entry.contains(['?', '#', '*', ' ']) || entry.contains("//") {
            return Err(format!("{setting} entry {entry:?} must be a plain path"));
        }
        // `/api/` and `/api` mean the same: segment matching makes the slash redundant.
        let prefix = match entry.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        // A parent of a reserved path (`/`) is fine: reserved paths are routed first.
        if let Some(reserved) = RESERVED.iter().find(|r| under(prefix, r)) {
            return Err(format!(
                "{setting} entry {entry:?} overlaps {reserved}, which the edge routes itself"
            ));
        }
        out.push(prefix.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_are_routed_and_everything_else_is_not_found() {
        let routes = Routes::parse("/api/", "/public, /docs/").unwrap();
        assert_eq!(routes.classify("/auth/login"), Route::Origin);
        assert_eq!(routes.classify("/auth"), Route::Origin);
        assert_eq!(routes.classify("/.well-known/jwks.json"), Route::Origin);
        assert_eq!(routes.classify("/api/me"), Route::Protected);
        assert_eq!(routes.classify("/api"), Route::Protected);
        assert_eq!(routes.classify("/public/x"), Route::Public);
        assert_eq!(routes.classify("/docs"), Route::Public);
        assert_eq!(routes.classify("/__edge/kv"), Route::KvSync);
        for path in [
            "/",
            "/apiary",
            "/authx",
            "/API/me",
            "//api/me",
            "/metrics",
            "/readyz",
            "/healthz",
            "/internal/validate",
            "/internal",
            "/__edge/other",
            "/publicity",
            "/.well-known/other",
        ] {
            assert_eq!(routes.classify(path), Route::NotFound, "{path}");
        }
    }

    #[test]
    fn a_root_public_path_makes_every_unreserved_path_public() {
        let routes = Routes::parse("", "/").unwrap();
        assert_eq!(routes.classify("/anything"), Route::Public);
        assert_eq!(routes.classify("/internal/validate"), Route::NotFound);
        assert_eq!(routes.classify("/auth/login"), Route::Origin);
        assert!(Routes::parse("/api", "/").is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            Routes::parse("api/", "").unwrap_err(),
            r#"PROTECTED_PATHS entry "api/" must start with /"#
        );
        assert!(
            Routes::parse("/api", "docs")
                .unwrap_err()
                .contains("PUBLIC_PATHS")
        );
        assert!(
            Routes::parse("/api/*", "")
                .unwrap_err()
                .contains("plain path")
        );
        assert!(Routes::parse("/auth/x", "").unwrap_err().contains("/auth"));
        assert!(
            Routes::parse("", "/internal")
                .unwrap_err()
                .contains("/internal")
        );
        assert!(Routes::parse("/", "/docs").unwrap_err().contains("overlap"));
    }

    #[test]
    fn a_path_both_protected_and_public_is_a_configuration_error() {
        for (protected, public) in [("/api", "/api/"), ("/api", "/api/docs"), ("/api/x", "/api")] {
            let error = Routes::parse(protected, public).unwrap_err();
            assert!(error.contains("overlap"), "{protected} {public}: {error}");
        }
        assert!(Routes::parse("/api", "/apidocs").is_ok());
    }
}
