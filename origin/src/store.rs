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
//!
//! Redis is one server or a Redis Cluster ([`Target`]). In a cluster every script and
//! every multi-key read stays inside one hash tag, so inside one slot: a user's keys
//! share their partition's tag (`shared::session`), a throttle's keys their key's tag.
//! Replication is asynchronous, so in a cluster each record, tombstone and not-before
//! is followed by `WAIT` on the same node, and a failover (the promoted replica has
//! another run id) makes that shard's partitions stale and rebuilt from Postgres: a
//! write the old primary acknowledged but never passed on is written again.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use shared::VerifiedClaims;
use shared::session::{
    PARTITIONS, SessionState, freshness_key, kv_freshness_key, partition_freshness_key,
    session_key, user_not_before_key,
};

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
    /// The last failure of any call, and the last new cluster connection.
    last_failure: Option<std::time::Instant>,
    last_reconnect: Option<std::time::Instant>,
}

/// Writes a record or tombstone (KEYS[1]) only if its version (ARGV[1]) is newer than
/// the stored one, expiring at ARGV[3] (Unix ms). A value that does not decode (an
/// older format) is replaced; a write whose expiry has passed is dropped (it would
/// only bring back what has ended). Returns 0 when not written, else 1 plus, when
/// ARGV[4] is `1` (a cluster, where it is used), the number of replicas connected to
/// the server (see [`Store::write_replicated`]): `INFO` formats the whole section, a
/// quarter of the script's time (11.4–13.2 µs a call with it, 8.6–10.2 without, in
/// `INFO commandstats`), for a figure a single Redis never uses.
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
if ARGV[4] ~= '1' then return 1 end
return 1 + (tonumber(string.match(redis.call('INFO', 'replication'), 'connected_slaves:(%d+)')) or 0)
"#;

/// Writes a user's not-before (KEYS[1]) only if later than the stored one. Answers as
/// [`PUT_IF_NEWER`] does, ARGV[3] saying whether to count replicas.
const MAX_NOT_BEFORE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[2])
if at <= now then return 0 end
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', at)
if ARGV[3] ~= '1' then return 1 end
return 1 + (tonumber(string.match(redis.call('INFO', 'replication'), 'connected_slaves:(%d+)')) or 0)
"#;

/// Starts a rebuild of a partition: unless its marker KEYS[1] vouches for this server
/// already (another origin rebuilt it meanwhile), or holds another rebuild's
/// placeholder younger than ARGV[2] ms (that rebuild is under way: taking it over
/// would refuse its end, and with several origins looking every second no rebuild
/// might ever end), replaces it by a placeholder naming this rebuild and its start
/// (`~<ARGV[1]>:<ms>`), which no reader takes for fresh. Returns 1 when a rebuild is
/// due.
const FRESHNESS_BEGIN: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local current = redis.call('GET', KEYS[1])
if current == run_id then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if current and string.sub(current, 1, 1) == '~' then
  local since = tonumber(string.match(current, ':(%d+)$'))
  if since and now - since < tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], '~' .. ARGV[1] .. ':' .. now)
return 1
"#;

/// How long a rebuild's placeholder keeps other origins off its partition.
const REBUILD_LEASE_MS: u64 = 10_000;

/// Ends a rebuild: sets the marker KEYS[1] to the server's run id if that is still
/// ARGV[1] and the placeholder of this rebuild (ARGV[2]) is still there. A server
/// that restarted or failed over, or a flush, during the rebuild leaves the partition
/// stale, to be rebuilt at the next look.
const FRESHNESS_END: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if run_id ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[2] + 2) ~= '~' .. ARGV[2] .. ':' then return 0 end
redis.call('SET', KEYS[1], run_id)
return 1
"#;

/// Reads a partition's marker (KEYS[1]) with the run id of the server holding it, in
/// one step on that server: `{run_id, marker or ""}`. Used in a cluster, where every
/// shard has its own run id.
const FRESHNESS_READ: &str = r#"
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
return {run_id, redis.call('GET', KEYS[1]) or ''}
"#;

/// How long a write in a cluster waits for a replica to have it (`WAIT 1 …`). Past
/// it the write stands unreplicated (a replica down or slow): the failover rebuild
/// (module docs) still restores it from Postgres if that primary then dies. Short:
/// `WAIT` holds the origin's one connection to that node meanwhile.
const REPLICA_WAIT_MS: u64 = 20;

#[derive(Debug)]
pub struct StoreError;

