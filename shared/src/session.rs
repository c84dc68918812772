//! The session records the origin publishes for the edge (DESIGN.md §3), and the
//! names of the store keys that hold them.
//!
//! Per session the store holds `<prefix>sess:{<partition>}:<sub>:<sid>`: a
//! [`SessionRecord`] while the session is active, a tombstone once it is revoked,
//! each as JSON carrying the session's version (a counter Postgres bumps in every
//! transaction that changes the session). A write applies only when its version is
//! newer than the stored one, so a retried, delayed or replayed write can never bring
//! a revoked session back. Per user the store may hold `<prefix>nbf:{<partition>}:<sub>`
//! = Unix milliseconds: written by logout-everywhere, it kills every session
//! authenticated at or before it (milliseconds, so a login in the same second as
//! logout-everywhere is told from one just before it).
//!
//! Per partition the store holds a freshness marker `<prefix>fresh:{<partition>}`:
//! present only while the origin knows that partition holds everything it published
//! (it is removed, and the partition rebuilt from Postgres, when the store restarted,
//! was flushed or restored from a snapshot, or failed over). Without it an absent
//! record proves nothing. Users are spread over [`PARTITIONS`] hash tags, so the
//! edge's one read (record, not-before, marker) stays in one Redis Cluster slot while
//! the origin keeps only [`PARTITIONS`] markers, however many users there are.
//!
//! ```
//! use shared::session::{SessionRecord, Stored, freshness_key, session_key, user_not_before_key};
//!
//! assert_eq!(session_key("auth:", "u1", "s1"), "auth:sess:{p1011}:u1:s1");
//! assert_eq!(user_not_before_key("auth:", "u1"), "auth:nbf:{p1011}:u1");
//! assert_eq!(freshness_key("auth:", "u1"), "auth:fresh:{p1011}");
//! let record = SessionRecord { ver: 3, sub: "u1".into(), scope: "read".into(), auth_time_ms: 10_000, exp: 99 };
//! assert_eq!(Stored::decode(record.encode().as_bytes()), Ok(Stored::Active(record)));
//! assert_eq!(Stored::decode(SessionRecord::tombstone(4, "u1").as_bytes()), Ok(Stored::Revoked { ver: 4 }));
//! ```

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use serde_json::Value;

use crate::{Error, MAX_TIME, VerifiedClaims, is_identifier, is_scope};

/// Current record format, stored as `v` so a rolling deploy can tell formats apart.
/// A record of another format is unknown to a reader (never active), and the origin
/// overwrites it.
pub const RECORD_VERSION: u64 = 2;

/// How many hash tags users are spread over. Changing it renames every key: a
/// deployment changes it only with a full rebuild of the store.
pub const PARTITIONS: u16 = 1024;

/// One active session, as the edge needs it: minimal by design (DESIGN.md §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's version in Postgres when this was written.
    pub ver: u64,
    /// The user id; must equal the token's `sub`.
    pub sub: String,
    /// The session's current permissions. The origin may narrow them before the
    /// tokens already issued expire; the edge forwards these, not the token's.
    pub scope: String,
    /// When the user authenticated, Unix milliseconds: a user "not before" at or after
    /// this revokes the session.
    pub auth_time_ms: u64,
    /// When the session ends at the latest (Unix seconds): its absolute lifetime.
    pub exp: u64,
}

/// What a session key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Active(SessionRecord),
    /// The session was revoked at version `ver`.
    Revoked {
        ver: u64,
    },
}

impl SessionRecord {
    /// The JSON stored under [`session_key`].
    pub fn encode(&self) -> String {
        format!(
            r#"{{"v":{RECORD_VERSION},"ver":{},"sub":{},"scope":{},"auth_time_ms":{},"exp":{}}}"#,
            self.ver,
            Value::from(self.sub.as_str()),
            Value::from(self.scope.as_str()),
            self.auth_time_ms,
            self.exp
        )
    }

    /// The JSON that replaces a revoked session's record, at version `ver`.
    pub fn tombstone(ver: u64, sub: &str) -> String {
        format!(
            r#"{{"v":{RECORD_VERSION},"ver":{ver},"sub":{},"revoked":true}}"#,
            Value::from(sub)
        )
    }
}

