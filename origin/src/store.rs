//! The Redis side: session records and tombstones the edge reads (DESIGN.md §3), the
//! user "not before" of logout-everywhere, the partitions' freshness markers, and the
//! KV mirror for edges that read Workers KV.
//!
//! Every write is conditional on the server: a record or tombstone lands only when its
//! version (from Postgres) is newer than the stored one, a not-before only when later,
//! so writes may be retried, delayed, duplicated or reordered between origins and the
//! newest state still wins. Each script touches one key, or keys of one hash tag.
//!
//! Every call has a short time budget and reports failure instead of waiting:
//! callers decide what an unavailable store means (never "session active").

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::VerifiedClaims;
use shared::session::{
    PARTITIONS, SessionState, freshness_key, kv_freshness_key, partition_freshness_key,
    session_key, user_not_before_key,
};
use tokio::sync::OnceCell;

use crate::metrics::METRICS;

/// Budget of one Redis operation, connection included.
const TIMEOUT: Duration = Duration::from_millis(500);

/// When Redis is unreachable (a refused or dropped connection, or this many timeouts
/// in a row), calls fail at once for [`BREAK_FOR`] instead of each waiting out its
/// budget: with Redis down, a login would otherwise spend seconds on budgets
/// (throttle, publish) before its fallbacks answer. One slow answer on a busy machine
/// does not trip it: that would turn one hiccup into a second of fallbacks.
const TRIP_AFTER_TIMEOUTS: u32 = 3;
const BREAK_FOR: Duration = Duration::from_secs(1);

/// The breaker's state: timeouts in a row, and until when calls fail at once.
#[derive(Default)]
struct Breaker {
    timeouts: u32,
    open_until: Option<std::time::Instant>,
}

/// Writes a record or tombstone (KEYS[1]) only if its version (ARGV[1]) is newer than
/// the stored one, expiring at ARGV[3] (Unix ms). A value that does not decode (an
/// older format) is replaced; a write whose expiry has passed is dropped (it would
/// only bring back what has ended). Returns 1 when written.
///
/// The stored version is read with a pattern, not a JSON parser (a quarter of the
/// script's time): records are `{"v":2,"ver":N,…}` and no field before or inside
/// them can hold the text `"ver":` (ids and scopes exclude quotes).
const PUT_IF_NEWER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[3])
if at <= now then return 0 end
local current = redis.call('GET', KEYS[1])
if current then
  local stored = tonumber(string.match(current, '^{"v":2,"ver":(%d+),'))
  if stored and stored >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', at)
return 1
"#;

/// Writes a user's not-before (KEYS[1]) only if later than the stored one.
const MAX_NOT_BEFORE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[2])
if at <= now then return 0 end
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', at)
return 1
"#;

/// Starts a rebuild of a partition: unless its marker KEYS[1] vouches for this server
/// already (another origin rebuilt it meanwhile), replaces it by a placeholder naming
/// this rebuild (`~` and ARGV[1]), which no reader takes for fresh. Returns 1 when a
/// rebuild is due.
const FRESHNESS_BEGIN: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if redis.call('GET', KEYS[1]) == run_id then return 0 end
redis.call('SET', KEYS[1], '~' .. ARGV[1])
return 1
"#;

/// Ends a rebuild: sets the marker KEYS[1] to the server's run id if that is still
/// ARGV[1] and the placeholder of this rebuild (ARGV[2]) is still there. A server
/// that restarted or failed over, or a flush, during the rebuild leaves the partition
/// stale, to be rebuilt at the next look.
const FRESHNESS_END: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if run_id ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[1]) ~= '~' .. ARGV[2] then return 0 end
redis.call('SET', KEYS[1], run_id)
return 1
"#;

#[derive(Debug)]
pub struct StoreError;

/// How the freshness markers are read: `INFO server` (for the server's run id), then
/// every partition's marker in one `MGET`. Not one script: a script touches one hash
/// tag only (Redis Cluster). A failover between the two reads makes one look see
/// fresh markers; the next, a second later, sees the new run id.
pub(crate) fn marker_reads(prefix: &str) -> (redis::Cmd, redis::Cmd) {
    let mut info = redis::cmd("INFO");
    info.arg("server");
    let mut mget = redis::cmd("MGET");
    for partition in 0..PARTITIONS {
        mget.arg(partition_freshness_key(prefix, partition));
    }
    (info, mget)
}

