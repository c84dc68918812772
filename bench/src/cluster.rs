//! Measure 6 (issue 14): the stack scaled out against a throwaway Redis Cluster
//! (3 primaries, 3 replicas; `scripts/bench` starts it with `scripts/cluster.sh`, and
//! HAProxy in front of three origin ports):
//! - refreshes/s with 1 origin and with 3 behind HAProxy, and edge-validated
//!   requests/s with the store read through the REST front on the cluster, each with
//!   the CPU share of every process, to show where the bottleneck moves on this
//!   machine's cores (not linear scaling: everything shares them);
//! - Redis bytes per active session over 100,000 sessions seeded in Postgres and
//!   published by an origin's start-up rebuild, and how long that rebuild took.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{Process, random_hex, wait_healthy};

use crate::stack::{self, EdgeEnv, OriginEnv, psql};
use crate::{Bench, procfs, wrk};

/// Sessions seeded for the memory measure.
const SESSIONS: u64 = 100_000;
/// Store partitions: each has a freshness marker key (`shared::session`).
const PARTITIONS: u64 = 1_024;
/// Users the load runs spread over: as many as the most connections.
const USERS: usize = 64;

/// What `scripts/bench` started for this section.
struct ClusterSettings {
    /// The nodes' URLs, comma-separated: what `REDIS_URL` takes for a cluster.
    urls: String,
    ports: Vec<u16>,
    lb_port: u16,
    /// The ports HAProxy balances over, one per origin.
    origin_ports: Vec<u16>,
    haproxy_pid: u32,
}

impl ClusterSettings {
    fn from_env() -> ClusterSettings {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (run scripts/bench)"))
        };
        let ports = |name: &str| -> Vec<u16> {
            var(name)
                .split_whitespace()
                .map(|p| p.parse().expect("a port"))
                .collect()
        };
        ClusterSettings {
            urls: var("BENCH_CLUSTER_URL"),
            ports: ports("BENCH_CLUSTER_PORTS"),
            lb_port: var("BENCH_LB_PORT").parse().expect("BENCH_LB_PORT"),
            origin_ports: ports("BENCH_LB_ORIGIN_PORTS"),
            haproxy_pid: var("BENCH_HAPROXY_PID").parse().expect("BENCH_HAPROXY_PID"),
        }
    }
}

/// One Redis Cluster node as it is now.
struct Node {
    port: u16,
    pid: u32,
    primary: bool,
}

/// A process a run accounts CPU for, with its whole process tree.
struct Watched {
    name: String,
    pid: u32,
}

/// CPU counters at one instant.
struct Snapshot {
    at: Instant,
    processes: Vec<f64>,
    /// wrk, once reaped.
    children: f64,
    own: f64,
    busy: f64,
    total: f64,
}

impl Snapshot {
    fn take(watched: &[Watched]) -> Snapshot {
        let (busy, total) = procfs::machine_cpu_seconds();
        Snapshot {
            at: Instant::now(),
            processes: watched
                .iter()
                .map(|w| procfs::tree_cpu_seconds(w.pid))
                .collect(),
            children: procfs::reaped_children_cpu_seconds(),
            own: procfs::own_cpu_seconds(),
            busy,
            total,
        }
    }
}

/// Each process's share of the machine's CPU time during a run, in percent of all
/// cores (so the shares and idle add up to 100).
struct Shares {
    parts: Vec<(String, f64)>,
    cores: f64,
}

impl Shares {
    fn between(watched: &[Watched], before: &Snapshot, after: &Snapshot) -> Shares {
        let total = after.total - before.total;
        let pct = |seconds: f64| 100.0 * seconds / total.max(1e-9);
        let mut parts: Vec<(String, f64)> = watched
            .iter()
            .zip(before.processes.iter().zip(&after.processes))
            .map(|(w, (b, a))| (w.name.clone(), pct(a - b)))
            .collect();
        parts.push(("wrk".into(), pct(after.children - before.children)));
        parts.push((
            "bench driver + upstream".into(),
            pct(after.own - before.own),
        ));
        let accounted: f64 = parts.iter().map(|(_, p)| p).sum();
        let busy = pct(after.busy - before.busy);
        parts.push(("other processes".into(), (busy - accounted).max(0.0)));
        parts.push(("idle".into(), 100.0 - busy));
        let wall = (after.at - before.at).as_secs_f64();
        Shares {
            parts,
            cores: total / wall.max(1e-9),
        }
    }

