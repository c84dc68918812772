//! Login throttling per account and per client address (NIST SP 800-63B §5.2.2).
//!
//! After a few free failures each further failure locks the key for a delay that
//! doubles up to a cap, so 100 consecutive failures take days, not seconds; a success
//! clears the account's count. Counters live in Redis, shared by every origin. When
//! Redis fails, the same rules run on in-process counters: throttling fails closed,
//! never open.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::store::Store;

/// One throttled dimension.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Failures allowed before delays start.
    pub free: u64,
    /// Longest delay.
    pub max_delay: Duration,
    /// Failures are forgotten this long after the last one.
    pub window: Duration,
}

pub const ACCOUNT: Policy = Policy {
    free: 5,
    max_delay: Duration::from_secs(15 * 60),
    window: Duration::from_secs(24 * 3600),
};
/// Looser: many users may share an address (NAT, offices).
pub const ADDRESS: Policy = Policy {
    free: 50,
    max_delay: Duration::from_secs(15 * 60),
    window: Duration::from_secs(3600),
};

/// The lock after the `failures`-th consecutive failure: none while free, then 1 s,
/// 2 s, 4 s … up to `max_delay`.
pub fn delay_after(policy: &Policy, failures: u64) -> Option<Duration> {
    let over = failures.checked_sub(policy.free).filter(|&n| n > 0)?;
    let secs = 1u64
        .checked_shl((over - 1).min(63) as u32)
        .unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(policy.max_delay))
}

/// Counts failures on a key (KEYS[1]) and sets its lock (KEYS[2], value = unlock
/// time in ms) when the count passes the free allowance. Atomic on the server.
const RECORD_FAILURE: &str = r#"
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local free = tonumber(ARGV[2])
if n > free then
  local delay = math.min(1000 * 2 ^ math.min(n - free - 1, 40), tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], tonumber(ARGV[4]) + delay, 'PX', math.floor(delay))
end
return n
"#;

#[derive(Default)]
struct Entry {
    failures: u64,
    locked_until: Option<Instant>,
    last: Option<Instant>,
}

pub struct Throttle {
    store: Store,
    script: redis::Script,
    memory: Mutex<HashMap<String, Entry>>,
}

/// A throttled key: `a:<username>` or `ip:<address>`, with its policy.
pub struct Key {
    pub name: String,
    pub policy: Policy,
}

impl Throttle {
    pub fn new(store: Store) -> Self {
        Throttle {
            store,
            script: redis::Script::new(RECORD_FAILURE),
            memory: Mutex::default(),
        }
    }

    fn redis_keys(&self, key: &Key) -> (String, String) {
        // One hash tag per throttled key: both keys in one cluster slot for the script.
        let base = format!("{}thr:{{{}}}", self.store.prefix(), key.name);
        (format!("{base}:n"), format!("{base}:lock"))
    }

    /// 429 with the wait if any key is locked.
    pub async fn check(&self, keys: &[Key]) -> Result<(), ApiError> {
        let now_ms = now_ms();
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.redis_keys(key).1);
        }
        let wait_ms = match self
            .store
            .run::<Vec<Option<u64>>>("throttle check", &cmd)
            .await
        {
            Ok(locks) => locks
                .into_iter()
                .flatten()
                .map(|until| until.saturating_sub(now_ms))
                .max()
                .unwrap_or(0),
            Err(_) => self.memory_wait(keys).as_millis() as u64,
        };
        if wait_ms > 0 {
            return Err(ApiError::TooManyRequests {
                retry_after: wait_ms.div_ceil(1000),
            });
        }
        Ok(())
    }

    pub async fn failure(&self, keys: &[Key]) {
        for key in keys {
            let (count, lock) = self.redis_keys(key);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(count)
                .key(lock)
                .arg(key.policy.window.as_secs())
                .arg(key.policy.free)
                .arg(key.policy.max_delay.as_millis() as u64)
                .arg(now_ms());
            if self
                .store
                .run_script::<u64>("throttle failure", invocation)
                .await
                .is_err()
            {
                self.memory_failure(key);
            }
        }
    }

    /// A successful login clears the account's failures (not the address's).
    pub async fn success(&self, key: &Key) {
        let (count, lock) = self.redis_keys(key);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(count).arg(lock);
        let _ = self.store.run::<()>("throttle reset", &cmd).await;
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.name);
    }

    fn memory_wait(&self, keys: &[Key]) -> Duration {
        let now = Instant::now();
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|key| memory.get(&key.name)?.locked_until)
            .map(|until| until.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    fn memory_failure(&self, key: &Key) {
        let now = Instant::now();
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the map: forget entries idle past their window.
        if memory.len() > 100_000 {
            memory.retain(|_, e| {
                e.last
                    .is_some_and(|t| now.duration_since(t) < ADDRESS.window)
            });
        }
        let entry = memory.entry(key.name.clone()).or_default();
        if entry
            .last
            .is_some_and(|t| now.duration_since(t) > key.policy.window)
        {
            *entry = Entry::default();
        }
        entry.failures += 1;
        entry.last = Some(now);
        if let Some(delay) = delay_after(&key.policy, entry.failures) {
            entry.locked_until = Some(now + delay);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_double_up_to_the_cap() {
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
}
