//! The Redis side: session records the edge reads (DESIGN.md §3), the user
//! "not before" of logout-everywhere, and flush detection.
//!
//! Every call has a short time budget and reports failure instead of waiting:
//! callers decide what an unavailable store means (never "session active").

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::VerifiedClaims;
use shared::session::{
    SessionRecord, SessionState, session_key, store_epoch_key, user_not_before_key,
};
use tokio::sync::OnceCell;

use crate::metrics::METRICS;

/// Budget of one Redis operation, connection included.
const TIMEOUT: Duration = Duration::from_millis(500);

/// After a failure, calls fail at once for this long instead of each waiting out its
/// budget: with Redis down, a login would otherwise spend seconds on budgets (throttle,
/// publish) before its fallbacks answer. Background tasks probe again after it.
const BREAK_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct StoreError;

#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    conn: std::sync::Arc<OnceCell<ConnectionManager>>,
    /// Until when calls fail at once (the breaker, see [`BREAK_FOR`]).
    broken_until: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    prefix: String,
    kv: Option<KvSync>,
}

/// Mirrors every change into the edge's Workers KV (`POST /__edge/kv`), for edges
/// configured with `SESSION_STORE = "kv"`. Redis stays the origin's own store.
#[derive(Clone)]
pub struct KvSync {
    url: String,
    key: [u8; 32],
    http: reqwest::Client,
    epoch_pushed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KvSync {
    pub fn new(url: String, key: [u8; 32]) -> Self {
        KvSync {
            url,
            key,
            http: reqwest::Client::new(),
            epoch_pushed: Default::default(),
        }
    }

    async fn push_once(&self, ops: &serde_json::Value) -> bool {
        let body = serde_json::json!({ "ops": ops }).to_string();
        let now = shared::unix_now();
        let proof = shared::proof::sign_message(&self.key, "kv-sync", now, body.as_bytes());
        let sent = self
            .http
            .post(&self.url)
            .header(shared::proof::message_header::TIME, now.to_string())
            .header(shared::proof::message_header::PROOF, proof)
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        matches!(sent, Ok(r) if r.status().is_success())
    }

    /// Pushes now; on failure keeps retrying every second for two minutes in the
    /// background, so a revocation still reaches KV after a short edge outage.
    async fn push(&self, ops: serde_json::Value) {
        if self.push_once(&ops).await {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if this.push_once(&ops).await {
                    return;
                }
            }
            tracing::error!(
                "kv sync failed for 2 minutes; the edge's KV may hold stale sessions until their TTL"
            );
        });
    }
}

impl Store {
    pub fn new(url: &str, prefix: String, kv: Option<KvSync>) -> Result<Self, String> {
        if !shared::session::is_key_prefix(&prefix) {
            return Err("REDIS_PREFIX must be printable ASCII without braces".into());
        }
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Store {
            client,
            conn: Default::default(),
            broken_until: Default::default(),
            prefix,
            kv,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared connection, made on first use (so the origin starts while Redis is
    /// down) and re-established by the manager after failures.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT)
            .set_number_of_retries(1);
        let init = self
            .conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config));
        match tokio::time::timeout(TIMEOUT, init).await {
            Ok(Ok(conn)) => Ok(conn.clone()),
            _ => Err(self.failed("connect")),
        }
    }

    fn failed(&self, what: &'static str) -> StoreError {
        METRICS.redis_errors.inc();
        let mut until = self.broken_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_none_or(|t| t <= std::time::Instant::now()) {
            tracing::warn!(
                operation = what,
                "redis unavailable; failing fast for {BREAK_FOR:?}"
            );
        }
        *until = Some(std::time::Instant::now() + BREAK_FOR);
        StoreError
    }

