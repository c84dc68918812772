//! Fixtures shared by the integration tests: one key, one validator, a valid token,
//! and a way to sign arbitrary header and payload bytes with the real key.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use shared::{Claims, KeySet, SigningKey, Validator};

pub const SEED: [u8; 32] = [42; 32];
pub const OTHER_SEED: [u8; 32] = [7; 32];
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "api.test";
/// "Now" for every test: 2023-11-14T22:13:20Z.
pub const NOW: u64 = 1_700_000_000;
/// The default leeway of `Limits`.
pub const LEEWAY: u64 = 30;

/// Runs each test natively with `#[test]` and on wasm32 under wasm-bindgen-test, so
/// both targets give the same verdicts for the same vectors.
#[macro_export]
macro_rules! vectors {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn $name() $body
    )*};
}

pub fn signing_key() -> SigningKey {
    SigningKey::from_seed(SEED)
}

pub fn kid() -> String {
    signing_key().kid().as_str().to_string()
}

pub fn keys() -> KeySet {
    KeySet::new(vec![signing_key().verifying_key()]).unwrap()
}

pub fn validator() -> Validator {
    Validator::new(ISSUER, AUDIENCE)
}

/// Claims of a 15-minute token issued a minute ago.
pub fn claims() -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "3f1c1a52-6f0e-4b0a-9d3e-2f6a1c9b7e01".into(),
        sid: "b8e2d6c4-1a3f-4e5d-8c7b-9a0f1e2d3c4b".into(),
        jti: "Yk3n0Q2mR8vT5wX1zA7cB4".into(),
        iat: NOW - 60,
        nbf: NOW - 60,
        exp: NOW - 60 + 900,
        scope: "profile:read orders:write".into(),
    }
}

pub fn token() -> String {
    signing_key().sign(&claims()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The header our issuer writes, as a JSON object to edit.
pub fn header() -> Map<String, Value> {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid()})
        .as_object()
        .unwrap()
        .clone()
}

/// The valid claims as a JSON object to edit.
pub fn payload() -> Map<String, Value> {
    serde_json::to_value(claims())
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// `header.payload.signature` from raw segment bytes, signed with the seed's key.
pub fn sign_raw_with(seed: [u8; 32], header: &[u8], payload: &[u8]) -> String {
    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = pair.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", b64(signature.as_ref()))
}

pub fn sign_raw(header: &[u8], payload: &[u8]) -> String {
    sign_raw_with(SEED, header, payload)
}

/// A token signed by the real key, with the header and payload given as objects.
pub fn sign_json(header: &Map<String, Value>, payload: &Map<String, Value>) -> String {
    sign_raw(
        Value::Object(header.clone()).to_string().as_bytes(),
        Value::Object(payload.clone()).to_string().as_bytes(),
    )
}

/// A token signed by the real key whose payload is the valid one edited by `edit`.
pub fn with_payload(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut payload = payload();
    edit(&mut payload);
    sign_json(&header(), &payload)
}

/// A token signed by the real key whose header is the valid one edited by `edit`.
pub fn with_header(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut header = header();
    edit(&mut header);
    sign_json(&header, &payload())
}

pub fn verify(token: &str) -> Result<shared::VerifiedClaims, shared::Error> {
    verify_at(token, NOW)
}

pub fn verify_at(token: &str, now: u64) -> Result<shared::VerifiedClaims, shared::Error> {
    let result = validator().verify(token.as_bytes(), &keys(), now);
    record(token, now, &result);
    result
}

/// With `SHARED_VECTORS_OUT` set (`scripts/test-js-verifier`), appends each vector
/// checked through [`verify_at`] to that file as a JSON line, with the Rust verdict,
/// so the JavaScript verifier is run on exactly these vectors and must agree.
fn record(token: &str, now: u64, result: &Result<shared::VerifiedClaims, shared::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    if let Ok(path) = std::env::var("SHARED_VECTORS_OUT") {
        use std::io::Write as _;
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let expected = match result {
            Ok(claims) => json!({
                "sub": claims.subject(), "sid": claims.session_id(), "scope": claims.scope(),
                "exp": claims.expires_at(), "iat": claims.issued_at(), "nbf": claims.not_before(),
                "jti": claims.token_id(), "iss": claims.issuer(),
            }),
            Err(error) => json!({
                "error": error.code(),
                "claim": match error { shared::Error::Claim(c) => Some(c.name()), _ => None },
            }),
        };
        let line = json!({
            "token": token, "now": now, "jwks": keys().to_jwks(),
            "issuer": ISSUER, "audience": AUDIENCE, "expected": expected,
        });
        let _guard = LOCK.lock().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("SHARED_VECTORS_OUT is writable");
        writeln!(file, "{line}").expect("write a vector");
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (token, now, result);
}
