//! Token verification with the platform's Ed25519 (WebCrypto, faster in a Worker than
//! Wasm) and the Wasm verifier from `shared` as the fallback when the platform fails.

use std::cell::Cell;
use std::future::Future;

use shared::{Error, KeySet, Validator, VerifiedClaims, VerifyingKey};

/// The platform could not check the signature at all (`importKey` or `verify` threw):
/// not the same as "the signature is wrong".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformFailed;

/// Verifies `token` with `platform` doing the Ed25519 check. If the platform fails,
/// the whole token is verified again by `shared`'s own Ed25519, so a broken or missing
/// WebCrypto costs speed, never a 401 for every token.
pub async fn verify<F, Fut>(
    validator: &Validator,
    token: &[u8],
    keys: &KeySet,
    now: u64,
    platform: F,
) -> Result<VerifiedClaims, Error>
where
    F: FnOnce(&VerifyingKey, &[u8], &[u8; 64]) -> Fut,
    Fut: Future<Output = Result<bool, PlatformFailed>>,
{
    let failed = Cell::new(false);
    let result = validator
        .verify_with(token, keys, now, |key, message, signature| {
            let check = platform(key, message, signature);
            let failed = &failed;
            async move {
                check.await.unwrap_or_else(|PlatformFailed| {
                    failed.set(true);
                    false
                })
            }
        })
        .await;
    if failed.get() {
        return validator.verify(token, keys, now);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{Claims, SigningKey};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Runs a future that never waits (the platform stand-ins here are ready at once).
    fn ready<T>(future: impl Future<Output = T>) -> T {
        let mut future = pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the test future waited"),
        }
    }

    fn token(key: &SigningKey) -> String {
        key.sign(&Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "u".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: 1000,
            nbf: 1000,
            exp: 1600,
            scope: "".into(),
        })
        .unwrap()
    }

    #[test]
    fn a_failing_platform_falls_back_to_the_wasm_verifier() {
        let key = SigningKey::from_seed([5; 32]);
        let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
        let validator = Validator::new("i", "a");
        let good = token(&key);
        let throws = |_: &VerifyingKey, _: &[u8], _: &[u8; 64]| async { Err(PlatformFailed) };
        let claims = ready(verify(&validator, good.as_bytes(), &keys, 1100, throws)).unwrap();
        assert_eq!(claims.subject(), "u");

        // The fallback still refuses what is invalid: another key's signature.
        let forged = token(&SigningKey::from_seed([6; 32]));
        let forged = format!(
            "{}.{}",
            good.rsplit_once('.').unwrap().0,
            forged.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            ready(verify(&validator, forged.as_bytes(), &keys, 1100, throws)),
            Err(Error::Signature)
        );
    }

    #[test]
    fn the_platforms_answer_is_final_when_it_gives_one() {
        let key = SigningKey::from_seed([5; 32]);
        let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
        let validator = Validator::new("i", "a");
        let good = token(&key);
        let says_no = |_: &VerifyingKey, _: &[u8], _: &[u8; 64]| async { Ok(false) };
        assert_eq!(
            ready(verify(&validator, good.as_bytes(), &keys, 1100, says_no)),
            Err(Error::Signature)
        );
        let says_yes = |_: &VerifyingKey, _: &[u8], _: &[u8; 64]| async { Ok(true) };
        assert!(ready(verify(&validator, good.as_bytes(), &keys, 1100, says_yes)).is_ok());
    }
}
