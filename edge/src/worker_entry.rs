//! The worker's entry: I/O around the plain functions of this crate. Kept thin on
//! purpose; every decision is made (and tested) elsewhere. The hot path (verify, one
//! store read, forward) talks to the platform through `web_sys` directly: one native
//! copy of the headers, no URL re-parse, the platform's own timeout signal.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use shared::proof::Identity;
use shared::{KeySet, VerifiedClaims, VerifyingKey};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{
    AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Result, event,
};

use crate::analytics::{self, Cache, Missing, Outcome, Reason, Via};
use crate::cache::{KeyCache, KeyLookup, VerifiedCache, jwks_max_age, peek_kid};
use crate::config::{Config, StoreKind};
use crate::cors::{Cors, Preflight};
use crate::pending::Pending;
use crate::plan::{Held, Incoming};
use crate::reply::Reply;
use crate::request::{BodySize, Credentials, has_body, is_forwarded_method};
use crate::route::Route;
use crate::store::{self, Decision};
use crate::verify::PlatformFailed;
use crate::{forward, request};

/// How often a request waiting for another request's JWKS fetch looks again, ms.
const JWKS_WAIT_STEP_MS: u64 = 5;

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
    static VERIFIED: RefCell<VerifiedCache> = RefCell::new(VerifiedCache::new(10_000));
    /// Protected requests between the entry's calls (`plan` → `planVerified` →
    /// `planStored`), by the number their steps carry.
    /// Numbers start at a random point per instance: should the instance ever be
    /// replaced without the entry noticing (it counts the resets it makes), an old
    /// number is still all but certain to find nothing in the new one.
    static PENDING: RefCell<Pending<Held>> =
        RefCell::new(Pending::starting_at(1024, (js_sys::Math::random() * 4_294_967_296.0) as u32));
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::default());
    /// When the JWKS fetch in flight started, if one is: one per isolate.
    static KEY_FETCH: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    /// Whether the `ANALYTICS` binding exists, read once per isolate.
    static ANALYTICS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    /// Imported WebCrypto keys by their raw bytes, not their `kid`: new material
    /// under an old `kid` is never checked against the old key.
    static CRYPTO_KEYS: RefCell<HashMap<[u8; 32], web_sys::CryptoKey>> = RefCell::new(HashMap::new());
}

#[cfg(feature = "upstash-reqwest")]
thread_local! {
    /// One client per isolate (the project's HTTP client).
    static HTTP: reqwest::Client = reqwest::Client::new();
}

/// The time in milliseconds since the epoch: `Date.now()`, one call returning a
/// number. `worker::Date::now()` makes a `Date` object and calls into JavaScript twice;
/// a CPU profile of the isolate put that at 3 % of a forward.
fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

fn now() -> u64 {
    now_ms() / 1000
}

/// The settings, read and checked once per isolate. A bad one is an error naming it,
/// so the worker never runs half-configured.
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

/// Writes out a reply the edge made up.
fn render(reply: &Reply) -> Result<web_sys::Response> {
    let headers = web_sys::Headers::new()?;
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(reply.status);
    init.set_headers(&headers);
    Ok(web_sys::Response::new_with_opt_str_and_init(
        Some(&reply.body),
        &init,
    )?)
}

/// The module entry's first call for every request (`edge/js/index.js`, the steps of
/// [`crate::plan`]): a forward plan, the signature to check, or the session read, as
/// one string; `undefined` and the entry calls [`fetch`], the full path.
/// Synchronous, with the request's parts as plain strings: no futures, no object
/// crossing per header. A protected request's parts stay here ([`PENDING`]) under the
/// number its step carries, for the calls that follow.
#[allow(clippy::too_many_arguments)]
#[wasm_bindgen::prelude::wasm_bindgen(js_name = plan)]
pub fn plan(
    env: &Env,
    method: String,
    url: String,
    header_names: String,
    client_ip: Option<String>,
    content_length: Option<String>,
    authorization: Option<String>,
) -> Option<String> {
    let config = config(env).ok()?;
    let incoming = Incoming {
        method: &method,
        url: &url,
        header_names: &header_names,
        client_ip: client_ip.as_deref(),
        content_length: content_length.as_deref(),
    };
    let now = now();
    if let Some(plan) = crate::plan::forward_plan(&config, &incoming, now) {
        return Some(plan.encode());
    }
    if !crate::plan::is_plain_protected(&config, &incoming) {
        return None;
    }
    // Refusals of the credentials take the full path, which words and records them.
    let Credentials::Bearer(token) = request::credentials(authorization.as_deref()) else {
        return None;
    };
    let cached = VERIFIED.with(|c| {
        c.borrow_mut()
            .get(token, now, config.validator.limits().leeway)
    });
    let kid = match &cached {
        Some(claims) => claims.kid().to_string(),
        None => peek_kid(token)?,
    };
    let keys = usable_keys(&config, &kid, now)?;
    let claims = cached.filter(|c| keys.get(c.kid()).is_some());
    // A token that fails before its signature matters is refused by the full path.
    let check = match claims {
        Some(_) => None,
        None => Some(
            crate::verify::signature_check(&config.validator, token.as_bytes(), &keys, now).ok()?,
        ),
    };
    let held = Held {
        token: token.to_string(),
        method,
        url,
        header_names,
        client_ip,
        cache_hit: claims.is_some(),
        claims,
    };
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let (number, held) = pending.insert(held);
        let step = match (&check, &held.claims) {
            (Some(check), _) => Some(crate::plan::verify_step(number, check)),
            (None, Some(claims)) => read_step(number, &config, claims),
            (None, None) => None,
        };
        if step.is_none() {
            pending.take(number);
        }
        step
    })
}

