//! Password hashing with Argon2id, off the async runtime and with bounded concurrency.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// NIST SP 800-63B §5.1.1.2: at least 8 characters, at least 64 allowed, no
/// composition rules, no truncation.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Bytes refused before any hashing, so a huge input never reaches Argon2.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
    /// Every hash takes one of these (`HASH_CONCURRENCY`).
    slots: Arc<Semaphore>,
    /// A registration takes one of these first: registrations never hold more than
    /// this many slots, so the rest stay for logins, and a flood of sign-ups (each an
    /// Argon2 hash) cannot make a login wait into a 503.
    registration_slots: Arc<Semaphore>,
    /// How long a request waits for its slots before 503.
    queue_timeout: Duration,
    /// Argon2's working memory (`ARGON2_MEMORY_KIB` each), reused: at most one per
    /// slot ever exists. Allocating it per hash let glibc keep a freed 19 MiB buffer
    /// in the arena of every blocking thread that had hashed: 430 MiB of RSS after a
    /// burst of logins (`scripts/bench`), where the bound is now slots × memory.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    /// A hash of a random password at the current parameters: unknown users are
    /// checked against it, so they cost what a wrong password costs.
    dummy: Arc<str>,
}

/// What a hash is for: registrations get a share of the hashing slots only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Login,
    Registration,
}

/// Slots a registration may hold out of `concurrency`: half, rounded down, at least
/// one. Logins can always use the other half (with a single slot they share it).
pub fn registration_share(concurrency: usize) -> usize {
    (concurrency / 2).max(1)
}

pub enum Verified {
    Yes { rehash: Option<String> },
    No,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32, concurrency: usize) -> Result<Self, String> {
        Self::with_queue_timeout(memory_kib, iterations, concurrency, Duration::from_secs(10))
    }

    pub fn with_queue_timeout(
        memory_kib: u32,
        iterations: u32,
        concurrency: usize,
        queue_timeout: Duration,
    ) -> Result<Self, String> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut memory = vec![Block::default(); argon2.params().block_count()];
        let dummy_password = crate::random::bytes::<32>();
        let dummy = hash_with(&argon2, &mut memory, &dummy_password)
            .map_err(|_| "argon2 failed".to_string())?;
        Ok(Hasher {
            argon2,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            registration_slots: Arc::new(Semaphore::new(registration_share(concurrency))),
            queue_timeout,
            memory: Arc::new(Mutex::new(vec![memory])),
            dummy: dummy.into(),
        })
    }

    /// Runs `work` on the blocking pool once a hashing slot is free (for a
    /// registration, once one of its share is free too), with a slot's working memory.
    async fn run<T: Send + 'static>(
        &self,
        purpose: Purpose,
        work: impl FnOnce(&Argon2<'static>, &mut [Block]) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy = || ApiError::Unavailable {
            what: "too many password checks in progress",
            retry_after: 2,
        };
        let acquire = async {
            let share = match purpose {
                Purpose::Registration => {
                    Some(self.registration_slots.clone().acquire_owned().await?)
                }
                Purpose::Login => None,
            };
            let slot = self.slots.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((share, slot))
        };
        let permit = tokio::time::timeout(self.queue_timeout, acquire)
            .await
            .map_err(|_| busy())?
            .map_err(|_| ApiError::Internal)?;
        let argon2 = self.argon2.clone();
        let pool = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A permit guarantees a buffer or room for one: never more than the slots.
            let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut memory =
                taken.unwrap_or_else(|| vec![Block::default(); argon2.params().block_count()]);
            let result = work(&argon2, &mut memory);
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            result
        })
        .await
        .map_err(|_| ApiError::Internal)
    }

    /// A new hash of `password` (a registration).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(Purpose::Registration, move |argon2, memory| {
            hash_with(argon2, memory, password.as_bytes())
        })
        .await?
        .map_err(|_| ApiError::Internal)
    }

    /// Checks `password` against `stored`, or against the dummy hash when the user does
    /// not exist (`stored` is `None`), which always fails but costs the same.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, ApiError> {
        let (stored, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.dummy.to_string(), false),
        };
        self.run(Purpose::Login, move |argon2, memory| {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Verified::No;
            };
            // Upgrade hashes made with older (weaker or different) parameters.
            let current = argon2.params();
            let stale = Params::try_from(&parsed).map_or(true, |p| {
                p.m_cost() != current.m_cost()
                    || p.t_cost() != current.t_cost()
                    || p.p_cost() != current.p_cost()
            }) || parsed.algorithm != argon2::ARGON2ID_IDENT
                || parsed.version != Some(Version::V0x13.into());
            let matches = if stale {
                // Other parameters need other memory: the crate allocates it (rare,
                // once per user until the upgrade below).
                argon2.verify_password(password.as_bytes(), &parsed).is_ok()
            } else {
                verify_with(argon2, memory, password.as_bytes(), &parsed)
            };
            if !matches || !real {
                return Verified::No;
            }
            let rehash = if stale {
                hash_with(argon2, memory, password.as_bytes()).ok()
            } else {
                None
            };
            Verified::Yes { rehash }
        })
        .await
    }
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as `PasswordHasher` makes
/// it, computed in `memory`.
fn hash_with(
    argon2: &Argon2<'_>,
    memory: &mut [Block],
    password: &[u8],
) -> Result<String, argon2::password_hash::Error> {
    // A fresh 128-bit salt per hash.
    let salt_bytes = crate::random::bytes::<16>();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2.hash_password_into_with_memory(password, &salt_bytes, &mut out, memory)?;
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out)?),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches `parsed`, a hash at `argon2`'s own parameters, computed
/// in `memory`. `Output`'s comparison is constant-time.
fn verify_with(
    argon2: &Argon2<'_>,
    memory: &mut [Block],
    password: &[u8],
    parsed: &PasswordHash<'_>,
) -> bool {
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    if argon2
        .hash_password_into_with_memory(password, salt, out, memory)
        .is_err()
    {
        return false;
    }
    Output::new(out).is_ok_and(|computed| computed == expected)
}

