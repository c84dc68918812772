//! The request bodies of every endpoint that reads one, parsed by the very extractors
//! the handlers use: for the `request_body` fuzz target. Here, not in `crate::extract`,
//! so the extractors never depend on the handlers' types.

use crate::error::ApiError;
use crate::extract::{Form, Json, run_extractor};

/// What the body extractors of the endpoints that read one made of a request body.
/// No `Debug`: the credentials hold a password.
pub struct ParsedBodies {
    /// `/auth/register` and `/auth/login` (`{"username","password"}`).
    pub credentials: Result<super::register::Credentials, ApiError>,
    /// `/auth/refresh` (`{"refresh_token"}`).
    pub refresh: Result<super::refresh::RefreshRequest, ApiError>,
    /// `/auth/revoke` and `/auth/introspect` (`token=…`).
    pub token_form: Result<super::oauth::TokenForm, ApiError>,
}

/// Runs the very extractors the handlers use ([`Json`], [`Form`]) on one request body
/// sent with `content_type`, without a server. For the `request_body` fuzz target:
/// whatever the bytes, each must answer with a value or a client error, never panic.
pub fn parse_bodies(content_type: Option<&[u8]>, body: &[u8]) -> ParsedBodies {
    ParsedBodies {
        credentials: run_extractor::<Json<_>>(content_type, body).map(|Json(v)| v),
        refresh: run_extractor::<Json<_>>(content_type, body).map(|Json(v)| v),
        token_form: run_extractor::<Form<_>>(content_type, body).map(|Form(v)| v),
    }
}