/// The entry's call after WebCrypto checked the signature [`plan`] asked for with
/// `key_hex`, for the request `number`: the session read, or the refusal (a
/// `Response`).
#[wasm_bindgen::prelude::wasm_bindgen(js_name = planVerified)]
pub fn plan_verified(
    env: &Env,
    number: u32,
    key_hex: &str,
    valid: bool,
    elapsed_ms: f64,
) -> JsValue {
    let step = || -> Option<std::result::Result<String, shared::Error>> {
        let config = config(env).ok()?;
        // The number is used once: taken here whatever happens, and a verified request
        // goes on under a new one.
        PENDING.with(|p| {
            let mut pending = p.borrow_mut();
            let mut held = pending.take(number)?;
            let now = now();
            let keys = usable_keys(&config, &peek_kid(&held.token)?, now)?;
            let key = crate::plan::unhex::<32>(key_hex)?;
            let verified = crate::verify::with_platform_answer(
                &config.validator,
                held.token.as_bytes(),
                &keys,
                now,
                &key,
                valid,
            );
            match verified {
                Ok(claims) => {
                    VERIFIED.with(|c| c.borrow_mut().insert(&held.token, claims.clone()));
                    held.claims = Some(claims);
                    let (number, held) = pending.insert(held);
                    read_step(number, &config, held.claims.as_ref()?).map(Ok)
                }
                Err(e) => Some(Err(e)),
            }
        })
    };
    match step() {
        None => JsValue::UNDEFINED,
        Some(Ok(step)) => step.into(),
        Some(Err(e)) => {
            worker::console_log!("token refused: {e}");
            let timings = Timings {
                cache: Cache::Miss,
                ..Timings::default()
            };
            record(env, Outcome::Invalid(Reason::of(&e)), &timings, elapsed_ms);
            render_value(&Reply::invalid_token())
        }
    }
}

/// The entry's call with the store's answer for the request `number` (`status` 0:
/// none): the forward plan, the refusal (a `Response`), `undefined` when the store
/// could not say (the entry calls [`check_unknown`]), or `null` when the request is
/// no longer held or its claims no longer usable (the entry takes the full path).
#[wasm_bindgen::prelude::wasm_bindgen(js_name = planStored)]
pub fn plan_stored(
    env: &Env,
    number: u32,
    status: u16,
    body: &str,
    store_ms: f64,
    elapsed_ms: f64,
) -> JsValue {
    let now = now();
    let Ok(config) = config(env) else {
        return JsValue::UNDEFINED;
    };
    // Not held (its slot reused), or no longer usable (expired, or its key removed,
    // while the store was read): the full path decides from the request again.
    let Some(held) = PENDING.with(|p| p.borrow_mut().take(number)) else {
        return JsValue::NULL;
    };
    let keys = held
        .claims
        .as_ref()
        .and_then(|c| usable_keys(&config, c.kid(), now));
    let leeway = config.validator.limits().leeway;
    let Some(claims) = held.usable_claims(keys.as_deref(), now, leeway) else {
        return JsValue::NULL;
    };
    let decision = store::parse_mget(status, body.as_bytes()).map_or(Decision::Unknown, |values| {
        store::decide(claims, &values, now)
    });
    let timings = Timings {
        cache: if held.cache_hit {
            Cache::Hit
        } else {
            Cache::Miss
        },
        store_ms,
        fallback_ms: 0.0,
    };
    match decision {
        Decision::Forward(session) => {
            record(env, Outcome::Valid(Via::Store), &timings, elapsed_ms);
            let id = Identity {
                user_id: claims.subject(),
                session_id: claims.session_id(),
                scope: &session.scope,
            };
            crate::plan::forward_with_identity(&config, &held.incoming(), id, now)
                .map_or(JsValue::UNDEFINED, |plan| plan.encode().into())
        }
        Decision::Reject => {
            record(env, Outcome::Revoked(Via::Store), &timings, elapsed_ms);
            render_value(&Reply::invalid_token())
        }
        Decision::Unknown => JsValue::UNDEFINED,
    }
}

