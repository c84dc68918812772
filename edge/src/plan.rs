//! The plain forwarding decision, made in one call so the module entry can forward
//! without entering Rust's async machinery: a request on `/auth/*`, the JWKS or a
//! public path that needs nothing but header hygiene and a proof becomes a
//! [`ForwardPlan`] the entry applies as it is. Everything else (protected paths,
//! preflights, CORS, bodies of unknown size bound for the origin, refusals) returns
//! `None` and takes the full path of `worker_entry`, so no answer of the edge is made
//! in two places.

use crate::config::Config;
use crate::cors::Cors;
use crate::forward;
use crate::request::{self, BodySize};
use crate::route::Route;

/// Budget of a forwarded request (origin pass-through and upstream), ms.
pub const FORWARD_TIMEOUT_MS: u32 = 10_000;

/// A request as the entry sees it, before any decision.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub method: &'a str,
    /// Absolute, as the runtime gives it.
    pub url: &'a str,
    /// The request's header names (lower case), separated by tabs.
    pub header_names: &'a str,
    /// `cf-connecting-ip`, when present.
    pub client_ip: Option<&'a str>,
    /// `content-length`, when present.
    pub content_length: Option<&'a str>,
}

/// What to send and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardPlan {
    pub url: String,
    /// Whether the request's body goes along (never for `GET` and `HEAD`).
    pub body: bool,
    /// Client headers to remove.
    pub drop: Vec<String>,
    /// Headers to set (the address, time and proof).
    pub set: Vec<(&'static str, String)>,
}

impl ForwardPlan {
    /// One string for the entry: the URL, the body flag and the timeout on the first
    /// line (tab-separated), the names to remove on the second, then one `name\tvalue`
    /// line per header to set. No part can hold a tab or a newline: URLs and header
    /// names cannot, and the values are addresses, decimal times and base64url.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{}\t{}\t{FORWARD_TIMEOUT_MS}\n{}",
            self.url,
            u8::from(self.body),
            self.drop.join("\t")
        );
        for (name, value) in &self.set {
            out.push('\n');
            out.push_str(name);
            out.push('\t');
            out.push_str(value);
        }
        out
    }
}

