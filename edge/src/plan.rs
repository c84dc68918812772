//! The steps the module entry (`edge/js/index.js`) takes without entering Rust's async
//! machinery, each decided here in one synchronous call and encoded in one string:
//! - a request on `/auth/*`, the JWKS or a public path that needs nothing but header
//!   hygiene and a proof becomes a [`ForwardPlan`];
//! - a protected request becomes, in turn, a signature for the platform's Ed25519 to
//!   check ([`verify_step`]), the session read ([`read_step`]), and the forward with
//!   the verified identity ([`forward_with_identity`]).
//!
//! What these do not cover (preflights, CORS, `/auth/*` bodies of unknown size, the
//! KV store, keys to fetch, a store that cannot answer) takes the full path of
//! `worker_entry`.

use shared::proof::Identity;

use crate::config::{Config, StoreKind};
use crate::cors::Cors;
use crate::forward;
use crate::request::{self, BodySize};
use crate::route::Route;

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

/// A protected request between the entry's calls ([`crate::pending`]): its parts as
/// the first call received them, its bearer token, and the claims once verified.
#[derive(Debug)]
pub struct Held {
    pub method: String,
    pub url: String,
    pub header_names: String,
    pub client_ip: Option<String>,
    pub token: String,
    /// `None` until the signature is checked.
    pub claims: Option<shared::VerifiedClaims>,
    /// Whether the claims came from the verified-token cache.
    pub cache_hit: bool,
}

impl Held {
    /// The claims the request may be forwarded with at `now`, after the store read:
    /// verified, not expired (with `leeway`) and signed by a key still in `keys` (the
    /// set usable now; `None` when it must be fetched first), as a key removed at the
    /// origin may have left the set while the store was read. `None` sends the request
    /// down the full path, which decides again from the request.
    pub fn usable_claims(
        &self,
        keys: Option<&shared::KeySet>,
        now: u64,
        leeway: u64,
    ) -> Option<&shared::VerifiedClaims> {
        let claims = self.claims.as_ref()?;
        if now >= claims.expires_at().saturating_add(leeway) {
            return None;
        }
        keys?.get(claims.kid())?;
        Some(claims)
    }

    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            method: &self.method,
            url: &self.url,
            header_names: &self.header_names,
            client_ip: self.client_ip.as_deref(),
            content_length: None,
        }
    }
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
    /// The edge's own time budget for the answer, ms; 0: none (`FORWARD_TIMEOUT_MS`).
    pub timeout_ms: u64,
}

impl ForwardPlan {
    /// One string for the entry: `F`, the URL, the body flag and the timeout on the
    /// first line (tab-separated), the names to remove on the second, then one
    /// `name\tvalue` line per header to set. No part can hold a tab or a newline: URLs
    /// and header names cannot, and the values are ids, scopes, addresses, decimal
    /// times and base64url.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("F\t");
        out.push_str(&self.url);
        out.push_str(if self.body { "\t1\t" } else { "\t0\t" });
        out.push_str(&self.timeout_ms.to_string());
        out.push('\n');
        for (i, name) in self.drop.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            out.push_str(name);
        }
        for (name, value) in &self.set {
            out.push('\n');
            out.push_str(name);
            out.push('\t');
            out.push_str(value);
        }
        out
    }
}

/// Whether the entry may take `incoming` on one of the steps here: not a preflight, a
/// method the edge forwards, no CORS to add and no `Origin` to check (the full path
/// owns all four).
fn plain(config: &Config, incoming: &Incoming<'_>) -> bool {
    config.cors == Cors::default()
        && incoming.method != "OPTIONS"
        && request::is_forwarded_method(incoming.method)
        && !incoming
            .header_names
            .split('\t')
            .any(|name| name == "origin")
}

