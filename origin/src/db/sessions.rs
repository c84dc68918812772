//! `session`, `refresh_token` and `store_outbox`: sessions, their refresh-token
//! families, and what must reach the store after each commit.
//!
//! Every statement that changes a session bumps its `version` and, in the same
//! statement, adds a `store_outbox` row naming it: the store write that must follow
//! the commit is part of the commit, so it survives the origin being killed (any
//! origin finishes it, `crate::publish`), and the version orders it against every
//! other write of that session.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The columns of `session` every caller needs, plus Postgres's `now()` of the
/// statement that read or wrote them, and the outbox row written with them.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// `now()` of the statement: the one clock (see `crate::db`).
    pub now: DateTime<Utc>,
    /// The outbox row written with this change, if it was one.
    pub outbox_id: Option<i64>,
}

/// The columns of [`SessionRow`] from a relation `s`, for `returning` and `select`.
const COLUMNS: &str = "s.id, s.user_id, s.scope, s.created_at, s.last_used_at, s.expires_at, \
                       s.access_expires_at, s.revoked_at, s.version, now() as now";

/// Creates a session with its first refresh token, in one statement.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    db: &PgPool,
    id: Uuid,
    user_id: Uuid,
    scope: &str,
    user_agent: Option<&str>,
    ip: &str,
    session_ttl_secs: u64,
    access_ttl_secs: u64,
    token_id: Uuid,
    token_hash: &[u8],
) -> sqlx::Result<SessionRow> {
    sqlx::query_as(&format!(
        "with s as ( \
             insert into session (id, user_id, scope, user_agent, ip, created_at, last_used_at, expires_at, access_expires_at) \
             values ($1, $2, $3, $4, $5, now(), now(), now() + make_interval(secs => $6), now() + make_interval(secs => $7)) \
             returning *), \
         t as (insert into refresh_token (id, session_id, token_hash) select $8, id, $9 from s), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id) \
         select {COLUMNS}, (select id from o) as outbox_id from s"
    ))
    .bind(id)
    .bind(user_id)
    .bind(scope)
    .bind(user_agent)
    .bind(ip)
    .bind(session_ttl_secs as f64)
    .bind(access_ttl_secs as f64)
    .bind(token_id)
    .bind(token_hash)
    .fetch_one(db)
    .await
}

/// A refresh presenting what may be its session's current token, for
/// [`rotate_current`].
#[derive(Clone)]
pub struct Presentation {
    pub token_hash: Vec<u8>,
    pub rotation: Rotation,
}

/// The common refresh, for any number of presentations in one statement outside any
/// transaction: each whose `token_hash` is its session's current token, of an active
/// session (not revoked, not past its absolute or idle end), is rotated (as [`rotate`]
/// does). Returns the rotated sessions with the index of their presentation; a
/// presentation without a row is anything else (a rotated token: a retry or a reuse;
/// or anything invalid), which the caller decides under [`lock_by_token`]'s locks.
///
/// One statement, one commit, for many: `crate::db::rotations` gathers the refreshes
/// that arrive while earlier ones are running, so under load Postgres does one
/// round trip and one WAL flush for a batch instead of one per refresh. Each
/// presentation is judged on its own rows: one matching nothing takes nothing from
/// the others (but an error fails them all, and a row lock held elsewhere holds them
/// all, within the lane's limits: `crate::db::lane`).
///
/// One winner among concurrent presentations of one token, in one batch or several,
/// on one origin or several: the first `update` of the token row takes its lock; the
/// others wait, re-check `rotated_at is null` against the committed row and update
/// nothing (within one statement, a row joined twice is updated once, and `returning`
/// names the presentation that updated it). A logout committing meanwhile makes the
/// session update find the row revoked and write nothing; the token claim alone is
/// harmless (the session is dead) and the caller finds it so.
pub async fn rotate_current(
    db: impl sqlx::PgExecutor<'_>,
    presented: &[Presentation],
    idle_ttl_secs: u64,
    access_ttl_secs: u64,
) -> sqlx::Result<Vec<(usize, SessionRow)>> {
    let rotations = || presented.iter().map(|p| &p.rotation);
    let hashes: Vec<&[u8]> = presented.iter().map(|p| &p.token_hash[..]).collect();
    let ips: Vec<&str> = rotations().map(|r| r.ip.as_str()).collect();
    let agents: Vec<Option<&str>> = rotations().map(|r| r.user_agent.as_deref()).collect();
    let sealed: Vec<&[u8]> = rotations().map(|r| &r.sealed_successor[..]).collect();
    let ids: Vec<Uuid> = rotations().map(|r| r.successor_id).collect();
    let successors: Vec<&[u8]> = rotations().map(|r| &r.successor_hash[..]).collect();
    let rows: Vec<Rotated> = sqlx::query_as(&format!(
        "with i as ( \
             select * from unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::uuid[], $6::bytea[]) \
                 with ordinality as i (token_hash, ip, user_agent, sealed, child_id, child_hash, n)), \
         claimed as ( \
             update refresh_token t set rotated_at = now(), rotated_ip = i.ip, rotated_user_agent = i.user_agent, \
                                        child_sealed = i.sealed \
             from i, session s \
             where t.token_hash = i.token_hash and t.rotated_at is null and s.id = t.session_id \
               and s.revoked_at is null and s.expires_at > now() \
               and s.last_used_at + make_interval(secs => $7) > now() \
             returning t.session_id, i.n, i.child_id, i.child_hash), \
         child as ( \
             insert into refresh_token (id, session_id, token_hash) select child_id, session_id, child_hash from claimed), \
         s as ( \
             update session set last_used_at = now(), access_expires_at = now() + make_interval(secs => $8), \
                                version = version + 1 \
             where id in (select session_id from claimed) and revoked_at is null returning *), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id, session_id) \
         select c.n, {COLUMNS}, o.id as outbox_id \
         from s join claimed c on c.session_id = s.id join o on o.session_id = s.id"
    ))
    .bind(hashes)
    .bind(ips)
    .bind(agents)
    .bind(sealed)
    .bind(ids)
    .bind(successors)
    .bind(idle_ttl_secs as f64)
    .bind(access_ttl_secs as f64)
    .fetch_all(db)
    .await?;
    // `with ordinality` counts from 1.
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((usize::try_from(r.n).ok()?.checked_sub(1)?, r.session)))
        .collect())
}