/// The run id in an `INFO server` answer ("" if none).
pub(crate) fn run_id(info: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One conditional write of a session's key: its record or its tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub sub: String,
    pub sid: String,
    /// The session's version in Postgres.
    pub ver: u64,
    /// [`shared::session::SessionRecord::encode`] or `tombstone`.
    pub value: String,
    /// When the key may go, Unix milliseconds.
    pub expire_at_ms: u64,
}

/// A user's logout-everywhere time, and when it may go (Unix milliseconds both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotBefore {
    pub sub: String,
    pub at_ms: u64,
    pub expire_at_ms: u64,
}

/// The state of one partition's freshness marker on the server that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub partition: u16,
    /// The run id of the server holding the partition.
    pub run_id: String,
    /// Whether the marker vouches for that server.
    pub fresh: bool,
}

#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    conn: std::sync::Arc<OnceCell<ConnectionManager>>,
    /// When calls fail at once (see [`BREAK_FOR`]).
    breaker: std::sync::Arc<std::sync::Mutex<Breaker>>,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
    kv: Option<KvSync>,
}

struct Scripts {
    put_if_newer: redis::Script,
    max_not_before: redis::Script,
    freshness_begin: redis::Script,
    freshness_end: redis::Script,
}

/// Mirrors every change into the edge's Workers KV (`POST /__edge/kv`), for edges
/// configured with `SESSION_STORE = "kv"`. Redis stays the origin's own store. The
/// edge applies the same rules as the scripts above (newer versions, later
/// not-befores only), so a push may be retried or replayed.
#[derive(Clone)]
pub struct KvSync {
    url: String,
    key: [u8; 32],
    http: reqwest::Client,
    marker_pushed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KvSync {
    pub fn new(url: String, key: [u8; 32]) -> Self {
        KvSync {
            url,
            key,
            http: reqwest::Client::new(),
            marker_pushed: Default::default(),
        }
    }

    /// One signed batch; true when the edge applied it.
    async fn push(&self, ops: serde_json::Value) -> bool {
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
            breaker: Default::default(),
            prefix,
            scripts: std::sync::Arc::new(Scripts {
                put_if_newer: redis::Script::new(PUT_IF_NEWER),
                max_not_before: redis::Script::new(MAX_NOT_BEFORE),
                freshness_begin: redis::Script::new(FRESHNESS_BEGIN),
                freshness_end: redis::Script::new(FRESHNESS_END),
            }),
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
            _ => Err(self.failed("connect", true)),
        }
    }

    /// Counts a failure; `unreachable` (no connection) opens the breaker at once,
    /// timeouts only after [`TRIP_AFTER_TIMEOUTS`] in a row.
    fn failed(&self, what: &'static str, unreachable: bool) -> StoreError {
        METRICS.redis_errors.inc();
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        breaker.timeouts += u32::from(!unreachable);
        if unreachable || breaker.timeouts >= TRIP_AFTER_TIMEOUTS {
            let now = std::time::Instant::now();
            if breaker.open_until.is_none_or(|t| t <= now) {
                tracing::warn!(
                    operation = what,
                    "redis unavailable; failing fast for {BREAK_FOR:?}"
                );
            }
            breaker.open_until = Some(now + BREAK_FOR);
            breaker.timeouts = 0;
        } else {
            tracing::debug!(operation = what, "redis call failed or timed out");
        }
        StoreError
    }

    /// Whether the breaker is open, so calls fail at once.
    fn broken(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open_until
            .is_some_and(|t| t > std::time::Instant::now())
    }

