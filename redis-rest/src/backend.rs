//! The Redis behind the front: one server or a Redis Cluster, behind one connection type.
//!
//! `REDIS_URL` holding several URLs separated by commas
//! (`redis://127.0.0.1:30001,redis://127.0.0.1:30002`), or one URL with
//! `REDIS_CLUSTER=1`, means Redis Cluster: the `redis` crate's cluster client routes
//! every command by its key's hash slot, follows `MOVED`/`ASK`, refreshes the topology
//! and reconnects by itself. One URL without `REDIS_CLUSTER` is one server, through a
//! reconnecting [`ConnectionManager`]. The handler sees only [`Conn`], so both go
//! through the same code.
//!
//! Cluster semantics are Redis Cluster's own: a command's keys must share one hash
//! slot, and so must a transaction's. That is what code must assume of Upstash too (the
//! managed form of the same engine: one slot per transaction). The cluster client
//! would quietly split a multi-key command such as `MGET a b` into one request per
//! slot and stitch the replies together: not atomic, and it would let a key layout
//! pass here that a cluster's own server refuses. [`crosses_slots`] refuses those
//! before anything is sent, with Redis's own `CROSSSLOT` error.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Redis's reply when one command's keys live in more than one hash slot.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Connecting to one node (TCP and handshake), per attempt.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// One command's whole budget: with a cluster this includes its redirects and retries.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first connection, cluster discovery (`CLUSTER SLOTS`, one connection per node)
/// included. `ClusterClient::get_async_connection` is known to hang on some failures,
/// so it gets an outer deadline too; a timed-out attempt is retried by the next request.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach Redis, from `REDIS_URL` and `REDIS_CLUSTER`.
#[derive(Clone)]
pub enum Backend {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl Backend {
    /// Reads the convention above. The error names the setting and never repeats the
    /// URL (it may hold a password).
    pub fn from_settings(redis_url: &str, cluster: bool) -> Result<Backend, String> {
        let urls: Vec<&str> = redis_url.split(',').map(str::trim).collect();
        if urls.iter().any(|url| url.is_empty()) {
            return Err("REDIS_URL: an empty entry in its comma-separated list".into());
        }
        if urls.len() == 1 && !cluster {
            return redis::Client::open(urls[0])
                .map(Backend::Single)
                .map_err(|e| format!("REDIS_URL: {e}"));
        }
        ClusterClientBuilder::new(urls)
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            // Redirects and reconnects are retried within RESPONSE_TIMEOUT. The
            // crate's defaults (16 retries, waits from 1.28 s up to 11 min) would
            // outlast any caller; these wait 10 ms, 20 ms … at most 0.5 s.
            .retries(6)
            .min_retry_wait(10)
            .max_retry_wait(500)
            .retry_wait_formula(10, 2)
            .build()
            .map(Backend::Cluster)
            .map_err(|e| format!("REDIS_URL (Redis Cluster): {e}"))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// A connection that reconnects by itself from then on; callers keep and clone it.
    pub async fn connect(&self) -> Option<Conn> {
        let connect = async {
            match self {
                Backend::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(CONNECTION_TIMEOUT)
                        .set_response_timeout(RESPONSE_TIMEOUT)
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Conn::Single)
                }
                Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "connecting to redis failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = FIRST_CONNECT_TIMEOUT.as_millis() as u64,
                    "connecting to redis timed out"
                );
                None
            }
        }
    }
}

/// One server's or one cluster's connection: cheap to clone, both multiplexed.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Redis could not answer (down, unreachable, slow, or its cluster mid-failover), as
/// opposed to a command it refused. The front answers these with 503 so a client can
/// tell an outage from a failed command and fall back.
pub fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            // A cluster without a primary for the slot (CLUSTERDOWN, MASTERDOWN), a slot
            // being migrated (TRYAGAIN), redirects left over when the retries ran out
            // (the topology was still moving), no connection to any node, a node
            // loading its data set.
            ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::TryAgain
                | ErrorKind::Moved
                | ErrorKind::Ask
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::BusyLoadingError
        )
}