/// The entry's call when the store could not say after [`plan_stored`]: the origin's
/// check and the answer, as the full path would give them, without reading the store
/// a second time.
#[wasm_bindgen::prelude::wasm_bindgen(js_name = checkUnknown)]
pub async fn check_unknown(
    req: web_sys::Request,
    env: Env,
    authorization: Option<String>,
    cache_hit: bool,
    store_ms: f64,
    started: f64,
) -> std::result::Result<web_sys::Response, JsValue> {
    let failed = |e: worker::Error| JsValue::from_str(&e.to_string());
    let Some((config, claims)) = verified_claims(&env, authorization.as_deref(), now()) else {
        // Gone from the cache in between: the full path checks it all again.
        let config = config(&env).map_err(|e| JsValue::from_str(&e))?;
        return handle(&req, &req.method(), &env, &config, None)
            .await
            .map_err(failed);
    };
    let url = req.url();
    let Some((_, path_and_query)) = forward::split_url(&url) else {
        return render(&Reply::not_found()).map_err(failed);
    };
    let method = req.method();
    let target = Target {
        method: &method,
        path_and_query,
        client_ip: client_ip(&req),
        timeout_ms: config.forward_timeout_ms,
    };
    let mut timings = Timings {
        cache: if cache_hit { Cache::Hit } else { Cache::Miss },
        store_ms,
        fallback_ms: 0.0,
    };
    let checked = unknown_session(&config, claims, &target.client_ip, &mut timings).await;
    finish(&req, &target, &env, &config, checked, &timings, started)
        .await
        .map_err(failed)
}

/// The settings and the cached verification of the bearer token in `authorization`.
fn verified_claims(
    env: &Env,
    authorization: Option<&str>,
    now: u64,
) -> Option<(Rc<Config>, VerifiedClaims)> {
    let config = config(env).ok()?;
    let Credentials::Bearer(token) = request::credentials(authorization) else {
        return None;
    };
    let leeway = config.validator.limits().leeway;
    let claims = VERIFIED.with(|c| c.borrow_mut().get(token, now, leeway))?;
    Some((config, claims))
}

/// The key set that can decide a token with `kid` now, without waiting: `None` when
/// it must be fetched first (or is being fetched), and the full path does that.
fn usable_keys(config: &Config, kid: &str, now: u64) -> Option<Rc<KeySet>> {
    if let Some(keys) = &config.static_keys {
        return Some(keys.clone());
    }
    if KEY_FETCH.get().is_some()
        || KEYS.with(|k| {
            k.borrow()
                .should_fetch(Some(kid), now, config.jwks_refetch_secs)
        })
    {
        return None;
    }
    match KEYS.with(|k| k.borrow().lookup(Some(kid), now, config.jwks_stale_secs)) {
        KeyLookup::Keys(keys) => Some(keys),
        KeyLookup::Unavailable => None,
    }
}

/// The session read of a verified token (Upstash; [`plan`] takes no other store).
fn read_step(number: u32, config: &Config, claims: &VerifiedClaims) -> Option<String> {
    let StoreKind::Upstash { url, token } = &config.store else {
        return None;
    };
    let keys = store::keys(&config.key_prefix, claims, false);
    Some(crate::plan::read_step(
        number,
        &store::mget_url(url, &keys),
        token,
        config.store_timeout_ms,
    ))
}

fn render_value(reply: &Reply) -> JsValue {
    render(reply).map_or(JsValue::UNDEFINED, JsValue::from)
}

/// The answer when a planned forward failed with `error` (a `TimeoutError` when the
/// plan's budget ran out).
#[wasm_bindgen::prelude::wasm_bindgen(js_name = forwardFailed)]
pub fn forward_failed(error: JsValue) -> Result<web_sys::Response> {
    let name = js_sys::Reflect::get(&error, &"name".into())
        .ok()
        .and_then(|n| n.as_string())
        .unwrap_or_default();
    if name != "TimeoutError" {
        worker::console_error!("forwarding failed: {error:?}");
    }
    render(&forward::failed_reply(&name))
}

