//! Arbitrary bytes as the payload of a correctly signed token, so the fuzzer reaches
//! the claim checks behind the signature: nothing may panic, and whatever verifies
//! must satisfy the claim rules.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use shared::{KeySet, SigningKey, Validator};

const NOW: u64 = 1_700_000_000;

fuzz_target!(|payload: &[u8]| {
    let key = SigningKey::from_seed([42; 32]);
    let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
    let header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, key.kid());
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([42; 32]));
    let token = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(pair.sk.sign(input.as_bytes(), None).as_ref())
    );

    let validator = Validator::new("https://auth.test", "api.test");
    if let Ok(claims) = validator.verify(token.as_bytes(), &keys, NOW) {
        let leeway = validator.limits().leeway;
        assert_eq!(claims.issuer(), "https://auth.test");
        assert!(claims.issued_at() < claims.expires_at());
        assert!(claims.expires_at() - claims.issued_at() <= validator.limits().max_lifetime);
        assert!(NOW < claims.expires_at() + leeway && claims.not_before() <= NOW + leeway);
        assert!(
            shared::is_identifier(claims.subject()) && shared::is_identifier(claims.session_id())
        );
    }
});
