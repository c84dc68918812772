//! Sign and verify an access token natively, next to jwt-simple verifying the same
//! token. Run: `cargo bench -p shared --bench token`.

use criterion::{Criterion, criterion_group, criterion_main};
use jwt_simple::prelude::{
    Ed25519PublicKey, EdDSAPublicKeyLike, NoCustomClaims, VerificationOptions,
};
use shared::{Claims, KeySet, SigningKey, Validator};
use std::hint::black_box;

const NOW: u64 = 1_700_000_000;

fn claims() -> Claims {
    Claims {
        iss: "https://auth.test".into(),
        aud: "api.test".into(),
        sub: "3f1c1a52-6f0e-4b0a-9d3e-2f6a1c9b7e01".into(),
        sid: "b8e2d6c4-1a3f-4e5d-8c7b-9a0f1e2d3c4b".into(),
        jti: "Yk3n0Q2mR8vT5wX1zA7cB4".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 900,
        scope: "profile:read orders:write".into(),
    }
}

fn token(c: &mut Criterion) {
    let key = SigningKey::from_seed([42; 32]);
    let keys = KeySet::new(vec![key.verifying_key()]).unwrap();
    let validator = Validator::new("https://auth.test", "api.test");
    let claims = claims();
    let token = key.sign(&claims).unwrap();

    c.bench_function("shared sign", |b| {
        b.iter(|| key.sign(black_box(&claims)).unwrap())
    });
    c.bench_function("shared verify (signature + claims)", |b| {
        b.iter(|| {
            validator
                .verify(black_box(token.as_bytes()), &keys, NOW)
                .unwrap()
        })
    });

    let oracle = Ed25519PublicKey::from_bytes(key.verifying_key().as_bytes()).unwrap();
    let options = VerificationOptions {
        artificial_time: Some(jwt_simple::prelude::UnixTimeStamp::from_secs(NOW)),
        ..Default::default()
    };
    c.bench_function("jwt-simple verify (same token)", |b| {
        b.iter(|| {
            oracle
                .verify_token::<NoCustomClaims>(black_box(&token), Some(options.clone()))
                .unwrap()
        })
    });

    let jwks = keys.to_jwks();
    c.bench_function("shared parse JWK set (1 key)", |b| {
        b.iter(|| KeySet::from_jwks(black_box(jwks.as_bytes())).unwrap())
    });
}

criterion_group!(benches, token);
criterion_main!(benches);
