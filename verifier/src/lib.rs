//! Verifies our access tokens offline in any JavaScript runtime, with the very
//! validator the edge and the origin use (`shared`), compiled to Wasm and packaged by
//! wasm-pack (`scripts/test-js-verifier` builds it and runs `shared`'s test vectors
//! through it under Node).
//!
//! ```js
//! const { verify } = require("edge-auth-verifier");
//! const jwks = await (await fetch("https://auth.example.com/.well-known/jwks.json")).text();
//! try {
//!   const claims = await verify(token, jwks, { issuer: "https://auth.example.com", audience: "api" });
//!   console.log(claims.sub, claims.scope);
//! } catch (e) {
//!   if (e.name === "VerifyError") console.log(e.code, e.claim); // "expired", "signature", …
//! }
//! ```
//!
//! `verify` checks the Ed25519 signature with the runtime's WebCrypto (native code,
//! several times faster than Ed25519 in Wasm) and everything else here; where
//! WebCrypto has no Ed25519 it falls back to the Wasm implementation. `verifySync`
//! does it all in Wasm, for callers that cannot wait.
//!
//! What it does not know: whether the session is still active. A token verifies
//! until it expires even after logout; the edge's session check is what makes
//! revocation instant (DESIGN §3).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect};
use shared::{KeySet, Validator, VerifiedClaims};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
export interface VerifyOptions {
  /** The `iss` to accept (the origin's ISSUER). */
  issuer: string;
  /** An `aud` to accept (the origin's AUDIENCE). */
  audience: string;
  /** Unix time in seconds; default: now. */
  now?: number;
}
export interface Claims {
  iss: string; sub: string; sid: string; jti: string; scope: string;
  iat: number; nbf: number; exp: number; kid: string;
}
/**
 * What `verify` throws (`name` is "VerifyError"): `code` is stable ("expired",
 * "not_yet_valid", "signature", "unknown_key", "issuer", "audience", "claim",
 * "malformed", … and "key" for an unusable JWK set, "options" for bad options);
 * `claim` names the claim when `code` is "claim".
 */
export interface VerifyError extends Error { name: "VerifyError"; code: string; claim?: string }
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = Date)]
    fn now() -> f64;
    #[wasm_bindgen(js_namespace = JSON)]
    fn stringify(value: &JsValue) -> Option<String>;
    // WebCrypto (`globalThis.crypto.subtle`); a runtime without it throws, caught.
    // The byte views into Wasm memory are copied by the call itself (WebCrypto
    // §14.3: "get a copy of the bytes"), before anything can move them.
    #[wasm_bindgen(js_namespace = ["crypto", "subtle"], js_name = importKey, catch)]
    fn import_key(
        format: &str,
        key: &[u8],
        algorithm: &str,
        extractable: bool,
        usages: &Array,
    ) -> Result<Promise, JsValue>;
    #[wasm_bindgen(js_namespace = ["crypto", "subtle"], js_name = verify, catch)]
    fn subtle_verify(
        algorithm: &str,
        key: &JsValue,
        signature: &[u8],
        data: &[u8],
    ) -> Result<Promise, JsValue>;
}

thread_local! {
    /// The last JWK set parsed, by its text: callers pass the same set on every call,
    /// and parsing it (and validating each key) is a large part of a call.
    static KEYS: RefCell<Option<(String, Rc<KeySet>)>> = const { RefCell::new(None) };
    /// WebCrypto keys imported, by their raw bytes (never by `kid`: new material
    /// under an old `kid` is a new key).
    static CRYPTO_KEYS: RefCell<HashMap<[u8; 32], JsValue>> = RefCell::new(HashMap::new());
}

/// A `VerifyError` to throw.
fn error(code: &str, claim: Option<&str>, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name("VerifyError");
    let _ = Reflect::set(&error, &"code".into(), &code.into());
    if let Some(claim) = claim {
        let _ = Reflect::set(&error, &"claim".into(), &claim.into());
    }
    error.into()
}

fn refused(e: shared::Error) -> JsValue {
    let claim = match e {
        shared::Error::Claim(claim) => Some(claim.name()),
        _ => None,
    };
    error(e.code(), claim, &e.to_string())
}

fn text_option(options: &JsValue, name: &str) -> Result<String, JsValue> {
    Reflect::get(options, &name.into())
        .ok()
        .and_then(|v| v.as_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| error("options", None, &format!("options.{name} must be a string")))
}

fn claims_object(claims: &VerifiedClaims) -> Result<JsValue, JsValue> {
    let object = Object::new();
    let texts = [
        ("iss", claims.issuer()),
        ("sub", claims.subject()),
        ("sid", claims.session_id()),
        ("jti", claims.token_id()),
        ("scope", claims.scope()),
        ("kid", claims.kid()),
    ];
    for (name, value) in texts {
        Reflect::set(&object, &name.into(), &value.into())?;
    }
    let times = [
        ("iat", claims.issued_at()),
        ("nbf", claims.not_before()),
        ("exp", claims.expires_at()),
    ];
    for (name, value) in times {
        Reflect::set(&object, &name.into(), &(value as f64).into())?;
    }
    Ok(object.into())
}

