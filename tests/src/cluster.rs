//! Scale-out pieces for tests (issue 14): a throwaway Redis Cluster of six
//! `redis-server`s (3 primaries, 3 replicas) with the faults a test inflicts on it
//! (a primary SIGKILLed, a graceful `CLUSTER FAILOVER`, a primary flushed), HAProxy
//! in front of several origins, and [`ScaleOut`]: the whole stack on both.
//!
//! Everything runs from the installed binaries (`redis-server`, `redis-cli`,
//! `haproxy`), on free ports bound to 127.0.0.1, in temporary directories, and is
//! killed with its process group on drop. Redis is driven with `redis-cli`, as
//! `scripts/services.sh` does, so the tests need no Redis client of their own.
//!
//! ```no_run
//! # async fn example() {
//! use e2e::cluster::ScaleOut;
//! let mut scale = ScaleOut::start(3, e2e::Options::default()).await;
//! let shard = scale.cluster.shard_of_key("auth:sess:{p0042}:u:s");
//! let took = scale.cluster.kill_primary(shard); // its replica has taken over
//! scale.stack.kill_origin_at(2); // HAProxy stops sending it requests
//! # let _ = took;
//! # }
//! ```

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Options, Process, Stack, TempDir, free_port};

/// Nodes the cluster starts with: 3 primaries, each with one replica (the fewest
/// primaries Redis Cluster accepts).
const NODES: usize = 6;
/// `cluster-node-timeout`: how long a primary may be unreachable before it is failed
/// over. Short, so a test's failover takes seconds.
const NODE_TIMEOUT_MS: u64 = 2000;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// Its cluster-bus port, kept for a restart.
    bus: u16,
    /// `None` once the test killed it.
    process: Option<Process>,
}

/// What one node says about one node in `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// Flagged `fail` (agreed dead by the primaries) or `fail?` (suspected).
    pub failed: bool,
    /// A replica's primary, by node id.
    pub replica_of: Option<String>,
    /// Slot ranges, inclusive, of a primary.
    pub slots: Vec<(u16, u16)>,
}

/// A primary and the slot ranges it serves; shards are numbered by their lowest slot,
/// which does not change in a failover, so shard 1 stays shard 1 whichever node
/// serves it.
#[derive(Clone, Debug)]
pub struct Shard {
    pub primary_port: u16,
    pub primary_id: String,
    pub slots: Vec<(u16, u16)>,
    /// Its replica's port, while one is up and connected.
    pub replica_port: Option<u16>,
}

impl Shard {
    pub fn holds(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// A Redis Cluster of six throwaway nodes, as issue 14 describes: cluster mode, a 2 s
/// node timeout, `noeviction` (the origin refuses anything else), nothing on disk.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create` (one replica per
    /// primary) and waits until every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = TempDir::new("cluster");
        let nodes = (0..NODES).map(|_| spawn_node(&dir.0)).collect();
        let cluster = RedisCluster { nodes, dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        if let Err(error) = run_bounded(create, Duration::from_secs(60)) {
            panic!(
                "redis-cli --cluster create failed: {error}\n{}",
                cluster.logs()
            );
        }
        let started = Instant::now();
        cluster.wait_until(
            "every node reports cluster_state:ok and 3 primaries with a replica each",
            Duration::from_secs(30),
            |views| {
                views.iter().all(|(_, nodes)| {
                    nodes
                        .iter()
                        .filter(|n| n.primary && !n.slots.is_empty())
                        .count()
                        == 3
                        && nodes.iter().filter(|n| !n.primary).count() == 3
                })
            },
        );
        // Only a replica that has synced can take over (one that never did is "
        // disconnected from master for longer than allowed").
        for port in cluster.live_ports() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info = cluster
                    .cli(port, &["INFO", "replication"])
                    .unwrap_or_default();
                let synced = info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0"));
                if synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis cluster: replica {port} did not sync:\n{info}\n{}",
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!(
            "redis cluster: {} nodes up, ok {:.1} s after create; shards {:?}",
            NODES,
            started.elapsed().as_secs_f64(),
            cluster
                .shards()
                .iter()
                .map(|s| (s.primary_port, s.slots.clone(), s.replica_port))
                .collect::<Vec<_>>()
        );
        cluster
    }

    /// Every node's URL, comma-separated: the origin's and the REST front's
    /// `REDIS_URL` for a cluster (any reachable node gives the topology).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// One command to one node with `redis-cli` (raw output, trimmed). Redis errors
    /// (`-ERR …`, `-MOVED …`) are `Err`.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        let out = run_bounded(command, Duration::from_secs(5))?;
        let text = out.trim().to_string();
        // redis-cli prints a server error as the reply and still exits 0.
        if text.starts_with("ERR")
            || text.starts_with("MOVED")
            || text.starts_with("CLUSTERDOWN")
            || text.starts_with("Could not connect")
        {
            return Err(text);
        }
        Ok(text)
    }

