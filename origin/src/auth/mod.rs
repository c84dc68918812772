//! Authentication endpoints and the extractors that authenticate requests.

pub mod bodies;
pub mod client;
pub mod cookie;
pub mod login;
pub mod logout;
pub mod oauth;
pub mod refresh;
pub mod register;
pub mod sessions;
pub mod tokens;
pub mod validate;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::session::SessionState;
use shared::{Claims, VerifiedClaims};
use uuid::Uuid;

use crate::db::sessions::SessionRow;
use crate::error::{ApiError, ApiResult};
use crate::metrics::{METRICS, Outcome};
use crate::state::AppState;
use tokens::RefreshToken;

/// The client's address and user agent, for throttling, session lists and
/// security events.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    /// Whether the request came through the edge (its proof checked out), which then
    /// already applied the browser-origin rule ([`cookie::check_origin`]).
    pub via_edge: bool,
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The address the edge signed; else, without the edge, the configured proxy's
        // header (an unparsable one is ignored, never trusted as text); else the peer.
        let vouched = state
            .edge
            .as_ref()
            .and_then(|edge| edge.origin(parts))
            .map(|v| v.client_ip);
        let via_edge = vouched.is_some();
        let forwarded = || {
            state
                .config
                .client_ip_header
                .as_deref()
                .and_then(|name| parts.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        };
        let peer = || {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        };
        let ip = vouched
            .or_else(forwarded)
            .or_else(peer)
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect());
        Ok(ClientInfo {
            ip,
            user_agent,
            via_edge,
        })
    }
}

/// A request authenticated by a bearer access token, verified here at the origin:
/// signature and claims, then the session in Redis, or in Postgres when Redis cannot say.
#[derive(Debug)]
pub struct AuthSession {
    pub claims: VerifiedClaims,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub scope: String,
}

/// The bearer token of `Authorization` (RFC 6750 §2.1; the scheme is case-insensitive,
/// RFC 7235 §2.1). Tokens in the query string or body are not accepted.
///
/// `Ok(None)` when there are no bearer credentials (no header, or another scheme):
/// the answer is a challenge without an error code (RFC 6750 §3.1). Two headers, or
/// one holding a comma (what a proxy makes of two), are ambiguous: which one would a
/// cache, a log or the upstream take? 400, never a guess.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Authorization is not ASCII"))?;
    if value.contains(',') {
        return Err(ApiError::BadRequest(
            "more than one credential in Authorization",
        ));
    }
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    match token.trim() {
        "" => Err(ApiError::InvalidToken),
        token => Ok(Some(token)),
    }
}

impl FromRequestParts<AppState> for AuthSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?.ok_or(ApiError::MissingToken)?;
        let outcome = |o: &'static str| {
            METRICS
                .validations
                .get_or_create(&Outcome { outcome: o })
                .inc()
        };
        let claims = state
            .validator
            .verify(token.as_bytes(), &state.keys.published, shared::unix_now())
            .map_err(|e| {
                tracing::debug!(reason = %e, "access token refused");
                outcome("invalid_token");
                ApiError::InvalidToken
            })?;
        let (Ok(user_id), Ok(session_id)) = (claims.subject().parse(), claims.session_id().parse())
        else {
            outcome("invalid_token");
            return Err(ApiError::InvalidToken);
        };
        let scope = match state.store.session_state(&claims).await {
            Ok(SessionState::Active(record)) => record.scope,
            Ok(SessionState::Absent | SessionState::Revoked) => {
                outcome("session_inactive");
                return Err(ApiError::InvalidToken);
            }
            // The store cannot say: Postgres decides (never "active" by default).
            Err(_) => match active_scope_in_db(state, user_id, session_id).await? {
                Some(scope) => scope,
                None => {
                    outcome("session_inactive");
                    return Err(ApiError::InvalidToken);
                }
            },
        };
        outcome("valid");
        Ok(AuthSession {
            claims,
            user_id,
            session_id,
            scope,
        })
    }
}

/// The session's scope if it is active according to Postgres.
pub async fn active_scope_in_db(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
) -> ApiResult<Option<String>> {
    Ok(crate::db::sessions::active_scope(
        &state.db,
        user_id,
        session_id,
        state.config.session_idle_ttl_secs,
    )
    .await?)
}

/// The body of every successful login and refresh (DESIGN.md §4).
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    /// Left out in browser mode, where the token is in a cookie instead ([`cookie`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub refresh_token_expires_in: u64,
    pub scope: String,
}

impl IntoResponse for TokenResponse {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self).into_response();
        // RFC 6749 §5.1: token responses must not be cached.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
            .headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }
}

/// Signs a fresh access token for the session `row` (just written: its times are
/// Postgres's, `exp` is its `access_expires_at`) and builds the response around
/// `refresh`. The row's store write is [`crate::publish`]'s, after its commit.
pub fn issue(
    state: &AppState,
    row: &SessionRow,
    refresh: &RefreshToken,
) -> ApiResult<TokenResponse> {
    let config = &state.config;
    let now = row.now.timestamp().max(0) as u64;
    let exp = row.access_expires_at.timestamp().max(0) as u64;
    let claims = Claims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        sub: row.user_id.to_string(),
        sid: row.id.to_string(),
        jti: base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            crate::random::bytes::<16>(),
        ),
        iat: now,
        nbf: now,
        exp,
        scope: row.scope.clone(),
    };
    let access_token = state.keys.active.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "could not sign an access token");
        ApiError::Internal
    })?;
    let session_left = (row.expires_at.timestamp().max(0) as u64).saturating_sub(now);
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: exp.saturating_sub(now),
        refresh_token: Some(refresh.encode()),
        refresh_token_expires_in: session_left.min(config.session_idle_ttl_secs),
        scope: row.scope.clone(),
    })
}
