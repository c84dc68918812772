//! Throttling of password checks and registrations (NIST SP 800-63B §5.2.2).
//!
//! Every attempt is *reserved* before the work it guards (an Argon2 hash) starts, in
//! one atomic step per key: a locked key refuses with its wait, otherwise the attempt
//! is counted, and once the count passes the free allowance the key locks for a delay
//! that doubles up to a cap. Counting before hashing is what makes a burst useless: 40
//! guesses sent at once are 5 free ones, one that sets the lock, and 34 refusals. A
//! success then gives back what it should (an account's count is cleared; an address's
//! attempt is refunded, it was no failure).
//!
//! Counters live in Redis, shared by every origin; each key's counter and lock share a
//! hash tag, so each script touches one Redis Cluster slot. When Redis fails, the same
//! rules run on in-process counters: throttling fails closed, never open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::store::Store;

/// One throttled dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Attempts allowed before delays start.
    pub free: u64,
    /// Longest delay.
    pub max_delay: Duration,
    /// Attempts are forgotten this long after the last one.
    pub window: Duration,
}

impl Policy {
    /// Per account, and per remembered device of an account.
    pub fn account(free: u64) -> Self {
        Policy {
            free,
            max_delay: Duration::from_secs(15 * 60),
            window: Duration::from_secs(24 * 3600),
        }
    }

    /// Per client address, per hour: logins or registrations.
    pub fn address(free: u64) -> Self {
        Policy {
            free,
            max_delay: Duration::from_secs(15 * 60),
            window: Duration::from_secs(3600),
        }
    }
}

/// The lock set by the `attempts`-th attempt: none while free, then 1 s, 2 s, 4 s …
/// up to `max_delay`.
pub fn delay_after(policy: &Policy, attempts: u64) -> Option<Duration> {
    let over = attempts.checked_sub(policy.free).filter(|&n| n > 0)?;
    let secs = 1u64
        .checked_shl((over - 1).min(63) as u32)
        .unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(policy.max_delay))
}

/// What a success gives back on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSuccess {
    /// Forget every failure (an account or device: its owner got in).
    Clear,
    /// Give back this attempt only (an address: it was no failure, but the others
    /// from that address still count).
    Refund,
    /// Nothing (registrations count whatever their outcome).
    Keep,
}

/// A throttled key and its rules.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub policy: Policy,
    pub on_success: OnSuccess,
}

impl Key {
    /// Logins to one account, named by a hash of the name as typed (lowercased), so
    /// any input is a safe key and Redis holds no usernames.
    pub fn account(username: &str, free: u64) -> Key {
        Key {
            name: format!("a:{}", account_id(username)),
            policy: Policy::account(free),
            on_success: OnSuccess::Clear,
        }
    }

    /// Logins to one account from one remembered device (`crate::device`): a bucket
    /// of its own with the account's limits, so guesses from elsewhere cannot lock
    /// its owner out.
    pub fn device(username: &str, device_id: &str, free: u64) -> Key {
        Key {
            name: format!("d:{}:{device_id}", account_id(username)),
            policy: Policy::account(free),
            on_success: OnSuccess::Clear,
        }
    }

    /// Logins from one client address (IPv6 by /64).
    pub fn login_address(ip: IpAddr, free: u64) -> Key {
        Key {
            name: format!("ip:{}", address_group(ip)),
            policy: Policy::address(free),
            on_success: OnSuccess::Refund,
        }
    }

    /// Registrations from one client address (IPv6 by /64).
    pub fn registration_address(ip: IpAddr, free: u64) -> Key {
        Key {
            name: format!("reg:{}", address_group(ip)),
            policy: Policy::address(free),
            on_success: OnSuccess::Keep,
        }
    }
}