/// Whether a command names keys in more than one hash slot *and* is one the cluster
/// client would split per slot rather than send to one node. These are the commands
/// `redis` 0.32 splits (`cluster_routing`, `RouteBy::MultiShard`); re-check the list
/// when upgrading the crate. Every other multi-key command (`SUNIONSTORE`, `RENAME`,
/// `EVAL` with several keys …) goes whole to the node of its first key, and Redis
/// itself answers `CROSSSLOT`.
pub fn crosses_slots(args: &[Vec<u8>]) -> bool {
    let name = args[0].to_ascii_uppercase();
    let rest = &args[1..];
    let keys: Vec<&[u8]> = match name.as_slice() {
        b"MGET" | b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" | b"WATCH" => {
            rest.iter().map(Vec::as_slice).collect()
        }
        b"MSET" => rest.iter().step_by(2).map(Vec::as_slice).collect(),
        // Keys, then one path.
        b"JSON.MGET" => rest
            .iter()
            .take(rest.len().saturating_sub(1))
            .map(Vec::as_slice)
            .collect(),
        // Key, path, value triples.
        b"JSON.MSET" => rest.iter().step_by(3).map(Vec::as_slice).collect(),
        _ => return false,
    };
    keys.windows(2)
        .any(|pair| key_slot(pair[0]) != key_slot(pair[1]))
}

/// The hash slot of a key (Redis Cluster specification, "Hash tags"): CRC16 of the key,
/// or of its hash tag (what is between the first `{` and the next `}`, if not empty),
/// modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let after = &key[open + 1..];
            let close = after.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &after[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % 16384
}

/// CRC16-CCITT (XModem): polynomial 0x1021, initial value 0, the CRC Redis Cluster uses.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_crc_is_the_one_the_cluster_specification_gives() {
        // Redis Cluster specification, appendix A: "123456789" → 0x31C3.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_match_what_redis_answers_to_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` (redis.io, "CROSSSLOT error"; redis-server 7.0).
        assert_eq!(key_slot(b"user:1"), 10778);
        assert_eq!(key_slot(b"user:2"), 6777);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
    }

    #[test]
    fn a_hash_tag_is_the_first_non_empty_braced_part() {
        // The specification's own examples.
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"no}tag{"), crc16_xmodem(b"no}tag{") % 16384);
    }

    #[test]
    fn multi_key_commands_cross_slots_only_when_their_keys_do() {
        assert!(crosses_slots(&args(&["MGET", "user:1", "user:2"])));
        assert!(
            crosses_slots(&args(&["mget", "user:1", "user:2"])),
            "any case"
        );
        assert!(!crosses_slots(&args(&["MGET", "{u}:1", "{u}:2", "{u}:3"])));
        assert!(!crosses_slots(&args(&["MGET", "user:1"])));
        assert!(crosses_slots(&args(&["DEL", "{a}x", "{b}x"])));
        // MSET's values are not keys: same-slot keys with any values pass.
        assert!(!crosses_slots(&args(&[
            "MSET", "{u}1", "user:1", "{u}2", "user:2"
        ])));
        assert!(crosses_slots(&args(&[
            "MSET", "user:1", "v", "user:2", "v"
        ])));
        // Not split by the client: left to the server (one node, its own CROSSSLOT).
        assert!(!crosses_slots(&args(&["SUNIONSTORE", "user:1", "user:2"])));
        assert!(!crosses_slots(&args(&["GET", "user:1"])));
    }

    #[test]
    fn several_urls_or_the_flag_mean_a_cluster_and_one_url_a_server() {
        let two = "redis://127.0.0.1:30001, redis://127.0.0.1:30002";
        assert!(Backend::from_settings(two, false).unwrap().is_cluster());
        assert!(Backend::from_settings(two, true).unwrap().is_cluster());
        let one = "redis://127.0.0.1:30001";
        assert!(Backend::from_settings(one, true).unwrap().is_cluster());
        assert!(!Backend::from_settings(one, false).unwrap().is_cluster());
    }

    #[test]
    fn a_bad_url_list_names_the_setting_but_not_the_url() {
        for bad in [
            "redis://127.0.0.1:30001,",
            "redis://127.0.0.1:30001,,redis://127.0.0.1:30002",
            "notaurl://:secret@host",
            "redis://:secret@host:1,notaurl://:secret@host",
        ] {
            let cluster = bad.contains(',');
            let Err(message) = Backend::from_settings(bad, cluster) else {
                panic!("{bad} accepted");
            };
            assert!(message.starts_with("REDIS_URL"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}
