//! The worker's entry: I/O around the plain functions of this crate. Kept thin on
//! purpose; every decision is made (and tested) elsewhere.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use shared::proof::Identity;
use shared::{KeySet, VerifiedClaims, VerifyingKey};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use worker::{
    AbortController, Date, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
    RequestRedirect, Response, Result, event,
};

use crate::cache::{KeyCache, VerifiedCache, peek_kid};
use crate::config::{Config, StoreKind};
use crate::route::{Route, classify};
use crate::store::{self, Decision};
use crate::{INVALID_TOKEN_CHALLENGE, MISSING_TOKEN_CHALLENGE, forward};

/// Budget of a forwarded request (origin pass-through and upstream).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
    static VERIFIED: RefCell<VerifiedCache> = RefCell::new(VerifiedCache::new(10_000));
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::default());
    static CRYPTO_KEYS: RefCell<HashMap<String, web_sys::CryptoKey>> = RefCell::new(HashMap::new());
}

#[cfg(feature = "upstash-reqwest")]
thread_local! {
    /// One client per isolate (the project's HTTP client).
    static HTTP: reqwest::Client = reqwest::Client::new();
}

fn now() -> u64 {
    Date::now().as_millis() / 1000
}

fn config(env: &Env) -> std::result::Result<Rc<Config>, String> {
    if let Some(config) = CONFIG.with(|c| c.borrow().clone()) {
        return Ok(config);
    }
    let get = |name: &str| {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .ok()
    };
    let config = Rc::new(Config::from_env(get)?);
    CONFIG.with(|c| *c.borrow_mut() = Some(config.clone()));
    Ok(config)
}

fn json_error(status: u16, code: &str, description: &str) -> Result<Response> {
    let body = serde_json::json!({ "error": code, "error_description": description });
    let mut response = Response::from_json(&body)?.with_status(status);
    response.headers_mut().set("cache-control", "no-store")?;
    Ok(response)
}

fn unauthorized(challenge: &str) -> Result<Response> {
    let mut response = json_error(401, "invalid_token", "the access token is not valid")?;
    response.headers_mut().set("www-authenticate", challenge)?;
    Ok(response)
}

fn unavailable() -> Result<Response> {
    let mut response = json_error(
        503,
        "temporarily_unavailable",
        "the session cannot be checked right now; retry",
    )?;
    response.headers_mut().set("retry-after", "5")?;
    Ok(response)
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: worker::Context) -> Result<Response> {
    let config = match config(&env) {
        Ok(config) => config,
        Err(e) => {
            worker::console_error!("edge configuration: {e}");
            return json_error(500, "server_error", "edge misconfigured");
        }
    };
    let url = req.url()?;
    match classify(url.path(), &config.protected) {
        Route::Hidden => json_error(404, "not_found", "no such resource"),
        Route::Origin => send(req, &config.origin_url, &config.keys.origin, None).await,
        Route::Public => send(req, &config.upstream_url, &config.keys.upstream, None).await,
        Route::Protected => protected(req, &env, &config).await,
        Route::KvSync => kv_sync(req, &env, &config).await,
    }
}

/// Applies the origin's signed KV operations (only when the store is KV).
async fn kv_sync(mut req: Request, env: &Env, config: &Config) -> Result<Response> {
    if config.store != StoreKind::Kv || req.method() != Method::Post {
        return json_error(404, "not_found", "no such resource");
    }
    let time = req.headers().get(shared::proof::message_header::TIME)?;
    let given = req.headers().get(shared::proof::message_header::PROOF)?;
    let body = req.bytes().await?;
    let ops = match crate::sync::parse(
        &config.keys.kv_sync,
        &config.key_prefix,
        time.as_deref(),
        given.as_deref(),
        &body,
        now(),
    ) {
        Ok(ops) => ops,
        Err(crate::sync::Refused::Unauthenticated) => {
            return json_error(401, "invalid_client", "bad or missing proof");
        }
        Err(crate::sync::Refused::Invalid(why)) => return json_error(400, "invalid_request", why),
    };
    let kv = env.kv("SESSIONS")?;
    for op in ops {
        // The rules of crate::sync::decide: newer versions and later not-befores only.
        let current = kv.get(op.key()).text().await?;
        let Some(write) = crate::sync::decide(&op, current.as_deref(), Date::now().as_millis())
        else {
            continue;
        };
        let mut put = kv.put(op.key(), write.value)?;
        if let Some(expiration) = write.expiration {
            put = put.expiration(expiration);
        }
        put.execute().await?;
    }
    Ok(Response::empty()?.with_status(204))
}