/// The password rules: length only (NIST SP 800-63B §5.1.1.2), counted in characters.
pub fn check_password(password: &str, username: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::Unprocessable(
            "password must be at least 8 characters",
        ));
    }
    if chars > MAX_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::Unprocessable(
            "password must be at most 256 characters",
        ));
    }
    // §5.1.1.2 also asks to refuse context-specific words: the username is one.
    if password.eq_ignore_ascii_case(username) {
        return Err(ApiError::Unprocessable("password must not be the username"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Hasher {
        Hasher::new(19_456, 2, 2).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let hasher = fast();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(matches!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap(),
            Verified::Yes { rehash: None }
        ));
        assert!(matches!(
            hasher
                .verify("correct horsE".into(), Some(hash))
                .await
                .unwrap(),
            Verified::No
        ));
    }

    /// Hashes stored before the working memory was reused came from the crate's
    /// `PasswordHasher`: both ways must agree, byte for byte in format.
    #[tokio::test]
    async fn hashes_agree_with_the_argon2_crates_own_hasher() {
        use argon2::password_hash::PasswordHasher as _;
        let hasher = fast();
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let theirs = hasher
            .argon2
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(matches!(
            hasher
                .verify("correct horse".into(), Some(theirs.clone()))
                .await
                .unwrap(),
            Verified::Yes { rehash: None }
        ));
        assert!(matches!(
            hasher
                .verify("correct horsE".into(), Some(theirs))
                .await
                .unwrap(),
            Verified::No
        ));
        let ours = hasher.hash("correct horse".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            hasher
                .argon2
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            hasher
                .argon2
                .verify_password(b"correct horsE", &parsed)
                .is_err()
        );
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_salt() {
        let hasher = fast();
        assert_ne!(
            hasher.hash("same password".into()).await.unwrap(),
            hasher.hash("same password".into()).await.unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        assert!(matches!(
            fast().verify("anything at all".into(), None).await.unwrap(),
            Verified::No
        ));
    }

    #[tokio::test]
    async fn a_hash_with_older_parameters_is_upgraded_on_login() {
        let old = Hasher::new(19_456, 2, 1).unwrap();
        let hash = old.hash("correct horse".into()).await.unwrap();
        let stronger = Hasher::new(19_456, 3, 1).unwrap();
        match stronger
            .verify("correct horse".into(), Some(hash))
            .await
            .unwrap()
        {
            Verified::Yes { rehash: Some(new) } => assert!(new.contains("m=19456,t=3,p=1")),
            _ => panic!("expected an upgrade"),
        }
    }

    #[test]
    fn registrations_get_half_the_slots_and_logins_keep_the_rest() {
        assert_eq!([1, 2, 3, 4, 8].map(registration_share), [1, 1, 1, 2, 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_registrations_leaves_a_slot_for_a_login() {
        let hasher = Hasher::new(19_456, 2, 2).unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        let flood: Vec<_> = (0..20)
            .map(|_| {
                let h = hasher.clone();
                tokio::spawn(async move { h.hash("some password".into()).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            hasher.registration_slots.available_permits(),
            0,
            "the flood holds its whole share"
        );
        let started = std::time::Instant::now();
        let login = hasher.verify("correct horse".into(), Some(hash)).await;
        assert!(matches!(login, Ok(Verified::Yes { .. })));
        // One hash's time, not the queue of 20 registrations ahead of it.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        for task in flood {
            let _ = task.await;
        }
    }

    #[test]
    fn password_rules_are_length_only() {
        assert!(check_password("1234567", "bob").is_err());
        assert!(check_password("12345678", "bob").is_ok());
        assert!(
            check_password("ñññññññ", "bob").is_err(),
            "7 characters, 14 bytes"
        );
        assert!(check_password(&"x".repeat(256), "bob").is_ok());
        assert!(check_password(&"x".repeat(257), "bob").is_err());
        assert!(check_password("alice-the-user", "Alice-The-User").is_err());
        assert!(check_password("no digits or symbols", "bob").is_ok());
    }
}
