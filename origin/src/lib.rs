//! The origin issuer: an axum service for login, refresh rotation, revocation and the
//! JWKS (DESIGN.md §4), with Postgres as the source of truth and Redis as the edge's
//! fast path. `app` builds the router; `main.rs` wires configuration and runs it.

pub mod api;
pub mod auth;
pub mod config;
pub mod consistency;
pub mod db;
pub mod device;
pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod password;
pub mod publish;
pub mod random;
pub mod state;
pub mod store;
pub mod tasks;
pub mod throttle;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// Migrations embedded in the binary, applied at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Largest accepted request body. Credentials and tokens are well under 1 KiB.
pub const BODY_LIMIT: usize = 16 * 1024;

pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/auth/register", post(auth::register::register))
        .route("/auth/login", post(auth::login::login))
        .route("/auth/refresh", post(auth::refresh::refresh))
        .route("/auth/logout", post(auth::logout::logout))
        .route("/auth/logout-all", post(auth::logout::logout_all))
        .route("/auth/sessions", get(auth::sessions::list))
        .route("/auth/sessions/{session_id}", delete(auth::sessions::delete))
        .route("/auth/revoke", post(auth::oauth::revoke))
        .route("/auth/introspect", post(auth::oauth::introspect))
        .route("/internal/validate", post(auth::validate::validate))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/api/me", get(api::me))
        .route("/healthz", get(health::healthz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn(no_store))
        .layer(
            // The span carries the request id, method and path, never the query string
            // or headers, which may hold credentials.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// `Cache-Control: no-store` on every `/auth/*` and `/api/*` response that does not
/// set its own (DESIGN.md §4): they carry tokens, identities or session lists, which
/// no shared cache may keep (RFC 6749 §5.1, RFC 9111 §5.2.2.5).
async fn no_store(
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let private = path.starts_with("/auth/") || path.starts_with("/api/");
    let mut response = next.run(request).await;
    if private {
        response
            .headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(axum::http::HeaderValue::from_static("no-store"));
    }
    response
}

/// Answers 413 to a request whose `Content-Length` is over [`BODY_LIMIT`] before any
/// handler runs, after reading and discarding what it sent (up to 4 MiB): a client
/// still sending when the server answers and closes gets a broken pipe, not the 413.
async fn refuse_oversized(
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        let _ = axum::body::to_bytes(request.into_body(), 4 << 20).await;
        return ApiError::TooLarge.into_response();
    }
    next.run(request).await
}

/// The operations listener (`OPS_LISTEN_ADDR`): readiness and metrics, which say what
/// is down and how much traffic there is, so they are kept off the public listener.
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

async fn jwks(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let cache_control = format!("public, max-age={}", state.config.jwks_max_age_secs);
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CACHE_CONTROL, cache_control),
        ],
        state.keys.jwks.clone(),
    )
}
