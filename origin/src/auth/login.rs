//! `POST /auth/login`: Argon2id, throttled per account and per address.

use std::time::Instant;

use axum::extract::State;
use chrono::Utc;
use uuid::Uuid;

use super::register::{Credentials, normalize_username};
use super::tokens::RefreshToken;
use super::{ClientInfo, SessionInfo, TokenResponse, issue};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::{METRICS, Outcome};
use crate::password::{MAX_PASSWORD_BYTES, Verified};
use crate::state::AppState;
use crate::throttle::{self, Key};

pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(body): Json<Credentials>,
) -> ApiResult<TokenResponse> {
    let started = Instant::now();
    let result = attempt(&state, &client, body).await;
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
    result
}

async fn attempt(
    state: &AppState,
    client: &ClientInfo,
    body: Credentials,
) -> ApiResult<TokenResponse> {
    if body.password.len() > MAX_PASSWORD_BYTES || body.username.len() > 256 {
        return Err(ApiError::BadRequest("username or password too long"));
    }
    // A name that cannot exist is still checked (against the dummy hash): same time, same answer.
    let username = normalize_username(&body.username);
    // Throttle keys hash the name: any input is a safe key, and Redis holds no usernames.
    let account = Key {
        name: format!(
            "a:{}",
            hex(&hmac_sha256::Hash::hash(
                body.username.to_ascii_lowercase().as_bytes()
            ))
        ),
        policy: throttle::ACCOUNT,
    };
    let address = Key {
        name: format!("ip:{}", client.ip),
        policy: throttle::ADDRESS,
    };
    let keys = [account, address];
    state.throttle.check(&keys).await?;

    let user: Option<(Uuid, String)> = match &username {
        Some(name) => {
            sqlx::query_as("select id, password_hash from app_user where username = $1")
                .bind(name)
                .fetch_optional(&state.db)
                .await?
        }
        None => None,
    };
    let (user_id, stored) = match user {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let verified = state.hasher.verify(body.password, stored).await?;
    let (Some(user_id), Verified::Yes { rehash }) = (user_id, verified) else {
        state.throttle.failure(&keys).await;
        tracing::info!(ip = %client.ip, "login failed");
        return Err(ApiError::InvalidGrant);
    };
    state.throttle.success(&keys[0]).await;
    if let Some(hash) = rehash {
        sqlx::query("update app_user set password_hash = $2, updated_at = now() where id = $1")
            .bind(user_id)
            .bind(hash)
            .execute(&state.db)
            .await?;
        tracing::info!(%user_id, "password hash upgraded to current parameters");
    }
    start_session(state, user_id, client).await
}

/// Creates a session and its first refresh token in one transaction.
async fn start_session(
    state: &AppState,
    user_id: Uuid,
    client: &ClientInfo,
) -> ApiResult<TokenResponse> {
    let config = &state.config;
    let now = Utc::now();
    let session = SessionInfo {
        id: Uuid::new_v4(),
        user_id,
        scope: config.default_scope.clone(),
        created_at: now,
        expires_at: now + chrono::Duration::seconds(config.session_ttl_secs as i64),
    };
    let refresh = RefreshToken::generate();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "insert into session (id, user_id, scope, user_agent, ip, created_at, last_used_at, expires_at, access_expires_at) \
         values ($1, $2, $3, $4, $5, $6, $6, $7, $6 + make_interval(secs => $8))",
    )
    .bind(session.id)
    .bind(user_id)
    .bind(&session.scope)
    .bind(&client.user_agent)
    .bind(client.ip.to_string())
    .bind(now)
    .bind(session.expires_at)
    .bind(config.access_token_ttl_secs as f64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("insert into refresh_token (id, session_id, token_hash) values ($1, $2, $3)")
        .bind(Uuid::new_v4())
        .bind(session.id)
        .bind(refresh.hash())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%user_id, session_id = %session.id, "login");
    issue(state, &session, &refresh).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