/// Where Redis is: one server, or the seed nodes of a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl Target {
    /// `REDIS_URL` holds one URL, or several separated by commas: the nodes of a
    /// cluster (any of them will do; more survive one being down at start).
    /// `REDIS_CLUSTER` makes a single URL a cluster seed too.
    pub fn parse(url: &str, cluster: bool) -> Result<Target, String> {
        let urls: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
        if urls.iter().any(String::is_empty) {
            return Err("REDIS_URL: an empty entry in its comma-separated list".into());
        }
        Ok(match (urls.len(), cluster) {
            (1, false) => Target::Single(urls.into_iter().next().unwrap_or_default()),
            _ => Target::Cluster(urls),
        })
    }
}

/// What `CONFIG GET maxmemory-policy` answered, per node; an error naming the
/// setting unless every node says `noeviction`. Redis evicting keys would drop
/// tombstones (revoked sessions come back) and records (live users logged out).
pub fn require_noeviction(policies: &[(String, String)]) -> Result<(), String> {
    if policies.is_empty() {
        return Err("Redis did not report its maxmemory-policy (CONFIG GET)".into());
    }
    let wrong: Vec<String> = policies
        .iter()
        .filter(|(_, policy)| policy != "noeviction")
        .map(|(node, policy)| format!("{node}: {policy}"))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Redis maxmemory-policy must be noeviction (an evicted tombstone would bring a \
             revoked session back, an evicted record log a user out); found {}",
            wrong.join(", ")
        ))
    }
}

/// The client for a [`Target`].
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One shared connection: a reconnecting one to a single server, or the cluster
/// client's (one multiplexed connection per node, MOVED/ASK followed, topology
/// refreshed, reconnects).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

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

/// The policies in a `CONFIG GET maxmemory-policy` answer: one server's (an array,
/// or a map in RESP3), or a cluster's (a map of node address to its answer).
fn policies(answer: redis::Value) -> Vec<(String, String)> {
    use redis::Value;
    fn text(value: &Value) -> Option<String> {
        match value {
            Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    }
    fn policy(value: &Value) -> Option<String> {
        match value {
            Value::Array(items) => items.get(1).and_then(text),
            Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v)),
            _ => None,
        }
    }
    match &answer {
        Value::Map(pairs)
            if pairs
                .iter()
                .all(|(_, v)| matches!(v, Value::Array(_) | Value::Map(_))) =>
        {
            pairs
                .iter()
                .map(|(node, v)| {
                    (
                        text(node).unwrap_or_default(),
                        policy(v).unwrap_or_default(),
                    )
                })
                .collect()
        }
        other => policy(other)
            .map(|p| vec![("redis".to_string(), p)])
            .unwrap_or_default(),
    }
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
    client: std::sync::Arc<Client>,
    /// The shared connection once made; dropped when the breaker opens on a cluster
    /// (see [`Store::failed`]).
    conn: std::sync::Arc<std::sync::Mutex<Option<Connection>>>,
    /// One connect at a time.
    connecting: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// When calls fail at once (see [`BREAK_FOR`]).
    breaker: std::sync::Arc<std::sync::Mutex<Breaker>>,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
    kv: Option<KvSync>,
}

struct Scripts {
    freshness_begin: redis::Script,
    freshness_end: redis::Script,
    freshness_read: redis::Script,
}

