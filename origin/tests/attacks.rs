//! Attacks that need client addresses the test chooses (issue 7): refresh-token theft
//! in both orders and brute force from many addresses. The origin runs with
//! `CLIENT_IP_HEADER=x-forwarded-for`, as behind the edge, so each request's address is
//! the one the test sends.

mod common;

use std::time::{Duration, Instant};

use common::{Origin, Reply, Tokens};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Nothing listens on port 1: Redis calls fail at once, as when Redis is down.
const DEAD_REDIS: &str = "redis://127.0.0.1:1";

struct Client {
    ip: &'static str,
    user_agent: &'static str,
}

const VICTIM: Client = Client {
    ip: "198.51.100.7",
    user_agent: "victim-browser/1.0",
};
const ATTACKER: Client = Client {
    ip: "203.0.113.66",
    user_agent: "attacker-script/0.1",
};

async fn refresh_as(origin: &Origin, client: &Client, token: &str) -> Reply {
    Reply::from(
        origin
            .http
            .post(origin.url("/auth/refresh"))
            .header("x-forwarded-for", client.ip)
            .header("user-agent", client.user_agent)
            .json(&json!({ "refresh_token": token }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Expected: whoever uses the stolen token first, once the other uses it too the
/// session is dead for both (every token of the family refused, the access token
/// refused, the Redis record gone), and the security event names both requests'
/// address and user agent. With the default 30 s grace window the second use counts as
/// theft once the first party has moved on (used the successor); with no grace window,
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_theft_in_either_order_kills_the_session_for_both_and_records_both() {
    for grace in ["30", "0"] {
        let origin = Origin::start_with(&[
            ("CLIENT_IP_HEADER", "x-forwarded-for"),
            ("REFRESH_GRACE_SECS", grace),
        ])
        .await;
        for (first, second, order) in [
            (&VICTIM, &ATTACKER, "victim first"),
            (&ATTACKER, &VICTIM, "attacker first"),
        ] {
            let user = origin.new_user().await;
            let stolen = origin.login_ok(&user.username, &user.password).await;
            let sid = stolen.sid();

            let reply = refresh_as(&origin, first, stolen.refresh()).await;
            assert_eq!(reply.status, StatusCode::OK, "{order}: first use");
            let mut held = Tokens(reply.json());
            if grace != "0" {
                // Moving on: the successor is used, so the grace window no longer applies.
                let reply = refresh_as(&origin, first, held.refresh()).await;
                assert_eq!(reply.status, StatusCode::OK, "{order}: successor used");
                held = Tokens(reply.json());
            }
            let reuse = refresh_as(&origin, second, stolen.refresh()).await;
            assert_eq!(
                (reuse.status, reuse.error_code().as_deref()),
                (StatusCode::UNAUTHORIZED, Some("invalid_grant")),
                "grace {grace}, {order}: second use of the stolen token"
            );

            // Dead for both: the first party's newest tokens, the second's nothing.
            let after = refresh_as(&origin, first, held.refresh()).await;
            assert_eq!(
                after.status,
                StatusCode::UNAUTHORIZED,
                "{order}: first party's refresh"
            );
            assert_eq!(
                origin.me(held.access()).await.status,
                StatusCode::UNAUTHORIZED,
                "{order}: first party's access token"
            );
            assert_eq!(origin.session_revoked(&sid).await, Some(true));
            assert!(
                !origin
                    .has_record(&origin.session_key(&held.sub(), &sid))
                    .await,
                "the record is tombstoned"
            );

            let event: (String, Option<String>, Option<String>, Value) = sqlx::query_as(
                "select kind, ip, user_agent, detail from security_event where session_id::text = $1",
            )
            .bind(&sid)
            .fetch_one(&origin.pg)
            .await
            .expect("one security event for the session");
            assert_eq!(event.0, "refresh_token_reuse");
            assert_eq!(
                (event.1.as_deref(), event.2.as_deref()),
                (Some(second.ip), Some(second.user_agent)),
                "{order}: the reusing request"
            );
            assert_eq!(
                (
                    event.3["rotated_by"]["ip"].as_str(),
                    event.3["rotated_by"]["user_agent"].as_str()
                ),
                (Some(first.ip), Some(first.user_agent)),
                "{order}: the rotating request"
            );
            eprintln!(
                "ATTACK 7 theft, grace {grace} s, {order}: second use 401 invalid_grant, session revoked, \
                 record gone; event ip/ua {:?}/{:?}, rotated_by {}",
                event.1, event.2, event.3["rotated_by"]
            );
        }
    }
}

/// 150 wrong passwords against one account, each from its own address, as fast as
/// the origin answers; then the real user after the announced delay.
async fn brute_force(origin: &Origin, label: &str) {
    let user = origin.new_user().await;
    let started = Instant::now();
    let (mut refused, mut throttled, mut retry_after) = (0u64, 0u64, 0u64);
    for i in 0..150u32 {
        let reply = Reply::from(
            origin
                .http
                .post(origin.url("/auth/login"))
                .header(
                    "x-forwarded-for",
                    format!("10.{}.{}.{}", i / 250, i % 250, 7),
                )
                .json(&json!({"username": user.username, "password": format!("guess-{i}")}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        match reply.status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled += 1;
                retry_after = reply
                    .header("retry-after")
                    .expect("429 carries Retry-After")
                    .parse()
                    .unwrap();
            }
            other => panic!("{label}: attempt {i}: {other}: {}", reply.text()),
        }
    }
    let took = started.elapsed();
    // 5 free failures, then locks of 1 s, 2 s, 4 s …: in t seconds at most
    // 1 + log2(t + 1) more password checks, whatever the addresses.
    let bound = 5 + 1 + (took.as_secs_f64() + 1.0).log2().floor() as u64;
    eprintln!(
        "ATTACK 8 brute force ({label}): 150 wrong passwords from 150 addresses in {:.1} s: \
         {refused} checked (401, bound {bound}), {throttled} throttled (429); last Retry-After {retry_after} s",
        took.as_secs_f64()
    );
    assert!(
        refused <= bound,
        "{label}: {refused} password checks > {bound}"
    );
    assert_eq!(refused + throttled, 150);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let reply = Reply::from(
        origin
            .http
            .post(origin.url("/auth/login"))
            .header("x-forwarded-for", VICTIM.ip)
            .json(&json!({"username": user.username, "password": user.password}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{label}: the real user after the delay: {}",
        reply.text()
    );
}

/// Expected (NIST SP 800-63B §5.2.2): per-account throttling holds however many
/// addresses the guesses come from: of 150, only the 5 free ones and those the
/// doubling locks let through are checked; every other gets 429 with Retry-After; the
/// real user logs in once the announced delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_from_many_addresses_is_throttled_and_the_user_gets_in_after_the_delay() {
    let origin = Origin::start_with(&[("CLIENT_IP_HEADER", "x-forwarded-for")]).await;
    brute_force(&origin, "Redis up").await;
}

/// Expected: the same with Redis unreachable: the in-process counters throttle
/// (fail closed), and the user still gets in after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_from_many_addresses_is_throttled_with_redis_down() {
    let origin = Origin::start_with(&[
        ("CLIENT_IP_HEADER", "x-forwarded-for"),
        ("REDIS_URL", DEAD_REDIS),
    ])
    .await;
    brute_force(&origin, "Redis down").await;
}

/// 40 wrong passwords for one account sent at once: how many were checked (401) and
/// how many refused (429, each with Retry-After).
async fn burst_of_wrong_passwords(origin: &Origin) -> (usize, usize) {
    let user = origin.new_user().await;
    let replies = futures::future::join_all((0..40).map(|i| {
        let username = user.username.clone();
        async move {
            origin
                .login_via_edge("198.51.100.40", &username, &format!("guess-{i}"), None)
                .await
        }
    }))
    .await;
    let mut checked = 0;
    let mut refused = 0;
    for reply in replies {
        match reply.status {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(
                    reply.header("retry-after").is_some(),
                    "429 without Retry-After"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    (checked, refused)
}

/// Expected: the attempt is reserved before the hash, atomically, so a burst gets the
/// 5 free attempts and the one that sets the lock, never more: ≤ 6 checked, 34+
/// refused with Retry-After. With Redis up and with Redis down (in-process counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_wrong_passwords_get_at_most_six_checks_redis_up_or_down() {
    for (label, redis) in [("Redis up", None), ("Redis down", Some(DEAD_REDIS))] {
        let env: Vec<(&str, &str)> = redis.map(|url| ("REDIS_URL", url)).into_iter().collect();
        let origin = Origin::start_with(&env).await;
        let (checked, refused) = burst_of_wrong_passwords(&origin).await;
        eprintln!(
            "ATTACK burst ({label}): 40 concurrent wrong passwords: {checked} checked (401), {refused} refused (429)"
        );
        assert!(checked <= 6, "{label}: {checked} password checks");
        assert_eq!(checked + refused, 40);
    }
}

/// Expected: at most REGISTRATIONS_PER_ADDRESS registrations an hour from one
/// address before delays (429 with Retry-After), taken names included: each costs a
/// hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_from_one_address_are_throttled() {
    let origin = Origin::start_with(&[("REGISTRATIONS_PER_ADDRESS", "10")]).await;
    let taken = origin.new_user().await;
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let mut request = origin
            .http
            .post(origin.url("/auth/register"))
            .json(&json!({"username": taken.username, "password": "another password"}));
        for (name, value) in origin.edge_headers("POST", "/auth/register", "198.51.100.60") {
            request = request.header(name, value);
        }
        let reply = Reply::from(request.send().await.unwrap()).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.header("retry-after").is_some());
        }
        statuses.push(reply.status.as_u16());
    }
    let conflicts = statuses.iter().filter(|&&s| s == 409).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!(
        "ATTACK registrations: 60 of a taken name from one address: {conflicts} × 409, {throttled} × 429"
    );
    assert!(
        conflicts <= 12,
        "{conflicts} registrations hashed: {statuses:?}"
    );
    assert_eq!(conflicts + throttled, 60, "{statuses:?}");
}

/// Expected: a flood of registrations holds at most its share of the hashing slots,
/// so a login sent meanwhile waits for one hash at most, not for the flood: with the
/// slots first come, first served, it waited behind every sign-up queued before it,
/// up to the queue timeout, one hiccup from a 503. 2 slots, a 2 s queue timeout, 200
/// registrations (several seconds of hashing) and a login 300 ms into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_registrations_never_makes_a_login_wait_into_a_503() {
    let origin = Origin::start_with(&[
        ("HASH_CONCURRENCY", "2"),
        ("HASH_QUEUE_TIMEOUT_SECS", "2"),
        ("REGISTRATIONS_PER_ADDRESS", "1000"),
    ])
    .await;
    let user = origin.new_user().await;
    let flood = futures::future::join_all((0..200).map(|i| {
        let origin = &origin;
        async move {
            origin
                .register(
                    &format!("flood.{i}.{}", &common::random_hex()[..8]),
                    "flood password",
                )
                .await
                .status
        }
    }));
    let login = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let reply = origin.login(&user.username, &user.password).await;
        (reply, started.elapsed())
    };
    let (statuses, (reply, took)) = tokio::join!(flood, login);
    let unavailable = statuses.iter().filter(|s| s.as_u16() == 503).count();
    eprintln!(
        "ATTACK registration flood: 200 registrations ({unavailable} × 503), a login meanwhile: {} in {:.2} s",
        reply.status,
        took.as_secs_f64()
    );
    assert_eq!(reply.status, StatusCode::OK, "the login: {}", reply.text());
    assert!(
        took < Duration::from_secs(1),
        "the login waited {took:?} behind the registrations (queue timeout 2 s)"
    );
}

/// Expected: guesses from 100 addresses lock the account for everyone without a
/// remembered device, but the owner, logging in from the browser that got the device
/// cookie at a past login, gets in with the right password: a bucket of its own with
/// the same limits (not an exemption: wrong guesses from that device lock it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_a_hundred_addresses_cannot_lock_the_owner_out_of_a_remembered_device() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let first = origin
        .login_via_edge("198.51.100.7", &user.username, &user.password, None)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let set_cookie = first
        .header("set-cookie")
        .expect("a device cookie")
        .to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("__Secure-device="), "{set_cookie}");

    let mut attacker_checked = 0;
    for i in 0..100u32 {
        let ip = format!("203.0.{}.{}", i / 200, i % 200 + 1);
        let reply = origin
            .login_via_edge(&ip, &user.username, &format!("guess-{i}"), None)
            .await;
        match reply.status {
            StatusCode::UNAUTHORIZED => attacker_checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("guess {i}: {other}"),
        }
    }
    // The attacker keeps the account locked. The lock its guesses left lasts a few
    // seconds (1 s, 2 s, 4 s … after each checked guess), which the slow steps below
    // can outlive on a loaded machine: made to outlast them, as a persistent attacker
    // would. If the owner's success cleared the account's bucket, the lock would go.
    let lock = format!(
        "{}thr:{{a:{}}}:lock",
        origin.prefix,
        origin::throttle::account_id(&user.username)
    );
    let mut conn = origin.redis.clone();
    let mut held = false;
    for i in 0..40 {
        let extended: i64 = redis::cmd("PEXPIRE")
            .arg(&lock)
            .arg(120_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if extended == 1 {
            held = true;
            break;
        }
        // It ran out already: one more checked guess locks the account again.
        origin
            .login_via_edge("203.0.9.8", &user.username, &format!("again-{i}"), None)
            .await;
    }
    assert!(
        held,
        "the attacker's guesses never locked the account ({lock})"
    );
    let without_device = origin
        .login_via_edge("198.51.100.8", &user.username, &user.password, None)
        .await;
    let with_device = origin
        .login_via_edge(
            "198.51.100.9",
            &user.username,
            &user.password,
            Some(&cookie),
        )
        .await;
    let attacker_after = origin
        .login_via_edge("203.0.9.9", &user.username, &user.password, None)
        .await;
    eprintln!(
        "ATTACK lock-out: 100 guesses from 100 addresses ({attacker_checked} checked); then the right password \
         without the device cookie: {}, with it: {}, the attacker again: {}",
        without_device.status, with_device.status, attacker_after.status
    );
    assert_eq!(without_device.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with_device.status, StatusCode::OK, "{}", with_device.text());
    assert_eq!(
        attacker_after.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the owner's success clears the device's bucket, not the account's"
    );

    // A forged cookie names no device: it meets the account's lock.
    let reply = origin
        .login_via_edge(
            "198.51.100.9",
            &user.username,
            &user.password,
            Some(&cookie.replace(
                cookie.split('=').nth(1).unwrap(),
                "AAAAAAAAAAAAAAAAAAAAAA.AAAA",
            )),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged cookie is no device"
    );

    // The device's bucket has the account's limits.
    let mut device_statuses = Vec::new();
    for i in 0..8 {
        let reply = origin
            .login_via_edge(
                "198.51.100.9",
                &user.username,
                &format!("typo-{i}"),
                Some(&cookie),
            )
            .await;
        device_statuses.push(reply.status.as_u16());
    }
    assert!(
        device_statuses.contains(&429)
            && device_statuses.iter().filter(|&&s| s == 401).count() <= 6,
        "wrong passwords from the device: {device_statuses:?}"
    );
}

