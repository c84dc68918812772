//! The worker's settings, from `wrangler.toml` vars and secrets.

use shared::proof::ProofKeys;
use shared::{KeySet, Validator};

/// Which store holds the session records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Upstash-style Redis REST (`UPSTASH_URL`, `UPSTASH_TOKEN`).
    Upstash { url: String, token: String },
    /// Workers KV (binding `SESSIONS`).
    Kv,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where `/auth/*`, the JWKS and the degraded-mode check go.
    pub origin_url: String,
    /// Where validated (and public) requests go. Defaults to the origin.
    pub upstream_url: String,
    /// Path prefixes that need a valid token. Default `/api/`.
    pub protected: Vec<String>,
    pub validator: Validator,
    pub store: StoreKind,
    /// Prefix of store keys, as the origin's `REDIS_PREFIX`.
    pub key_prefix: String,
    /// Keys derived from `EDGE_SECRET`, one per purpose: proofs to the upstream, to the
    /// origin, on the fallback check, and of the origin's KV pushes.
    pub keys: ProofKeys,
    /// Keys given in configuration (`JWKS` var); fetched from the origin when absent.
    pub static_keys: Option<KeySet>,
    /// Time budget of each subrequest to the store or the origin's check, ms.
    pub store_timeout_ms: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`, seconds.
    pub jwks_refetch_secs: u64,
}

impl Config {
    /// Reads the settings through `get` (vars and secrets by name). Errors name the
    /// missing or invalid setting.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let required = |name: &str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set"))
        };
        let origin_url = required("ORIGIN_URL")?.trim_end_matches('/').to_string();
        let upstream_url = get("UPSTREAM_URL")
            .filter(|v| !v.is_empty())
            .map(|v| v.trim_end_matches('/').to_string());
        let protected = get("PROTECTED_PATHS")
            .unwrap_or_else(|| "/api/".into())
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| p.starts_with('/'))
            .collect::<Vec<_>>();
        let store = match get("SESSION_STORE").as_deref().unwrap_or("upstash") {
            "upstash" => StoreKind::Upstash {
                url: required("UPSTASH_URL")?.trim_end_matches('/').into(),
                token: required("UPSTASH_TOKEN")?,
            },
            "kv" => StoreKind::Kv,
            other => return Err(format!("SESSION_STORE must be upstash or kv, not {other}")),
        };
        let edge_secret = required("EDGE_SECRET")?;
        if edge_secret.len() < 32 {
            return Err("EDGE_SECRET must be at least 32 bytes".into());
        }
        let key_prefix = get("KEY_PREFIX").unwrap_or_else(|| "auth:".into());
        if !shared::session::is_key_prefix(&key_prefix) {
            return Err("KEY_PREFIX must be printable ASCII without braces".into());
        }
        let static_keys = match get("JWKS").filter(|v| !v.is_empty()) {
            Some(jwks) => {
                Some(KeySet::from_jwks(jwks.as_bytes()).map_err(|e| format!("JWKS: {e}"))?)
            }
            None => None,
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            get(name).map_or(Ok(default), |v| {
                v.parse().map_err(|_| format!("{name} must be a number"))
            })
        };
        let leeway = number("TOKEN_LEEWAY_SECS", 30)?;
        let validator = Validator::new(required("ISSUER")?, required("AUDIENCE")?).with_limits(
            shared::Limits {
                leeway,
                ..Default::default()
            },
        );
        Ok(Config {
            upstream_url: upstream_url.unwrap_or_else(|| origin_url.clone()),
            origin_url,
            protected,
            validator,
            store,
            key_prefix,
            keys: ProofKeys::derive(edge_secret.as_bytes()),
            static_keys,
            store_timeout_ms: number("STORE_TIMEOUT_MS", 1000)?,
            jwks_refetch_secs: number("JWKS_REFETCH_SECS", 60)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const BASE: [(&str, &str); 6] = [
        ("ORIGIN_URL", "http://127.0.0.1:8080/"),
        ("UPSTASH_URL", "http://127.0.0.1:8079"),
        ("UPSTASH_TOKEN", "token"),
        ("EDGE_SECRET", "0123456789abcdef0123456789abcdef"),
        ("ISSUER", "https://auth.test"),
        ("AUDIENCE", "api.test"),
    ];

    #[test]
    fn defaults_protect_api_and_forward_to_the_origin() {
        let config = Config::from_env(env(&BASE)).unwrap();
        assert_eq!(config.origin_url, "http://127.0.0.1:8080");
        assert_eq!(config.upstream_url, "http://127.0.0.1:8080");
        assert_eq!(config.protected, ["/api/"]);
        assert_eq!(config.key_prefix, "auth:");
        assert_eq!(config.store_timeout_ms, 1000);
        assert!(matches!(config.store, StoreKind::Upstash { .. }));
    }

    #[test]
    fn missing_or_weak_settings_are_named() {
        let without = |name: &str| {
            BASE.iter()
                .copied()
                .filter(|(k, _)| *k != name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            Config::from_env(env(&without("ORIGIN_URL"))).unwrap_err(),
            "ORIGIN_URL is not set"
        );
        assert_eq!(
            Config::from_env(env(&without("UPSTASH_TOKEN"))).unwrap_err(),
            "UPSTASH_TOKEN is not set"
        );
        let mut weak = without("EDGE_SECRET");
        weak.push(("EDGE_SECRET", "short"));
        assert!(
            Config::from_env(env(&weak))
                .unwrap_err()
                .contains("EDGE_SECRET")
        );
        let mut kv = BASE.to_vec();
        kv.push(("SESSION_STORE", "memcached"));
        assert!(
            Config::from_env(env(&kv))
                .unwrap_err()
                .contains("SESSION_STORE")
        );
    }
}