/// The plan for `incoming` at `now` on `/auth/*`, the JWKS or a public path, or `None`
/// when the full path must decide.
pub fn forward_plan(config: &Config, incoming: &Incoming<'_>, now: u64) -> Option<ForwardPlan> {
    if !plain(config, incoming) {
        return None;
    }
    let (path, _) = forward::split_url(incoming.url)?;
    let body = request::has_body(incoming.method);
    match config.routes.classify(path) {
        Route::Origin => {
            // A body over the limit is refused, one of unknown size measured: full path.
            if body && request::auth_body_size(incoming.content_length) != BodySize::Within {
                return None;
            }
            let to = (
                &config.origin_url[..],
                &config.origin_authority[..],
                &config.keys.origin,
            );
            plan_to(to, true, None, incoming, now, config.forward_timeout_ms)
        }
        Route::Public => {
            let to = (
                &config.upstream_url[..],
                &config.upstream_authority[..],
                &config.keys.upstream,
            );
            plan_to(
                to,
                config.forward_authorization_to_public,
                None,
                incoming,
                now,
                config.forward_timeout_ms,
            )
        }
        Route::Protected | Route::KvSync | Route::NotFound => None,
    }
}

/// Whether `incoming` is a protected request the entry may check on the steps here:
/// the Upstash store (KV reads go through the full path's bindings).
pub fn is_plain_protected(config: &Config, incoming: &Incoming<'_>) -> bool {
    plain(config, incoming)
        && matches!(config.store, StoreKind::Upstash { .. })
        && forward::split_url(incoming.url)
            .is_some_and(|(path, _)| config.routes.classify(path) == Route::Protected)
}

/// The forward of a protected request whose token and session checked out: to the
/// upstream, without the client's `Authorization`, with the identity and its proof.
pub fn forward_with_identity(
    config: &Config,
    incoming: &Incoming<'_>,
    identity: Identity<'_>,
    now: u64,
) -> Option<ForwardPlan> {
    let to = (
        &config.upstream_url[..],
        &config.upstream_authority[..],
        &config.keys.upstream,
    );
    plan_to(
        to,
        false,
        Some(identity),
        incoming,
        now,
        config.forward_timeout_ms,
    )
}

fn plan_to(
    (base, authority, key): (&str, &str, &shared::proof::MacKey),
    keep_authorization: bool,
    identity: Option<Identity<'_>>,
    incoming: &Incoming<'_>,
    now: u64,
    timeout_ms: u64,
) -> Option<ForwardPlan> {
    let method = incoming.method;
    let (_, path_and_query) = forward::split_url(incoming.url)?;
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
        identity,
        now,
    );
    Some(ForwardPlan {
        url: format!("{base}{path_and_query}"),
        body: request::has_body(method),
        drop,
        set,
        timeout_ms,
    })
}

/// `V`, the request's number ([`crate::pending`]), the key and the signature in hex,
/// then the signing input on the next line: the entry checks it with WebCrypto's
/// Ed25519 and calls back with the number and the answer.
pub fn verify_step(number: u32, check: &crate::verify::SignatureCheck) -> String {
    format!(
        "V\t{number}\t{}\t{}\n{}",
        hex(&check.key),
        hex(&check.signature),
        String::from_utf8_lossy(&check.message)
    )
}

/// `S`, the request's number, the read's URL ([`crate::store::mget_url`]), the time
/// budget in ms and the store's `Authorization` value: the entry GETs it and calls
/// back with the number and the answer.
pub fn read_step(number: u32, url: &str, token: &str, budget_ms: u64) -> String {
    format!("S\t{number}\t{url}\t{budget_ms}\tBearer {token}")
}

