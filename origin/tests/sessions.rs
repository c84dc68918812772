//! Sign-in to sign-out against the running origin: the token flow, the session list,
//! logout everywhere, the JWKS and the protected example API (DESIGN.md §2–§4).

mod common;

use common::{AUDIENCE, ISSUER, Origin, Tokens, jwt_part, random_hex};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn assert_invalid_token(reply: &common::Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        reply.text()
    );
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains(r#"error="invalid_token""#),
        "{what}: WWW-Authenticate is {challenge:?}, want Bearer error=\"invalid_token\" (RFC 6750 §3)"
    );
}

fn assert_token_response(reply: &common::Reply, what: &str) -> Tokens {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
    assert_eq!(
        reply.header("cache-control"),
        Some("no-store"),
        "{what}: Cache-Control"
    );
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer", "{what}: {body}");
    for field in ["access_token", "refresh_token", "scope"] {
        assert!(body[field].is_string(), "{what}: {field} missing in {body}");
    }
    for field in ["expires_in", "refresh_token_expires_in"] {
        assert!(
            body[field].as_u64().is_some_and(|n| n > 0),
            "{what}: {field} in {body}"
        );
    }
    Tokens(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_register_login_me_refresh_logout() {
    // Arrange
    let origin = Origin::start().await;
    let username = format!("Alice.{}", &random_hex()[..12]);
    let password = "correct horse battery staple";

    // Act and assert, step by step
    let registered = origin.register(&username, password).await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "register: {}",
        registered.text()
    );
    let user_id = registered.json()["user_id"]
        .as_str()
        .expect("user_id")
        .to_owned();

    let login = assert_token_response(&origin.login(&username, password).await, "login");
    assert_eq!(login.sub(), user_id, "sub of the access token");

    let me = origin.me(login.access()).await;
    assert_eq!(me.status, StatusCode::OK, "GET /api/me: {}", me.text());
    let me = me.json();
    assert_eq!(me["user_id"], user_id.as_str());
    assert_eq!(
        me["username"],
        username.to_lowercase().as_str(),
        "usernames are stored lowercased"
    );
    assert_eq!(me["session_id"], login.sid().as_str());
    assert_eq!(me["scope"], login.0["scope"]);

    let refreshed = assert_token_response(&origin.refresh(login.refresh()).await, "refresh");
    assert_ne!(
        refreshed.refresh(),
        login.refresh(),
        "refresh rotates the refresh token"
    );
    assert_ne!(
        refreshed.access(),
        login.access(),
        "refresh issues a new access token"
    );
    assert_eq!(refreshed.sid(), login.sid(), "same session after refresh");
    assert_eq!(
        origin.me(login.access()).await.status,
        StatusCode::OK,
        "the previous access token stays valid until it expires or the session ends"
    );
    assert_eq!(origin.me(refreshed.access()).await.status, StatusCode::OK);

    let logout = origin
        .bearer(Method::POST, "/auth/logout", refreshed.access())
        .await;
    assert_eq!(
        logout.status,
        StatusCode::NO_CONTENT,
        "logout: {}",
        logout.text()
    );

    assert_invalid_token(
        &origin.me(refreshed.access()).await,
        "latest access token after logout",
    );
    assert_invalid_token(
        &origin.me(login.access()).await,
        "first access token after logout",
    );
    let again = origin.refresh(refreshed.refresh()).await;
    assert_eq!(
        again.status,
        StatusCode::UNAUTHORIZED,
        "refresh after logout: {}",
        again.text()
    );
    assert_eq!(again.error_code().as_deref(), Some("invalid_grant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_revokes_every_session_of_the_user() {
    // Arrange: two sessions of one user, one session of another user.
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let first = origin.login_ok(&user.username, &user.password).await;
    let second = origin.login_ok(&user.username, &user.password).await;
    assert_ne!(first.sid(), second.sid(), "each login is its own session");
    let other = origin.new_user().await;
    let bystander = origin.login_ok(&other.username, &other.password).await;

    // Act
    let reply = origin
        .bearer(Method::POST, "/auth/logout-all", first.access())
        .await;

    // Assert
    assert_eq!(
        reply.status,
        StatusCode::NO_CONTENT,
        "logout-all: {}",
        reply.text()
    );
    for (name, tokens) in [("first", &first), ("second", &second)] {
        assert_invalid_token(
            &origin.me(tokens.access()).await,
            &format!("{name} session after logout-all"),
        );
        let refresh = origin.refresh(tokens.refresh()).await;
        assert_eq!(
            refresh.status,
            StatusCode::UNAUTHORIZED,
            "{name} refresh: {}",
            refresh.text()
        );
        assert_eq!(
            origin.session_revoked(&tokens.sid()).await,
            Some(true),
            "{name}: revoked_at in Postgres"
        );
        // Instant at the edge: the record is gone, or the user's "not before" (Unix ms)
        // is at or after the session's authentication time.
        let key = origin.session_key(&tokens.sub(), &tokens.sid());
        let record: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut origin.redis.clone())
            .await
            .expect("GET record");
        let nbf: Option<u64> = redis::cmd("GET")
            .arg(shared::session::user_not_before_key(
                &origin.prefix,
                &tokens.sub(),
            ))
            .query_async(&mut origin.redis.clone())
            .await
            .expect("GET nbf");
        if let Some(shared::session::Stored::Active(record)) =
            record.map(|r| shared::session::Stored::decode(r.as_bytes()).expect("a session record"))
        {
            assert!(
                nbf.is_some_and(|nbf| nbf >= record.auth_time_ms),
                "{name}: the edge would still accept it (record {record:?}, not-before {nbf:?})"
            );
        }
    }
    assert_eq!(
        origin.me(bystander.access()).await.status,
        StatusCode::OK,
        "another user's session is untouched"
    );
    assert_eq!(origin.session_revoked(&bystander.sid()).await, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_another_users_session_is_404() {
    // Arrange
    let origin = Origin::start().await;
    let alice = origin.new_user().await;
    let alice_a = origin.login_ok(&alice.username, &alice.password).await;
    let alice_b = origin.login_ok(&alice.username, &alice.password).await;
    let bob = origin.new_user().await;
    let bob_tokens = origin.login_ok(&bob.username, &bob.password).await;

    // Act
    let foreign = origin
        .bearer(
            Method::DELETE,
            &format!("/auth/sessions/{}", bob_tokens.sid()),
            alice_a.access(),
        )
        .await;
    let unknown = origin
        .bearer(
            Method::DELETE,
            &format!("/auth/sessions/{}", uuid::Uuid::new_v4()),
            alice_a.access(),
        )
        .await;
    let own = origin
        .bearer(
            Method::DELETE,
            &format!("/auth/sessions/{}", alice_b.sid()),
            alice_a.access(),
        )
        .await;

    // Assert: another user's session looks exactly like one that does not exist.
    assert_eq!(
        foreign.status,
        StatusCode::NOT_FOUND,
        "deleting bob's session as alice: {}",
        foreign.text()
    );
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "deleting an unknown session: {}",
        unknown.text()
    );
    assert_eq!(
        foreign.body, unknown.body,
        "same body for foreign and unknown sessions"
    );
    assert_eq!(
        origin.me(bob_tokens.access()).await.status,
        StatusCode::OK,
        "bob's session survives"
    );
    assert_eq!(origin.session_revoked(&bob_tokens.sid()).await, Some(false));
    // Positive control: alice can end her own other session.
    assert_eq!(
        own.status,
        StatusCode::NO_CONTENT,
        "deleting her own session: {}",
        own.text()
    );
    assert_invalid_token(
        &origin.me(alice_b.access()).await,
        "alice's deleted session",
    );
    assert_eq!(
        origin.me(alice_a.access()).await.status,
        StatusCode::OK,
        "the current session survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_list_shows_the_users_sessions_and_marks_the_current_one() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let a = origin.login_ok(&user.username, &user.password).await;
    let b = origin.login_ok(&user.username, &user.password).await;
    let other = origin.new_user().await;
    let c = origin.login_ok(&other.username, &other.password).await;

    // Act
    let reply = origin
        .bearer(Method::GET, "/auth/sessions", b.access())
        .await;

    // Assert
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "GET /auth/sessions: {}",
        reply.text()
    );
    let list = reply.json();
    let list = list.as_array().expect("an array of sessions");
    let ids: Vec<&str> = list
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    assert_eq!(list.len(), 2, "exactly the user's two sessions: {list:?}");
    assert!(
        ids.contains(&a.sid().as_str()) && ids.contains(&b.sid().as_str()),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&c.sid().as_str()),
        "another user's session is listed"
    );
    for session in list {
        let current = session["session_id"] == b.sid().as_str();
        assert_eq!(session["current"], current, "current flag of {session}");
        for field in ["created_at", "last_used_at"] {
            assert!(!session[field].is_null(), "{field} in {session}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_publishes_the_signing_key() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;

    // Act
    let reply = common::Reply::from(
        origin
            .http
            .get(origin.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Assert
    assert_eq!(reply.status, StatusCode::OK, "JWKS: {}", reply.text());
    let jwks = reply.json();
    for key in jwks["keys"].as_array().expect("keys array") {
        assert!(
            key.get("d").is_none(),
            "a private key member is published: {key}"
        );
    }
    let header = jwt_part(tokens.access(), 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().expect("kid");
    let keys =
        shared::KeySet::from_jwks(&reply.body).expect("the JWKS parses as an Ed25519 key set");
    assert!(
        keys.get(kid).is_some(),
        "kid {kid} of the access token is not in the JWKS: {jwks}"
    );
    let claims = shared::Validator::new(ISSUER, AUDIENCE)
        .verify(tokens.access().as_bytes(), &keys, shared::unix_now())
        .expect("the access token verifies with the published keys");
    assert_eq!(claims.subject(), user.user_id);
    assert_eq!(claims.session_id(), tokens.sid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_sent_straight_to_the_origin_grant_nothing() {
    use shared::proof::{Identity, ProofKeys, RequestProof, header};
    // Arrange: a real user and session, whose identity a client tries to assert itself.
    let origin = Origin::start().await;
    let victim = origin.new_user().await;
    let victim_tokens = origin.login_ok(&victim.username, &victim.password).await;
    let attacker = origin.new_user().await;
    let attacker_tokens = origin
        .login_ok(&attacker.username, &attacker.password)
        .await;
    let keys = ProofKeys::derive(origin.env("EDGE_SECRET").unwrap().as_bytes());
    let sid = victim_tokens.sid();
    let scope = victim_tokens.0["scope"].as_str().unwrap().to_owned();
    let now = shared::unix_now();
    let identity = Identity {
        user_id: &victim.user_id,
        session_id: &sid,
        scope: &scope,
    };
    let authority = origin.authority();
    let sign_for = |authority: &str, key: &shared::proof::MacKey, path: &str, time: u64| {
        RequestProof {
            authority,
            method: "GET",
            path_and_query: path,
            client_ip: "203.0.113.9",
            identity: Some(identity),
            time,
        }
        .sign(key)
    };
    let sign =
        |key: &shared::proof::MacKey, path: &str, time: u64| sign_for(&authority, key, path, time);
    let other_service = sign_for("billing.internal:443", &keys.upstream, "/api/me", now);
    let other_secret = sign(
        &ProofKeys::derive(b"not the edge secret, not the edge secret").upstream,
        "/api/me",
        now,
    );
    let other_purpose = sign(&keys.origin, "/api/me", now);
    let other_path = sign(&keys.upstream, "/api/other", now);
    let other_query = sign(&keys.upstream, "/api/me?as=admin", now);
    let stale = sign(&keys.upstream, "/api/me", now - 600);
    let genuine = sign(&keys.upstream, "/api/me", now);
    let (now_text, stale_text) = (now.to_string(), (now - 600).to_string());
    let attempts: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("identity headers, no proof", vec![]),
        (
            "identity headers, garbage proof",
            vec![(header::PROOF, "AAAA"), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof made with another secret",
            vec![(header::PROOF, &other_secret), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof made with the key of another purpose",
            vec![(header::PROOF, &other_purpose), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof made for another service sharing the key",
            vec![(header::PROOF, &other_service), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof for another path",
            vec![(header::PROOF, &other_path), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof for another query",
            vec![(header::PROOF, &other_query), (header::TIME, &now_text)],
        ),
        (
            "identity headers, proof ten minutes old",
            vec![(header::PROOF, &stale), (header::TIME, &stale_text)],
        ),
        (
            "identity headers, genuine proof but another time header",
            vec![(header::PROOF, &genuine), (header::TIME, &stale_text)],
        ),
    ];
    let identity_request = || {
        origin
            .http
            .get(origin.url("/api/me"))
            .header(header::USER_ID, &victim.user_id)
            .header(header::SESSION_ID, &sid)
            .header(header::SCOPE, &scope)
            .header(header::CLIENT_IP, "203.0.113.9")
            .header("x-user-id", &victim.user_id)
            .header("x-forwarded-user", &victim.username)
    };

    for (what, extra) in attempts {
        // Act
        let mut request = identity_request();
        for (name, value) in &extra {
            request = request.header(*name, *value);
        }
        let reply = common::Reply::from(request.send().await.unwrap()).await;
        // Assert
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.text()
        );
        assert!(
            !reply.text().contains(&victim.user_id),
            "{what}: the victim's identity leaked"
        );
    }

    // Headers next to a valid bearer token do not change whose identity it is.
    let mixed = common::Reply::from(
        origin
            .http
            .get(origin.url("/api/me"))
            .bearer_auth(attacker_tokens.access())
            .header(header::USER_ID, &victim.user_id)
            .header(header::SESSION_ID, &sid)
            .header(header::SCOPE, &scope)
            .header(header::CLIENT_IP, "203.0.113.9")
            .header(header::PROOF, &other_secret)
            .header(header::TIME, &now_text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        mixed.status,
        StatusCode::OK,
        "attacker's own token: {}",
        mixed.text()
    );
    assert_eq!(
        mixed.json()["user_id"],
        attacker.user_id.as_str(),
        "identity came from the headers"
    );

    // Control: the same headers with the edge's genuine proof are accepted, so the
    // refusals above are the proof check at work, not headers being ignored.
    let edge = common::Reply::from(
        identity_request()
            .header(header::PROOF, &genuine)
            .header(header::TIME, &now_text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        edge.status,
        StatusCode::OK,
        "genuine edge proof: {}",
        edge.text()
    );
    assert_eq!(edge.json()["user_id"], victim.user_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_foreign_bearer_tokens_get_invalid_token() {
    // Arrange
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    let access = tokens.access();
    let mut tampered: Vec<u8> = access.as_bytes().to_vec();
    let i = access.rfind('.').unwrap() + 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (head, _) = access.split_once('.').unwrap();
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0",
        access.split('.').nth(1).unwrap()
    );
    let huge = "a".repeat(8000);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("empty bearer", Some("Bearer ".into())),
        ("basic scheme", Some(format!("Basic {}", "dXNlcjpwYXNz"))),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        ("alg none", Some(format!("Bearer {none}"))),
        ("header only", Some(format!("Bearer {head}"))),
        ("huge", Some(format!("Bearer {huge}"))),
        (
            "refresh token as access token",
            Some(format!("Bearer {}", tokens.refresh())),
        ),
    ];
    let mut failures = Vec::new();
    for (what, authorization) in cases {
        // Act
        let mut request = origin.http.get(origin.url("/api/me"));
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let reply = common::Reply::from(request.send().await.unwrap()).await;
        // Assert
        let challenge = reply
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned();
        let json_error = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        if reply.status != StatusCode::UNAUTHORIZED
            || !challenge.starts_with("Bearer")
            || json_error.is_none()
        {
            failures.push(format!(
                "{what}: {} WWW-Authenticate {challenge:?} body {}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "want 401 + Bearer challenge + JSON error:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        origin.me(access).await.status,
        StatusCode::OK,
        "control: the real token works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_bearer_credentials_gets_a_realm_challenge_without_an_error_code() {
    let origin = Origin::start().await;
    for (what, authorization) in [
        ("no Authorization", None),
        ("another scheme", Some("Basic dXNlcjpwYXNz")),
    ] {
        let mut request = origin.http.get(origin.url("/api/me"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = common::Reply::from(request.send().await.unwrap()).await;
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        // RFC 6750 §3.1: no error code when the request has no bearer credentials.
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            challenge.starts_with("Bearer realm=") && !challenge.contains("error="),
            "{what}: WWW-Authenticate {challenge:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_or_a_merged_one_are_a_bad_request() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let access = origin.login_ok(&user.username, &user.password).await;
    let access = access.access();
    let two = origin
        .http
        .get(origin.url("/api/me"))
        .header("authorization", format!("Bearer {access}"))
        .header("authorization", format!("Bearer {access}"));
    let merged = origin
        .http
        .get(origin.url("/api/me"))
        .header("authorization", format!("Bearer {access}, Bearer {access}"));
    for (what, request) in [("two headers", two), ("comma-merged", merged)] {
        let reply = common::Reply::from(request.send().await.unwrap()).await;
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{what}: {}",
            reply.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_gets_405_with_allow() {
    let origin = Origin::start().await;
    for (method, path, allow) in [
        (Method::GET, "/auth/login", "POST"),
        (Method::PUT, "/auth/sessions", "GET"),
        (Method::POST, "/.well-known/jwks.json", "GET"),
    ] {
        let reply = common::Reply::from(
            origin
                .http
                .request(method.clone(), origin.url(path))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            reply.text()
        );
        let allowed = reply.header("allow").unwrap_or_default();
        assert!(
            allowed.split(',').any(|m| m.trim() == allow),
            "{method} {path}: Allow {allowed:?}"
        );
        assert_eq!(reply.error_code().as_deref(), Some("invalid_request"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_response_and_the_api_carry_cache_control_no_store() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    let other = origin.login_ok(&user.username, &user.password).await;
    let access = tokens.access();
    let other_sid = other.sid();
    let delete_path = format!("/auth/sessions/{other_sid}");
    let checks = [
        (Method::GET, "/auth/sessions", Some(access)),
        (Method::GET, "/api/me", Some(access)),
        (Method::DELETE, delete_path.as_str(), Some(access)),
        (Method::GET, "/auth/nothing-here", None),
        (Method::POST, "/auth/logout", Some(access)),
    ];
    for (method, path, token) in checks {
        let mut request = origin.http.request(method.clone(), origin.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = common::Reply::from(request.send().await.unwrap()).await;
        assert_eq!(
            reply.header("cache-control"),
            Some("no-store"),
            "{method} {path} ({})",
            reply.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_expired_access_token_ends_its_session() {
    let origin =
        Origin::start_with(&[("ACCESS_TOKEN_TTL_SECS", "1"), ("TOKEN_LEEWAY_SECS", "0")]).await;
    let user = origin.new_user().await;
    let tokens = origin.login_ok(&user.username, &user.password).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let reply = origin
        .client_form(
            "/auth/revoke",
            Some((common::CLIENT_ID, common::CLIENT_SECRET)),
            &[("token", tokens.access())],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        origin.session_revoked(&tokens.sid()).await,
        Some(true),
        "RFC 7009 §2.2 does not stop at expiry: the session of an expired token is ended"
    );
    assert_eq!(
        origin.refresh(tokens.refresh()).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_expired_sessions_are_not_listed() {
    let origin = Origin::start_with(&[("SESSION_IDLE_TTL_SECS", "600")]).await;
    let user = origin.new_user().await;
    let current = origin.login_ok(&user.username, &user.password).await;
    let idle = origin.login_ok(&user.username, &user.password).await;
    sqlx::query(
        "update session set last_used_at = now() - interval '11 minutes' where id::text = $1",
    )
    .bind(idle.sid())
    .execute(&origin.pg)
    .await
    .unwrap();
    let reply = origin
        .bearer(Method::GET, "/auth/sessions", current.access())
        .await;
    let listed: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, [current.sid()], "the idle session has ended");
}
