//! `POST /auth/refresh`: rotation with reuse detection (DESIGN.md §2).
//!
//! Every refresh of a session runs under row locks on that session and on the
//! presented token, taken in Postgres, so concurrent refreshes — on one origin or
//! several — queue and exactly one rotates. Both rows are locked because, at READ
//! COMMITTED, a waiter re-reads only the rows it locked: locking the session alone
//! let waiters see the token as still current and rotate it again. The rotation is
//! also a conditional update that must claim the token, as a second line. The others then find the token they sent already rotated; inside the
//! grace window they get the successor the winner created (unsealed with the token
//! they hold), so a lost response or two tabs never look like theft. Any other use
//! of a rotated token revokes the session, commits that, and only then answers 401.

use std::time::Instant;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::tokens::RefreshToken;
use super::{ClientInfo, SessionInfo, TokenResponse, issue, unpublish};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::{Cause, METRICS, Outcome};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: String,
}

#[derive(sqlx::FromRow)]
struct Presented {
    token_id: Uuid,
    session_id: Uuid,
    rotated_at: Option<DateTime<Utc>>,
    rotated_ip: Option<String>,
    rotated_user_agent: Option<String>,
    child_sealed: Option<Vec<u8>>,
    user_id: Uuid,
    scope: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

pub async fn refresh(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(body): Json<RefreshRequest>,
) -> ApiResult<TokenResponse> {
    let started = Instant::now();
    let result = rotate(&state, &client, &body.refresh_token).await;
    METRICS
        .refresh_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "success",
        Err(ApiError::InvalidGrant) => "invalid_grant",
        Err(_) => "error",
    };
    METRICS.refreshes.get_or_create(&Outcome { outcome }).inc();
    result
}

async fn rotate(
    state: &AppState,
    client: &ClientInfo,
    presented_text: &str,
) -> ApiResult<TokenResponse> {
    let presented = RefreshToken::parse(presented_text).ok_or(ApiError::InvalidGrant)?;
    let config = &state.config;
    let mut tx = state.db.begin().await?;
    let row: Option<Presented> = sqlx::query_as(
        "select t.id as token_id, t.session_id, t.rotated_at, t.rotated_ip, t.rotated_user_agent, t.child_sealed, \
                s.user_id, s.scope, s.created_at, s.last_used_at, s.expires_at, s.revoked_at \
         from refresh_token t join session s on s.id = t.session_id \
         where t.token_hash = $1 \
         for update of s, t",
    )
    .bind(presented.hash())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::InvalidGrant);
    };
    let now = Utc::now();
    let idle_limit =
        row.last_used_at + chrono::Duration::seconds(config.session_idle_ttl_secs as i64);
    if row.revoked_at.is_some() || now >= row.expires_at || now >= idle_limit {
        return Err(ApiError::InvalidGrant);
    }
    let session = SessionInfo {
        id: row.session_id,
        user_id: row.user_id,
        scope: row.scope.clone(),
        created_at: row.created_at,
        expires_at: row.expires_at,
    };

    let Some(rotated_at) = row.rotated_at else {
        // The current token: rotate it, in one statement (one round trip while the
        // locks are held): claim the token and, only if that claimed it, add the
        // successor and touch the session.
        let successor = RefreshToken::generate();
        let claimed: i64 = sqlx::query_scalar(
            "with claimed as ( \
                 update refresh_token set rotated_at = $2, rotated_ip = $3, rotated_user_agent = $4, child_sealed = $5 \
                 where id = $1 and rotated_at is null returning session_id), \
             child as ( \
                 insert into refresh_token (id, session_id, token_hash) \
                 select $6, session_id, $7 from claimed), \
             touched as ( \
                 update session set last_used_at = $2, access_expires_at = $2 + make_interval(secs => $8) \
                 where id in (select session_id from claimed)) \
             select count(*) from claimed",
        )
        .bind(row.token_id)
        .bind(now)
        .bind(client.ip.to_string())
        .bind(&client.user_agent)
        .bind(presented.seal(&successor))
        .bind(Uuid::new_v4())
        .bind(successor.hash())
        .bind(config.access_token_ttl_secs as f64)
        .fetch_one(&mut *tx)
        .await?;
        if claimed != 1 {
            // Unreachable with the locks above; if it ever happens, nothing is written.
            tracing::error!(session_id = %row.session_id, "refresh token rotated concurrently despite the row lock");
            return Err(ApiError::Unavailable {
                what: "concurrent refresh; retry",
                retry_after: 1,
            });
        }
        // Published while the session row is still locked: a concurrent logout (which
        // updates that row) waits for the commit, so its Redis delete comes after this
        // publish and cannot be undone by it. A failed commit leaves a record for a
        // session that is active anyway.
        let response = issue(state, &session, &successor).await?;
        tx.commit().await?;
        return Ok(response);
    };

    // A rotated token. Inside the grace window, and if its successor is still the
    // current token, this is a retry: answer with that same successor.
    let age = now.signed_duration_since(rotated_at);
    let in_grace = age <= chrono::Duration::seconds(config.refresh_grace_secs as i64);
    let successor = row
        .child_sealed
        .as_deref()
        .and_then(|sealed| presented.unseal(sealed));
    if let (true, Some(successor)) = (in_grace, successor) {
        let successor_is_current: Option<bool> =
            sqlx::query_scalar("select rotated_at is null from refresh_token where token_hash = $1 and session_id = $2")
                .bind(successor.hash())
                .bind(row.session_id)
                .fetch_optional(&mut *tx)
                .await?;
        if successor_is_current == Some(true) {
            // Under the row lock too, for the same reason as above.
            let response = issue(state, &session, &successor).await?;
            tx.commit().await?;
            tracing::info!(session_id = %row.session_id, "refresh retried inside the grace window");
            return Ok(response);
        }
    }

    // Reuse: revoke the whole session, durably, before answering.
    let cause = if age <= chrono::Duration::seconds(config.refresh_grace_secs as i64) {
        "not_latest"
    } else {
        "after_grace"
    };
    sqlx::query(
        "update session set revoked_at = $2, revoked_reason = 'refresh_token_reuse' where id = $1",
    )
    .bind(row.session_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into security_event (kind, user_id, session_id, ip, user_agent, detail) values ('refresh_token_reuse', $1, $2, $3, $4, $5)",
    )
    .bind(row.user_id)
    .bind(row.session_id)
    .bind(client.ip.to_string())
    .bind(&client.user_agent)
    .bind(json!({
        "cause": cause,
        "token_id": row.token_id,
        "rotated_at": rotated_at,
        "rotated_by": { "ip": row.rotated_ip, "user_agent": row.rotated_user_agent },
    }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    METRICS.reuse_detected.get_or_create(&Cause { cause }).inc();
    tracing::warn!(user_id = %row.user_id, session_id = %row.session_id, ip = %client.ip, cause, "refresh token reuse: session revoked");
    unpublish(state, row.user_id, vec![row.session_id.to_string()]).await;
    Err(ApiError::InvalidGrant)
}
