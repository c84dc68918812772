//! The processes a benchmark drives: the REST front, the origin (release builds),
//! a do-nothing upstream, and the edge bundle in `workerd serve`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Process, free_port, random_hex, wait_healthy};

pub const ISSUER: &str = "https://auth.bench.test";
pub const AUDIENCE: &str = "api.bench.test";
const REST_TOKEN: &str = "bench-rest-token";

/// Argon2id parameters of the origin under test, and of the raw hashing figure.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_ITERATIONS: u32 = 2;

/// Argon2id as the origin under test runs it (`origin::password`: one lane).
pub fn argon2() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

pub struct Settings {
    pub root: PathBuf,
    pub admin_url: String,
    pub redis_url: String,
    pub workerd_bin: PathBuf,
    /// `wrangler deploy --dry-run --outdir` output: the bundle as it would be uploaded.
    pub bundle_dir: PathBuf,
}

pub struct Stack {
    pub database_url: String,
    pub prefix: String,
    pub key_file: PathBuf,
    edge_secret: String,
    pub rest_url: String,
    pub origin_url: String,
    origin_port: u16,
    pub upstream_url: String,
    pub edge_url: String,
    pub origin: Process,
    pub workerd: Process,
    /// `bench/reference-worker.js` in its own workerd, once started.
    pub reference: Option<(Process, String)>,
    _rest: Process,
}

impl Stack {
    pub async fn start(settings: &Settings, dir: &Path) -> Stack {
        let database = format!("bench_{}", random_hex());
        psql(&settings.admin_url, &format!("create database {database}"));
        let database_url =
            settings.admin_url.rsplit_once('/').unwrap().0.to_string() + "/" + &database;
        psql(&database_url, "create extension pg_stat_statements");

        let (rest, rest_url) = start_rest(settings, &settings.redis_url).await;

        let upstream_url = start_upstream();
        let mut stack = Stack {
            database_url,
            prefix: format!("bench{}:", random_hex()),
            key_file: dir.join("signing.key"),
            edge_secret: random_hex().repeat(4),
            rest_url,
            origin_url: String::new(),
            origin_port: free_port(),
            upstream_url,
            edge_url: String::new(),
            origin: Process::spawn("placeholder", Command::new("true")),
            workerd: Process::spawn("placeholder", Command::new("true")),
            reference: None,
            _rest: rest,
        };
        stack.restart_origin(settings, &[]).await;
        stack.start_workerd(settings, dir).await;
        stack
    }

    /// (Re)starts the origin, on the same port, with the bench settings plus `extra`.
    pub async fn restart_origin(&mut self, settings: &Settings, extra: &[(&str, &str)]) {
        self.origin.stop();
        let port = self.origin_port;
        let mut command = origin_command(
            settings,
            &OriginEnv {
                database_url: &self.database_url,
                redis_url: &settings.redis_url,
                prefix: &self.prefix,
                key_file: &self.key_file,
                edge_secret: &self.edge_secret,
                port,
            },
        );
        for (name, value) in extra {
            command.env(name, value);
        }
        self.origin = Process::spawn("origin", command);
        self.origin_url = format!("http://127.0.0.1:{port}");
        wait_healthy(
            &mut self.origin,
            &format!("{}/healthz", self.origin_url),
            Duration::from_secs(30),
        )
        .await;
    }

    async fn start_workerd(&mut self, settings: &Settings, dir: &Path) {
        let (workerd, edge_url) = serve_bundle(
            settings,
            dir,
            "workerd.capnp",
            &EdgeEnv {
                origin_url: &self.origin_url,
                upstream_url: &self.upstream_url,
                rest_url: &self.rest_url,
                prefix: &self.prefix,
                edge_secret: &self.edge_secret,
            },
        )
        .await;
        self.workerd = workerd;
        self.edge_url = edge_url;
    }

