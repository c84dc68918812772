//! `POST /__edge/kv`: how session records get into Workers KV.
//!
//! The origin pushes each change (a record or tombstone, a user not-before, the
//! freshness marker) as a batch of operations, signed with the KV-sync key (derived
//! from `EDGE_SECRET`) over the whole body. The worker applies each to its `SESSIONS`
//! binding by the rules the origin's Redis scripts follow: a record or tombstone only
//! when its version is newer than the stored one, a not-before only when later, and
//! nothing whose expiry has passed. So a push that is retried after a later one, or
//! replayed within the proof's minute, changes nothing. The same path works in
//! production and under `wrangler dev` (whose KV is local to the worker).
//!
//! KV has no compare-and-set: two pushes for one key racing through two isolates could
//! still interleave their read and write. The origin sends a session's writes one at a
//! time (each waits for the commit that made it), so that race needs two origins
//! writing one session within milliseconds; KV's own propagation delay (60 s or more
//! to other locations) is the larger bound, and the README states it.

use serde_json::Value;
use shared::proof;
use shared::session::Stored;

/// What the proof is for, so a proof made for anything else never applies here.
pub const CONTEXT: &str = "kv-sync";
pub const PATH: &str = "/__edge/kv";
/// Workers KV refuses expirations less than 60 s ahead.
pub const MIN_TTL_SECS: u64 = 60;

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// A session record or tombstone at version `ver`.
    Put {
        key: String,
        value: String,
        ver: u64,
        expire_at_ms: u64,
    },
    /// A user's not-before (Unix ms), kept only if later than the stored one.
    Max {
        key: String,
        value: u64,
        expire_at_ms: u64,
    },
    /// The namespace's freshness marker.
    Marker { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Max { key, .. } | Op::Marker { key } => key,
        }
    }
}

/// A write to do in KV: the value and its absolute expiration (Unix seconds), if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Write {
    pub value: String,
    pub expiration: Option<u64>,
}

