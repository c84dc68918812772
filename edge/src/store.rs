//! Reading the session store: what to ask, and what the answer means.
//!
//! One round trip per request: the session record, the user's logout-everywhere time
//! and the freshness marker of the user's partition (`MGET` over Upstash REST, all
//! three in one Redis Cluster slot; three reads in parallel on KV, whose one marker
//! says the origin has set the namespace up).

use serde_json::Value;
use shared::VerifiedClaims;
use shared::session::{
    SessionRecord, SessionState, freshness_key, is_fresh, kv_freshness_key, session_key,
    user_not_before_key,
};

/// The keys read for a token, in order: record, user not-before, freshness marker (the
/// partition's in Redis, the namespace's in KV).
pub fn keys(prefix: &str, claims: &VerifiedClaims, kv: bool) -> [String; 3] {
    [
        session_key(prefix, claims.subject(), claims.session_id()),
        user_not_before_key(prefix, claims.subject()),
        if kv {
            kv_freshness_key(prefix)
        } else {
            freshness_key(prefix, claims.subject())
        },
    ]
}

/// The URL of the read at the Upstash REST endpoint `base`, in its path style:
/// `GET {base}/mget/k1/k2/k3`. This read runs on every authenticated request, and a
/// GET without a body costs workerd less than a POST carrying the command as JSON: a
/// bare read and forward did 1 %, 5 % and 14 % more requests/s with it (three pairs
/// side by side in one workerd, 2026-12-04). Each key is percent-encoded, every byte
/// but RFC 3986 §2.3's unreserved characters, so its `{`, `}`, `/` or `%` stay in its
/// own segment. A GET may be answered by a cache on its way: the read is made with
/// `cache: "no-store"`.
pub fn mget_url(base: &str, keys: &[String; 3]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut url =
        String::with_capacity(base.len() + 5 + keys.iter().map(|k| 3 * k.len() + 1).sum::<usize>());
    url.push_str(base);
    url.push_str("/mget");
    for key in keys {
        url.push('/');
        for &byte in key.as_bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                url.push(char::from(byte));
            } else {
                url.push('%');
                url.push(char::from(HEX[usize::from(byte >> 4)]));
                url.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
    }
    url
}

/// The store could not answer: down, slow, or an unexpected reply.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreUnavailable(pub &'static str);

/// Upstash's answer to a command: its `result` (other members, such as `error`, are
/// not read). Typed, so the reply is parsed once, without a `Value` tree.
#[derive(serde::Deserialize)]
struct MgetReply {
    result: Vec<Option<String>>,
}

/// Parses Upstash's reply to the `MGET` (HTTP status and body).
pub fn parse_mget(status: u16, body: &[u8]) -> Result<[Option<String>; 3], StoreUnavailable> {
    if status != 200 {
        return Err(StoreUnavailable("store answered with an error status"));
    }
    let reply: MgetReply = serde_json::from_slice(body)
        .map_err(|_| StoreUnavailable("store reply is not an MGET answer"))?;
    <[Option<String>; 3]>::try_from(reply.result)
        .map_err(|_| StoreUnavailable("store reply has the wrong length"))
}

/// What the edge does with a verified token, given the three values read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward, with the record's scope.
    Forward(SessionRecord),
    /// 401: the session is not active.
    Reject,
    /// The store knows nothing trustworthy (no freshness marker: restarted, flushed,
    /// restored, failed over or being rebuilt; or an undecodable value): ask the
    /// origin, never assume.
    Unknown,
}

pub fn decide(claims: &VerifiedClaims, values: &[Option<String>; 3], now: u64) -> Decision {
    if !is_fresh(values[2].as_deref().map(str::as_bytes)) {
        return Decision::Unknown;
    }
    let bytes = |i: usize| values[i].as_deref().map(str::as_bytes);
    match shared::session::session_state(claims, bytes(0), bytes(1), now) {
        Ok(SessionState::Active(record)) => Decision::Forward(record),
        Ok(SessionState::Absent | SessionState::Revoked) => Decision::Reject,
        Err(_) => Decision::Unknown,
    }
}

