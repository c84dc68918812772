//! After a commit: writing what changed to the store (DESIGN.md §3).
//!
//! A change to a session commits first, with its outbox row (`crate::db::sessions`),
//! and only then goes to the store: no row lock or pool connection is held while Redis
//! or the KV push is slow, and the versions order the writes, so publishing after the
//! commit cannot undo a later revocation. The response waits for the write, so in the
//! normal case the edge sees the change before the client does; a client hanging up
//! meanwhile cannot cancel it (a guard hands it to a task of its own). Once it is done the outbox
//! row goes (in batches); if it failed, or the origin died first, the row stays and
//! [`sweep`] (every origin runs it) finishes it from what Postgres says then.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::session::SessionRecord;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::Config;
use crate::db;
use crate::db::sessions::SessionRow;
use crate::error::ApiError;
use crate::store::{NotBefore, Publication, Store};

/// How long an outbox row waits for the origin that wrote it before any origin may
/// finish it.
pub const SWEEP_AFTER_SECS: u64 = 2;

/// Extra life of a tombstone beyond the last moment a record of its session could
/// live, for clock differences between Postgres and Redis.
const TOMBSTONE_MARGIN_MS: i64 = 60_000;

/// Lifetimes that decide how long store keys live.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub access_token_ttl_secs: u64,
    pub record_buffer_secs: u64,
    pub leeway_secs: u64,
}

impl From<&Config> for Lifetimes {
    fn from(config: &Config) -> Self {
        Lifetimes {
            access_token_ttl_secs: config.access_token_ttl_secs,
            record_buffer_secs: config.session_record_buffer_secs,
            leeway_secs: config.token_leeway_secs,
        }
    }
}

impl Lifetimes {
    /// How long a record, tombstone or not-before may matter after a change: the
    /// longest an access token lives, plus the buffer, plus the margin.
    pub fn horizon_secs(&self) -> u64 {
        self.access_token_ttl_secs + self.record_buffer_secs + self.leeway_secs + 60
    }
}

/// The store write that says what `row` is now: its record while it is active (living
/// as long as its newest access token plus the buffer), else a tombstone living as
/// long as any record of it could.
pub fn publication(row: &SessionRow, lifetimes: &Lifetimes) -> Publication {
    let sub = row.user_id.to_string();
    let ver = row.version as u64;
    let record_end_ms =
        row.access_expires_at.timestamp_millis() + lifetimes.record_buffer_secs as i64 * 1000;
    let (value, expire_at_ms) = match row.revoked_at {
        None => (
            SessionRecord {
                ver,
                sub: sub.clone(),
                scope: row.scope.clone(),
                auth_time_ms: row.created_at.timestamp_millis() as u64,
                exp: row.expires_at.timestamp() as u64,
            }
            .encode(),
            record_end_ms,
        ),
        Some(_) => (
            SessionRecord::tombstone(ver, &sub),
            record_end_ms + TOMBSTONE_MARGIN_MS,
        ),
    };
    Publication {
        sub,
        sid: row.id.to_string(),
        ver,
        value,
        expire_at_ms: expire_at_ms.max(0) as u64,
    }
}

/// A user's not-before, living as long as any access token from before it could.
pub fn not_before(user_id: Uuid, at: DateTime<Utc>, lifetimes: &Lifetimes) -> NotBefore {
    let at_ms = at.timestamp_millis();
    NotBefore {
        sub: user_id.to_string(),
        at_ms: at_ms as u64,
        expire_at_ms: (at_ms + lifetimes.horizon_secs() as i64 * 1000) as u64,
    }
}

/// Outbox rows done, to be deleted in batches by [`run_deleter`].
#[derive(Clone)]
pub struct Done(mpsc::UnboundedSender<i64>);

impl Done {
    pub fn channel() -> (Done, mpsc::UnboundedReceiver<i64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Done(tx), rx)
    }

    fn mark(&self, id: Option<i64>) {
        if let Some(id) = id {
            let _ = self.0.send(id);
        }
    }
}

