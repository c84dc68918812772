//! `GET /api/me`: the example protected API. Behind the edge it trusts the edge's
//! identity headers only with a valid proof; called directly it verifies the bearer
//! token itself. Identity headers without a valid proof grant nothing.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::AuthSession;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub struct Caller {
    user_id: Uuid,
    session_id: Uuid,
    scope: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Behind the edge: the identity it proved with the upstream key.
        let vouched = state
            .edge
            .as_ref()
            .and_then(|edge| edge.upstream(parts))
            .and_then(|v| v.identity);
        if let Some(edge) = vouched {
            return Ok(Caller {
                user_id: edge.user_id,
                session_id: edge.session_id,
                scope: edge.scope,
            });
        }
        let auth = AuthSession::from_request_parts(parts, state).await?;
        Ok(Caller {
            user_id: auth.user_id,
            session_id: auth.session_id,
            scope: auth.scope,
        })
    }
}

pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<axum::Json<Value>> {
    let cached = state
        .usernames
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&caller.user_id)
        .cloned();
    let username = match cached {
        Some(name) => name,
        None => {
            let name = crate::db::users::username(&state.db, caller.user_id)
                .await?
                .ok_or(ApiError::InvalidToken)?;
            let mut cache = state.usernames.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= 100_000 {
                cache.clear();
            }
            cache.insert(caller.user_id, name.clone());
            name
        }
    };
    Ok(axum::Json(json!({
        "user_id": caller.user_id, "username": username, "session_id": caller.session_id, "scope": caller.scope,
    })))
}