/// What `op` writes given the key's current value, at `now_ms`: nothing when the
/// stored value is as new or newer, or the write has expired.
pub fn decide(op: &Op, current: Option<&str>, now_ms: u64) -> Option<Write> {
    // KV's minimum: a key may live up to a minute longer than asked, never shorter.
    let expiration = |at_ms: u64| Some((at_ms / 1000).max(now_ms / 1000 + MIN_TTL_SECS));
    match op {
        Op::Put {
            value,
            ver,
            expire_at_ms,
            ..
        } => {
            if *expire_at_ms <= now_ms {
                return None;
            }
            let stored = current.and_then(|c| Stored::decode(c.as_bytes()).ok());
            if stored.is_some_and(|s| s.ver() >= *ver) {
                return None;
            }
            Some(Write {
                value: value.clone(),
                expiration: expiration(*expire_at_ms),
            })
        }
        Op::Max {
            value,
            expire_at_ms,
            ..
        } => {
            if *expire_at_ms <= now_ms {
                return None;
            }
            let stored: Option<u64> = current.and_then(|c| c.parse().ok());
            if stored.is_some_and(|s| s >= *value) {
                return None;
            }
            Some(Write {
                value: value.to_string(),
                expiration: expiration(*expire_at_ms),
            })
        }
        Op::Marker { .. } => Some(Write {
            value: "kv".into(),
            expiration: None,
        }),
    }
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
    key: &proof::MacKey,
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
            let number = |name: &str| {
                op.get(name)
                    .and_then(Value::as_u64)
                    .ok_or(Refused::Invalid("op without a number it needs"))
            };
            let key = key.to_string();
            match op.get("op").and_then(Value::as_str) {
                Some("put") => Ok(Op::Put {
                    value: op
                        .get("value")
                        .and_then(Value::as_str)
                        .ok_or(Refused::Invalid("put without value"))?
                        .into(),
                    ver: number("ver")?,
                    expire_at_ms: number("expire_at_ms")?,
                    key,
                }),
                Some("max") => Ok(Op::Max {
                    value: op
                        .get("value")
                        .and_then(Value::as_str)
                        .and_then(|v| v.parse().ok())
                        .ok_or(Refused::Invalid("max without a numeric value"))?,
                    expire_at_ms: number("expire_at_ms")?,
                    key,
                }),
                Some("marker") => Ok(Op::Marker { key }),
                _ => Err(Refused::Invalid("unknown op")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::session::SessionRecord;

    fn key() -> proof::MacKey {
        proof::MacKey::new(b"0123456789abcdef0123456789abcdef")
    }
    const NOW_MS: u64 = 1_000_000_000;

    fn signed(body: &str, time: u64) -> (String, String) {
        (
            time.to_string(),
            proof::sign_message(&key(), CONTEXT, time, body.as_bytes()),
        )
    }

    fn record(ver: u64) -> String {
        SessionRecord {
            ver,
            sub: "u".into(),
            scope: "profile".into(),
            auth_time_ms: 1,
            exp: 2_000_000,
        }
        .encode()
    }

    fn put(ver: u64, value: String) -> Op {
        put_until(ver, value, NOW_MS + 600_000)
    }

    fn put_until(ver: u64, value: String, expire_at_ms: u64) -> Op {
        Op::Put {
            key: "auth:sess:{p0001}:u:s".into(),
            value,
            ver,
            expire_at_ms,
        }
    }

    #[test]
    fn a_signed_batch_parses() {
        let body = r#"{"ops":[{"op":"put","key":"auth:sess:{p0001}:u:s","value":"{}","ver":3,"expire_at_ms":5},{"op":"max","key":"auth:nbf:{p0001}:u","value":"77","expire_at_ms":6},{"op":"marker","key":"auth:fresh:kv"}]}"#;
        let (time, given) = signed(body, 100);
        let ops = parse(
            &key(),
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
                    key: "auth:sess:{p0001}:u:s".into(),
                    value: "{}".into(),
                    ver: 3,
                    expire_at_ms: 5
                },
                Op::Max {
                    key: "auth:nbf:{p0001}:u".into(),
                    value: 77,
                    expire_at_ms: 6
                },
                Op::Marker {
                    key: "auth:fresh:kv".into()
                },
            ]
        );
    }

    #[test]
    fn only_a_newer_version_replaces_a_record_or_tombstone() {
        let tombstone = SessionRecord::tombstone(5, "u");
        assert_eq!(
            decide(&put(4, record(4)), Some(&tombstone), NOW_MS),
            None,
            "older"
        );
        assert_eq!(
            decide(&put(5, record(5)), Some(&tombstone), NOW_MS),
            None,
            "replayed"
        );
        let newer = decide(
            &put(6, SessionRecord::tombstone(6, "u")),
            Some(&tombstone),
            NOW_MS,
        );
        assert_eq!(newer.unwrap().expiration, Some(NOW_MS / 1000 + 600));
        assert!(
            decide(&put(1, record(1)), None, NOW_MS).is_some(),
            "nothing stored"
        );
        assert!(
            decide(&put(1, record(1)), Some("garbage"), NOW_MS).is_some(),
            "unreadable stored"
        );
    }

    #[test]
    fn expired_writes_are_dropped_and_short_ones_live_kvs_minute() {
        let expired = put_until(9, record(9), NOW_MS);
        assert_eq!(decide(&expired, None, NOW_MS), None);
        let short = put_until(9, record(9), NOW_MS + 5_000);
        assert_eq!(
            decide(&short, None, NOW_MS).unwrap().expiration,
            Some(NOW_MS / 1000 + MIN_TTL_SECS)
        );
    }

    #[test]
    fn a_not_before_only_moves_later() {
        let op = |value| Op::Max {
            key: "auth:nbf:{p0001}:u".into(),
            value,
            expire_at_ms: NOW_MS + 600_000,
        };
        assert_eq!(decide(&op(10), Some("20"), NOW_MS), None);
        assert_eq!(decide(&op(20), Some("20"), NOW_MS), None);
        assert_eq!(decide(&op(30), Some("20"), NOW_MS).unwrap().value, "30");
    }

    #[test]
    fn unsigned_tampered_or_stale_pushes_are_refused() {
        let body = r#"{"ops":[{"op":"marker","key":"auth:x"}]}"#;
        let (time, given) = signed(body, 100);
        assert_eq!(
            parse(&key(), "auth:", None, None, body.as_bytes(), 100),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            parse(
                &key(),
                "auth:",
                Some(&time),
                Some(&given),
                br#"{"ops":[{"op":"marker","key":"auth:y"}]}"#,
                100
            ),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            parse(
                &key(),
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
                &proof::MacKey::new(b"another key of thirty-two bytes!"),
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
            r#"{"ops":[{"op":"put","key":"other:x","value":"v","ver":1,"expire_at_ms":1}]}"#,
            r#"{"ops":[{"op":"put","key":"auth:x","value":"v"}]}"#,
            r#"{"ops":[{"op":"put","key":"auth:x","ver":1,"expire_at_ms":1}]}"#,
            r#"{"ops":[{"op":"max","key":"auth:x","value":"soon","expire_at_ms":1}]}"#,
            r#"{"ops":[{"op":"delete","key":"auth:x"}]}"#,
            r#"{"nope":1}"#,
            "not json",
        ] {
            let (time, given) = signed(body, 100);
            assert!(
                matches!(
                    parse(
                        &key(),
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
