//! Times failed logins: unknown users against wrong passwords for existing users.
//! Both must take the same time, or the login answers which usernames exist.
//!
//! Run through `scripts/bench-login-timing`, which starts a release origin whose
//! `CLIENT_IP_HEADER` is `x-forwarded-for`: each try comes from its own address and
//! targets its own account, so throttling never delays a measurement.

use std::time::{Duration, Instant};

use serde_json::json;

const TRIES: usize = 150;

#[tokio::main]
async fn main() {
    let base = std::env::var("BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let http = reqwest::Client::new();
    let run = std::process::id();

    // Accounts that exist, one per wrong-password try.
    for i in 0..TRIES {
        let status = http
            .post(format!("{base}/auth/register"))
            .json(&json!({ "username": format!("timing-{run}-{i}"), "password": "the right password" }))
            .send()
            .await
            .expect("origin reachable")
            .status();
        assert_eq!(status, 201, "registering timing-{run}-{i}");
    }

    let attempt = |username: String, address: String| {
        let http = http.clone();
        let url = format!("{base}/auth/login");
        async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .header("x-forwarded-for", address)
                .json(&json!({ "username": username, "password": "a wrong password" }))
                .send()
                .await
                .expect("origin reachable");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            (started.elapsed(), status, body)
        }
    };

    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    let mut answers = std::collections::BTreeSet::new();
    // Interleaved, so drift on a noisy machine hits both sides alike.
    for i in 0..TRIES {
        let (t, status, body) = attempt(
            format!("nobody-{run}-{i}"),
            format!("198.18.{}.{}", i / 250, i % 250 + 1),
        )
        .await;
        unknown.push(t);
        answers.insert((status, body));
        let (t, status, body) = attempt(
            format!("timing-{run}-{i}"),
            format!("198.19.{}.{}", i / 250, i % 250 + 1),
        )
        .await;
        wrong.push(t);
        answers.insert((status, body));
    }
    let (u, w) = (median(&mut unknown), median(&mut wrong));
    let gap = (u.as_secs_f64() - w.as_secs_f64()).abs() / u.as_secs_f64().max(w.as_secs_f64());
    println!("failed logins over HTTP, {TRIES} tries each, interleaved");
    println!("  unknown user   median {:>7.2} ms", ms(u));
    println!("  wrong password median {:>7.2} ms", ms(w));
    println!("  difference {:.1}% (goal: under 10%)", gap * 100.0);
    println!(
        "  distinct (status, body) answers across both: {}",
        answers.len()
    );
    for (status, body) in &answers {
        println!("    {status} {body}");
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
