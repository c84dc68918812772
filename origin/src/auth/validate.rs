//! `POST /internal/validate`: the edge's degraded-mode check (DESIGN.md §3).
//!
//! When the edge cannot read its store it asks here whether a session is active.
//! Only the edge can call it (its identity proof, keyed with `EDGE_SECRET`), it is
//! rate-limited so an outage cannot turn into a database stampede, and it reads
//! Postgres only, so it works while Redis is down.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde_json::{Value, json};

use super::active_scope_in_db;
use crate::edge::EdgeIdentity;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub struct FromEdge(EdgeIdentity);

impl FromRequestParts<AppState> for FromEdge {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .edge
            .as_ref()
            .and_then(|edge| edge.validate(parts))
            .and_then(|v| v.identity)
            .map(FromEdge)
            .ok_or(ApiError::InvalidClient)
    }
}

pub async fn validate(
    State(state): State<AppState>,
    FromEdge(identity): FromEdge,
) -> ApiResult<axum::Json<Value>> {
    if !state.fallback_limit.try_take() {
        return Err(ApiError::TooManyRequests { retry_after: 1 });
    }
    let scope = active_scope_in_db(&state, identity.user_id, identity.session_id).await?;
    Ok(axum::Json(match scope {
        Some(scope) => json!({ "active": true, "scope": scope }),
        None => json!({ "active": false }),
    }))
}
