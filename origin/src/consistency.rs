//! `origin check-consistency`: does Redis say about every session what Postgres (the
//! source of truth) says? For operators after an incident, and for the fault tests.
//!
//! ```text
//! DATABASE_URL=… REDIS_URL=… REDIS_PREFIX=auth: origin check-consistency
//! ```
//!
//! The rules, for each session row and each key under the prefix:
//! - an active session (not revoked, within its absolute and idle lifetimes, not ended
//!   by logout-everywhere) whose latest access token plus the record buffer has not run
//!   out has a record at the row's version, with the row's user, scope, authentication
//!   time and end, and a TTL no longer than that remaining time;
//! - a revoked session, or one ended by logout-everywhere, has a tombstone or nothing,
//!   or a record the user's not-before refuses for as long as it lives; an expired one
//!   has none or one whose own `exp` has passed (the edge refuses those already);
//! - a record whose session Postgres does not know (under that user) is an error;
//! - a user whose logout-everywhere is recent enough that tokens from before it may
//!   live has a not-before key holding exactly its time; no other user has one;
//! - every partition's freshness marker vouches for the server holding it (without
//!   it that partition is being rebuilt and proves nothing);
//! - no store write has waited in the outbox longer than [`SLACK_SECS`].
//!
//! Times within [`SLACK_SECS`] of a boundary are not judged either way: a record may
//! expire, or a key be written, while the check runs. No repair is offered: removing a
//! partition's marker (`<prefix>fresh:{p0042}`), or all of them, makes the origins
//! rebuild it from Postgres within a second, with versioned writes that cannot undo a
//! revocation made meanwhile.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use shared::session::{
    PARTITIONS, Stored, partition_freshness_key, session_key, user_not_before_key,
};
use sqlx::PgPool;
use uuid::Uuid;

/// Seconds around a time boundary within which either answer is accepted.
pub const SLACK_SECS: i64 = 5;

/// The lifetimes the check needs, as the origins were configured.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub access_token_ttl_secs: u64,
    pub session_record_buffer_secs: u64,
    pub session_idle_ttl_secs: u64,
}

impl From<&crate::config::Config> for Limits {
    fn from(config: &crate::config::Config) -> Self {
        Limits {
            access_token_ttl_secs: config.access_token_ttl_secs,
            session_record_buffer_secs: config.session_record_buffer_secs,
            session_idle_ttl_secs: config.session_idle_ttl_secs,
        }
    }
}

