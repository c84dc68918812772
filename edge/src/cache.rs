//! Per-isolate caches: verified tokens and the key set, with the rules for both.

use std::collections::HashMap;
use std::rc::Rc;

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

/// Least time between two JWKS fetch attempts, seconds, whatever the reason: with the
/// origin down, an isolate asks at most once a second, not once per request.
pub const JWKS_RETRY_SECS: u64 = 1;

/// `max-age` when the JWKS response has none, seconds (the origin's default).
pub const DEFAULT_JWKS_MAX_AGE: u64 = 300;

/// The key set fetched from the origin, and the rules for when to fetch it again and
/// whether it may still be used.
///
/// A set is fresh for its `max-age` (the origin's `JWKS_MAX_AGE_SECS`). After that it
/// is fetched again; if the origin cannot be reached it is still used for
/// `stale_secs` more, then nothing verifies (503, DESIGN §3: never 401 for our own
/// outage). So a key removed at the origin stops verifying at most `max-age` after its
/// removal, and within `max-age` + `stale_secs` when the origin is unreachable.
#[derive(Default)]
pub struct KeyCache {
    keys: Option<Rc<KeySet>>,
    /// When the current set was fetched, and its `max-age`.
    fetched_at: u64,
    max_age: u64,
    last_attempt: Option<u64>,
    last_attempt_failed: bool,
}

/// What a token's key lookup comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// Verify against this set (the token's `kid` may still be missing from it: then the
    /// origin really does not publish it, and the token is invalid).
    Keys(Rc<KeySet>),
    /// No set that can decide: none fetched yet, too stale, or the `kid` is unknown and
    /// the origin could not be asked. 503.
    Unavailable,
}

impl KeyCache {
    /// Whether to fetch the set now: none yet, past its `max-age`, or it lacks `kid`
    /// (at most once per `refetch_secs`, so tokens with made-up `kid`s cannot make the
    /// edge hammer the origin); never twice within [`JWKS_RETRY_SECS`].
    pub fn should_fetch(&self, kid: Option<&str>, now: u64, refetch_secs: u64) -> bool {
        let since_attempt = self.last_attempt.map(|t| now.saturating_sub(t));
        if since_attempt.is_some_and(|d| d < JWKS_RETRY_SECS) {
            return false;
        }
        let Some(keys) = &self.keys else { return true };
        let expired = now >= self.fetched_at.saturating_add(self.max_age);
        let unknown_kid = kid.is_some_and(|kid| keys.get(kid).is_none());
        expired || (unknown_kid && since_attempt.is_none_or(|d| d >= refetch_secs))
    }

    /// Records a fetch attempt made at `now`.
    pub fn attempted(&mut self, now: u64) {
        self.last_attempt = Some(now);
    }

    /// Records the outcome of the attempt: the set and its `max-age`, or `None` when the
    /// origin could not be reached or answered something unusable (the old set stays, as
    /// stale). Returns whether some key the edge trusted is gone or changed: then every
    /// verification made with it must be forgotten.
    pub fn fetched(&mut self, fetched: Option<(KeySet, u64)>, now: u64) -> bool {
        let Some((keys, max_age)) = fetched else {
            self.last_attempt_failed = true;
            return false;
        };
        self.last_attempt_failed = false;
        let revoked = self
            .keys
            .as_ref()
            .is_some_and(|old| old.iter().any(|k| keys.get(k.kid().as_str()) != Some(k)));
        self.keys = Some(Rc::new(keys));
        self.fetched_at = now;
        self.max_age = max_age;
        revoked
    }

    /// The set to verify a token with `kid` against, at `now`.
    pub fn lookup(&self, kid: Option<&str>, now: u64, stale_secs: u64) -> KeyLookup {
        let Some(keys) = &self.keys else {
            return KeyLookup::Unavailable;
        };
        let usable_until = self
            .fetched_at
            .saturating_add(self.max_age)
            .saturating_add(stale_secs);
        if now >= usable_until {
            return KeyLookup::Unavailable;
        }
        let known = kid.is_some_and(|kid| keys.get(kid).is_some());
        if !known && self.last_attempt_failed {
            // Perhaps a key published since the last fetch: the origin must say.
            return KeyLookup::Unavailable;
        }
        KeyLookup::Keys(keys.clone())
    }
}

