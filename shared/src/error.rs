//! The one error type of this crate.

use core::fmt;

/// A claim of the access token, named in [`Error::Claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    Iss,
    Aud,
    Sub,
    Sid,
    Jti,
    Iat,
    Nbf,
    Exp,
    Scope,
}

impl Claim {
    /// The claim's name as it appears in the JSON payload.
    pub const fn name(self) -> &'static str {
        match self {
            Claim::Iss => "iss",
            Claim::Aud => "aud",
            Claim::Sub => "sub",
            Claim::Sid => "sid",
            Claim::Jti => "jti",
            Claim::Iat => "iat",
            Claim::Nbf => "nbf",
            Claim::Exp => "exp",
            Claim::Scope => "scope",
        }
    }
}

/// Why a token, a key or a session record was refused.
///
/// Small and `Copy` so callers can count it in metrics and log it. The text is
/// safe to log (it never contains token material), but clients should get one
/// generic `401 invalid_token`: the precise reason helps attackers more than users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The token is longer than [`Limits::max_token_len`](crate::Limits). Checked before anything else.
    TooLong,
    /// The token is not three non-empty segments separated by dots (RFC 7515 §7.1).
    Malformed,
    /// A segment is not strict unpadded base64url (RFC 7515 §2): padding, `+` or `/`,
    /// whitespace, or non-zero trailing bits.
    Base64,
    /// The header or payload is not JSON, is not a JSON object, is nested too deeply, or
    /// repeats a member name (RFC 7515 §4 and RFC 7519 §4 allow us to reject duplicates).
    Json,
    /// `alg` is missing or is anything but `EdDSA` (RFC 8037 §3.1): `none`, HMAC and
    /// RSA/ECDSA algorithms are all refused, whatever the letter case.
    Algorithm,
    /// `typ` is missing or is not `at+jwt` (RFC 9068 §2.1).
    Type,
    /// The header carries `crit` (RFC 7515 §4.1.11). This crate implements no extension,
    /// so every critical parameter is unknown and the token must be rejected.
    Critical,
    /// The header embeds a key or points at one (`jwk`, `jku`, `x5u`, `x5c`). Keys come
    /// only from the configured key set; these parameters are never followed.
    KeyReference,
    /// `kid` is missing, is not a string, or is not a well-formed key id (see [`KeyId`](crate::KeyId)).
    KeyId,
    /// `kid` is well-formed but names no key in the key set.
    UnknownKey,
    /// The signature is not 64 bytes or does not verify under the named key.
    Signature,
    /// A claim is missing, has the wrong JSON type, or its value is out of range or not
    /// well-formed (times must be integers in `0..=253402300799`).
    Claim(Claim),
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not contain the configured audience.
    Audience,
    /// The current time is at or past `exp` plus the leeway.
    Expired,
    /// The current time plus the leeway is before `nbf`.
    NotYetValid,
    /// `iat` is later than the current time plus the leeway.
    IssuedInFuture,
    /// `exp` is not after `iat`, or `exp - iat` exceeds the maximum lifetime.
    Lifetime,
    /// A key, JWK or JWK set could not be decoded or is unsafe to use (a weak public key,
    /// a private member `d` in a published set, a duplicate `kid`).
    Key,
    /// A session record from the store could not be decoded.
    Record,
}

impl Error {
    /// A stable, machine-readable name of the failure (`"expired"`, `"claim"` …), for
    /// callers outside Rust (the JavaScript verifier's `VerifyError.code`). For
    /// [`Error::Claim`], the claim is [`Claim::name`].
    pub const fn code(self) -> &'static str {
        match self {
            Error::TooLong => "too_long",
            Error::Malformed => "malformed",
            Error::Base64 => "base64",
            Error::Json => "json",
            Error::Algorithm => "algorithm",
            Error::Type => "type",
            Error::Critical => "critical",
            Error::KeyReference => "key_reference",
            Error::KeyId => "key_id",
            Error::UnknownKey => "unknown_key",
            Error::Signature => "signature",
            Error::Claim(_) => "claim",
            Error::Issuer => "issuer",
            Error::Audience => "audience",
            Error::Expired => "expired",
            Error::NotYetValid => "not_yet_valid",
            Error::IssuedInFuture => "issued_in_future",
            Error::Lifetime => "lifetime",
            Error::Key => "key",
            Error::Record => "record",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::TooLong => "token too long",
            Error::Malformed => "token is not three base64url segments",
            Error::Base64 => "segment is not strict base64url",
            Error::Json => "segment is not a JSON object without duplicate members",
            Error::Algorithm => "algorithm not accepted",
            Error::Type => "typ is not at+jwt",
            Error::Critical => "crit header parameter not supported",
            Error::KeyReference => "header references or embeds a key",
            Error::KeyId => "kid missing or malformed",
            Error::UnknownKey => "kid names no known key",
            Error::Signature => "signature does not verify",
            Error::Claim(claim) => return write!(f, "claim {} missing or malformed", claim.name()),
            Error::Issuer => "issuer not accepted",
            Error::Audience => "audience not accepted",
            Error::Expired => "token expired",
            Error::NotYetValid => "token not yet valid",
            Error::IssuedInFuture => "token issued in the future",
            Error::Lifetime => "token lifetime not accepted",
            Error::Key => "key or key set not usable",
            Error::Record => "session record malformed",
        };
        f.write_str(text)
    }
}

impl core::error::Error for Error {}