    /// The cluster as one live node sees it (`CLUSTER NODES`).
    pub fn view(&self, port: u16) -> Result<Vec<NodeView>, String> {
        Ok(parse_cluster_nodes(&self.cli(port, &["CLUSTER", "NODES"])?))
    }

    /// The shards (primaries and their slots), numbered by lowest slot, as the first
    /// live node that answers sees them.
    pub fn shards(&self) -> Vec<Shard> {
        let views = self
            .live_ports()
            .into_iter()
            .find_map(|port| self.view(port).ok())
            .expect("some cluster node answers CLUSTER NODES");
        shards_of(&views)
    }

    /// The hash slot of a key (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.cli(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().map_err(|e| format!("{s}: {e}")))
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// The shard whose primary holds `key`.
    pub fn shard_of_key(&self, key: &str) -> usize {
        let slot = self.slot_of(key);
        self.shards()
            .iter()
            .position(|s| s.holds(slot))
            .unwrap_or_else(|| panic!("no primary holds slot {slot}"))
    }

    /// One command about a key, sent to any live node and following its redirection
    /// to the primary that holds the key (`redis-cli -c`).
    pub fn cli_routed(&self, args: &[&str]) -> Result<String, String> {
        let port = self.live_ports()[0];
        let mut routed = vec!["-c"];
        routed.extend_from_slice(args);
        self.cli(port, &routed)
    }

    /// Whether `key` exists, asked of the primary that holds it.
    pub fn exists(&self, key: &str) -> bool {
        self.cli_routed(&["EXISTS", key])
            .unwrap_or_else(|e| panic!("EXISTS {key}: {e}"))
            == "1"
    }

    /// `GET key`, asked of the primary that holds it (`None` when absent).
    pub fn get(&self, key: &str) -> Option<String> {
        // Raw output prints an absent value as an empty line; a stored empty string is
        // not something the origin writes.
        let value = self
            .cli_routed(&["GET", key])
            .unwrap_or_else(|e| panic!("GET {key}: {e}"));
        (!value.is_empty()).then_some(value)
    }

    /// How many keys one shard's primary holds (`DBSIZE`).
    pub fn dbsize(&self, shard: usize) -> u64 {
        let port = self.shards()[shard].primary_port;
        self.cli(port, &["DBSIZE"])
            .and_then(|s| s.parse().map_err(|e| format!("{s}: {e}")))
            .unwrap_or_else(|e| panic!("DBSIZE on {port}: {e}"))
    }

    /// `FLUSHALL` on one shard's primary (its replica follows, by replication): the
    /// shard loses every key while the others keep theirs and no node restarts.
    pub fn flush_primary(&self, shard: usize) {
        let port = self.shards()[shard].primary_port;
        let reply = self
            .cli(port, &["FLUSHALL"])
            .unwrap_or_else(|e| panic!("FLUSHALL on {port}: {e}"));
        assert_eq!(reply, "OK", "FLUSHALL on {port}");
    }