/// The client's address as Cloudflare saw it.
fn client_ip(req: &Request) -> String {
    req.headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| "0.0.0.0".into())
}

/// Sends `req` to `base` + its path and query: headers a client may not set are
/// removed, the client's address (and on a protected path the identity) added with a
/// proof signed by `key`, redirects not followed. With an identity the credential
/// itself is dropped: the upstream gets the proven identity, not the token.
async fn send(
    req: Request,
    base: &str,
    key: &[u8; 32],
    identity: Option<Identity<'_>>,
) -> Result<Response> {
    let url = req.url()?;
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let target = format!("{base}{path_and_query}");
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        let credential = identity.is_some() && name.eq_ignore_ascii_case("authorization");
        if !forward::is_stripped(&name) && name != "host" && !credential {
            headers.set(&name, &value)?;
        }
    }
    let method = req.method();
    for (name, value) in forward::proof_headers(
        key,
        method.as_ref(),
        &path_and_query,
        &client_ip(&req),
        identity,
        now(),
    ) {
        headers.set(name, &value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone())
        .with_headers(headers)
        .with_redirect(RequestRedirect::Manual);
    if !matches!(method, Method::Get | Method::Head) {
        init.with_body(req.inner().body().map(Into::into));
    }
    let outgoing = Request::new_with_init(&target, &init)?;
    match with_timeout(FORWARD_TIMEOUT, |signal| async move {
        Fetch::Request(outgoing).send_with_signal(&signal).await
    })
    .await
    {
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => {
            worker::console_error!("forwarding failed: {e}");
            json_error(502, "bad_gateway", "the upstream did not answer")
        }
        None => json_error(
            504,
            "gateway_timeout",
            "the upstream did not answer in time",
        ),
    }
}

/// Runs a fetch with an abort signal, giving up after `budget`.
async fn with_timeout<T, F, Fut>(budget: Duration, run: F) -> Option<T>
where
    F: FnOnce(worker::AbortSignal) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let controller = AbortController::default();
    let work = Box::pin(run(controller.signal()));
    match select(work, Delay::from(budget)).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => {
            controller.abort();
            None
        }
    }
}

async fn protected(req: Request, env: &Env, config: &Config) -> Result<Response> {
    let Some(token) = req.headers().get("authorization")?.and_then(|v| bearer(&v)) else {
        return unauthorized(MISSING_TOKEN_CHALLENGE);
    };
    let claims = match verified(&token, config).await {
        Ok(claims) => claims,
        Err(reason) => {
            worker::console_log!("token refused: {reason}");
            return unauthorized(INVALID_TOKEN_CHALLENGE);
        }
    };
    let scope = match session(env, config, &claims).await {
        Decision::Forward(record) => record.scope,
        Decision::Reject => return unauthorized(INVALID_TOKEN_CHALLENGE),
        Decision::Unknown => match fallback(config, &claims, &client_ip(&req)).await {
            Some(Some(scope)) => scope,
            Some(None) => return unauthorized(INVALID_TOKEN_CHALLENGE),
            None => return unavailable(),
        },
    };
    let id = Identity {
        user_id: claims.subject(),
        session_id: claims.session_id(),
        scope: &scope,
    };
    send(req, &config.upstream_url, &config.keys.upstream, Some(id)).await
}

