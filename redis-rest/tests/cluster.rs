//! The REST front in front of a throwaway Redis Cluster (6 nodes: 3 primaries, 3
//! replicas, from the installed `redis-server` and `redis-cli`), as the edge uses it:
//! commands routed by slot, the edge's one-slot `MGET`, pipelines across slots,
//! Redis Cluster's `CROSSSLOT` refusals, and a read that answers again after a
//! primary was SIGKILLed and its replica promoted.
//!
//! Each test starts its own cluster in a `mktemp -d` directory on free ports bound to
//! 127.0.0.1; every node and the front are killed with their process group when the
//! test ends, however it ends.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A started process, killed with its whole process group on drop.
struct Killed {
    name: String,
    child: Option<Child>,
}

impl Killed {
    fn spawn(name: String, mut command: Command) -> Killed {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Killed {
            name,
            child: Some(child),
        }
    }

    /// SIGKILL to the process group (what a crash or `kill -9` does), then reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's process group with a valid signal.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `count` distinct free ports.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    while ports.len() < count {
        ports.insert(free_port());
    }
    ports.into_iter().collect()
}

fn require(binary: &str, package: &str) {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{binary} is needed for the Redis Cluster tests (Debian/Ubuntu: apt-get install {package})"
    );
}

/// `redis-cli -p port args…`, its standard output (raw replies, one a line).
fn cli(port: u16, args: &[&str]) -> String {
    cli_with_input(port, args, None)
}

