//! Refresh-token rotation against the running origin (DESIGN.md §2 "Rotation and
//! reuse", §3 session records): one winner under concurrency, reuse revokes the
//! session durably, and the Redis record lives as long as the access token.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Origin, Tokens};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_create_at_most_one_new_token() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let login = origin.login_ok(&user.username, &user.password).await;
    let mut current = login.refresh().to_owned();

    // A race shows only in some interleavings: several rounds, each presenting the
    // previous round's child 50 times at once.
    for round in 1..=ROUNDS {
        // Act
        let replies = futures::future::join_all((0..50).map(|_| origin.refresh(&current))).await;

        // Assert
        let mut statuses = BTreeMap::new();
        for reply in &replies {
            *statuses.entry(reply.status.as_u16()).or_insert(0) += 1;
        }
        let server_errors: Vec<String> = replies
            .iter()
            .filter(|r| r.status.is_server_error())
            .map(|r| format!("{} {}", r.status, r.text()))
            .collect();
        assert!(
            server_errors.is_empty(),
            "round {round}: 5xx under concurrency ({statuses:?}): {server_errors:?}"
        );
        let children: BTreeSet<String> = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .map(|r| Tokens(r.json()).refresh().to_owned())
            .collect();
        let rows = token_rows(&origin, &login.sid()).await;
        assert!(
            !children.is_empty(),
            "round {round}: no refresh succeeded: {statuses:?}"
        );
        assert_eq!(
            children.len(),
            1,
            "round {round}: the 200s ({statuses:?}) returned {} different refresh tokens; \
             refresh_token rows for the session: {rows}",
            children.len()
        );
        assert_eq!(
            rows,
            1 + round,
            "round {round}: refresh_token rows for the session: the login's token and exactly one child per round"
        );
        current = children.into_iter().next().unwrap();
    }

    // The family is intact: the last child works, and so does its access token.
    let next = origin.refresh_ok(&current).await;
    assert_eq!(origin.me(next.access()).await.status, StatusCode::OK);
    assert_eq!(origin.session_revoked(&login.sid()).await, Some(false));
}

/// The refresh-token rows of session `sid`: its login's and one per rotation.
async fn token_rows(origin: &Origin, sid: &str) -> i64 {
    sqlx::query_scalar("select count(*) from refresh_token where session_id::text = $1")
        .bind(sid)
        .fetch_one(&origin.pg)
        .await
        .unwrap()
}

/// Rounds of 50 concurrent refreshes in the test above.
const ROUNDS: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_rotated_together_each_get_their_own_session_back() {
    // The origin rotates the refreshes that arrive together in one statement
    // (origin::db::rotations) and matches its rows back to their requests by position.
    // A mix-up would hand one client another's session: each must get its own back,
    // rotated once, and its new token must work.
    // Arrange: 24 sessions of 3 users.
    let origin = Origin::start().await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let user = origin.new_user().await;
        for _ in 0..8 {
            sessions.push(origin.login_ok(&user.username, &user.password).await);
        }
    }

    for round in 1..=3 {
        // Act: every session refreshes at once.
        let replies =
            futures::future::join_all(sessions.iter().map(|t| origin.refresh(t.refresh()))).await;

        // Assert
        let mut next = Vec::new();
        for (before, reply) in sessions.iter().zip(replies) {
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "round {round}: {}",
                reply.text()
            );
            let after = Tokens(reply.json());
            assert_eq!(
                (after.sub(), after.sid()),
                (before.sub(), before.sid()),
                "round {round}: a refresh came back with another session"
            );
            next.push(after);
        }
        sessions = next;
    }
    for t in &sessions {
        assert_eq!(origin.me(t.access()).await.status, StatusCode::OK);
        let rows = token_rows(&origin, &t.sid()).await;
        assert_eq!(rows, 4, "the login's token and one per round");
    }
    // And they did go together: fewer statements than refreshes.
    let metrics = origin.get(origin.ops_url("/metrics")).await.text();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let (refreshes, statements) = (
        value("auth_refresh_batch_size_sum"),
        value("auth_refresh_batch_size_count"),
    );
    assert_eq!(refreshes, 72.0, "every refresh went through a batch");
    assert!(
        statements < refreshes,
        "{statements} statements for {refreshes} refreshes"
    );
}