/// A row of [`rotate_current`]: the presentation's place (from 1) and its session.
#[derive(sqlx::FromRow)]
struct Rotated {
    n: i64,
    #[sqlx(flatten)]
    session: SessionRow,
}

/// A presented refresh token with its session, both rows locked.
#[derive(Debug, sqlx::FromRow)]
pub struct Presented {
    pub token_id: Uuid,
    pub rotated_at: Option<DateTime<Utc>>,
    pub rotated_ip: Option<String>,
    pub rotated_user_agent: Option<String>,
    pub child_sealed: Option<Vec<u8>>,
    #[sqlx(flatten)]
    pub session: SessionRow,
}

/// Finds the token by its hash and locks it and its session until the transaction
/// ends. Both rows: at READ COMMITTED a waiter re-reads only the rows it locked, so
/// locking the session alone let concurrent refreshes see the token as still current.
pub async fn lock_by_token(
    tx: &mut PgConnection,
    token_hash: &[u8],
) -> sqlx::Result<Option<Presented>> {
    sqlx::query_as(&format!(
        "select t.id as token_id, t.rotated_at, t.rotated_ip, t.rotated_user_agent, t.child_sealed, \
                {COLUMNS}, null::bigint as outbox_id \
         from refresh_token t join session s on s.id = t.session_id \
         where t.token_hash = $1 \
         for update of s, t"
    ))
    .bind(token_hash)
    .fetch_optional(tx)
    .await
}

/// Who rotated a token, for the security event of a later reuse.
#[derive(Clone)]
pub struct Rotation {
    pub ip: String,
    pub user_agent: Option<String>,
    /// The successor sealed under the rotated token (the grace-window retry).
    pub sealed_successor: Vec<u8>,
    pub successor_id: Uuid,
    pub successor_hash: Vec<u8>,
}

/// Rotates the current token `token_id` of `session_id`, in one statement (one round
/// trip while the locks are held): claims the token, adds the successor, moves the
/// session's times and version on, and records the store write. `None` if the token
/// was rotated already (unreachable under [`lock_by_token`]'s locks; nothing written).
pub async fn rotate(
    tx: &mut PgConnection,
    token_id: Uuid,
    session_id: Uuid,
    rotation: &Rotation,
    access_ttl_secs: u64,
) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(&format!(
        "with claimed as ( \
             update refresh_token set rotated_at = now(), rotated_ip = $3, rotated_user_agent = $4, child_sealed = $5 \
             where id = $1 and session_id = $2 and rotated_at is null returning session_id), \
         child as ( \
             insert into refresh_token (id, session_id, token_hash) select $6, session_id, $7 from claimed), \
         s as ( \
             update session set last_used_at = now(), access_expires_at = now() + make_interval(secs => $8), \
                                version = version + 1 \
             where id in (select session_id from claimed) returning *), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id) \
         select {COLUMNS}, (select id from o) as outbox_id from s"
    ))
    .bind(token_id)
    .bind(session_id)
    .bind(&rotation.ip)
    .bind(rotation.user_agent.as_deref())
    .bind(&rotation.sealed_successor)
    .bind(rotation.successor_id)
    .bind(&rotation.successor_hash)
    .bind(access_ttl_secs as f64)
    .fetch_optional(tx)
    .await
}

