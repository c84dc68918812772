//! `GET /auth/sessions` and `DELETE /auth/sessions/{session_id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::AuthSession;
use super::logout::{ended, revoke_session};
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
/// malformed id, is a 404: the answer reveals nothing about other users. Ending the
/// current session clears a browser's refresh cookie, as logout does.
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthSession,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> ApiResult<Response> {
    let session_id: Uuid = session_id.parse().map_err(|_| ApiError::NotFound)?;
    if revoke_session(&state, auth.user_id, session_id, "deleted_by_user").await? {
        if session_id == auth.session_id {
            return Ok(ended(&state, &headers));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}
