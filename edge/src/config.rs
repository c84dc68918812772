//! The worker's settings, from `wrangler.toml` vars and secrets.

use shared::proof::ProofKeys;
use shared::{KeySet, Validator};

use crate::cors::Cors;
use crate::route::Routes;

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
    /// `host:port` of `origin_url`, which the proofs sent there cover: the origin
    /// checks it against its `ORIGIN_AUTHORITY`.
    pub origin_authority: String,
    /// Where validated (and public) requests go. Defaults to the origin.
    pub upstream_url: String,
    /// `host:port` of `upstream_url`, covered by the proofs sent there.
    pub upstream_authority: String,
    /// Protected paths (`PROTECTED_PATHS`, default `/api/`) and public ones
    /// (`PUBLIC_PATHS`, default none).
    pub routes: Routes,
    /// Browser origins allowed to call the edge (`ALLOWED_ORIGINS`, default none).
    pub cors: Cors,
    /// Whether public paths receive the client's `Authorization` header
    /// (`FORWARD_AUTHORIZATION_TO_PUBLIC`, default false: a token is a credential for
    /// the protected API, not for whatever serves the public paths).
    pub forward_authorization_to_public: bool,
    pub validator: Validator,
    pub store: StoreKind,
    /// Prefix of store keys, as the origin's `REDIS_PREFIX`.
    pub key_prefix: String,
    /// Keys derived from `EDGE_SECRET`, one per purpose: proofs to the upstream, to the
    /// origin, on the fallback check, and of the origin's KV pushes.
    pub keys: ProofKeys,
    /// Keys given in configuration (`JWKS` var); fetched from the origin when absent.
    pub static_keys: Option<std::rc::Rc<KeySet>>,
    /// Time budget of each subrequest to the store or the origin's check, ms.
    pub store_timeout_ms: u64,
    /// The edge's own time budget for a forwarded request's answer, ms
    /// (`FORWARD_TIMEOUT_MS`, default 0: none, the request waits as long as the client
    /// and the platform do). A budget answers 504 when it runs out, but its timer costs
    /// every forwarded request workerd CPU (docs/PERFORMANCE-LOG.md, "Edge speed").
    pub forward_timeout_ms: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`, seconds.
    pub jwks_refetch_secs: u64,
    /// How long a fetched key set may still be used past its `max-age` while the
    /// origin cannot be reached, seconds (`JWKS_STALE_SECS`, default 300); then 503.
    pub jwks_stale_secs: u64,
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
        let origin_url = base_url("ORIGIN_URL", &required("ORIGIN_URL")?)?;
        let upstream_url = match get("UPSTREAM_URL").filter(|v| !v.is_empty()) {
            Some(url) => Some(base_url("UPSTREAM_URL", &url)?),
            None => None,
        };
        let routes = Routes::parse(
            get("PROTECTED_PATHS").as_deref().unwrap_or("/api/"),
            get("PUBLIC_PATHS").as_deref().unwrap_or(""),
        )?;
        let cors = Cors::parse(get("ALLOWED_ORIGINS").as_deref().unwrap_or(""))?;
        let forward_authorization_to_public = match get("FORWARD_AUTHORIZATION_TO_PUBLIC")
            .as_deref()
        {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(_) => return Err("FORWARD_AUTHORIZATION_TO_PUBLIC must be true or false".into()),
        };
        let store = match get("SESSION_STORE").as_deref().unwrap_or("upstash") {
            "upstash" => StoreKind::Upstash {
                url: base_url("UPSTASH_URL", &required("UPSTASH_URL")?)?,
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
                let keys = KeySet::from_jwks(jwks.as_bytes()).map_err(|e| format!("JWKS: {e}"))?;
                Some(std::rc::Rc::new(keys))
            }
            None => None,
        };
        let number = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
            let value = get(name)
                .filter(|v| !v.is_empty())
                .map_or(Ok(default), |v| v.trim().parse::<u64>())
                .map_err(|_| format!("{name} must be a whole number"))?;
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(format!(
                    "{name} must be between {} and {}, not {value}",
                    range.start(),
                    range.end()
                ))
            }
        };
        let leeway = number("TOKEN_LEEWAY_SECS", 30, 0..=shared::MAX_LEEWAY)?;
        let validator = Validator::new(required("ISSUER")?, required("AUDIENCE")?).with_limits(
            shared::Limits {
                leeway,
                ..Default::default()
            },
        );
        let upstream_url = upstream_url.unwrap_or_else(|| origin_url.clone());
        Ok(Config {
            origin_authority: authority("ORIGIN_URL", &origin_url)?,
            upstream_authority: authority("UPSTREAM_URL", &upstream_url)?,
            upstream_url,
            origin_url,
            routes,
            cors,
            forward_authorization_to_public,
            validator,
            store,
            key_prefix,
            keys: ProofKeys::derive(edge_secret.as_bytes()),
            static_keys,
            store_timeout_ms: number("STORE_TIMEOUT_MS", 1000, 1..=30_000)?,
            forward_timeout_ms: number("FORWARD_TIMEOUT_MS", 0, 0..=300_000)?,
            jwks_refetch_secs: number("JWKS_REFETCH_SECS", 60, 1..=86_400)?,
            jwks_stale_secs: number("JWKS_STALE_SECS", 300, 0..=86_400)?,
        })
    }
}

/// A base URL setting: `https://host[:port][/path]`, or `http://` to a loopback host
/// (development, tests). Plain http elsewhere would carry tokens, proofs and the
/// store's credentials in the clear. The trailing slash is dropped.
fn base_url(name: &str, value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let (secure, rest) = if let Some(rest) = value.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{name} must be an https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) || rest.contains(['?', '#'])
    {
        return Err(format!(
            "{name} must be a plain https://host[:port][/path] URL"
        ));
    }
    if !secure && !shared::origins::is_loopback_host(authority) {
        return Err(format!(
            "{name} must use https (plain http only to a loopback address)"
        ));
    }
    Ok(value.to_string())
}

