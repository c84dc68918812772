//! Token revocation (RFC 7009) and introspection (RFC 7662) for trusted clients.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::active_scope_in_db;
use super::client::AuthenticatedClient;
use super::logout::revoke_session;
use super::tokens::RefreshToken;
use crate::error::ApiResult;
use crate::extract::Form;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct TokenForm {
    token: String,
    /// A hint only (RFC 7009 §2.1): both kinds are recognised by their shape.
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// The session a token belongs to, whether it is a refresh token or an access token
/// (signature and claims verified; expiry ignored for revocation, per RFC 7009 §2.2).
async fn session_of(state: &AppState, token: &str) -> ApiResult<Option<(Uuid, Uuid)>> {
    if let Some(refresh) = RefreshToken::parse(token) {
        return Ok(crate::db::sessions::of_refresh_token(&state.db, &refresh.hash()).await?);
    }
    let claims = state
        .validator
        .verify_at_any_time(token.as_bytes(), &state.keys.published);
    Ok(claims
        .ok()
        .and_then(|c| Some((c.subject().parse().ok()?, c.session_id().parse().ok()?))))
}

/// Always 200 for an authenticated client, whatever the token (RFC 7009 §2.2).
pub async fn revoke(
    State(state): State<AppState>,
    _client: AuthenticatedClient,
    Form(form): Form<TokenForm>,
) -> ApiResult<StatusCode> {
    if let Some((user_id, session_id)) = session_of(&state, &form.token).await? {
        revoke_session(&state, user_id, session_id, "revoked_by_client").await?;
        tracing::info!(%user_id, %session_id, "session revoked by client");
    }
    Ok(StatusCode::OK)
}

/// `{"active": false}` for anything not currently usable (RFC 7662 §2.2).
pub async fn introspect(
    State(state): State<AppState>,
    _client: AuthenticatedClient,
    Form(form): Form<TokenForm>,
) -> ApiResult<axum::Json<Value>> {
    let inactive = || Ok(axum::Json(json!({ "active": false })));
    if let Some(refresh) = RefreshToken::parse(&form.token) {
        let row = crate::db::sessions::of_current_refresh_token(&state.db, &refresh.hash()).await?;
        let Some((user_id, session_id, exp)) = row else {
            return inactive();
        };
        let Some(scope) = active_scope_in_db(&state, user_id, session_id).await? else {
            return inactive();
        };
        return Ok(axum::Json(json!({
            "active": true, "token_type": "refresh_token", "sub": user_id, "sid": session_id, "scope": scope, "exp": exp,
        })));
    }
    let Ok(claims) = state.validator.verify(
        form.token.as_bytes(),
        &state.keys.published,
        shared::unix_now(),
    ) else {
        return inactive();
    };
    let (Ok(user_id), Ok(session_id)) = (claims.subject().parse(), claims.session_id().parse())
    else {
        return inactive();
    };
    if active_scope_in_db(&state, user_id, session_id)
        .await?
        .is_none()
    {
        return inactive();
    }
    Ok(axum::Json(json!({
        "active": true, "token_type": "access_token", "iss": claims.issuer(), "aud": state.config.audience,
        "sub": claims.subject(), "sid": claims.session_id(), "jti": claims.token_id(), "scope": claims.scope(),
        "iat": claims.issued_at(), "nbf": claims.not_before(), "exp": claims.expires_at(),
    })))
}
