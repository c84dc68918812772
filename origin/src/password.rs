//! Password hashing with Argon2id, off the async runtime and with bounded concurrency.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// NIST SP 800-63B §5.1.1.2: at least 8 characters, at least 64 allowed, no
/// composition rules, no truncation.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Bytes refused before any hashing, so a huge input never reaches Argon2.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How long a request waits for a hashing slot before answering 503.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
    slots: Arc<Semaphore>,
    /// A hash of a random password at the current parameters: unknown users are
    /// checked against it, so they cost what a wrong password costs.
    dummy: Arc<str>,
}

pub enum Verified {
    Yes { rehash: Option<String> },
    No,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32, concurrency: usize) -> Result<Self, String> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_password = crate::random::bytes::<32>();
        let dummy = hash_with(&argon2, &dummy_password).map_err(|_| "argon2 failed".to_string())?;
        Ok(Hasher {
            argon2,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: dummy.into(),
        })
    }

    /// Runs `work` on the blocking pool once a hashing slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Unavailable {
                what: "too many logins in progress",
                retry_after: 2,
            })?
            .map_err(|_| ApiError::Internal)?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&argon2)
        })
        .await
        .map_err(|_| ApiError::Internal)
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move |argon2| hash_with(argon2, password.as_bytes()))
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
        self.run(move |argon2| {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Verified::No;
            };
            if argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_err()
                || !real
            {
                return Verified::No;
            }
            // Upgrade hashes made with older (weaker or different) parameters.
            let current = argon2.params();
            let stale = Params::try_from(&parsed).map_or(true, |p| {
                p.m_cost() != current.m_cost()
                    || p.t_cost() != current.t_cost()
                    || p.p_cost() != current.p_cost()
            }) || parsed.algorithm != argon2::ARGON2ID_IDENT;
            let rehash = if stale {
                hash_with(argon2, password.as_bytes()).ok()
            } else {
                None
            };
            Verified::Yes { rehash }
        })
        .await
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    // A fresh 128-bit salt per hash.
    let salt = SaltString::encode_b64(&crate::random::bytes::<16>())?;
    Ok(argon2.hash_password(password, &salt)?.to_string())
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