/// The entry takes and returns the platform's own `Request` and `Response`: a
/// forwarded response goes back as it came, without being rebuilt around its body.
/// It never throws into the runtime: whatever fails inside becomes a JSON 500 and
/// the isolate keeps serving.
#[event(fetch)]
async fn fetch(
    req: web_sys::Request,
    env: Env,
    _ctx: worker::Context,
) -> Result<web_sys::Response> {
    let config = match config(&env) {
        Ok(config) => config,
        Err(e) => {
            worker::console_error!("edge configuration: {e}");
            return render(&Reply::server_error("edge misconfigured"));
        }
    };
    let method = req.method();
    let cors = config.cors != Cors::default();
    let origin = req.headers().get("origin").ok().flatten();
    let response = match handle(&req, &method, &env, &config, origin.as_deref()).await {
        Ok(response) => response,
        Err(e) => {
            worker::console_error!("edge internal error: {e}");
            render(&Reply::server_error("internal error"))?
        }
    };
    if !cors {
        return Ok(response);
    }
    with_cors(response, &config.cors, origin.as_deref()).or_else(|e| {
        worker::console_error!("edge internal error: {e}");
        render(&Reply::server_error("internal error"))
    })
}

/// Adds the CORS headers. A fetched response's headers are immutable, so it is
/// wrapped in a new one around the same body stream (nothing is copied).
fn with_cors(
    inner: web_sys::Response,
    cors: &Cors,
    origin: Option<&str>,
) -> Result<web_sys::Response> {
    let headers = cors.response_headers(origin);
    let init = web_sys::ResponseInit::new();
    init.set_status(inner.status());
    init.set_status_text(&inner.status_text());
    let copy = web_sys::Headers::new_with_headers(&inner.headers())?;
    for (name, value) in headers {
        if name == "vary" {
            let existing = copy.get("vary").ok().flatten();
            if let Some(vary) = Cors::vary_with_origin(existing.as_deref()) {
                copy.set("vary", &vary)?;
            }
        } else {
            copy.set(name, &value)?;
        }
    }
    init.set_headers(&copy);
    Ok(web_sys::Response::new_with_opt_readable_stream_and_init(
        inner.body().as_ref(),
        &init,
    )?)
}

async fn handle(
    raw: &web_sys::Request,
    method: &str,
    env: &Env,
    config: &Config,
    origin: Option<&str>,
) -> Result<web_sys::Response> {
    let url = raw.url();
    let Some((path, path_and_query)) = forward::split_url(&url) else {
        return render(&Reply::not_found());
    };
    let route = config.routes.classify(path);
    match route {
        Route::NotFound => return render(&Reply::not_found()),
        Route::KvSync => {
            let response = kv_sync(
                Request::from(<web_sys::Request as Clone>::clone(raw)),
                env,
                config,
            )
            .await?;
            return Ok(response.into());
        }
        Route::Origin | Route::Protected | Route::Public => {}
    }
    let request_method = if method == "OPTIONS" {
        raw.headers()
            .get("access-control-request-method")
            .ok()
            .flatten()
    } else {
        None
    };
    if Cors::is_preflight(method, origin, request_method.as_deref()) {
        let asked = raw
            .headers()
            .get("access-control-request-headers")
            .ok()
            .flatten();
        return match config.cors.preflight(
            origin.unwrap_or_default(),
            request_method.as_deref().unwrap_or_default(),
            asked.as_deref(),
        ) {
            Preflight::Allowed(headers) => {
                let out = web_sys::Headers::new()?;
                for (name, value) in headers {
                    out.set(name, &value)?;
                }
                let init = web_sys::ResponseInit::new();
                init.set_status(204);
                init.set_headers(&out);
                Ok(web_sys::Response::new_with_opt_str_and_init(None, &init)?)
            }
            // Answered here without CORS headers: the browser refuses the request.
            Preflight::Refused(why) => render(&Reply::forbidden(why)),
        };
    }
    // A browser request from an origin neither ours nor listed goes nowhere: the
    // origin behind never sees it, cookie or not (DESIGN §7).
    if !config.cors.admits(origin, &url) {
        return render(&Reply::forbidden("origin not allowed"));
    }
    if !is_forwarded_method(method) {
        return render(&Reply::method_not_allowed());
    }
    let target = Target {
        method,
        path_and_query,
        client_ip: client_ip(raw),
        timeout_ms: config.forward_timeout_ms,
    };
    match route {
        Route::Origin => {
            let body = match auth_body(raw, method).await? {
                Ok(body) => body,
                Err(reply) => return render(&reply),
            };
            send(
                raw,
                &target,
                (&config.origin_url, &config.origin_authority),
                &config.keys.origin,
                None,
                true,
                body,
            )
            .await
        }
        Route::Public => {
            let body = has_body(method)
                .then(|| raw.body().map(JsValue::from))
                .flatten();
            let keep = config.forward_authorization_to_public;
            send(
                raw,
                &target,
                (&config.upstream_url, &config.upstream_authority),
                &config.keys.upstream,
                None,
                keep,
                body,
            )
            .await
        }
        _ => protected(raw, &target, env, config).await,
    }
}