/// One disagreement between Postgres and Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An active session whose record should be live is absent.
    MissingRecord { session: Uuid },
    /// A record exists for a session Postgres has revoked (or ended by logout-all).
    RecordOfRevokedSession { session: Uuid },
    /// A live record for a session past its absolute end.
    RecordOfExpiredSession { session: Uuid },
    /// A record under a user/session pair Postgres does not have.
    RecordOfUnknownSession { key: String },
    /// A record that is not one the origin writes.
    UndecodableRecord { key: String },
    /// A record whose content differs from the row.
    RecordMismatch { session: Uuid, field: &'static str },
    /// A record older than the row: a write that never arrived.
    StaleRecord {
        session: Uuid,
        stored: u64,
        postgres: i64,
    },
    /// A record without an expiry, or living longer than its access token can.
    RecordTtl {
        session: Uuid,
        ttl_secs: i64,
        max_secs: i64,
    },
    /// A recent logout-everywhere with no not-before key.
    MissingNotBefore { user: Uuid },
    /// A not-before key whose time is not the user's in Postgres.
    NotBeforeMismatch {
        user: Uuid,
        redis_ms: String,
        postgres_ms: i64,
    },
    /// A not-before key for a user with no recent logout-everywhere.
    StrayNotBefore { key: String },
    /// Partitions whose freshness marker does not vouch for their server: restarted,
    /// flushed, restored, failed over, or not rebuilt yet.
    StalePartitions { count: usize },
    /// Store writes waiting in the outbox for longer than [`SLACK_SECS`].
    PendingOutbox { rows: i64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingRecord { session } => {
                write!(
                    f,
                    "session {session}: active in Postgres, no record in Redis"
                )
            }
            Problem::RecordOfRevokedSession { session } => write!(
                f,
                "session {session}: revoked in Postgres, record still in Redis (the edge would accept it)"
            ),
            Problem::RecordOfExpiredSession { session } => write!(
                f,
                "session {session}: past its end in Postgres, live record in Redis"
            ),
            Problem::RecordOfUnknownSession { key } => {
                write!(f, "{key}: record of a session Postgres does not have")
            }
            Problem::UndecodableRecord { key } => write!(f, "{key}: not a session record"),
            Problem::RecordMismatch { session, field } => {
                write!(
                    f,
                    "session {session}: record's {field} differs from Postgres"
                )
            }
            Problem::RecordTtl {
                session,
                ttl_secs,
                max_secs,
            } => write!(
                f,
                "session {session}: record TTL {ttl_secs} s (-1 = none), at most {max_secs} s expected"
            ),
            Problem::MissingNotBefore { user } => write!(
                f,
                "user {user}: recent logout-everywhere in Postgres, no not-before in Redis"
            ),
            Problem::NotBeforeMismatch {
                user,
                redis_ms,
                postgres_ms,
            } => write!(
                f,
                "user {user}: not-before {redis_ms} in Redis, {postgres_ms} in Postgres"
            ),
            Problem::StrayNotBefore { key } => {
                write!(f, "{key}: not-before without a recent logout-everywhere")
            }
            Problem::StaleRecord {
                session,
                stored,
                postgres,
            } => write!(
                f,
                "session {session}: record at version {stored} in Redis, {postgres} in Postgres"
            ),
            Problem::StalePartitions { count } => write!(
                f,
                "{count} of {PARTITIONS} partitions have no freshness marker for their server (restarted, flushed, restored or failed over, not rebuilt yet)"
            ),
            Problem::PendingOutbox { rows } => {
                write!(f, "{rows} store writes waiting in the outbox")
            }
        }
    }
}

/// What the check looked at and what it found.
#[derive(Debug, Default)]
pub struct Report {
    pub sessions: usize,
    pub active_sessions: usize,
    pub records: usize,
    pub not_befores: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn agrees(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            writeln!(f, "DISAGREE {problem}")?;
        }
        write!(
            f,
            "{} sessions in Postgres ({} active), {} records and {} not-befores in Redis: ",
            self.sessions, self.active_sessions, self.records, self.not_befores
        )?;
        if self.agrees() {
            write!(f, "they agree")
        } else {
            write!(f, "{} disagreements", self.problems.len())
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: Uuid,
    scope: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    access_expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    version: i64,
    sessions_not_before: Option<DateTime<Utc>>,
}

/// Escapes Redis glob characters so the prefix matches only itself in `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key matching `pattern`, with its value and remaining TTL in seconds.
async fn scan(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<(String, Option<Vec<u8>>, i64)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key twice.
    keys.sort();
    keys.dedup();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("GET").arg(key).cmd("TTL").arg(key);
        }
        let values: Vec<redis::Value> = pipe.query_async(redis).await?;
        for (key, pair) in chunk.iter().zip(values.chunks(2)) {
            let value: Option<Vec<u8>> = redis::from_redis_value(&pair[0])?;
            let ttl: i64 = redis::from_redis_value(&pair[1])?;
            // -2: the key expired between SCAN and GET; it is simply absent.
            if ttl != -2 {
                out.push((key.clone(), value, ttl));
            }
        }
    }
    Ok(out)
}