/// On the current-thread runtime, so every job below is queued before the runner first
/// runs: one batch.
#[tokio::test]
async fn a_batch_held_up_by_a_locked_row_gives_up_in_time_and_commits_nothing_later() {
    use origin::auth::tokens::RefreshToken;
    use origin::db::lane::{ATTEMPT_BUDGET, Lane};
    use origin::db::rotations::{NotRun, RUNNERS, Rotations};
    use origin::db::sessions::{Presentation, Rotation};

    // A batch waits for every row it touches. One row held elsewhere must not hold the
    // whole batch for the lane's budget, nor let it commit after its refreshes were
    // told to run again without it (they would then find their tokens rotated by
    // a batch whose answer nobody got).
    // Arrange: four sessions; another transaction holds the first one's token row.
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let mut hashes = Vec::new();
    for _ in 0..4 {
        let login = origin.login_ok(&user.username, &user.password).await;
        hashes.push(RefreshToken::parse(login.refresh()).unwrap().hash());
    }
    let mut holder = origin.pg.begin().await.unwrap();
    sqlx::query("select 1 from refresh_token where token_hash = $1 for update")
        .bind(&hashes[0])
        .execute(&mut *holder)
        .await
        .unwrap();
    let rotations = Rotations::new(Lane::new(origin.pg.clone(), RUNNERS), 604_800, 900);
    let presentation = |hash: &Vec<u8>| Presentation {
        token_hash: hash.clone(),
        rotation: Rotation {
            ip: "192.0.2.1".into(),
            user_agent: None,
            sealed_successor: vec![0; 32],
            successor_id: uuid::Uuid::new_v4(),
            successor_hash: RefreshToken::generate().hash(),
        },
    };

    // Act
    let started = std::time::Instant::now();
    let answers =
        futures::future::join_all(hashes.iter().map(|h| rotations.rotate(presentation(h)))).await;
    let waited = started.elapsed();
    holder.rollback().await.unwrap();

    // Assert
    assert!(
        answers.iter().all(|a| matches!(a, Err(NotRun))),
        "the batch is given up, each refresh to run again alone"
    );
    assert!(
        waited < ATTEMPT_BUDGET,
        "gave up after {waited:?}: a locked row held the batch for the lane's whole budget"
    );
    // A statement still waiting for the row would commit as soon as it is free.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let rotated: i64 = sqlx::query_scalar(
        "select count(*) from refresh_token where token_hash = any($1) and rotated_at is not null",
    )
    .bind(&hashes)
    .fetch_one(&origin.pg)
    .await
    .unwrap();
    assert_eq!(rotated, 0, "the given-up batch committed later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_token_two_rotations_old_revokes_the_session() {
    // Arrange: t0 → t1 → t2, no grace window, so any reuse is theft.
    let mut origin = Origin::start_with(&[("REFRESH_GRACE_SECS", "0")]).await;
    let user = origin.new_user().await;
    let t0 = origin.login_ok(&user.username, &user.password).await;
    let t1 = origin.refresh_ok(t0.refresh()).await;
    let t2 = origin.refresh_ok(t1.refresh()).await;
    let (sub, sid) = (t2.sub(), t2.sid());
    let record = origin.session_key(&sub, &sid);
    assert!(
        origin.has_record(&record).await,
        "the session record {record} exists before the replay"
    );
    assert_eq!(origin.me(t2.access()).await.status, StatusCode::OK);

    // Act: replay t0, and kill the origin the moment it has answered.
    let replay = origin.refresh(t0.refresh()).await;
    origin.kill();

    // Assert: the revocation was committed before the answer, in both stores.
    assert_eq!(
        replay.status,
        StatusCode::UNAUTHORIZED,
        "replayed t0: {}",
        replay.text()
    );
    assert_eq!(
        replay.error_code().as_deref(),
        Some("invalid_grant"),
        "replayed t0: {}",
        replay.text()
    );
    assert_eq!(
        origin.session_revoked(&sid).await,
        Some(true),
        "session.revoked_at after the replay"
    );
    assert!(
        !origin.has_record(&record).await,
        "the session record {record} survived the replay"
    );
    let events: i64 = sqlx::query_scalar(
        "select count(*) from security_event where session_id::text = $1 or user_id::text = $2",
    )
    .bind(&sid)
    .bind(&sub)
    .fetch_one(&origin.pg)
    .await
    .unwrap();
    assert!(events >= 1, "no security_event row for the reuse");

    // And it holds across a restart: nothing was only in the dead process's memory.
    origin.kill_and_restart().await;
    let after = origin.refresh(t2.refresh()).await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "refresh with t2 after reuse: {}",
        after.text()
    );
    assert_eq!(after.error_code().as_deref(), Some("invalid_grant"));
    let me = origin.me(t2.access()).await;
    assert_eq!(
        me.status,
        StatusCode::UNAUTHORIZED,
        "/api/me with the latest access token: {}",
        me.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_previous_token_inside_the_grace_window_returns_the_same_child() {
    // Arrange
    let origin = Origin::start_with(&[("REFRESH_GRACE_SECS", "30")]).await;
    let user = origin.new_user().await;
    let t0 = origin.login_ok(&user.username, &user.password).await;
    let t1 = origin.refresh_ok(t0.refresh()).await;

    // Act: the client lost the response and retries with t0.
    let retry = origin.refresh(t0.refresh()).await;

    // Assert
    assert_eq!(
        retry.status,
        StatusCode::OK,
        "retry inside the grace window: {}",
        retry.text()
    );
    assert_eq!(
        Tokens(retry.json()).refresh(),
        t1.refresh(),
        "the retry returns the current child"
    );
    assert_eq!(
        origin.session_revoked(&t0.sid()).await,
        Some(false),
        "a retry is not theft"
    );
    let t2 = origin.refresh_ok(t1.refresh()).await;
    assert_eq!(origin.me(t2.access()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_record_ttl_is_remaining_lifetime_plus_buffer() {
    // Arrange: lifetimes unlike the defaults, so the test sees that they are honoured.
    let (access_ttl, buffer) = (600u64, 45u64);
    let origin = Origin::start_with(&[
        ("ACCESS_TOKEN_TTL_SECS", &access_ttl.to_string()),
        ("SESSION_RECORD_BUFFER_SECS", &buffer.to_string()),
    ])
    .await;
    let user = origin.new_user().await;

    // Act
    let tokens = origin.login_ok(&user.username, &user.password).await;
    let key = origin.session_key(&tokens.sub(), &tokens.sid());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut origin.redis.clone())
        .await
        .unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut origin.redis.clone())
        .await
        .unwrap();

    // Assert
    let expires_in = tokens.0["expires_in"].as_u64().expect("expires_in");
    assert_eq!(
        expires_in, access_ttl,
        "expires_in follows ACCESS_TOKEN_TTL_SECS"
    );
    assert!(
        pttl > 0,
        "PTTL of {key} is {pttl}: the record is missing (-2) or has no expiry (-1)"
    );
    let (low, high) = (
        (expires_in + buffer - 5) * 1000,
        (expires_in + buffer + 1) * 1000,
    );
    assert!(
        (low as i64..=high as i64).contains(&pttl),
        "PTTL {pttl} ms, want access lifetime {expires_in} s + buffer {buffer} s (range {low}..={high} ms)"
    );
    let shared::session::Stored::Active(record) =
        shared::session::Stored::decode(value.expect("record value").as_bytes())
            .expect("the record is a session record")
    else {
        panic!("a tombstone for an active session");
    };
    assert_eq!(record.sub, tokens.sub());
    assert!(
        record.exp >= tokens.claims()["exp"].as_u64().unwrap(),
        "record exp (the session's end) {} is before the access token's exp",
        record.exp
    );
}

/// Expected: a retry inside the grace window issues a new access token, so the session
/// row moves on with it (last use, access expiry, version) and Postgres and Redis
/// still agree: `check-consistency` exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_window_retry_leaves_postgres_and_redis_agreeing() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let t0 = origin.login_ok(&user.username, &user.password).await;
    let t1 = origin.refresh_ok(t0.refresh()).await;
    // Longer than check-consistency's slack (5 s): a row left at the rotation's
    // times is then seen as a record outliving it.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let retried = origin.refresh_ok(t0.refresh()).await;
    assert_eq!(retried.refresh(), t1.refresh(), "the same successor");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, report) = origin.check_consistency();
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_postgres_closed_the_origins_connections_still_succeeds() {
    // The common refresh runs on connections handed out without a ping
    // (origin::db::lane): one that Postgres has closed is found by the statement,
    // which then runs again through the pool instead of failing the refresh.
    // Arrange: a refresh leaves a lane connection open and idle.
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let t0 = origin.login_ok(&user.username, &user.password).await;
    let t1 = origin.refresh_ok(t0.refresh()).await;

    // Act: Postgres ends every connection of the origin, as a restart or a failover
    // does, and the client refreshes. From a connection of the test's own, which
    // outlives the others (the test's pool loses its connections too).
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&origin.db.url)
        .await
        .unwrap();
    let ended: Vec<(i32,)> = sqlx::query_as(
        // `offset 0` keeps the filter ahead of the call, which would otherwise be free
        // to end this very connection first.
        "select pid from (select pid from pg_stat_activity where datname = current_database() \
         and pid <> pg_backend_pid() offset 0) others where pg_terminate_backend(pid)",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the origin had connections to end");
    let pids: Vec<i32> = ended.into_iter().map(|(pid,)| pid).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (left,): (i64,) =
            sqlx::query_as("select count(*) from pg_stat_activity where pid = any($1)")
                .bind(&pids)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} connections still open 10 s after pg_terminate_backend"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reply = origin.refresh(t1.refresh()).await;

    // Assert
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "refresh after Postgres closed the connections: {}\norigin log:\n{}",
        reply.text(),
        origin.log.text()
    );
    let t2 = Tokens(reply.json());
    assert_ne!(t2.refresh(), t1.refresh(), "a new token");
    assert_eq!(origin.me(t2.access()).await.status, StatusCode::OK);
    assert_eq!(origin.session_revoked(&t0.sid()).await, Some(false));
}