    fn get(&self, name: &str) -> f64 {
        self.parts
            .iter()
            .filter(|(n, _)| n.starts_with(name))
            .map(|(_, p)| p)
            .sum()
    }

    /// One line: the groups that matter, each origin and Redis node listed.
    fn summary(&self) -> String {
        let list = |prefix: &str| {
            self.parts
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(_, p)| format!("{p:.0}"))
                .collect::<Vec<_>>()
                .join("+")
        };
        format!(
            "origins {} %, Postgres {:.0} %, Redis primaries {} %, replicas {} %, REST front {:.0} %, workerd {:.0} %, HAProxy {:.0} %, wrk {:.0} %, other {:.0} %, idle {:.0} %",
            list("origin "),
            self.get("Postgres"),
            list("redis primary"),
            list("redis replica"),
            self.get("REST front"),
            self.get("workerd"),
            self.get("HAProxy"),
            self.get("wrk"),
            self.get("bench driver") + self.get("other"),
            self.get("idle"),
        )
    }

    /// CPU milliseconds per operation at `rate` operations/s, for each group named by
    /// a prefix (several processes of one kind summed).
    fn per_unit(&self, rate: f64, groups: &[&str]) -> String {
        groups
            .iter()
            .map(|g| {
                let ms = self.get(g) / 100.0 * self.cores * 1000.0 / rate.max(1e-9);
                format!("{} {ms:.3}", g.trim().replace("redis ", "Redis "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A Markdown table of every process, for the report's details.
    fn table(&self, title: &str) -> String {
        let mut out = format!(
            "CPU share during {title} (percent of all {:.0} cores' time; `/proc`):\n\n| process | share |\n|---|---:|\n",
            self.cores
        );
        for (name, pct) in &self.parts {
            let _ = writeln!(out, "| {name} | {pct:.1} % |");
        }
        out
    }
}

/// The scale-out section's own stack: a database, the REST front on the cluster, the
/// origins (started one by one), and workerd with the bundle.
struct Scaled {
    env: ClusterSettings,
    database_url: String,
    prefix: String,
    key_file: PathBuf,
    edge_secret: String,
    lb_url: String,
    origins: Vec<Process>,
    rest: Process,
    rest_url: String,
    workerd: Option<(Process, String)>,
    postmaster: u32,
}

impl Scaled {
    fn origin_env(&self, port: u16) -> OriginEnv<'_> {
        OriginEnv {
            database_url: &self.database_url,
            redis_url: &self.env.urls,
            prefix: &self.prefix,
            key_file: &self.key_file,
            edge_secret: &self.edge_secret,
            port,
        }
    }

    /// Starts the next origin on its HAProxy port, and waits until HAProxy sends it
    /// requests: its health checks run every 500 ms and one success brings it up.
    async fn add_origin(&mut self, bench: &Bench) {
        let port = self.env.origin_ports[self.origins.len()];
        let mut command = stack::origin_command(&bench.settings, &self.origin_env(port));
        // Every origin is reached through HAProxy, as in scripts/scale-out.
        command.env(
            "ORIGIN_AUTHORITY",
            format!("127.0.0.1:{}", self.env.lb_port),
        );
        let mut origin = Process::spawn("origin", command);
        wait_healthy(
            &mut origin,
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(60),
        )
        .await;
        self.origins.push(origin);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    fn watched(&self) -> Vec<Watched> {
        let mut watched: Vec<Watched> = self
            .origins
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Some(Watched {
                    name: format!("origin {}", i + 1),
                    pid: p.pid()?,
                })
            })
            .collect();
        watched.push(Watched {
            name: "Postgres (every backend)".into(),
            pid: self.postmaster,
        });
        for node in nodes(&self.env) {
            watched.push(Watched {
                name: format!(
                    "redis {} :{}",
                    if node.primary { "primary" } else { "replica" },
                    node.port
                ),
                pid: node.pid,
            });
        }
        if let Some(pid) = self.rest.pid() {
            watched.push(Watched {
                name: "REST front".into(),
                pid,
            });
        }
        if let Some(pid) = self.workerd.as_ref().and_then(|(p, _)| p.pid()) {
            watched.push(Watched {
                name: "workerd".into(),
                pid,
            });
        }
        watched.push(Watched {
            name: "HAProxy".into(),
            pid: self.env.haproxy_pid,
        });
        watched
    }
}

/// Every node's role and pid, from `INFO`.
fn nodes(env: &ClusterSettings) -> Vec<Node> {
    env.ports
        .iter()
        .map(|&port| {
            let info = redis_cli(port, &["info", "server"]);
            let replication = redis_cli(port, &["info", "replication"]);
            Node {
                port,
                pid: field(&info, "process_id")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no process_id from the node on {port}")),
                primary: field(&replication, "role") == Some("master"),
            }
        })
        .collect()
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(
        output.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `name:value` from `INFO` output.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("the cluster node on {port}: {e}"))
}

fn used_memory(port: u16) -> i64 {
    let info = redis_cli(port, &["info", "memory"]);
    field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .expect("used_memory")
}

async fn dbsize(port: u16) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(&mut node(port).await)
        .await
        .unwrap()
}

/// The session keys under `prefix` on the node on `port`, with `MEMORY USAGE` of each.
async fn session_memory(port: u16, prefix: &str) -> (u64, u64) {
    let mut conn = node(port).await;
    let pattern = format!("{prefix}sess:*");
    let mut cursor = 0u64;
    let (mut keys, mut bytes) = (0u64, 0u64);
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.cmd("MEMORY").arg("USAGE").arg(key);
            }
            let usage: Vec<Option<u64>> = pipe.query_async(&mut conn).await.unwrap();
            keys += usage.iter().filter(|u| u.is_some()).count() as u64;
            bytes += usage.into_iter().flatten().sum::<u64>();
        }
        cursor = next;
        if cursor == 0 {
            return (keys, bytes);
        }
    }
}