    fn succeeded(&self) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if breaker.timeouts != 0 {
            breaker.timeouts = 0;
        }
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
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                let unreachable = error.is_connection_refusal()
                    || error.is_connection_dropped()
                    || error.is_io_error();
                Err(self.failed(what, unreachable))
            }
            Err(_) => Err(self.failed(what, false)),
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

    /// Writes session records and tombstones, each only if newer than what is stored
    /// (Redis and, when configured, the edge's KV). Ok when every write reached the
    /// store, whether or not it was newer.
    pub async fn publish(&self, publications: &[Publication]) -> Result<(), StoreError> {
        if publications.is_empty() {
            return Ok(());
        }
        if let Some(kv) = &self.kv {
            let ops = publications
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "op": "put", "key": session_key(&self.prefix, &p.sub, &p.sid),
                        "value": p.value, "ver": p.ver, "expire_at_ms": p.expire_at_ms,
                    })
                })
                .collect();
            if !kv.push(ops).await {
                return Err(StoreError);
            }
        }
        for p in publications {
            let mut invocation = self.scripts.put_if_newer.prepare_invoke();
            invocation
                .key(session_key(&self.prefix, &p.sub, &p.sid))
                .arg(p.ver)
                .arg(&p.value)
                .arg(p.expire_at_ms);
            self.run_script::<i64>("publish session", invocation)
                .await?;
        }
        Ok(())
    }

    /// Writes a user's logout-everywhere time, only if later than the stored one.
    pub async fn publish_not_before(&self, not_before: &NotBefore) -> Result<(), StoreError> {
        let key = user_not_before_key(&self.prefix, &not_before.sub);
        if let Some(kv) = &self.kv {
            let op = serde_json::json!({
                "op": "max", "key": key, "value": not_before.at_ms.to_string(),
                "expire_at_ms": not_before.expire_at_ms,
            });
            if !kv.push(serde_json::json!([op])).await {
                return Err(StoreError);
            }
        }
        let mut invocation = self.scripts.max_not_before.prepare_invoke();
        invocation
            .key(key)
            .arg(not_before.at_ms)
            .arg(not_before.expire_at_ms);
        self.run_script::<i64>("publish not-before", invocation)
            .await
            .map(drop)
    }

    /// What the store says about a verified token's session, in one round trip of
    /// one slot: record, user not-before and the partition's freshness marker. A
    /// partition without its marker (restarted, flushed, restored, failed over, being
    /// rebuilt) knows nothing: that is an error too.
    pub async fn session_state(&self, claims: &VerifiedClaims) -> Result<SessionState, StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(session_key(
            &self.prefix,
            claims.subject(),
            claims.session_id(),
        ))
        .arg(user_not_before_key(&self.prefix, claims.subject()))
        .arg(freshness_key(&self.prefix, claims.subject()));
        type Value = Option<Vec<u8>>;
        let (record, not_before, fresh): (Value, Value, Value) =
            self.run("read session", &cmd).await?;
        if !shared::session::is_fresh(fresh.as_deref()) {
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

    /// Reads every partition's marker against the run id of the server holding it,
    /// in one pipeline.
    pub async fn freshness(&self) -> Result<Vec<Freshness>, StoreError> {
        let (info, mget) = marker_reads(&self.prefix);
        let run_id = run_id(&self.run::<String>("freshness read", &info).await?);
        let markers: Vec<Option<String>> = self.run("freshness read", &mget).await?;
        Ok(markers
            .into_iter()
            .zip(0..PARTITIONS)
            .map(|(marker, partition)| Freshness {
                partition,
                fresh: !run_id.is_empty() && marker.as_deref() == Some(run_id.as_str()),
                run_id: run_id.clone(),
            })
            .collect())
    }

    /// Starts rebuilding a partition (see [`FRESHNESS_BEGIN`]): from now on the edge
    /// falls back to the origin for it. False when it is fresh already.
    pub async fn begin_rebuild(&self, partition: u16, rebuild: &str) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.freshness_begin.prepare_invoke();
        invocation
            .key(partition_freshness_key(&self.prefix, partition))
            .arg(rebuild);
        self.run_script::<i64>("freshness begin", invocation)
            .await
            .map(|begun| begun == 1)
    }

    /// Marks a rebuilt partition fresh (see [`FRESHNESS_END`]); false when the rebuild
    /// no longer vouches for it.
    pub async fn end_rebuild(
        &self,
        partition: u16,
        run_id: &str,
        rebuild: &str,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.freshness_end.prepare_invoke();
        invocation
            .key(partition_freshness_key(&self.prefix, partition))
            .arg(run_id)
            .arg(rebuild);
        self.run_script::<i64>("freshness end", invocation)
            .await
            .map(|set| set == 1)
    }

    /// Makes sure the edge's KV has its freshness marker (once it has, KV's own records
    /// are authoritative for the edge). Retried by the watcher until it succeeds.
    pub async fn ensure_kv_marker(&self) {
        let Some(kv) = &self.kv else { return };
        if kv.marker_pushed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let op = serde_json::json!([{ "op": "marker", "key": kv_freshness_key(&self.prefix) }]);
        if kv.push(op).await {
            kv.marker_pushed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("kv sync: freshness marker set in the edge's KV");
        }
    }
}
