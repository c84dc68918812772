//! `POST /auth/register`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ClientInfo;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::password::check_password;
use crate::state::AppState;
use crate::throttle::Key;

#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Usernames: 3–64 characters of `a-z 0-9 . _ @ -`, compared case-insensitively (stored
/// lowercased), so lookalike names cannot coexist.
pub fn normalize_username(username: &str) -> Option<String> {
    let name = username.to_ascii_lowercase();
    let ok = (3..=64).contains(&name.len())
        && name.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'@' | b'-')
        });
    ok.then_some(name)
}

/// Registers an account. Throttled per client address before anything is hashed,
/// taken names included: each attempt costs an Argon2 hash, and hashing for sign-ups
/// only ever uses its share of the slots (`crate::password::Purpose`).
pub async fn register(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(body): Json<Credentials>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let username = normalize_username(&body.username).ok_or(ApiError::Unprocessable(
        "username must be 3-64 characters of a-z, 0-9, '.', '_', '@', '-'",
    ))?;
    check_password(&body.password, &username)?;
    let key = Key::registration_address(client.ip, state.config.registrations_per_address);
    state.throttle.reserve(std::slice::from_ref(&key)).await?;
    let hash = match state.hasher.hash(body.password).await {
        Ok(hash) => hash,
        Err(error) => {
            // No hashing slot: nothing was spent, so nothing is counted.
            state.throttle.release(std::slice::from_ref(&key)).await;
            return Err(error);
        }
    };
    let user_id = Uuid::new_v4();
    if !db::users::create(&state.db, user_id, &username, &hash).await? {
        return Err(ApiError::Conflict("username is taken"));
    }
    tracing::info!(%user_id, "user registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "user_id": user_id })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercased_and_limited_to_a_safe_charset() {
        assert_eq!(
            normalize_username("Alice.Smith@Example"),
            Some("alice.smith@example".into())
        );
        for bad in [
            "ab",
            &"a".repeat(65),
            "al ice",
            "al'ice",
            "ålice",
            "a{b}",
            "a;drop",
        ] {
            assert_eq!(normalize_username(bad), None, "{bad}");
        }
    }
}