/// The throttle's id of an account: a SHA-256 of the lowercased name, hex.
pub fn account_id(username: &str) -> String {
    hmac_sha256::Hash::hash(username.to_ascii_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The unit an address limit applies to: an IPv4 address, or an IPv6 /64 (one
/// subscriber's prefix: anyone holding one has 2^64 addresses to rotate through).
/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub fn address_group(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// Reserves one attempt on a key (KEYS[1] = counter, KEYS[2] = lock holding the
/// unlock time in ms, one hash tag): returns the wait in ms when locked, else counts
/// the attempt, locks the key when the count passes the free allowance, and returns 0.
/// Redis's own clock, so every origin agrees on when a lock ends.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local unlock = tonumber(redis.call('GET', KEYS[2]) or '0')
if unlock > now then return unlock - now end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local free = tonumber(ARGV[2])
if n > free then
  local delay = math.min(1000 * 2 ^ math.min(n - free - 1, 40), tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], now + delay, 'PX', math.floor(delay))
end
return 0
"#;

/// Gives one attempt back (KEYS[1] = counter), never below zero.
const REFUND: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
"#;

#[derive(Default)]
struct Entry {
    attempts: u64,
    locked_until: Option<Instant>,
    last: Option<Instant>,
}

pub struct Throttle {
    store: Store,
    reserve: redis::Script,
    refund: redis::Script,
    memory: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new(store: Store) -> Self {
        Throttle {
            store,
            reserve: redis::Script::new(RESERVE),
            refund: redis::Script::new(REFUND),
            memory: Mutex::default(),
        }
    }

    fn redis_keys(&self, key: &Key) -> (String, String) {
        // One hash tag per throttled key: both keys in one cluster slot for the script.
        let base = format!("{}thr:{{{}}}", self.store.prefix(), key.name);
        (format!("{base}:n"), format!("{base}:lock"))
    }

    /// Reserves one attempt on each key in order. The first locked key ends it with
    /// 429 and its wait; keys before it keep their reservation (so order the keys
    /// from the one a caller controls least to the one it controls most: the
    /// address first, then the account).
    pub async fn reserve(&self, keys: &[Key]) -> Result<(), ApiError> {
        for key in keys {
            let (count, lock) = self.redis_keys(key);
            let mut invocation = self.reserve.prepare_invoke();
            invocation
                .key(count)
                .key(lock)
                .arg(key.policy.window.as_secs())
                .arg(key.policy.free)
                .arg(key.policy.max_delay.as_millis() as u64);
            let wait_ms = match self
                .store
                .run_script::<u64>("throttle reserve", invocation)
                .await
            {
                Ok(wait) => wait,
                Err(_) => self.memory_reserve(key).as_millis() as u64,
            };
            if wait_ms > 0 {
                return Err(ApiError::TooManyRequests {
                    retry_after: wait_ms.div_ceil(1000),
                });
            }
        }
        Ok(())
    }

    /// After a success: clears or refunds what each key's rule says.
    pub async fn succeeded(&self, keys: &[Key]) {
        for key in keys {
            let (count, lock) = self.redis_keys(key);
            match key.on_success {
                OnSuccess::Keep => continue,
                OnSuccess::Clear => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(count).arg(lock);
                    let _ = self.store.run::<()>("throttle clear", &cmd).await;
                }
                OnSuccess::Refund => {
                    let mut invocation = self.refund.prepare_invoke();
                    invocation.key(count);
                    let _ = self
                        .store
                        .run_script::<u64>("throttle refund", invocation)
                        .await;
                }
            }
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            match key.on_success {
                OnSuccess::Clear => {
                    memory.remove(&key.name);
                }
                OnSuccess::Refund => {
                    if let Some(entry) = memory.get_mut(&key.name) {
                        entry.attempts = entry.attempts.saturating_sub(1);
                    }
                }
                OnSuccess::Keep => {}
            }
        }
    }

    /// Gives the reserved attempt back on every key: the password was never checked
    /// (Postgres down, no hashing slot), and our outage must not count against the
    /// user.
    pub async fn release(&self, keys: &[Key]) {
        for key in keys {
            let mut invocation = self.refund.prepare_invoke();
            invocation.key(self.redis_keys(key).0);
            let _ = self
                .store
                .run_script::<u64>("throttle refund", invocation)
                .await;
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = memory.get_mut(&key.name) {
                entry.attempts = entry.attempts.saturating_sub(1);
            }
        }
    }

    /// The same rule as [`RESERVE`], in this process: the wait if locked, else zero
    /// with the attempt counted.
    fn memory_reserve(&self, key: &Key) -> Duration {
        let now = Instant::now();
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the map: forget entries idle past the longest window.
        if memory.len() > 100_000 {
            memory.retain(|_, e| {
                e.last
                    .is_some_and(|t| now.duration_since(t) < Policy::account(0).window)
            });
        }
        let entry = memory.entry(key.name.clone()).or_default();
        if let Some(until) = entry.locked_until
            && until > now
        {
            return until - now;
        }
        if entry
            .last
            .is_some_and(|t| now.duration_since(t) > key.policy.window)
        {
            *entry = Entry::default();
        }
        entry.attempts += 1;
        entry.last = Some(now);
        if let Some(delay) = delay_after(&key.policy, entry.attempts) {
            entry.locked_until = Some(now + delay);
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: Policy = Policy {
        free: 5,
        max_delay: Duration::from_secs(15 * 60),
        window: Duration::from_secs(24 * 3600),
    };

    #[test]
    fn delays_start_after_the_free_attempts_and_double_up_to_the_cap() {
        let delays: Vec<_> = (1..=12)
            .map(|n| delay_after(&ACCOUNT, n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            delays,
            [
                None,
                None,
                None,
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(64)
            ]
        );
        assert_eq!(delay_after(&ACCOUNT, 100), Some(ACCOUNT.max_delay));
        assert_eq!(delay_after(&ACCOUNT, u64::MAX), Some(ACCOUNT.max_delay));
        assert_eq!(Policy::account(5), ACCOUNT);
    }

    #[test]
    fn a_hundred_consecutive_failures_take_hours_not_seconds() {
        // NIST SP 800-63B §5.2.2: at most 100 consecutive failures without a growing delay.
        let total: u64 = (1..=100)
            .filter_map(|n| delay_after(&ACCOUNT, n))
            .map(|d| d.as_secs())
            .sum();
        assert!(total > 15 * 3600, "{total} s");
    }

    #[test]
    fn ipv6_addresses_group_by_64_and_mapped_ipv4_is_ipv4() {
        let group = |s: &str| address_group(s.parse().unwrap());
        assert_eq!(group("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            group("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(group("2001:db8:1:3::1"), group("2001:db8:1:2::1"));
        assert_eq!(group("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(group("198.51.100.7"), "198.51.100.7");
    }

    #[test]
    fn account_ids_ignore_letter_case_and_hide_the_name() {
        assert_eq!(account_id("Alice"), account_id("alice"));
        assert_ne!(account_id("alice"), account_id("bob"));
        assert!(!account_id("alice").contains("alice"));
    }

    /// A store that cannot answer: every reservation runs in memory.
    fn offline() -> Throttle {
        Throttle::new(
            Store::new(
                &crate::store::Target::Single("redis://127.0.0.1:1".into()),
                "t:".into(),
                None,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn in_memory_a_burst_gets_the_free_attempts_and_one_more() {
        let throttle = offline();
        let key = Key::account("alice", 5);
        let mut allowed = 0;
        for _ in 0..40 {
            if throttle.reserve(std::slice::from_ref(&key)).await.is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 6);
    }

    #[tokio::test]
    async fn in_memory_a_success_clears_an_account_and_refunds_an_address() {
        let throttle = offline();
        let account = Key::account("alice", 2);
        let address = Key::login_address("198.51.100.7".parse().unwrap(), 2);
        let both = [address.clone(), account.clone()];
        throttle.reserve(&both).await.unwrap();
        throttle.reserve(&both).await.unwrap();
        throttle.succeeded(&both).await;
        // The account starts over (2 free); the address has one attempt left free.
        throttle
            .reserve(std::slice::from_ref(&account))
            .await
            .unwrap();
        throttle
            .reserve(std::slice::from_ref(&account))
            .await
            .unwrap();
        throttle
            .reserve(std::slice::from_ref(&address))
            .await
            .unwrap();
        throttle
            .reserve(std::slice::from_ref(&address))
            .await
            .unwrap(); // sets the lock
        assert!(
            throttle
                .reserve(std::slice::from_ref(&address))
                .await
                .is_err()
        );
    }
}