/// The body of a request bound for `/auth/*`: refused with 413 over
/// [`request::AUTH_BODY_LIMIT`] before anything is forwarded. A declared length is
/// trusted (the runtime enforces it) and the body streams through; an undeclared one
/// is read, up to the runtime's own limit, and measured.
async fn auth_body(
    raw: &web_sys::Request,
    method: &str,
) -> Result<std::result::Result<Option<JsValue>, Reply>> {
    if !has_body(method) {
        return Ok(Ok(None));
    }
    let length = raw.headers().get("content-length").ok().flatten();
    match request::auth_body_size(length.as_deref()) {
        BodySize::TooLarge => Ok(Err(Reply::too_large())),
        BodySize::Within => Ok(Ok(raw.body().map(JsValue::from))),
        BodySize::Unknown => {
            let Some(_) = raw.body() else {
                return Ok(Ok(None));
            };
            let buffer: js_sys::ArrayBuffer =
                JsFuture::from(raw.array_buffer()?).await?.unchecked_into();
            if u64::from(buffer.byte_length()) > request::AUTH_BODY_LIMIT {
                return Ok(Err(Reply::too_large()));
            }
            Ok(Ok(Some(buffer.into())))
        }
    }
}

/// Applies the origin's signed KV operations (only when the store is KV).
async fn kv_sync(mut req: Request, env: &Env, config: &Config) -> Result<worker::Response> {
    if config.store != StoreKind::Kv || req.method() != Method::Post {
        return Ok(render(&Reply::not_found())?.into());
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
            let reply = Reply::error(401, "invalid_client", "bad or missing proof");
            return Ok(render(&reply)?.into());
        }
        Err(crate::sync::Refused::Invalid(why)) => {
            return Ok(render(&Reply::error(400, "invalid_request", why))?.into());
        }
    };
    let kv = env.kv("SESSIONS")?;
    for op in ops {
        // The rules of crate::sync::decide: newer versions and later not-befores only.
        let current = kv.get(op.key()).text().await?;
        let Some(write) = crate::sync::decide(&op, current.as_deref(), now_ms()) else {
            continue;
        };
        let mut put = kv.put(op.key(), write.value)?;
        if let Some(expiration) = write.expiration {
            put = put.expiration(expiration);
        }
        put.execute().await?;
    }
    Ok(worker::Response::empty()?.with_status(204))
}

/// The client's address as Cloudflare saw it.
fn client_ip(raw: &web_sys::Request) -> String {
    raw.headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| forward::UNKNOWN_CLIENT_IP.into())
}

/// What a forwarded request is: its method, path with raw query, and the client; and
/// the edge's budget for its answer (ms, 0: none).
struct Target<'a> {
    method: &'a str,
    path_and_query: &'a str,
    client_ip: String,
    timeout_ms: u64,
}

