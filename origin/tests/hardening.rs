//! What an attacker or a careless client can do to the running origin: probe for
//! users, send garbage, skip client authentication, or read its database and logs
//! (DESIGN.md §4 errors, §6 "no secrets").

mod common;

use common::{CLIENT_ID, CLIENT_SECRET, Origin, Reply, Tokens, hex};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_get_identical_answers() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;

    // Act
    let wrong_password = origin.login(&user.username, "not-the-password-1").await;
    let unknown_user = origin.login("nobody.at.all", "not-the-password-1").await;

    // Assert
    assert_eq!(
        wrong_password.status,
        StatusCode::UNAUTHORIZED,
        "wrong password: {}",
        wrong_password.text()
    );
    assert_eq!(
        wrong_password.error_code().as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(unknown_user.status, wrong_password.status);
    assert_eq!(
        unknown_user.text(),
        wrong_password.text(),
        "bodies differ: a user can be probed for"
    );
    assert_eq!(
        unknown_user.header("content-type"),
        wrong_password.header("content-type")
    );
    assert_eq!(
        unknown_user.header("www-authenticate"),
        wrong_password.header("www-authenticate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_secret_in_any_row_or_log_line() {
    // Arrange and act: a whole flow, with every kind of secret passing through.
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let wrong_password = "wrong-password-7f3c9a";
    let first = origin.login_ok(&user.username, &user.password).await;
    let second = origin.refresh_ok(first.refresh()).await;
    let third = origin.refresh_ok(second.refresh()).await;
    let failed = origin.login(&user.username, wrong_password).await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    let other = origin.login_ok(&user.username, &user.password).await;
    // Token-bearing requests a careless log line would print.
    let client = Some((CLIENT_ID, CLIENT_SECRET));
    origin
        .client_form("/auth/introspect", client, &[("token", third.access())])
        .await;
    origin
        .client_form("/auth/introspect", client, &[("token", other.refresh())])
        .await;
    origin
        .client_form(
            "/auth/introspect",
            Some((CLIENT_ID, "wrong-client-secret")),
            &[("token", other.access())],
        )
        .await;
    origin
        .client_form("/auth/revoke", client, &[("token", other.refresh())])
        .await;
    let logout = origin
        .bearer(reqwest::Method::POST, "/auth/logout", third.access())
        .await;
    assert_eq!(
        logout.status,
        StatusCode::NO_CONTENT,
        "logout: {}",
        logout.text()
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // let log lines land

    let mut secrets: Vec<(String, String)> = vec![
        ("password".into(), user.password.clone()),
        ("wrong password".into(), wrong_password.into()),
        ("client secret".into(), CLIENT_SECRET.into()),
    ];
    for password in [&user.password, &wrong_password.to_owned()] {
        secrets.push(("password as bytea hex".into(), hex(password.as_bytes())));
    }
    for (i, tokens) in [&first, &second, &third, &other].into_iter().enumerate() {
        add_token_secrets(&mut secrets, &format!("tokens #{i}"), tokens);
    }

    // Assert: every row of every table, every Redis value under the prefix, the log.
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables \
         where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(&origin.pg)
    .await
    .unwrap();
    for table in ["app_user", "session", "refresh_token", "security_event"] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing: {tables:?}"
        );
    }
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!(r#"select t::text from "{table}" t"#))
            .fetch_all(&origin.pg)
            .await
            .unwrap();
        for row in rows {
            haystacks.push((format!("row of {table}"), row));
        }
    }
    assert!(
        haystacks.iter().any(|(w, _)| w == "row of refresh_token"),
        "no refresh_token rows to check"
    );
    for (key, value) in origin.redis_dump().await {
        haystacks.push((format!("redis {key}"), format!("{key} {value}")));
    }
    let log = origin.log.text();
    assert!(
        log.lines().count() >= 3,
        "the origin's log was not captured: {log:?}"
    );
    for line in log.lines() {
        haystacks.push(("log line".into(), line.to_owned()));
    }
    // Control: the search does find what is there (the username is in app_user, the
    // session id in the log of the logout or the refreshes).
    let found = |needle: &str| haystacks.iter().any(|(_, text)| text.contains(needle));
    assert!(
        found(&user.username),
        "the dump lacks the username: the search would miss leaks"
    );
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (where_, text) in &haystacks {
            if text.to_lowercase().contains(&secret.to_lowercase()) {
                leaks.push(format!("{what} in {where_}: {text}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets found:\n{}", leaks.join("\n"));
}

/// A token set's secrets: both tokens, the access token's signature, and the refresh
/// token's bytes as Postgres would print them if stored raw.
fn add_token_secrets(secrets: &mut Vec<(String, String)>, what: &str, tokens: &Tokens) {
    use base64::Engine as _;
    secrets.push((format!("{what} access token"), tokens.access().into()));
    let signature = tokens.access().rsplit('.').next().unwrap();
    secrets.push((format!("{what} access token signature"), signature.into()));
    secrets.push((format!("{what} refresh token"), tokens.refresh().into()));
    secrets.push((
        format!("{what} refresh token as hex"),
        hex(tokens.refresh().as_bytes()),
    ));
    for engine in [
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
    ] {
        if let Ok(raw) = engine.decode(tokens.refresh()) {
            secrets.push((format!("{what} refresh token bytes as hex"), hex(&raw)));
        }
    }
}

/// A request the origin must refuse with a 4xx and a JSON error body.
struct Case {
    what: String,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    client_auth: bool,
}

fn json_case(path: &'static str, what: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        what: what.into(),
        path,
        content_type: Some("application/json"),
        body: body.into(),
        client_auth: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_error_never_a_5xx() {
    // Arrange
    let origin = Origin::start().await;
    let huge_json = format!(
        r#"{{"username":"{}","password":"{}"}}"#,
        "a".repeat(512 * 1024),
        "b".repeat(512 * 1024)
    );
    let huge_refresh = format!(r#"{{"refresh_token":"{}"}}"#, "r".repeat(1024 * 1024));
    let long_password = format!(
        r#"{{"username":"valid.name","password":"{}"}}"#,
        "p".repeat(257)
    );
    let long_username = format!(
        r#"{{"username":"{}","password":"long enough password"}}"#,
        "u".repeat(65)
    );
    let mut cases = Vec::new();
    for path in ["/auth/register", "/auth/login"] {
        for (what, body) in [
            ("empty body", ""),
            ("empty object", "{}"),
            ("missing password", r#"{"username":"valid.name"}"#),
            ("missing username", r#"{"password":"long enough password"}"#),
            ("numbers", r#"{"username":1,"password":2}"#),
            ("nulls", r#"{"username":null,"password":null}"#),
            (
                "nested objects",
                r#"{"username":{"$ne":""},"password":{"$ne":""}}"#,
            ),
            ("array", r#"["valid.name","long enough password"]"#),
            ("string", r#""valid.name""#),
            ("null", "null"),
            ("invalid JSON", "{"),
            ("truncated JSON", r#"{"username":"valid.name","#),
            (
                "trailing garbage",
                r#"{"username":"valid.name","password":"long enough password"} x"#,
            ),
            (
                "control characters",
                "{\"username\":\"val\\u0000id\\u0007\",\"password\":\"long\\u0000enough\\npassword\"}",
            ),
            (
                "SQL in username",
                r#"{"username":"'; drop table app_user; --","password":"' or '1'='1"}"#,
            ),
            (
                "unicode username",
                r#"{"username":"ünïcødé💥","password":"long enough password"}"#,
            ),
            (
                "lone surrogate",
                r#"{"username":"\ud800","password":"long enough password"}"#,
            ),
            (
                "short username",
                r#"{"username":"ab","password":"long enough password"}"#,
            ),
            ("empty strings", r#"{"username":"","password":""}"#),
        ] {
            cases.push(json_case(path, what, body));
        }
        cases.push(json_case(path, "1 MiB body", huge_json.clone()));
        cases.push(json_case(
            path,
            "257-character password",
            long_password.clone(),
        ));
        cases.push(json_case(
            path,
            "65-character username",
            long_username.clone(),
        ));
        cases.push(Case {
            what: "text/plain content type".into(),
            path,
            content_type: Some("text/plain"),
            body: br#"{"username":"valid.name","password":"long enough password"}"#.to_vec(),
            client_auth: false,
        });
        cases.push(Case {
            what: "no content type".into(),
            path,
            content_type: None,
            body: br#"{"username":"valid.name","password":"long enough password"}"#.to_vec(),
            client_auth: false,
        });
        cases.push(json_case(
            path,
            "invalid UTF-8",
            b"{\"username\":\"\xff\xfe\",\"password\":\"long enough password\"}".to_vec(),
        ));
    }
    cases.push(json_case(
        "/auth/register",
        "7-character password",
        r#"{"username":"valid.name","password":"1234567"}"#,
    ));
    for (what, body) in [
        ("empty body", ""),
        ("empty object", "{}"),
        ("null token", r#"{"refresh_token":null}"#),
        ("number token", r#"{"refresh_token":12345}"#),
        ("array token", r#"{"refresh_token":["a"]}"#),
        ("empty token", r#"{"refresh_token":""}"#),
        (
            "unknown token",
            r#"{"refresh_token":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        ),
        (
            "SQL token",
            r#"{"refresh_token":"'; drop table refresh_token; --"}"#,
        ),
        ("unicode token", r#"{"refresh_token":"ünïcødé💥"}"#),
        (
            "control characters",
            "{\"refresh_token\":\"\\u0000\\u0001\"}",
        ),
        ("invalid JSON", "{\"refresh_token\":"),
    ] {
        cases.push(json_case("/auth/refresh", what, body));
    }
    cases.push(json_case("/auth/refresh", "1 MiB body", huge_refresh));
    cases.push(Case {
        what: "text/plain content type".into(),
        path: "/auth/refresh",
        content_type: Some("text/plain"),
        body: br#"{"refresh_token":"abc"}"#.to_vec(),
        client_auth: false,
    });
    for path in ["/auth/revoke", "/auth/introspect"] {
        let form = Some("application/x-www-form-urlencoded");
        for (what, body, client_auth) in [
            ("no client auth", "token=abc".to_owned(), false),
            (
                "no client auth, SQL token",
                "token=%27%3B+drop+table+session%3B+--".to_owned(),
                false,
            ),
            ("missing token", "".to_owned(), true),
            ("wrong parameter", "tokn=abc".to_owned(), true),
            (
                "1 MiB body",
                format!("token={}", "t".repeat(1024 * 1024)),
                true,
            ),
        ] {
            cases.push(Case {
                what: what.into(),
                path,
                content_type: form,
                body: body.into_bytes(),
                client_auth,
            });
        }
        cases.push(Case {
            what: "JSON instead of a form".into(),
            path,
            content_type: Some("application/json"),
            body: br#"{"token":"abc"}"#.to_vec(),
            client_auth: true,
        });
    }

    // Act and assert, collecting every failure before reporting.
    // A fresh connection per case: a server may close a connection after refusing an
    // oversized body unread (RFC 9110 §15.5.14), and reusing it would race the close.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = http.post(origin.url(case.path)).body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if case.client_auth {
            request = request.basic_auth(CLIENT_ID, Some(CLIENT_SECRET));
        }
        let reply = match request.send().await {
            Ok(response) => Reply::from(response).await,
            Err(e) => {
                failures.push(format!(
                    "POST {} [{}]: no HTTP answer: {e:?}",
                    case.path, case.what
                ));
                continue;
            }
        };
        let error = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        if !reply.status.is_client_error() || error.is_none() {
            let mut text = reply.text();
            text.truncate(300);
            failures.push(format!(
                "POST {} [{}]: {} {text}",
                case.path, case.what, reply.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases did not get a 4xx with a JSON error:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Strange but well-formed tokens at revoke and introspect are answered normally
    // (RFC 7009 §2.2: 200 for an invalid token; RFC 7662 §2.2: inactive).
    for token in ["'; drop table session; --", "ünïcødé💥", "\u{0}\u{1}", ""] {
        let revoke = origin
            .client_form(
                "/auth/revoke",
                Some((CLIENT_ID, CLIENT_SECRET)),
                &[("token", token)],
            )
            .await;
        assert!(
            !revoke.status.is_server_error(),
            "revoke {token:?}: {} {}",
            revoke.status,
            revoke.text()
        );
        let introspect = origin
            .client_form(
                "/auth/introspect",
                Some((CLIENT_ID, CLIENT_SECRET)),
                &[("token", token)],
            )
            .await;
        assert!(
            !introspect.status.is_server_error(),
            "introspect {token:?}: {} {}",
            introspect.status,
            introspect.text()
        );
        if introspect.status == StatusCode::OK {
            assert_eq!(introspect.json()["active"], false, "introspect {token:?}");
        }
    }
    // The SQL-looking inputs did nothing.
    let users: i64 = sqlx::query_scalar("select count(*) from app_user")
        .fetch_one(&origin.pg)
        .await
        .unwrap();
    assert_eq!(users, 0, "a bad-input registration created a user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_and_revoke_require_client_auth() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    let bad_clients: [(&str, Option<(&str, &str)>); 4] = [
        ("no credentials", None),
        ("wrong secret", Some((CLIENT_ID, "test-secret-0123456788"))),
        ("unknown client", Some(("other-client", CLIENT_SECRET))),
        ("empty secret", Some((CLIENT_ID, ""))),
    ];

    // Act and assert: without the client's credentials, nothing is told or done.
    for path in ["/auth/introspect", "/auth/revoke"] {
        for (what, client) in bad_clients {
            let reply = origin
                .client_form(path, client, &[("token", tokens.refresh())])
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path} with {what}: {}",
                reply.text()
            );
            assert_eq!(
                reply.error_code().as_deref(),
                Some("invalid_client"),
                "{path} with {what}: {}",
                reply.text()
            );
            assert!(
                !reply.text().contains("active"),
                "{path} with {what} told something: {}",
                reply.text()
            );
        }
    }
    assert_eq!(
        origin.me(tokens.access()).await.status,
        StatusCode::OK,
        "the refused revokes revoked nothing"
    );
    let client = Some((CLIENT_ID, CLIENT_SECRET));
    let introspect = origin
        .client_form("/auth/introspect", client, &[("token", tokens.access())])
        .await;
    assert_eq!(
        introspect.status,
        StatusCode::OK,
        "introspect with credentials: {}",
        introspect.text()
    );
    let body = introspect.json();
    assert_eq!(
        body["active"], true,
        "a live access token is active: {body}"
    );
    assert_eq!(
        body["sub"],
        user.user_id.as_str(),
        "introspection names the subject: {body}"
    );

    let revoke = origin
        .client_form("/auth/revoke", client, &[("token", tokens.refresh())])
        .await;
    assert_eq!(
        revoke.status,
        StatusCode::OK,
        "revoke with credentials: {}",
        revoke.text()
    );
    let refresh = origin.refresh(tokens.refresh()).await;
    assert_eq!(
        refresh.status,
        StatusCode::UNAUTHORIZED,
        "refresh after revoke: {}",
        refresh.text()
    );
    let after = origin
        .client_form("/auth/introspect", client, &[("token", tokens.refresh())])
        .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        after.json()["active"],
        false,
        "a revoked refresh token is inactive"
    );
}

/// Expected: every query a timer runs (cleanup, outbox sweep, rebuild) is served by an
/// index, so its cost follows what it touches, not the size of the tables. With
/// sequential scans priced out, a plan that still holds a `Seq Scan` has no index to
/// use. The plans are printed (`-- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_periodic_query_is_served_by_an_index() {
    let origin = Origin::start().await;
    let mut tx = origin.pg.begin().await.unwrap();
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut failures = Vec::new();
    for (name, sql) in origin::tasks::periodic_queries() {
        let sql = sql.replace("$1", "3600").replace("$2", "1000");
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain {sql}"))
            .fetch_all(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = plan.join("\n");
        eprintln!("EXPLAIN {name}:\n{plan}\n");
        if plan.contains("Seq Scan") {
            failures.push(name);
        }
    }
    assert!(failures.is_empty(), "sequential scans in: {failures:?}");
}

/// Expected (issue 11, growth): the cleanup deletes what outlived its retention and
/// nothing else, a batch of at most 1,000 rows per statement until none is left (more
/// than one batch of each kind is seeded, so stopping after the first would leave
/// rows); security events are kept 90 days by default. Runs the cleanup itself on a
/// database of its own, with no origin whose timer could run it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_deletes_in_batches_only_what_outlived_its_retention() {
    // Arrange
    let db = common::TestDb::create().await;
    let pg = sqlx::PgPool::connect(&db.url).await.unwrap();
    origin::MIGRATOR.run(&pg).await.unwrap();
    let config = <origin::config::Config as clap::Parser>::try_parse_from([
        "origin",
        "--database-url",
        "postgres://unused",
        "--redis-url",
        "redis://unused",
    ])
    .expect("defaults");
    let retention = origin::tasks::Retention::from(&config);
    assert_eq!(
        retention.security_events_secs,
        90 * 86_400,
        "default retention"
    );
    let seed = "
        insert into app_user (id, username, password_hash) values (gen_random_uuid(), 'u', 'x');
        -- 1,500 sessions revoked two days ago (gone) and 3 revoked an hour ago (kept).
        insert into session (id, user_id, scope, expires_at, access_expires_at, revoked_at)
          select gen_random_uuid(), (select id from app_user), 'api', now() + interval '20 days',
                 now() - interval '2 days', now() - interval '2 days' from generate_series(1, 1500);
        insert into session (id, user_id, scope, expires_at, access_expires_at, revoked_at)
          select gen_random_uuid(), (select id from app_user), 'api', now() + interval '20 days',
                 now() - interval '1 hour', now() - interval '1 hour' from generate_series(1, 3);
        -- 1,200 sessions past their absolute end for two days (gone).
        insert into session (id, user_id, scope, expires_at, access_expires_at)
          select gen_random_uuid(), (select id from app_user), 'api', now() - interval '2 days',
                 now() - interval '2 days' from generate_series(1, 1200);
        -- 1,100 idle past the idle timeout and a day (gone), 4 live sessions (kept).
        insert into session (id, user_id, scope, expires_at, access_expires_at)
          select gen_random_uuid(), (select id from app_user), 'api', now() + interval '20 days',
                 now() - make_interval(secs => $1 + 90000) from generate_series(1, 1100);
        insert into session (id, user_id, scope, expires_at, access_expires_at)
          select gen_random_uuid(), (select id from app_user), 'live', now() + interval '20 days',
                 now() + interval '10 minutes' from generate_series(1, 4);
        -- Tokens of the live sessions: 2,100 rotated 8 days ago (gone), one unrotated
        -- from as long ago (kept: it is the session's current token), 1,300 rotated an
        -- hour ago with their sealed successor (the seal erased, the row kept), 2
        -- rotated just now (seal kept: inside the grace window).
        insert into refresh_token (id, session_id, token_hash, created_at, rotated_at)
          select gen_random_uuid(), (select id from session where scope = 'live' limit 1),
                 uuid_send(gen_random_uuid()), now() - interval '8 days', now() - interval '8 days'
          from generate_series(1, 2100);
        insert into refresh_token (id, session_id, token_hash, created_at)
          select gen_random_uuid(), (select id from session where scope = 'live' limit 1),
                 uuid_send(gen_random_uuid()), now() - interval '8 days';
        insert into refresh_token (id, session_id, token_hash, rotated_at, child_sealed)
          select gen_random_uuid(), (select id from session where scope = 'live' limit 1),
                 uuid_send(gen_random_uuid()), now() - interval '1 hour', '\\x00'
          from generate_series(1, 1300);
        insert into refresh_token (id, session_id, token_hash, rotated_at, child_sealed)
          select gen_random_uuid(), (select id from session where scope = 'live' limit 1),
                 uuid_send(gen_random_uuid()), now(), '\\x00' from generate_series(1, 2);
        -- 2,300 security events 91 days old (gone), 5 from 89 days ago (kept).
        insert into security_event (kind, created_at)
          select 'login_failed', now() - interval '91 days' from generate_series(1, 2300);
        insert into security_event (kind, created_at)
          select 'login_failed', now() - interval '89 days' from generate_series(1, 5);
    ";
    for statement in seed.split(';').filter(|s| !s.trim().is_empty()) {
        let statement = statement.trim();
        let query = sqlx::query(statement);
        let query = if statement.contains("$1") {
            query.bind(retention.idle_ttl_secs as f64)
        } else {
            query
        };
        query
            .execute(&pg)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    // Act
    let done = origin::tasks::cleanup(&pg, &retention).await.unwrap();

    // Assert
    eprintln!("cleanup: {done:?}");
    assert_eq!(
        done,
        vec![
            ("revoked sessions", 1500),
            ("expired sessions", 1200),
            ("idle sessions", 1100),
            ("rotated refresh tokens", 2100),
            ("security events", 2300),
            ("sealed successors", 1300),
        ]
    );
    let count = |sql: &'static str| {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pg)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("select count(*) from session").await, 3 + 4);
    assert_eq!(
        count("select count(*) from session where revoked_at is null").await,
        4
    );
    assert_eq!(
        count("select count(*) from refresh_token").await,
        1 + 1300 + 2
    );
    assert_eq!(
        count("select count(*) from refresh_token where child_sealed is not null").await,
        2
    );
    assert_eq!(count("select count(*) from security_event").await, 5);
    pg.close().await;
}
