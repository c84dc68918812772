//! `POST /__edge/kv`: how session records get into Workers KV.
//!
//! The origin pushes each change (record written or removed, user not-before,
//! epoch) as a batch of operations, signed with `EDGE_SECRET` over the whole body.
//! The worker writes them into its own `SESSIONS` binding. The same path works in
//! production and under `wrangler dev` (whose KV is local to the worker).

use serde_json::Value;
use shared::proof;

/// What the proof is for, so a proof made for anything else never applies here.
pub const CONTEXT: &str = "kv-sync";
pub const PATH: &str = "/__edge/kv";
/// Workers KV refuses expirations under 60 s.
pub const MIN_TTL: u64 = 60;

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
        ttl: Option<u64>,
    },
    Delete {
        key: String,
    },
}

/// Why a push was refused; each maps to a 4xx.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// 401: missing, wrong or stale proof.
    Unauthenticated,
    /// 400: not the expected JSON, or a key outside this deployment's prefix.
    Invalid(&'static str),
}

/// Checks the proof headers against the body, then parses the operations.
pub fn parse(
    key: &[u8; 32],
    prefix: &str,
    time: Option<&str>,
    given: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Vec<Op>, Refused> {
    let time: u64 = time
        .and_then(|t| t.parse().ok())
        .ok_or(Refused::Unauthenticated)?;
    let given = given.ok_or(Refused::Unauthenticated)?;
    proof::verify_message(key, CONTEXT, time, body, given, now)
        .map_err(|_| Refused::Unauthenticated)?;
    let value: Value =
        serde_json::from_slice(body).map_err(|_| Refused::Invalid("body is not JSON"))?;
    let ops = value
        .get("ops")
        .and_then(Value::as_array)
        .ok_or(Refused::Invalid("no ops"))?;
    ops.iter()
        .map(|op| {
            let key = op
                .get("key")
                .and_then(Value::as_str)
                .ok_or(Refused::Invalid("op without key"))?;
            // Only this deployment's namespace: a leaked proof cannot write elsewhere.
            if !key.starts_with(prefix) || key.len() > 512 {
                return Err(Refused::Invalid("key outside the prefix"));
            }
            match op.get("op").and_then(Value::as_str) {
                Some("put") => Ok(Op::Put {
                    key: key.into(),
                    value: op
                        .get("value")
                        .and_then(Value::as_str)
                        .ok_or(Refused::Invalid("put without value"))?
                        .into(),
                    ttl: op
                        .get("ttl")
                        .and_then(Value::as_u64)
                        .map(|t| t.max(MIN_TTL)),
                }),
                Some("delete") => Ok(Op::Delete { key: key.into() }),
                _ => Err(Refused::Invalid("unknown op")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn signed(body: &str, time: u64) -> (String, String) {
        (
            time.to_string(),
            proof::sign_message(SECRET, CONTEXT, time, body.as_bytes()),
        )
    }

    #[test]
    fn a_signed_batch_parses_with_ttls_raised_to_the_kv_minimum() {
        let body = r#"{"ops":[{"op":"put","key":"auth:sess:{u}:s","value":"{}","ttl":30},{"op":"put","key":"auth:epoch","value":"1"},{"op":"delete","key":"auth:sess:{u}:t"}]}"#;
        let (time, given) = signed(body, 100);
        let ops = parse(
            SECRET,
            "auth:",
            Some(&time),
            Some(&given),
            body.as_bytes(),
            100,
        )
        .unwrap();
        assert_eq!(
            ops,
            [
                Op::Put {
                    key: "auth:sess:{u}:s".into(),
                    value: "{}".into(),
                    ttl: Some(60)
                },
                Op::Put {
                    key: "auth:epoch".into(),
                    value: "1".into(),
                    ttl: None
                },
                Op::Delete {
                    key: "auth:sess:{u}:t".into()
                },
            ]
        );
    }

    #[test]
    fn unsigned_tampered_or_stale_pushes_are_refused() {
        let body = r#"{"ops":[{"op":"delete","key":"auth:x"}]}"#;
        let (time, given) = signed(body, 100);
        assert_eq!(
            parse(SECRET, "auth:", None, None, body.as_bytes(), 100),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            parse(
                SECRET,
                "auth:",
                Some(&time),
                Some(&given),
                br#"{"ops":[{"op":"delete","key":"auth:y"}]}"#,
                100
            ),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            parse(
                SECRET,
                "auth:",
                Some(&time),
                Some(&given),
                body.as_bytes(),
                1000
            ),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            parse(
                b"another key of thirty-two bytes!",
                "auth:",
                Some(&time),
                Some(&given),
                body.as_bytes(),
                100
            ),
            Err(Refused::Unauthenticated)
        );
    }

    #[test]
    fn keys_outside_the_prefix_and_malformed_ops_are_refused() {
        for body in [
            r#"{"ops":[{"op":"put","key":"other:x","value":"v"}]}"#,
            r#"{"ops":[{"op":"put","key":"auth:x"}]}"#,
            r#"{"ops":[{"op":"drop","key":"auth:x"}]}"#,
            r#"{"nope":1}"#,
            "not json",
        ] {
            let (time, given) = signed(body, 100);
            assert!(
                matches!(
                    parse(
                        SECRET,
                        "auth:",
                        Some(&time),
                        Some(&given),
                        body.as_bytes(),
                        100
                    ),
                    Err(Refused::Invalid(_))
                ),
                "{body}"
            );
        }
    }
}
