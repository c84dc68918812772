//! Request extractors whose rejections use the JSON error shape.

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json`, with every rejection turned into an [`ApiError`]. The body must be
/// a JSON object: serde would otherwise also fill a struct from an array of its
/// fields in order, a second syntax nobody documents or tests.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) if value.is_object() => serde_json::from_value(value)
                .map(Json)
                .map_err(|_| ApiError::BadRequest("missing or invalid field")),
            Ok(_) => Err(ApiError::BadRequest("body must be a JSON object")),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::UnsupportedMediaType("expected application/json"))
            }
            Err(JsonRejection::JsonDataError(_)) => {
                Err(ApiError::BadRequest("missing or invalid field"))
            }
            Err(JsonRejection::JsonSyntaxError(_)) => {
                Err(ApiError::BadRequest("body is not valid JSON"))
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge)
            }
            Err(_) => Err(ApiError::BadRequest("unreadable body")),
        }
    }
}

/// `axum::Form`, with every rejection turned into an [`ApiError`].
pub struct Form<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Form<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(Form(value)),
            Err(FormRejection::InvalidFormContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "expected application/x-www-form-urlencoded",
            )),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge)
            }
            Err(_) => Err(ApiError::BadRequest("missing or invalid field")),
        }
    }
}

/// Runs extractor `E` on an in-memory request body sent with `content_type`, without a
/// server (the `request_body` fuzz target, through `crate::auth::bodies`).
pub fn run_extractor<E: FromRequest<(), Rejection = ApiError>>(
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<E, ApiError> {
    use std::future::Future as _;
    let mut request = axum::http::Request::post("/");
    if let Some(value) = content_type.and_then(|v| axum::http::HeaderValue::from_bytes(v).ok()) {
        request = request.header(axum::http::header::CONTENT_TYPE, value);
    }
    let request = request
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a POST to / with a byte body is a valid request");
    // An in-memory body is complete: the extractor never waits, so a no-op waker
    // suffices (no runtime needed).
    let mut future = std::pin::pin!(E::from_request(request, &()));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => panic!("an extractor waited on an in-memory body"),
    }
}
