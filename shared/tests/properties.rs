//! Properties over many inputs: no single-bit change to a valid token survives, and
//! no input whatsoever makes the validator panic.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use proptest::prelude::*;
use shared::{Claims, KeySet, SigningKey};

fn flip(token: &str, bit: usize) -> Vec<u8> {
    let mut bytes = token.as_bytes().to_vec();
    bytes[bit / 8] ^= 1 << (bit % 8);
    bytes
}

#[test]
fn every_single_bit_flip_of_a_valid_token_is_rejected_exhaustively() {
    let token = token();
    assert!(verify(&token).is_ok());
    for bit in 0..token.len() * 8 {
        let flipped = flip(&token, bit);
        let verdict = validator().verify(&flipped, &keys(), NOW);
        assert!(
            verdict.is_err(),
            "bit {bit} flipped still verifies: {}",
            String::from_utf8_lossy(&flipped)
        );
    }
}

fn arb_claims() -> impl Strategy<Value = Claims> {
    let id = "[A-Za-z0-9._~-]{1,40}";
    (
        id,
        id,
        id,
        0u64..=900,
        1u64..=3600,
        "[a-z:]{1,10}( [a-z:]{1,10}){0,4}",
    )
        .prop_map(|(sub, sid, jti, age, lifetime, scope)| Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub,
            sid,
            jti,
            iat: NOW - age.min(lifetime - 1),
            nbf: NOW - age.min(lifetime - 1),
            exp: NOW - age.min(lifetime - 1) + lifetime,
            scope,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_single_bit_flip_of_any_valid_token_is_rejected(seed in any::<[u8; 32]>(), claims in arb_claims(), bit in any::<prop::sample::Index>()) {
        let key = SigningKey::from_seed(seed);
        let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
        let token = key.sign(&claims).unwrap();
        prop_assert!(validator().verify(token.as_bytes(), &keys, NOW).is_ok());
        let flipped = flip(&token, bit.index(token.len() * 8));
        prop_assert!(validator().verify(&flipped, &keys, NOW).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = validator().verify(&bytes, &keys(), NOW);
    }

    #[test]
    fn arbitrary_segments_never_panic(h in "[A-Za-z0-9_-]{0,120}", p in "[A-Za-z0-9_-]{0,200}", s in "[A-Za-z0-9_-]{0,90}") {
        let _ = validator().verify(format!("{h}.{p}.{s}").as_bytes(), &keys(), NOW);
    }

    #[test]
    fn arbitrary_signed_payloads_never_panic(payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let token = sign_raw(serde_json::to_string(&header()).unwrap().as_bytes(), &payload);
        prop_assert!(validator().verify(token.as_bytes(), &keys(), NOW).is_err());
    }

    #[test]
    fn arbitrary_jwks_and_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = KeySet::from_jwks(&bytes);
        let _ = shared::session::Stored::decode(&bytes);
    }
}
