//! Prometheus metrics (DESIGN.md §6), served as text at `/metrics`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cause {
    pub cause: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub logins: Family<Outcome, Counter>,
    pub login_seconds: Histogram,
    pub refreshes: Family<Outcome, Counter>,
    pub refresh_seconds: Histogram,
    /// Refreshes per rotation statement (`crate::db::rotations`).
    pub refresh_batch: Histogram,
    pub validations: Family<Outcome, Counter>,
    pub reuse_detected: Family<Cause, Counter>,
    pub redis_errors: Counter,
    pub redis_unreplicated_writes: Counter,
    pub db_errors: Counter,
    pub pool_size: Gauge,
    pub pool_idle: Gauge,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("auth");
    let m = Metrics {
        registry: Registry::default(),
        logins: Family::default(),
        login_seconds: latency(),
        refreshes: Family::default(),
        refresh_seconds: latency(),
        refresh_batch: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
        validations: Family::default(),
        reuse_detected: Family::default(),
        redis_errors: Counter::default(),
        redis_unreplicated_writes: Counter::default(),
        db_errors: Counter::default(),
        pool_size: Gauge::default(),
        pool_idle: Gauge::default(),
    };
    registry.register("logins", "Login attempts by outcome", m.logins.clone());
    registry.register(
        "login_duration_seconds",
        "Login latency",
        m.login_seconds.clone(),
    );
    registry.register(
        "refreshes",
        "Refresh attempts by outcome",
        m.refreshes.clone(),
    );
    registry.register(
        "refresh_duration_seconds",
        "Refresh latency",
        m.refresh_seconds.clone(),
    );
    registry.register(
        "refresh_batch_size",
        "Refreshes rotated together by one statement",
        m.refresh_batch.clone(),
    );
    registry.register(
        "validations",
        "Access-token validations at the origin by outcome",
        m.validations.clone(),
    );
    registry.register(
        "refresh_reuse_detected",
        "Reuse of rotated refresh tokens by cause",
        m.reuse_detected.clone(),
    );
    registry.register(
        "redis_errors",
        "Failed Redis operations",
        m.redis_errors.clone(),
    );
    registry.register(
        "redis_unreplicated_writes",
        "Cluster writes no replica confirmed within the wait (WAIT 1)",
        m.redis_unreplicated_writes.clone(),
    );
    registry.register(
        "postgres_errors",
        "Failed Postgres operations",
        m.db_errors.clone(),
    );
    registry.register(
        "postgres_pool_connections",
        "Open Postgres connections",
        m.pool_size.clone(),
    );
    registry.register(
        "postgres_pool_idle_connections",
        "Idle Postgres connections",
        m.pool_idle.clone(),
    );
    Metrics { registry, ..m }
});

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
