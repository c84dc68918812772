//! Client authentication for the RFC 7009 and RFC 7662 endpoints: HTTP Basic
//! (RFC 6749 §2.3.1).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use shared::proof::constant_time_eq;

use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the caller is the configured client.
pub struct AuthenticatedClient;

impl FromRequestParts<AppState> for AuthenticatedClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (id, secret) = state.client_secret().ok_or(ApiError::InvalidClient)?;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b64)| STANDARD.decode(b64.trim()).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or(ApiError::InvalidClient)?;
        let (given_id, given_secret) = given.split_once(':').ok_or(ApiError::InvalidClient)?;
        // Both compared in full, in constant time, so timing reveals neither.
        let id_ok = constant_time_eq(given_id.as_bytes(), id.as_bytes());
        let secret_ok =
            constant_time_eq(given_secret.as_bytes(), secret.expose_secret().as_bytes());
        if id_ok & secret_ok {
            Ok(AuthenticatedClient)
        } else {
            Err(ApiError::InvalidClient)
        }
    }
}