/// Sends the request to `base` + its path and query: headers a client may not set are
/// removed (and `authorization` unless `keep_authorization`), the client's address
/// (and on a protected path the identity) added with a proof for `base`'s `authority`
/// signed by `key`, redirects not followed, within the target's budget if it has one.
async fn send(
    raw: &web_sys::Request,
    target: &Target<'_>,
    (base, authority): (&str, &str),
    key: &shared::proof::MacKey,
    identity: Option<Identity<'_>>,
    keep_authorization: bool,
    body: Option<JsValue>,
) -> Result<web_sys::Response> {
    // One native copy, then the few deletions: cheaper than rebuilding header by header.
    let headers = web_sys::Headers::new_with_headers(&raw.headers())?;
    let mut dropped = Vec::new();
    for name in js_sys::try_iter(&headers.keys())?.into_iter().flatten() {
        let name = name?.as_string().unwrap_or_default();
        if !forward::is_forwarded(&name, keep_authorization) {
            dropped.push(name);
        }
    }
    for name in dropped {
        headers.delete(&name)?;
    }
    for (name, value) in forward::proof_headers(
        key,
        authority,
        target.method,
        target.path_and_query,
        &target.client_ip,
        identity,
        now(),
    ) {
        headers.set(name, &value)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method(target.method);
    init.set_headers(&headers);
    init.set_redirect(web_sys::RequestRedirect::Manual);
    if target.timeout_ms > 0 {
        let budget = u32::try_from(target.timeout_ms).unwrap_or(u32::MAX);
        init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(budget)));
    }
    if let Some(body) = body {
        init.set_body(&body);
    }
    let url = format!("{base}{}", target.path_and_query);
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    match JsFuture::from(global.fetch_with_str_and_init(&url, &init)).await {
        Ok(response) => Ok(response.unchecked_into()),
        Err(e) => {
            let name = js_sys::Reflect::get(&e, &"name".into())
                .ok()
                .and_then(|n| n.as_string());
            if name.as_deref() != Some("TimeoutError") {
                worker::console_error!("forwarding failed: {e:?}");
            }
            render(&forward::failed_reply(name.as_deref().unwrap_or_default()))
        }
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

async fn protected(
    raw: &web_sys::Request,
    target: &Target<'_>,
    env: &Env,
    config: &Config,
) -> Result<web_sys::Response> {
    let started = js_sys::Date::now();
    let mut timings = Timings::default();
    let checked = check(raw, target, env, config, &mut timings).await;
    finish(raw, target, env, config, checked, &timings, started).await
}

/// Records the decision (analytics) and answers it: the refusal, or the forward with
/// the identity and the record's scope.
async fn finish(
    raw: &web_sys::Request,
    target: &Target<'_>,
    env: &Env,
    config: &Config,
    checked: std::result::Result<(VerifiedClaims, String, Via), Refusal>,
    timings: &Timings,
    started: f64,
) -> Result<web_sys::Response> {
    let outcome = match &checked {
        Ok((_, _, via)) => Outcome::Valid(*via),
        Err((_, outcome)) => *outcome,
    };
    record(env, outcome, timings, js_sys::Date::now() - started);
    let (claims, scope) = match checked {
        Ok((claims, scope, _)) => (claims, scope),
        Err((reply, _)) => return render(&reply),
    };
    let id = Identity {
        user_id: claims.subject(),
        session_id: claims.session_id(),
        scope: &scope,
    };
    let body = has_body(target.method)
        .then(|| raw.body().map(JsValue::from))
        .flatten();
    send(
        raw,
        target,
        (&config.upstream_url, &config.upstream_authority),
        &config.keys.upstream,
        Some(id),
        false,
        body,
    )
    .await
}

/// Writes a decision's data point when the `ANALYTICS` binding exists (looked up once
/// per isolate); nothing otherwise.
fn record(env: &Env, outcome: Outcome, timings: &Timings, total_ms: f64) {
    let analytics = ANALYTICS.get().unwrap_or_else(|| {
        let bound = env.analytics_engine("ANALYTICS").is_ok();
        ANALYTICS.set(Some(bound));
        bound
    });
    let Some(dataset) = analytics
        .then(|| env.analytics_engine("ANALYTICS").ok())
        .flatten()
    else {
        return;
    };
    let point = analytics::data_point(
        outcome,
        timings.cache,
        timings.store_ms,
        timings.fallback_ms,
        total_ms,
    );
    let written = worker::AnalyticsEngineDataPointBuilder::new()
        .indexes([point.index])
        .blobs(point.blobs)
        .doubles(point.doubles)
        .write_to(&dataset);
    if let Err(e) = written {
        worker::console_error!("analytics: {e}");
    }
}

/// What a decision cost, for the analytics data point.
struct Timings {
    cache: Cache,
    store_ms: f64,
    fallback_ms: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            cache: Cache::NotUsed,
            store_ms: 0.0,
            fallback_ms: 0.0,
        }
    }
}

type Refusal = (Reply, Outcome);

