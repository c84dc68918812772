//! Per-isolate caches: verified tokens and the key set.

use std::collections::HashMap;

use shared::{KeySet, VerifiedClaims};

/// Tokens whose signature and claims verified, so a client sending the same token
/// again costs a map lookup instead of a signature check. Entries are dropped at
/// the token's expiry (plus leeway) and the map is bounded: when full it is
/// cleared, which only costs re-verification.
pub struct VerifiedCache {
    entries: HashMap<String, VerifiedClaims>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The claims of `token` if it verified before and is not expired at `now`.
    pub fn get(&mut self, token: &str, now: u64, leeway: u64) -> Option<VerifiedClaims> {
        let claims = self.entries.get(token)?;
        if now >= claims.expires_at().saturating_add(leeway) {
            self.entries.remove(token);
            return None;
        }
        Some(claims.clone())
    }

    pub fn insert(&mut self, token: &str, claims: VerifiedClaims) {
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(token.to_string(), claims);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The key set fetched from the origin, and when an unknown `kid` may refetch it.
#[derive(Default)]
pub struct KeyCache {
    pub keys: Option<KeySet>,
    last_fetch: Option<u64>,
}

impl KeyCache {
    /// Whether to fetch now: never fetched, or the set lacks `kid` and the last fetch
    /// is at least `interval` seconds old (one refetch per interval, so tokens with
    /// made-up `kid`s cannot make the edge hammer the origin).
    pub fn should_fetch(&self, kid: Option<&str>, now: u64, interval: u64) -> bool {
        match (&self.keys, self.last_fetch) {
            (None, _) | (_, None) => true,
            (Some(keys), Some(last)) => {
                kid.is_some_and(|kid| keys.get(kid).is_none())
                    && now.saturating_sub(last) >= interval
            }
        }
    }

    pub fn fetched(&mut self, keys: Option<KeySet>, now: u64) {
        if keys.is_some() {
            self.keys = keys;
        }
        self.last_fetch = Some(now);
    }
}

/// The `kid` of a token's header, read without trusting anything else in it: only to
/// decide whether to refetch keys. Verification re-reads the header strictly.
pub fn peek_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("kid")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{Claims, SigningKey, Validator};

    fn verified(exp: u64) -> (String, VerifiedClaims) {
        let key = SigningKey::from_seed([3; 32]);
        let claims = Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "u".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: exp - 600,
            nbf: exp - 600,
            exp,
            scope: "".into(),
        };
        let token = key.sign(&claims).unwrap();
        let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
        let verified = Validator::new("i", "a")
            .verify(token.as_bytes(), &keys, exp - 10)
            .unwrap();
        (token, verified)
    }

    #[test]
    fn a_cached_token_is_served_until_its_expiry_plus_leeway() {
        let (token, claims) = verified(1000);
        let mut cache = VerifiedCache::new(10);
        cache.insert(&token, claims.clone());
        assert_eq!(cache.get(&token, 1029, 30), Some(claims));
        assert_eq!(cache.get(&token, 1030, 30), None);
        assert!(cache.is_empty(), "expired entries are dropped");
        assert_eq!(cache.get("other", 0, 30), None);
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let (token, claims) = verified(1000);
        let mut cache = VerifiedCache::new(2);
        cache.insert("a", claims.clone());
        cache.insert("b", claims.clone());
        cache.insert(&token, claims);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let mut cache = KeyCache::default();
        assert!(cache.should_fetch(Some("k"), 100, 60));
        let keys = KeySet::new(vec![SigningKey::from_seed([1; 32]).verifying_key()]).unwrap();
        let known = keys.iter().next().unwrap().kid().to_string();
        cache.fetched(Some(keys), 100);
        assert!(
            !cache.should_fetch(Some(&known), 1000, 60),
            "known kid: never"
        );
        assert!(
            !cache.should_fetch(Some("unknown"), 159, 60),
            "inside the interval"
        );
        assert!(cache.should_fetch(Some("unknown"), 160, 60));
        cache.fetched(None, 160); // a failed fetch keeps the old keys but still counts
        assert!(cache.keys.is_some());
        assert!(!cache.should_fetch(Some("unknown"), 200, 60));
    }

    #[test]
    fn peek_kid_reads_only_the_header() {
        let (token, _) = verified(1000);
        assert_eq!(
            peek_kid(&token).as_deref(),
            Some(SigningKey::from_seed([3; 32]).kid().as_str())
        );
        assert_eq!(peek_kid("garbage"), None);
        assert_eq!(peek_kid(""), None);
    }
}
