//! JWK sets of Ed25519 public keys (RFC 7517, with the OKP key type of RFC 8037 §2).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

use crate::{Error, KeyId, KeySet, VerifyingKey, b64, json};

impl VerifyingKey {
    /// This key as a JWK: `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = Map::new();
        jwk.insert("kty".into(), "OKP".into());
        jwk.insert("crv".into(), "Ed25519".into());
        jwk.insert("x".into(), b64::encode(self.as_bytes()).into());
        jwk.insert("kid".into(), self.kid().as_str().into());
        jwk.insert("alg".into(), "EdDSA".into());
        jwk.insert("use".into(), "sig".into());
        Value::Object(jwk)
    }
}

/// What one member of a set turned out to be.
enum Member {
    Ed25519(VerifyingKey),
    /// Another key type or curve: RFC 7517 §5 says to ignore it.
    Other,
}

fn decode_member(jwk: &Value) -> Result<Member, Error> {
    let jwk = jwk.as_object().ok_or(Error::Key)?;
    let text = |name: &str| match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Error::Key),
    };
    // A published set that contains private key material is a leak, not a key.
    if jwk.contains_key("d") {
        return Err(Error::Key);
    }
    if text("kty")? != Some("OKP") || text("crv")? != Some("Ed25519") {
        return Ok(Member::Other);
    }
    // `use` and `alg` are optional (RFC 7517 §4.2, §4.4); when present they must fit.
    if !matches!(text("use")?, None | Some("sig")) || !matches!(text("alg")?, None | Some("EdDSA"))
    {
        return Err(Error::Key);
    }
    let kid = KeyId::new(text("kid")?.ok_or(Error::Key)?).map_err(|_| Error::Key)?;
    let x = b64::decode_array::<32>(text("x")?.ok_or(Error::Key)?.as_bytes())
        .map_err(|_| Error::Key)?;
    VerifyingKey::from_slice(kid, &x).map(Member::Ed25519)
}

impl KeySet {
    /// Reads a JWK set (`{"keys":[…]}`). Members of other key types are skipped
    /// (RFC 7517 §5); a malformed Ed25519 member, a private member `d`, or a repeated
    /// `kid` fails the whole set, since a half-read set hides mistakes.
    pub fn from_jwks(json: &[u8]) -> Result<Self, Error> {
        let set = json::parse_object(json).map_err(|_| Error::Key)?;
        let members = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(Error::Key)?;
        let mut keys = Vec::new();
        for member in members {
            if let Member::Ed25519(key) = decode_member(member)? {
                keys.push(key);
            }
        }
        KeySet::new(keys)
    }

    /// This set as JWK set JSON, for `/.well-known/jwks.json`.
    pub fn to_jwks(&self) -> String {
        let keys = self.iter().map(VerifyingKey::to_jwk).collect();
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        Value::Object(set).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use alloc::vec;

    fn set() -> KeySet {
        let a = SigningKey::from_seed([1; 32]).verifying_key();
        let b = SigningKey::from_seed([2; 32]).verifying_key();
        KeySet::new(vec![a, b]).unwrap()
    }

    #[test]
    fn a_jwk_set_round_trips() {
        let keys = set();
        assert_eq!(KeySet::from_jwks(keys.to_jwks().as_bytes()).unwrap(), keys);
    }

    #[test]
    fn other_key_types_are_skipped() {
        let jwks = br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"},{"kty":"OKP","crv":"X25519","x":"AA","kid":"x"}]}"#;
        assert!(KeySet::from_jwks(jwks).unwrap().is_empty());
    }

    #[test]
    fn unsafe_or_malformed_sets_are_refused() {
        let x = b64::encode(SigningKey::from_seed([1; 32]).verifying_key().as_bytes());
        let small_order = b64::encode(&[0u8; 32]); // y = 0: a point of order 4
        let cases = [
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a","d":"{x}"}}]}}"#
            ),
            alloc::format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#),
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"../etc"}}]}}"#
            ),
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a","use":"enc"}}]}}"#
            ),
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a","alg":"HS256"}}]}}"#
            ),
            alloc::format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}A","kid":"a"}}]}}"#),
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{small_order}","kid":"a"}}]}}"#
            ),
            alloc::format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a"}},{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a"}}]}}"#
            ),
            String::from(r#"{"keys":{}}"#),
            String::from(r#"{"keys":[1]}"#),
            String::from("[]"),
        ];
        for case in cases {
            assert_eq!(
                KeySet::from_jwks(case.as_bytes()),
                Err(Error::Key),
                "{case}"
            );
        }
    }
}
