//! `POST /auth/refresh`: rotation with reuse detection (DESIGN.md §2).
//!
//! The common case, the current token of an active session, is one statement
//! (`crate::db::sessions::rotate_current`, run for the refreshes that arrive together
//! by `crate::db::rotations`): its update of the token row takes that row's lock, so
//! of concurrent presentations of one token, on one origin or several, exactly one
//! rotates. Anything else is decided under row locks on the session and
//! the token (`crate::db::sessions::lock_by_token`), by [`judge`], a plain function of
//! the locked rows: a rotated token inside the grace window gets the successor the
//! winner created (unsealed with the token it holds), so a lost response or two tabs
//! never look like theft; any other use of a rotated token revokes the session,
//! commits that, and only then answers 401. The store write follows the commit
//! (`crate::publish`): no lock is held while Redis or the edge is slow.

use std::time::Instant;

use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::cookie::{self, Delivery};
use super::tokens::RefreshToken;
use super::{ClientInfo, TokenResponse, issue};
use crate::db;
use crate::db::rotations::NotRun;
use crate::db::sessions::{Presentation, Presented, Rotation};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::{Cause, METRICS, Outcome};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// In JSON mode the token is the body's `refresh_token`; in browser mode
/// (`X-Token-Delivery: cookie`) it is the cookie's and the body is not read
/// (`crate::auth::cookie`). The cookie without that header is refused before any
/// lookup, and an `invalid_grant` in browser mode clears it.
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Response> {
    let delivery = cookie::delivery(&headers)?;
    let name = cookie::name(state.config.dev_cookie_names);
    let presented = match delivery {
        Delivery::Json => {
            if cookie::count(&headers, name) > 0 {
                return Err(ApiError::Forbidden(
                    "the refresh cookie is read only with X-Token-Delivery: cookie",
                ));
            }
            let Json(body) = Json::<RefreshRequest>::from_request(request, &state).await?;
            body.refresh_token
        }
        Delivery::Cookie => {
            cookie::check_origin(&headers, &state.config.allowed_origins, client.via_edge)?;
            if cookie::count(&headers, name) > 1 {
                return Err(ApiError::BadRequest("more than one refresh cookie"));
            }
            // No cookie: nothing to refresh, the same answer as a bad one.
            cookie::read(&headers, name).unwrap_or_default().to_string()
        }
    };
    let started = Instant::now();
    let result = exchange(&state, &client, &presented).await;
    METRICS
        .refresh_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "success",
        Err(ApiError::InvalidGrant) => "invalid_grant",
        Err(_) => "error",
    };
    METRICS.refreshes.get_or_create(&Outcome { outcome }).inc();
    match (result, delivery) {
        (Ok(tokens), delivery) => Ok(cookie::deliver(tokens, delivery, name)),
        (Err(ApiError::InvalidGrant), Delivery::Cookie) => Ok(cookie::cleared(
            ApiError::InvalidGrant.into_response(),
            name,
        )),
        (Err(error), _) => Err(error),
    }
}