/// The `host:port` a proof to `url` covers (`shared::proof::authority`).
fn authority(name: &str, url: &str) -> Result<String, String> {
    shared::proof::authority(url).ok_or_else(|| format!("{name} has no valid host:port"))
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
        assert_eq!(config.origin_authority, "127.0.0.1:8080");
        assert_eq!(config.upstream_authority, "127.0.0.1:8080");
        assert_eq!(config.routes.protected(), ["/api"]);
        assert!(config.routes.public().is_empty());
        assert_eq!(config.jwks_stale_secs, 300);
        assert_eq!(config.key_prefix, "auth:");
        assert_eq!(config.store_timeout_ms, 1000);
        assert_eq!(config.forward_timeout_ms, 0, "no forward budget of its own");
        assert_eq!(
            with(&[("FORWARD_TIMEOUT_MS", "10000")])
                .unwrap()
                .forward_timeout_ms,
            10_000
        );
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

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, String> {
        let mut pairs = BASE.to_vec();
        for (k, v) in extra {
            pairs.retain(|(name, _)| name != k);
            pairs.push((k, v));
        }
        Config::from_env(env(&pairs))
    }

    #[test]
    fn every_bad_setting_is_an_error_naming_it_never_a_half_configured_worker() {
        for (name, value) in [
            ("PROTECTED_PATHS", "api/"),
            ("PUBLIC_PATHS", "/api"),
            ("ORIGIN_URL", "http://origin.example"),
            ("ORIGIN_URL", "ftp://127.0.0.1"),
            ("UPSTREAM_URL", "http://upstream.example:8080"),
            ("UPSTASH_URL", "http://redis.example"),
            ("UPSTASH_URL", "https://user@redis.example"),
            ("STORE_TIMEOUT_MS", "0"),
            ("STORE_TIMEOUT_MS", "1s"),
            ("FORWARD_TIMEOUT_MS", "300001"),
            ("FORWARD_TIMEOUT_MS", "10s"),
            ("TOKEN_LEEWAY_SECS", "-1"),
            ("JWKS_REFETCH_SECS", "0"),
            ("JWKS_STALE_SECS", "many"),
            ("ALLOWED_ORIGINS", "*"),
            ("FORWARD_AUTHORIZATION_TO_PUBLIC", "yes"),
        ] {
            let error = with(&[(name, value)]).unwrap_err();
            assert!(error.contains(name), "{name}={value}: {error}");
        }
    }

    #[test]
    fn https_anywhere_and_http_only_to_loopback() {
        let config = with(&[
            ("ORIGIN_URL", "https://auth.example/"),
            ("UPSTREAM_URL", "http://localhost:9000"),
            ("UPSTASH_URL", "http://[::1]:8079"),
        ])
        .unwrap();
        assert_eq!(config.origin_url, "https://auth.example");
        assert_eq!(config.upstream_url, "http://localhost:9000");
        assert_eq!(config.origin_authority, "auth.example:443");
        assert_eq!(config.upstream_authority, "localhost:9000");
        assert!(with(&[("ORIGIN_URL", "http://127.9.9.9:1")]).is_ok());
        assert!(with(&[("ORIGIN_URL", "http://128.0.0.1")]).is_err());
        assert!(with(&[("ORIGIN_URL", "http://127.0.0.1.evil.example")]).is_err());
    }
}