    /// SIGKILLs one shard's primary (it stays down) and waits until its replica is
    /// the primary of those slots and every live node reports `cluster_state:ok`:
    /// how long that took from the kill.
    pub fn kill_primary(&mut self, shard: usize) -> Duration {
        let before = self.shards()[shard].clone();
        let replica = before.replica_port.unwrap_or_else(|| {
            panic!(
                "shard {shard} (primary {}) has no replica to take over",
                before.primary_port
            )
        });
        let killed = Instant::now();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == before.primary_port)
            .unwrap();
        node.process.take().expect("the primary runs").stop();
        let slots = before.slots.clone();
        self.wait_until(
            &format!(
                "replica {replica} serves shard {shard}'s slots {slots:?} after primary {} was killed",
                before.primary_port
            ),
            Duration::from_secs(30),
            |views| {
                views.iter().all(|(_, nodes)| {
                    nodes
                        .iter()
                        .any(|n| n.port == replica && n.primary && n.slots == slots)
                })
            },
        );
        killed.elapsed()
    }

    /// Starts a killed node again, same port and `nodes.conf`, empty (nothing is kept
    /// on disk): it rejoins as a replica of the node that took over its slots. Waits
    /// until it has synced and every node reports `cluster_state:ok`: how long that
    /// took.
    pub fn restart_node(&mut self, port: u16) -> Duration {
        let started = Instant::now();
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        assert!(node.process.is_none(), "node {port} is running");
        let mut process = Process::spawn(
            "redis-server (cluster)",
            node_command(&self.dir.0, port, node.bus),
        );
        assert!(
            listening(&mut process, port),
            "redis-server (cluster) did not listen again on {port}:\n{}",
            process.log()
        );
        node.process = Some(process);
        self.wait_until(
            &format!("node {port} back as a replica"),
            Duration::from_secs(30),
            |views| {
                views.iter().all(|(_, nodes)| {
                    nodes
                        .iter()
                        .any(|n| n.port == port && !n.primary && !n.failed)
                })
            },
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.cli(port, &["INFO", "replication"]).unwrap_or_default();
            if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0")
            {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "node {port} did not sync as a replica:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A graceful failover (`CLUSTER FAILOVER`, sent to a replica) of the first shard
    /// whose replica is up, waiting until every live node sees the roles switched and
    /// reports `cluster_state:ok`: (the shard, how long that took).
    pub fn graceful_failover(&self) -> (usize, Duration) {
        let shards = self.shards();
        let (shard, before) = shards
            .iter()
            .enumerate()
            .find(|(_, s)| s.replica_port.is_some())
            .expect("a shard with a replica");
        let (old, new) = (before.primary_port, before.replica_port.unwrap());
        let started = Instant::now();
        let reply = self
            .cli(new, &["CLUSTER", "FAILOVER"])
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {new}: {e}"));
        assert_eq!(reply, "OK", "CLUSTER FAILOVER on {new}");
        // The reply only means "scheduled": the switch is seen in CLUSTER NODES.
        let slots = before.slots.clone();
        self.wait_until(
            &format!("replica {new} took over shard {shard} from {old} (CLUSTER FAILOVER)"),
            Duration::from_secs(30),
            |views| {
                views.iter().all(|(_, nodes)| {
                    nodes
                        .iter()
                        .any(|n| n.port == new && n.primary && n.slots == slots)
                        && nodes.iter().any(|n| n.port == old && !n.primary)
                })
            },
        );
        (shard, started.elapsed())
    }

    /// Polls every live node (`CLUSTER INFO`, `CLUSTER NODES`) every 100 ms until all
    /// report `cluster_state:ok` and `done` holds for their views; panics with the
    /// last views after `timeout`.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[(u16, Vec<NodeView>)]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let mut views = Vec::new();
            let mut not_ok = Vec::new();
            for port in self.live_ports() {
                match self.cli(port, &["CLUSTER", "INFO"]) {
                    Ok(info) if info.lines().any(|l| l.trim() == "cluster_state:ok") => {}
                    Ok(info) => not_ok.push(format!(
                        "{port}: {}",
                        info.lines()
                            .find(|l| l.starts_with("cluster_state"))
                            .unwrap_or("")
                    )),
                    Err(e) => not_ok.push(format!("{port}: {e}")),
                }
                match self.view(port) {
                    Ok(view) => views.push((port, view)),
                    Err(e) => not_ok.push(format!("{port}: CLUSTER NODES: {e}")),
                }
            }
            if not_ok.is_empty() && done(&views) {
                return;
            }
            if started.elapsed() > timeout {
                panic!(
                    "redis cluster: not done within {timeout:?}: {what}\nnot ok: {not_ok:?}\n\
                     views: {views:#?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| {
                let process = n.process.as_ref()?;
                Some(format!("--- redis {} ---\n{}", n.port, process.log()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.stop();
            }
        }
        let _ = &self.dir;
    }
}

/// Starts one cluster node in a directory of its own (its `nodes.conf`), on a free
/// port and a free cluster-bus port (set explicitly: the default, port + 10000, may be
/// taken or above 65535). A port taken between `free_port` and the bind: try others.
fn spawn_node(dir: &std::path::Path) -> Node {
    for _ in 0..4 {
        let (port, bus) = (free_port(), free_port());
        if port == bus {
            continue;
        }
        let mut process = Process::spawn("redis-server (cluster)", node_command(dir, port, bus));
        if listening(&mut process, port) {
            return Node {
                port,
                bus,
                process: Some(process),
            };
        }
        process.stop();
        if !process.log().contains("Address already in use") {
            panic!(
                "redis-server (cluster) did not listen on {port}:\n{}",
                process.log()
            );
        }
    }
    panic!("redis-server (cluster): no free port pair after 4 attempts");
}

/// The command line of the node on `port`, its state in `dir/<port>` (`nodes.conf`:
/// a restarted node comes back with its identity and rejoins the cluster).
fn node_command(dir: &std::path::Path, port: u16, bus: u16) -> Command {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
        ])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--maxmemory-policy", "noeviction"])
        // The healthy shards keep serving while one is failed over (README).
        .args(["--cluster-require-full-coverage", "no"])
        // Replicas sync at once (the default waits 5 s for more replicas to share one
        // transfer): a replica that never synced cannot be promoted.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&node_dir);
    command
}

/// Whether the node accepts connections within 10 s (false as soon as it exits).
fn listening(process: &mut Process, port: u16) -> bool {
    let started = Instant::now();
    while !process.exited() && started.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus[,host]> <flags> <primary> <ping> <pong>
/// <epoch> <link> <slot>…`. Slots in brackets (being migrated) are skipped.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeView {
                id: fields[0].to_string(),
                port,
                primary: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                replica_of: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// The shards of one node's view, numbered by lowest slot.
fn shards_of(views: &[NodeView]) -> Vec<Shard> {
    let mut shards: Vec<Shard> = views
        .iter()
        .filter(|n| n.primary && !n.slots.is_empty())
        .map(|n| Shard {
            primary_port: n.port,
            primary_id: n.id.clone(),
            slots: n.slots.clone(),
            replica_port: views
                .iter()
                .find(|r| !r.primary && !r.failed && r.replica_of.as_deref() == Some(&n.id))
                .map(|r| r.port),
        })
        .collect();
    shards.sort_by_key(|s| s.slots.iter().map(|(a, _)| *a).min());
    shards
}

/// Runs a command with its output captured, killing it after `timeout` (redis-cli has
/// no timeout of its own): its stdout, or an error with both streams.
fn run_bounded(mut command: Command, timeout: Duration) -> Result<String, String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(output)) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(Ok(output)) => Err(format!(
            "{command:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
        Ok(Err(e)) => Err(format!("{command:?}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped yet (the
            // waiting thread reaps it once it dies).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            Err(format!("{command:?}: no answer within {timeout:?}"))
        }
    }
}

/// The `haproxy` binary: on `PATH`, or Debian's `/usr/sbin` (not on a user's `PATH`).
/// Missing, the test fails saying how to install it: a scale-out test that skips
/// silently would pass without testing anything.
pub fn haproxy_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("haproxy"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/haproxy");
            sbin.is_file().then_some(sbin)
        })
        .expect(
            "haproxy is not installed: the scale-out tests put 3 origins behind it. \
             Install Debian's package (`apt-get install haproxy`; scripts/test does it)",
        )
}

