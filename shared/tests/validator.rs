//! One test per rejection the validator makes, plus the acceptances at each boundary.
//! The same vectors run natively and on wasm32-unknown-unknown (see `vectors!`).

mod common;

use common::*;
use serde_json::{Value, json};
use shared::{Claim, Error, KeySet, Limits, SigningKey, Validator};

/// Asserts the valid payload with `name` set to `value` is refused with `error`.
fn claim_rejected(name: &str, value: Value, error: Error) {
    let token = with_payload(|p| {
        p.insert(name.into(), value.clone());
    });
    assert_eq!(verify(&token), Err(error), "{name} = {value}");
}

fn claim_missing(claim: Claim) {
    let token = with_payload(|p| {
        p.remove(claim.name());
    });
    assert_eq!(verify(&token), Err(Error::Claim(claim)));
}

/// A token whose three times are `iat`, `nbf`, `exp`.
fn timed(iat: u64, nbf: u64, exp: u64) -> String {
    with_payload(|p| {
        p.insert("iat".into(), iat.into());
        p.insert("nbf".into(), nbf.into());
        p.insert("exp".into(), exp.into());
    })
}

vectors! {
    // ---- acceptance: the baseline every rejection below departs from ----

    fn a_valid_token_verifies_and_exposes_its_claims() {
        let claims = verify(&token()).unwrap();
        let expected = common::claims();
        assert_eq!(claims.subject(), expected.sub);
        assert_eq!(claims.session_id(), expected.sid);
        assert_eq!(claims.token_id(), expected.jti);
        assert_eq!(claims.issuer(), ISSUER);
        assert_eq!((claims.issued_at(), claims.not_before(), claims.expires_at()), (expected.iat, expected.nbf, expected.exp));
        assert_eq!(claims.scope(), "profile:read orders:write");
        assert!(claims.has_scope("orders:write") && !claims.has_scope("orders"));
        assert_eq!(claims.kid(), kid());
    }

    fn the_header_is_exactly_alg_typ_kid() {
        let token = token();
        let header = token.split('.').next().unwrap();
        assert_eq!(header, b64(format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt"}}"#, kid()).as_bytes()));
    }

    // ---- size and structure ----

    fn a_token_over_the_size_limit_is_rejected_before_parsing() {
        let token = "a".repeat(Limits::default().max_token_len + 1);
        assert_eq!(verify(&token), Err(Error::TooLong));
        let padded = with_payload(|p| { p.insert("pad".into(), "x".repeat(4000).into()); });
        assert_eq!(verify(&padded), Err(Error::TooLong));
    }

    fn a_token_at_the_size_limit_is_parsed() {
        let token = token();
        let limits = Limits { max_token_len: token.len(), ..Limits::default() };
        assert!(validator().with_limits(limits).verify(token.as_bytes(), &keys(), NOW).is_ok());
    }

    fn wrong_segment_counts_are_malformed() {
        let token = token();
        let parts: Vec<&str> = token.split('.').collect();
        for bad in ["".to_string(), parts[0].to_string(), parts[..2].join("."), format!("{token}.{}", parts[2]), format!("{token}.")] {
            assert_eq!(verify(&bad), Err(Error::Malformed), "{bad:?}");
        }
    }

    fn empty_segments_are_malformed() {
        let token = token();
        let p: Vec<&str> = token.split('.').collect();
        for bad in [format!(".{}.{}", p[1], p[2]), format!("{}..{}", p[0], p[2]), format!("{}.{}.", p[0], p[1]), "..".into()] {
            assert_eq!(verify(&bad), Err(Error::Malformed), "{bad:?}");
        }
    }

    fn padded_base64_is_rejected() {
        let token = token();
        let p: Vec<&str> = token.split('.').collect();
        // The header of our tokens is 63 bytes: 84 characters unpadded, 1 pad in standard form.
        assert_eq!(verify(&format!("{}=.{}.{}", p[0], p[1], p[2])), Err(Error::Base64));
        assert_eq!(verify(&format!("{}.{}.{}==", p[0], p[1], p[2])), Err(Error::Base64));
    }

    fn the_standard_base64_alphabet_is_rejected() {
        let token = token();
        let p: Vec<&str> = token.split('.').collect();
        let std_sig = p[2].replace('-', "+").replace('_', "/");
        let std_sig = if std_sig == p[2] { format!("+{}", &p[2][1..]) } else { std_sig };
        assert_eq!(verify(&format!("{}.{}.{}", p[0], p[1], std_sig)), Err(Error::Base64));
    }

    fn whitespace_and_non_ascii_in_a_segment_are_rejected() {
        let token = token();
        let (h, rest) = token.split_at(10);
        assert_eq!(verify(&format!("{h} {rest}")), Err(Error::Base64));
        assert_eq!(verify(&format!("{h}\n{rest}")), Err(Error::Base64));
        assert_eq!(verify(&format!("{h}é{rest}")), Err(Error::Base64));
        assert_eq!(validator().verify(&[0xff, b'.', b'a', b'.', b'a'], &keys(), NOW), Err(Error::Base64));
    }

    fn non_zero_trailing_bits_are_rejected() {
        // 64 signature bytes = 85⅓ characters: the last one carries 4 unused bits.
        let token = token();
        let (rest, last) = token.split_at(token.len() - 1);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let value = alphabet.find(last).unwrap();
        assert_eq!(value & 0b1111, 0, "our encoder writes canonical base64url");
        let noncanonical = &alphabet[value | 1..=value | 1];
        assert_eq!(verify(&format!("{rest}{noncanonical}")), Err(Error::Base64));
    }

    fn a_header_that_is_not_json_is_rejected() {
        assert_eq!(verify(&sign_raw(b"alg=EdDSA", br#"{}"#)), Err(Error::Json));
        assert_eq!(verify(&sign_raw(br#"{"alg":"EdDSA""#, br#"{}"#)), Err(Error::Json));
        assert_eq!(verify(&sign_raw(b"{\"alg\":\"EdDSA\"}\0", br#"{}"#)), Err(Error::Json));
    }

    fn a_header_that_is_json_but_not_an_object_is_rejected() {
        for header in [&b"[\"EdDSA\"]"[..], b"\"EdDSA\"", b"null", b"42"] {
            assert_eq!(verify(&sign_raw(header, br#"{}"#)), Err(Error::Json));
        }
    }

    fn a_header_with_duplicate_members_is_rejected() {
        let header = format!(r#"{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, kid());
        let payload = serde_json::to_vec(&claims()).unwrap();
        assert_eq!(verify(&sign_raw(header.as_bytes(), &payload)), Err(Error::Json));
    }

    fn a_signed_payload_that_is_not_json_is_rejected() {
        let header = serde_json::to_vec(&header()).unwrap();
        assert_eq!(verify(&sign_raw(&header, b"sub=admin")), Err(Error::Json));
        assert_eq!(verify(&sign_raw(&header, b"{\"sub\":\"\xff\"}")), Err(Error::Json));
    }

    fn a_signed_payload_that_is_not_an_object_is_rejected() {
        let header = serde_json::to_vec(&header()).unwrap();
        for payload in [&b"[]"[..], b"\"admin\"", b"true", b"1"] {
            assert_eq!(verify(&sign_raw(&header, payload)), Err(Error::Json));
        }
    }

    fn a_signed_payload_with_duplicate_claims_is_rejected() {
        let header = serde_json::to_vec(&header()).unwrap();
        let payload = serde_json::to_string(&claims()).unwrap();
        let payload = payload.replacen('{', r#"{"sub":"admin","#, 1);
        assert_eq!(verify(&sign_raw(&header, payload.as_bytes())), Err(Error::Json));
    }

    fn a_signed_payload_that_is_not_strict_base64url_is_rejected() {
        let header = b64(Value::Object(header()).to_string().as_bytes());
        let payload = format!("{}=", b64(&serde_json::to_vec(&claims()).unwrap()));
        let input = format!("{header}.{payload}");
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(SEED));
        let token = format!("{input}.{}", b64(pair.sk.sign(input.as_bytes(), None).as_ref()));
        assert_eq!(verify(&token), Err(Error::Base64));
    }

    fn json_nested_127_levels_parses_and_128_is_refused() {
        let nested = |depth: usize| with_payload(|p| {
            let text = format!("{}{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
            p.insert("deep".into(), serde_json::from_str(&text).unwrap());
        });
        assert!(verify(&nested(127)).is_ok());
        assert_eq!(verify(&nested(128)), Err(Error::Json));
    }

    // ---- algorithm ----

    fn alg_none_is_rejected_in_every_letter_case() {
        for alg in ["none", "None", "NONE", "nOnE", "NoNe", "nonE"] {
            let token = format!("{}.{}.{}", b64(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, kid()).as_bytes()), token().split('.').nth(1).unwrap(), "AA");
            assert_eq!(verify(&token), Err(Error::Algorithm), "{alg}");
            // and with an empty signature segment, as `none` tokens are sent
            assert_eq!(verify(&format!("{}.", token.rsplit_once('.').unwrap().0)), Err(Error::Malformed));
        }
    }

    fn every_other_algorithm_is_rejected() {
        for alg in ["HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES256K", "ES384", "Ed25519", "Ed448", "eddsa", "EDDSA", "EdDSA ", " EdDSA", "", "dir"] {
            let token = with_header(|h| { h.insert("alg".into(), alg.into()); });
            assert_eq!(verify(&token), Err(Error::Algorithm), "{alg:?}");
        }
    }

    fn a_missing_or_non_string_alg_is_rejected() {
        assert_eq!(verify(&with_header(|h| { h.remove("alg"); })), Err(Error::Algorithm));
        for alg in [json!(null), json!(["EdDSA"]), json!({"name": "EdDSA"}), json!(1)] {
            assert_eq!(verify(&with_header(|h| { h.insert("alg".into(), alg.clone()); })), Err(Error::Algorithm));
        }
    }

    fn an_hmac_token_keyed_with_our_public_key_bytes_is_rejected() {
        // The classic key-confusion attack: HS256 with the public key as the HMAC secret.
        let public_key = signing_key().verifying_key();
        let mut header = header();
        header.insert("alg".into(), "HS256".into());
        let input = format!("{}.{}", b64(Value::Object(header).to_string().as_bytes()), b64(&serde_json::to_vec(&claims()).unwrap()));
        let mac = hmac_sha256::HMAC::mac(input.as_bytes(), public_key.as_bytes());
        assert_eq!(verify(&format!("{input}.{}", b64(&mac))), Err(Error::Algorithm));
    }

    // ---- header parameters that must never be honoured ----

    fn embedded_or_referenced_keys_in_the_header_are_rejected() {
        let jwk = signing_key().verifying_key().to_jwk();
        let cases = [("jwk", jwk), ("jku", json!("https://evil.test/jwks.json")), ("x5u", json!("https://evil.test/cert.pem")), ("x5c", json!(["MIIB"]))];
        for (name, value) in cases {
            let token = with_header(|h| { h.insert(name.into(), value.clone()); });
            assert_eq!(verify(&token), Err(Error::KeyReference), "{name}");
        }
    }

    fn any_crit_header_is_rejected() {
        for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("exp")] {
            let token = with_header(|h| { h.insert("crit".into(), crit.clone()); h.insert("exp".into(), 1.into()); });
            assert_eq!(verify(&token), Err(Error::Critical), "{crit}");
        }
    }

    fn a_missing_or_wrong_typ_is_rejected() {
        assert_eq!(verify(&with_header(|h| { h.remove("typ"); })), Err(Error::Type));
        for typ in [json!("JWT"), json!("jwt"), json!("at+jwt "), json!("application/jwt"), json!("dpop+jwt"), json!(""), json!(null), json!(["at+jwt"])] {
            assert_eq!(verify(&with_header(|h| { h.insert("typ".into(), typ.clone()); })), Err(Error::Type), "{typ}");
        }
    }

    fn the_full_media_type_and_any_letter_case_of_typ_are_accepted() {
        // RFC 9068 §4 and RFC 7515 §4.1.9.
        for typ in ["application/at+jwt", "AT+JWT", "Application/At+Jwt"] {
            assert!(verify(&with_header(|h| { h.insert("typ".into(), typ.into()); })).is_ok(), "{typ}");
        }
    }

    fn a_missing_or_non_string_kid_is_rejected() {
        assert_eq!(verify(&with_header(|h| { h.remove("kid"); })), Err(Error::KeyId));
        for kid in [json!(null), json!(1), json!([kid()]), json!({"kid": kid()})] {
            assert_eq!(verify(&with_header(|h| { h.insert("kid".into(), kid.clone()); })), Err(Error::KeyId), "{kid}");
        }
    }

    fn a_hostile_kid_is_rejected_before_any_lookup() {
        let hostile = ["", "../../../../etc/passwd", "' OR '1'='1", "key\0id", "kid with spaces", "ключ", "a/b", "{sub}", &"k".repeat(65)];
        for kid in hostile {
            assert_eq!(verify(&with_header(|h| { h.insert("kid".into(), kid.into()); })), Err(Error::KeyId), "{kid:?}");
        }
    }

    fn a_well_formed_but_unknown_kid_is_rejected() {
        assert_eq!(verify(&with_header(|h| { h.insert("kid".into(), "retired-2024".into()); })), Err(Error::UnknownKey));
        assert_eq!(validator().verify(token().as_bytes(), &KeySet::default(), NOW), Err(Error::UnknownKey));
    }

    // ---- signature ----

    fn a_token_signed_by_another_key_under_our_kid_is_rejected() {
        let token = sign_raw_with(OTHER_SEED, Value::Object(header()).to_string().as_bytes(), &serde_json::to_vec(&claims()).unwrap());
        assert_eq!(verify(&token), Err(Error::Signature));
    }

    fn a_token_verified_against_another_key_set_is_rejected() {
        let other = SigningKey::from_seed(OTHER_SEED).with_kid(shared::KeyId::new(&kid()).unwrap());
        let keys = KeySet::new(vec![other.verifying_key()]).unwrap();
        assert_eq!(validator().verify(token().as_bytes(), &keys, NOW), Err(Error::Signature));
    }

    fn a_signature_of_the_wrong_length_or_all_zero_is_rejected() {
        let token = token();
        let input = token.rsplit_once('.').unwrap().0;
        for signature in [vec![0u8; 63], vec![0u8; 65], vec![0u8; 64], vec![0xff; 64]] {
            assert_eq!(verify(&format!("{input}.{}", b64(&signature))), Err(Error::Signature));
        }
    }

    fn a_signature_with_s_plus_the_group_order_is_rejected_on_both_paths() {
        let token = token();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut sig: Vec<u8> = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature).unwrap();
        // S + L, little-endian; L = 2^252 + 27742317777372353535851937790883648493.
        let l: [u8; 32] = [0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = sig[32 + i] as u16 + l[i] as u16 + carry;
            sig[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 32 bytes for a canonical S");
        let malleated = format!("{input}.{}", b64(&sig));
        assert_eq!(verify(&malleated), Err(Error::Signature));
        let (validator, keys) = (validator(), keys());
        let accept_all = |_: &_, _: &_, _: &_| core::future::ready(true);
        assert_eq!(block_on(validator.verify_with(malleated.as_bytes(), &keys, NOW, accept_all)), Err(Error::Signature));
    }

    fn a_valid_signature_moved_onto_another_payload_is_rejected() {
        let token = token();
        let signature = token.rsplit_once('.').unwrap().1;
        let forged = with_payload(|p| { p.insert("sub".into(), "admin".into()); });
        let input = forged.rsplit_once('.').unwrap().0;
        assert_eq!(verify(&format!("{input}.{signature}")), Err(Error::Signature));
    }

    // ---- issuer, audience and ids ----

    fn a_wrong_issuer_is_rejected() {
        for iss in ["https://evil.test", "https://auth.test/", "HTTPS://AUTH.TEST", ""] {
            claim_rejected("iss", iss.into(), Error::Issuer);
        }
    }

    fn a_missing_or_non_string_issuer_is_rejected() {
        claim_missing(Claim::Iss);
        claim_rejected("iss", json!([ISSUER]), Error::Claim(Claim::Iss));
        claim_rejected("iss", json!(null), Error::Claim(Claim::Iss));
    }

    fn a_wrong_audience_is_rejected() {
        claim_rejected("aud", "other-api".into(), Error::Audience);
        claim_rejected("aud", json!(["other-api", "third"]), Error::Audience);
    }

    fn an_audience_array_that_contains_ours_is_accepted() {
        let token = with_payload(|p| { p.insert("aud".into(), json!(["other-api", AUDIENCE])); });
        assert!(verify(&token).is_ok());
    }

    fn a_missing_empty_or_non_string_audience_is_rejected() {
        claim_missing(Claim::Aud);
        for aud in [json!([]), json!(null), json!(1), json!([AUDIENCE, 1]), json!({"aud": AUDIENCE})] {
            claim_rejected("aud", aud, Error::Claim(Claim::Aud));
        }
    }

    fn a_missing_sub_sid_or_jti_is_rejected() {
        for claim in [Claim::Sub, Claim::Sid, Claim::Jti] {
            claim_missing(claim);
        }
    }

    fn a_malformed_sub_sid_or_jti_is_rejected() {
        for claim in [Claim::Sub, Claim::Sid, Claim::Jti] {
            for bad in [json!(""), json!(42), json!(null), json!(["a"]), json!("a b"), json!("{user}"), json!("a:b"), json!("x".repeat(129))] {
                claim_rejected(claim.name(), bad, Error::Claim(claim));
            }
        }
    }

    fn a_missing_or_malformed_scope_is_rejected() {
        claim_missing(Claim::Scope);
        for bad in [json!(["read"]), json!(null), json!("read  write"), json!(" read"), json!("read\"x"), json!("read\\x"), json!("r\u{e9}ad")] {
            claim_rejected("scope", bad, Error::Claim(Claim::Scope));
        }
    }

    fn an_empty_scope_means_no_permissions() {
        let claims = verify(&with_payload(|p| { p.insert("scope".into(), "".into()); })).unwrap();
        assert!(!claims.has_scope("") && !claims.has_scope("profile:read"));
    }

    // ---- times: exp, nbf, iat at and just past the leeway ----

    fn exp_is_accepted_until_the_last_second_of_the_leeway() {
        let token = token();
        let exp = claims().exp;
        assert!(verify_at(&token, exp - 1).is_ok());
        assert!(verify_at(&token, exp).is_ok(), "within leeway");
        assert!(verify_at(&token, exp + LEEWAY - 1).is_ok(), "last second of leeway");
    }

    fn exp_is_rejected_exactly_at_the_leeway_and_after() {
        let token = token();
        let exp = claims().exp;
        assert_eq!(verify_at(&token, exp + LEEWAY), Err(Error::Expired));
        assert_eq!(verify_at(&token, exp + LEEWAY + 1), Err(Error::Expired));
        assert_eq!(verify_at(&token, u64::MAX), Err(Error::Expired));
    }

    fn nbf_is_accepted_exactly_at_the_leeway() {
        assert!(verify(&timed(NOW, NOW + LEEWAY, NOW + 600)).is_ok());
    }

    fn nbf_just_past_the_leeway_is_rejected() {
        assert_eq!(verify(&timed(NOW - 10, NOW + LEEWAY + 1, NOW + 600)), Err(Error::NotYetValid));
    }

    fn iat_is_accepted_exactly_at_the_leeway() {
        assert!(verify(&timed(NOW + LEEWAY, NOW + LEEWAY, NOW + 600)).is_ok());
    }

    fn iat_just_past_the_leeway_is_rejected() {
        assert_eq!(verify(&timed(NOW + LEEWAY + 1, NOW, NOW + 600)), Err(Error::IssuedInFuture));
    }

    fn a_lifetime_at_the_maximum_is_accepted() {
        assert!(verify(&timed(NOW - 10, NOW - 10, NOW - 10 + 3600)).is_ok());
    }

    fn a_lifetime_over_the_maximum_is_rejected() {
        assert_eq!(verify(&timed(NOW - 10, NOW - 10, NOW - 10 + 3601)), Err(Error::Lifetime));
        assert_eq!(verify(&timed(0, 0, NOW + 60)), Err(Error::Lifetime));
    }

    fn exp_not_after_iat_is_rejected() {
        assert_eq!(verify(&timed(NOW, NOW, NOW)), Err(Error::Lifetime));
        assert_eq!(verify(&timed(NOW, NOW, NOW - 1)), Err(Error::Lifetime));
    }

    fn missing_times_are_rejected() {
        for claim in [Claim::Iat, Claim::Nbf, Claim::Exp] {
            claim_missing(claim);
        }
    }

    fn non_numeric_times_are_rejected() {
        for claim in [Claim::Iat, Claim::Nbf, Claim::Exp] {
            for bad in [json!("1700000000"), json!(null), json!(true), json!([NOW]), json!({"t": NOW})] {
                claim_rejected(claim.name(), bad, Error::Claim(claim));
            }
        }
    }

    fn fractional_negative_and_out_of_range_times_are_rejected() {
        for claim in [Claim::Iat, Claim::Nbf, Claim::Exp] {
            for bad in [json!(1_700_000_000.5), json!(1.7e9), json!(-1), json!(i64::MIN), json!(shared::MAX_TIME + 1), json!(u64::MAX)] {
                claim_rejected(claim.name(), bad, Error::Claim(claim));
            }
        }
    }

    fn a_time_too_large_for_any_integer_type_is_rejected() {
        let header = serde_json::to_vec(&header()).unwrap();
        let payload = serde_json::to_string(&claims()).unwrap().replace(&format!("\"exp\":{}", claims().exp), "\"exp\":1e400");
        assert_eq!(verify(&sign_raw(&header, payload.as_bytes())), Err(Error::Json));
    }

    // ---- limits and alternative verification ----

    fn a_leeway_above_sixty_seconds_is_lowered_to_sixty() {
        let limits = Limits { leeway: 3600, ..Limits::default() };
        let validator = Validator::new(ISSUER, AUDIENCE).with_limits(limits);
        assert_eq!(validator.limits().leeway, 60);
        let exp = claims().exp;
        assert!(validator.verify(token().as_bytes(), &keys(), exp + 59).is_ok());
        assert_eq!(validator.verify(token().as_bytes(), &keys(), exp + 60), Err(Error::Expired));
    }

    fn an_external_signature_check_gets_the_key_input_and_signature_and_its_no_wins() {
        let token = token();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let run = |answer: bool| {
            let (validator, keys) = (validator(), keys());
            block_on(validator.verify_with(token.as_bytes(), &keys, NOW, |key, message, sig| {
                assert_eq!(key.kid().as_str(), kid());
                assert_eq!(message, input.as_bytes());
                assert_eq!(b64(sig), signature);
                core::future::ready(answer)
            }))
        };
        assert!(run(true).is_ok());
        assert_eq!(run(false), Err(Error::Signature));
    }

    fn an_external_signature_check_is_not_consulted_for_a_bad_header() {
        let token = with_header(|h| { h.insert("alg".into(), "none".into()); });
        let (validator, keys) = (validator(), keys());
        let never = |_: &_, _: &_, _: &_| -> core::future::Ready<bool> { panic!("called") };
        assert_eq!(block_on(validator.verify_with(token.as_bytes(), &keys, NOW, never)), Err(Error::Algorithm));
    }

    fn an_external_signature_check_is_not_consulted_for_an_unknown_kid_or_a_short_signature() {
        let (validator, keys) = (validator(), keys());
        let never = |_: &_, _: &_, _: &_| -> core::future::Ready<bool> { panic!("called") };
        let unknown = with_header(|h| { h.insert("kid".into(), "retired".into()); });
        assert_eq!(block_on(validator.verify_with(unknown.as_bytes(), &keys, NOW, never)), Err(Error::UnknownKey));
        let short = format!("{}.{}", token().rsplit_once('.').unwrap().0, b64(&[1; 63]));
        assert_eq!(block_on(validator.verify_with(short.as_bytes(), &keys, NOW, never)), Err(Error::Signature));
    }

    fn revocation_verifies_an_expired_token_but_nothing_forged_or_malformed() {
        let exp = claims().exp;
        let (validator, keys) = (validator(), keys());
        assert_eq!(validator.verify(token().as_bytes(), &keys, exp + 3600), Err(Error::Expired));
        let verified = validator.verify_at_any_time(token().as_bytes(), &keys).unwrap();
        assert_eq!(verified.session_id(), claims().sid);
        let mut forged = token().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(validator.verify_at_any_time(&forged, &keys), Err(Error::Signature));
        assert_eq!(validator.verify_at_any_time(timed(NOW, NOW, NOW + 7200).as_bytes(), &keys), Err(Error::Lifetime));
    }

    fn a_shorter_maximum_lifetime_is_enforced() {
        let validator = validator().with_limits(Limits { max_lifetime: 600, ..Limits::default() });
        assert_eq!(validator.verify(token().as_bytes(), &keys(), NOW), Err(Error::Lifetime), "900 s token");
        assert!(validator.verify(timed(NOW - 10, NOW - 10, NOW + 590).as_bytes(), &keys(), NOW).is_ok());
    }

    fn the_issuer_refuses_to_sign_claims_no_verifier_accepts() {
        let key = signing_key();
        let mut bad = claims();
        bad.sub = "a b".into();
        assert_eq!(key.sign(&bad), Err(Error::Claim(Claim::Sub)));
        let mut bad = claims();
        bad.exp = bad.iat;
        assert_eq!(key.sign(&bad), Err(Error::Lifetime));
        let mut bad = claims();
        bad.scope = "a  b".into();
        assert_eq!(key.sign(&bad), Err(Error::Claim(Claim::Scope)));
    }

    fn debug_output_of_keys_shows_no_key_material() {
        let key = signing_key();
        let seed_hex: String = SEED.iter().map(|b| format!("{b:02x}")).collect();
        let debug = format!("{key:?} {:?}", key.verifying_key());
        assert!(debug.contains(&kid()));
        assert!(!debug.contains(&seed_hex) && !debug.contains("42, 42"), "{debug}");
    }
}

/// Polls a future that never waits (the checks here resolve at once).
fn block_on<F: core::future::Future>(future: F) -> F::Output {
    let mut future = core::pin::pin!(future);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        core::task::Poll::Ready(out) => out,
        core::task::Poll::Pending => panic!("future pending"),
    }
}
