//! Verifies our access tokens offline in any JavaScript runtime, with the very
//! validator the edge and the origin use (`shared`), compiled to Wasm and packaged by
//! wasm-pack (`scripts/test-js-verifier` builds it and runs `shared`'s test vectors
//! through it under Node).
//!
//! ```js
//! const { verify } = require("edge-auth-verifier");
//! const jwks = await (await fetch("https://auth.example.com/.well-known/jwks.json")).text();
//! try {
//!   const claims = verify(token, jwks, { issuer: "https://auth.example.com", audience: "api" });
//!   console.log(claims.sub, claims.scope);
//! } catch (e) {
//!   if (e.name === "VerifyError") console.log(e.code, e.claim); // "expired", "signature", …
//! }
//! ```
//!
//! What it does not know: whether the session is still active. A token verifies
//! until it expires even after logout; the edge's session check is what makes
//! revocation instant (DESIGN §3).

use std::cell::RefCell;

use js_sys::{Object, Reflect};
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
}

thread_local! {
    /// The last JWK set parsed, by its text: callers pass the same set on every call,
    /// and parsing it (and validating each key) is most of the cost of a call.
    static KEYS: RefCell<Option<(String, KeySet)>> = const { RefCell::new(None) };
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

/// Verifies `token` against `jwks` (the JWK set's JSON text, or the parsed object):
/// the signature (Ed25519 only: the algorithm comes from the key, never the token),
/// the type, every claim, issuer, audience and the times at `options.now` (default:
/// now). Returns the claims, or throws a `VerifyError`.
#[wasm_bindgen(unchecked_return_type = "Claims")]
pub fn verify(
    token: &str,
    #[wasm_bindgen(unchecked_param_type = "string | object")] jwks: JsValue,
    #[wasm_bindgen(unchecked_param_type = "VerifyOptions")] options: JsValue,
) -> Result<JsValue, JsValue> {
    if !options.is_object() {
        return Err(error("options", None, "options must be an object"));
    }
    let issuer = text_option(&options, "issuer")?;
    let audience = text_option(&options, "audience")?;
    let at = match Reflect::get(&options, &"now".into()).ok() {
        Some(v) if v.is_undefined() || v.is_null() => now() / 1000.0,
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| error("options", None, "options.now must be Unix seconds"))?,
        None => now() / 1000.0,
    };
    let jwks = match jwks.as_string() {
        Some(text) => text,
        None => stringify(&jwks).ok_or_else(|| error("key", None, "jwks is not JSON"))?,
    };
    let validator = Validator::new(issuer, audience);
    KEYS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.as_ref().is_none_or(|(text, _)| *text != jwks) {
            let keys = KeySet::from_jwks(jwks.as_bytes()).map_err(refused)?;
            *cache = Some((jwks, keys));
        }
        let (_, keys) = cache.as_ref().expect("filled above");
        let claims = validator
            .verify(token.as_bytes(), keys, at.floor() as u64)
            .map_err(refused)?;
        claims_object(&claims)
    })
}
