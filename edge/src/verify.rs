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

/// What the platform must check for a token whose every other part is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    pub key: [u8; 32],
    /// The signing input (`header.payload`).
    pub message: Vec<u8>,
    pub signature: [u8; 64],
}

/// The first half of a verification split around the platform's Ed25519 (the module
/// entry awaits WebCrypto itself, outside Rust's executor): every check but the
/// signature's. `Err` when the token fails before the signature would matter.
pub fn signature_check(
    validator: &Validator,
    token: &[u8],
    keys: &KeySet,
    now: u64,
) -> Result<SignatureCheck, Error> {
    let mut seen = None;
    let checked = ready(
        validator.verify_with(token, keys, now, |key, message, signature| {
            seen = Some(SignatureCheck {
                key: *key.as_bytes(),
                message: message.to_vec(),
                signature: *signature,
            });
            std::future::ready(true)
        }),
    );
    checked.ok_or(Error::Signature)??;
    seen.ok_or(Error::Signature)
}

/// The second half: the claims of `token`, given the platform's answer `valid` for
/// `key`. A key other than the one the set holds for the token now (the set changed
/// in between) counts as a wrong signature.
pub fn with_platform_answer(
    validator: &Validator,
    token: &[u8],
    keys: &KeySet,
    now: u64,
    key: &[u8; 32],
    valid: bool,
) -> Result<VerifiedClaims, Error> {
    let verified = ready(validator.verify_with(token, keys, now, |checked, _, _| {
        std::future::ready(valid && checked.as_bytes() == key)
    }));
    verified.ok_or(Error::Signature)?
}

/// Polls a future once: `None` if it would wait. The verifications above never do,
/// their signature checks being answers already known.
fn ready<T>(future: impl Future<Output = T>) -> Option<T> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{Claims, SigningKey};

    /// Runs a future that never waits (the platform stand-ins here are ready at once).
    fn ready<T>(future: impl Future<Output = T>) -> T {
        super::ready(future).expect("the test future waited")
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

    #[test]
    fn a_split_verification_accepts_only_what_the_platform_confirmed_for_the_same_key() {
        let key = SigningKey::from_seed([5; 32]);
        let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
        let validator = Validator::new("i", "a");
        let good = token(&key);

        let check = signature_check(&validator, good.as_bytes(), &keys, 1100).unwrap();
        assert_eq!(check.key, *key.verifying_key().as_bytes());
        assert_eq!(check.message, good.rsplit_once('.').unwrap().0.as_bytes());
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(good.rsplit_once('.').unwrap().1)
            .unwrap();
        assert_eq!(check.signature.to_vec(), signature);

        let claims =
            with_platform_answer(&validator, good.as_bytes(), &keys, 1100, &check.key, true);
        assert_eq!(claims.unwrap().subject(), "u");
        for (answer_key, valid) in [(check.key, false), ([9; 32], true)] {
            assert_eq!(
                with_platform_answer(&validator, good.as_bytes(), &keys, 1100, &answer_key, valid),
                Err(Error::Signature)
            );
        }
        // Everything but the signature is checked before the platform is asked.
        assert_eq!(
            signature_check(&validator, good.as_bytes(), &keys, 5000),
            Err(Error::Expired)
        );
        assert!(
            signature_check(&Validator::new("i", "other"), good.as_bytes(), &keys, 1100).is_err()
        );
    }
}
