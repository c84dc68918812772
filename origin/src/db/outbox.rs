//! `store_outbox`: store writes that must follow a commit. Rows are written by the
//! statements of `super::sessions`; here they are claimed and deleted.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An outbox row: a session's record or tombstone to write, or (no session) a user's
/// not-before.
#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub user_id: Uuid,
    pub session_id: Option<Uuid>,
}

/// The SQL of [`any_waiting`] (`$1`: seconds): the oldest row by id, one index read.
pub const ANY_WAITING: &str = "select coalesce((select created_at from store_outbox \
     order by id limit 1) < now() - make_interval(secs => $1), false)";

/// Whether the oldest row has waited longer than `older_than_secs`: one statement,
/// outside any transaction, for the sweep's look every second (nearly always false).
/// Ids follow insertion, so the first row is the oldest, give or take the few
/// milliseconds between two transactions' starts: a row is at most a look late.
pub async fn any_waiting(db: &PgPool, older_than_secs: u64) -> sqlx::Result<bool> {
    sqlx::query_scalar(ANY_WAITING)
        .bind(older_than_secs as f64)
        .fetch_one(db)
        .await
}

/// The SQL of [`claim`] (`$1`: seconds, `$2`: how many).
pub const CLAIM: &str = "select id, user_id, session_id from store_outbox \
     where created_at < now() - make_interval(secs => $1) \
     order by id limit $2 for update skip locked";

/// Locks up to `limit` rows older than `older_than_secs` that no other origin holds
/// (`skip locked`): the origin that committed them normally finishes them first.
pub async fn claim(
    tx: &mut PgConnection,
    older_than_secs: u64,
    limit: i64,
) -> sqlx::Result<Vec<Row>> {
    sqlx::query_as(CLAIM)
        .bind(older_than_secs as f64)
        .bind(limit)
        .fetch_all(tx)
        .await
}

/// Deletes finished rows. Without waiting for the commit to reach the disk: a row
/// lost in a crash is only written to the store once more, which changes nothing.
pub async fn delete(db: &PgPool, ids: &[i64]) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("set local synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from store_outbox where id = any($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Deletes claimed rows inside the claiming transaction.
pub async fn delete_in(tx: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("delete from store_outbox where id = any($1)")
        .bind(ids)
        .execute(tx)
        .await
        .map(drop)
}

/// Rows waiting longer than `older_than_secs` (for `check-consistency`).
pub async fn pending(db: &PgPool, older_than_secs: u64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select count(*) from store_outbox where created_at < now() - make_interval(secs => $1)",
    )
    .bind(older_than_secs as f64)
    .fetch_one(db)
    .await
}
