//! Background work: cleanup of ended sessions, and rebuilding Redis from Postgres
//! when Redis has lost its data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::session::SessionRecord;
use uuid::Uuid;

use crate::state::AppState;

/// How often the flush watcher looks for the epoch key.
const WATCH_EVERY: Duration = Duration::from_secs(2);
const CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// Deletes sessions (and, by cascade, their refresh tokens) a day after they ended:
/// until then a replayed token is still recognised as a reuse. Also forgets sealed
/// successors once their grace window is over.
pub async fn cleanup(state: &AppState) -> Result<(), sqlx::Error> {
    let deleted = sqlx::query(
        "delete from session where expires_at < now() - interval '1 day' or revoked_at < now() - interval '1 day' \
           or last_used_at < now() - make_interval(secs => $1) - interval '1 day'",
    )
    .bind(state.config.session_idle_ttl_secs as f64)
    .execute(&state.db)
    .await?
    .rows_affected();
    sqlx::query(
        "update refresh_token set child_sealed = null where child_sealed is not null and rotated_at < now() - make_interval(secs => $1)",
    )
    .bind(state.config.refresh_grace_secs as f64)
    .execute(&state.db)
    .await?;
    tracing::info!(deleted, "cleanup of ended sessions");
    Ok(())
}

/// Republishes every session whose access token may still be alive, and the users'
/// logout-everywhere times, then sets the epoch key. Idempotent: several origins may
/// run it at once.
pub async fn rebuild_store(state: &AppState) -> Result<usize, String> {
    type Row = (
        Uuid,
        Uuid,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select s.id, s.user_id, s.scope, s.created_at, s.expires_at, s.access_expires_at from session s \
         where s.revoked_at is null and s.expires_at > now() and s.access_expires_at > now() - interval '1 minute'",
    )
    .fetch_all(&state.db)
    .await
    .map_err(|e| e.to_string())?;
    let now = Utc::now();
    for (id, user_id, scope, created_at, expires_at, access_expires_at) in &rows {
        let record = SessionRecord {
            sub: user_id.to_string(),
            scope: scope.clone(),
            auth_time_ms: created_at.timestamp_millis() as u64,
            exp: expires_at.timestamp() as u64,
        };
        // Exactly what `issue` gave it: the access token's rest plus the buffer.
        let ttl = access_expires_at.timestamp() - now.timestamp()
            + state.config.session_record_buffer_secs as i64;
        if ttl <= 0 {
            continue;
        }
        state
            .store
            .publish(&id.to_string(), &record, ttl as u64)
            .await
            .map_err(|_| "redis failed during rebuild")?;
    }
    // A session revoked (by another origin) between the read above and its publish
    // would be back in Redis: look again now that every publish is done. A revocation
    // committed after this read deletes its record after our publish, so none is missed.
    let ids: Vec<Uuid> = rows.iter().map(|row| row.0).collect();
    let revoked: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "select id, user_id from session where id = any($1) and revoked_at is not null",
    )
    .bind(&ids)
    .fetch_all(&state.db)
    .await
    .map_err(|e| e.to_string())?;
    remove_records(state, &revoked).await?;
    let horizon =
        (state.config.access_token_ttl_secs + state.config.session_record_buffer_secs) as f64;
    let users: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "select id, sessions_not_before from app_user where sessions_not_before > now() - make_interval(secs => $1)",
    )
    .bind(horizon)
    .fetch_all(&state.db)
    .await
    .map_err(|e| e.to_string())?;
    for (user_id, not_before) in users {
        let ttl = horizon as u64 + state.config.token_leeway_secs;
        state
            .store
            .logout_all(
                &user_id.to_string(),
                &[],
                not_before.timestamp_millis() as u64,
                ttl,
            )
            .await
            .map_err(|_| "redis failed during rebuild")?;
    }
    state
        .store
        .set_epoch()
        .await
        .map_err(|_| "redis failed setting the epoch")?;
    Ok(rows.len())
}

/// Removes the records of `(session, user)` pairs, grouped by user.
async fn remove_records(state: &AppState, sessions: &[(Uuid, Uuid)]) -> Result<(), String> {
    let mut by_user: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
    for (id, user_id) in sessions {
        by_user.entry(*user_id).or_default().push(id.to_string());
    }
    for (user_id, ids) in by_user {
        state
            .store
            .remove(&user_id.to_string(), &ids)
            .await
            .map_err(|_| "redis failed removing revoked records")?;
    }
    Ok(())
}

/// Repairs what a predecessor killed mid-request may have left in Redis. Revocations
/// and rotations commit in Postgres first and touch Redis after (their retries live
/// in memory), so a SIGKILL in between leaves a revoked session's record behind (the
/// edge would still accept it) or an active session without its record. Removes the
/// records of sessions revoked recently enough for a record to live, then republishes
/// the active ones.
pub async fn reconcile_after_start(state: &AppState) -> Result<usize, String> {
    let horizon =
        (state.config.access_token_ttl_secs + state.config.session_record_buffer_secs) as f64;
    let revoked: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "select id, user_id from session where revoked_at > now() - make_interval(secs => $1)",
    )
    .bind(horizon)
    .fetch_all(&state.db)
    .await
    .map_err(|e| e.to_string())?;
    remove_records(state, &revoked).await?;
    rebuild_store(state).await
}

/// Runs forever: the start-up reconciliation (retried until it succeeds), cleanup every
/// 10 minutes, flush detection every 2 seconds.
pub async fn run(state: AppState) {
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut cleanup_tick = tokio::time::interval(CLEANUP_EVERY);
    let mut reconciled = false;
    loop {
        tokio::select! {
            _ = watch.tick() => {
                state.store.ensure_kv_epoch().await;
                if !reconciled {
                    match reconcile_after_start(&state).await {
                        Ok(n) => {
                            reconciled = true;
                            tracing::info!(sessions = n, "start-up reconciliation: redis matches postgres");
                        }
                        Err(e) => tracing::warn!(error = %e, "start-up reconciliation failed; will retry"),
                    }
                    continue;
                }
                if let Ok(false) = state.store.has_epoch().await {
                    match rebuild_store(&state).await {
                        Ok(n) => tracing::warn!(sessions = n, "redis had no epoch (restart or flush): session records rebuilt from postgres"),
                        Err(e) => tracing::warn!(error = %e, "rebuilding redis from postgres failed; will retry"),
                    }
                }
            }
            _ = cleanup_tick.tick() => {
                if let Err(e) = cleanup(&state).await {
                    tracing::warn!(error = %e, "cleanup failed; will retry");
                }
            }
        }
    }
}