/// The `max-age` of a JWKS response's `Cache-Control` (RFC 9111 §5.2.2.1), within 1 s
/// to a day; [`DEFAULT_JWKS_MAX_AGE`] when absent or unreadable.
pub fn jwks_max_age(cache_control: Option<&str>) -> u64 {
    cache_control
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()
        .map_or(DEFAULT_JWKS_MAX_AGE, |age| age.clamp(1, 86_400))
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

    fn set(seeds: &[u8]) -> KeySet {
        KeySet::new(
            seeds
                .iter()
                .map(|&s| SigningKey::from_seed([s; 32]).verifying_key())
                .collect(),
        )
        .unwrap()
    }

    fn kid(seed: u8) -> String {
        SigningKey::from_seed([seed; 32]).kid().to_string()
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let mut cache = KeyCache::default();
        assert!(cache.should_fetch(Some("k"), 100, 60));
        cache.attempted(100);
        cache.fetched(Some((set(&[1]), 300)), 100);
        assert!(
            !cache.should_fetch(Some(&kid(1)), 399, 60),
            "known kid, fresh"
        );
        assert!(
            !cache.should_fetch(Some("unknown"), 159, 60),
            "inside the interval"
        );
        assert!(cache.should_fetch(Some("unknown"), 160, 60));
        cache.attempted(160);
        assert!(
            !cache.fetched(None, 160),
            "a failed fetch keeps the old keys"
        );
        assert!(!cache.should_fetch(Some("unknown"), 200, 60));
    }

    #[test]
    fn a_set_is_fetched_again_after_its_max_age() {
        let mut cache = KeyCache::default();
        cache.attempted(100);
        cache.fetched(Some((set(&[1]), 5)), 100);
        assert!(!cache.should_fetch(Some(&kid(1)), 104, 60));
        assert!(cache.should_fetch(Some(&kid(1)), 105, 60));
        assert!(cache.should_fetch(None, 105, 60));
    }

    #[test]
    fn with_the_origin_down_attempts_are_at_most_one_a_second() {
        let mut cache = KeyCache::default();
        assert!(cache.should_fetch(None, 100, 60));
        cache.attempted(100);
        cache.fetched(None, 100);
        assert!(!cache.should_fetch(None, 100, 60));
        assert!(cache.should_fetch(None, 101, 60));
        assert_eq!(cache.lookup(None, 101, 300), KeyLookup::Unavailable);
    }

    #[test]
    fn a_stale_set_is_used_for_the_stated_bound_then_nothing_verifies() {
        let mut cache = KeyCache::default();
        cache.attempted(100);
        cache.fetched(Some((set(&[1]), 10)), 100);
        cache.attempted(110);
        cache.fetched(None, 110);
        let k = kid(1);
        assert_eq!(
            cache.lookup(Some(&k), 139, 30),
            KeyLookup::Keys(Rc::new(set(&[1])))
        );
        assert_eq!(cache.lookup(Some(&k), 140, 30), KeyLookup::Unavailable);
    }

    #[test]
    fn an_unknown_kid_is_invalid_if_the_origin_answered_and_unavailable_if_not() {
        let mut cache = KeyCache::default();
        cache.attempted(100);
        cache.fetched(Some((set(&[1]), 300)), 100);
        assert_eq!(
            cache.lookup(Some("new"), 101, 30),
            KeyLookup::Keys(Rc::new(set(&[1])))
        );
        cache.attempted(101);
        cache.fetched(None, 101);
        assert_eq!(cache.lookup(Some("new"), 102, 30), KeyLookup::Unavailable);
        assert_eq!(
            cache.lookup(Some(&kid(1)), 102, 30),
            KeyLookup::Keys(Rc::new(set(&[1])))
        );
    }

    #[test]
    fn a_removed_or_replaced_key_is_reported_so_its_verifications_are_forgotten() {
        let mut cache = KeyCache::default();
        assert!(!cache.fetched(Some((set(&[1]), 300)), 100), "first set");
        assert!(
            !cache.fetched(Some((set(&[1, 2]), 300)), 101),
            "a key added"
        );
        assert!(cache.fetched(Some((set(&[2]), 300)), 102), "a key removed");
        // New material under an old kid: the same kid, another key.
        let old = SigningKey::from_seed([2; 32]).verifying_key();
        let swapped = shared::VerifyingKey::from_slice(
            old.kid().clone(),
            SigningKey::from_seed([3; 32]).verifying_key().as_bytes(),
        )
        .unwrap();
        assert!(cache.fetched(Some((KeySet::new(vec![swapped]).unwrap(), 300)), 103));
    }

    #[test]
    fn max_age_comes_from_cache_control() {
        assert_eq!(jwks_max_age(Some("public, max-age=300")), 300);
        assert_eq!(jwks_max_age(Some("max-age=2")), 2);
        assert_eq!(jwks_max_age(Some("Max-Age=\"7\", public")), 7);
        assert_eq!(jwks_max_age(Some("max-age=0")), 1);
        assert_eq!(jwks_max_age(Some("max-age=99999999")), 86_400);
        assert_eq!(jwks_max_age(Some("no-cache")), DEFAULT_JWKS_MAX_AGE);
        assert_eq!(jwks_max_age(None), DEFAULT_JWKS_MAX_AGE);
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