/// A stored value as written, for [`Stored::decode`]: members may come in any order,
/// unknown ones are skipped, and an absent optional member is told from a `null`
/// (which is refused, as any value of the wrong type is).
#[derive(serde::Deserialize)]
struct RawRecord<'a> {
    v: u64,
    ver: u64,
    #[serde(borrow)]
    sub: Cow<'a, str>,
    #[serde(default, deserialize_with = "present")]
    revoked: Option<bool>,
    #[serde(default, borrow, deserialize_with = "present")]
    scope: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    auth_time_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<u64>,
}

/// A member that is there must hold a value of its type: `null` is an error, not
/// `None` (`None` is for a member that is absent, by `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl Stored {
    /// Reads a value written by [`SessionRecord::encode`] or
    /// [`SessionRecord::tombstone`]. Anything else, a value of another format included,
    /// is [`Error::Record`]: the caller must treat the session as unknown (never as
    /// active).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        // One typed pass: the edge decodes a record on every validated request, and a
        // `Value` tree first was most of that cost. The derived struct refuses a known
        // member given twice (an unknown one is skipped, twice or not: only the origin
        // writes records, so the duplicate-name rule of tokens, crate::json, is not
        // needed here); the first byte check keeps it from taking a JSON array by
        // position.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::Record);
        }
        let raw: RawRecord<'_> = serde_json::from_slice(bytes).map_err(|_| Error::Record)?;
        let bounded = |t: Option<u64>, max: u64| t.filter(|t| *t <= max).ok_or(Error::Record);
        if raw.v != RECORD_VERSION || !is_identifier(&raw.sub) {
            return Err(Error::Record);
        }
        match raw.revoked {
            None => {}
            Some(true) => return Ok(Stored::Revoked { ver: raw.ver }),
            Some(false) => return Err(Error::Record),
        }
        let scope = raw.scope.filter(|s| is_scope(s)).ok_or(Error::Record)?;
        Ok(Stored::Active(SessionRecord {
            ver: raw.ver,
            sub: raw.sub.into_owned(),
            scope: scope.into_owned(),
            auth_time_ms: bounded(raw.auth_time_ms, MAX_TIME * 1000)?,
            exp: bounded(raw.exp, MAX_TIME)?,
        }))
    }

    /// The version of what is stored.
    pub fn ver(&self) -> u64 {
        match self {
            Stored::Active(record) => record.ver,
            Stored::Revoked { ver } => *ver,
        }
    }
}

/// Whether `prefix` can start store keys: no `{` or `}`, which would move the Redis
/// Cluster hash tag, and no whitespace or control characters.
pub fn is_key_prefix(prefix: &str) -> bool {
    prefix.len() <= 64
        && prefix
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'{' && c != b'}')
}

/// The partition of a user: FNV-1a (32-bit) of the user id, modulo [`PARTITIONS`].
pub fn partition(sub: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in sub.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(PARTITIONS)) as u16
}

/// The hash tag of a partition, braces included: `{p0042}`.
pub fn partition_tag(partition: u16) -> String {
    format!("{{p{partition:04}}}")
}

/// Store key of a session's record. `prefix` namespaces deployments and tests; it must
/// pass [`is_key_prefix`], and `sub` and `sid` are [`is_identifier`]s (as in verified claims).
pub fn session_key(prefix: &str, sub: &str, sid: &str) -> String {
    format!("{prefix}sess:{}:{sub}:{sid}", partition_tag(partition(sub)))
}

/// Store key of a user's "not before" time, written by logout-everywhere.
pub fn user_not_before_key(prefix: &str, sub: &str) -> String {
    format!("{prefix}nbf:{}:{sub}", partition_tag(partition(sub)))
}

/// Store key of the freshness marker of `sub`'s partition, in the same slot as the
/// user's other keys.
pub fn freshness_key(prefix: &str, sub: &str) -> String {
    partition_freshness_key(prefix, partition(sub))
}

/// Store key of a partition's freshness marker.
pub fn partition_freshness_key(prefix: &str, partition: u16) -> String {
    format!("{prefix}fresh:{}", partition_tag(partition))
}

/// Whether a freshness marker's value vouches for its partition: present, and not the
/// placeholder (`~…`) the origin puts there while it rebuilds the partition.
pub fn is_fresh(marker: Option<&[u8]>) -> bool {
    marker.is_some_and(|m| !m.is_empty() && m[0] != b'~')
}

/// The one freshness marker of a Workers KV store. KV is not a Redis that restarts
/// or fails over: the marker only says the origin has set the store up.
pub fn kv_freshness_key(prefix: &str) -> String {
    format!("{prefix}fresh:kv")
}