/// Mirrors every change into the edge's Workers KV (`POST /__edge/kv`), for edges
/// configured with `SESSION_STORE = "kv"`. Redis stays the origin's own store. The
/// edge applies the same rules as the scripts above (newer versions, later
/// not-befores only), so a push may be retried or replayed.
#[derive(Clone)]
pub struct KvSync {
    url: String,
    key: shared::proof::MacKey,
    http: reqwest::Client,
    marker_pushed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KvSync {
    pub fn new(url: String, key: shared::proof::MacKey) -> Self {
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
    pub fn new(target: &Target, prefix: String, kv: Option<KvSync>) -> Result<Self, String> {
        if !shared::session::is_key_prefix(&prefix) {
            return Err("REDIS_PREFIX must be printable ASCII without braces".into());
        }
        let client = match target {
            Target::Single(url) => Client::Single(
                redis::Client::open(url.as_str()).map_err(|e| format!("REDIS_URL: {e}"))?,
            ),
            // The cluster client's own retries (MOVED/ASK, reconnects) run inside each
            // call's budget; a shard being failed over fails the call, not the origin.
            // Its default waits before a retry start at 1.28 s, past any budget here.
            Target::Cluster(urls) => Client::Cluster(
                ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(TIMEOUT)
                    .response_timeout(TIMEOUT)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("REDIS_URL (cluster): {e}"))?,
            ),
        };
        Ok(Store {
            client: std::sync::Arc::new(client),
            conn: Default::default(),
            connecting: Default::default(),
            breaker: Default::default(),
            prefix,
            scripts: std::sync::Arc::new(Scripts {
                freshness_begin: redis::Script::new(FRESHNESS_BEGIN),
                freshness_end: redis::Script::new(FRESHNESS_END),
                freshness_read: redis::Script::new(FRESHNESS_READ),
            }),
            kv,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn is_cluster(&self) -> bool {
        matches!(*self.client, Client::Cluster(_))
    }

    /// The shared connection, made on first use (so the origin starts while Redis is
    /// down) and re-established by the manager (or the cluster client) after failures.
    /// The first connect is bounded here: the cluster client's can hang.
    async fn conn(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let connect = async {
            let _one = self.connecting.lock().await;
            if let Some(conn) = self.current() {
                return Ok(conn);
            }
            let conn = match &*self.client {
                Client::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(TIMEOUT)
                        .set_response_timeout(TIMEOUT)
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Connection::Single)?
                }
                Client::Cluster(client) => client
                    .get_async_connection()
                    .await
                    .map(Connection::Cluster)?,
            };
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(TIMEOUT, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            _ => Err(self.failed("connect", true)),
        }
    }

    /// A new cluster connection (fresh slots), swapped in when it is up; one at a time.
    async fn reconnect_cluster(&self) {
        let Client::Cluster(client) = &*self.client else {
            return;
        };
        let Ok(_one) = self.connecting.try_lock() else {
            return;
        };
        if let Ok(Ok(conn)) = tokio::time::timeout(TIMEOUT * 4, client.get_async_connection()).await
        {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Connection::Cluster(conn));
        }
    }

    fn current(&self) -> Option<Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts a failure; `unreachable` (no connection) opens the breaker at once,
    /// timeouts only after [`TRIP_AFTER_TIMEOUTS`] in a row.
    fn failed(&self, what: &'static str, unreachable: bool) -> StoreError {
        METRICS.redis_errors.inc();
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        breaker.last_failure = Some(now);
        if self.is_cluster() {
            // No breaker on a cluster: one dead primary is one shard, and failing every
            // call would leave the healthy shards unwritten while the edge still reads
            // them. The cluster client learns a new topology only from a MOVED answer,
            // which a dead primary never gives: a new connection (at most one every
            // half second) reads the slots afresh, so the promoted replica is found.
            // It is made aside and swapped in once up: calls to the healthy shards
            // keep the current one meanwhile.
            tracing::debug!(operation = what, "redis cluster call failed or timed out");
            if breaker
                .last_reconnect
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500))
            {
                breaker.last_reconnect = Some(now);
                let store = self.clone();
                tokio::spawn(async move { store.reconnect_cluster().await });
            }
            return StoreError;
        }
        breaker.timeouts += u32::from(!unreachable);
        if unreachable || breaker.timeouts >= TRIP_AFTER_TIMEOUTS {
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

    /// Whether a call failed within `within`: the watcher then looks more often.
    pub fn failed_within(&self, within: Duration) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_failure
            .is_some_and(|t| t.elapsed() < within)
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
        op: impl AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
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
            let key = session_key(&self.prefix, &p.sub, &p.sid);
            let mut write = redis::cmd("EVAL");
            write
                .arg(PUT_IF_NEWER)
                .arg(1)
                .arg(&key)
                .arg(p.ver)
                .arg(&p.value)
                .arg(p.expire_at_ms)
                .arg(u8::from(self.is_cluster()));
            self.write_replicated("publish session", &key, write)
                .await?;
        }
        Ok(())
    }