/// Lower-case hex, by table: a `format!` per byte was 2 % of a verifying request's CPU.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The bytes of lower-case hex `text` of exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
        // A browser's request: its Origin is checked on the full path.
        let mut from_a_page = incoming("GET", "https://e/public/a");
        from_a_page.header_names = "accept\torigin";
        assert!(!is_plain_protected(&config, &{
            let mut r = incoming("GET", "https://e/api/me");
            r.header_names = "authorization\torigin";
            r
        }));
        for request in [
            from_a_page,
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
            timeout_ms: 10_000,
        };
        assert_eq!(
            plan.encode(),
            "F\thttps://u/p?q\t1\t10000\nhost\tx-auth-a\nx-auth-time\t1000\nx-auth-proof\tabc"
        );
    }

    #[test]
    fn a_protected_forward_drops_the_credential_and_carries_the_identity() {
        let kv = config(&[("SESSION_STORE", "kv")]);
        let config = config(&[]);
        let request = incoming("PATCH", "https://e/api/me?x=1");
        assert!(is_plain_protected(&config, &request));
        assert!(!is_plain_protected(
            &config,
            &incoming("GET", "https://e/public/a")
        ));
        assert!(!is_plain_protected(
            &config,
            &incoming("OPTIONS", "https://e/api/me")
        ));
        assert!(!is_plain_protected(&config_with_cors(), &request));
        assert!(!is_plain_protected(&kv, &request));
        let id = Identity {
            user_id: "u1",
            session_id: "s1",
            scope: "profile",
        };
        let plan = forward_with_identity(&config, &request, id, 1000).unwrap();
        assert_eq!(plan.url, "https://api.internal:8443/api/me?x=1");
        assert!(plan.body);
        assert!(plan.drop.iter().any(|n| n == "authorization"));
        assert!(plan.set.contains(&(header::USER_ID, "u1".to_string())));
        let proof = plan.set.iter().find(|(n, _)| *n == header::PROOF).unwrap();
        let expected = RequestProof {
            authority: "api.internal:8443",
            method: "PATCH",
            path_and_query: "/api/me?x=1",
            client_ip: "203.0.113.7",
            identity: Some(id),
            time: 1000,
        };
        assert_eq!(
            expected.verify(&config.keys.upstream, &proof.1, 1000),
            Ok(())
        );
    }

    fn held(claims: Option<shared::VerifiedClaims>) -> Held {
        Held {
            method: "GET".into(),
            url: "https://e/api/me".into(),
            header_names: "authorization".into(),
            client_ip: None,
            token: "t".into(),
            claims,
            cache_hit: false,
        }
    }

    #[test]
    fn held_claims_are_used_only_while_unexpired_and_their_key_is_still_trusted() {
        let (claims, keys) = crate::testing::verified(3);
        let (_, other_keys) = crate::testing::verified(4);
        let held = held(Some(claims));
        assert!(held.usable_claims(Some(&keys), 1200, 30).is_some());
        // Expired while the store was read (leeway included).
        assert!(held.usable_claims(Some(&keys), 1929, 30).is_some());
        assert!(held.usable_claims(Some(&keys), 1930, 30).is_none());
        // The key was removed while the store was read (a JWKS refresh without it):
        // the request must not be forwarded on the old verification.
        assert!(held.usable_claims(Some(&other_keys), 1200, 30).is_none());
        // The set must be fetched again before anything is decided.
        assert!(held.usable_claims(None, 1200, 30).is_none());
        // Never verified.
        assert!(
            self::held(None)
                .usable_claims(Some(&keys), 1200, 30)
                .is_none()
        );
    }

    #[test]
    fn steps_are_encoded_for_the_entry_and_hex_round_trips() {
        let check = crate::verify::SignatureCheck {
            key: [0xab; 32],
            message: b"h.p".to_vec(),
            signature: [1; 64],
        };
        let step = verify_step(7, &check);
        let (head, message) = step.split_once('\n').unwrap();
        assert_eq!(message, "h.p");
        let parts: Vec<&str> = head.split('\t').collect();
        assert_eq!(parts[..2], ["V", "7"]);
        assert_eq!(unhex::<32>(parts[2]), Some([0xab; 32]));
        assert_eq!(unhex::<64>(parts[3]), Some([1; 64]));
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff, 0x5a]), "000ff0ff5a");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex::<256>(&hex(&all)).map(Vec::from), Some(all));
        assert_eq!(unhex::<2>("abc"), None);
        assert_eq!(unhex::<2>("zzzz"), None);
        assert_eq!(
            read_step(4_294_967_295, "https://r/mget/a/b/c", "tok", 1000),
            "S\t4294967295\thttps://r/mget/a/b/c\t1000\tBearer tok"
        );
    }
}