/// What the store says about the session of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// The session is active; forward with this record's permissions.
    Active(SessionRecord),
    /// No record: logged out long ago, expired, or never published.
    Absent,
    /// A tombstone, or a record this token may not use: its user differs, the
    /// session ended, or logout-everywhere came after it started.
    Revoked,
}

/// Decides a session from the two values read from the store (`None` = key absent).
///
/// A value that cannot be decoded is an `Err`, even when the other is absent: the store
/// holds something the origin did not write, so the session is unknown, which callers
/// must never treat as active (nor as a reason to send the client back to log in).
pub fn session_state(
    claims: &VerifiedClaims,
    record: Option<&[u8]>,
    user_not_before: Option<&[u8]>,
    now: u64,
) -> Result<SessionState, Error> {
    let not_before = match user_not_before {
        None => None,
        Some(bytes) => Some(
            core::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or(Error::Record)?,
        ),
    };
    let Some(record) = record else {
        return Ok(SessionState::Absent);
    };
    let record = match Stored::decode(record)? {
        Stored::Active(record) => record,
        Stored::Revoked { .. } => return Ok(SessionState::Revoked),
    };
    let killed_by_logout_all = not_before.is_some_and(|nbf_ms| record.auth_time_ms <= nbf_ms);
    if record.sub != claims.subject() || now >= record.exp || killed_by_logout_all {
        return Ok(SessionState::Revoked);
    }
    Ok(SessionState::Active(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_users_evenly_and_keys_of_a_user_share_one_tag() {
        let mut counts = alloc::vec![0u32; PARTITIONS as usize];
        for i in 0..102_400u32 {
            let sub = format!(
                "{:08x}-0000-4000-8000-{i:012x}",
                i.wrapping_mul(2_654_435_761)
            );
            counts[partition(&sub) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *min > 50 && *max < 160,
            "100 expected per partition: {min}..{max}"
        );
        let tag = partition_tag(partition("u1"));
        for key in [
            session_key("a:", "u1", "s"),
            user_not_before_key("a:", "u1"),
            freshness_key("a:", "u1"),
        ] {
            assert!(key.contains(&tag), "{key}");
            assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
        }
    }

    #[test]
    fn members_decode_in_any_order_escaped_and_beside_unknown_ones() {
        let text = r#" {"exp":99,"auth_time_ms":10000,"scope":"read","sub":"u\u0031","ver":3,"v":2,"later":{"a":[1]}} "#;
        let record = SessionRecord {
            ver: 3,
            sub: "u1".into(),
            scope: "read".into(),
            auth_time_ms: 10_000,
            exp: 99,
        };
        assert_eq!(Stored::decode(text.as_bytes()), Ok(Stored::Active(record)));
    }

    #[test]
    fn tombstones_and_records_of_other_formats_decode_as_such_or_not_at_all() {
        assert_eq!(
            Stored::decode(SessionRecord::tombstone(9, "u").as_bytes()),
            Ok(Stored::Revoked { ver: 9 })
        );
        for bad in [
            r#"{"v":1,"sub":"u","scope":"","auth_time_ms":1,"exp":2}"#,
            r#"{"v":2,"sub":"u","scope":"","auth_time_ms":1,"exp":2}"#,
            r#"{"v":2,"ver":1,"sub":"u","revoked":false,"scope":"","auth_time_ms":1,"exp":2}"#,
            r#"{"v":2,"ver":1,"sub":"u","revoked":"yes"}"#,
            r#"{"v":2,"ver":-1,"sub":"u","revoked":true}"#,
            r#"{"v":2,"ver":1,"sub":"a b","revoked":true}"#,
            r#"{"v":2,"ver":1,"sub":"u","revoked":null}"#,
            r#"{"v":2,"ver":1,"sub":"u","scope":null,"auth_time_ms":1,"exp":2}"#,
            r#"{"v":2,"ver":1,"sub":"u","scope":"","auth_time_ms":1.0,"exp":2}"#,
            r#"{"v":2,"ver":1,"ver":2,"sub":"u","revoked":true}"#,
            r#"{"v":2,"ver":1,"sub":"u","sub":"w","revoked":true}"#,
            r#"[2,1,"u",true]"#,
            r#"{"v":2,"ver":1,"sub":"u","revoked":true} x"#,
            r#""{\"v\":2}""#,
            "",
        ] {
            assert_eq!(Stored::decode(bad.as_bytes()), Err(Error::Record), "{bad}");
        }
    }
}
