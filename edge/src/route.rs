//! Which way a request goes.

/// The three kinds of request the edge sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/auth/*` and the JWKS: passed to the origin unchanged.
    Origin,
    /// A protected path: token and session checked, identity forwarded.
    Protected,
    /// Anything else: forwarded without identity.
    Public,
    /// `/internal/*`: the origin's edge-only endpoints, never reachable through the edge.
    Hidden,
    /// `POST /__edge/kv`: the origin's signed pushes of session records into KV.
    KvSync,
}

pub fn classify(path: &str, protected: &[String]) -> Route {
    if path == crate::sync::PATH {
        Route::KvSync
    } else if path == "/internal" || path.starts_with("/internal/") {
        Route::Hidden
    } else if path.starts_with("/auth/") || path == "/.well-known/jwks.json" {
        Route::Origin
    } else if protected
        .iter()
        .any(|prefix| path.starts_with(prefix.as_str()) || path == prefix.trim_end_matches('/'))
    {
        Route::Protected
    } else {
        Route::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        let protected = vec!["/api/".to_string()];
        assert_eq!(classify("/auth/login", &protected), Route::Origin);
        assert_eq!(
            classify("/.well-known/jwks.json", &protected),
            Route::Origin
        );
        assert_eq!(classify("/api/me", &protected), Route::Protected);
        assert_eq!(classify("/api", &protected), Route::Protected);
        assert_eq!(classify("/apiary", &protected), Route::Public);
        assert_eq!(classify("/", &protected), Route::Public);
        assert_eq!(classify("/internal/validate", &protected), Route::Hidden);
        assert_eq!(classify("/internal", &protected), Route::Hidden);
        assert_eq!(classify("/__edge/kv", &protected), Route::KvSync);
    }
}
