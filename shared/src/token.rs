//! Signing and verifying access tokens: JWS compact serialization, EdDSA only.

use alloc::string::{String, ToString};
use core::future::Future;
use serde_json::{Map, Value};

use crate::claims::Payload;
use crate::{Claim, Claims, Error, KeySet, SigningKey, VerifiedClaims, VerifyingKey, b64, json};

/// The one `alg` accepted and emitted (RFC 8037 §3.1). Compared exactly:
/// JOSE algorithm names are case-sensitive (RFC 7515 §4.1.1).
pub const ALGORITHM: &str = "EdDSA";
/// The `typ` of an access token (RFC 9068 §2.1).
pub const TOKEN_TYPE: &str = "at+jwt";
/// Most leeway [`Validator::with_limits`] allows, in seconds (DESIGN.md §2).
pub const MAX_LEEWAY: u64 = 60;

/// Header parameters that embed a key or tell the verifier where to fetch one
/// (RFC 7515 §4.1.2–4.1.6). Following them lets the token choose its own key.
const KEY_REFERENCES: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

impl SigningKey {
    /// Signs `claims` as a compact JWS with header
    /// `{"alg":"EdDSA","typ":"at+jwt","kid":…}`.
    ///
    /// Refuses claims no verifier would accept (malformed ids or scope, times out of
    /// range, `exp` not after `iat`).
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        claims.check()?;
        let mut header = Map::new();
        header.insert("alg".into(), ALGORITHM.into());
        header.insert("typ".into(), TOKEN_TYPE.into());
        header.insert("kid".into(), self.kid().as_str().into());
        let payload = serde_json::to_vec(claims).map_err(|_| Error::Json)?;
        let mut token = b64::encode(Value::Object(header).to_string().as_bytes());
        token.push('.');
        token.push_str(&b64::encode(&payload));
        let signature = self.sign_bytes(token.as_bytes());
        token.push('.');
        token.push_str(&b64::encode(&signature));
        Ok(token)
    }
}

/// Bounds the validator enforces. `Default` holds the secure defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 30, at most
    /// [`MAX_LEEWAY`].
    pub leeway: u64,
    /// Longest accepted `exp - iat`, in seconds. Default 3600, the longest access-token
    /// lifetime the origin can be configured with (DESIGN.md §2).
    pub max_lifetime: u64,
    /// Longest accepted token, in bytes. Default 4096; our tokens are about 500.
    pub max_token_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            leeway: 30,
            max_lifetime: 3600,
            max_token_len: 4096,
        }
    }
}

/// Verifies access tokens for one issuer and audience.
///
/// ```
/// use shared::{Claims, KeySet, SigningKey, Validator};
///
/// let key = SigningKey::from_seed([7; 32]);
/// let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
/// let claims = Claims {
///     iss: "https://auth.example".into(), aud: "api".into(),
///     sub: "user-1".into(), sid: "session-1".into(), jti: "token-1".into(),
///     iat: 1_000, nbf: 1_000, exp: 1_900, scope: "read write".into(),
/// };
/// let token = key.sign(&claims).unwrap();
///
/// let validator = Validator::new("https://auth.example", "api");
/// let verified = validator.verify(token.as_bytes(), &keys, 1_100).unwrap();
/// assert_eq!(verified.subject(), "user-1");
/// assert!(verified.has_scope("write"));
/// assert!(validator.verify(token.as_bytes(), &keys, 1_930).is_err()); // expired
/// ```
#[derive(Clone, Debug)]
pub struct Validator {
    issuer: String,
    audience: String,
    limits: Limits,
}

/// A token split and its header checked; the payload not yet decoded.
struct Unverified<'t> {
    kid: String,
    signing_input: &'t [u8],
    payload: &'t [u8],
    signature: [u8; 64],
}