/// What every call checks first: the options, the time and the key set.
struct Call {
    validator: Validator,
    now: u64,
    keys: Rc<KeySet>,
}

fn call(jwks: JsValue, options: JsValue) -> Result<Call, JsValue> {
    if !options.is_object() {
        return Err(error("options", None, "options must be an object"));
    }
    let issuer = text_option(&options, "issuer")?;
    let audience = text_option(&options, "audience")?;
    let at = match Reflect::get(&options, &"now".into()).ok() {
        Some(v) if !(v.is_undefined() || v.is_null()) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| error("options", None, "options.now must be Unix seconds"))?,
        _ => now() / 1000.0,
    };
    let jwks = match jwks.as_string() {
        Some(text) => text,
        None => stringify(&jwks).ok_or_else(|| error("key", None, "jwks is not JSON"))?,
    };
    let keys = KEYS.with(|cache| {
        let mut cache = cache.borrow_mut();
        match cache.as_ref() {
            Some((text, keys)) if *text == jwks => Ok(keys.clone()),
            _ => {
                let keys = Rc::new(KeySet::from_jwks(jwks.as_bytes()).map_err(refused)?);
                *cache = Some((jwks, keys.clone()));
                Ok::<_, JsValue>(keys)
            }
        }
    })?;
    Ok(Call {
        validator: Validator::new(issuer, audience),
        now: at.floor() as u64,
        keys,
    })
}

/// Verifies `token` against `jwks` (the JWK set's JSON text, or the parsed object):
/// the signature (Ed25519 only: the algorithm comes from the key, never the token),
/// the type, every claim, issuer, audience and the times at `options.now` (default:
/// now). Resolves to the claims, or rejects with a `VerifyError`. The signature is
/// checked by the runtime's WebCrypto, or in Wasm where it has no Ed25519.
#[wasm_bindgen(js_name = verify, unchecked_return_type = "Claims")]
pub async fn verify_async(
    token: String,
    #[wasm_bindgen(unchecked_param_type = "string | object")] jwks: JsValue,
    #[wasm_bindgen(unchecked_param_type = "VerifyOptions")] options: JsValue,
) -> Result<JsValue, JsValue> {
    let call = call(jwks, options)?;
    let platform_failed = Rc::new(Cell::new(false));
    let failed = platform_failed.clone();
    let verified = call
        .validator
        .verify_with(
            token.as_bytes(),
            &call.keys,
            call.now,
            |key, message, signature| {
                let (key, message, signature) = (*key.as_bytes(), message.to_vec(), *signature);
                async move {
                    match platform_verify(&key, &signature, &message).await {
                        Some(valid) => valid,
                        None => {
                            failed.set(true);
                            false
                        }
                    }
                }
            },
        )
        .await;
    let verified = if platform_failed.get() {
        call.validator
            .verify(token.as_bytes(), &call.keys, call.now)
    } else {
        verified
    };
    claims_object(&verified.map_err(refused)?)
}

/// WebCrypto's answer, or `None` when it has none (no `crypto.subtle`, no Ed25519).
async fn platform_verify(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> Option<bool> {
    let cached = CRYPTO_KEYS.with(|keys| keys.borrow().get(key).cloned());
    let crypto_key = match cached {
        Some(k) => k,
        None => {
            let usages = Array::of1(&"verify".into());
            let promise = import_key("raw", key, "Ed25519", false, &usages).ok()?;
            let k = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
            CRYPTO_KEYS.with(|keys| {
                let mut keys = keys.borrow_mut();
                // A key set rotates slowly; a bound keeps a hostile caller from
                // growing this without end.
                if keys.len() >= 64 {
                    keys.clear();
                }
                keys.insert(*key, k.clone());
            });
            k
        }
    };
    let promise = subtle_verify("Ed25519", &crypto_key, signature, message).ok()?;
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .ok()?
        .as_bool()
}

/// [`verify_async`] entirely in Wasm, synchronously: returns the claims or throws a
/// `VerifyError`.
#[wasm_bindgen(js_name = verifySync, unchecked_return_type = "Claims")]
pub fn verify_sync(
    token: &str,
    #[wasm_bindgen(unchecked_param_type = "string | object")] jwks: JsValue,
    #[wasm_bindgen(unchecked_param_type = "VerifyOptions")] options: JsValue,
) -> Result<JsValue, JsValue> {
    let call = call(jwks, options)?;
    let claims = call
        .validator
        .verify(token.as_bytes(), &call.keys, call.now)
        .map_err(refused)?;
    claims_object(&claims)
}