    /// Starts the JavaScript reference workers (`bench/reference-worker.js`, bundled
    /// with `jose` by esbuild) against the same REST front and upstream, with the
    /// origin's JWKS; returns its URL.
    pub async fn start_reference(&mut self, settings: &Settings, dir: &Path) -> String {
        let port = free_port();
        let config = dir.join("reference.capnp");
        let bundled = Command::new(settings.root.join("node_modules/.bin/esbuild"))
            .arg(settings.root.join("bench/reference-worker.js"))
            .args([
                "--bundle",
                "--format=esm",
                "--platform=neutral",
                "--log-level=warning",
            ])
            .arg("--conditions=worker,browser")
            .arg(format!(
                "--outfile={}",
                dir.join("reference-worker.js").display()
            ))
            .status()
            .expect("esbuild (npm, with wrangler)");
        assert!(bundled.success(), "bundling bench/reference-worker.js");
        let jwks = reqwest::get(format!("{}/.well-known/jwks.json", self.origin_url))
            .await
            .expect("the origin's JWKS")
            .text()
            .await
            .unwrap();
        // A capnp text literal: the JWKS's quotes escaped.
        let jwks = jwks.replace('\\', "\\\\").replace('"', "\\\"");
        let text = format!(
            r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "reference", worker = .reference),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "reference")],
);
const reference :Workerd.Worker = (
  modules = [(name = "reference-worker.js", esModule = embed "reference-worker.js")],
  compatibilityDate = "{date}",
  bindings = [
    (name = "UPSTASH_URL", text = "{rest}"),
    (name = "UPSTASH_TOKEN", text = "{REST_TOKEN}"),
    (name = "UPSTREAM_URL", text = "{upstream}"),
    (name = "ISSUER", text = "{ISSUER}"),
    (name = "AUDIENCE", text = "{AUDIENCE}"),
    (name = "KEY_PREFIX", text = "{prefix}"),
    (name = "JWKS", text = "{jwks}"),
    (name = "PROOF_SECRET", text = "{secret}"),
  ],
  globalOutbound = "internet",
);
"#,
            date = wrangler_compatibility_date(&settings.root),
            rest = self.rest_url,
            upstream = self.upstream_url,
            prefix = self.prefix,
            secret = self.edge_secret,
        );
        std::fs::write(&config, text).expect("writing the reference config");
        let mut command = Command::new(&settings.workerd_bin);
        command.arg("serve").arg(&config);
        let mut process = Process::spawn("reference workerd", command);
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(
            &mut process,
            &format!("{url}/public/ready"),
            Duration::from_secs(30),
        )
        .await;
        self.reference = Some((process, url.clone()));
        url
    }

    pub fn signing_key(&self) -> shared::SigningKey {
        e2e::read_signing_key(&self.key_file)
    }
}

/// What an origin under test is pointed at.
pub struct OriginEnv<'a> {
    pub database_url: &'a str,
    /// One URL, or a Redis Cluster's node URLs separated by commas.
    pub redis_url: &'a str,
    pub prefix: &'a str,
    pub key_file: &'a Path,
    pub edge_secret: &'a str,
    pub port: u16,
}