fn bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Signature and claims, from the verified-token cache or WebCrypto.
async fn verified(token: &str, config: &Config) -> std::result::Result<VerifiedClaims, String> {
    let now = now();
    let leeway = config.validator.limits().leeway;
    if let Some(claims) = VERIFIED.with(|c| c.borrow_mut().get(token, now, leeway)) {
        return Ok(claims);
    }
    let keys = key_set(config, peek_kid(token).as_deref(), now)
        .await
        .ok_or("no keys available")?;
    let claims = config
        .validator
        .verify_with(token.as_bytes(), &keys, now, |key, message, signature| {
            webcrypto_verify(key.clone(), message.to_vec(), *signature)
        })
        .await
        .map_err(|e| e.to_string())?;
    VERIFIED.with(|c| c.borrow_mut().insert(token, claims.clone()));
    Ok(claims)
}

/// The trusted keys: from configuration, or the origin's JWKS (cached; an unknown
/// `kid` refetches at most once per interval).
async fn key_set(config: &Config, kid: Option<&str>, now: u64) -> Option<KeySet> {
    if let Some(keys) = &config.static_keys {
        return Some(keys.clone());
    }
    if KEYS.with(|k| k.borrow().should_fetch(kid, now, config.jwks_refetch_secs)) {
        let url = format!("{}/.well-known/jwks.json", config.origin_url);
        let fetched = with_timeout(
            Duration::from_millis(config.store_timeout_ms),
            |signal| async move {
                let mut response = Fetch::Url(url.parse().ok()?)
                    .send_with_signal(&signal)
                    .await
                    .ok()?;
                if response.status_code() != 200 {
                    return None;
                }
                KeySet::from_jwks(&response.bytes().await.ok()?).ok()
            },
        )
        .await
        .flatten();
        KEYS.with(|k| k.borrow_mut().fetched(fetched, now));
    }
    KEYS.with(|k| k.borrow().keys.clone())
}

/// Ed25519 through WebCrypto, about twice as fast as verifying in Wasm.
async fn webcrypto_verify(key: VerifyingKey, message: Vec<u8>, signature: [u8; 64]) -> bool {
    let Ok(subtle) = subtle() else { return false };
    let kid = key.kid().to_string();
    let crypto_key = match CRYPTO_KEYS.with(|c| c.borrow().get(&kid).cloned()) {
        Some(k) => k,
        None => {
            let raw = js_sys::Uint8Array::from(&key.as_bytes()[..]);
            let usages = js_sys::Array::of1(&"verify".into());
            let Ok(promise) = subtle.import_key_with_str("raw", &raw, "Ed25519", false, &usages)
            else {
                return false;
            };
            let Ok(imported) = JsFuture::from(promise).await else {
                return false;
            };
            let imported: web_sys::CryptoKey = imported.unchecked_into();
            CRYPTO_KEYS.with(|c| c.borrow_mut().insert(kid, imported.clone()));
            imported
        }
    };
    let Ok(promise) = subtle.verify_with_str_and_u8_array_and_u8_array(
        "Ed25519",
        &crypto_key,
        &signature,
        &message,
    ) else {
        return false;
    };
    JsFuture::from(promise)
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

fn subtle() -> std::result::Result<web_sys::SubtleCrypto, wasm_bindgen::JsValue> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())?;
    Ok(js_sys::Reflect::get(&crypto, &"subtle".into())?.unchecked_into())
}

/// Where session records are read from: two real implementations, one per store.
trait SessionStore {
    /// The record, user not-before and epoch, in one round trip; `None` when the
    /// store cannot answer.
    async fn read(&self, keys: &[String; 3]) -> Option<[Option<String>; 3]>;
}

/// Upstash-style Redis REST: one `MGET` over HTTP, within `budget_ms` (store
/// timeout), body included.
struct UpstashStore<'a> {
    url: &'a str,
    token: &'a str,
    budget_ms: u32,
}

