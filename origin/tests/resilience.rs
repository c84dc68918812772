//! Throttling, Redis outages and flushes, readiness, metrics and shutdown, against
//! the running origin.

mod common;

use std::time::{Duration, Instant};

use common::Origin;
use reqwest::StatusCode;

/// Nothing listens on port 1: Redis calls fail at once, as when Redis is down.
const DEAD_REDIS: &str = "redis://127.0.0.1:1";

async fn fail_until_throttled(origin: &Origin, username: &str) -> common::Reply {
    for attempt in 1..=20 {
        let reply = origin.login(username, "not the password").await;
        match reply.status {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => return reply,
            other => panic!("attempt {attempt}: unexpected {other}: {}", reply.text()),
        }
    }
    panic!("20 wrong passwords were never throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_are_throttled_and_the_user_gets_in_after_the_delay() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;

    let throttled = fail_until_throttled(&origin, &user.username).await;
    assert_eq!(throttled.error_code().as_deref(), Some("slow_down"));
    let retry_after: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=900).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Even the right password waits: a lock is not a hint about the password.
    assert_eq!(
        origin.login(&user.username, &user.password).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let reply = origin.login(&user.username, &user.password).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "after the delay: {}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_still_holds_with_redis_unreachable() {
    let origin = Origin::start_with(&[("REDIS_URL", DEAD_REDIS)]).await;
    let user = origin.new_user().await;
    let throttled = fail_until_throttled(&origin, &user.username).await;
    assert!(throttled.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_login_works_and_postgres_decides_sessions() {
    let origin = Origin::start_with(&[("REDIS_URL", DEAD_REDIS)]).await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    assert_eq!(
        origin.me(tokens.access()).await.status,
        StatusCode::OK,
        "active session, from Postgres"
    );

    let logout = origin
        .bearer(reqwest::Method::POST, "/auth/logout", tokens.access())
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_eq!(
        origin.me(tokens.access()).await.status,
        StatusCode::UNAUTHORIZED,
        "revoked, from Postgres"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_rebuilt_from_postgres_without_new_logins() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let kept = origin.login_ok(&user.username, &user.password).await;
    let ended = origin.login_ok(&user.username, &user.password).await;
    assert_eq!(
        origin
            .bearer(reqwest::Method::POST, "/auth/logout", ended.access())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let key = origin.session_key(&kept.sub(), &kept.sid());
    assert!(origin.redis_exists(&key).await);

    // Flush everything this origin wrote.
    let mut conn = origin.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", origin.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    // Straight after the flush nobody is logged out: without the epoch key the store
    // proves nothing, and Postgres decides.
    assert_eq!(origin.me(kept.access()).await.status, StatusCode::OK);
    assert_eq!(
        origin.me(ended.access()).await.status,
        StatusCode::UNAUTHORIZED
    );

    let started = Instant::now();
    while !origin.redis_exists(&key).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "record not rebuilt within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        origin
            .redis_exists(&shared::session::store_epoch_key(&origin.prefix))
            .await
    );
    let ended_key = origin.session_key(&ended.sub(), &ended.sid());
    assert!(
        !origin.redis_exists(&ended_key).await,
        "a logged-out session must not come back"
    );
    assert_eq!(origin.me(kept.access()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_dependency_that_is_down() {
    let healthy = Origin::start().await;
    let reply = healthy.get(healthy.ops_url("/readyz")).await;
    assert_eq!(
        (
            reply.status,
            reply.json()["postgres"].as_str(),
            reply.json()["redis"].as_str()
        ),
        (StatusCode::OK, Some("up"), Some("up"))
    );

    let degraded = Origin::start_with(&[("REDIS_URL", DEAD_REDIS)]).await;
    let reply = degraded.get(degraded.ops_url("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (
            reply.json()["postgres"].as_str(),
            reply.json()["redis"].as_str()
        ),
        (Some("up"), Some("down"))
    );
    assert_eq!(
        degraded.get(degraded.url("/healthz")).await.status,
        StatusCode::OK,
        "alive even when not ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_logins_refreshes_and_reuse() {
    let origin = Origin::start_with(&[("REFRESH_GRACE_SECS", "0")]).await;
    let user = origin.new_user().await;
    let t0 = origin.login_ok(&user.username, &user.password).await;
    assert_eq!(
        origin
            .login(&user.username, "not the password")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    origin.refresh_ok(t0.refresh()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        origin.refresh(t0.refresh()).await.status,
        StatusCode::UNAUTHORIZED
    );

    let text = origin.get(origin.ops_url("/metrics")).await.text();
    for line in [
        r#"auth_logins_total{outcome="success"} 1"#,
        r#"auth_logins_total{outcome="invalid_grant"} 1"#,
        r#"auth_refreshes_total{outcome="success"} 1"#,
        r#"auth_refreshes_total{outcome="invalid_grant"} 1"#,
        r#"auth_refresh_reuse_detected_total{cause="after_grace"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_origin_cleanly() {
    let mut origin = Origin::start().await;
    let status = origin.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        origin.log.text().contains("origin stopped gracefully"),
        "{}",
        origin.log.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_answer_only_on_the_operations_listener() {
    let origin = Origin::start().await;
    for path in ["/metrics", "/readyz"] {
        let public = origin.get(origin.url(path)).await;
        assert_eq!(
            (public.status, public.error_code().as_deref()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path} on the public listener: {}",
            public.text()
        );
        let ops = origin.get(origin.ops_url(path)).await;
        assert_eq!(ops.status, StatusCode::OK, "{path} on the ops listener");
    }
    assert_eq!(
        origin.get(origin.url("/healthz")).await.status,
        StatusCode::OK,
        "/healthz stays public"
    );
    assert_eq!(
        origin.get(origin.ops_url("/auth/sessions")).await.status,
        StatusCode::NOT_FOUND,
        "the ops listener serves operations only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_cannot_bind_a_listener_exits_at_once_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", common::free_port());
    for (setting, listen, ops) in [
        ("LISTEN_ADDR", taken.as_str(), free.as_str()),
        ("OPS_LISTEN_ADDR", free.as_str(), taken.as_str()),
    ] {
        let started = Instant::now();
        // No database is reachable either: binding comes first, so the error names
        // the listener, not Postgres.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_origin"))
            .env_clear()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("REDIS_URL", DEAD_REDIS)
            .env("LISTEN_ADDR", listen)
            .env("OPS_LISTEN_ADDR", ops)
            .env(
                "SIGNING_KEY_FILE",
                std::env::temp_dir().join(format!("bind-{}.key", common::random_hex())),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{setting}: took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains(&format!("{setting} {taken}")),
            "{setting}: the error must name the setting and address: {stderr}"
        );
    }
}
