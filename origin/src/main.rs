//! Starts the origin: configuration, logging, migrations, keys, then serve until
//! SIGTERM or Ctrl-C, finishing in-flight requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use origin::config::Config;
use origin::keys::Keys;
use origin::password::Hasher;
use origin::state::{AppState, RateLimit};
use origin::store::Store;
use origin::throttle::Throttle;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() {
    // `origin healthcheck`: the container's HEALTHCHECK, which has no curl. Needs no
    // other configuration than LISTEN_ADDR.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    // `origin check-consistency`: compares Postgres and Redis and exits (operators,
    // fault tests). Configured by the same environment as the server.
    if std::env::args().nth(1).as_deref() == Some("check-consistency") {
        let config = Config::parse_from(std::env::args().take(1).chain(std::env::args().skip(2)));
        std::process::exit(origin::consistency::run(&config).await);
    }
    let config = Config::parse();
    init_logging(&config.log_format);
    if let Err(error) = run(config).await {
        tracing::error!(%error, "origin stopped");
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

/// Binds a listener, naming the setting and address when it cannot.
async fn bind(setting: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{setting} {addr}: cannot listen: {e}"))
}

/// The edge's keys and the `host:port` its proofs must cover here. A listener on
/// every address says nothing about the name the edge uses, so then the setting is
/// required rather than guessed.
fn edge_trust(config: &Config, secret: &str) -> Result<origin::edge::EdgeTrust, String> {
    let origin_authority = match &config.origin_authority {
        Some(authority) => authority.clone(),
        None if config.listen_addr.ip().is_unspecified() => {
            return Err(format!(
                "ORIGIN_AUTHORITY is not set: with EDGE_SECRET and LISTEN_ADDR {} it must \
                 name the host:port of the edge's ORIGIN_URL",
                config.listen_addr
            ));
        }
        None => config.listen_addr.to_string(),
    };
    Ok(origin::edge::EdgeTrust {
        keys: shared::proof::ProofKeys::derive(secret.as_bytes()),
        upstream_authority: config
            .upstream_authority
            .clone()
            .unwrap_or_else(|| origin_authority.clone()),
        origin_authority,
    })
}

async fn run(config: Config) -> Result<(), String> {
    // Listeners first: a taken port is a mistake to report at once, not after waiting
    // for Postgres.
    let listener = bind("LISTEN_ADDR", config.listen_addr).await?;
    let ops_listener = bind("OPS_LISTEN_ADDR", config.ops_listen_addr).await?;
    if config
        .edge_secret
        .as_ref()
        .is_some_and(|s| s.expose_secret().len() < 32)
    {
        return Err("EDGE_SECRET must be at least 32 bytes".into());
    }
    let edge = match &config.edge_secret {
        Some(secret) => Some(Arc::new(edge_trust(&config, secret.expose_secret())?)),
        None => None,
    };
    let keys = Keys::load(&config)?;
    let db = connect_db(config.database_url.expose_secret()).await?;
    origin::MIGRATOR
        .run(&db)
        .await
        .map_err(|e| format!("applying migrations: {e}"))?;
    let kv = match (&config.edge_kv_sync_url, &edge) {
        (Some(url), Some(edge)) => Some(origin::store::KvSync::new(url.clone(), edge.keys.kv_sync)),
        (Some(_), None) => return Err("EDGE_KV_SYNC_URL needs EDGE_SECRET".into()),
        (None, _) => None,
    };
    let target =
        origin::store::Target::parse(config.redis_url.expose_secret(), config.redis_cluster)?;
    let store = Store::new(&target, config.redis_prefix.clone(), kv)?;
    // A cluster that requires full coverage refuses every shard while one is failed
    // over: writes to the healthy shards then fail while the edge reads them right after.
    if store.is_cluster()
        && let Ok(values) = store.config("cluster-require-full-coverage").await
        && values.iter().any(|(_, v)| v != "no")
    {
        tracing::warn!(
            "Redis Cluster has cluster-require-full-coverage yes: every shard stops while one \
             fails over; set it to no (README, Redis Cluster)"
        );
    }
    // Checked now when Redis answers; otherwise as soon as it does (see below).
    let policy_checked = match store.eviction_policies().await {
        Ok(policies) => {
            origin::store::require_noeviction(&policies)?;
            true
        }
        Err(_) => {
            tracing::warn!(
                "redis unreachable at start: its maxmemory-policy is checked when it answers"
            );
            false
        }
    };
    let concurrency = config
        .hash_concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let hasher = Hasher::with_queue_timeout(
        config.argon2_memory_kib,
        config.argon2_iterations,
        concurrency,
        Duration::from_secs(config.hash_queue_timeout_secs),
    )?;
    let validator = shared::Validator::new(config.issuer.clone(), config.audience.clone())
        .with_limits(shared::Limits {
            leeway: config.token_leeway_secs,
            ..Default::default()
        });
    let (outbox_done, done_rows) = origin::publish::Done::channel();
    tokio::spawn(origin::publish::run_deleter(db.clone(), done_rows));
    let publisher = origin::publish::Publisher::new(
        store.clone(),
        outbox_done,
        origin::publish::Lifetimes::from(&config),
    );
    let state = AppState {
        publisher,
        rotations: origin::db::rotations::Rotations::new(
            origin::db::lane::Lane::new(db.clone(), origin::db::rotations::RUNNERS),
            config.session_idle_ttl_secs,
            config.access_token_ttl_secs,
        ),
        db,
        throttle: Arc::new(Throttle::new(store.clone())),
        store,
        keys: Arc::new(keys),
        validator: Arc::new(validator),
        hasher,
        fallback_limit: Arc::new(RateLimit::new(config.fallback_rate_per_sec)),
        edge,
        usernames: Default::default(),
        config: Arc::new(config),
    };

    tokio::spawn(origin::tasks::run(state.clone()));
    // A Redis that evicts, found after start: stop as the start would have.
    let (refused, mut refusal) = tokio::sync::oneshot::channel::<String>();
    if !policy_checked {
        let store = state.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(policies) = store.eviction_policies().await {
                    if let Err(e) = origin::store::require_noeviction(&policies) {
                        let _ = refused.send(e);
                    }
                    return;
                }
            }
        });
    }
    tracing::info!(addr = %state.config.listen_addr, ops_addr = %state.config.ops_listen_addr, issuer = %state.config.issuer, "origin listening");
    // The operations listener stops with the process; the public one drains first.
    let ops = origin::ops_app(state.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(ops_listener, ops).await {
            tracing::error!(%error, "operations listener failed");
        }
    });
    let app = origin::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let refusal_seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = refusal_seen.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            Ok(e) = &mut refusal => {
                tracing::error!(error = %e, "stopping");
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = refusal_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(e);
    }
    tracing::info!("origin stopped gracefully");
    Ok(())
}

/// The origin's Postgres connections: at most 9, 8 in the pool and one for each
/// runner of the rotation statement (`origin::db::rotations`, one) in the refresh
/// lane (`origin::db::lane`), opened when first needed; three origins under full
/// load hold 27 of Postgres's default `max_connections` of 100.
const POOL_SIZE: u32 = 8;

/// Waits up to 30 s for Postgres at start (containers often start together).
async fn connect_db(url: &str) -> Result<sqlx::PgPool, String> {
    let options = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(3));
    let mut last = String::new();
    for _ in 0..30 {
        match options.clone().connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("connecting to postgres (DATABASE_URL): {last}"))
}

/// GET /healthz on the listen address; 0 if it answers 200.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
        return 1;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut reply).is_err() {
        return 1;
    }
    if reply.starts_with("HTTP/1.1 200") {
        0
    } else {
        1
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
