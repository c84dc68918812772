//! The HTTP layer's one error type: every failure becomes a JSON body of the form
//! `{"error","error_description"}` (RFC 6749 §5.2) here, and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed (RFC 6749 §5.2 `invalid_request`).
    BadRequest(&'static str),
    /// 413: the body is over the limit.
    TooLarge,
    /// 415: not `application/json` (or form where a form is expected).
    UnsupportedMediaType(&'static str),
    /// 422: well-formed but unacceptable (weak password, invalid username).
    Unprocessable(&'static str),
    /// 401 `invalid_grant`: one answer for unknown user, wrong password, and any bad refresh token.
    InvalidGrant,
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1).
    InvalidToken,
    /// 401 for a request with no bearer credentials at all: `WWW-Authenticate: Bearer
    /// realm="api"` with no error code (RFC 6750 §3.1).
    MissingToken,
    /// 405: the path exists, the method does not. The router adds `Allow`.
    MethodNotAllowed,
    /// 401 `invalid_client` with `WWW-Authenticate: Basic` (RFC 6749 §5.2).
    InvalidClient,
    /// 403 `invalid_request`: refused whoever asks, e.g. a browser-mode request from
    /// an origin that is not allowed (DESIGN §7).
    Forbidden(&'static str),
    /// 404.
    NotFound,
    /// 409: the username is taken.
    Conflict(&'static str),
    /// 429 with `Retry-After` seconds.
    TooManyRequests { retry_after: u64 },
    /// 503 with `Retry-After`: a dependency is down; says which, never why in detail.
    Unavailable {
        what: &'static str,
        retry_after: u64,
    },
    /// 500: a bug or an unexpected failure. The detail is logged, never sent.
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, description) = match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body too large",
            ),
            ApiError::UnsupportedMediaType(d) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", d)
            }
            ApiError::Unprocessable(d) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", d),
            ApiError::InvalidGrant => (
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                "the credentials or refresh token are not valid",
            ),
            ApiError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is not valid",
            ),
            ApiError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "an access token is required",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed",
            ),
            ApiError::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            ),
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, "invalid_request", d),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such resource"),
            ApiError::Conflict(d) => (StatusCode::CONFLICT, "conflict", d),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "too many attempts; retry later",
            ),
            ApiError::Unavailable { what, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                what,
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            ),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": code, "error_description": description})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token", error_description="the access token is not valid""#),
                );
            }
            ApiError::MissingToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="api""#),
                );
            }
            ApiError::InvalidClient => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="token""#),
                );
            }
            ApiError::TooManyRequests { retry_after }
            | ApiError::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            _ => {}
        }
        response
    }
}

/// Postgres failures: an outage, or a conflict Postgres rolled back, is a 503 the
/// client may retry; anything else is a bug.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        crate::metrics::METRICS.db_errors.inc();
        let retry = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Some(("database unavailable", 5)),
            sqlx::Error::Database(db) => db.code().as_deref().and_then(retryable),
            _ => None,
        };
        match retry {
            Some((what, retry_after)) => {
                tracing::warn!(%error, what, "postgres: the client may retry");
                ApiError::Unavailable { what, retry_after }
            }
            None => {
                tracing::error!(%error, "postgres error");
                ApiError::Internal
            }
        }
    }
}

/// A Postgres error a client may retry, by SQLSTATE (PostgreSQL, appendix A): what to
/// tell it and when to retry; `None` for anything else, a bug.
fn retryable(code: &str) -> Option<(&'static str, u64)> {
    // Class 08 (connection exception) and 57P (operator intervention: shutdown).
    if code.starts_with("08") || code.starts_with("57P") {
        return Some(("database unavailable", 5));
    }
    // Class 40 (transaction rollback: a deadlock or a serialization failure; running it
    // again may well succeed) and 55P03 (a row lock not had within `lock_timeout`).
    if code.starts_with("40") || code == "55P03" {
        return Some(("conflicting change; retry", 1));
    }
    None
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::retryable;

    #[test]
    fn outages_and_conflicts_are_retried_and_anything_else_is_a_bug() {
        for code in ["08006", "08001", "57P01", "57P03"] {
            assert_eq!(retryable(code), Some(("database unavailable", 5)), "{code}");
        }
        // Class 40 (a deadlock or a serialization failure: Postgres rolled the
        // transaction back, and running it again may well succeed) and 55P03 (a lock
        // not had within `lock_timeout`).
        for code in ["40P01", "40001", "55P03"] {
            assert_eq!(
                retryable(code),
                Some(("conflicting change; retry", 1)),
                "{code}"
            );
        }
        for code in ["23505", "42601", "22P02", "57014", "XX000"] {
            assert_eq!(retryable(code), None, "{code}");
        }
    }
}