/// Whether the token with `token_hash` is the current one of `session_id`.
pub async fn is_current(
    tx: &mut PgConnection,
    token_hash: &[u8],
    session_id: Uuid,
) -> sqlx::Result<bool> {
    let current: Option<bool> = sqlx::query_scalar(
        "select rotated_at is null from refresh_token where token_hash = $1 and session_id = $2",
    )
    .bind(token_hash)
    .bind(session_id)
    .fetch_optional(tx)
    .await?;
    Ok(current == Some(true))
}

/// A grace-window retry issues a new access token for the current refresh token: the
/// session's times and version move on as in a rotation, so Postgres, the store and
/// the token agree (a stale row made `check-consistency` see a record outliving it).
pub async fn extend(
    tx: &mut PgConnection,
    session_id: Uuid,
    access_ttl_secs: u64,
) -> sqlx::Result<SessionRow> {
    sqlx::query_as(&format!(
        "with s as ( \
             update session set last_used_at = now(), access_expires_at = now() + make_interval(secs => $2), \
                                version = version + 1 \
             where id = $1 returning *), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id) \
         select {COLUMNS}, (select id from o) as outbox_id from s"
    ))
    .bind(session_id)
    .bind(access_ttl_secs as f64)
    .fetch_one(tx)
    .await
}

/// Revokes a session because a rotated token was used again, and records the security
/// event, in one statement.
pub async fn revoke_for_reuse(
    tx: &mut PgConnection,
    session_id: Uuid,
    ip: &str,
    user_agent: Option<&str>,
    detail: Value,
) -> sqlx::Result<SessionRow> {
    sqlx::query_as(&format!(
        "with s as ( \
             update session set revoked_at = now(), revoked_reason = 'refresh_token_reuse', version = version + 1 \
             where id = $1 returning *), \
         e as ( \
             insert into security_event (kind, user_id, session_id, ip, user_agent, detail) \
             select 'refresh_token_reuse', user_id, id, $2, $3, $4 from s), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id) \
         select {COLUMNS}, (select id from o) as outbox_id from s"
    ))
    .bind(session_id)
    .bind(ip)
    .bind(user_agent)
    .bind(detail)
    .fetch_one(tx)
    .await
}

/// Revokes one active session of `user_id`; `None` if there was no such session.
pub async fn revoke(
    db: &PgPool,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(&format!(
        "with s as ( \
             update session set revoked_at = now(), revoked_reason = $3, version = version + 1 \
             where id = $1 and user_id = $2 and revoked_at is null returning *), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id) \
         select {COLUMNS}, (select id from o) as outbox_id from s"
    ))
    .bind(session_id)
    .bind(user_id)
    .bind(reason)
    .fetch_optional(db)
    .await
}