    /// Runs one write (a script on `key` answering 0, or 1 + its server's replicas);
    /// in a cluster, when it wrote and the server has a replica, then `WAIT 1` on the
    /// same node (a pipeline led by a read of the same key goes to the key's node):
    /// the answer comes once a replica has the write, or after [`REPLICA_WAIT_MS`]. No
    /// `WAIT` without a replica: it would only hold the node's connection. `EVAL`, not
    /// `EVALSHA`: the server caches the script by digest, and a promoted replica need
    /// not have loaded it.
    async fn write_replicated(
        &self,
        what: &'static str,
        key: &str,
        write: redis::Cmd,
    ) -> Result<(), StoreError> {
        let answer: i64 = self.run(what, &write).await?;
        if !self.is_cluster() || answer < 2 {
            return Ok(());
        }
        let mut wait = redis::pipe();
        wait.cmd("EXISTS").arg(key).ignore();
        wait.cmd("WAIT").arg(1).arg(REPLICA_WAIT_MS);
        let (replicas,): (i64,) = self
            .budgeted(what, async |conn| wait.query_async(conn).await)
            .await?;
        if replicas < 1 {
            METRICS.redis_unreplicated_writes.inc();
            tracing::debug!(operation = what, "no replica confirmed the write in time");
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
        let mut write = redis::cmd("EVAL");
        write
            .arg(MAX_NOT_BEFORE)
            .arg(1)
            .arg(&key)
            .arg(not_before.at_ms)
            .arg(not_before.expire_at_ms)
            .arg(u8::from(self.is_cluster()));
        self.write_replicated("publish not-before", &key, write)
            .await
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

    /// Reads every partition's marker against the run id of the server holding it:
    /// one server's run id and one `MGET`, or in a cluster each partition read on its
    /// own shard with that shard's run id (a flush, restart or failover of one shard
    /// makes only its partitions stale).
    pub async fn freshness(&self) -> Result<Vec<Freshness>, StoreError> {
        if self.is_cluster() {
            return self.cluster_freshness().await;
        }
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

    async fn cluster_freshness(&self) -> Result<Vec<Freshness>, StoreError> {
        let script = &self.scripts.freshness_read;
        let prefix = &self.prefix;
        // Concurrent on the cluster connection: each partition is its own slot, and a
        // cluster pipeline cannot cross slots.
        let read = async |conn: &mut Connection| {
            let reads = (0..PARTITIONS).map(|partition| {
                let mut conn = conn.clone();
                async move {
                    let (run_id, marker): (String, String) = script
                        .key(partition_freshness_key(prefix, partition))
                        .invoke_async(&mut conn)
                        .await?;
                    Ok::<_, redis::RedisError>(Freshness {
                        partition,
                        fresh: !run_id.is_empty() && marker == run_id,
                        run_id,
                    })
                }
            });
            futures::future::try_join_all(reads).await
        };
        self.budgeted("freshness read", read).await
    }

    /// Every node's `maxmemory-policy` (a cluster's replicas included: one of them
    /// may become the primary).
    pub async fn eviction_policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.config("maxmemory-policy").await
    }

    /// Every node's value of one setting (`CONFIG GET`).
    pub async fn config(&self, name: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let cluster = self.is_cluster();
        let answer: redis::Value = self
            .budgeted("config get", async |conn| match conn {
                Connection::Cluster(conn) if cluster => {
                    let every = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                    conn.route_command(&cmd, every).await
                }
                conn => cmd.query_async(conn).await,
            })
            .await?;
        Ok(policies(answer))
    }

    /// Starts rebuilding a partition (see [`FRESHNESS_BEGIN`]): from now on the edge
    /// falls back to the origin for it. False when it is fresh already.
    pub async fn begin_rebuild(&self, partition: u16, rebuild: &str) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.freshness_begin.prepare_invoke();
        invocation
            .key(partition_freshness_key(&self.prefix, partition))
            .arg(rebuild)
            .arg(REBUILD_LEASE_MS);
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn one_url_is_one_server_a_list_or_the_flag_a_cluster() {
        let single = Target::parse("redis://10.0.0.1:6379", false).unwrap();
        assert_eq!(single, Target::Single("redis://10.0.0.1:6379".into()));
        let seed = Target::parse("redis://10.0.0.1:6379", true).unwrap();
        assert_eq!(seed, Target::Cluster(vec!["redis://10.0.0.1:6379".into()]));
        let list = Target::parse("redis://a:1, redis://b:2", false).unwrap();
        assert_eq!(
            list,
            Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        for bad in [
            "redis://a:1,",
            ",redis://a:1",
            "redis://a:1,,redis://b:2",
            "",
        ] {
            let error = Target::parse(bad, false).unwrap_err();
            assert!(error.contains("REDIS_URL"), "{bad}: {error}");
        }
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn every_node_must_say_noeviction() {
        let answer = |policy: &str| Value::Array(vec![bulk("maxmemory-policy"), bulk(policy)]);
        // One server, RESP2 and RESP3.
        assert_eq!(
            policies(answer("noeviction")),
            vec![("redis".to_string(), "noeviction".to_string())]
        );
        let resp3 = Value::Map(vec![(bulk("maxmemory-policy"), bulk("noeviction"))]);
        assert!(require_noeviction(&policies(resp3)).is_ok());
        // A cluster: one node that evicts is enough to refuse, and it is named.
        let cluster = Value::Map(vec![
            (bulk("10.0.0.1:6379"), answer("noeviction")),
            (bulk("10.0.0.2:6379"), answer("volatile-lru")),
        ]);
        let error = require_noeviction(&policies(cluster)).unwrap_err();
        assert!(error.contains("10.0.0.2:6379: volatile-lru"), "{error}");
        assert!(!error.contains("10.0.0.1"), "{error}");
        // Nothing understood is a refusal too, never a pass.
        assert!(require_noeviction(&policies(Value::Nil)).is_err());
        assert!(require_noeviction(&policies(Value::Array(vec![]))).is_err());
    }
}
