//! What every handler shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use secrecy::SecretString;
use shared::Validator;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;
use crate::keys::Keys;
use crate::password::Hasher;
use crate::store::Store;
use crate::throttle::Throttle;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    /// The common refresh's statement, run for the refreshes that arrive together.
    pub rotations: crate::db::rotations::Rotations,
    pub store: Store,
    pub keys: Arc<Keys>,
    pub validator: Arc<Validator>,
    pub hasher: Hasher,
    pub throttle: Arc<Throttle>,
    pub config: Arc<Config>,
    pub fallback_limit: Arc<RateLimit>,
    /// Writes what commits changed to the store.
    pub publisher: crate::publish::Publisher,
    /// Keys derived from `EDGE_SECRET` and the authorities proofs must cover; `None`
    /// without the edge.
    pub edge: Option<Arc<crate::edge::EdgeTrust>>,
    /// user id → username. Usernames never change, so the example API answers
    /// without a database query after the first request of a user.
    pub usernames: Arc<Mutex<HashMap<Uuid, String>>>,
}

impl AppState {
    pub fn client_secret(&self) -> Option<(&str, &SecretString)> {
        Some((
            self.config.client_id.as_deref()?,
            self.config.client_secret.as_ref()?,
        ))
    }
}

/// A token bucket: `rate` per second, bursts up to `rate`.
pub struct RateLimit {
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        RateLimit {
            rate: rate as f64,
            bucket: Mutex::new((rate as f64, Instant::now())),
        }
    }

    pub fn try_take(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        let allowed = tokens >= 1.0;
        *bucket = (if allowed { tokens - 1.0 } else { tokens }, now);
        allowed
    }
}