    /// Whether the breaker is open: a recent failure, so fail at once.
    fn broken(&self) -> bool {
        self.broken_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t > std::time::Instant::now())
    }

    /// Runs one Redis operation on the shared connection within the time budget;
    /// a timeout or any error counts as the store being unavailable.
    async fn budgeted<T>(
        &self,
        what: &'static str,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.broken() {
            METRICS.redis_errors.inc();
            return Err(StoreError);
        }
        let mut conn = self.conn().await?;
        match tokio::time::timeout(TIMEOUT, op(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(self.failed(what)),
        }
    }

    /// Runs one command within the time budget.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.budgeted(what, async |conn| cmd.query_async(conn).await)
            .await
    }

    pub async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.budgeted(what, async |conn| pipe.query_async(conn).await)
            .await
    }

    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.budgeted(what, async |conn| invocation.invoke_async(conn).await)
            .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run::<String>("ping", &redis::cmd("PING"))
            .await
            .map(drop)
    }

    /// Publishes (or renews) a session's record, living `ttl_secs`.
    pub async fn publish(
        &self,
        sid: &str,
        record: &SessionRecord,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let key = session_key(&self.prefix, &record.sub, sid);
        if let Some(kv) = &self.kv {
            let op = serde_json::json!({ "op": "put", "key": key, "value": record.encode(), "ttl": ttl_secs });
            kv.push(serde_json::json!([op])).await;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(record.encode())
            .arg("EX")
            .arg(ttl_secs.max(1));
        self.run::<()>("publish session", &cmd).await
    }

    /// Removes session records: the edge refuses their tokens from the next request on.
    pub async fn remove(&self, sub: &str, sids: &[String]) -> Result<(), StoreError> {
        if sids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = sids
            .iter()
            .map(|sid| session_key(&self.prefix, sub, sid))
            .collect();
        if let Some(kv) = &self.kv {
            kv.push(
                keys.iter()
                    .map(|key| serde_json::json!({ "op": "delete", "key": key }))
                    .collect(),
            )
            .await;
        }
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&keys);
        self.run::<()>("remove sessions", &cmd).await
    }

    /// Logout-everywhere at the edge: the user's "not before" (kept as long as any token
    /// from before it could live) and the removal of the known records, atomically.
    pub async fn logout_all(
        &self,
        sub: &str,
        sids: &[String],
        not_before_ms: u64,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        if let Some(kv) = &self.kv {
            let nbf = user_not_before_key(&self.prefix, sub);
            let mut ops = vec![
                serde_json::json!({ "op": "put", "key": nbf, "value": not_before_ms.to_string(), "ttl": ttl_secs }),
            ];
            ops.extend(sids.iter().map(|sid| serde_json::json!({ "op": "delete", "key": session_key(&self.prefix, sub, sid) })));
            kv.push(serde_json::Value::Array(ops)).await;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(user_not_before_key(&self.prefix, sub))
            .arg(not_before_ms)
            .arg("EX")
            .arg(ttl_secs)
            .ignore();
        for sid in sids {
            pipe.cmd("DEL")
                .arg(session_key(&self.prefix, sub, sid))
                .ignore();
        }
        self.run_pipe::<()>("logout all", &pipe).await
    }

    /// What the store says about a verified token's session, in one round trip. A
    /// store that lost its data (no epoch key) knows nothing: that is an error too.
    pub async fn session_state(&self, claims: &VerifiedClaims) -> Result<SessionState, StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(session_key(
            &self.prefix,
            claims.subject(),
            claims.session_id(),
        ))
        .arg(user_not_before_key(&self.prefix, claims.subject()))
        .arg(store_epoch_key(&self.prefix));
        type Value = Option<Vec<u8>>;
        let (record, not_before, epoch): (Value, Value, Value) =
            self.run("read session", &cmd).await?;
        if epoch.is_none() {
            return Err(StoreError);
        }
        shared::session::session_state(
            claims,
            record.as_deref(),
            not_before.as_deref(),
            shared::unix_now(),
        )
        .map_err(|_| {
            tracing::error!("undecodable session record in redis");
            StoreError
        })
    }

    pub async fn has_epoch(&self) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(store_epoch_key(&self.prefix));
        self.run::<bool>("epoch check", &cmd).await
    }

    /// Makes sure KV has the epoch key (once it has, KV's own records are
    /// authoritative for the edge). Retried by the watcher until it succeeds.
    pub async fn ensure_kv_epoch(&self) {
        let Some(kv) = &self.kv else { return };
        if kv.epoch_pushed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let op = serde_json::json!([{ "op": "put", "key": store_epoch_key(&self.prefix), "value": shared::unix_now().to_string() }]);
        if kv.push_once(&op).await {
            kv.epoch_pushed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("kv sync: epoch set in the edge's KV");
        }
    }

    pub async fn set_epoch(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(store_epoch_key(&self.prefix))
            .arg(shared::unix_now());
        self.run::<()>("epoch set", &cmd).await
    }
}