/// Parses the origin's `/internal/validate` answer: `Some(scope)` if active.
pub fn parse_fallback(body: &[u8]) -> Option<Option<String>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("active")?.as_bool()? {
        true => Some(Some(value.get("scope")?.as_str()?.to_string())),
        false => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> VerifiedClaims {
        crate::testing::verified(3).0
    }

    fn record() -> SessionRecord {
        SessionRecord {
            ver: 1,
            sub: "u1".into(),
            scope: "profile".into(),
            auth_time_ms: 900_000,
            exp: 99_999,
        }
    }

    #[test]
    fn the_read_names_record_not_before_and_marker_in_one_slot() {
        let read = keys("auth:", &claims(), false);
        assert_eq!(
            read,
            [
                "auth:sess:{p1011}:u1:s1",
                "auth:nbf:{p1011}:u1",
                "auth:fresh:{p1011}"
            ]
        );
        assert_eq!(
            mget_url("https://r.test", &read),
            "https://r.test/mget/auth%3Asess%3A%7Bp1011%7D%3Au1%3As1/auth%3Anbf%3A%7Bp1011%7D%3Au1/auth%3Afresh%3A%7Bp1011%7D"
        );
        assert_eq!(keys("auth:", &claims(), true)[2], "auth:fresh:kv");
    }

    #[test]
    fn every_key_stays_one_path_segment_whatever_it_holds() {
        let decode = |segment: &str| {
            let mut out = Vec::new();
            let mut bytes = segment.bytes();
            while let Some(b) = bytes.next() {
                if b == b'%' {
                    let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                    out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
                } else {
                    out.push(b);
                }
            }
            String::from_utf8(out).unwrap()
        };
        let keys = [
            "p/a?t#h%2F x".to_string(),
            "ünïcode:{tag}".to_string(),
            "plain-key_1.2~3".to_string(),
        ];
        let url = mget_url("http://127.0.0.1:8079", &keys);
        let path = url.strip_prefix("http://127.0.0.1:8079/mget/").unwrap();
        let segments: Vec<String> = path.split('/').map(decode).collect();
        assert_eq!(segments, keys);
        assert!(
            path.ends_with("/plain-key_1.2~3"),
            "unreserved bytes stay as they are"
        );
    }

    #[test]
    fn upstash_replies_parse_and_anything_else_is_unavailable() {
        let ok = br#"{"result":["{\"v\":1}",null,"123"]}"#;
        assert_eq!(
            parse_mget(200, ok),
            Ok([Some(r#"{"v":1}"#.into()), None, Some("123".into())])
        );
        for (status, body) in [
            (
                401,
                &br#"{"error":"WRONGPASS invalid or missing auth token"}"#[..],
            ),
            (400, br#"{"error":"ERR wrong number of arguments"}"#),
            (503, br#"{"error":"ERR redis unavailable"}"#),
            (200, b"Unauthorized"),
            (200, br#"{"result":null}"#),
            (200, br#"{"result":[null,null]}"#),
            (200, br#"{"result":[1,null,null]}"#),
            (200, br#"{"error":"x"}"#),
        ] {
            assert!(
                parse_mget(status, body).is_err(),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_record_with_a_fresh_marker_forwards_and_its_absence_or_tombstone_rejects() {
        let marker = Some("1".to_string());
        assert_eq!(
            decide(
                &claims(),
                &[Some(record().encode()), None, marker.clone()],
                1100
            ),
            Decision::Forward(record())
        );
        assert_eq!(
            decide(&claims(), &[None, None, marker.clone()], 1100),
            Decision::Reject
        );
        assert_eq!(
            decide(
                &claims(),
                &[
                    Some(SessionRecord::tombstone(2, "u1")),
                    None,
                    marker.clone()
                ],
                1100
            ),
            Decision::Reject
        );
        let logged_out_everywhere = Some((record().auth_time_ms + 1).to_string());
        assert_eq!(
            decide(
                &claims(),
                &[Some(record().encode()), logged_out_everywhere, marker],
                1100
            ),
            Decision::Reject
        );
    }

    #[test]
    fn without_a_fresh_marker_or_with_garbage_the_session_is_unknown_never_active() {
        assert_eq!(
            decide(&claims(), &[Some(record().encode()), None, None], 1100),
            Decision::Unknown
        );
        assert_eq!(
            decide(&claims(), &[None, None, None], 1100),
            Decision::Unknown
        );
        assert_eq!(
            decide(
                &claims(),
                &[Some(record().encode()), None, Some("~rebuilding".into())],
                1100
            ),
            Decision::Unknown,
            "a partition being rebuilt proves nothing"
        );
        assert_eq!(
            decide(
                &claims(),
                &[Some("garbage".into()), None, Some("1".into())],
                1100
            ),
            Decision::Unknown
        );
    }

    #[test]
    fn the_origin_fallback_answer_parses() {
        assert_eq!(
            parse_fallback(br#"{"active":true,"scope":"profile"}"#),
            Some(Some("profile".into()))
        );
        assert_eq!(parse_fallback(br#"{"active":false}"#), Some(None));
        assert_eq!(parse_fallback(br#"{"error":"slow_down"}"#), None);
        assert_eq!(parse_fallback(b"nope"), None);
    }
}
