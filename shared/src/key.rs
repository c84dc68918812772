//! Ed25519 keys, key ids and key sets.
//!
//! The algorithm is fixed by the key type: a [`VerifyingKey`] can only check Ed25519
//! signatures, so no header can talk a verifier into HMAC or `none`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{Error, b64};

/// A key id (`kid`): 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
///
/// The id arrives in an unverified header and is used to pick a key, so it is kept to
/// a charset that is inert in logs, URLs, file names and store keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Longest accepted key id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks `id` and wraps it.
    pub fn new(id: &str) -> Result<Self, Error> {
        if Self::is_well_formed(id) {
            Ok(KeyId(String::from(id)))
        } else {
            Err(Error::KeyId)
        }
    }

    pub(crate) fn is_well_formed(id: &str) -> bool {
        (1..=Self::MAX_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    }

    /// The RFC 7638 JWK thumbprint of an Ed25519 public key (SHA-256, base64url):
    /// a stable id derived from the key itself, so two parties never disagree on it.
    pub fn thumbprint(public_key: &[u8; 32]) -> Self {
        // RFC 7638 §3.2: the required members in lexicographic order, no whitespace.
        let canonical = alloc::format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            b64::encode(public_key)
        );
        KeyId(b64::encode(&hmac_sha256::Hash::hash(canonical.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 private key with its key id. Lives at the origin only.
///
/// `Debug` prints the key id and nothing of the key.
#[derive(Clone)]
pub struct SigningKey {
    kid: KeyId,
    pair: ed25519_compact::KeyPair,
}

impl SigningKey {
    /// The key whose 32-byte seed (RFC 8032 §5.1.5 private key) is `seed`, with its
    /// RFC 7638 thumbprint as key id. This crate has no random source: callers pass a
    /// seed from a CSPRNG (the origin uses the OS generator).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        let kid = KeyId::thumbprint(&pair.pk);
        SigningKey { kid, pair }
    }

    /// Like [`from_seed`](Self::from_seed), from a slice that must be exactly 32 bytes.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self, Error> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| Error::Key)?;
        Ok(Self::from_seed(seed))
    }

    /// Replaces the derived key id, for deployments that name keys themselves.
    pub fn with_kid(mut self, kid: KeyId) -> Self {
        self.kid = kid;
        self
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The public half, with the same key id.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            key: self.pair.pk,
        }
    }

    /// A 32-byte secret for another purpose (`info` names it), derived from this
    /// key's seed with HKDF-SHA256 (RFC 5869): the issuer's other MACs need no second
    /// secret to distribute, and knowing one derived secret reveals neither the seed
    /// nor any other.
    pub fn derive_secret(&self, info: &[u8]) -> [u8; 32] {
        let prk = hmac_sha256::HKDF::extract(b"edge-auth derived secret v1", *self.pair.sk.seed());
        let mut out = [0u8; 32];
        hmac_sha256::HKDF::expand(&mut out, prk, info);
        out
    }

    /// Deterministic Ed25519 signature (RFC 8032 §5.1.6).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        *self.pair.sk.sign(message, None)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: KeyId,
    key: ed25519_compact::PublicKey,
}

impl VerifyingKey {
    /// Wraps 32 bytes of public key. Refuses non-canonical encodings and small-order
    /// points, which could otherwise verify forged signatures.
    pub fn from_slice(kid: KeyId, bytes: &[u8]) -> Result<Self, Error> {
        let key = ed25519_compact::PublicKey::from_slice(bytes).map_err(|_| Error::Key)?;
        key.validate().map_err(|_| Error::Key)?;
        Ok(VerifyingKey { kid, key })
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The raw public key, for importing it into another crypto API (WebCrypto).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// Checks an Ed25519 signature over `message`.
    pub(crate) fn verify_bytes(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), Error> {
        let signature = ed25519_compact::Signature::new(*signature);
        self.key
            .verify(message, &signature)
            .map_err(|_| Error::Signature)
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The public keys a verifier trusts, looked up by `kid`. Key ids are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// A set of `keys`; two keys with one id is an error, since a token could then
    /// verify under either.
    pub fn new(keys: Vec<VerifyingKey>) -> Result<Self, Error> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.kid == key.kid) {
                return Err(Error::Key);
            }
        }
        Ok(KeySet { keys })
    }

    /// The key named `kid`. A handful of keys at most, so a linear scan beats a map.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|key| key.kid.as_str() == kid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