/// The plan for `incoming` at `now`, or `None` when the full path must decide.
pub fn forward_plan(config: &Config, incoming: &Incoming<'_>, now: u64) -> Option<ForwardPlan> {
    let method = incoming.method;
    // CORS headers on the answer, preflights and 405s are the full path's.
    if config.cors != Cors::default()
        || method == "OPTIONS"
        || !request::is_forwarded_method(method)
    {
        return None;
    }
    let (path, path_and_query) = forward::split_url(incoming.url)?;
    let body = request::has_body(method);
    let (base, authority, key, keep_authorization) = match config.routes.classify(path) {
        Route::Origin => {
            // A body over the limit is refused, one of unknown size measured: full path.
            if body && request::auth_body_size(incoming.content_length) != BodySize::Within {
                return None;
            }
            (
                &config.origin_url,
                &config.origin_authority,
                &config.keys.origin,
                true,
            )
        }
        Route::Public => (
            &config.upstream_url,
            &config.upstream_authority,
            &config.keys.upstream,
            config.forward_authorization_to_public,
        ),
        Route::Protected | Route::KvSync | Route::NotFound => return None,
    };
    let drop = incoming
        .header_names
        .split('\t')
        .filter(|name| !name.is_empty() && !forward::is_forwarded(name, keep_authorization))
        .map(str::to_string)
        .collect();
    let set = forward::proof_headers(
        key,
        authority,
        method,
        path_and_query,
        incoming.client_ip.unwrap_or(forward::UNKNOWN_CLIENT_IP),
        None,
        now,
    );
    Some(ForwardPlan {
        url: format!("{base}{path_and_query}"),
        body,
        drop,
        set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proof::{RequestProof, header};

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut vars = vec![
            ("ORIGIN_URL", "https://auth.internal"),
            ("UPSTREAM_URL", "https://api.internal:8443"),
            ("ISSUER", "https://auth.test"),
            ("AUDIENCE", "api"),
            ("UPSTASH_URL", "https://redis.example"),
            ("UPSTASH_TOKEN", "t"),
            ("EDGE_SECRET", "0123456789abcdef0123456789abcdef"),
            ("PUBLIC_PATHS", "/public/"),
        ];
        vars.extend_from_slice(extra);
        Config::from_env(|name| {
            vars.iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    fn incoming<'a>(method: &'a str, url: &'a str) -> Incoming<'a> {
        Incoming {
            method,
            url,
            header_names: "accept\tauthorization\thost\tx-auth-user-id\tx-forwarded-for",
            client_ip: Some("203.0.113.7"),
            content_length: None,
        }
    }

    #[test]
    fn a_public_request_goes_upstream_with_its_query_clean_headers_and_a_proof() {
        let config = config(&[]);
        let plan = forward_plan(&config, &incoming("GET", "https://e/public/a?b=1"), 1000).unwrap();
        assert_eq!(plan.url, "https://api.internal:8443/public/a?b=1");
        assert!(!plan.body);
        assert_eq!(
            plan.drop,
            ["authorization", "host", "x-auth-user-id", "x-forwarded-for"]
        );
        let get = |name| {
            plan.set
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(header::CLIENT_IP), Some("203.0.113.7"));
        let proof = RequestProof {
            authority: "api.internal:8443",
            method: "GET",
            path_and_query: "/public/a?b=1",
            client_ip: "203.0.113.7",
            identity: None,
            time: 1000,
        };
        assert_eq!(
            proof.verify(&config.keys.upstream, get(header::PROOF).unwrap(), 1000),
            Ok(())
        );
    }

    #[test]
    fn auth_requests_keep_their_credentials_and_go_to_the_origin() {
        let config = config(&[]);
        let mut login = incoming("POST", "https://e/auth/login");
        login.content_length = Some("120");
        let plan = forward_plan(&config, &login, 1000).unwrap();
        assert_eq!(plan.url, "https://auth.internal/auth/login");
        assert!(plan.body);
        assert!(!plan.drop.iter().any(|n| n == "authorization"));
        let jwks = forward_plan(
            &config,
            &incoming("GET", "https://e/.well-known/jwks.json"),
            1000,
        );
        assert_eq!(
            jwks.unwrap().url,
            "https://auth.internal/.well-known/jwks.json"
        );
    }

    #[test]
    fn everything_else_takes_the_full_path() {
        let config = config(&[]);
        let mut unknown_size = incoming("POST", "https://e/auth/login");
        unknown_size.content_length = None;
        let mut too_large = incoming("POST", "https://e/auth/login");
        too_large.content_length = Some("999999");
        for request in [
            incoming("GET", "https://e/api/me"),
            incoming("GET", "https://e/metrics"),
            incoming("POST", "https://e/__edge/kv"),
            incoming("OPTIONS", "https://e/public/a"),
            incoming("TRACE", "https://e/public/a"),
            unknown_size,
            too_large,
        ] {
            assert_eq!(forward_plan(&config, &request, 1000), None, "{request:?}");
        }
        let with_cors = config_with_cors();
        assert_eq!(
            forward_plan(&with_cors, &incoming("GET", "https://e/public/a"), 1000),
            None
        );
    }

    fn config_with_cors() -> Config {
        config(&[("ALLOWED_ORIGINS", "https://app.example")])
    }

    #[test]
    fn the_encoding_is_a_line_of_url_body_and_timeout_then_drops_then_headers() {
        let plan = ForwardPlan {
            url: "https://u/p?q".into(),
            body: true,
            drop: vec!["host".into(), "x-auth-a".into()],
            set: vec![(header::TIME, "1000".into()), (header::PROOF, "abc".into())],
        };
        assert_eq!(
            plan.encode(),
            "https://u/p?q\t1\t10000\nhost\tx-auth-a\nx-auth-time\t1000\nx-auth-proof\tabc"
        );
    }
}
