//! The session record the origin publishes for the edge (DESIGN.md §3), and the
//! names of the store keys that hold it.
//!
//! Per active session the store holds `<prefix>sess:{<sub>}:<sid>` = a [`SessionRecord`]
//! as JSON, with a TTL of the access token's remaining lifetime plus a buffer. Per
//! user it may hold `<prefix>nbf:{<sub>}` = Unix time in milliseconds: written by
//! logout-everywhere, it kills every session authenticated at or before it.
//! Milliseconds, because in seconds a login in the same second as logout-everywhere
//! could not be told from one just before it. The edge reads both in one round
//! trip (`MGET`); the `{<sub>}` hash tag puts both keys of a user in one Redis Cluster
//! slot, so that `MGET` also works on a cluster.
//!
//! ```
//! use shared::session::{SessionRecord, session_key, user_not_before_key};
//!
//! assert_eq!(session_key("auth:", "u1", "s1"), "auth:sess:{u1}:s1");
//! assert_eq!(user_not_before_key("auth:", "u1"), "auth:nbf:{u1}");
//! let record = SessionRecord { sub: "u1".into(), scope: "read".into(), auth_time_ms: 10_000, exp: 99 };
//! assert_eq!(SessionRecord::decode(record.encode().as_bytes()), Ok(record));
//! ```

use alloc::format;
use alloc::string::String;
use serde::Serialize;
use serde_json::Value;

use crate::{Error, MAX_TIME, VerifiedClaims, is_identifier, is_scope, json};

/// Current record format, stored as `v` so a rolling deploy can tell formats apart.
pub const RECORD_VERSION: u64 = 1;

/// One active session, as the edge needs it: minimal by design (DESIGN.md §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
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

impl SessionRecord {
    /// The JSON stored under [`session_key`].
    pub fn encode(&self) -> String {
        format!(
            r#"{{"v":{RECORD_VERSION},"sub":{},"scope":{},"auth_time_ms":{},"exp":{}}}"#,
            Value::from(self.sub.as_str()),
            Value::from(self.scope.as_str()),
            self.auth_time_ms,
            self.exp
        )
    }

    /// Reads a record written by [`encode`](Self::encode). Anything else, including a
    /// record of another version, is [`Error::Record`]: the caller must treat the session
    /// as unknown (never as active).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let record = json::parse_object(bytes).map_err(|_| Error::Record)?;
        let text = |name: &str| {
            record
                .get(name)
                .and_then(Value::as_str)
                .ok_or(Error::Record)
        };
        let time = |name: &str, max: u64| match record.get(name).and_then(Value::as_u64) {
            Some(t) if t <= max => Ok(t),
            _ => Err(Error::Record),
        };
        if record.get("v").and_then(Value::as_u64) != Some(RECORD_VERSION) {
            return Err(Error::Record);
        }
        let (sub, scope) = (text("sub")?, text("scope")?);
        if !is_identifier(sub) || !is_scope(scope) {
            return Err(Error::Record);
        }
        Ok(SessionRecord {
            sub: sub.into(),
            scope: scope.into(),
            auth_time_ms: time("auth_time_ms", MAX_TIME * 1000)?,
            exp: time("exp", MAX_TIME)?,
        })
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

/// Store key of a session's record. `prefix` namespaces deployments and tests; it must
/// pass [`is_key_prefix`], and `sub` and `sid` are [`is_identifier`]s (as in verified claims).
pub fn session_key(prefix: &str, sub: &str, sid: &str) -> String {
    format!("{prefix}sess:{{{sub}}}:{sid}")
}

/// Store key of a user's "not before" time, written by logout-everywhere.
pub fn user_not_before_key(prefix: &str, sub: &str) -> String {
    format!("{prefix}nbf:{{{sub}}}")
}

/// Store key that exists while the store holds everything the origin published. The
/// origin writes it after (re)publishing every active session; its absence means the
/// store restarted empty or was flushed, so an absent record proves nothing.
pub fn store_epoch_key(prefix: &str) -> String {
    format!("{prefix}epoch")
}

/// What the store says about the session of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// The session is active; forward with this record's permissions.
    Active(SessionRecord),
    /// No record: logged out, revoked, expired, or never published.
    Absent,
    /// A record exists but this token may not use it: its user differs, the session
    /// ended, or logout-everywhere came after it started.
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
    let record = SessionRecord::decode(record)?;
    let killed_by_logout_all = not_before.is_some_and(|nbf_ms| record.auth_time_ms <= nbf_ms);
    if record.sub != claims.subject() || now >= record.exp || killed_by_logout_all {
        return Ok(SessionState::Revoked);
    }
    Ok(SessionState::Active(record))
}
