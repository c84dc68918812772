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
    assert!(origin.has_record(&key).await);

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

    // Straight after the flush nobody is logged out: without its freshness marker a
    // partition proves nothing, and Postgres decides.
    assert_eq!(origin.me(kept.access()).await.status, StatusCode::OK);
    assert_eq!(
        origin.me(ended.access()).await.status,
        StatusCode::UNAUTHORIZED
    );

    let started = Instant::now();
    let marker = shared::session::freshness_key(&origin.prefix, &kept.sub());
    while !origin.has_record(&key).await || !origin.marker_fresh(&marker).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "record not rebuilt within 10 s: {}",
            origin.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended_key = origin.session_key(&ended.sub(), &ended.sid());
    assert!(
        matches!(
            origin.stored(&ended_key).await,
            None | Some(shared::session::Stored::Revoked { .. })
        ),
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

/// The harness's own guarantee, which the test above relies on: once a process is
/// reaped, its log holds its last line. On a busy machine (CI runs suites side by
/// side) the thread reading the pipe may not have run yet when the process has been
/// reaped; busy threads stand in for the other suites here.
#[test]
fn a_reaped_process_has_its_whole_log() {
    let _busy = e2e::Busy::start(6);
    for attempt in 1..=50 {
        let log = common::Log::default();
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "dd if=/dev/zero bs=60000 count=1 2>/dev/null; echo the last line",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sh");
        log.capture(child.stdout.take().unwrap());
        assert!(common::reap(&mut child, &log).success());
        let text = log.text();
        assert!(
            text.ends_with("the last line\n"),
            "attempt {attempt}: {} bytes, ending {:?}",
            text.len(),
            &text[text.len().saturating_sub(20)..]
        );
    }
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

/// Expected (issue 12, item 8): proofs cover the receiver's `host:port`, so an origin
/// listening on every address cannot guess the name the edge uses: it refuses to start
/// with `EDGE_SECRET` and no `ORIGIN_AUTHORITY`, naming the setting, and refuses a
/// malformed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_on_every_address_needs_the_authority_the_edge_uses() {
    for (authority, expected) in [
        (None, "ORIGIN_AUTHORITY is not set"),
        (Some("auth.internal"), "is not host:port"),
        (Some("https://auth.internal:443"), "is not host:port"),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_origin"));
        command
            .env_clear()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("REDIS_URL", DEAD_REDIS)
            .env("LISTEN_ADDR", format!("0.0.0.0:{}", common::free_port()))
            .env(
                "OPS_LISTEN_ADDR",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("EDGE_SECRET", "an edge secret of at least 32 bytes, surely")
            .env(
                "SIGNING_KEY_FILE",
                std::env::temp_dir().join(format!("authority-{}.key", common::random_hex())),
            );
        if let Some(authority) = authority {
            command.env("ORIGIN_AUTHORITY", authority);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{authority:?}: {stderr}");
        assert!(stderr.contains(expected), "{authority:?}: {stderr}");
    }
}

/// Expected (DESIGN.md §3): a write lands only when newer than what is stored, so a
/// record delayed past the tombstone that followed it (a timed-out SET, a retried
/// push) changes nothing, nor does one whose expiry has passed. Straight against the
/// store, with versions chosen by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_write_of_an_older_version_never_overwrites_a_newer_one() {
    use origin::store::{Publication, Store};
    use shared::session::{SessionRecord, Stored, session_key};
    let prefix = format!("t{}:", common::random_hex());
    let store = Store::new(
        &origin::store::Target::Single(common::redis_url()),
        prefix.clone(),
        None,
    )
    .unwrap();
    let now_ms = shared::unix_now() * 1000;
    let record = |ver: u64| Publication {
        sub: "u1".into(),
        sid: "s1".into(),
        ver,
        value: SessionRecord {
            ver,
            sub: "u1".into(),
            scope: "profile".into(),
            auth_time_ms: now_ms,
            exp: now_ms / 1000 + 3600,
        }
        .encode(),
        expire_at_ms: now_ms + 60_000,
    };
    let tombstone = |ver: u64| Publication {
        value: SessionRecord::tombstone(ver, "u1"),
        expire_at_ms: now_ms + 120_000,
        ..record(ver)
    };
    let read = async || {
        let value: Option<String> = redis::cmd("GET")
            .arg(session_key(&prefix, "u1", "s1"))
            .query_async(
                &mut redis::Client::open(common::redis_url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        value.map(|v| Stored::decode(v.as_bytes()).unwrap())
    };
    store.publish(&[record(2)]).await.unwrap();
    store.publish(&[tombstone(3)]).await.unwrap();
    store.publish(&[record(2)]).await.unwrap(); // the late write
    assert_eq!(read().await, Some(Stored::Revoked { ver: 3 }));
    store.publish(&[tombstone(3)]).await.unwrap(); // a duplicate
    assert_eq!(read().await, Some(Stored::Revoked { ver: 3 }));
    let expired = Publication {
        expire_at_ms: now_ms - 1000,
        ..record(9)
    };
    store.publish(&[expired]).await.unwrap();
    assert_eq!(
        read().await,
        Some(Stored::Revoked { ver: 3 }),
        "an expired write is dropped"
    );
    let _: () = redis::cmd("DEL")
        .arg(session_key(&prefix, "u1", "s1"))
        .query_async(
            &mut redis::Client::open(common::redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
}

/// Expected: with Redis writes paused (so each origin's write times out and lands
/// whenever Redis serves it), a refresh on one origin and a logout of the refreshed
/// session on another leave the session revoked once the writes have landed, on both
/// origins: the tombstone's version is newer than the refresh's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_paused_across_a_refresh_and_a_logout_from_two_origins_leave_the_session_revoked() {
    let own = common::OwnRedis::start();
    let a = Origin::start_with(&[("REDIS_URL", &own.url())]).await;
    let b = a.sibling().await;
    let user = a.new_user().await;
    let t0 = a.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // partitions built
    own.pause_writes(3000).await;
    let t1 = a.refresh_ok(t0.refresh()).await;
    let logout = common::Reply::from(
        a.http
            .post(format!("{}/auth/logout", b.base))
            .bearer_auth(t1.access())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text());
    tokio::time::sleep(Duration::from_millis(6000)).await; // pause over, outbox swept
    for (name, base) in [("a", a.base.clone()), ("b", b.base.clone())] {
        let me = common::Reply::from(
            a.http
                .get(format!("{base}/api/me"))
                .bearer_auth(t1.access())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            me.status,
            StatusCode::UNAUTHORIZED,
            "origin {name}: {}",
            me.text()
        );
    }
    let key = a.session_key(&t1.sub(), &t1.sid());
    assert!(
        matches!(
            a.stored(&key).await,
            Some(shared::session::Stored::Revoked { .. })
        ),
        "the store holds the tombstone: {:?}",
        a.stored(&key).await
    );
    let (code, report) = a.check_consistency();
    assert_eq!(code, 0, "{report}");
}

/// Expected: a write that lands late never brings back what a newer write ended.
/// Origin b reaches Redis over a link that holds what b sends for 3 s, so its write
/// times out at b and lands later, as a SET delayed on the network would. b rotates a
/// token; then a logs that session out: the tombstone lands first and b's older record
/// 3 s later, and is refused. Polled every 20 ms from the logout until well after, the
/// store never holds an active record of the session. (With writes paused instead, as
/// in the test above, Redis applies the writes in the order they came, tombstone last,
/// so that test passes without versions too: here the order is reversed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_written_late_over_a_slow_link_does_not_bring_back_the_logged_out_session() {
    let own = common::OwnRedis::start();
    let link = common::SlowLink::start(own.port).await;
    let a = Origin::start_with(&[("REDIS_URL", &own.url())]).await;
    let b = a.sibling_with(&[("REDIS_URL", &link.url())]).await;
    let user = a.new_user().await;
    let t0 = a.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // partitions built
    link.delay(3000);
    let refreshed = common::Reply::from(
        a.http
            .post(format!("{}/auth/refresh", b.base))
            .json(&serde_json::json!({ "refresh_token": t0.refresh() }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let t1 = common::Tokens(refreshed.json());
    let logout = a
        .bearer(reqwest::Method::POST, "/auth/logout", t1.access())
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text());
    let key = a.session_key(&t1.sub(), &t1.sid());
    let until = Instant::now() + Duration::from_secs(6);
    let mut polls = 0;
    while Instant::now() < until {
        let stored = a.stored(&key).await;
        assert!(
            !matches!(stored, Some(shared::session::Stored::Active(_))),
            "{:.1} s after the logout the store holds an active record again: {stored:?}",
            6.0 - until.duration_since(Instant::now()).as_secs_f64()
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "late write over a slow link: {polls} reads of the store after the logout, none active; now {:?}",
        a.stored(&key).await
    );
    link.delay(0);
    assert_eq!(a.me(t1.access()).await.status, StatusCode::UNAUTHORIZED);
    let me_b = common::Reply::from(
        a.http
            .get(format!("{}/api/me", b.base))
            .bearer_auth(t1.access())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(me_b.status, StatusCode::UNAUTHORIZED, "{}", me_b.text());
    let (code, report) = a.check_consistency();
    assert_eq!(code, 0, "{report}");
}

/// Expected: a refresh no longer holds its row lock and pool connection while it waits
/// on Redis, so with Redis writes paused 3 s, 200 refreshes at once do not drain the
/// pool (16 connections, 3 s acquire timeout) and a login sent meanwhile is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_writes_paused_two_hundred_refreshes_do_not_starve_a_login() {
    let own = common::OwnRedis::start();
    let origin = Origin::start_with(&[("REDIS_URL", &own.url())]).await;
    let user = origin.new_user().await;
    let other = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    own.pause_writes(3000).await;
    let refreshes = futures::future::join_all((0..200).map(|_| origin.refresh(tokens.refresh())));
    let login = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        origin.login(&other.username, &other.password).await
    };
    let (replies, login) = tokio::join!(refreshes, login);
    let unavailable = replies.iter().filter(|r| r.status.as_u16() == 503).count();
    eprintln!(
        "200 refreshes with Redis writes paused: {} × 200, {unavailable} × 503; a login meanwhile: {}",
        replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count(),
        login.status
    );
    assert_eq!(login.status, StatusCode::OK, "the login: {}", login.text());
    assert_eq!(unavailable, 0, "no refresh waited into a 503 either");
}

/// Expected: what must follow a committed revocation is in the outbox, committed
/// with it, and runs in a task the request cannot cancel: a client hanging up 100 ms
/// into a logout while Redis writes are paused does not leave the session's record
/// behind. `check-consistency` agrees once the pause is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_on_a_logout_does_not_skip_the_store_write() {
    let own = common::OwnRedis::start();
    let origin = Origin::start_with(&[("REDIS_URL", &own.url())]).await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    own.pause_writes(3000).await;
    let hung_up = origin
        .http
        .post(origin.url("/auth/logout"))
        .bearer_auth(tokens.access())
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up: {hung_up:?}");
    tokio::time::sleep(Duration::from_millis(6000)).await;
    assert_eq!(origin.session_revoked(&tokens.sid()).await, Some(true));
    let key = origin.session_key(&tokens.sub(), &tokens.sid());
    assert!(
        !origin.has_record(&key).await,
        "the record survived the logout"
    );
    let (code, report) = origin.check_consistency();
    assert_eq!(code, 0, "{report}");
}

/// Expected: the freshness marker proves freshness, not presence. A Redis restored
/// from a snapshot taken before a logout still holds the session's record and a
/// marker, but one written under the previous server's run id: within N = 3 s of the
/// restart the partition is rebuilt (the tombstone is newer) and the edge of the
/// origin falls back to Postgres meanwhile. No 200 for the logged-out session after
/// that; the live session keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_old_snapshot_admits_no_revoked_session_after_three_seconds() {
    let mut own = common::OwnRedis::start();
    let origin = Origin::start_with(&[("REDIS_URL", &own.url())]).await;
    let user = origin.new_user().await;
    let kept = origin.login_ok(&user.username, &user.password).await;
    let ended = origin.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    own.snapshot().await;
    let logout = origin
        .bearer(reqwest::Method::POST, "/auth/logout", ended.access())
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    own.restart_from_snapshot();
    let restarted = Instant::now();
    let key = origin.session_key(&ended.sub(), &ended.sid());
    let mut last_admitted = None;
    let mut kept_refused = 0;
    while restarted.elapsed() < Duration::from_secs(6) {
        if origin.me(ended.access()).await.status == StatusCode::OK {
            last_admitted = Some(restarted.elapsed());
        }
        if origin.me(kept.access()).await.status != StatusCode::OK {
            kept_refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "restore from snapshot: last 200 for the logged-out session {last_admitted:?} after the restart; \
         live session refused {kept_refused} times"
    );
    assert!(
        last_admitted.is_none_or(|t| t < Duration::from_secs(3)),
        "admitted {last_admitted:?} after the restart"
    );
    assert_eq!(kept_refused, 0, "the live session was refused");
    assert!(matches!(
        origin.stored(&key).await,
        Some(shared::session::Stored::Revoked { .. })
    ));
    let (code, report) = origin.check_consistency();
    assert_eq!(code, 0, "{report}");
}

/// A `redis-server` of the test's own, killed on drop.
struct EvictingRedis(std::process::Child);

impl EvictingRedis {
    /// A Redis that evicts keys under memory pressure, on `port`.
    fn start(port: u16) -> EvictingRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "allkeys-lru"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (install Redis)");
        let mut redis = EvictingRedis(child);
        // The origin must meet this server and no other: it answers, and it is the one
        // that evicts (a server of another test on the port would say noeviction).
        let started = Instant::now();
        loop {
            if let Some(status) = redis.0.try_wait().unwrap() {
                panic!("redis-server on port {port} exited ({status}): is the port taken?");
            }
            let policy = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|client| client.get_connection())
                .and_then(|mut conn| {
                    redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("maxmemory-policy")
                        .query::<Vec<String>>(&mut conn)
                });
            match policy {
                Ok(answer) => {
                    assert_eq!(answer.get(1).map(String::as_str), Some("allkeys-lru"));
                    return redis;
                }
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("redis-server on port {port} did not answer: {e}"),
            }
        }
    }
}

impl Drop for EvictingRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Expected (issue 14): Redis evicting keys would drop tombstones (revoked sessions
/// back) and records (users logged out), so the origin refuses such a Redis, naming
/// the setting: at start when Redis answers, or as soon as it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_refuses_a_redis_that_evicts_keys() {
    let origin_with = |redis_port: u16| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_origin"));
        command
            .env_clear()
            .env("DATABASE_URL", common::database_url())
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("REDIS_PREFIX", format!("t{}:", common::random_hex()))
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", common::free_port()))
            .env(
                "OPS_LISTEN_ADDR",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env(
                "SIGNING_KEY_FILE",
                std::env::temp_dir().join(format!("evict-{}.key", common::random_hex())),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let wait_for_exit = |mut child: std::process::Child, what: &str| {
        let started = Instant::now();
        let mut ran_on = false;
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                ran_on = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            !ran_on,
            "{what}: the origin kept running 20 s; its log:\n{text}"
        );
        assert!(!output.status.success(), "{what}");
        assert!(
            text.contains("maxmemory-policy must be noeviction") && text.contains("allkeys-lru"),
            "{what}: {text}"
        );
    };

    // Redis up at start.
    let port = common::free_port();
    let _redis = EvictingRedis::start(port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_exit(origin_with(port).spawn().unwrap(), "Redis up at start");

    // Redis down at start: the origin serves, then stops once Redis answers.
    let port = common::free_port();
    let child = origin_with(port).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the origin must start while Redis is down"
    );
    let _redis = EvictingRedis::start(port);
    wait_for_exit(child, "Redis up after start");
}