/// The checks of a protected path: credentials, token, session (store, then the
/// origin's fallback). The scope is the record's, so narrowed permissions apply at once.
async fn check(
    raw: &web_sys::Request,
    target: &Target<'_>,
    env: &Env,
    config: &Config,
    timings: &mut Timings,
) -> std::result::Result<(VerifiedClaims, String, Via), Refusal> {
    let authorization = raw.headers().get("authorization").ok().flatten();
    let token = match request::credentials(authorization.as_deref()) {
        Credentials::Bearer(token) => token,
        Credentials::Missing => {
            return Err((Reply::missing_token(), Outcome::Invalid(Reason::Missing)));
        }
        Credentials::Invalid => {
            return Err((Reply::invalid_token(), Outcome::Invalid(Reason::Malformed)));
        }
        Credentials::Ambiguous => {
            return Err((
                Reply::ambiguous_credentials(),
                Outcome::Invalid(Reason::Ambiguous),
            ));
        }
    };
    let claims = verified(token, config, timings).await?;
    let store_started = js_sys::Date::now();
    let decision = session(env, config, &claims).await;
    timings.store_ms = js_sys::Date::now() - store_started;
    match decision {
        Decision::Forward(record) => Ok((claims, record.scope, Via::Store)),
        Decision::Reject => Err((Reply::invalid_token(), Outcome::Revoked(Via::Store))),
        Decision::Unknown => unknown_session(config, claims, &target.client_ip, timings).await,
    }
}

/// When the store could not say: the origin's check, then its answer.
async fn unknown_session(
    config: &Config,
    claims: VerifiedClaims,
    client_ip: &str,
    timings: &mut Timings,
) -> std::result::Result<(VerifiedClaims, String, Via), Refusal> {
    let fallback_started = js_sys::Date::now();
    let answer = fallback(config, &claims, client_ip).await;
    timings.fallback_ms = js_sys::Date::now() - fallback_started;
    let outcome = match &answer {
        // Only read on refusal: an answer that refuses is "not active".
        Some(_) => Outcome::Revoked(Via::Fallback),
        None => Outcome::Unavailable(Missing::Session),
    };
    match crate::reply::after_fallback(answer) {
        Ok(scope) => Ok((claims, scope, Via::Fallback)),
        Err(reply) => Err((reply, outcome)),
    }
}

/// Signature and claims, from the verified-token cache or WebCrypto. A cached token
/// still needs its key in a usable set: a removed key stops verifying, cached tokens
/// included.
async fn verified(
    token: &str,
    config: &Config,
    timings: &mut Timings,
) -> std::result::Result<VerifiedClaims, Refusal> {
    let now = now();
    let leeway = config.validator.limits().leeway;
    let cached = VERIFIED.with(|c| c.borrow_mut().get(token, now, leeway));
    let kid = match &cached {
        Some(claims) => Some(claims.kid().to_string()),
        None => peek_kid(token),
    };
    let keys = match key_set(config, kid.as_deref(), now).await {
        KeyLookup::Keys(keys) => keys,
        KeyLookup::Unavailable => {
            return Err((
                Reply::unavailable("the signing keys cannot be fetched right now; retry"),
                Outcome::Unavailable(Missing::Keys),
            ));
        }
    };
    if let Some(claims) = cached.filter(|c| keys.get(c.kid()).is_some()) {
        timings.cache = Cache::Hit;
        return Ok(claims);
    }
    timings.cache = Cache::Miss;
    let claims = crate::verify::verify(
        &config.validator,
        token.as_bytes(),
        &keys,
        now,
        |key, message, signature| webcrypto_verify(key.clone(), message.to_vec(), *signature),
    )
    .await
    .map_err(|e| {
        worker::console_log!("token refused: {e}");
        (Reply::invalid_token(), Outcome::Invalid(Reason::of(&e)))
    })?;
    VERIFIED.with(|c| c.borrow_mut().insert(token, claims.clone()));
    Ok(claims)
}

/// The trusted keys: from configuration, or the origin's JWKS under the rules of
/// [`KeyCache`]. One fetch per isolate at a time. A request that cannot decide without
/// it waits for it by looking again on its own timer: the Workers runtime does not let
/// one request await I/O started by another (the waiter is cancelled as hung).
async fn key_set(config: &Config, kid: Option<&str>, now: u64) -> KeyLookup {
    if let Some(keys) = &config.static_keys {
        return KeyLookup::Keys(keys.clone());
    }
    let lookup = || KEYS.with(|k| k.borrow().lookup(kid, now, config.jwks_stale_secs));
    let started_at = now_ms();
    if KEY_FETCH.get().is_none() {
        if KEYS.with(|k| k.borrow().should_fetch(kid, now, config.jwks_refetch_secs)) {
            KEYS.with(|k| k.borrow_mut().attempted(now));
            fetch_keys(&config.origin_url, config.store_timeout_ms).await;
        }
        return lookup();
    }
    let decided = match lookup() {
        KeyLookup::Keys(keys) => kid.is_some_and(|kid| keys.get(kid).is_some()),
        KeyLookup::Unavailable => false,
    };
    if !decided {
        let deadline = started_at + config.store_timeout_ms + 100;
        while KEY_FETCH.get().is_some() && now_ms() < deadline {
            Delay::from(Duration::from_millis(JWKS_WAIT_STEP_MS)).await;
        }
    }
    lookup()
}

