//! A faithful local stand-in for Upstash's Redis REST API, in front of a real Redis.
//!
//! Implements the documented protocol (Upstash docs, "REST API"): commands as JSON
//! arrays (`POST /`), path style (`/set/foo/bar`, a POST body appended as the last
//! argument, query parameters appended as name/value pairs), `POST /pipeline`,
//! `POST /multi-exec`, `Authorization: Bearer <token>` or `?_token=`, replies
//! `{"result": …}` or `{"error": "…"}` with 200 / 400 / 401 / 405, and
//! `Upstash-Encoding: base64`. Redis being unreachable is a 503, so clients can tell
//! an outage from a failed command. `--delay-ms` slows every reply (fault tests).
//!
//! Behind it, one Redis server or a Redis Cluster (module [`backend`]): `REDIS_URL`
//! listing several node URLs separated by commas, or one URL with `REDIS_CLUSTER=1`,
//! means a cluster, as for the origin. With a cluster the front keeps Redis Cluster's
//! own rules, so what works here works against a sharded managed Redis too: each
//! command's keys, and all of a `/multi-exec` transaction's, must share one hash slot
//! (else `400 {"error": "CROSSSLOT …"}`, nothing run), while a `/pipeline` may span
//! slots because it is not atomic (as Upstash's is not). A slot whose primary is down
//! answers 503 until its replica has taken over (about 4 s with a 2 s node timeout,
//! tests/cluster.rs). The edge's session read is one `MGET` of keys sharing one hash
//! tag, so it is one slot:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:30001,redis://127.0.0.1:30002 REST_TOKEN=… redis-rest
//! curl -H 'Authorization: Bearer …' -d '["MGET","sess:{p0042}:u:s","nbf:{p0042}:u","fresh:{p0042}"]' http://127.0.0.1:8079/
//! {"result":[null,null,null]}
//! ```

mod backend;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use redis::Value as RedisValue;
use serde_json::{Value, json};

use crate::backend::{Backend, CROSSSLOT, Conn, crosses_slots, is_outage};

#[derive(Parser, Debug, Clone)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "REST_LISTEN_ADDR", default_value = "127.0.0.1:8079")]
    listen: std::net::SocketAddr,
    /// Redis behind the front: one URL, or several separated by commas for the nodes
    /// of a Redis Cluster (any of them will do; the rest is discovered).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Treat a single `REDIS_URL` as one node of a Redis Cluster (1/true/yes/on; off by
    /// default). Several URLs always mean a cluster.
    #[arg(long, env = "REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    redis_cluster: bool,
    /// The bearer token clients must present.
    #[arg(long, env = "REST_TOKEN", hide_env_values = true)]
    token: String,
    /// Extra delay before every reply, in milliseconds (to test slow stores).
    #[arg(long, env = "REST_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Clone)]
struct AppState {
    backend: Backend,
    /// Made by the first request that needs it (Redis may start after the front); an
    /// attempt that failed leaves it empty for the next request to try again.
    conn: std::sync::Arc<tokio::sync::OnceCell<Conn>>,
    token: std::sync::Arc<str>,
    delay: Duration,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::parse();
    let backend =
        Backend::from_settings(&config.redis_url, config.redis_cluster).unwrap_or_else(|message| {
            eprintln!("error: {message}");
            std::process::exit(2);
        });
    tracing::info!(cluster = backend.is_cluster(), "redis behind the front");
    let state = AppState {
        backend,
        conn: Default::default(),
        token: config.token.into(),
        delay: Duration::from_millis(config.delay_ms),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("error: listening on {}: {e}", config.listen);
            std::process::exit(1);
        });
    tracing::info!(addr = %config.listen, "redis REST front listening");
    axum::serve(listener, Router::new().fallback(handle).with_state(state))
        .await
        .expect("serve");
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "error": message.into() }))
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    if !matches!(
        method,
        Method::GET | Method::POST | Method::PUT | Method::HEAD
    ) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "ERR method not allowed");
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query_token = query
        .iter()
        .find(|(k, _)| k == "_token")
        .map(|(_, v)| v.as_str());
    if bearer.or(query_token) != Some(&*state.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "WRONGPASS invalid or missing auth token",
        );
    }
    let base64 = headers
        .get("upstash-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"base64"));

    let path = uri.path().trim_matches('/');
    let outcome = match path {
        "pipeline" => commands(&body).map(Batch::Pipeline),
        "multi-exec" => commands(&body).map(Batch::Transaction),
        "" => command(&body).map(Batch::Single),
        _ => path_command(path, &query, &body).map(Batch::Single),
    };
    let batch = match outcome {
        Ok(batch) => batch,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // A cluster refuses what the cluster client would otherwise split across slots
    // (backend.rs says why); in a pipeline that is one command's error, as Redis gives.
    let cluster = state.backend.is_cluster();
    let refused = match &batch {
        Batch::Single(args) => cluster && crosses_slots(args),
        Batch::Transaction(cmds) => cluster && cmds.iter().any(|args| crosses_slots(args)),
        Batch::Pipeline(_) => false,
    };
    if refused {
        return error(StatusCode::BAD_REQUEST, CROSSSLOT);
    }
    let Some(mut conn) = connection(&state).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "ERR redis unavailable");
    };
    match batch {
        Batch::Single(args) => match to_cmd(&args).query_async::<RedisValue>(&mut conn).await {
            Ok(value) => reply(StatusCode::OK, json!({ "result": to_json(value, base64) })),
            Err(e) if is_outage(&e) => unavailable(&e),
            Err(e) => error(StatusCode::BAD_REQUEST, redis_error_text(&e)),
        },
        Batch::Pipeline(cmds) => {
            // Not atomic, like Upstash: each command runs on its own, in order, so with
            // a cluster each goes to its own slot's node.
            let mut results = Vec::with_capacity(cmds.len());
            for args in &cmds {
                if cluster && crosses_slots(args) {
                    results.push(json!({ "error": CROSSSLOT }));
                    continue;
                }
                match to_cmd(args).query_async::<RedisValue>(&mut conn).await {
                    Ok(value) => results.push(json!({ "result": to_json(value, base64) })),
                    Err(e) if is_outage(&e) => return unavailable(&e),
                    Err(e) => results.push(json!({ "error": redis_error_text(&e) })),
                }
            }
            reply(StatusCode::OK, Value::Array(results))
        }
        Batch::Transaction(cmds) => {
            // With a cluster, the client sends the whole block to the node of its
            // keys' slot, and refuses it unsent (a CrossSlot error, answered as Redis's
            // CROSSSLOT) when the commands' first keys are in different slots; a
            // command whose other keys stray is refused by that node, which discards
            // the transaction.
            let mut pipe = redis::pipe();
            pipe.cmd("MULTI").ignore();
            for args in &cmds {
                pipe.add_command(to_cmd(args)).ignore();
            }
            pipe.cmd("EXEC");
            match pipe.query_async::<Vec<RedisValue>>(&mut conn).await {
                Ok(mut exec) => {
                    let items = match exec.pop() {
                        Some(RedisValue::Array(items)) => items,
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "EXECABORT Transaction discarded",
                            );
                        }
                    };
                    let results = items
                        .into_iter()
                        .map(|item| match item {
                            RedisValue::ServerError(e) => {
                                json!({ "error": redis_error_text(&e.into()) })
                            }
                            value => json!({ "result": to_json(value, base64) }),
                        })
                        .collect();
                    reply(StatusCode::OK, Value::Array(results))
                }
                Err(e) if is_outage(&e) => unavailable(&e),
                Err(e) => error(StatusCode::BAD_REQUEST, redis_error_text(&e)),
            }
        }
    }
}

