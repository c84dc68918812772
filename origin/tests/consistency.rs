//! `origin check-consistency` (issue 7): it agrees on a healthy store, names every kind
//! of planted disagreement (so it can fail), and a restarted origin repairs what a
//! killed one could have left behind.

mod common;

use common::Origin;
use reqwest::StatusCode;

async fn redis(origin: &Origin, args: &[&str]) -> redis::Value {
    let mut conn = origin.redis.clone();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.expect("redis command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_consistency_agrees_on_a_healthy_store_and_names_each_planted_disagreement() {
    let mut origin = Origin::start().await;
    // (mutable: killed at the end, before its database is dropped)
    let user = origin.new_user().await;
    let kept = origin.login_ok(&user.username, &user.password).await;
    let emptied = origin.login_ok(&user.username, &user.password).await;
    let revoked = origin.login_ok(&user.username, &user.password).await;
    let logout = origin
        .bearer(reqwest::Method::POST, "/auth/logout", revoked.access())
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    // The first freshness check builds every partition within a second; let it
    // finish before judging.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let (code, report) = origin.check_consistency();
    assert_eq!(code, 0, "healthy store: {report}");
    assert!(report.contains("they agree"), "{report}");
    assert!(
        report.contains("3 sessions in Postgres (2 active)"),
        "{report}"
    );

    // Plant one disagreement of each kind.
    let kept_key = origin.session_key(&kept.sub(), &kept.sid());
    let value = match redis(&origin, &["GET", &kept_key]).await {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("record of the kept session: {other:?}"),
    };
    let revoked_key = origin.session_key(&revoked.sub(), &revoked.sid());
    let unknown_sid = "0d7c2f3e-0000-4000-8000-00000000beef";
    let unknown_key = origin.session_key(&kept.sub(), unknown_sid);
    redis(&origin, &["SET", &revoked_key, &value, "EX", "600"]).await;
    redis(&origin, &["SET", &unknown_key, &value, "EX", "600"]).await;
    redis(
        &origin,
        &["DEL", &origin.session_key(&emptied.sub(), &emptied.sid())],
    )
    .await;
    redis(&origin, &["PERSIST", &kept_key]).await;

    let (code, report) = origin.check_consistency();
    assert_eq!(code, 1, "{report}");
    for expected in [
        format!(
            "session {}: revoked in Postgres, record still in Redis",
            revoked.sid()
        ),
        format!("{unknown_key}: record of a session Postgres does not have"),
        format!(
            "session {}: active in Postgres, no record in Redis",
            emptied.sid()
        ),
        format!("session {}: record TTL -1 s", kept.sid()),
        "4 disagreements".to_string(),
    ] {
        assert!(
            report.contains(&expected),
            "missing {expected:?} in:\n{report}"
        );
    }

    // A partition without its freshness marker is reported too.
    let marker = shared::session::freshness_key(&origin.prefix, &kept.sub());
    redis(&origin, &["RENAME", &marker, &format!("{marker}-aside")]).await;
    let (_, report) = origin.check_consistency();
    assert!(
        report.contains("1 of 1024 partitions have no freshness marker"),
        "{report}"
    );
    redis(&origin, &["RENAME", &format!("{marker}-aside"), &marker]).await;

    // Removing the markers makes the origins rebuild from Postgres: the revoked
    // session's record becomes a tombstone (newer version), the missing record comes
    // back. A record of a session Postgres never had, or one at the current version
    // made to live forever, is nothing an origin writes and nothing a versioned
    // rebuild overwrites: they stay reported until an operator removes them.
    for partition in 0..shared::session::PARTITIONS {
        redis(
            &origin,
            &[
                "DEL",
                &shared::session::partition_freshness_key(&origin.prefix, partition),
            ],
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (code, report) = origin.check_consistency();
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("2 disagreements")
            && report.contains(unknown_sid)
            && report.contains("record TTL -1 s"),
        "{report}"
    );
    redis(&origin, &["DEL", &unknown_key]).await;
    redis(&origin, &["EXPIRE", &kept_key, "600"]).await;
    let (code, report) = origin.check_consistency();
    assert_eq!(code, 0, "after the rebuild: {report}");
    eprintln!("check-consistency after repair: {}", report.trim());
    origin.kill();
}
