//! `POST /auth/logout` and `POST /auth/logout-all`: revoked in Postgres, then
//! removed from Redis, so the edge refuses the tokens from the next request on.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use uuid::Uuid;

use super::{AuthSession, unpublish};
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn logout(State(state): State<AppState>, auth: AuthSession) -> ApiResult<StatusCode> {
    revoke_session(&state, auth.user_id, auth.session_id, "logout").await?;
    tracing::info!(user_id = %auth.user_id, session_id = %auth.session_id, "logout");
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes one session of `user_id`; false if there was no such active session.
pub async fn revoke_session(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
) -> ApiResult<bool> {
    let revoked = sqlx::query(
        "update session set revoked_at = now(), revoked_reason = $3 where id = $1 and user_id = $2 and revoked_at is null",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(reason)
    .execute(&state.db)
    .await?
    .rows_affected()
        > 0;
    // Removed even if Postgres had it revoked already: the record must not linger.
    unpublish(state, user_id, vec![session_id.to_string()]).await;
    Ok(revoked)
}

pub async fn logout_all(State(state): State<AppState>, auth: AuthSession) -> ApiResult<StatusCode> {
    let now = Utc::now();
    let mut tx = state.db.begin().await?;
    sqlx::query("update app_user set sessions_not_before = $2, updated_at = $2 where id = $1")
        .bind(auth.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let sessions: Vec<Uuid> = sqlx::query_scalar(
        "update session set revoked_at = $2, revoked_reason = 'logout_all' where user_id = $1 and revoked_at is null returning id",
    )
    .bind(auth.user_id)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    // The "not before" outlives every access token that could predate it.
    let config = &state.config;
    let ttl =
        config.access_token_ttl_secs + config.session_record_buffer_secs + config.token_leeway_secs;
    let sids: Vec<String> = sessions.iter().map(Uuid::to_string).collect();
    let sub = auth.user_id.to_string();
    if state
        .store
        .logout_all(&sub, &sids, now.timestamp_millis() as u64, ttl)
        .await
        .is_err()
    {
        // The per-session removals are retried; the user "not before" is rebuilt from
        // Postgres by the flush watcher if Redis lost it.
        unpublish(&state, auth.user_id, sids).await;
    }
    tracing::info!(user_id = %auth.user_id, sessions = sessions.len(), "logout everywhere");
    Ok(StatusCode::NO_CONTENT)
}