/// HAProxy in front of the origins: round robin, health checks on `/healthz`
/// (every 500 ms, down after 2 failures, up after 1 success), and a request that
/// failed on one origin (connection refused, closed without an answer, timed out)
/// retried on another (`option redispatch`, `retry-on`, `retries 2`). Only failed
/// requests are logged (`dontlog-normal`), to stderr, kept in [`LoadBalancer::log`].
pub struct LoadBalancer {
    pub port: u16,
    /// The origins' ports, in server order (`o0`, `o1`, …).
    pub servers: Vec<u16>,
    process: Process,
    dir: TempDir,
}

impl LoadBalancer {
    /// Starts HAProxy on a free port in front of `servers` (origins may start after
    /// it: they are marked up by the first passing check).
    pub fn start(servers: &[u16]) -> LoadBalancer {
        let bin = haproxy_bin();
        let dir = TempDir::new("haproxy");
        for _ in 0..4 {
            let port = free_port();
            let config = dir.0.join("haproxy.cfg");
            std::fs::write(&config, haproxy_config(port, servers, &dir.0)).unwrap();
            let mut command = Command::new(&bin);
            // -db: foreground, no daemon; -W not needed (no reloads).
            command.arg("-db").arg("-f").arg(&config);
            let mut process = Process::spawn("haproxy", command);
            let started = Instant::now();
            // Listening once its admin socket answers (binds come first). Not probed by
            // a TCP connection, which HAProxy would log as a bad request.
            let socket = dir.0.join("admin.sock");
            while started.elapsed() < Duration::from_secs(10) && !process.exited() {
                if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                    return LoadBalancer {
                        port,
                        servers: servers.to_vec(),
                        process,
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            process.stop();
            let log = process.log();
            if !log.contains("cannot bind") && !log.contains("Address already in use") {
                panic!("haproxy did not listen on {port}:\n{log}");
            }
        }
        panic!("haproxy: no free port after 4 attempts");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port` as the edge's `ORIGIN_URL` names it: the origins' `ORIGIN_AUTHORITY`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One command on HAProxy's runtime API (its admin socket): the reply.
    pub fn admin(&self, command: &str) -> String {
        let mut socket = std::os::unix::net::UnixStream::connect(self.dir.0.join("admin.sock"))
            .expect("haproxy's admin socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = socket.read_to_string(&mut reply);
        reply
    }

    /// Points server `index` at another port (an origin that had to move because its
    /// port was taken before it could bind it).
    pub fn set_server_port(&mut self, index: usize, port: u16) {
        let reply = self.admin(&format!(
            "set server origins/o{index} addr 127.0.0.1 port {port}"
        ));
        assert!(
            !reply.to_lowercase().contains("error") && !reply.contains("No such"),
            "haproxy: set server o{index} port {port}: {reply}"
        );
        self.servers[index] = port;
    }

    /// Each server's status as HAProxy's checks see it (`UP`, `DOWN`, …), in order.
    pub fn server_states(&self) -> Vec<String> {
        let stat = self.admin("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status)) =
            (column("pxname"), column("svname"), column("status"))
        else {
            return Vec::new();
        };
        (0..self.servers.len())
            .map(|i| {
                let name = format!("o{i}");
                stat.lines()
                    .map(|l| l.split(',').collect::<Vec<_>>())
                    .find(|f| f.get(px) == Some(&"origins") && f.get(sv) == Some(&name.as_str()))
                    .and_then(|f| f.get(status).map(|s| s.to_string()))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until HAProxy's checks agree with `expected` (`true` = up) for every
    /// server: how long that took, or the states last seen and HAProxy's log.
    pub async fn wait_states(
        &self,
        expected: &[bool],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let states = self.server_states();
            let matches = states.len() == expected.len()
                && states
                    .iter()
                    .zip(expected)
                    .all(|(s, up)| s.starts_with("UP") == *up);
            if matches {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "haproxy: servers {states:?}, expected up = {expected:?} within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What HAProxy logged: failed or retried requests, server state changes.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn haproxy_config(port: u16, servers: &[u16], dir: &std::path::Path) -> String {
    let servers: String = servers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server o{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 1\n"))
        .collect();
    format!(
        "global
    log stderr format raw local0
    stats socket {dir}/admin.sock mode 600 level admin
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 30s
    # Longer than any answer of a healthy origin (a login waits at most
    # HASH_QUEUE_TIMEOUT_SECS, 10 s, for a hashing slot), so only a hung origin times out.
    timeout server 15s
    timeout check 1s
    # A request that failed on one origin goes to another, at most twice.
    option redispatch
    retry-on conn-failure empty-response response-timeout
    retries 2

frontend edge_to_origin
    bind 127.0.0.1:{port}
    default_backend origins

backend origins
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz
{servers}",
        dir = dir.display()
    )
}

/// The scale-out stack of issue 14: a [`RedisCluster`], and a [`Stack`] on it with
/// `origins` origins behind a [`LoadBalancer`], the REST front and the edge pointed
/// at the cluster and the load balancer. The stack is dropped before the cluster.
pub struct ScaleOut {
    pub stack: Stack,
    pub cluster: RedisCluster,
}

impl ScaleOut {
    /// `options.redis_url` and `options.origins` are set here.
    pub async fn start(origins: usize, options: Options) -> ScaleOut {
        // Fail before starting anything when HAProxy is missing.
        haproxy_bin();
        let cluster = RedisCluster::start();
        let stack = Stack::start(Options {
            redis_url: Some(cluster.urls()),
            origins,
            ..options
        })
        .await;
        ScaleOut { stack, cluster }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed_with_roles_failures_and_slots() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]
6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238315000 5 connected
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923 10924-16383
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0].replica_of.as_deref(), Some("e7d1"));
        assert!(!nodes[0].primary);
        assert_eq!(nodes[1].port, 30002);
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert!(nodes[3].failed && nodes[3].slots.is_empty());
        assert_eq!(nodes[4].slots, vec![(10923, 10923), (10924, 16383)]);
        let shards = shards_of(&nodes);
        assert_eq!(
            shards.iter().map(|s| s.primary_port).collect::<Vec<_>>(),
            vec![30001, 30002, 30003]
        );
        assert_eq!(shards[0].replica_port, Some(30004));
        assert_eq!(shards[1].replica_port, None);
        assert!(shards[2].holds(10923) && !shards[2].holds(5000));
    }
}
