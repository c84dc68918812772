//! The refresh run's load generator: each connection walks its own session's token
//! chain, presenting the refresh token the previous answer returned, as a client does.
//!
//! It plays the part pgbench's client plays for the SQL: two threads (pgbench runs
//! with `-j 2`), each an event loop over its share of the connections, HTTP/1.1 with
//! keep-alive and nothing parsed but the status line, `Content-Length` and the new
//! token. wrk could only walk a chain per connection with one thread and one Lua
//! state per connection, so at 64 connections it ran 64 threads and a Lua pattern
//! match per answer, on the same two cores as the origin and Postgres. The CPU either
//! client spends per request is printed beside the rates (`client_ms`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one answer may take before its chain counts as broken (wrk's
/// `--timeout` in the other runs).
const ANSWER_BUDGET: Duration = Duration::from_secs(10);

/// What one run did.
pub struct Chains {
    pub run: crate::wrk::Run,
    /// Each chain's last token, to go on from in a later run.
    pub tokens: Vec<String>,
    /// The load generator's own CPU per request, ms.
    pub client_ms: f64,
}

/// Walks one chain per token in `tokens` for `seconds` against `addr`, on `threads`
/// threads. A chain whose answer is not a 200 stops (its next request would replay
/// a rotated token and revoke the session) and is counted in `errors`.
pub fn run(addr: SocketAddr, tokens: Vec<String>, seconds: u32, threads: usize) -> Chains {
    let deadline = Instant::now() + Duration::from_secs(seconds.into());
    let started = Instant::now();
    let mut shares: Vec<Vec<(usize, String)>> = vec![Vec::new(); threads];
    for (i, token) in tokens.into_iter().enumerate() {
        shares[i % threads].push((i, token));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| std::thread::spawn(move || walk_share(addr, share, deadline)))
        .collect();
    let mut latencies_us = Vec::new();
    let mut tokens = Vec::new();
    let (mut errors, mut cpu) = (0, 0.0);
    for handle in handles {
        let share = handle.join().expect("a load thread panicked");
        latencies_us.extend(share.latencies_us);
        tokens.extend(share.tokens);
        errors += share.errors;
        cpu += share.cpu_seconds;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokens.sort_by_key(|(i, _)| *i);
    latencies_us.sort_unstable();
    let at = |q: f64| {
        latencies_us
            .get(
                ((latencies_us.len() as f64 * q) as usize)
                    .min(latencies_us.len().saturating_sub(1)),
            )
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    let requests = latencies_us.len() as u64;
    Chains {
        run: crate::wrk::Run {
            requests,
            seconds,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            errors,
            extra: serde_json::json!({ "ok": requests }),
            cpu_ms: 0.0,
        },
        tokens: tokens.into_iter().map(|(_, token)| token).collect(),
        client_ms: cpu * 1000.0 / requests.max(1) as f64,
    }
}

struct Share {
    latencies_us: Vec<u32>,
    tokens: Vec<(usize, String)>,
    errors: u64,
    cpu_seconds: f64,
}

fn walk_share(addr: SocketAddr, share: Vec<(usize, String)>, deadline: Instant) -> Share {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a load thread's runtime");
    let cpu_before = crate::procfs::thread_cpu_seconds();
    let results = runtime.block_on(async move {
        let mut chains = tokio::task::JoinSet::new();
        for (i, token) in share {
            chains.spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                let walked = walk(addr, token, deadline, &mut latencies).await;
                (i, walked, latencies)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = chains.join_next().await {
            out.push(done.expect("a chain's task panicked"));
        }
        out
    });
    let cpu_seconds = crate::procfs::thread_cpu_seconds() - cpu_before;
    let mut done = Share {
        latencies_us: Vec::new(),
        tokens: Vec::new(),
        errors: 0,
        cpu_seconds,
    };
    for (i, walked, latencies) in results {
        done.latencies_us.extend(latencies);
        match walked {
            Ok(token) => done.tokens.push((i, token)),
            Err(why) => {
                eprintln!("    refresh chain {i} broke: {why}");
                done.errors += 1;
            }
        }
    }
    done
}

/// One chain: requests until `deadline`; its last token, or why it broke.
async fn walk(
    addr: SocketAddr,
    mut token: String,
    deadline: Instant,
    latencies_us: &mut Vec<u32>,
) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let host = addr.to_string();
    let mut request = Vec::with_capacity(512);
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        request.clear();
        let body_len = token.len() + r#"{"refresh_token":""}"#.len();
        write!(
            request,
            "POST /auth/refresh HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n{{\"refresh_token\":\"{token}\"}}"
        )
        .expect("writing to a Vec");
        let sent = Instant::now();
        let budget = tokio::time::Instant::from_std(sent + ANSWER_BUDGET);
        let late = |_| format!("no answer within {} s", ANSWER_BUDGET.as_secs());
        tokio::time::timeout_at(budget, stream.write_all(&request))
            .await
            .map_err(late)?
            .map_err(|e| e.to_string())?;
        let (status, body) = tokio::time::timeout_at(budget, read_response(&mut stream, &mut buf))
            .await
            .map_err(late)??;
        latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(body)
            ));
        }
        token = json_string(body, "refresh_token")
            .ok_or_else(|| format!("no refresh_token in {}", String::from_utf8_lossy(body)))?
            .to_string();
    }
    Ok(token)
}

/// Reads one response with a `Content-Length` body into `buf`; its status and body.
async fn read_response<'b>(
    stream: &mut TcpStream,
    buf: &'b mut Vec<u8>,
) -> Result<(u16, &'b [u8]), String> {
    buf.clear();
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| e.to_string())?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while buf.len() < head_end + length {
        read_more(stream, buf).await?;
    }
    Ok((status, &buf[head_end..head_end + length]))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let len = buf.len();
    buf.resize(len + 4096, 0);
    let n = stream
        .read(&mut buf[len..])
        .await
        .map_err(|e| e.to_string())?;
    buf.truncate(len + n);
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The string value of `"name":"…"` in a JSON object with no escapes in that value
/// (tokens are base64url).
fn json_string<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let body = std::str::from_utf8(body).ok()?;
    let key = format!("\"{name}\":\"");
    let start = body.find(&key)? + key.len();
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_reads_the_token() {
        let body = br#"{"access_token":"a.b.c","refresh_token":"rt_abc-_1","scope":"x"}"#;
        assert_eq!(json_string(body, "refresh_token"), Some("rt_abc-_1"));
        assert_eq!(json_string(body, "missing"), None);
    }
}
