//! `POST /auth/logout` and `POST /auth/logout-all`: revoked in Postgres, then
//! tombstoned in the store, so the edge refuses the tokens from the next request on.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::AuthSession;
use super::cookie;
use crate::db;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn logout(
    State(state): State<AppState>,
    auth: AuthSession,
    headers: HeaderMap,
) -> ApiResult<Response> {
    revoke_session(&state, auth.user_id, auth.session_id, "logout").await?;
    tracing::info!(user_id = %auth.user_id, session_id = %auth.session_id, "logout");
    Ok(ended(&state, &headers))
}

/// 204 for a request that ended the caller's own session, clearing the refresh
/// cookie of a browser-mode client (`crate::auth::cookie::should_clear`).
pub fn ended(state: &AppState, headers: &HeaderMap) -> Response {
    let response = StatusCode::NO_CONTENT.into_response();
    let name = cookie::name(state.config.dev_cookie_names);
    if cookie::should_clear(headers, name) {
        cookie::cleared(response, name)
    } else {
        response
    }
}

/// Revokes one session of `user_id` and tombstones it in the store; false if there
/// was no such active session (a revoked one was tombstoned when it was revoked).
pub async fn revoke_session(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
) -> ApiResult<bool> {
    let Some(row) = db::sessions::revoke(&state.db, user_id, session_id, reason).await? else {
        return Ok(false);
    };
    state.publisher.sessions(vec![row]).await?;
    Ok(true)
}

pub async fn logout_all(
    State(state): State<AppState>,
    auth: AuthSession,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (at, outbox_id, sessions) = db::sessions::revoke_all(&state.db, auth.user_id).await?;
    let count = sessions.len();
    state
        .publisher
        .logout_all(auth.user_id, at, outbox_id, sessions)
        .await?;
    tracing::info!(user_id = %auth.user_id, sessions = count, "logout everywhere");
    Ok(ended(&state, &headers))
}