fn cli_with_input(port: u16, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeInfo {
    id: String,
    port: u16,
    primary: bool,
    /// A replica's primary.
    primary_id: Option<String>,
    /// A primary's slot ranges.
    slots: Vec<(u16, u16)>,
}

struct Cluster {
    dir: PathBuf,
    nodes: Vec<(u16, Killed)>,
}

impl Cluster {
    /// Six nodes, `redis-cli --cluster create … --cluster-replicas 1`, then waits until
    /// every node says `cluster_state:ok`. A node that exits at once lost its port to
    /// another process between the pick and the bind (the tests run side by side):
    /// then the whole start is made again on other ports, at most three times.
    fn start() -> Cluster {
        for attempt in 1.. {
            match Cluster::try_start() {
                Ok(cluster) => return cluster,
                Err(why) if attempt < 3 => eprintln!("cluster start {attempt}: {why}; again"),
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!()
    }

    fn try_start() -> Result<Cluster, String> {
        require("redis-server", "redis-server");
        require("redis-cli", "redis-tools");
        let output = Command::new("mktemp")
            .args(["-d", "-t", "redis-rest-cluster.XXXXXX"])
            .output()
            .expect("mktemp");
        assert!(output.status.success(), "mktemp -d failed");
        let dir = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        // A client port and a cluster bus port per node (the bus would otherwise be
        // port + 10000, which nothing has checked is free).
        let ports = free_ports(12);
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
        };
        for pair in ports.chunks(2) {
            let (port, bus) = (pair[0], pair[1]);
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--cluster-config-file", "nodes.conf"])
                .arg("--dir")
                .arg(&node_dir)
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                // A replica's first sync starts at once, not after the default 5 s
                // wait for other replicas to share a diskless transfer.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--daemonize", "no"])
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let node = Killed::spawn(format!("redis-server :{port}"), command);
            cluster.nodes.push((port, node));
        }
        for (port, node) in &mut cluster.nodes {
            let started = Instant::now();
            while cli(*port, &["PING"]).trim() != "PONG" {
                if node.exited() {
                    return Err(format!("{} exited (port taken?)", node.name));
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{} not answering",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let started = Instant::now();
        let create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&create.stdout),
            String::from_utf8_lossy(&create.stderr)
        );
        // Ready: every node says the cluster is ok and sees 3 primaries with slots and
        // 3 replicas of them, and every replica's link to its primary is up (its first
        // sync done), so a killed primary has a replica able to take over.
        for port in cluster.ports() {
            loop {
                let ok = cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
                let nodes = cluster.topology(port);
                let shaped = nodes.len() == 6
                    && nodes
                        .iter()
                        .filter(|n| n.primary && !n.slots.is_empty())
                        .count()
                        == 3
                    && nodes.iter().filter(|n| n.primary_id.is_some()).count() == 3;
                let linked = nodes.iter().find(|n| n.port == port).is_some_and(|me| {
                    me.primary
                        || cli(port, &["INFO", "replication"]).contains("master_link_status:up")
                });
                if ok && shaped && linked {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "node {port} not ready (cluster_state ok: {ok}, 3 primaries and 3 \
                     replicas: {shaped}, replica linked: {linked})"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!(
            "cluster of 6 nodes ready {} ms after `redis-cli --cluster create` began",
            started.elapsed().as_millis()
        );
        Ok(cluster)
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    fn urls(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `CLUSTER NODES` as seen by the node on `port`.
    fn topology(&self, port: u16) -> Vec<NodeInfo> {
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // <id> <ip:port@cport> <flags> <primary> <ping> <pong> <epoch> <link> <slot>…
                let port = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("CLUSTER NODES line: {line}"));
                let primary = fields[2].split(',').any(|f| f == "master");
                let slots = fields[8..]
                    .iter()
                    .filter(|f| !f.starts_with('['))
                    .map(|range| match range.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (range.parse().unwrap(), range.parse().unwrap()),
                    })
                    .collect();
                NodeInfo {
                    id: fields[0].to_string(),
                    port,
                    primary,
                    primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                    slots,
                }
            })
            .collect()
    }

    fn primaries(&self) -> Vec<NodeInfo> {
        let primaries: Vec<NodeInfo> = self
            .topology(self.ports()[0])
            .into_iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .collect();
        assert_eq!(primaries.len(), 3, "three primaries holding slots");
        primaries
    }

    /// What Redis says a key's slot is.
    fn key_slot(&self, key: &str) -> u16 {
        cli(self.ports()[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap()
    }

    fn node(&mut self, port: u16) -> &mut Killed {
        &mut self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("a node of this cluster")
            .1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, node) in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Front {
    _process: Killed,
    log: PathBuf,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Drop for Front {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("redis-rest log:\n{log}");
        }
    }
}

async fn start_front(cluster: &Cluster, redis_url: &str, cluster_flag: bool) -> Front {
    let port = free_port();
    let token = format!("tok{}x{port}", std::process::id());
    let log = cluster.dir.join(format!("front-{port}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_redis-rest"));
    command
        .env("REST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .env("REST_TOKEN", &token)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if cluster_flag {
        command.env("REDIS_CLUSTER", "1");
    } else {
        command.env_remove("REDIS_CLUSTER");
    }
    let front = Front {
        _process: Killed::spawn("redis-rest".into(), command),
        log,
        base: format!("http://127.0.0.1:{port}"),
        token,
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return front;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-rest did not start");
}

impl Front {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("front reachable");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
        )
    }

    async fn ok(&self, command: Value) -> Value {
        let (status, body) = self.post("/", command.clone()).await;
        assert_eq!(status, 200, "{command}: {body}");
        body["result"].clone()
    }
}

const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

#[tokio::test]
async fn the_front_routes_by_slot_and_refuses_what_spans_slots_as_redis_cluster_does() {
    let cluster = Cluster::start();
    // Several URLs: a cluster without REDIS_CLUSTER.
    let front = start_front(&cluster, &cluster.urls(), false).await;
    let prefix = "rest-cluster:";

    // Single commands land on every primary, each key on the node owning its slot.
    let keys: Vec<String> = (0..30).map(|i| format!("{prefix}k{i}")).collect();
    for key in &keys {
        assert_eq!(
            front.ok(json!(["SET", key, format!("v-{key}")])).await,
            "OK"
        );
    }
    let primaries = cluster.primaries();
    let mut seen = BTreeSet::new();
    let mut owner = std::collections::BTreeMap::new();
    for primary in &primaries {
        let held: Vec<String> = cli(primary.port, &["KEYS", &format!("{prefix}*")])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        assert!(
            !held.is_empty(),
            "primary :{} holds none of the keys",
            primary.port
        );
        for key in held {
            let slot = cluster.key_slot(&key);
            assert!(
                primary.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)),
                "{key} (slot {slot}) on :{} which does not own it",
                primary.port
            );
            assert!(seen.insert(key.clone()), "{key} on two primaries");
            owner.insert(key, primary.port);
        }
    }
    assert_eq!(
        seen,
        keys.iter().cloned().collect(),
        "every key stored once"
    );
    for key in &keys {
        assert_eq!(front.ok(json!(["GET", key])).await, format!("v-{key}"));
    }

    // The edge's session read: the record, the user's not-before and the partition's
    // freshness marker, one MGET of one hash tag, one REST call.
    let (sub, sid) = ("user-7f3a", "sid-19c2");
    let read = [
        shared::session::session_key(prefix, sub, sid),
        shared::session::user_not_before_key(prefix, sub),
        shared::session::freshness_key(prefix, sub),
    ];
    let slots: BTreeSet<u16> = read.iter().map(|k| cluster.key_slot(k)).collect();
    assert_eq!(slots.len(), 1, "the edge's keys share one slot: {read:?}");
    assert_eq!(front.ok(json!(["SET", read[1], "1700000000"])).await, "OK");
    assert_eq!(front.ok(json!(["SET", read[2], "epoch-1"])).await, "OK");
    assert_eq!(
        front.ok(json!(["MGET", read[0], read[1], read[2]])).await,
        json!([null, "1700000000", "epoch-1"])
    );
    assert_eq!(front.ok(json!(["SET", read[0], "record"])).await, "OK");
    assert_eq!(
        front.ok(json!(["MGET", read[0], read[1], read[2]])).await,
        json!(["record", "1700000000", "epoch-1"])
    );

    // Two keys on two different primaries.
    let a = keys
        .iter()
        .find(|k| owner[*k] == primaries[0].port)
        .unwrap();
    let b = keys
        .iter()
        .find(|k| owner[*k] == primaries[1].port)
        .unwrap();
    let (va, vb) = (format!("v-{a}"), format!("v-{b}"));

    // A pipeline is not atomic: each command goes to its own slot's node, and the one
    // multi-key command spanning slots fails alone.
    let (status, body) = front
        .post(
            "/pipeline",
            json!([
                ["SET", a, "pa"],
                ["SET", b, "pb"],
                ["MGET", a, b],
                ["GET", a],
                ["INCR", b],
                ["GET", b]
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([
            {"result": "OK"},
            {"result": "OK"},
            {"error": CROSSSLOT},
            {"result": "pa"},
            {"error": "ERR value is not an integer or out of range"},
            {"result": "pb"}
        ])
    );
    front.ok(json!(["SET", a, va])).await;
    front.ok(json!(["SET", b, vb])).await;

    // One command over two slots: Redis Cluster's error, and nothing done. The client
    // would have split MGET/DEL/MSET per slot; RENAME goes whole to the node of its
    // first key, which refuses it itself.
    for command in [
        json!(["MGET", a, b]),
        json!(["DEL", a, b]),
        json!(["MSET", a, "x", b, "y"]),
        json!(["RENAME", a, b]),
    ] {
        assert_eq!(
            front.post("/", command.clone()).await,
            (400, json!({"error": CROSSSLOT})),
            "{command}"
        );
    }
    assert_eq!(front.ok(json!(["GET", a])).await, va, "nothing deleted");
    assert_eq!(front.ok(json!(["GET", b])).await, vb, "nothing renamed");

    // A transaction stays in one slot: refused whole, with nothing run, when its
    // commands' keys are in two slots, whichever way they stray.
    let t = format!("{prefix}{{t}}n");
    for transaction in [
        json!([["SET", t, "1"], ["SET", a, "x"]]),
        json!([["SET", t, "1"], ["MGET", a, b]]),
        json!([["SET", t, "1"], ["RENAME", t, a]]),
    ] {
        assert_eq!(
            front.post("/multi-exec", transaction.clone()).await,
            (400, json!({"error": CROSSSLOT})),
            "{transaction}"
        );
        assert_eq!(front.ok(json!(["EXISTS", t])).await, 0, "{transaction}");
    }
    assert_eq!(front.ok(json!(["GET", a])).await, va);
    let (status, body) = front
        .post(
            "/multi-exec",
            json!([["SET", t, "1"], ["INCR", t], ["GET", t], ["DEL", t]]),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!([{"result": "OK"}, {"result": 2}, {"result": "2"}, {"result": 1}])
        )
    );
}

#[tokio::test]
async fn a_read_answers_again_after_its_primary_is_killed_and_the_replica_promoted() {
    let mut cluster = Cluster::start();
    let key = "rest-failover:{f}record";
    let slot = cluster.key_slot(key);
    let topology = cluster.topology(cluster.ports()[0]);
    let victim = topology
        .iter()
        .find(|n| n.primary && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .expect("a primary owns the slot")
        .clone();
    let replica = topology
        .iter()
        .find(|n| n.primary_id.as_deref() == Some(victim.id.as_str()))
        .expect("the primary has a replica")
        .clone();
    // One seed URL and REDIS_CLUSTER=1; the seed is a node that stays up.
    let seed = topology
        .iter()
        .find(|n| n.port != victim.port && n.port != replica.port)
        .unwrap();
    let front = start_front(&cluster, &format!("redis://127.0.0.1:{}", seed.port), true).await;

    assert_eq!(front.ok(json!(["SET", key, "before"])).await, "OK");
    assert_eq!(front.ok(json!(["GET", key])).await, "before");
    // Replication is asynchronous: wait until the replica has the write before the
    // primary dies, or the test would measure lost data instead of failover.
    let started = Instant::now();
    loop {
        let replies = cli_with_input(replica.port, &[], Some(&format!("READONLY\nGET {key}\n")));
        if replies.lines().nth(1) == Some("before") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "replica never got the write: {replies:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    cluster.node(victim.port).kill();
    let killed = Instant::now();
    let (mut unavailable, mut slowest) = (0, Duration::ZERO);
    loop {
        let asked = Instant::now();
        let (status, body) = front.post("/", json!(["GET", key])).await;
        let took = asked.elapsed();
        slowest = slowest.max(took);
        // While the slot has no primary the front says "unavailable", promptly: never
        // a command error, a 500 or a hang.
        assert!(
            took < Duration::from_secs(4),
            "a read took {took:?} during the failover"
        );
        if status == 200 {
            assert_eq!(body, json!({"result": "before"}));
            break;
        }
        assert_eq!(status, 503, "during the failover: {body}");
        unavailable += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no answer 20 s after the primary was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed.elapsed();
    eprintln!(
        "read answered again {} ms after SIGKILL of primary :{} (node timeout 2000 ms); \
         {unavailable} answers of 503 meanwhile; slowest answer {} ms",
        recovered.as_millis(),
        victim.port,
        slowest.as_millis()
    );
    let role = cli(replica.port, &["ROLE"]);
    assert_eq!(
        role.lines().next(),
        Some("master"),
        "the replica :{} was promoted: {role:?}",
        replica.port
    );
    // Writes follow the new primary too.
    assert_eq!(front.ok(json!(["SET", key, "after"])).await, "OK");
    assert_eq!(front.ok(json!(["GET", key])).await, "after");
    assert_eq!(
        cli(replica.port, &["GET", key]).trim(),
        "after",
        "written on the promoted replica"
    );
}
