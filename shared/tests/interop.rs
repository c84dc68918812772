//! jwt-simple as an independent oracle: its tokens verify with shared and shared's
//! tokens verify with it.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use jwt_simple::prelude::*;
use serde::{Deserialize, Serialize};
use shared::Error;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Extra {
    sid: String,
    scope: String,
}

fn jwt_simple_key() -> Ed25519KeyPair {
    let seed_and_pk = [&SEED[..], signing_key().verifying_key().as_bytes()].concat();
    Ed25519KeyPair::from_bytes(&seed_and_pk)
        .unwrap()
        .with_key_id(&kid())
}

fn jwt_simple_claims() -> JWTClaims<Extra> {
    let c = claims();
    Claims::with_custom_claims(
        Extra {
            sid: c.sid,
            scope: c.scope,
        },
        Duration::from_mins(15),
    )
    .with_issuer(ISSUER)
    .with_audience(AUDIENCE)
    .with_subject(c.sub)
    .with_jwt_id(c.jti)
}

fn at_jwt() -> HeaderOptions {
    HeaderOptions {
        signature_type: Some("at+jwt".into()),
        ..Default::default()
    }
}

#[test]
fn tokens_signed_by_jwt_simple_verify_with_shared() {
    let token = jwt_simple_key()
        .sign_with_options(jwt_simple_claims(), &at_jwt())
        .unwrap();
    let verified = validator()
        .verify(token.as_bytes(), &keys(), shared::unix_now())
        .unwrap();
    assert_eq!(verified.subject(), claims().sub);
    assert_eq!(verified.session_id(), claims().sid);
    assert_eq!(verified.expires_at() - verified.issued_at(), 900);
}

#[test]
fn tokens_signed_by_shared_verify_with_jwt_simple() {
    let now = shared::unix_now();
    let token = signing_key()
        .sign(&shared::Claims {
            iat: now,
            nbf: now,
            exp: now + 900,
            ..claims()
        })
        .unwrap();
    let public = jwt_simple_key().public_key().with_key_id(&kid());
    let options = VerificationOptions {
        required_signature_type: Some("at+jwt".into()),
        required_key_id: Some(kid()),
        allowed_issuers: Some(HashSet::from_strings(&[ISSUER])),
        allowed_audiences: Some(HashSet::from_strings(&[AUDIENCE])),
        ..Default::default()
    };
    let verified = public.verify_token::<Extra>(&token, Some(options)).unwrap();
    assert_eq!(verified.subject.as_deref(), Some(claims().sub.as_str()));
    assert_eq!(
        verified.custom,
        Extra {
            sid: claims().sid,
            scope: claims().scope
        }
    );
}

#[test]
fn jwt_simple_tokens_with_its_default_typ_are_refused() {
    // jwt-simple writes `typ: JWT` unless told otherwise: not an access token (RFC 9068 §4).
    let token = jwt_simple_key().sign(jwt_simple_claims()).unwrap();
    assert_eq!(
        validator().verify(token.as_bytes(), &keys(), shared::unix_now()),
        Err(Error::Type)
    );
}

#[test]
fn a_jwt_simple_token_under_another_key_is_refused() {
    let other = Ed25519KeyPair::generate().with_key_id(&kid());
    let token = other
        .sign_with_options(jwt_simple_claims(), &at_jwt())
        .unwrap();
    assert_eq!(
        validator().verify(token.as_bytes(), &keys(), shared::unix_now()),
        Err(Error::Signature)
    );
}
