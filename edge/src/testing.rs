//! Fixtures shared by the crate's native tests.

use shared::{Claims, KeySet, SigningKey, Validator, VerifiedClaims};

/// Claims of user `u1`, session `s1` (issuer `i`, audience `a`, scope `profile`),
/// signed by the key of `seed` and verified at 1100; they expire at 1900. With the key
/// set that verified them.
pub fn verified(seed: u8) -> (VerifiedClaims, KeySet) {
    let key = SigningKey::from_seed([seed; 32]);
    let claims = Claims {
        iss: "i".into(),
        aud: "a".into(),
        sub: "u1".into(),
        sid: "s1".into(),
        jti: "j".into(),
        iat: 1000,
        nbf: 1000,
        exp: 1900,
        scope: "profile".into(),
    };
    let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
    let verified = Validator::new("i", "a")
        .verify(key.sign(&claims).unwrap().as_bytes(), &keys, 1100)
        .unwrap();
    (verified, keys)
}