/// The platform's `fetch`, called directly, with a native `AbortSignal.timeout`.
/// This read runs on every authenticated request: through reqwest (or
/// `worker::Fetch`) and a Rust timer it cost 0.27 ms of workerd CPU, directly 0.15 ms
/// (`scripts/bench`, where workerd saturates one core, so that is throughput).
#[cfg(not(feature = "upstash-reqwest"))]
impl SessionStore for UpstashStore<'_> {
    async fn read(&self, keys: &[String; 3]) -> Option<[Option<String>; 3]> {
        let headers = web_sys::Headers::new().ok()?;
        headers
            .set("authorization", &format!("Bearer {}", self.token))
            .ok()?;
        headers.set("content-type", "application/json").ok()?;
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&store::mget_body(keys).into());
        init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(
            self.budget_ms,
        )));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let response: web_sys::Response =
            JsFuture::from(global.fetch_with_str_and_init(self.url, &init))
                .await
                .ok()?
                .unchecked_into();
        let status = response.status();
        let text = JsFuture::from(response.text().ok()?)
            .await
            .ok()?
            .as_string()?;
        store::parse_mget(status, text.as_bytes()).ok()
    }
}

/// The same read with reqwest, the project's HTTP client elsewhere: kept to measure
/// what it costs (`scripts/edge-http-size` for size, `scripts/bench` for CPU).
#[cfg(feature = "upstash-reqwest")]
impl SessionStore for UpstashStore<'_> {
    async fn read(&self, keys: &[String; 3]) -> Option<[Option<String>; 3]> {
        let response = HTTP
            .with(|c| c.clone())
            .post(self.url)
            .bearer_auth(self.token)
            .header("content-type", "application/json")
            .timeout(Duration::from_millis(self.budget_ms.into()))
            .body(store::mget_body(keys))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.ok()?;
        store::parse_mget(status, &bytes).ok()
    }
}

/// Workers KV: three reads in parallel from the `SESSIONS` binding.
struct KvStore(worker::kv::KvStore);

impl SessionStore for KvStore {
    async fn read(&self, keys: &[String; 3]) -> Option<[Option<String>; 3]> {
        let [a, b, c] = keys;
        let (record, nbf, epoch) = futures::future::join3(
            self.0.get(a).text(),
            self.0.get(b).text(),
            self.0.get(c).text(),
        )
        .await;
        Some([record.ok()?, nbf.ok()?, epoch.ok()?])
    }
}

/// Reads the session within the time budget and decides.
async fn session(env: &Env, config: &Config, claims: &VerifiedClaims) -> Decision {
    let keys = store::keys(&config.key_prefix, claims, config.store == StoreKind::Kv);
    let values = match &config.store {
        StoreKind::Upstash { url, token } => {
            // The budget is the read's own abort signal: no second timer.
            let budget_ms = u32::try_from(config.store_timeout_ms).unwrap_or(u32::MAX);
            let store = UpstashStore {
                url,
                token,
                budget_ms,
            };
            store.read(&keys).await
        }
        StoreKind::Kv => {
            let Ok(kv) = env.kv("SESSIONS") else {
                return Decision::Unknown;
            };
            let store = KvStore(kv);
            let budget = Duration::from_millis(config.store_timeout_ms);
            with_timeout(budget, |_| store.read(&keys)).await.flatten()
        }
    };
    match values {
        Some(values) => store::decide(claims, &values, now()),
        None => Decision::Unknown,
    }
}

/// The origin's rate-limited check from Postgres, for when the store cannot answer.
/// `None` = no answer either: the caller answers 503, never 200 and never 401.
async fn fallback(config: &Config, claims: &VerifiedClaims, ip: &str) -> Option<Option<String>> {
    let path = "/internal/validate";
    let id = Identity {
        user_id: claims.subject(),
        session_id: claims.session_id(),
        scope: claims.scope(),
    };
    let headers = Headers::new();
    for (name, value) in
        forward::proof_headers(&config.keys.validate, "POST", path, ip, Some(id), now())
    {
        headers.set(name, &value).ok()?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers);
    let request = Request::new_with_init(&format!("{}{path}", config.origin_url), &init).ok()?;
    with_timeout(
        Duration::from_millis(config.store_timeout_ms),
        |signal| async move {
            let mut response = Fetch::Request(request)
                .send_with_signal(&signal)
                .await
                .ok()?;
            if response.status_code() != 200 {
                return None;
            }
            store::parse_fallback(&response.bytes().await.ok()?)
        },
    )
    .await
    .flatten()
}