enum Batch {
    Single(Vec<Vec<u8>>),
    Pipeline(Vec<Vec<Vec<u8>>>),
    Transaction(Vec<Vec<Vec<u8>>>),
}

/// One command from a JSON array of strings and numbers.
fn command(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "ERR failed to parse command".to_string())?;
    parse_args(&value)
}

fn parse_args(value: &Value) -> Result<Vec<Vec<u8>>, String> {
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("ERR failed to parse command")?;
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Number(n) => Ok(n.to_string().into_bytes()),
            _ => Err("ERR failed to parse command".to_string()),
        })
        .collect()
}

/// A two-dimensional array of commands (`/pipeline`, `/multi-exec`).
fn commands(body: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| "ERR failed to parse pipeline request".to_string())?;
    let rows = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("ERR failed to parse pipeline request")?;
    rows.iter().map(parse_args).collect()
}

/// `/set/foo/bar?EX=100` with an optional body appended as the last argument.
fn path_command(
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    let mut args: Vec<Vec<u8>> = Vec::new();
    for segment in path.split('/') {
        args.push(percent_decode(segment).ok_or("ERR failed to parse command")?);
    }
    if !body.is_empty() {
        args.push(body.to_vec());
    }
    for (name, value) in query.iter().filter(|(name, _)| name != "_token") {
        args.push(name.as_bytes().to_vec());
        args.push(value.as_bytes().to_vec());
    }
    Ok(args)
}

fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn to_cmd(args: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::cmd(&String::from_utf8_lossy(&args[0]).to_ascii_uppercase());
    for arg in &args[1..] {
        cmd.arg(arg.as_slice());
    }
    cmd
}

/// Redis replies as Upstash renders them: null, integers, strings, arrays; strings
/// base64-encoded on request, except the status reply `OK`.
fn to_json(value: RedisValue, base64: bool) -> Value {
    match value {
        RedisValue::Nil => Value::Null,
        RedisValue::Int(n) => json!(n),
        RedisValue::BulkString(bytes) if base64 => Value::String(STANDARD.encode(bytes)),
        RedisValue::BulkString(bytes) => {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        RedisValue::SimpleString(s) if base64 && s != "OK" => Value::String(STANDARD.encode(s)),
        RedisValue::SimpleString(s) => Value::String(s),
        RedisValue::Okay => Value::String("OK".into()),
        RedisValue::Array(items) | RedisValue::Set(items) => {
            Value::Array(items.into_iter().map(|v| to_json(v, base64)).collect())
        }
        RedisValue::Double(d) => json!(d),
        RedisValue::Boolean(b) => json!(if b { 1 } else { 0 }),
        RedisValue::ServerError(e) => Value::String(redis_error_text(&e.into())),
        other => Value::String(format!("{other:?}")),
    }
}

/// Redis could not answer: 503, and the reason in the log (a Redis error carries no
/// credentials).
fn unavailable(e: &redis::RedisError) -> Response {
    tracing::warn!(error = %e, "redis unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, "ERR redis unavailable")
}

/// The server's own error text (`ERR wrong number of arguments for 'get' command`).
fn redis_error_text(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::CrossSlot {
        // The cluster client's own refusal has its own wording; say what Redis says.
        return CROSSSLOT.to_string();
    }
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => format!("ERR {e}"),
    }
}

async fn connection(state: &AppState) -> Option<Conn> {
    let init = state
        .conn
        .get_or_try_init(|| async { state.backend.connect().await.ok_or(()) });
    init.await.ok().cloned()
}
