//! Does the "every request verifying" load verify every request? The edge keeps up to
//! [`EDGE_VERIFIED_CACHE`] verified tokens (edge/src/worker_entry.rs, `VERIFIED`,
//! cleared when full), so a token that comes back sooner may be answered from that
//! cache, and the cold run would measure the warm path in part, while reference (b),
//! which has no such cache, verifies every one. This sends the load's own wrk script to
//! a recorder for a second and counts the requests whose token came back that soon.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::stack::serve_on_thread;
use crate::wrk::{self, Load};

/// Tokens the edge's verified-token cache holds at most.
pub const EDGE_VERIFIED_CACHE: usize = 10_000;

/// The `Authorization` header of every request `get.lua` sends with the token file
/// `tokens` (its path), in the order the recorder received them, during one second.
pub fn record(lua: &Path, tokens: &str, connections: u32, threads: u32) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = recorded.clone();
        async move {
            let token = headers
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(token);
            "ok"
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (url, server) = serve_on_thread(app, async {
        let _ = stopped.await;
    });
    wrk::run(
        lua,
        &Load {
            url: format!("{url}/api/bench"),
            script: "get.lua",
            connections,
            threads,
            seconds: 1,
            env: vec![("BENCH_TOKENS", tokens.to_string())],
        },
    );
    let _ = stop.send(());
    server.join().unwrap();
    std::mem::take(&mut *seen.lock().unwrap())
}

/// How many of `tokens` (in the order sent) came back at most `window` requests after
/// they were last sent: those a cache of `window` tokens may still hold.
pub fn returns_within(tokens: &[String], window: usize) -> usize {
    let mut last = std::collections::HashMap::new();
    let mut returns = 0;
    for (i, token) in tokens.iter().enumerate() {
        if let Some(before) = last.insert(token.as_str(), i)
            && i - before <= window
        {
            returns += 1;
        }
    }
    returns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<String> {
        s.chars().map(String::from).collect()
    }

    #[test]
    fn a_token_counts_when_it_comes_back_within_the_window_and_not_after() {
        // "a" comes back 2 requests after it was sent, "b" 3 after.
        let sent = tokens("abab");
        assert_eq!(returns_within(&sent, 1), 0);
        assert_eq!(returns_within(&sent, 2), 2);
        let sent = tokens("abcab");
        assert_eq!(returns_within(&sent, 2), 0);
        assert_eq!(returns_within(&sent, 3), 2);
        assert_eq!(returns_within(&tokens("abcdef"), 100), 0);
    }
}
