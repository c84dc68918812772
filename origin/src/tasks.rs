//! Background work of every origin: finishing outbox rows, keeping the store's
//! partitions fresh (rebuilding any that lost or may have lost data), and cleanup.

use std::collections::HashSet;
use std::time::Duration;

use shared::session::partition;
use sqlx::PgPool;

use crate::db;
use crate::publish::{self, Lifetimes};
use crate::state::AppState;
use crate::store::Store;

/// How often the store's freshness is checked and the outbox swept; more often for a
/// while after a store call failed (a failover under way): a promoted replica carries
/// the old primary's markers, which the edge trusts until a look finds them stale.
const WATCH_EVERY: Duration = Duration::from_secs(1);
const WATCH_EVERY_AFTER_FAILURE: Duration = Duration::from_millis(200);
const FAILURE_WATCH_FOR: Duration = Duration::from_secs(15);
const CLEANUP_EVERY: Duration = Duration::from_secs(600);
/// Rows deleted per statement by the cleanup: short transactions, no long locks.
const CLEANUP_BATCH: i64 = 1000;

/// How long rotated refresh tokens, ended sessions and security events are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Sessions are deleted this long after they end, with their tokens: until then
    /// a replayed token is still recognised as reuse.
    pub ended_sessions_secs: u64,
    /// Rotated refresh tokens older than this are deleted even while their session
    /// lives (`REUSE_DETECTION_SECS`).
    pub rotated_tokens_secs: u64,
    pub security_events_secs: u64,
    pub idle_ttl_secs: u64,
    pub grace_secs: u64,
}

impl From<&crate::config::Config> for Retention {
    fn from(config: &crate::config::Config) -> Self {
        Retention {
            ended_sessions_secs: 86_400,
            rotated_tokens_secs: config.reuse_detection_secs,
            security_events_secs: config.security_event_retention_days * 86_400,
            idle_ttl_secs: config.session_idle_ttl_secs,
            grace_secs: config.refresh_grace_secs,
        }
    }
}

/// The periodic deletes, each by index (`tests/growth` checks the plans), in batches.
/// The `$1` of each is a number of seconds.
pub const CLEANUP_STATEMENTS: [(&str, &str); 6] = [
    (
        "revoked sessions",
        "delete from session where id in (select id from session \
         where revoked_at < now() - make_interval(secs => $1) limit $2)",
    ),
    (
        "expired sessions",
        "delete from session where id in (select id from session \
         where expires_at < now() - make_interval(secs => $1) limit $2)",
    ),
    (
        // Idle: not refreshed for the idle timeout; its last access token ended at most
        // that long after its last use, which the partial index on access_expires_at finds.
        "idle sessions",
        "delete from session where id in (select id from session \
         where revoked_at is null and access_expires_at < now() - make_interval(secs => $1) limit $2)",
    ),
    (
        "rotated refresh tokens",
        "delete from refresh_token where id in (select id from refresh_token \
         where created_at < now() - make_interval(secs => $1) and rotated_at is not null limit $2)",
    ),
    (
        "security events",
        "delete from security_event where id in (select id from security_event \
         where created_at < now() - make_interval(secs => $1) limit $2)",
    ),
    (
        // Sealed successors are only usable inside the grace window; erased after it.
        "sealed successors",
        "update refresh_token set child_sealed = null where id in (select id from refresh_token \
         where child_sealed is not null and rotated_at < now() - make_interval(secs => $1) limit $2)",
    ),
];

