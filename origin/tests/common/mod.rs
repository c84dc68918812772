//! The harness of the origin's HTTP tests: each test gets a fresh Postgres database,
//! its own Redis key prefix and the real `origin` binary on a free port, and talks to
//! it over HTTP as a client would.
//!
//! ```ignore
//! let origin = Origin::start().await;
//! let user = origin.new_user().await;
//! let tokens = origin.login_ok(&user.username, &user.password).await;
//! assert_eq!(origin.me(tokens.access()).await.status(), 200);
//! ```
//!
//! Postgres and Redis come from `TEST_DATABASE_URL` and `TEST_REDIS_URL` (defaults:
//! the local servers on their standard ports); `scripts/services.sh` starts throwaway
//! ones when none is running.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-secret-0123456789";
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "api.test";

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// 32 random hex digits (128 bits), for names that must not collide across tests.
pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Below the kernel's ephemeral range, so nothing else takes it while a test leaves it
/// unbound (a Redis started later, or restarted on the same port).
pub use e2e::free_port;

/// A database created for one test and dropped when the test ends, also on panic.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: PgConnectOptions,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin_url = database_url();
        let admin: PgConnectOptions = admin_url.parse().unwrap_or_else(|e| {
            panic!("TEST_DATABASE_URL {admin_url:?} is not a Postgres URL: {e}")
        });
        let name = format!("origin_test_{}", random_hex());
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to Postgres at {admin_url} ({e}); start one, or run the tests \
                 through scripts/test, which starts a throwaway one"
            )
        });
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut conn)
            .await
            .expect("create database");
        conn.close().await.ok();
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        TestDb { name, url, admin }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, which cannot be blocked on: the
        // database is dropped from a thread with its own small runtime. Best effort.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = admin.connect().await {
                    let _ =
                        sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
                            .execute(&mut conn)
                            .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// The origin's stdout and stderr, as captured so far.