/// Compares Postgres and the Redis keys under `prefix`, read from `nodes`: the one
/// server, or every primary of a cluster (`SCAN` walks one server's keys).
pub async fn check(
    db: &PgPool,
    nodes: &mut [redis::aio::MultiplexedConnection],
    prefix: &str,
    limits: Limits,
) -> Result<Report, String> {
    // Postgres's clock for every time decision: the rows were written with it.
    let rows: Vec<Row> = sqlx::query_as(
        "select s.id, s.user_id, s.scope, s.created_at, s.last_used_at, s.expires_at, \
                s.access_expires_at, s.revoked_at, s.version, u.sessions_not_before \
         from session s join app_user u on u.id = s.user_id",
    )
    .fetch_all(db)
    .await
    .map_err(|e| format!("reading sessions from Postgres: {e}"))?;
    // Read after the rows: a row is never judged by a clock older than itself.
    let now: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(db)
        .await
        .map_err(|e| format!("reading Postgres's clock: {e}"))?;
    let mut records = Vec::new();
    let mut not_befores = Vec::new();
    // Partitions whose marker vouches for the server that holds it.
    let mut fresh = HashSet::new();
    for redis in nodes.iter_mut() {
        records.extend(
            scan(redis, &format!("{}sess:*", glob_escape(prefix)))
                .await
                .map_err(|e| format!("reading session records from Redis: {e}"))?,
        );
        not_befores.extend(
            scan(redis, &format!("{}nbf:*", glob_escape(prefix)))
                .await
                .map_err(|e| format!("reading not-befores from Redis: {e}"))?,
        );
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(redis)
            .await
            .map_err(|e| format!("reading Redis's run id: {e}"))?;
        let run_id = crate::store::run_id(&info);
        let markers = scan(redis, &format!("{}fresh:{{p*", glob_escape(prefix)))
            .await
            .map_err(|e| format!("reading the freshness markers from Redis: {e}"))?;
        for (key, value, _) in markers {
            if !run_id.is_empty() && value.as_deref() == Some(run_id.as_bytes()) {
                fresh.insert(key);
            }
        }
    }
    let stale = (0..PARTITIONS)
        .filter(|p| !fresh.contains(&partition_freshness_key(prefix, *p)))
        .count();
    let pending = crate::db::outbox::pending(db, SLACK_SECS as u64)
        .await
        .map_err(|e| format!("reading the outbox from Postgres: {e}"))?;

    let mut report = Report {
        sessions: rows.len(),
        records: records.len(),
        not_befores: not_befores.len(),
        ..Report::default()
    };
    if stale > 0 {
        report
            .problems
            .push(Problem::StalePartitions { count: stale });
    }
    if pending > 0 {
        report
            .problems
            .push(Problem::PendingOutbox { rows: pending });
    }
    let mut by_key: HashMap<String, (Option<Vec<u8>>, i64)> = records
        .into_iter()
        .map(|(key, value, ttl)| (key, (value, ttl)))
        .collect();
    // The user's not-before as the edge reads it: (milliseconds, TTL seconds).
    let not_before_of = |user: &Uuid| -> Option<(u64, i64)> {
        let key = user_not_before_key(prefix, &user.to_string());
        let (_, value, ttl) = not_befores.iter().find(|(k, _, _)| *k == key)?;
        let ms = std::str::from_utf8(value.as_deref()?).ok()?.parse().ok()?;
        Some((ms, *ttl))
    };
    let buffer = limits.session_record_buffer_secs as i64;
    let idle = chrono::Duration::seconds(limits.session_idle_ttl_secs as i64);
    let slack = chrono::Duration::seconds(SLACK_SECS);
    let mut users: HashMap<Uuid, Option<DateTime<Utc>>> = HashMap::new();

    for row in &rows {
        users.insert(row.user_id, row.sessions_not_before);
        let key = session_key(prefix, &row.user_id.to_string(), &row.id.to_string());
        let found = by_key.remove(&key);
        let ended_by_logout_all = row
            .sessions_not_before
            .is_some_and(|nbf| row.created_at <= nbf);
        let revoked = row.revoked_at.is_some() || ended_by_logout_all;
        let past_end = row.expires_at <= now || row.last_used_at + idle <= now;
        // Seconds the record may still live: the access token's rest plus the buffer.
        let record_left = (row.access_expires_at - now).num_seconds() + buffer;
        if !revoked && !past_end {
            report.active_sessions += 1;
        }
        let stored = found
            .as_ref()
            .and_then(|(value, _)| value.as_deref())
            .map(Stored::decode);
        let Some((value, ttl)) =
            found.filter(|_| !matches!(stored, Some(Ok(Stored::Revoked { .. }))))
        else {
            // Nothing, or a tombstone: right for a revoked session, wrong for an active one.
            if !revoked && !past_end && record_left > SLACK_SECS {
                report
                    .problems
                    .push(Problem::MissingRecord { session: row.id });
            }
            continue;
        };
        let decoded = match stored {
            Some(Ok(Stored::Active(record))) => Some(record),
            _ => None,
        };
        if revoked {
            // A login or refresh racing logout-everywhere may publish after it; the
            // user's not-before refuses that record at the edge for as long as it lives.
            let refused_by_not_before = decoded
                .clone()
                .zip(not_before_of(&row.user_id))
                .is_some_and(|(record, (nbf_ms, nbf_ttl))| {
                    record.auth_time_ms <= nbf_ms && (nbf_ttl == -1 || nbf_ttl >= ttl)
                });
            if !refused_by_not_before {
                report
                    .problems
                    .push(Problem::RecordOfRevokedSession { session: row.id });
            }
            continue;
        }
        let _ = value;
        let Some(record) = decoded else {
            report.problems.push(Problem::UndecodableRecord { key });
            continue;
        };
        if (record.ver as i64) < row.version {
            report.problems.push(Problem::StaleRecord {
                session: row.id,
                stored: record.ver,
                postgres: row.version,
            });
        }
        if past_end {
            // The record's own end makes the edge refuse it; a live one that does not is wrong.
            if (record.exp as i64) > now.timestamp() + SLACK_SECS && row.expires_at + slack < now {
                report
                    .problems
                    .push(Problem::RecordOfExpiredSession { session: row.id });
            }
            continue;
        }
        let mismatches = [
            ("sub", record.sub != row.user_id.to_string()),
            ("scope", record.scope != row.scope),
            (
                "auth_time_ms",
                record.auth_time_ms as i64 != row.created_at.timestamp_millis(),
            ),
            ("exp", record.exp as i64 != row.expires_at.timestamp()),
        ];
        for (field, differs) in mismatches {
            if differs {
                report.problems.push(Problem::RecordMismatch {
                    session: row.id,
                    field,
                });
            }
        }
        if ttl < 0 || ttl > record_left + SLACK_SECS {
            report.problems.push(Problem::RecordTtl {
                session: row.id,
                ttl_secs: ttl,
                max_secs: record_left.max(0),
            });
        }
    }
    // Tombstones of sessions the cleanup has deleted are harmless: only records count.
    let mut unknown: Vec<String> = by_key
        .into_iter()
        .filter(|(_, (value, _))| {
            !matches!(
                value.as_deref().map(Stored::decode),
                Some(Ok(Stored::Revoked { .. }))
            )
        })
        .map(|(key, _)| key)
        .collect();
    unknown.sort();
    for key in unknown {
        report
            .problems
            .push(Problem::RecordOfUnknownSession { key });
    }

    // Not-befores: logout-everywhere writes them for longer (plus the leeway), but the
    // rebuild republishes them only this long, so only this long are they required.
    let horizon = (limits.access_token_ttl_secs + limits.session_record_buffer_secs) as i64;
    let mut seen: HashSet<Uuid> = HashSet::new();
    for (key, value, _) in &not_befores {
        let user = users
            .iter()
            .find(|(id, _)| user_not_before_key(prefix, &id.to_string()) == *key)
            .map(|(id, nbf)| (*id, *nbf));
        let Some((user, Some(nbf))) = user else {
            report
                .problems
                .push(Problem::StrayNotBefore { key: key.clone() });
            continue;
        };
        seen.insert(user);
        let redis_ms = value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if redis_ms.parse::<i64>().ok() != Some(nbf.timestamp_millis()) {
            report.problems.push(Problem::NotBeforeMismatch {
                user,
                redis_ms,
                postgres_ms: nbf.timestamp_millis(),
            });
        }
    }
    let mut recent: Vec<Uuid> = users
        .iter()
        .filter(|(id, nbf)| {
            !seen.contains(id)
                && nbf.is_some_and(|nbf| (now - nbf).num_seconds() < horizon - SLACK_SECS)
        })
        .map(|(id, _)| *id)
        .collect();
    recent.sort();
    for user in recent {
        report.problems.push(Problem::MissingNotBefore { user });
    }
    Ok(report)
}