impl Bench {
    pub(crate) async fn cluster(&mut self) {
        let env = ClusterSettings::from_env();
        println!(
            "== scale-out: a Redis Cluster of {} nodes, origins behind HAProxy (CPU shares in % of all cores)",
            env.ports.len()
        );
        let database = format!("bench_cluster_{}", random_hex());
        psql(
            &self.settings.admin_url,
            &format!("create database {database}"),
        );
        let database_url = self
            .settings
            .admin_url
            .rsplit_once('/')
            .unwrap()
            .0
            .to_string()
            + "/"
            + &database;
        let postmaster = procfs::postmaster_pid(&self.db).await;
        let (rest, rest_url) = stack::start_rest(&self.settings, &env.urls).await;
        let lb_url = format!("http://127.0.0.1:{}", env.lb_port);
        let mut scaled = Scaled {
            database_url,
            prefix: format!("benchc{}:", random_hex()),
            key_file: self.dir.0.join("cluster-signing.key"),
            edge_secret: random_hex().repeat(4),
            lb_url,
            origins: Vec::new(),
            rest,
            rest_url,
            workerd: None,
            postmaster,
            env,
        };
        scaled.add_origin(self).await;
        let (workerd, edge_url) = stack::serve_bundle(
            &self.settings,
            &self.dir.0,
            "workerd-cluster.capnp",
            &EdgeEnv {
                origin_url: &scaled.lb_url,
                upstream_url: &self.stack.upstream_url,
                rest_url: &scaled.rest_url,
                prefix: &scaled.prefix,
                edge_secret: &scaled.edge_secret,
            },
        )
        .await;
        scaled.workerd = Some((workerd, edge_url.clone()));
        // One user per connection: a user's keys share one slot, so a single user's
        // sessions would all land on one primary; real traffic spreads over users.
        let users: Vec<String> = (0..USERS).map(|i| format!("cluster-user-{i}")).collect();
        for user in &users {
            let (status, body) = self
                .post(
                    &format!("{}/auth/register", scaled.lb_url),
                    serde_json::json!({"username": user, "password": crate::PASSWORD}),
                )
                .await;
            assert_eq!(status, 201, "register through HAProxy: {body}");
        }

        let mut refresh_rates = Vec::new();
        for origins in [1usize, 3] {
            while scaled.origins.len() < origins {
                scaled.add_origin(self).await;
            }
            let label = if origins == 1 {
                "1 origin"
            } else {
                "3 origins"
            };
            for connections in [16u32, 64] {
                let mut starts = Vec::new();
                for user in users.iter().take(connections as usize) {
                    starts.push(self.login_at(&scaled.lb_url, user).await.1);
                }
                let file = self.file(
                    &format!("cluster-refresh-{origins}-{connections}.txt"),
                    &starts,
                );
                psql(&scaled.database_url, "analyze");
                let wal_before = self.wal_bytes().await;
                let (run, shares) = self.measured(&scaled, |bench| {
                    bench.wrk(
                        format!("{}/auth/refresh", scaled.lb_url),
                        "refresh.lua",
                        connections,
                        connections,
                        vec![("BENCH_TOKENS", file.clone())],
                    )
                });
                assert_eq!(run.errors, 0, "cluster refreshes failed: {}", run.extra);
                let wal = self.wal_bytes().await - wal_before;
                refresh_rates.push(run.rate());
                self.row(
                    "cluster",
                    format!(
                        "refreshes/s, {label} via HAProxy, {connections} connections (p50/p99)"
                    ),
                    run.figure(),
                    "",
                    None,
                );
                self.row(
                    "cluster",
                    format!("CPU share, refreshes, {label}, {connections} connections"),
                    shares.summary(),
                    "",
                    None,
                );
                self.row(
                    "cluster",
                    format!("CPU ms per refresh, {label}, {connections} connections"),
                    format!(
                        "{}; Postgres WAL {:.0} B",
                        shares.per_unit(
                            run.rate(),
                            &[
                                "origin ",
                                "Postgres",
                                "redis primary",
                                "redis replica",
                                "HAProxy"
                            ]
                        ),
                        wal as f64 / run.requests.max(1) as f64
                    ),
                    "",
                    None,
                );
                self.notes.push(shares.table(&format!(
                    "refreshes with {label} behind HAProxy, {connections} connections ({:.0}/s)",
                    run.rate()
                )));
            }
            // The edge: one valid token, the session read through the REST front on the
            // cluster (one MGET in one slot), forwarded to the do-nothing upstream.
            let mut tokens = Vec::new();
            for user in &users {
                tokens.push(self.login_at(&scaled.lb_url, user).await.0);
            }
            let warm = self.file(&format!("cluster-warm-{origins}.txt"), &tokens);
            let (run, shares) = self.measured(&scaled, |bench| {
                bench.wrk(
                    format!("{edge_url}/api/bench"),
                    "get.lua",
                    8,
                    2,
                    vec![("BENCH_TOKENS", warm.clone())],
                )
            });
            assert_eq!(
                run.errors, 0,
                "the edge answered errors against the cluster"
            );
            self.row(
                "cluster",
                format!("edge-validated requests/s, store on the cluster, {label} (p50/p99)"),
                run.figure(),
                "",
                None,
            );
            self.row(
                "cluster",
                format!("CPU share, edge-validated, {label}"),
                shares.summary(),
                "",
                None,
            );
            self.row(
                "cluster",
                format!("CPU ms per edge-validated request, {label}"),
                shares.per_unit(
                    run.rate(),
                    &["workerd", "REST front", "redis primary", "redis replica"],
                ),
                "",
                None,
            );
            self.notes.push(shares.table(&format!(
                "edge-validated requests, store on the cluster, {label} running ({:.0}/s)",
                run.rate()
            )));
        }
        if let [one_16, one_64, three_16, three_64] = refresh_rates[..] {
            self.row(
                "cluster",
                "refreshes, 3 origins ÷ 1 origin (16 / 64 connections)",
                format!("{:.2}× / {:.2}×", three_16 / one_16, three_64 / one_64),
                "",
                None,
            );
        }

        self.cluster_memory(&mut scaled).await;
    }

