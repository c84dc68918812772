//! The browser package (`browser/`) and the demo page the edge serves, in a real
//! browser: headless Chromium (Debian's `chromium`) driven by `playwright-core` from
//! npm, against the real stack with 10-second access tokens. The browser's side is
//! `tests/browser/run.mjs`; this test starts the stack, runs it, and checks the
//! server's side (rotations, reuse).

use std::process::Command;

use e2e::{Options, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tabs_share_one_session_refresh_without_reuse_and_survive_an_outage() {
    let stack = Stack::start(Options {
        origin_env: vec![
            ("ACCESS_TOKEN_TTL_SECS", "10".into()),
            ("DEV_COOKIE_NAMES", "true".into()),
        ],
        ..Options::default()
    })
    .await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = std::env::var("BROWSER_SCREENSHOTS").unwrap_or_default();
    let run = {
        let edge = stack.edge.clone();
        let pid = stack.origin_pid().expect("origin running").to_string();
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .current_dir(&root)
                .args(["tests/browser/run.mjs", &edge, &pid, &shots])
                .output()
                .expect("node runs")
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("BROWSER {stdout}");
    assert!(
        run.status.success(),
        "the browser checks failed:\n{stderr}\n{stdout}\n{}",
        stack.logs()
    );
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();

    // At most one rotation per token lifetime, plus one per tab, over the load; and
    // no reuse detected (two tabs refreshing at once get the same successor).
    let seconds = results["load"]["seconds"].as_u64().unwrap();
    let bound = seconds / 10 + 3;
    let rotations: u64 = stack
        .sql("select count(*) from refresh_token where rotated_at is not null")
        .parse()
        .unwrap();
    let reuse: u64 = stack
        .sql("select count(*) from security_event where kind = 'refresh_token_reuse'")
        .parse()
        .unwrap();
    eprintln!(
        "BROWSER {seconds} s, 3 tabs: {rotations} rotations at the origin (bound {bound}; the whole run, outage included), {reuse} reuse"
    );
    assert_eq!(reuse, 0);
    // The other origin's posts were answered by the edge, which forwards nothing then.
    assert!(
        stack.logs().contains("POST /auth/refresh 403"),
        "the edge did not refuse the other origin's refresh"
    );
    assert!(
        results["load"]["refreshes"].as_u64().unwrap() <= bound,
        "{results}"
    );
}