/// Logout-everywhere: the user's not-before and the revocation of every active
/// session, in one transaction. Returns the not-before, its outbox row, and the
/// revoked sessions (each with its own).
pub async fn revoke_all(
    db: &PgPool,
    user_id: Uuid,
) -> sqlx::Result<(DateTime<Utc>, i64, Vec<SessionRow>)> {
    let mut tx = db.begin().await?;
    let (not_before, outbox_id): (DateTime<Utc>, i64) = sqlx::query_as(
        "with u as (update app_user set sessions_not_before = now(), updated_at = now() where id = $1 \
                    returning id, sessions_not_before), \
         o as (insert into store_outbox (user_id) select id from u returning id) \
         select u.sessions_not_before, o.id from u, o",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    let sessions = sqlx::query_as(&format!(
        "with s as ( \
             update session set revoked_at = now(), revoked_reason = 'logout_all', version = version + 1 \
             where user_id = $1 and revoked_at is null returning *), \
         o as (insert into store_outbox (user_id, session_id) select user_id, id from s returning id, session_id) \
         select {COLUMNS}, o.id as outbox_id from s join o on o.session_id = s.id"
    ))
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((not_before, outbox_id, sessions))
}

/// The session's scope if it is active according to Postgres: not revoked, not past
/// its absolute or idle lifetime, and not ended by logout-everywhere.
pub async fn active_scope(
    db: &PgPool,
    user_id: Uuid,
    session_id: Uuid,
    idle_ttl_secs: u64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "select s.scope from session s join app_user u on u.id = s.user_id \
         where s.id = $1 and s.user_id = $2 and s.revoked_at is null and s.expires_at > now() \
           and s.last_used_at + make_interval(secs => $3) > now() \
           and (u.sessions_not_before is null or s.created_at > u.sessions_not_before)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(idle_ttl_secs as f64)
    .fetch_optional(db)
    .await
}

/// A user's session as `GET /auth/sessions` shows it.
#[derive(serde::Serialize, sqlx::FromRow)]
pub struct Listed {
    pub session_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    #[sqlx(skip)]
    pub current: bool,
}

/// The user's active sessions, newest first (at most 100).
pub async fn list(db: &PgPool, user_id: Uuid, idle_ttl_secs: u64) -> sqlx::Result<Vec<Listed>> {
    sqlx::query_as(
        "select id as session_id, created_at, last_used_at, user_agent, ip from session \
         where user_id = $1 and revoked_at is null and expires_at > now() \
           and last_used_at + make_interval(secs => $2) > now() \
         order by created_at desc limit 100",
    )
    .bind(user_id)
    .bind(idle_ttl_secs as f64)
    .fetch_all(db)
    .await
}

/// The session of a refresh token (any of its family), for revocation.
pub async fn of_refresh_token(
    db: &PgPool,
    token_hash: &[u8],
) -> sqlx::Result<Option<(Uuid, Uuid)>> {
    sqlx::query_as(
        "select s.user_id, s.id from refresh_token t join session s on s.id = t.session_id where t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

/// The user, session and absolute end of a current (not rotated) refresh token.
pub async fn of_current_refresh_token(
    db: &PgPool,
    token_hash: &[u8],
) -> sqlx::Result<Option<(Uuid, Uuid, i64)>> {
    sqlx::query_as(
        "select s.user_id, s.id, extract(epoch from s.expires_at)::bigint from refresh_token t \
         join session s on s.id = t.session_id where t.token_hash = $1 and t.rotated_at is null",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

/// Sessions by id, as they are now (for finishing outbox rows).
pub async fn by_ids(db: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(&format!(
        "select {COLUMNS}, null::bigint as outbox_id from session s where s.id = any($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Sessions whose record or tombstone may still be needed in the store, for a
/// rebuild: the active ones whose last access token plus `horizon_secs` has not run
/// out, and those revoked within `horizon_secs` (each query on its own index).
pub async fn publishable(db: &PgPool, horizon_secs: u64) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(&publishable_sql())
        .bind(horizon_secs as f64)
        .fetch_all(db)
        .await
}

/// The SQL of [`publishable`] (`$1`: the horizon in seconds).
pub fn publishable_sql() -> String {
    format!(
        "select {COLUMNS}, null::bigint as outbox_id from session s \
         where s.revoked_at is null and s.access_expires_at > now() - make_interval(secs => $1) \
           and s.expires_at > now() \
         union all \
         select {COLUMNS}, null::bigint as outbox_id from session s \
         where s.revoked_at > now() - make_interval(secs => $1)"
    )
}

/// The SQL of [`recent_not_befores`] (`$1`: the horizon in seconds).
pub const RECENT_NOT_BEFORES: &str = "select id, sessions_not_before from app_user \
     where sessions_not_before > now() - make_interval(secs => $1)";

/// Users whose logout-everywhere is recent enough that tokens from before it may live.
pub async fn recent_not_befores(
    db: &PgPool,
    horizon_secs: u64,
) -> sqlx::Result<Vec<(Uuid, DateTime<Utc>)>> {
    sqlx::query_as(RECENT_NOT_BEFORES)
        .bind(horizon_secs as f64)
        .fetch_all(db)
        .await
}

/// A user's not-before, for finishing an outbox row.
pub async fn not_before(
    db: &mut PgConnection,
    user_id: Uuid,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "select sessions_not_before from app_user where id = $1",
    )
    .bind(user_id)
    .fetch_optional(db)
    .await
    .map(Option::flatten)
}
