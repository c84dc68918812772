//! Starts the whole stack for one test, on free ports, and stops it on drop:
//! the REST front (`redis-rest`), the origin (with its Postgres connection going
//! through a [`TcpProxy`] the test can cut; or several behind HAProxy, see
//! [`Options::origins`] and [`cluster`]), a recording proxy standing in for the
//! upstream API, and the edge under `wrangler dev`.
//!
//! Binaries come from `target/debug` (the test command builds them first) and
//! `node_modules/.bin/wrangler` (installed by `scripts/build-edge`); the edge bundle
//! from `edge/build`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod hostile;
pub mod throwaway;
pub use throwaway::{ThrowawayPostgres, ThrowawayRedis, rss_kib};

pub const ISSUER: &str = "https://auth.e2e.test";
pub const AUDIENCE: &str = "api.e2e.test";
pub const REST_TOKEN: &str = "e2e-rest-token";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A port on 127.0.0.1 that nothing listens on now, for a server a test starts.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), not by binding
/// port 0. Tests leave these ports unbound for seconds: before a server starts (the
/// origin is started against a Redis that comes later) and while one restarts on the
/// same port. A port from the ephemeral range can meanwhile become the source port of
/// any outgoing connection on the machine, or another test's `bind(0)` can be handed
/// it, and the server then cannot bind, or a sibling's server answers in its place.
/// Below that range only a test's own choice puts a socket on it. Each port is handed
/// out once per process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // Ports from 10,000 up: the well-known services' (5432, 6379, 8787, 9090) stay clear.
    let (low, high) = (10_000, lowest_ephemeral.max(12_000));
    for _ in 0..1_000 {
        let port = low + random_below(u64::from(high - low)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between {low} and {high} after 1,000 tries");
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pseudo-random number below `n` (test pacing only).
pub fn random_below(n: u64) -> u64 {
    u64::from_str_radix(&random_hex(), 16).unwrap() % n
}

/// GET /api/me through the edge: the status, or 0 when the request itself failed.
pub async fn me_status(http: &reqwest::Client, edge: &str, token: &str) -> u16 {
    match http
        .get(format!("{edge}/api/me"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A child process whose output is kept, killed on drop with every process it
/// started (its own process group: `wrangler dev` starts workerd and esbuild, which
/// would otherwise outlive it).
pub struct Process {
    pub name: &'static str,
    child: Option<Child>,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(name: &'static str, mut command: Command) -> Process {
        use std::os::unix::process::CommandExt as _;
        let mut child = command
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .map(|mut stream| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        })
        .into();
        Process {
            name,
            child: Some(child),
            log,
            readers,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// SIGKILL to the whole process group, then reaps the child.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's process group with a valid signal.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            // What it wrote last may still be in the pipes: read them to their end.
            // Everything in the group is dead, so they end at once, unless a process
            // left the group holding one; that one is not waited for past 5 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.readers.clear();
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `url` answers 200, or panics with the process's log.
pub async fn wait_healthy(process: &mut Process, url: &str, timeout: Duration) {
    if !became_healthy(process, url, timeout).await {
        panic!(
            "{} did not become healthy at {url}:\n{}",
            process.name,
            process.log()
        );
    }
}

/// Whether `url` answers 200 within `timeout`; false as soon as the process exits.
pub async fn became_healthy(process: &mut Process, url: &str, timeout: Duration) -> bool {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return true;
        }
        if process.exited() || started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP relay the test can cut, to take a dependency away from a process without
/// touching the shared server: `set_up(false)` drops every relayed connection and
/// refuses new ones, as a crashed or unreachable server would.
pub struct TcpProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl TcpProxy {
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicUsize::new(0));
        let (up2, generation2) = (up.clone(), generation.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up2.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed at once
                    }
                    let (up, generation) = (up2.clone(), generation2.clone());
                    let born = generation.load(Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                        let cut = async {
                            while up.load(Ordering::SeqCst)
                                && generation.load(Ordering::SeqCst) == born
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        };
                        tokio::select! { _ = relay => {}, _ = cut => {} }
                    });
                }
            });
        });
        TcpProxy {
            port,
            up,
            generation,
        }
    }

    /// Cuts or restores the link. Returns once every relayed connection has seen a
    /// cut (relays poll every 50 ms), so the next request cannot use an old one.
    pub fn set_up(&self, up: bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.up.store(up, Ordering::SeqCst);
        if !up {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One request the recording upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The upstream API as the edge sees it: records each request, then relays it to the
/// origin (which serves `/api/me`) and returns the origin's answer.
pub struct Recorder {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    target: Arc<Mutex<String>>,
}

impl Recorder {
    /// Listens at once; relays to the origin set by [`Recorder::relay_to`] (the origin
    /// is started knowing this recorder's address, as its `UPSTREAM_AUTHORITY`).
    pub fn start() -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let target: Arc<Mutex<String>> = Arc::default();
        let (seen2, target2) = (seen.clone(), target.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = reqwest::Client::new();
                let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                    let (seen, http, target) = (seen2.clone(), http.clone(), target2.clone());
                    async move {
                        let origin = target.lock().unwrap().clone();
                        let (parts, body) = request.into_parts();
                        let headers: Vec<(String, String)> = parts
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = axum::body::to_bytes(body, 1 << 20)
                            .await
                            .unwrap_or_default();
                        seen.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.path().into(),
                            headers: headers.clone(),
                            body: body.to_vec(),
                        });
                        let mut relay =
                            http.request(parts.method.clone(), format!("{origin}{}", parts.uri));
                        for (name, value) in &headers {
                            if name != "host" && name != "content-length" {
                                relay = relay.header(name, value);
                            }
                        }
                        match relay.body(body).send().await {
                            Ok(r) => {
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                (status, [("content-type", "application/json")], text)
                            }
                            Err(_) => (
                                reqwest::StatusCode::BAD_GATEWAY,
                                [("content-type", "application/json")],
                                "{}".into(),
                            ),
                        }
                    }
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        Recorder { port, seen, target }
    }

    pub fn relay_to(&self, origin: &str) {
        *self.target.lock().unwrap() = origin.to_string();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One push of the origin to the edge's KV sync, as the gate saw it.
#[derive(Clone, Debug)]
pub struct Push {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the gate let it through.
    pub delivered: bool,
}

/// Stands between the origin and the edge's `POST /__edge/kv`: relays each push,
/// keeps a copy, and while closed answers 503 without relaying, as an unreachable edge
/// would. A kept push can be sent again later, as a retry or a replay.
pub struct PushGate {
    pub port: u16,
    open: Arc<AtomicBool>,
    pub pushes: Arc<Mutex<Vec<Push>>>,
    target: Arc<Mutex<String>>,
}

impl PushGate {
    pub fn start() -> PushGate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let pushes: Arc<Mutex<Vec<Push>>> = Arc::default();
        let target: Arc<Mutex<String>> = Arc::default();
        let (open2, pushes2, target2) = (open.clone(), pushes.clone(), target.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = reqwest::Client::new();
                let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                    let (open, pushes, target, http) = (
                        open2.clone(),
                        pushes2.clone(),
                        target2.clone(),
                        http.clone(),
                    );
                    async move {
                        let (parts, body) = request.into_parts();
                        let headers: Vec<(String, String)> = parts
                            .headers
                            .iter()
                            .filter(|(n, _)| *n != "host" && *n != "content-length")
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = axum::body::to_bytes(body, 1 << 22)
                            .await
                            .unwrap_or_default()
                            .to_vec();
                        let delivered = open.load(Ordering::SeqCst);
                        pushes.lock().unwrap().push(Push {
                            headers: headers.clone(),
                            body: body.clone(),
                            delivered,
                        });
                        if !delivered {
                            return reqwest::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let url = target.lock().unwrap().clone();
                        let mut relay = http.post(url).body(body);
                        for (name, value) in &headers {
                            relay = relay.header(name, value);
                        }
                        match relay.send().await {
                            Ok(r) => r.status(),
                            Err(_) => reqwest::StatusCode::BAD_GATEWAY,
                        }
                    }
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        PushGate {
            port,
            open,
            pushes,
            target,
        }
    }

    /// Closed: pushes get 503 and are not relayed (but are kept).
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().unwrap().clone()
    }

    /// Sends a kept push to the edge again, exactly as the origin signed it.
    pub async fn resend(&self, push: &Push) -> u16 {
        let url = self.target.lock().unwrap().clone();
        let mut request = reqwest::Client::new().post(url).body(push.body.clone());
        for (name, value) in &push.headers {
            request = request.header(name, value);
        }
        request
            .send()
            .await
            .expect("edge reachable")
            .status()
            .as_u16()
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("e2e-{tag}-{}", random_hex()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings of a stack that tests may change.
pub struct Options {
    pub session_store: &'static str,
    pub store_timeout_ms: u64,
    pub rest_delay_ms: u64,
    /// Redis for the origin and the REST front (a [`ThrowawayRedis`] a test kills);
    /// default `TEST_REDIS_URL`.
    pub redis_url: Option<String>,
    /// The Postgres server the test database is created in (a [`ThrowawayPostgres`] a
    /// test restarts); default `TEST_DATABASE_URL`.
    pub database_admin_url: Option<String>,
    /// Extra environment of the origin (e.g. `REFRESH_GRACE_SECS`).
    pub origin_env: Vec<(&'static str, String)>,
    /// With the KV store: the origin's pushes go through a [`PushGate`] the test holds.
    pub kv_gate: bool,
    /// Extra vars of the edge (e.g. `PUBLIC_PATHS`), replacing the defaults of the same name.
    pub edge_vars: Vec<(&'static str, String)>,
    /// How many origins (default 1). More than one: they share the database, Redis and
    /// signing key, and the edge (and the recorder) reach them through HAProxy
    /// ([`cluster::LoadBalancer`]), so [`Stack::origin`] is the load balancer's URL.
    pub origins: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session_store: "upstash",
            store_timeout_ms: 1000,
            rest_delay_ms: 0,
            redis_url: None,
            database_admin_url: None,
            origin_env: Vec::new(),
            kv_gate: false,
            edge_vars: Vec::new(),
            origins: 1,
        }
    }
}

pub struct Stack {
    pub edge: String,
    /// With [`Options::origins`] > 1: HAProxy in front of the origins.
    pub load_balancer: Option<cluster::LoadBalancer>,
    /// Origins 1.. of [`Options::origins`] (origin 0 is [`Stack::origin_process`]).
    pub more_origins: Vec<Process>,
    /// Each origin's own URL, origin 0 first (one origin: the same as [`Stack::origin`]).
    pub origin_urls: Vec<String>,
    /// With `Options::kv_gate`: the gate between the origin and the edge's KV sync.
    pub kv_gate: Option<PushGate>,
    pub origin: String,
    pub prefix: String,
    pub edge_secret: String,
    pub key_file: PathBuf,
    pub postgres: TcpProxy,
    pub recorder: Recorder,
    pub http: reqwest::Client,
    pub rest_port: u16,
    rest: Process,
    pub origin_process: Process,
    pub wrangler: Process,
    database: String,
    dir: TempDir,
    options: Options,
    redis_url: String,
    admin_url: String,
    origin_command: Vec<(String, String)>,
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        let root = repo_root();
        let bin = |name: &str| {
            let path = root.join("target/debug").join(name);
            assert!(
                path.exists(),
                "{} missing: run `cargo build -p origin -p redis-rest` (scripts/test does)",
                path.display()
            );
            path
        };
        let wrangler_bin = root.join("node_modules/.bin/wrangler");
        assert!(
            wrangler_bin.exists() && root.join("edge/build/index.js").exists(),
            "run scripts/build-edge first (scripts/test does)"
        );
        let dir = TempDir::new("stack");
        let prefix = format!("e2e{}:", random_hex());
        let edge_secret = format!(
            "{}{}{}{}",
            random_hex(),
            random_hex(),
            random_hex(),
            random_hex()
        );
        let redis_url = options
            .redis_url
            .clone()
            .unwrap_or_else(|| env_or("TEST_REDIS_URL", "redis://127.0.0.1:6379"));

        // A fresh database, reached through a proxy the test can cut.
        let admin = options.database_admin_url.clone().unwrap_or_else(|| {
            env_or(
                "TEST_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )
        });
        let database = format!("e2e_{}", random_hex());
        psql(&admin, &format!("create database {database}"));
        let (host_port, _) = admin
            .trim_start_matches("postgres://")
            .split_once('/')
            .unwrap();
        let host_port = host_port.rsplit('@').next().unwrap();
        let pg_addr: SocketAddr = host_port
            .replace("localhost", "127.0.0.1")
            .parse()
            .expect("TEST_DATABASE_URL host:port");
        let postgres = TcpProxy::start(pg_addr);
        let database_url = format!("postgres://postgres@127.0.0.1:{}/{database}", postgres.port);

        let rest_port = free_port();
        let rest = spawn_rest(
            &bin("redis-rest"),
            rest_port,
            &redis_url,
            options.rest_delay_ms,
        );

        let recorder = Recorder::start();
        let origin_port = free_port();
        let origin = format!("http://127.0.0.1:{origin_port}");
        let key_file = dir.0.join("dev.key");
        let mut origin_command: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_PREFIX", prefix.clone()),
            ("LISTEN_ADDR", format!("127.0.0.1:{origin_port}")),
            // Every origin gets its own operations port: tests run side by side.
            ("OPS_LISTEN_ADDR", format!("127.0.0.1:{}", free_port())),
            ("SIGNING_KEY_FILE", key_file.display().to_string()),
            ("EDGE_SECRET", edge_secret.clone()),
            ("ISSUER", ISSUER.into()),
            ("AUDIENCE", AUDIENCE.into()),
            ("LOG_FORMAT", "json".into()),
            // The suites register and log in many users from one address.
            ("REGISTRATIONS_PER_ADDRESS", "100000".into()),
            ("LOGIN_ATTEMPTS_PER_ADDRESS", "100000".into()),
            // The origin serves the API behind the recorder: the edge's proofs for
            // `/api/*` name the recorder's address.
            ("UPSTREAM_AUTHORITY", format!("127.0.0.1:{}", recorder.port)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // With the KV store the origin pushes to the edge through a relay, so the edge
        // may move to another port (below) without restarting the origin.
        let kv_relay = (options.session_store == "kv").then(PushGate::start);
        if let Some(relay) = &kv_relay {
            origin_command.push((
                "EDGE_KV_SYNC_URL".into(),
                format!("http://127.0.0.1:{}/__edge/kv", relay.port),
            ));
        }
        for (name, value) in &options.origin_env {
            origin_command.retain(|(k, _)| k != name);
            origin_command.push((name.to_string(), value.clone()));
        }
        // Several origins: HAProxy starts first, since the origins must know its
        // address (their ORIGIN_AUTHORITY: the edge's proofs name the load balancer).
        let origin_count = options.origins.max(1);
        let origin_ports: Vec<u16> = std::iter::once(origin_port)
            .chain((1..origin_count).map(|_| free_port()))
            .collect();
        let mut load_balancer =
            (origin_count > 1).then(|| cluster::LoadBalancer::start(&origin_ports));
        if let Some(lb) = &load_balancer {
            origin_command.retain(|(k, _)| k != "ORIGIN_AUTHORITY");
            origin_command.push(("ORIGIN_AUTHORITY".into(), lb.authority()));
        }
        // Origin 0 first: it creates the signing key file the others then share.
        let (origin_process, first) = start_origin(&mut origin_command, origin).await;
        let mut origin_urls = vec![first];
        let mut more_origins = Vec::new();
        for port in &origin_ports[1..] {
            let mut command = origin_command.clone();
            set_origin_ports(&mut command, *port);
            let (process, url) =
                start_origin(&mut command, format!("http://127.0.0.1:{port}")).await;
            more_origins.push(process);
            origin_urls.push(url);
        }
        if let Some(lb) = &mut load_balancer {
            // An origin that had to move off a taken port: point HAProxy at it.
            for (i, url) in origin_urls.iter().enumerate() {
                let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
                if lb.servers[i] != port {
                    lb.set_server_port(i, port);
                }
            }
            if let Err(e) = lb
                .wait_states(&vec![true; origin_count], Duration::from_secs(10))
                .await
            {
                let mut logs = format!("--- origin 0 ---\n{}", origin_process.log());
                for (i, process) in more_origins.iter().enumerate() {
                    logs += &format!("\n--- origin {} ---\n{}", i + 1, process.log());
                }
                panic!("{e}\n{logs}\n--- haproxy ---\n{}", lb.log());
            }
        }
        let origin = load_balancer
            .as_ref()
            .map_or_else(|| origin_urls[0].clone(), |lb| lb.url());

        recorder.relay_to(&origin);
        let mut vars = vec![
            ("ORIGIN_URL", origin.clone()),
            (
                "UPSTREAM_URL",
                format!("http://127.0.0.1:{}", recorder.port),
            ),
            ("ISSUER", ISSUER.into()),
            ("AUDIENCE", AUDIENCE.into()),
            ("SESSION_STORE", options.session_store.into()),
            ("UPSTASH_URL", format!("http://127.0.0.1:{rest_port}")),
            ("UPSTASH_TOKEN", REST_TOKEN.into()),
            ("EDGE_SECRET", edge_secret.clone()),
            ("KEY_PREFIX", prefix.clone()),
            ("STORE_TIMEOUT_MS", options.store_timeout_ms.to_string()),
        ];
        for (name, value) in &options.edge_vars {
            vars.retain(|(k, _)| k != name);
            vars.push((name, value.clone()));
        }
        // As with the origin: a port may be taken between `free_port` and the bind
        // (workerd then exits with "Address already in use"), so try other ports.
        let mut attempts = 0;
        let (wrangler, edge) = loop {
            attempts += 1;
            let edge = format!("http://127.0.0.1:{}", free_port());
            if let Some(relay) = &kv_relay {
                *relay.target.lock().unwrap() = format!("{edge}/__edge/kv");
            }
            let mut command = Command::new(&wrangler_bin);
            command
                .current_dir(&root)
                .args([
                    "dev",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    edge.rsplit(':').next().unwrap(),
                ])
                .args(["--inspector-port", &free_port().to_string(), "--persist-to"])
                .arg(dir.0.join("wrangler-state"))
                .env("WRANGLER_SEND_METRICS", "false")
                .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
                .env("WRANGLER_LOG_PATH", dir.0.join("wrangler-logs"))
                .env("NO_COLOR", "1");
            for (name, value) in &vars {
                command.arg("--var").arg(format!("{name}:{value}"));
            }
            let mut wrangler = Process::spawn("wrangler dev", command);
            // The JWKS passes through the edge to the origin: healthy means both are up.
            let url = format!("{edge}/.well-known/jwks.json");
            if became_healthy(&mut wrangler, &url, Duration::from_secs(90)).await {
                break (wrangler, edge);
            }
            wrangler.stop();
            if attempts < 4 && wrangler.log().contains("Address already in use") {
                continue;
            }
            panic!(
                "wrangler dev did not become healthy at {url}:\n{}",
                wrangler.log()
            );
        };
        // Dropping an unrequested relay leaves its thread relaying: only the handle goes.
        let kv_gate = if options.kv_gate { kv_relay } else { None };

        Stack {
            edge,
            load_balancer,
            more_origins,
            origin_urls,
            kv_gate,
            origin,
            prefix,
            edge_secret,
            key_file,
            postgres,
            recorder,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            rest_port,
            rest,
            origin_process,
            wrangler,
            database,
            dir,
            options,
            redis_url,
            admin_url: admin,
            origin_command,
        }
    }

    /// Kills the origin with SIGKILL: no graceful shutdown, in-memory retries lost.
    pub fn kill_origin(&mut self) {
        self.origin_process.stop();
    }

    /// SIGKILLs origin `index` (0 is [`Stack::origin_process`]), with no graceful
    /// shutdown; behind the load balancer it stays down until the test restarts it.
    pub fn kill_origin_at(&mut self, index: usize) {
        match index {
            0 => self.origin_process.stop(),
            i => self.more_origins[i - 1].stop(),
        }
    }

    /// Starts the origin again, same port and settings, and waits until it is healthy.
    pub async fn restart_origin(&mut self) {
        self.origin_process.stop();
        self.origin_process = spawn_origin(&self.origin_command);
        wait_healthy(
            &mut self.origin_process,
            &format!("{}/healthz", self.origin_urls[0]),
            Duration::from_secs(30),
        )
        .await;
    }

    /// Starts the origin again with `changes` to its environment (kept for later
    /// restarts), and waits until it is healthy.
    pub async fn restart_origin_with(&mut self, changes: &[(&str, String)]) {
        for (name, value) in changes {
            self.origin_command.retain(|(k, _)| k != name);
            self.origin_command.push((name.to_string(), value.clone()));
        }
        self.restart_origin().await;
    }

    /// The origin's process id, while it runs.
    pub fn origin_pid(&self) -> Option<u32> {
        self.origin_process.pid()
    }

    /// The test database's URL, straight to the server (not through the proxy).
    pub fn database_url(&self) -> String {
        let (base, _) = self.admin_url.rsplit_once('/').unwrap();
        format!("{base}/{}", self.database)
    }

    /// Runs one SQL statement on the test database (straight to the server) and
    /// returns its rows, one per line, fields separated by `|`.
    pub fn sql(&self, query: &str) -> String {
        let output = Command::new("psql")
            .arg(self.database_url())
            .args(["-qtAX", "-c", query])
            .output()
            .expect("psql installed");
        assert!(
            output.status.success(),
            "psql {query}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// One Redis command through the REST front (as the edge reads it); its `result`.
    pub async fn redis(&self, command: &[&str]) -> Value {
        let body: Value = self
            .http
            .post(format!("http://127.0.0.1:{}/", self.rest_port))
            .bearer_auth(REST_TOKEN)
            .json(&command)
            .send()
            .await
            .expect("REST front reachable")
            .json()
            .await
            .expect("REST front answers JSON");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("REST front error for {command:?}: {body}"))
    }

    /// `origin check-consistency` on this stack's Postgres, Redis and prefix:
    /// (exit code, what it printed).
    pub fn check_consistency(&self) -> (i32, String) {
        let output = Command::new(repo_root().join("target/debug/origin"))
            .arg("check-consistency")
            .env_clear()
            .env("DATABASE_URL", self.database_url())
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_PREFIX", &self.prefix)
            .output()
            .expect("run origin check-consistency");
        (
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    /// Stops the REST front (as if Upstash were down).
    pub fn stop_rest(&mut self) {
        self.rest.stop();
    }

    /// Starts the REST front again on the same port.
    pub async fn start_rest(&mut self) {
        let bin = repo_root().join("target/debug/redis-rest");
        self.rest = spawn_rest(
            &bin,
            self.rest_port,
            &self.redis_url,
            self.options.rest_delay_ms,
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.rest_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "REST front did not restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut logs = format!("--- origin ---\n{}", self.origin_process.log());
        for (i, process) in self.more_origins.iter().enumerate() {
            logs += &format!("\n--- origin {} ---\n{}", i + 1, process.log());
        }
        if let Some(lb) = &self.load_balancer {
            logs += &format!("\n--- haproxy ---\n{}", lb.log());
        }
        logs + &format!("\n--- wrangler ---\n{}", self.wrangler.log())
    }

    pub async fn post_json(
        &self,
        base: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.post_json_with(base, path, body, &[]).await
    }

    /// [`post_json`](Self::post_json) with extra request headers.
    pub async fn post_json_with(
        &self,
        base: &str,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.post(format!("{base}{path}")).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("reachable");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    pub async fn get(
        &self,
        base: &str,
        path: &str,
        bearer: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.get(format!("{base}{path}"));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("reachable");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    pub async fn bearer_post(&self, path: &str, token: &str) -> u16 {
        self.http
            .post(format!("{}{path}", self.edge))
            .bearer_auth(token)
            .send()
            .await
            .expect("reachable")
            .status()
            .as_u16()
    }

    /// Registers a fresh user through the edge and logs in: (username, password, tokens).
    pub async fn user(&self) -> (String, String, Value) {
        let (username, password) = (
            format!("user-{}", random_hex()),
            format!("pw-{}", random_hex()),
        );
        let creds = serde_json::json!({ "username": username, "password": password });
        let (status, body, _) = self
            .post_json(&self.edge, "/auth/register", creds.clone())
            .await;
        assert_eq!(
            status,
            201,
            "register through the edge: {body}\n{}",
            self.logs()
        );
        let tokens = self.login(&username, &password).await;
        (username, password, tokens)
    }

    pub async fn login(&self, username: &str, password: &str) -> Value {
        let (status, body, _) = self
            .post_json(
                &self.edge,
                "/auth/login",
                serde_json::json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(
            status,
            200,
            "login through the edge: {body}\n{}",
            self.logs()
        );
        body
    }

    /// The origin's signing key, to mint tokens the tests need (expired, wrong audience…).
    pub fn signing_key(&self) -> shared::SigningKey {
        read_signing_key(&self.key_file)
    }
}

/// The origin's development key, from its `SIGNING_KEY_FILE` (a base64url seed).
pub fn read_signing_key(path: &std::path::Path) -> shared::SigningKey {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).expect("the origin's key file");
    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .expect("a base64url seed");
    shared::SigningKey::from_seed_slice(&seed).expect("a 32-byte seed")
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.wrangler.stop();
        self.origin_process.stop();
        for process in &mut self.more_origins {
            process.stop();
        }
        self.rest.stop();
        // Best effort: a test may have stopped its throwaway server already.
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args([
                "-qc",
                &format!("drop database if exists {} with (force)", self.database),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        delete_redis_prefix(&self.redis_url, &self.prefix);
        let _ = &self.dir;
    }
}

/// Deletes every key under `prefix` (best effort, with `redis-cli`, which comes with
/// `redis-server`): the partition markers never expire, and a shared Redis would
/// otherwise keep a thousand keys per test run.
pub fn delete_redis_prefix(redis_url: &str, prefix: &str) {
    if redis_url.contains(',') {
        // A cluster's node list: in the tests, a throwaway cluster that goes with its keys.
        return;
    }
    let script = format!(
        "redis-cli -u {redis_url} --scan --pattern '{prefix}*' | xargs -r -n 500 redis-cli -u {redis_url} del >/dev/null"
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts an origin and waits until `url` (its `LISTEN_ADDR`) is healthy. A port
/// picked by `free_port` may be taken by a neighbour test before the origin binds it:
/// then it picks others, a few times. (The process, its URL.)
async fn start_origin(command: &mut [(String, String)], url: String) -> (Process, String) {
    let mut origin = url;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut process = spawn_origin(command);
        let url = format!("{origin}/healthz");
        if became_healthy(&mut process, &url, Duration::from_secs(30)).await {
            return (process, origin);
        }
        if attempts < 4 && process.log().contains("Address already in use") {
            let port = free_port();
            origin = format!("http://127.0.0.1:{port}");
            set_origin_ports(command, port);
            continue;
        }
        panic!("origin did not become healthy at {url}:\n{}", process.log());
    }
}

/// Moves an origin's command to `port` (`LISTEN_ADDR`) and a fresh operations port.
fn set_origin_ports(command: &mut [(String, String)], port: u16) {
    for (name, value) in command {
        match name.as_str() {
            "LISTEN_ADDR" => *value = format!("127.0.0.1:{port}"),
            "OPS_LISTEN_ADDR" => *value = format!("127.0.0.1:{}", free_port()),
            _ => {}
        }
    }
}

fn spawn_origin(env: &[(String, String)]) -> Process {
    let mut command = Command::new(repo_root().join("target/debug/origin"));
    command.envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn("origin", command)
}

fn spawn_rest(bin: &PathBuf, port: u16, redis_url: &str, delay_ms: u64) -> Process {
    let mut command = Command::new(bin);
    command
        .env("REST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .env("REST_TOKEN", REST_TOKEN)
        .env("REST_DELAY_MS", delay_ms.to_string());
    Process::spawn("redis-rest", command)
}

fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .arg(url)
        .args(["-qc", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql installed");
    assert!(status.success(), "psql {sql}");
}

/// The claims of a JWT, decoded without verification (test inspection only).
pub fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Threads that keep the CPUs busy until dropped: a stand-in for the other suites
/// CI runs side by side, for tests of races that only a busy machine shows.
pub struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    pub fn start(threads: usize) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod process_tests {
    /// A stopped process's log holds its last line, even when the threads reading
    /// its pipes have not run yet (CI runs suites side by side on two cores).
    /// Port-collision retries read the log of a stopped process to decide whether to
    /// retry.
    #[test]
    fn a_stopped_process_has_its_whole_log() {
        let busy = super::Busy::start(6);
        let mut failures = 0;
        for _ in 0..50 {
            let mut command = super::Command::new("sh");
            command.args([
                "-c",
                "dd if=/dev/zero bs=60000 count=1 2>/dev/null; echo the last line",
            ]);
            let mut process = super::Process::spawn("sh", command);
            while !process.exited() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            process.stop();
            failures += usize::from(!process.log().ends_with("the last line\n"));
        }
        drop(busy);
        assert_eq!(
            failures, 0,
            "of 50 stopped processes, {failures} lost their last line"
        );
    }
}
