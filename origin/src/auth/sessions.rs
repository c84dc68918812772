//! `GET /auth/sessions` and `DELETE /auth/sessions/{session_id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use uuid::Uuid;

use super::AuthSession;
use super::logout::revoke_session;
use crate::db::sessions::Listed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    auth: AuthSession,
) -> ApiResult<axum::Json<Vec<Listed>>> {
    let mut sessions =
        crate::db::sessions::list(&state.db, auth.user_id, state.config.session_idle_ttl_secs)
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