impl Validator {
    /// A validator with the default [`Limits`].
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Validator {
            issuer: issuer.into(),
            audience: audience.into(),
            limits: Limits::default(),
        }
    }

    /// Replaces the limits; a leeway above [`MAX_LEEWAY`] is lowered to it.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Limits {
            leeway: limits.leeway.min(MAX_LEEWAY),
            ..limits
        };
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Verifies `token` against `keys` at Unix time `now` (seconds): structure, header,
    /// Ed25519 signature, then claims. The payload is not even decoded before the
    /// signature has verified.
    pub fn verify(&self, token: &[u8], keys: &KeySet, now: u64) -> Result<VerifiedClaims, Error> {
        let token = self.split(token)?;
        let key = keys.get(&token.kid).ok_or(Error::UnknownKey)?;
        key.verify_bytes(token.signing_input, &token.signature)?;
        self.claims(token, Some(now))
    }

    /// Like [`verify`](Self::verify), except that `exp`, `nbf` and `iat` are not
    /// compared with any clock (their shape and the lifetime still are). Only for
    /// revocation (RFC 7009 §2): an expired token still names the session to end, and
    /// ending a session is never a privilege.
    pub fn verify_at_any_time(&self, token: &[u8], keys: &KeySet) -> Result<VerifiedClaims, Error> {
        let token = self.split(token)?;
        let key = keys.get(&token.kid).ok_or(Error::UnknownKey)?;
        key.verify_bytes(token.signing_input, &token.signature)?;
        self.claims(token, None)
    }

    /// Like [`verify`](Self::verify), with the Ed25519 check done by `check_signature`
    /// (for example WebCrypto's async `verify`, which is faster in a Worker than Wasm).
    /// It receives the key, the signing input and the 64-byte signature, and must
    /// return whether the signature is valid. Everything else is checked here, and a
    /// non-canonical S is refused before it is called. Whether a small-order R is
    /// refused, and cofactored or cofactorless verification, is up to that
    /// implementation: keys are validated at load, so this is never a forgery.
    pub async fn verify_with<F, Fut>(
        &self,
        token: &[u8],
        keys: &KeySet,
        now: u64,
        check_signature: F,
    ) -> Result<VerifiedClaims, Error>
    where
        F: FnOnce(&VerifyingKey, &[u8], &[u8; 64]) -> Fut,
        Fut: Future<Output = bool>,
    {
        let token = self.split(token)?;
        let key = keys.get(&token.kid).ok_or(Error::UnknownKey)?;
        // The native check refuses a non-canonical S (RFC 8032 §5.1.7); other
        // implementations may not, and S + L would give one token two valid encodings.
        if !is_canonical_scalar(&token.signature[32..]) {
            return Err(Error::Signature);
        }
        if !check_signature(key, token.signing_input, &token.signature).await {
            return Err(Error::Signature);
        }
        self.claims(token, Some(now))
    }

    /// Splits the token and checks everything before the signature.
    fn split<'t>(&self, token: &'t [u8]) -> Result<Unverified<'t>, Error> {
        if token.len() > self.limits.max_token_len {
            return Err(Error::TooLong);
        }
        let mut segments = token.split(|&b| b == b'.');
        let (header, payload, signature) = match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(h), Some(p), Some(s), None)
                if !h.is_empty() && !p.is_empty() && !s.is_empty() =>
            {
                (h, p, s)
            }
            _ => return Err(Error::Malformed),
        };
        let header = json::parse_object(&b64::decode(header)?)?;
        let kid = check_header(&header)?;
        let signature = b64::decode(signature)?
            .try_into()
            .map_err(|_| Error::Signature)?;
        Ok(Unverified {
            kid,
            signing_input: &token[..token.len() - signature_len(token)],
            payload,
            signature,
        })
    }

    /// Decodes and checks the claims of a token whose signature has verified; the time
    /// claims against `now` unless it is `None`.
    fn claims(&self, token: Unverified<'_>, now: Option<u64>) -> Result<VerifiedClaims, Error> {
        let payload = Payload(json::parse_object(&b64::decode(token.payload)?)?);
        let iss = payload.string(Claim::Iss)?;
        let audiences = payload.audiences()?;
        let sub = payload.identifier(Claim::Sub)?;
        let sid = payload.identifier(Claim::Sid)?;
        let jti = payload.identifier(Claim::Jti)?;
        let iat = payload.time(Claim::Iat)?;
        let nbf = payload.time(Claim::Nbf)?;
        let exp = payload.time(Claim::Exp)?;
        let scope = payload.string(Claim::Scope)?;
        if !crate::is_scope(scope) {
            return Err(Error::Claim(Claim::Scope));
        }

        if iss != self.issuer {
            return Err(Error::Issuer);
        }
        if !audiences.contains(&self.audience.as_str()) {
            return Err(Error::Audience);
        }
        if exp <= iat || exp - iat > self.limits.max_lifetime {
            return Err(Error::Lifetime);
        }
        if let Some(now) = now {
            // RFC 7519 §4.1.4: valid only while now is before exp; the leeway extends that.
            if now >= exp.saturating_add(self.limits.leeway) {
                return Err(Error::Expired);
            }
            // RFC 7519 §4.1.5: not valid before nbf; the leeway lets a fast clock through.
            if now.saturating_add(self.limits.leeway) < nbf {
                return Err(Error::NotYetValid);
            }
            if now.saturating_add(self.limits.leeway) < iat {
                return Err(Error::IssuedInFuture);
            }
        }
        Ok(VerifiedClaims {
            kid: token.kid,
            iss: iss.into(),
            sub: sub.into(),
            sid: sid.into(),
            jti: jti.into(),
            iat,
            nbf,
            exp,
            scope: scope.into(),
        })
    }
}

/// Whether the little-endian scalar `s` is below the group order L (RFC 8032 §5.1.7).
fn is_canonical_scalar(s: &[u8]) -> bool {
    // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    // Compare from the most significant byte down.
    for (a, l) in s.iter().rev().zip(L.iter().rev()) {
        if a != l {
            return a < l;
        }
    }
    false
}

/// Length of the `.signature` suffix, dot included.
fn signature_len(token: &[u8]) -> usize {
    token
        .iter()
        .rev()
        .position(|&b| b == b'.')
        .map_or(0, |n| n + 1)
}

/// Checks the JOSE header and returns its `kid`.
fn check_header(header: &Map<String, Value>) -> Result<String, Error> {
    if header.get("alg").and_then(Value::as_str) != Some(ALGORITHM) {
        return Err(Error::Algorithm);
    }
    if KEY_REFERENCES.iter().any(|name| header.contains_key(*name)) {
        return Err(Error::KeyReference);
    }
    if header.contains_key("crit") {
        return Err(Error::Critical);
    }
    // RFC 9068 §4 accepts "at+jwt" and "application/at+jwt"; media types compare
    // case-insensitively (RFC 7515 §4.1.9).
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .ok_or(Error::Type)?;
    if !typ.eq_ignore_ascii_case(TOKEN_TYPE) && !typ.eq_ignore_ascii_case("application/at+jwt") {
        return Err(Error::Type);
    }
    match header.get("kid").and_then(Value::as_str) {
        Some(kid) if crate::KeyId::is_well_formed(kid) => Ok(kid.into()),
        _ => Err(Error::KeyId),
    }
}