/// Writes what commits changed to the store (see the module documentation).
#[derive(Clone)]
pub struct Publisher {
    store: Store,
    done: Done,
    lifetimes: Lifetimes,
}

impl Publisher {
    pub fn new(store: Store, done: Done, lifetimes: Lifetimes) -> Self {
        Publisher {
            store,
            done,
            lifetimes,
        }
    }

    /// Writes the sessions' new state, after their commit. What did not reach the
    /// store stays in the outbox, and on a single Redis the request still succeeds:
    /// a store that failed is one the edge cannot read either, or one whose markers
    /// the restart took (the edge falls back). Not on a cluster: one shard may fail a
    /// write while the edge reads it, or its promoted replica still carries the old
    /// primary's markers, so the edge would take the missing record for "not
    /// active" (a live user logged out) or the old one for active (a revoked session
    /// let in). There the answer is a 503: nothing is acknowledged that the store does
    /// not have; the commit stands and the outbox finishes it (a retried refresh gets
    /// the same successor, a retried logout finds the session ended).
    pub async fn sessions(&self, rows: Vec<SessionRow>) -> Result<(), ApiError> {
        self.publish(rows, None).await
    }

    /// Logout-everywhere's writes: the not-before first (it alone refuses every
    /// session, even one the rows missed), then the tombstones.
    pub async fn logout_all(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
        outbox_id: i64,
        rows: Vec<SessionRow>,
    ) -> Result<(), ApiError> {
        self.publish(rows, Some((user_id, at, outbox_id))).await
    }

    async fn publish(
        &self,
        rows: Vec<SessionRow>,
        nbf: Option<(Uuid, DateTime<Utc>, i64)>,
    ) -> Result<(), ApiError> {
        // Written here, in the request, in the normal case (no task to spawn and wake:
        // this runs on every login and refresh). If the request is dropped first (the
        // client hung up), the guard hands the writes to a task of their own.
        let mut guard = Unfinished(Some((self.clone(), rows, nbf)));
        let (this, rows, nbf) = guard.0.as_ref().expect("set above");
        let written = this.write(rows, *nbf).await;
        guard.0 = None;
        if written || !self.store.is_cluster() {
            Ok(())
        } else {
            Err(ApiError::Unavailable {
                what: "session store",
                retry_after: 1,
            })
        }
    }

    /// Whether every write reached the store.
    async fn write(&self, rows: &[SessionRow], nbf: Option<(Uuid, DateTime<Utc>, i64)>) -> bool {
        let mut written = true;
        if let Some((user_id, at, outbox_id)) = nbf {
            match self
                .store
                .publish_not_before(&not_before(user_id, at, &self.lifetimes))
                .await
            {
                Ok(()) => self.done.mark(Some(outbox_id)),
                Err(_) => {
                    written = false;
                    tracing::warn!(%user_id, "not-before not written; left to the outbox sweeper")
                }
            }
        }
        let publications: Vec<Publication> = rows
            .iter()
            .map(|row| publication(row, &self.lifetimes))
            .collect();
        match self.store.publish(&publications).await {
            Ok(()) => rows.iter().for_each(|row| self.done.mark(row.outbox_id)),
            Err(_) => {
                written = false;
                tracing::warn!(
                    sessions = rows.len(),
                    "session records not written; left to the outbox sweeper"
                )
            }
        }
        written
    }
}

type Writes = (
    Publisher,
    Vec<SessionRow>,
    Option<(Uuid, DateTime<Utc>, i64)>,
);

/// Writes not yet finished when the request's future is dropped: finished by a task.
/// (Every write is versioned, so starting one over changes nothing.)
struct Unfinished(Option<Writes>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((publisher, rows, nbf)) = self.0.take() {
            tokio::spawn(async move { publisher.write(&rows, nbf).await });
        }
    }
}