/// What a presented refresh token is, given its locked rows.
#[derive(Debug)]
pub enum Verdict {
    /// Unknown, revoked, or its session is past its absolute or idle end.
    Invalid,
    /// The current token: rotate it.
    Current,
    /// A rotated token within the grace window, whose successor it can unseal: a
    /// retry, if that successor is still the current token.
    Retry(RefreshToken),
    /// Any other use of a rotated token: revoke the session. The cause is for metrics
    /// and the security event.
    Reuse(&'static str),
}

/// Decides what to do with `token`, presented with `row` (its locked rows) at the
/// statement time `now` of the lock.
pub fn judge(
    token: &RefreshToken,
    row: &Presented,
    idle_ttl_secs: u64,
    grace_secs: u64,
) -> Verdict {
    let session = &row.session;
    let now = session.now;
    let idle_end = session.last_used_at + chrono::Duration::seconds(idle_ttl_secs as i64);
    if session.revoked_at.is_some() || now >= session.expires_at || now >= idle_end {
        return Verdict::Invalid;
    }
    let Some(rotated_at) = row.rotated_at else {
        return Verdict::Current;
    };
    let in_grace =
        now.signed_duration_since(rotated_at) <= chrono::Duration::seconds(grace_secs as i64);
    let successor = row
        .child_sealed
        .as_deref()
        .and_then(|sealed| token.unseal(sealed));
    match (in_grace, successor) {
        (true, Some(successor)) => Verdict::Retry(successor),
        (true, None) => Verdict::Reuse("not_latest"),
        (false, _) => Verdict::Reuse("after_grace"),
    }
}

async fn exchange(
    state: &AppState,
    client: &ClientInfo,
    presented: &str,
) -> ApiResult<TokenResponse> {
    let token = RefreshToken::parse(presented).ok_or(ApiError::InvalidGrant)?;
    let config = &state.config;
    // The common case, the current token of an active session, in one statement.
    let successor = RefreshToken::generate();
    let rotation = Rotation {
        ip: client.ip.to_string(),
        user_agent: client.user_agent.clone(),
        sealed_successor: token.seal(&successor),
        successor_id: uuid::Uuid::new_v4(),
        successor_hash: successor.hash(),
    };
    // Together with the refreshes arriving meanwhile, else (NotRun) alone through the
    // pool (crate::db::rotations). A second run after a lost answer is harmless: the
    // first run's successor is sealed under the presented token, and the grace window
    // below hands it out. A copy goes to the batch (a few short strings): this request
    // keeps its own for the pool and for the locked path below.
    let presentation = Presentation {
        token_hash: token.hash(),
        rotation,
    };
    let found = match state.rotations.rotate(presentation.clone()).await {
        Ok(found) => found,
        Err(NotRun) => db::sessions::rotate_current(
            &state.db,
            std::slice::from_ref(&presentation),
            config.session_idle_ttl_secs,
            config.access_token_ttl_secs,
        )
        .await?
        .pop()
        .map(|(_, row)| row),
    };
    let rotation = presentation.rotation;
    if let Some(session) = found {
        let response = issue(state, &session, &successor)?;
        state.publisher.sessions(vec![session]).await?;
        return Ok(response);
    }
    // Anything else (a retry, a reuse, an invalid token) is decided under the locks.
    let mut tx = state.db.begin().await?;
    let Some(row) = db::sessions::lock_by_token(&mut tx, &token.hash()).await? else {
        return Err(ApiError::InvalidGrant);
    };
    let verdict = judge(
        &token,
        &row,
        config.session_idle_ttl_secs,
        config.refresh_grace_secs,
    );
    let (session, refresh) = match verdict {
        Verdict::Invalid => return Err(ApiError::InvalidGrant),
        Verdict::Current => {
            // Current now though the statement above found it not (it raced a change
            // of the session): rotate under the locks.
            let rotated = db::sessions::rotate(
                &mut tx,
                row.token_id,
                row.session.id,
                &rotation,
                config.access_token_ttl_secs,
            )
            .await?;
            let Some(session) = rotated else {
                // Unreachable with the locks above; if it ever happens, nothing is written.
                tracing::error!(session_id = %row.session.id, "refresh token rotated concurrently despite the row lock");
                return Err(ApiError::Unavailable {
                    what: "concurrent refresh; retry",
                    retry_after: 1,
                });
            };
            (session, successor)
        }
        Verdict::Retry(successor) => {
            if !db::sessions::is_current(&mut tx, &successor.hash(), row.session.id).await? {
                // The successor has been used since: the retry is too late to be one.
                return reuse(state, client, tx, &row, "not_latest").await;
            }
            let session =
                db::sessions::extend(&mut tx, row.session.id, config.access_token_ttl_secs).await?;
            tracing::info!(session_id = %row.session.id, "refresh retried inside the grace window");
            (session, successor)
        }
        Verdict::Reuse(cause) => return reuse(state, client, tx, &row, cause).await,
    };
    tx.commit().await?;
    let response = issue(state, &session, &refresh)?;
    state.publisher.sessions(vec![session]).await?;
    Ok(response)
}

/// A rotated token used again: revokes the whole session and records the event,
/// durably, then tombstones it in the store, and only then answers 401.
async fn reuse(
    state: &AppState,
    client: &ClientInfo,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    row: &Presented,
    cause: &'static str,
) -> ApiResult<TokenResponse> {
    let rotated_at: Option<DateTime<Utc>> = row.rotated_at;
    let detail = json!({
        "cause": cause,
        "token_id": row.token_id,
        "rotated_at": rotated_at,
        "rotated_by": { "ip": row.rotated_ip, "user_agent": row.rotated_user_agent },
    });
    let session = db::sessions::revoke_for_reuse(
        &mut tx,
        row.session.id,
        &client.ip.to_string(),
        client.user_agent.as_deref(),
        detail,
    )
    .await?;
    tx.commit().await?;
    METRICS.reuse_detected.get_or_create(&Cause { cause }).inc();
    tracing::warn!(user_id = %session.user_id, session_id = %session.id, ip = %client.ip, cause, "refresh token reuse: session revoked");
    // The answer is 401 whether or not the tombstone is written yet (the outbox).
    let _ = state.publisher.sessions(vec![session]).await;
    Err(ApiError::InvalidGrant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sessions::SessionRow;
    use uuid::Uuid;

    const IDLE: u64 = 7 * 86_400;
    const GRACE: u64 = 30;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + s, 0).unwrap()
    }

