//! Arbitrary bytes as a token, a JWK set and a session record: nothing may panic,
//! and no input without a valid signature may verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::{KeySet, SigningKey, Validator, session::Stored};

fuzz_target!(|data: &[u8]| {
    let keys = KeySet::new(vec![SigningKey::from_seed([42; 32]).verifying_key()]).unwrap();
    let verdict =
        Validator::new("https://auth.test", "api.test").verify(data, &keys, 1_700_000_000);
    // Finding a valid signature by mutation would mean Ed25519 is broken.
    assert!(verdict.is_err());
    let _ = KeySet::from_jwks(data);
    let _ = Stored::decode(data);
});