/// Every query a timer runs, by name, with `$1` a number of seconds and `$2` a batch
/// size: the cleanup, the outbox sweep's claim, and the rebuild's reads. Each must be
/// served by an index however large the tables grow (`origin/tests/hardening.rs`
/// checks the plans).
pub fn periodic_queries() -> Vec<(&'static str, String)> {
    let mut queries: Vec<(&'static str, String)> = CLEANUP_STATEMENTS
        .iter()
        .map(|(name, sql)| (*name, sql.to_string()))
        .collect();
    queries.push(("outbox sweep: a look", db::outbox::ANY_WAITING.to_string()));
    queries.push(("outbox sweep: the claim", db::outbox::CLAIM.to_string()));
    queries.push(("rebuild: sessions", db::sessions::publishable_sql()));
    queries.push((
        "rebuild: not-befores",
        db::sessions::RECENT_NOT_BEFORES.to_string(),
    ));
    queries
}

/// Deletes what has outlived its retention, in batches, and erases sealed successors
/// past the grace window. Returns the rows touched per statement.
pub async fn cleanup(
    db: &PgPool,
    retention: &Retention,
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let ages = [
        retention.ended_sessions_secs,
        retention.ended_sessions_secs,
        retention.idle_ttl_secs + retention.ended_sessions_secs,
        retention.rotated_tokens_secs,
        retention.security_events_secs,
        retention.grace_secs,
    ];
    let mut done = Vec::new();
    for ((what, statement), age) in CLEANUP_STATEMENTS.iter().zip(ages) {
        let mut total = 0;
        loop {
            let n = sqlx::query(statement)
                .bind(age as f64)
                .bind(CLEANUP_BATCH)
                .execute(db)
                .await?
                .rows_affected();
            total += n;
            if n < CLEANUP_BATCH as u64 {
                break;
            }
        }
        done.push((*what, total));
    }
    Ok(done)
}

/// Rebuilds the given partitions of the store from Postgres: every session whose
/// record or tombstone may still matter, and the recent not-befores. Idempotent
/// (every write is versioned), so several origins may run it at once. Returns how many
/// sessions it wrote.
pub async fn rebuild(
    db: &PgPool,
    store: &Store,
    lifetimes: &Lifetimes,
    partitions: &HashSet<u16>,
) -> Result<usize, String> {
    let horizon = lifetimes.horizon_secs();
    let rows = db::sessions::publishable(db, horizon)
        .await
        .map_err(|e| e.to_string())?;
    let publications: Vec<_> = rows
        .iter()
        .filter(|row| partitions.contains(&partition(&row.user_id.to_string())))
        .map(|row| publish::publication(row, lifetimes))
        .collect();
    store
        .publish(&publications)
        .await
        .map_err(|_| "the store failed during the rebuild")?;
    let users = db::sessions::recent_not_befores(db, horizon)
        .await
        .map_err(|e| e.to_string())?;
    for (user_id, at) in users {
        if partitions.contains(&partition(&user_id.to_string())) {
            store
                .publish_not_before(&publish::not_before(user_id, at, lifetimes))
                .await
                .map_err(|_| "the store failed during the rebuild")?;
        }
    }
    Ok(publications.len())
}

/// One look at the store's freshness: partitions whose marker does not vouch for the
/// server holding them (restarted, flushed, restored from a snapshot, failed over, or
/// never built) lose their marker, so the edge falls back to the origin for them, are
/// rebuilt from Postgres, and get their marker back, set under the server's run id.
/// Returns the partitions rebuilt and the sessions written.
pub async fn refresh_freshness(
    db: &PgPool,
    store: &Store,
    lifetimes: &Lifetimes,
) -> Result<(usize, usize), String> {
    let states = store
        .freshness()
        .await
        .map_err(|_| "the store failed reading its freshness")?;
    let stale: Vec<_> = states.into_iter().filter(|s| !s.fresh).collect();
    if stale.is_empty() {
        return Ok((0, 0));
    }
    let id = crate::random::hex::<8>();
    let mut begun = Vec::new();
    for state in stale {
        if store
            .begin_rebuild(state.partition, &id)
            .await
            .map_err(|_| "the store failed starting a rebuild")?
        {
            begun.push(state);
        }
    }
    if begun.is_empty() {
        return Ok((0, 0));
    }
    let partitions: HashSet<u16> = begun.iter().map(|s| s.partition).collect();
    let written = rebuild(db, store, lifetimes, &partitions).await?;
    let mut ended = 0;
    for state in &begun {
        // Refused if that server restarted or failed over, or the partition was
        // flushed, during the rebuild: it stays stale and is rebuilt at the next look.
        ended += usize::from(
            store
                .end_rebuild(state.partition, &state.run_id, &id)
                .await
                .map_err(|_| "the store failed setting a marker")?,
        );
    }
    if ended < begun.len() {
        tracing::warn!(
            refused = begun.len() - ended,
            "rebuilt partitions not marked fresh (their server changed meanwhile); will retry"
        );
    }
    Ok((begun.len(), written))
}

/// Runs forever: every second the outbox sweep and the freshness check; the cleanup
/// every 10 minutes.
pub async fn run(state: AppState) {
    let lifetimes = Lifetimes::from(state.config.as_ref());
    let retention = Retention::from(state.config.as_ref());
    let mut watch = tokio::time::interval(WATCH_EVERY_AFTER_FAILURE);
    let mut last_look = tokio::time::Instant::now() - WATCH_EVERY;
    let mut cleanup_tick = tokio::time::interval(CLEANUP_EVERY);
    loop {
        tokio::select! {
            _ = watch.tick() => {
                if last_look.elapsed() < WATCH_EVERY && !state.store.failed_within(FAILURE_WATCH_FOR) {
                    continue;
                }
                last_look = tokio::time::Instant::now();
                state.store.ensure_kv_marker().await;
                match publish::sweep(&state.db, &state.store, &lifetimes).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "outbox: store writes finished for another request or origin"),
                    Err(e) => tracing::debug!(error = %e, "outbox sweep failed; will retry"),
                }
                match refresh_freshness(&state.db, &state.store, &lifetimes).await {
                    Ok((0, _)) => {}
                    Ok((partitions, sessions)) => tracing::warn!(partitions, sessions, "store partitions were not fresh (restart, flush, restore or failover): rebuilt from postgres"),
                    Err(e) => tracing::debug!(error = %e, "freshness check failed; will retry"),
                }
            }
            _ = cleanup_tick.tick() => {
                match cleanup(&state.db, &retention).await {
                    Ok(done) => tracing::info!(?done, "cleanup"),
                    Err(e) => tracing::warn!(error = %e, "cleanup failed; will retry"),
                }
            }
        }
    }
}