    /// A token presented at `now` (seconds from an origin), rotated at `rotated`.
    fn presented(now: i64, rotated: Option<i64>, sealed: Option<Vec<u8>>) -> Presented {
        Presented {
            token_id: Uuid::nil(),
            rotated_at: rotated.map(at),
            rotated_ip: None,
            rotated_user_agent: None,
            child_sealed: sealed,
            session: SessionRow {
                id: Uuid::nil(),
                user_id: Uuid::nil(),
                scope: String::new(),
                created_at: at(0),
                last_used_at: at(0),
                expires_at: at(30 * 86_400),
                access_expires_at: at(900),
                revoked_at: None,
                version: 1,
                now: at(now),
                outbox_id: None,
            },
        }
    }

    #[test]
    fn the_current_token_rotates_and_an_ended_session_refuses_it() {
        let token = RefreshToken::generate();
        assert!(matches!(
            judge(&token, &presented(10, None, None), IDLE, GRACE),
            Verdict::Current
        ));
        let mut revoked = presented(10, None, None);
        revoked.session.revoked_at = Some(at(5));
        assert!(matches!(
            judge(&token, &revoked, IDLE, GRACE),
            Verdict::Invalid
        ));
        let idle = presented(IDLE as i64, None, None);
        assert!(
            matches!(judge(&token, &idle, IDLE, GRACE), Verdict::Invalid),
            "idle timeout"
        );
        let expired = presented(30 * 86_400, None, None);
        assert!(
            matches!(judge(&token, &expired, IDLE, GRACE), Verdict::Invalid),
            "absolute end"
        );
    }

    #[test]
    fn a_rotated_token_is_a_retry_only_inside_the_grace_window_with_its_seal() {
        let (token, successor) = (RefreshToken::generate(), RefreshToken::generate());
        let sealed = Some(token.seal(&successor));
        match judge(
            &token,
            &presented(100 + GRACE as i64, Some(100), sealed.clone()),
            IDLE,
            GRACE,
        ) {
            Verdict::Retry(s) => assert_eq!(s.hash(), successor.hash()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(
                &token,
                &presented(101 + GRACE as i64, Some(100), sealed),
                IDLE,
                GRACE
            ),
            Verdict::Reuse("after_grace")
        ));
        assert!(
            matches!(
                judge(&token, &presented(110, Some(100), None), IDLE, GRACE),
                Verdict::Reuse("not_latest")
            ),
            "the seal erased: no successor to return"
        );
        assert!(
            matches!(
                judge(&token, &presented(100, Some(100), None), IDLE, 0),
                Verdict::Reuse("not_latest")
            ),
            "no grace window: any second use is reuse"
        );
    }
}
