//! Access-token claims: the ones an issuer signs and the ones a verifier hands out.

use alloc::string::String;
use alloc::vec::Vec;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Claim, Error};

/// Latest accepted time, 9999-12-31T23:59:59Z, so every time stays far from overflow
/// and fits an `f64` exactly in JavaScript.
pub const MAX_TIME: u64 = 253_402_300_799;

/// The claims an issuer puts in an access token (DESIGN.md §2, RFC 9068 §2.2).
///
/// Times are Unix seconds. `sub`, `sid` and `jti` must be identifiers as described
/// at [`is_identifier`]; `scope` is space-separated scope tokens (RFC 6749 §3.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub jti: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub scope: String,
}

/// Whether `id` can be a `sub`, `sid` or `jti`: 1 to 128 characters, all URI
/// "unreserved" (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`). UUIDs and base64url ids fit; the
/// charset keeps ids inert in store keys (no `{`, `}` or `:`), headers and logs.
pub fn is_identifier(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `scope` is a valid `scope` value: scope tokens of `%x21 / %x23-5B / %x5D-7E`
/// separated by single spaces (RFC 6749 §3.3). Empty means no permissions.
pub fn is_scope(scope: &str) -> bool {
    scope.is_empty()
        || scope.split(' ').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|c| matches!(c, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        })
}

impl Claims {
    /// Checks what a verifier would check about the claims' shape, so an issuer
    /// cannot mint a token no verifier accepts.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let ids = [
            (Claim::Sub, &self.sub),
            (Claim::Sid, &self.sid),
            (Claim::Jti, &self.jti),
        ];
        if let Some((claim, _)) = ids.iter().find(|(_, id)| !is_identifier(id)) {
            return Err(Error::Claim(*claim));
        }
        if !is_scope(&self.scope) {
            return Err(Error::Claim(Claim::Scope));
        }
        let times = [
            (Claim::Iat, self.iat),
            (Claim::Nbf, self.nbf),
            (Claim::Exp, self.exp),
        ];
        if let Some((claim, _)) = times.iter().find(|(_, t)| *t > MAX_TIME) {
            return Err(Error::Claim(*claim));
        }
        if self.exp <= self.iat {
            return Err(Error::Lifetime);
        }
        Ok(())
    }
}

/// Claims of a token whose signature and claims have been verified.
///
/// Only [`Validator::verify`](crate::Validator::verify) and its async twin make one:
/// there is no public constructor, so holding a `VerifiedClaims` proves verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub(crate) kid: String,
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) sid: String,
    pub(crate) jti: String,
    pub(crate) iat: u64,
    pub(crate) nbf: u64,
    pub(crate) exp: u64,
    pub(crate) scope: String,
}

impl VerifiedClaims {
    /// Id of the key that verified the signature.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn issuer(&self) -> &str {
        &self.iss
    }
    /// The user id.
    pub fn subject(&self) -> &str {
        &self.sub
    }
    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.sid
    }
    /// The token id.
    pub fn token_id(&self) -> &str {
        &self.jti
    }
    pub fn issued_at(&self) -> u64 {
        self.iat
    }
    pub fn not_before(&self) -> u64 {
        self.nbf
    }
    pub fn expires_at(&self) -> u64 {
        self.exp
    }
    /// The raw space-separated `scope`.
    pub fn scope(&self) -> &str {
        &self.scope
    }
    /// Whether `scope` is one of the granted scope tokens. The empty string is never one.
    pub fn has_scope(&self, scope: &str) -> bool {
        !scope.is_empty() && self.scope.split(' ').any(|granted| granted == scope)
    }
}

/// Reads the claims out of a verified payload, requiring each one with its JSON type.
pub(crate) struct Payload(pub(crate) Map<String, Value>);

impl Payload {
    pub(crate) fn string(&self, claim: Claim) -> Result<&str, Error> {
        self.0
            .get(claim.name())
            .and_then(Value::as_str)
            .ok_or(Error::Claim(claim))
    }

    pub(crate) fn identifier(&self, claim: Claim) -> Result<&str, Error> {
        self.string(claim).and_then(|id| {
            if is_identifier(id) {
                Ok(id)
            } else {
                Err(Error::Claim(claim))
            }
        })
    }

    /// A NumericDate (RFC 7519 §2) restricted to integers in `0..=MAX_TIME`:
    /// fractions, exponents, negatives, strings and huge values are refused.
    pub(crate) fn time(&self, claim: Claim) -> Result<u64, Error> {
        match self.0.get(claim.name()).and_then(Value::as_u64) {
            Some(t) if t <= MAX_TIME => Ok(t),
            _ => Err(Error::Claim(claim)),
        }
    }

    /// `aud` as one string or an array of strings (RFC 7519 §4.1.3).
    pub(crate) fn audiences(&self) -> Result<Vec<&str>, Error> {
        let bad = Error::Claim(Claim::Aud);
        match self.0.get("aud") {
            Some(Value::String(aud)) => Ok(alloc::vec![aud.as_str()]),
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(|item| item.as_str().ok_or(bad)).collect()
            }
            _ => Err(bad),
        }
    }
}
