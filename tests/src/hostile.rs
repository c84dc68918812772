//! Hostile access tokens for the HTTP-level attack tests: the rejection vectors of
//! `shared`'s unit tests (`shared/tests/validator.rs`), rebuilt around a live session
//! and signed with the stack's real key where a signature is needed, so that each
//! token differs from an accepted one by exactly the defect it names.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds tokens from one key (its 32-byte seed and published `kid`) and the claims
/// of a valid token, which [`Forge::valid`] reproduces (the tests' control).
pub struct Forge {
    key: ed25519_compact::KeyPair,
    kid: String,
    claims: Map<String, Value>,
}

impl Forge {
    pub fn new(seed: &[u8], kid: &str, claims: &Value) -> Forge {
        Forge {
            key: ed25519_compact::KeyPair::from_seed(
                ed25519_compact::Seed::from_slice(seed).expect("a 32-byte seed"),
            ),
            kid: kid.into(),
            claims: claims.as_object().expect("claims object").clone(),
        }
    }

    fn header(&self) -> Map<String, Value> {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid})
            .as_object()
            .unwrap()
            .clone()
    }

    /// `b64(header).b64(payload).b64(Ed25519 signature)` over raw header and payload text.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = self.key.sk.sign(input.as_bytes(), None);
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn with(
        &self,
        edit_header: impl FnOnce(&mut Map<String, Value>),
        edit_claims: impl FnOnce(&mut Map<String, Value>),
    ) -> String {
        let (mut header, mut claims) = (self.header(), self.claims.clone());
        edit_header(&mut header);
        edit_claims(&mut claims);
        self.sign_raw(
            &Value::Object(header).to_string(),
            &Value::Object(claims).to_string(),
        )
    }

    fn header_with(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        self.with(edit, |_| {})
    }

    fn claims_with(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        self.with(|_| {}, edit)
    }

    /// The valid token: accepted, so every refusal below is about its one change.
    pub fn valid(&self) -> String {
        self.with(|_| {}, |_| {})
    }

    /// Every rejection vector of `shared`, named.
    pub fn hostile(&self) -> Vec<(String, String)> {
        let valid = self.valid();
        let parts: Vec<&str> = valid.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        let now = self.claims["iat"].as_u64().unwrap();
        let signature = URL_SAFE_NO_PAD.decode(s).unwrap();
        let mut cases: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, token: String| cases.push((name.to_string(), token));

        // Size and structure.
        add("over 4096 bytes", format!("{valid}{}", "A".repeat(4100)));
        add("two segments", format!("{h}.{p}"));
        add("four segments", format!("{valid}.{s}"));
        add("empty segments", "..".into());
        add("empty signature segment", format!("{h}.{p}."));
        add("padded segment", format!("{h}=.{p}.{s}"));
        add("standard base64 alphabet", format!("{h}.{p}+/.{s}"));
        add(
            "whitespace in a segment",
            format!("{h}.{} {}.{s}", &p[..4], &p[4..]),
        );
        let mut trailing = s.to_string();
        let last = trailing.pop().unwrap();
        // 64 bytes → 86 characters: the last carries 2 bits and 4 must-be-zero bits.
        trailing.push(if last == 'B' { 'C' } else { 'B' });
        add("non-zero trailing bits", format!("{h}.{p}.{trailing}"));
        // Header.
        add(
            "header not JSON",
            self.sign_raw("not json", &Value::Object(self.claims.clone()).to_string()),
        );
        add(
            "header a JSON array",
            self.sign_raw("[]", &Value::Object(self.claims.clone()).to_string()),
        );
        let claims_text = Value::Object(self.claims.clone()).to_string();
        add(
            "duplicate header member",
            self.sign_raw(
                &format!(
                    r#"{{"alg":"EdDSA","alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#,
                    self.kid
                ),
                &claims_text,
            ),
        );
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": self.kid}).to_string();
            add(
                &format!("alg {alg}, no signature"),
                format!("{}.{p}.", b64(header.as_bytes())),
            );
        }
        for alg in ["HS256", "RS256", "ES256", "PS256", "Ed25519"] {
            add(
                &format!("alg {alg}"),
                self.header_with(|m| {
                    m.insert("alg".into(), alg.into());
                }),
            );
        }
        add(
            "alg missing",
            self.header_with(|m| {
                m.remove("alg");
            }),
        );
        add(
            "alg not a string",
            self.header_with(|m| {
                m.insert("alg".into(), 1.into());
            }),
        );
        {
            // HS256 keyed with our public key bytes: the classic algorithm confusion.
            let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": self.kid}).to_string();
            let input = format!("{}.{p}", b64(header.as_bytes()));
            let mac = hmac_sha256::HMAC::mac(input.as_bytes(), self.key.pk.as_ref());
            add(
                "HS256 keyed with our public key",
                format!("{input}.{}", b64(&mac)),
            );
        }
        for (name, value) in [
            (
                "jwk",
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.key.pk.as_ref())}),
            ),
            ("jku", json!("https://evil.test/jwks.json")),
            ("x5u", json!("https://evil.test/cert.pem")),
            ("x5c", json!(["MIIB"])),
        ] {
            add(
                &format!("header {name}"),
                self.header_with(|m| {
                    m.insert(name.into(), value);
                }),
            );
        }
        add(
            "crit header",
            self.header_with(|m| {
                m.insert("crit".into(), json!(["exp"]));
            }),
        );
        add(
            "typ missing",
            self.header_with(|m| {
                m.remove("typ");
            }),
        );
        add(
            "typ JWT",
            self.header_with(|m| {
                m.insert("typ".into(), "JWT".into());
            }),
        );
        add(
            "kid missing",
            self.header_with(|m| {
                m.remove("kid");
            }),
        );
        add(
            "kid not a string",
            self.header_with(|m| {
                m.insert("kid".into(), 5.into());
            }),
        );
        add(
            "kid path traversal",
            self.header_with(|m| {
                m.insert("kid".into(), "../../etc/passwd".into());
            }),
        );
        add(
            "kid unknown",
            self.header_with(|m| {
                m.insert("kid".into(), "unknown-kid-0001".into());
            }),
        );
        // Signature.
        add(
            "signature 63 bytes",
            format!("{h}.{p}.{}", b64(&signature[..63])),
        );
        add("signature all zero", format!("{h}.{p}.{}", b64(&[0u8; 64])));
        {
            // S + L: the same signature with a non-canonical scalar (malleability).
            const L: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut malleable = signature.clone();
            let mut carry = 0u16;
            for i in 0..32 {
                let sum = malleable[32 + i] as u16 + L[i] as u16 + carry;
                malleable[32 + i] = sum as u8;
                carry = sum >> 8;
            }
            add("signature S + L", format!("{h}.{p}.{}", b64(&malleable)));
        }
        let other = self.claims_with(|m| {
            m.insert("scope".into(), "admin".into());
        });
        add(
            "signature moved onto another payload",
            format!("{h}.{}.{s}", other.split('.').nth(1).unwrap()),
        );
        {
            let mut claims = self.claims.clone();
            claims.insert("sub".into(), "00000000-0000-0000-0000-000000000000".into());
            add(
                "tampered payload",
                format!(
                    "{h}.{}.{s}",
                    b64(Value::Object(claims).to_string().as_bytes())
                ),
            );
        }
        {
            let foreign = Forge {
                key: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9; 32])),
                kid: self.kid.clone(),
                claims: self.claims.clone(),
            };
            add("signed by another key under our kid", foreign.valid());
        }
        // Payload.
        add(
            "payload not JSON",
            self.sign_raw(&Value::Object(self.header()).to_string(), "not json"),
        );
        add(
            "payload a JSON array",
            self.sign_raw(&Value::Object(self.header()).to_string(), "[1]"),
        );
        add(
            "duplicate claim",
            self.sign_raw(
                &Value::Object(self.header()).to_string(),
                &claims_text.replacen('{', r#"{"sub":"00000000-0000-0000-0000-000000000000","#, 1),
            ),
        );
        for claim in [
            "iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "scope",
        ] {
            add(
                &format!("{claim} missing"),
                self.claims_with(|m| {
                    m.remove(claim);
                }),
            );
        }
        for (name, claim, value) in [
            ("wrong issuer", "iss", json!("https://evil.test")),
            ("issuer not a string", "iss", json!(1)),
            ("wrong audience", "aud", json!("another-api")),
            (
                "audience array without ours",
                "aud",
                json!(["another-api", "third"]),
            ),
            ("empty audience", "aud", json!("")),
            ("sub malformed", "sub", json!("a b")),
            ("sid malformed", "sid", json!("../x")),
            ("jti empty", "jti", json!("")),
            ("scope malformed", "scope", json!("profile \"admin\"")),
            ("scope not a string", "scope", json!(["admin"])),
            ("exp fractional", "exp", json!(now as f64 + 600.5)),
            ("exp negative", "exp", json!(-1)),
            ("exp out of range", "exp", json!(253_402_300_800u64)),
            ("exp huge", "exp", json!(1e30)),
            ("exp a string", "exp", json!((now + 600).to_string())),
        ] {
            add(
                name,
                self.claims_with(|m| {
                    m.insert(claim.into(), value);
                }),
            );
        }
        let timed = |iat: u64, nbf: u64, exp: u64| {
            self.claims_with(|m| {
                m.insert("iat".into(), iat.into());
                m.insert("nbf".into(), nbf.into());
                m.insert("exp".into(), exp.into());
            })
        };
        add("expired", timed(now - 1200, now - 1200, now - 600));
        add(
            "expired at the leeway",
            timed(now - 900, now - 900, now - 30),
        );
        add("not yet valid (nbf)", timed(now, now + 120, now + 600));
        add(
            "issued in the future (iat)",
            timed(now + 120, now, now + 600),
        );
        add("lifetime over an hour", timed(now, now, now + 3601));
        add("exp not after iat", timed(now, now, now));
        cases
    }
}