/// Expected: behind the edge the address is the one the edge signed; IPv6 addresses
/// count per /64, so 60 addresses of one /64 share one limit (50 attempts an hour,
/// then 429); 60 addresses of 60 /64s do not. An unsigned, or wrongly signed,
/// `x-auth-client-ip` is ignored: the TCP peer counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_one_ipv6_64_share_the_address_limit() {
    let origin = Origin::start().await;
    let run = |label: &'static str, ip_of: fn(u32) -> String, sign: bool| {
        let origin = &origin;
        async move {
            let started = Instant::now();
            let (mut checked, mut throttled) = (0u64, 0u64);
            for i in 0..60u32 {
                let ip = ip_of(i);
                let username = format!("nobody.{label}.{i}");
                let reply = if sign {
                    origin
                        .login_via_edge(&ip, &username, "wrong password", None)
                        .await
                } else {
                    Reply::from(
                        origin
                            .http
                            .post(origin.url("/auth/login"))
                            .header("x-auth-client-ip", &ip)
                            .header("x-auth-time", shared::unix_now().to_string())
                            .header("x-auth-proof", "AAAA")
                            .header("x-forwarded-for", &ip)
                            .json(&json!({"username": username, "password": "wrong password"}))
                            .send()
                            .await
                            .unwrap(),
                    )
                    .await
                };
                match reply.status {
                    StatusCode::UNAUTHORIZED => checked += 1,
                    StatusCode::TOO_MANY_REQUESTS => throttled += 1,
                    other => panic!("{label} {i}: {other}: {}", reply.text()),
                }
            }
            let bound = 50 + 1 + (started.elapsed().as_secs_f64() + 1.0).log2().floor() as u64;
            eprintln!(
                "ATTACK {label}: 60 failed logins on 60 accounts: {checked} checked, {throttled} × 429 (bound {bound})"
            );
            (checked, throttled, bound)
        }
    };
    let (checked, throttled, bound) =
        run("one /64", |i| format!("2001:db8:7:7:{:x}::1", i + 1), true).await;
    assert!(
        checked <= bound && throttled >= 60 - bound,
        "one /64: {checked} checked"
    );
    let (checked, throttled, _) =
        run("sixty /64s", |i| format!("2001:db8:8:{:x}::1", i + 1), true).await;
    assert_eq!((checked, throttled), (60, 0), "sixty /64s");
    let (checked, _, bound) = run("unsigned", |i| format!("192.0.2.{}", i + 1), false).await;
    assert!(
        checked <= bound,
        "unsigned addresses must count as the peer: {checked} checked"
    );
}
