//! `POST /auth/login`: Argon2id, throttled per address and per account (or per
//! remembered device of the account, `crate::device`).

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use uuid::Uuid;

use super::cookie::{self, Delivery};
use super::register::{Credentials, normalize_username};
use super::tokens::RefreshToken;
use super::{ClientInfo, TokenResponse, issue};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::{METRICS, Outcome};
use crate::password::{MAX_PASSWORD_BYTES, Verified};
use crate::state::AppState;
use crate::throttle::{self, Key};
use crate::{db, device};

pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let delivery = cookie::delivery(&headers)?;
    if delivery == Delivery::Cookie {
        cookie::check_origin(&headers, &state.config.allowed_origins, client.via_edge)?;
    }
    let result = attempt(&state, &client, &headers, body).await;
    METRICS
        .login_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "success",
        Err(ApiError::InvalidGrant) => "invalid_grant",
        Err(ApiError::TooManyRequests { .. }) => "throttled",
        Err(_) => "error",
    };
    METRICS.logins.get_or_create(&Outcome { outcome }).inc();
    let (tokens, device_cookie) = result?;
    let name = cookie::name(state.config.dev_cookie_names);
    let mut response = cookie::deliver(tokens, delivery, name);
    response
        .headers_mut()
        .append(header::SET_COOKIE, device_cookie);
    Ok(response)
}

/// Checks the credentials under the throttle; on success, the tokens and the
/// remembered-device cookie (renewed, or new).
async fn attempt(
    state: &AppState,
    client: &ClientInfo,
    headers: &HeaderMap,
    body: Credentials,
) -> ApiResult<(TokenResponse, HeaderValue)> {
    if body.password.len() > MAX_PASSWORD_BYTES || body.username.len() > 256 {
        return Err(ApiError::BadRequest("username or password too long"));
    }
    let config = &state.config;
    let account_id = throttle::account_id(&body.username);
    let cookie_name = device::cookie_name(config.dev_cookie_names);
    let device_id = device::read_cookie(headers, cookie_name)
        .and_then(|cookie| device::verify(&state.keys.device, &account_id, cookie));
    // A remembered device of this account gets a bucket of its own (crate::device);
    // everyone else shares the account's. The address comes first: a locked address
    // must not spend the account's attempts.
    let owner = match &device_id {
        Some(id) => Key::device(&body.username, id, config.login_failures_per_account),
        None => Key::account(&body.username, config.login_failures_per_account),
    };
    let keys = [
        Key::login_address(client.ip, config.login_attempts_per_address),
        owner,
    ];
    state.throttle.reserve(&keys).await?;

    let verified = match check_password(state, body).await {
        Ok(verified) => verified,
        Err(error) => {
            // Not checked (our outage, or no hashing slot): not an attempt.
            state.throttle.release(&keys).await;
            return Err(error);
        }
    };
    let (Some(user_id), Verified::Yes { rehash }) = verified else {
        tracing::info!(ip = %client.ip, "login failed");
        return Err(ApiError::InvalidGrant);
    };
    state.throttle.succeeded(&keys).await;
    if let Some(hash) = rehash {
        db::users::set_password_hash(&state.db, user_id, &hash).await?;
        tracing::info!(%user_id, "password hash upgraded to current parameters");
    }
    let tokens = start_session(state, user_id, client).await?;
    let key = state.keys.device.first().ok_or(ApiError::Internal)?;
    let cookie = device::set_cookie(
        cookie_name,
        &device::token(key, &account_id, device_id.as_deref()),
    );
    Ok((tokens, cookie))
}

/// Looks the user up and checks the password. A name that cannot exist is still
/// checked (against the dummy hash): same time, same answer.
async fn check_password(
    state: &AppState,
    body: Credentials,
) -> ApiResult<(Option<Uuid>, Verified)> {
    let user = match normalize_username(&body.username) {
        Some(name) => db::users::credentials(&state.db, &name).await?,
        None => None,
    };
    let (user_id, stored) = match user {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    Ok((user_id, state.hasher.verify(body.password, stored).await?))
}

/// Creates a session and its first refresh token (one statement), then publishes its
/// record.
async fn start_session(
    state: &AppState,
    user_id: Uuid,
    client: &ClientInfo,
) -> ApiResult<TokenResponse> {
    let config = &state.config;
    let refresh = RefreshToken::generate();
    let row = db::sessions::create(
        &state.db,
        Uuid::new_v4(),
        user_id,
        &config.default_scope,
        client.user_agent.as_deref(),
        &client.ip.to_string(),
        config.session_ttl_secs,
        config.access_token_ttl_secs,
        Uuid::new_v4(),
        &refresh.hash(),
    )
    .await?;
    tracing::info!(%user_id, session_id = %row.id, "login");
    let response = issue(state, &row, &refresh)?;
    state.publisher.sessions(vec![row]).await?;
    Ok(response)
}