/// Deletes done outbox rows, in batches: at most one transaction a second, however
/// many logins and refreshes there were (not one per request: each would be a
/// transaction on the database the design keeps for logins and refreshes). A second
/// is well inside [`SWEEP_AFTER_SECS`], so the sweeper rarely sees a done row.
pub async fn run_deleter(db: PgPool, mut done: mpsc::UnboundedReceiver<i64>) {
    let mut batch = Vec::new();
    while let Some(id) = done.recv().await {
        batch.push(id);
        // Whatever else arrives within the second joins this batch.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(id) = done.try_recv() {
            batch.push(id);
        }
        for chunk in batch.chunks(1000) {
            if let Err(error) = db::outbox::delete(&db, chunk).await {
                // The rows stay; the sweeper writes them once more, harmlessly.
                tracing::warn!(%error, "outbox rows not deleted");
            }
        }
        batch.clear();
    }
}

/// Finishes outbox rows older than [`SWEEP_AFTER_SECS`]: rows whose origin failed to
/// write them or died. Writes what Postgres says about each session or user now, so
/// the newest state lands whatever was pending. Returns how many rows it finished.
pub async fn sweep(db: &PgPool, store: &Store, lifetimes: &Lifetimes) -> Result<usize, String> {
    if !db::outbox::any_waiting(db, SWEEP_AFTER_SECS)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(0);
    }
    let mut tx = db.begin().await.map_err(|e| e.to_string())?;
    let rows = db::outbox::claim(&mut tx, SWEEP_AFTER_SECS, 500)
        .await
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let session_ids: Vec<Uuid> = rows.iter().filter_map(|r| r.session_id).collect();
    let sessions = db::sessions::by_ids(&mut tx, &session_ids)
        .await
        .map_err(|e| e.to_string())?;
    let publications: Vec<Publication> = sessions
        .iter()
        .map(|row| publication(row, lifetimes))
        .collect();
    store
        .publish(&publications)
        .await
        .map_err(|_| "the store failed")?;
    for row in rows.iter().filter(|r| r.session_id.is_none()) {
        let at = db::sessions::not_before(&mut tx, row.user_id)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(at) = at {
            store
                .publish_not_before(&not_before(row.user_id, at, lifetimes))
                .await
                .map_err(|_| "the store failed")?;
        }
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    db::outbox::delete_in(&mut tx, &ids)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::session::Stored;

    fn row(revoked: bool) -> SessionRow {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        SessionRow {
            id: Uuid::nil(),
            user_id: Uuid::max(),
            scope: "profile".into(),
            created_at: t(1_000),
            last_used_at: t(2_000),
            expires_at: t(100_000),
            access_expires_at: t(2_900),
            revoked_at: revoked.then(|| t(2_500)),
            version: 7,
            now: t(2_500),
            outbox_id: Some(1),
        }
    }

    const LIFETIMES: Lifetimes = Lifetimes {
        access_token_ttl_secs: 900,
        record_buffer_secs: 60,
        leeway_secs: 30,
    };

    #[test]
    fn an_active_session_publishes_its_record_until_its_last_token_plus_the_buffer() {
        let p = publication(&row(false), &LIFETIMES);
        assert_eq!(p.ver, 7);
        assert_eq!(p.expire_at_ms, 2_960_000);
        match Stored::decode(p.value.as_bytes()).unwrap() {
            Stored::Active(record) => {
                assert_eq!(
                    (record.ver, record.auth_time_ms, record.exp),
                    (7, 1_000_000, 100_000)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_revoked_session_publishes_a_tombstone_outliving_any_record_of_it() {
        let active = publication(&row(false), &LIFETIMES);
        let p = publication(&row(true), &LIFETIMES);
        assert_eq!(
            Stored::decode(p.value.as_bytes()).unwrap(),
            Stored::Revoked { ver: 7 }
        );
        assert!(p.expire_at_ms > active.expire_at_ms);
    }

    #[test]
    fn a_not_before_outlives_every_token_from_before_it() {
        let at = DateTime::from_timestamp(5_000, 0).unwrap();
        let nbf = not_before(Uuid::nil(), at, &LIFETIMES);
        assert_eq!(nbf.at_ms, 5_000_000);
        assert!(nbf.expire_at_ms >= 5_000_000 + (900 + 60 + 30) * 1000);
    }
}