/// Marks a JWKS fetch in flight for as long as it lives: cleared when the fetch ends
/// or when its request is cancelled and the future dropped.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        KEY_FETCH.set(Some(now_ms() as f64));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        KEY_FETCH.set(None);
    }
}

/// Fetches the origin's JWKS and records the outcome; when a trusted key is gone or
/// changed, every verification and import made with the old set is forgotten.
async fn fetch_keys(origin_url: &str, timeout_ms: u64) {
    let _in_flight = InFlight::start();
    let url = format!("{origin_url}/.well-known/jwks.json");
    let fetched = with_timeout(Duration::from_millis(timeout_ms), |signal| async move {
        let mut response = Fetch::Url(url.parse().ok()?)
            .send_with_signal(&signal)
            .await
            .ok()?;
        if response.status_code() != 200 {
            return None;
        }
        let cache_control = response.headers().get("cache-control").ok().flatten();
        let max_age = jwks_max_age(cache_control.as_deref());
        let keys = KeySet::from_jwks(&response.bytes().await.ok()?).ok()?;
        Some((keys, max_age))
    })
    .await
    .flatten();
    if fetched.is_none() {
        worker::console_error!("the origin's JWKS could not be fetched");
    }
    if KEYS.with(|k| k.borrow_mut().fetched(fetched, now())) {
        VERIFIED.with(|c| *c.borrow_mut() = VerifiedCache::new(10_000));
        CRYPTO_KEYS.with(|c| c.borrow_mut().clear());
    }
}

/// Ed25519 through WebCrypto, about twice as fast as verifying in Wasm. A throw is
/// [`PlatformFailed`], and the caller verifies in Wasm instead.
async fn webcrypto_verify(
    key: VerifyingKey,
    message: Vec<u8>,
    signature: [u8; 64],
) -> std::result::Result<bool, PlatformFailed> {
    let subtle = subtle().map_err(|_| PlatformFailed)?;
    let raw_key = *key.as_bytes();
    let crypto_key = match CRYPTO_KEYS.with(|c| c.borrow().get(&raw_key).cloned()) {
        Some(k) => k,
        None => {
            let raw = js_sys::Uint8Array::from(&raw_key[..]);
            let usages = js_sys::Array::of1(&"verify".into());
            let promise = subtle
                .import_key_with_str("raw", &raw, "Ed25519", false, &usages)
                .map_err(|_| PlatformFailed)?;
            let imported: web_sys::CryptoKey = JsFuture::from(promise)
                .await
                .map_err(|_| PlatformFailed)?
                .unchecked_into();
            CRYPTO_KEYS.with(|c| c.borrow_mut().insert(raw_key, imported.clone()));
            imported
        }
    };
    let promise = subtle
        .verify_with_str_and_u8_array_and_u8_array("Ed25519", &crypto_key, &signature, &message)
        .map_err(|_| PlatformFailed)?;
    JsFuture::from(promise)
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .ok_or(PlatformFailed)
}

fn subtle() -> std::result::Result<web_sys::SubtleCrypto, wasm_bindgen::JsValue> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())?;
    Ok(js_sys::Reflect::get(&crypto, &"subtle".into())?.unchecked_into())
}

/// Where session records are read from: two real implementations, one per store.
trait SessionStore {
    /// The record, user not-before and freshness marker, in one round trip; `None` when the
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
        let init = web_sys::RequestInit::new();
        init.set_headers(&headers);
        init.set_cache(web_sys::RequestCache::NoStore);
        init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(
            self.budget_ms,
        )));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let url = store::mget_url(self.url, keys);
        let response: web_sys::Response =
            JsFuture::from(global.fetch_with_str_and_init(&url, &init))
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
            .get(store::mget_url(self.url, keys))
            .bearer_auth(self.token)
            .timeout(Duration::from_millis(self.budget_ms.into()))
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
        let (record, nbf, marker) = futures::future::join3(
            self.0.get(a).text(),
            self.0.get(b).text(),
            self.0.get(c).text(),
        )
        .await;
        Some([record.ok()?, nbf.ok()?, marker.ok()?])
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
    for (name, value) in forward::proof_headers(
        &config.keys.validate,
        &config.origin_authority,
        "POST",
        path,
        ip,
        Some(id),
        now(),
    ) {
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