/// The release origin with the bench settings, listening on 127.0.0.1:`port`.
pub fn origin_command(settings: &Settings, env: &OriginEnv) -> Command {
    let mut command = Command::new(settings.root.join("target/release/origin"));
    command
        .env("DATABASE_URL", env.database_url)
        .env("REDIS_URL", env.redis_url)
        .env("REDIS_PREFIX", env.prefix)
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", env.port))
        .env("OPS_LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("SIGNING_KEY_FILE", env.key_file)
        .env("EDGE_SECRET", env.edge_secret)
        .env("ISSUER", ISSUER)
        .env("AUDIENCE", AUDIENCE)
        .env("ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB.to_string())
        .env("ARGON2_ITERATIONS", ARGON2_ITERATIONS.to_string())
        // Thousands of users register and log in from 127.0.0.1.
        .env("REGISTRATIONS_PER_ADDRESS", "1000000")
        .env("LOGIN_ATTEMPTS_PER_ADDRESS", "1000000")
        // Request logs at info would measure the terminal; warnings still show.
        .env("RUST_LOG", "warn");
    command
}

/// The release REST front on a free port, in front of `redis_url` (one URL, or a
/// cluster's node URLs separated by commas); returns it with its URL.
pub async fn start_rest(settings: &Settings, redis_url: &str) -> (Process, String) {
    let port = free_port();
    let mut command = Command::new(settings.root.join("target/release/redis-rest"));
    command
        .env("REST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .env("REST_TOKEN", REST_TOKEN)
        .env("RUST_LOG", "warn");
    let mut rest = Process::spawn("redis-rest", command);
    wait_port(&mut rest, port).await;
    (rest, format!("http://127.0.0.1:{port}"))
}

/// What the edge under test is pointed at.
pub struct EdgeEnv<'a> {
    pub origin_url: &'a str,
    pub upstream_url: &'a str,
    pub rest_url: &'a str,
    pub prefix: &'a str,
    pub edge_secret: &'a str,
}

/// The uploaded bundle in `workerd serve` (config `dir/config_name`) on a free port,
/// healthy; returns it with its URL.
pub async fn serve_bundle(
    settings: &Settings,
    dir: &Path,
    config_name: &str,
    env: &EdgeEnv<'_>,
) -> (Process, String) {
    let port = free_port();
    let config = dir.join(config_name);
    let vars = [
        ("ORIGIN_URL", env.origin_url.to_string()),
        ("UPSTREAM_URL", env.upstream_url.to_string()),
        ("ISSUER", ISSUER.into()),
        ("AUDIENCE", AUDIENCE.into()),
        ("PROTECTED_PATHS", "/api/".into()),
        // The forwarding runs measure `/public/bench`.
        ("PUBLIC_PATHS", "/public/".into()),
        ("SESSION_STORE", "upstash".into()),
        ("UPSTASH_URL", env.rest_url.to_string()),
        ("UPSTASH_TOKEN", REST_TOKEN.into()),
        ("KEY_PREFIX", env.prefix.to_string()),
        ("EDGE_SECRET", env.edge_secret.to_string()),
        ("STORE_TIMEOUT_MS", "1000".into()),
        ("JWKS_REFETCH_SECS", "60".into()),
        // The day simulation runs 3-second tokens; nothing else depends on it.
        ("TOKEN_LEEWAY_SECS", "0".into()),
    ];
    std::fs::write(&config, workerd_config(settings, dir, port, &vars))
        .expect("writing the workerd config");
    let mut command = Command::new(&settings.workerd_bin);
    command.arg("serve").arg(&config).arg("--experimental");
    // `BENCH_INSPECTOR=9229`: the V8 inspector on that port, to profile the edge's
    // isolate while the load runs (with `BENCH_ONLY=edge`: one workerd at a time).
    if let Ok(port) = std::env::var("BENCH_INSPECTOR") {
        command.arg(format!("--inspector-addr=127.0.0.1:{port}"));
    }
    let mut workerd = Process::spawn("workerd", command);
    let url = format!("http://127.0.0.1:{port}");
    // The JWKS passes through the edge to the origin: healthy means both answer.
    wait_healthy(
        &mut workerd,
        &format!("{url}/.well-known/jwks.json"),
        Duration::from_secs(30),
    )
    .await;
    (workerd, url)
}

/// A workerd config serving the uploaded bundle's modules with the given vars, and an
/// outbound network that may reach 127.0.0.1 (the default one refuses private
/// addresses).
fn workerd_config(settings: &Settings, dir: &Path, port: u16, vars: &[(&str, String)]) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&settings.bundle_dir)
        .expect("the bundle directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    // The entry module first: workerd treats the first module as the main one.
    files.sort_by_key(|p| (p.file_name().unwrap() != "index.js", p.clone()));
    let modules = files
        .iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let kind = match path.extension()?.to_str()? {
                "js" | "mjs" => "esModule",
                "wasm" => "wasm",
                _ => return None,
            };
            // `embed` paths are relative to the config file: copy the module beside it.
            std::fs::copy(path, dir.join(name)).expect("copying a bundle module");
            Some(format!("(name = \"{name}\", {kind} = embed \"{name}\")"))
        })
        .collect::<Vec<_>>()
        .join(",\n      ");
    let bindings = vars
        .iter()
        .map(|(name, value)| format!("(name = \"{name}\", text = \"{value}\")"))
        .collect::<Vec<_>>()
        .join(",\n      ");
    let compatibility_date = wrangler_compatibility_date(&settings.root);
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "edge", worker = .edge),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "edge")],
);

const edge :Workerd.Worker = (
  modules = [
      {modules}
  ],
  compatibilityDate = "{compatibility_date}",
  bindings = [
      {bindings}
  ],
  globalOutbound = "internet",
);
"#
    )
}

fn wrangler_compatibility_date(root: &Path) -> String {
    std::fs::read_to_string(root.join("wrangler.toml"))
        .expect("wrangler.toml")
        .lines()
        .find_map(|l| {
            let value = l.strip_prefix("compatibility_date")?.split('"').nth(1)?;
            Some(value.to_string())
        })
        .expect("compatibility_date in wrangler.toml")
}

/// An upstream that answers every request with a few bytes, at once: the edge's
/// forwarding cost is measured, not an application's.
fn start_upstream() -> String {
    let app = axum::Router::new().fallback(|| async { "ok" });
    serve_on_thread(app, std::future::pending()).0
}

/// Serves `app` on a free loopback port from a thread of its own (a single-threaded
/// runtime, apart from the bench's) until `shutdown` completes: its base URL, and the
/// thread to join once it has.
pub fn serve_on_thread(
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .unwrap();
        });
    });
    (url, thread)
}

async fn wait_port(process: &mut Process, port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            !process.exited(),
            "{} exited:\n{}",
            process.name,
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} did not listen on {port}:\n{}",
        process.name,
        process.log()
    );
}

pub fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("running psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
