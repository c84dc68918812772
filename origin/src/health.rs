//! `/healthz` (the process is up), `/readyz` (its dependencies answer) and `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::metrics::METRICS;
use crate::state::AppState;

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("select 1").execute(&state.db),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let redis = state.store.ping().await.is_ok();
    let status = if postgres && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |up: bool| if up { "up" } else { "down" };
    (
        status,
        axum::Json(json!({ "postgres": word(postgres), "redis": word(redis) })),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    METRICS.pool_size.set(state.db.size() as i64);
    METRICS.pool_idle.set(state.db.num_idle() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.encode(),
    )
}