#[derive(Clone, Default)]
pub struct Log {
    text: Arc<Mutex<Vec<u8>>>,
    readers: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Log {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    pub fn capture(&self, mut from: impl Read + Send + 'static) {
        let sink = self.text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        self.readers.lock().unwrap().push(reader);
    }

    /// Waits until every captured pipe has been read to its end. Call it after
    /// reaping the process: a reaped process has closed its pipes, but what it wrote
    /// last may still be in them, not yet read into the log.
    pub fn drain(&self) {
        let readers = std::mem::take(&mut *self.readers.lock().unwrap());
        for reader in readers {
            let _ = reader.join();
        }
    }
}

/// Waits for `child` to exit and returns its status, with everything it wrote in `log`.
pub fn reap(child: &mut Child, log: &Log) -> std::process::ExitStatus {
    let status = child.wait().expect("wait for the process");
    log.drain();
    status
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("origin-test-{}", random_hex()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running origin binary with its own database, Redis prefix and log.
pub struct Origin {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub base: String,
    /// The operations listener (`/metrics`, `/readyz`), its own free port.
    pub ops_base: String,
    pub prefix: String,
    pub log: Log,
    pub http: reqwest::Client,
    pub pg: PgPool,
    pub redis: redis::aio::MultiplexedConnection,
    // Field order is drop order: the pool closes before the database is dropped.
    pub db: TestDb,
    pub dir: TempDir,
}

/// A registered user.
pub struct User {
    pub user_id: String,
    pub username: String,
    pub password: String,
}

/// A token response (`TokenResponse` of DESIGN.md §4), kept as JSON.
#[derive(Clone, Debug)]
pub struct Tokens(pub Value);

impl Tokens {
    pub fn access(&self) -> &str {
        self.0["access_token"]
            .as_str()
            .expect("access_token is a string")
    }
    pub fn refresh(&self) -> &str {
        self.0["refresh_token"]
            .as_str()
            .expect("refresh_token is a string")
    }
    /// The access token's claims, read without verification (the tests only need ids).
    pub fn claims(&self) -> Value {
        jwt_part(self.access(), 1)
    }
    pub fn sub(&self) -> String {
        self.claims()["sub"].as_str().expect("sub").to_owned()
    }
    pub fn sid(&self) -> String {
        self.claims()["sid"].as_str().expect("sid").to_owned()
    }
}

/// Segment `index` (0 header, 1 payload) of a JWS compact token, decoded as JSON.
pub fn jwt_part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).expect("a JWS compact token");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("base64url segment");
    serde_json::from_slice(&bytes).expect("JSON segment")
}

/// A response's status, headers and body, read once.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn from(response: Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("read body").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}), status {}: {}",
                self.status,
                self.text()
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `error` code of an error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("error")?
            .as_str()
            .map(str::to_owned)
    }
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_with(&[]).await
    }

    /// Starts the origin with the standard test environment, `extra` added or overriding.
    pub async fn start_with(extra: &[(&str, &str)]) -> Origin {
        let db = TestDb::create().await;
        let dir = TempDir::new();
        let prefix = format!("t{}:", random_hex());
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("REDIS_URL".into(), redis_url()),
            ("REDIS_PREFIX".into(), prefix.clone()),
            (
                "SIGNING_KEY_FILE".into(),
                dir.0.join("dev.key").display().to_string(),
            ),
            (
                "EDGE_SECRET".into(),
                format!("{}{}", random_hex(), random_hex()),
            ),
            ("CLIENT_ID".into(), CLIENT_ID.into()),
            ("CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("ISSUER".into(), ISSUER.into()),
            ("AUDIENCE".into(), AUDIENCE.into()),
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
            // Every test registers its users from 127.0.0.1; the tests of these limits
            // set them back.
            ("REGISTRATIONS_PER_ADDRESS".into(), "100000".into()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).into(), (*v).into()));
        }
        let pg = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db.url)
            .await
            .expect("connect to the test database");
        // The origin's own Redis when the test gave it one that answers (a throwaway
        // server), else the shared one (also when the test gave it a dead address).
        let own = env
            .iter()
            .find(|(k, _)| k == "REDIS_URL")
            .map(|(_, v)| v.clone())
            .filter(|url| *url != redis_url());
        let mut redis = None;
        if let Some(url) = own
            && let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(Ok(conn)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await
        {
            redis = Some(conn);
        }
        let redis = match redis {
            Some(conn) => conn,
            None => redis::Client::open(redis_url())
                .expect("TEST_REDIS_URL")
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("cannot connect to Redis at {} ({e})", redis_url())),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut origin = Origin {
            child: None,
            env,
            base: String::new(),
            ops_base: String::new(),
            prefix,
            log: Log::default(),
            http,
            pg,
            redis,
            db,
            dir,
        };
        origin.spawn().await;
        origin
    }

    async fn spawn(&mut self) {
        let addr = format!("127.0.0.1:{}", free_port());
        let ops_addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_origin"));
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LISTEN_ADDR", &addr)
            .env("OPS_LISTEN_ADDR", &ops_addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the origin binary");
        self.log.capture(child.stdout.take().unwrap());
        self.log.capture(child.stderr.take().unwrap());
        self.base = format!("http://{addr}");
        self.ops_base = format!("http://{ops_addr}");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the log readers drain
                panic!(
                    "the origin exited during start-up ({status}); its log:\n{}",
                    self.log.text()
                );
            }
            let health = self
                .http
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&health, Ok(r) if r.status() == StatusCode::OK) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the origin did not answer GET /healthz with 200 within 30 s (last: {health:?}); its log:\n{}",
                    self.log.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the origin with SIGKILL (no graceful shutdown) and starts it again on the
    /// same database and Redis prefix. The log keeps both runs.
    pub async fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Sends SIGTERM and waits for the process to exit, returning its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("origin running");
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        reap(&mut child, &self.log)
    }

    /// The running origin's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            reap(&mut child, &self.log);
        }
    }

    /// The value the origin was started with for environment variable `name`.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port` of the listener: what the edge's proofs to it cover (by default
    /// `ORIGIN_AUTHORITY` is `LISTEN_ADDR`).
    pub fn authority(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// The headers the edge adds to a request it forwards to the origin from
    /// `client_ip`: the address, the time and their proof, signed with the origin key
    /// derived from this origin's `EDGE_SECRET`.
    pub fn edge_headers(
        &self,
        method: &str,
        path_and_query: &str,
        client_ip: &str,
    ) -> Vec<(&'static str, String)> {
        let keys = shared::proof::ProofKeys::derive(self.env("EDGE_SECRET").unwrap().as_bytes());
        let time = shared::unix_now();
        let authority = self.authority();
        let proof = shared::proof::RequestProof {
            authority: &authority,
            method,
            path_and_query,
            client_ip,
            identity: None,
            time,
        }
        .sign(&keys.origin);
        vec![
            (shared::proof::header::CLIENT_IP, client_ip.to_string()),
            (shared::proof::header::TIME, time.to_string()),
            (shared::proof::header::PROOF, proof),
        ]
    }

    /// `POST /auth/login` as the edge forwards it for a client at `client_ip`, with
    /// `cookie` as the `Cookie` header when given.
    pub async fn login_via_edge(
        &self,
        client_ip: &str,
        username: &str,
        password: &str,
        cookie: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"username": username, "password": password}));
        for (name, value) in self.edge_headers("POST", "/auth/login", client_ip) {
            request = request.header(name, value);
        }
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        Reply::from(request.send().await.expect("POST /auth/login")).await
    }

    /// A URL on the operations listener.
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.ops_base)
    }

    pub async fn get(&self, url: String) -> Reply {
        Reply::from(self.http.get(url).send().await.expect("GET")).await
    }

    // ---- requests --------------------------------------------------------------

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        Reply::from(
            self.http
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn register(&self, username: &str, password: &str) -> Reply {
        self.post_json(
            "/auth/register",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post_json(
            "/auth/login",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post_json("/auth/refresh", &json!({"refresh_token": refresh_token}))
            .await
    }

    pub async fn me(&self, access_token: &str) -> Reply {
        self.bearer(reqwest::Method::GET, "/api/me", access_token)
            .await
    }

    pub async fn bearer(&self, method: reqwest::Method, path: &str, access_token: &str) -> Reply {
        Reply::from(
            self.http
                .request(method, self.url(path))
                .bearer_auth(access_token)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// A form POST to `/auth/revoke` or `/auth/introspect`, with the test client's
    /// credentials when `client` is `Some`.
    pub async fn client_form(
        &self,
        path: &str,
        client: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.post(self.url(path)).form(form);
        if let Some((id, secret)) = client {
            request = request.basic_auth(id, Some(secret));
        }
        Reply::from(request.send().await.expect("POST form")).await
    }

    /// Registers a fresh user with a random name and password.
    pub async fn new_user(&self) -> User {
        let username = format!("user.{}", &random_hex()[..16]);
        let password = format!("pw-{}", random_hex());
        let reply = self.register(&username, &password).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "register: {}",
            reply.text()
        );
        let user_id = reply.json()["user_id"]
            .as_str()
            .expect("register returns a user_id string")
            .to_owned();
        User {
            user_id,
            username,
            password,
        }
    }

    pub async fn login_ok(&self, username: &str, password: &str) -> Tokens {
        let reply = self.login(username, password).await;
        assert_eq!(reply.status, StatusCode::OK, "login: {}", reply.text());
        Tokens(reply.json())
    }

    pub async fn refresh_ok(&self, refresh_token: &str) -> Tokens {
        let reply = self.refresh(refresh_token).await;
        assert_eq!(reply.status, StatusCode::OK, "refresh: {}", reply.text());
        Tokens(reply.json())
    }

    // ---- stores ----------------------------------------------------------------

    pub fn session_key(&self, sub: &str, sid: &str) -> String {
        shared::session::session_key(&self.prefix, sub, sid)
    }

    pub async fn redis_exists(&self, key: &str) -> bool {
        let mut conn = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut conn)
            .await
            .expect("EXISTS")
            == 1
    }

    /// A new connection to the Redis this origin uses (it may have been restarted).
    pub async fn fresh_redis(&self) -> redis::aio::MultiplexedConnection {
        let url = self
            .env("REDIS_URL")
            .map(str::to_owned)
            .unwrap_or_else(redis_url);
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the origin's Redis")
    }

    /// What a session key holds: a record, a tombstone, or nothing.
    pub async fn stored(&self, key: &str) -> Option<shared::session::Stored> {
        let value: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.fresh_redis().await)
            .await
            .expect("GET");
        value.map(|v| {
            shared::session::Stored::decode(v.as_bytes()).expect("a session record or tombstone")
        })
    }

    /// Whether a freshness marker vouches for its partition.
    pub async fn marker_fresh(&self, key: &str) -> bool {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await
            .expect("GET");
        shared::session::is_fresh(value.as_deref())
    }

    /// Whether a session key holds a live record (not a tombstone, not nothing).
    pub async fn has_record(&self, key: &str) -> bool {
        matches!(
            self.stored(key).await,
            Some(shared::session::Stored::Active(_))
        )
    }

    /// Every key under this test's prefix with its value (strings only, as the
    /// origin writes them).
    pub async fn redis_dump(&self) -> Vec<(String, String)> {
        let mut conn = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut out = Vec::new();
        for key in keys {
            let value: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            out.push((key, value.unwrap_or_default()));
        }
        out
    }

    /// `revoked_at is not null` of a session, `None` when there is no such row.
    pub async fn session_revoked(&self, sid: &str) -> Option<bool> {
        sqlx::query_scalar::<_, bool>(
            "select revoked_at is not null from session where id::text = $1",
        )
        .bind(sid)
        .fetch_optional(&self.pg)
        .await
        .expect("select session")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
        // Keys left under the prefix expire by themselves; delete them anyway so a
        // long test run does not fill a shared Redis.
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// Lowercase hex of `bytes`, as Postgres prints `bytea`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `redis-server` of the test's own, on a free port, for tests that pause, restart
/// or snapshot Redis: the shared one is never touched. It snapshots only on demand
/// (`BGSAVE`) into its own directory, and a restart loads that snapshot.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    pub dir: TempDir,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
            dir: TempDir::new(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--dir",
            ])
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server installed");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's own Redis")
    }

    /// `CLIENT PAUSE ms WRITE`: write commands (and scripts) wait, reads go on.
    pub async fn pause_writes(&self, ms: u64) {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query_async(&mut self.conn().await)
            .await
            .expect("CLIENT PAUSE");
    }

    /// A snapshot of the data now (`BGSAVE`, waited for).
    pub async fn snapshot(&self) {
        let mut conn = self.conn().await;
        let before: i64 = redis::cmd("LASTSAVE").query_async(&mut conn).await.unwrap();
        // LASTSAVE has one-second resolution: make sure the new one differs.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _: String = redis::cmd("BGSAVE").query_async(&mut conn).await.unwrap();
        let started = Instant::now();
        loop {
            let last: i64 = redis::cmd("LASTSAVE").query_async(&mut conn).await.unwrap();
            if last > before {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "BGSAVE did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then a new server on the same port loading the last snapshot.
    pub fn restart_from_snapshot(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A second origin process on the same database, Redis, prefix and keys as another
/// (two replicas behind one load balancer); killed on drop.
pub struct Sibling {
    child: Child,
    pub base: String,
    pub log: Log,
}

impl Origin {
    pub async fn sibling(&self) -> Sibling {
        self.sibling_with(&[]).await
    }

    /// A sibling with `extra` overriding this origin's environment (another way to
    /// its Redis, say).
    pub async fn sibling_with(&self, extra: &[(&str, &str)]) -> Sibling {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_origin"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .env("LISTEN_ADDR", &addr)
            .env("OPS_LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a second origin");
        let log = Log::default();
        log.capture(child.stdout.take().unwrap());
        log.capture(child.stderr.take().unwrap());
        let base = format!("http://{addr}");
        let started = Instant::now();
        loop {
            let up = self.http.get(format!("{base}/healthz")).send().await;
            if matches!(&up, Ok(r) if r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30) && child.try_wait().unwrap().is_none(),
                "the second origin did not start: {}",
                log.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Sibling { child, base, log }
    }

    /// Runs `origin check-consistency` with this origin's settings: (exit code, output).
    pub fn check_consistency(&self) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_origin"))
            .arg("check-consistency")
            .env_clear()
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", self.env("REDIS_URL").unwrap())
            .env("REDIS_PREFIX", &self.prefix)
            .env(
                "ACCESS_TOKEN_TTL_SECS",
                self.env("ACCESS_TOKEN_TTL_SECS").unwrap_or("900"),
            )
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
}

impl Drop for Sibling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP link to `target` that can hold what the client sends for a while: bytes that
/// arrive while a delay is set are delivered that much later, in order, even after the
/// client has hung up (a write that timed out at its sender and lands late). The
/// answers come back at once. Stops when dropped.
pub struct SlowLink {
    pub port: u16,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    pub async fn start(target: u16) -> SlowLink {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let (queue, mut queued) =
                    tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        let due =
                            Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                        if queue.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((due, bytes)) = queued.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if server_write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
            }
        });
        SlowLink {
            port,
            delay_ms,
            task,
        }
    }

    /// Holds what the client sends from now on for `ms` (0: none).
    pub fn delay(&self, ms: u64) {
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