    /// Postgres's WAL position, in bytes (the whole server).
    async fn wal_bytes(&self) -> i64 {
        sqlx::query_scalar("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Logs in through `base` and returns (access token, refresh token).
    async fn login_at(&self, base: &str, username: &str) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("{base}/auth/login"),
                serde_json::json!({"username": username, "password": crate::PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "login: {body}");
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// Runs `load` (one wrk run) and returns it with every process's CPU share.
    fn measured(
        &self,
        scaled: &Scaled,
        load: impl FnOnce(&Bench) -> wrk::Run,
    ) -> (wrk::Run, Shares) {
        let watched = scaled.watched();
        let before = Snapshot::take(&watched);
        let run = load(self);
        let after = Snapshot::take(&watched);
        let shares = Shares::between(&watched, &before, &after);
        println!("    CPU: {}", shares.summary());
        (run, shares)
    }

    /// Redis bytes per active session over [`SESSIONS`] sessions seeded in Postgres and
    /// published by an origin's start-up rebuild onto an empty cluster.
    async fn cluster_memory(&mut self, scaled: &mut Scaled) {
        println!(
            "== scale-out: Redis memory per session ({SESSIONS} sessions, rebuilt from Postgres)"
        );
        // Nothing writes to the cluster from here on but the origin started below.
        scaled.workerd = None;
        scaled.origins.clear();
        let nodes = nodes(&scaled.env);
        for n in nodes.iter().filter(|n| n.primary) {
            redis_cli(n.port, &["flushall", "sync"]);
        }
        // The replicas apply the flush; each node's baseline is taken once it has.
        for _ in 0..100 {
            let mut total = 0;
            for n in &nodes {
                total += dbsize(n.port).await;
            }
            if total == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        psql(
            &scaled.database_url,
            "truncate app_user, session, refresh_token, store_outbox, security_event",
        );
        // What a live session row needs (migrations/): its user, a scope, an absolute
        // end a month away and a current access token (access_expires_at in the
        // future), not revoked. The password hash is never read here.
        let seeded = Instant::now();
        psql(
            &scaled.database_url,
            &format!(
                "insert into app_user (id, username, password_hash) \
                   select gen_random_uuid(), 'seed-' || i, 'seeded, no password' \
                   from generate_series(1, {SESSIONS}) i; \
                 insert into session (id, user_id, scope, user_agent, ip, expires_at, access_expires_at) \
                   select gen_random_uuid(), id, 'profile', 'Mozilla/5.0 (X11; Linux x86_64)', '203.0.113.7', \
                          now() + interval '30 days', now() + interval '15 minutes' \
                   from app_user; \
                 analyze"
            ),
        );
        println!(
            "    seeded {SESSIONS} users and sessions in {:.1} s",
            seeded.elapsed().as_secs_f64()
        );
        let mut before = Vec::new();
        for n in &nodes {
            before.push(used_memory(n.port));
        }
        // A fresh prefix on an empty cluster: the new origin's watcher finds every
        // partition stale and rebuilds them all from Postgres at start.
        scaled.prefix = format!("benchm{}:", random_hex());
        let started = Instant::now();
        scaled.add_origin_no_wait(self);
        let primaries: Vec<u16> = nodes.iter().filter(|n| n.primary).map(|n| n.port).collect();
        let deadline = started + Duration::from_secs(900);
        loop {
            let mut keys = 0;
            for &port in &primaries {
                keys += dbsize(port).await;
            }
            if keys >= SESSIONS + PARTITIONS {
                break;
            }
            let origin = scaled.origins.last_mut().unwrap();
            assert!(
                !origin.exited() && Instant::now() < deadline,
                "the rebuild did not publish {SESSIONS} sessions ({keys} keys so far):\n{}",
                origin.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed().as_secs_f64();
        // DBSIZE counts every key: confirm by the records themselves, which the last
        // few writes may still be reaching.
        let (mut per_shard, mut keys, mut bytes);
        let mut tries = 0;
        loop {
            (per_shard, keys, bytes) = (Vec::new(), 0u64, 0u64);
            for &port in &primaries {
                let (k, b) = session_memory(port, &scaled.prefix).await;
                per_shard.push((port, k));
                keys += k;
                bytes += b;
            }
            tries += 1;
            if keys == SESSIONS || tries == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            keys, SESSIONS,
            "session records on the primaries once the rebuild had written its keys"
        );
        let mut deltas = Vec::new();
        for (n, b) in nodes.iter().zip(&before) {
            deltas.push((n, used_memory(n.port) - b));
        }
        let primary_delta: i64 = deltas
            .iter()
            .filter(|(n, _)| n.primary)
            .map(|(_, d)| d)
            .sum();
        let replica_delta: i64 = deltas
            .iter()
            .filter(|(n, _)| !n.primary)
            .map(|(_, d)| d)
            .sum();
        let per_session = bytes as f64 / keys as f64;
        println!(
            "    rebuild: {keys} records in {took:.1} s; MEMORY USAGE {per_session:.0} B each; used_memory +{primary_delta} B on the primaries, +{replica_delta} B on the replicas"
        );
        self.row(
            "cluster",
            format!("Redis bytes per active session, MEMORY USAGE (all {keys} records)"),
            format!("{per_session:.0} B"),
            "",
            None,
        );
        let shard_text = deltas
            .iter()
            .filter(|(n, _)| n.primary)
            .map(|(n, d)| {
                let sessions = per_shard
                    .iter()
                    .find(|(p, _)| *p == n.port)
                    .map_or(0, |(_, k)| *k);
                format!(
                    "{:.0} B ({sessions} sessions)",
                    *d as f64 / sessions.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.row(
            "cluster",
            "used_memory growth per session, each primary (replicas: the same again)",
            format!(
                "{:.0} B overall; {shard_text}; replicas {:.0} B",
                primary_delta as f64 / keys as f64,
                replica_delta as f64 / keys as f64
            ),
            "",
            None,
        );
        self.row(
            "cluster",
            format!("rebuild of {keys} sessions from Postgres at an origin's start"),
            format!("{took:.1} s ({:.0} sessions/s)", keys as f64 / took),
            "",
            None,
        );
        self.notes.push(format!(
            "Memory measure: {keys} sessions on {} primaries (per primary: {}); MEMORY USAGE summed over every record: {bytes} B; used_memory grew by {primary_delta} B on the primaries and {replica_delta} B on the replicas (the {PARTITIONS} partition markers included, about 0.1 MB). The rebuild's time runs from the origin's spawn to the moment DBSIZE summed over the primaries reached {SESSIONS} records + {PARTITIONS} markers.",
            primaries.len(),
            per_shard
                .iter()
                .map(|(p, k)| format!(":{p} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

impl Scaled {
    /// Starts the next origin without waiting for it: the memory measure times its
    /// start-up rebuild from the spawn.
    fn add_origin_no_wait(&mut self, bench: &Bench) {
        let port = self.env.origin_ports[self.origins.len()];
        let command = stack::origin_command(&bench.settings, &self.origin_env(port));
        self.origins.push(Process::spawn("origin", command));
    }
}