/// The subcommand: connects with the origin's own settings, prints the report, and
/// returns the exit code (0 agree, 1 disagree, 2 could not check).
pub async fn run(config: &crate::config::Config) -> i32 {
    use secrecy::ExposeSecret;
    let db = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(config.database_url.expose_secret())
        .await
    {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: connecting to Postgres (DATABASE_URL): {e}");
            return 2;
        }
    };
    let target =
        match crate::store::Target::parse(config.redis_url.expose_secret(), config.redis_cluster) {
            Ok(target) => target,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
    let mut redis = match nodes(&target).await {
        Ok(nodes) => nodes,
        Err(e) => {
            eprintln!("error: connecting to Redis (REDIS_URL): {e}");
            return 2;
        }
    };
    match check(&db, &mut redis, &config.redis_prefix, Limits::from(config)).await {
        Ok(report) => {
            println!("{report}");
            if report.agrees() { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Connections to the servers holding the data: the one server, or each primary a
/// cluster's `CLUSTER SLOTS` names (asked of the first seed that answers).
async fn nodes(
    target: &crate::store::Target,
) -> redis::RedisResult<Vec<redis::aio::MultiplexedConnection>> {
    use redis::IntoConnectionInfo;
    let seeds = match target {
        crate::store::Target::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            return Ok(vec![client.get_multiplexed_async_connection().await?]);
        }
        crate::store::Target::Cluster(urls) => urls,
    };
    let mut last = None;
    for seed in seeds {
        let info = seed.as_str().into_connection_info()?;
        let slots: redis::RedisResult<Vec<Vec<redis::Value>>> = async {
            let mut conn = redis::Client::open(info.clone())?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
        }
        .await;
        let slots = match slots {
            Ok(slots) => slots,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut primaries: Vec<(String, u16)> = slots
            .iter()
            .filter_map(|range| {
                let (host, port): (String, u16) = redis::from_redis_value(range.get(2)?)
                    .ok()
                    .and_then(|node: Vec<redis::Value>| {
                        Some((
                            redis::from_redis_value(node.first()?).ok()?,
                            redis::from_redis_value(node.get(1)?).ok()?,
                        ))
                    })?;
                Some((host, port))
            })
            .collect();
        primaries.sort();
        primaries.dedup();
        let mut out = Vec::new();
        for (host, port) in primaries {
            let mut node = info.clone();
            // An empty host in CLUSTER SLOTS means "the address you reached me at".
            let host = if host.is_empty() {
                match &info.addr {
                    redis::ConnectionAddr::Tcp(seed_host, _) => seed_host.clone(),
                    _ => host,
                }
            } else {
                host
            };
            node.addr = redis::ConnectionAddr::Tcp(host, port);
            out.push(
                redis::Client::open(node)?
                    .get_multiplexed_async_connection()
                    .await?,
            );
        }
        return Ok(out);
    }
    Err(last
        .unwrap_or_else(|| (redis::ErrorKind::InvalidClientConfig, "no Redis node given").into()))
}
