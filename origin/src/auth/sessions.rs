//! `GET /auth/sessions` and `DELETE /auth/sessions/{session_id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::AuthSession;
use super::logout::revoke_session;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Serialize, sqlx::FromRow)]
pub struct SessionView {
    session_id: Uuid,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    user_agent: Option<String>,
    ip: Option<String>,
    #[sqlx(skip)]
    current: bool,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthSession,
) -> ApiResult<axum::Json<Vec<SessionView>>> {
    let mut sessions: Vec<SessionView> = sqlx::query_as(
        "select id as session_id, created_at, last_used_at, user_agent, ip from session \
         where user_id = $1 and revoked_at is null and expires_at > now() \
           and last_used_at + make_interval(secs => $2) > now() \
         order by created_at desc limit 100",
    )
    .bind(auth.user_id)
    .bind(state.config.session_idle_ttl_secs as f64)
    .fetch_all(&state.db)
    .await?;
    for session in &mut sessions {
        session.current = session.session_id == auth.session_id;
    }
    Ok(axum::Json(sessions))
}

/// Ends one of the caller's sessions. Someone else's session, or an unknown or
/// malformed id, is a 404: the answer reveals nothing about other users.
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthSession,
    Path(session_id): Path<String>,
) -> ApiResult<StatusCode> {
    let session_id: Uuid = session_id.parse().map_err(|_| ApiError::NotFound)?;
    if revoke_session(&state, auth.user_id, session_id, "deleted_by_user").await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
