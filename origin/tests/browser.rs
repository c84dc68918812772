//! Browser mode (DESIGN §7): the refresh token in an `HttpOnly` cookie, read only with
//! `X-Token-Delivery: cookie`, cleared when the session ends, and refused to pages of
//! origins that are not allowed. Over HTTP against the real origin binary.

mod common;

use common::{Origin, Reply, User};
use reqwest::StatusCode;
use serde_json::json;

const DELIVERY: (&str, &str) = ("x-token-delivery", "cookie");
const PROD_NAME: &str = "__Secure-refresh_token";

/// A POST to `path` with `headers`, a JSON `body` when given (else none at all).
async fn post(
    origin: &Origin,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Reply {
    let mut request = origin.http.post(origin.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::from(request.send().await.expect("POST")).await
}

async fn login(origin: &Origin, user: &User, headers: &[(&str, &str)]) -> Reply {
    let body = json!({"username": user.username, "password": user.password});
    post(origin, "/auth/login", headers, Some(body)).await
}

/// The `Set-Cookie` values of `reply` for cookie `name`.
fn set_cookies(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
        .collect()
}

/// The value a `Set-Cookie` for `name` gives it (`Some("")` when it clears it).
fn cookie_value(reply: &Reply, name: &str) -> Option<String> {
    let all = set_cookies(reply, name);
    assert!(all.len() <= 1, "one Set-Cookie per name: {all:?}");
    let first = all.first()?;
    let pair = first.split(';').next().unwrap();
    Some(pair[name.len() + 1..].to_string())
}

fn clears(reply: &Reply, name: &str) -> bool {
    set_cookies(reply, name).iter().any(|c| {
        c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0") && c.contains("Path=/auth")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_mode_login_and_refresh_keep_the_refresh_token_out_of_the_body() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;

    let reply = login(&origin, &user, &[DELIVERY]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].as_str().is_some());
    let lifetime = body["refresh_token_expires_in"].as_u64().unwrap();
    let set = set_cookies(&reply, PROD_NAME);
    assert_eq!(set.len(), 1, "{:?}", reply.headers);
    for part in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/auth;",
        &format!("Max-Age={lifetime}"),
    ] {
        assert!(set[0].contains(part), "{part} missing: {}", set[0]);
    }
    let first = cookie_value(&reply, PROD_NAME).unwrap();
    assert!(first.len() > 20);

    // Refresh reads the cookie; the body is empty; the successor arrives as a cookie.
    let cookie = format!("{PROD_NAME}={first}");
    let refreshed = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    assert!(refreshed.json().get("refresh_token").is_none());
    let second = cookie_value(&refreshed, PROD_NAME).unwrap();
    assert_ne!(second, first, "rotated");
    let access = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(origin.me(&access).await.status, StatusCode::OK);

    // Two tabs presenting the same cookie at once: the grace window gives both the
    // same successor, so they set the same cookie and nobody is logged out.
    let next = format!("{PROD_NAME}={second}");
    let headers = [DELIVERY, ("cookie", next.as_str())];
    let (a, b) = tokio::join!(
        post(&origin, "/auth/refresh", &headers, None),
        post(&origin, "/auth/refresh", &headers, None),
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(cookie_value(&a, PROD_NAME), cookie_value(&b, PROD_NAME));

    // The JSON mode is unchanged.
    let json_mode = login(&origin, &user, &[]).await;
    assert!(json_mode.json()["refresh_token"].as_str().is_some());
    assert!(set_cookies(&json_mode, PROD_NAME).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_read_only_in_cookie_mode_and_a_bad_one_is_cleared() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let reply = login(&origin, &user, &[DELIVERY]).await;
    let token = cookie_value(&reply, PROD_NAME).unwrap();
    let cookie = format!("{PROD_NAME}={token}");

    // Without the header (what a form or an <img> on another page can send): 403, and
    // the token was not looked at, so it still rotates afterwards.
    let no_header = post(
        &origin,
        "/auth/refresh",
        &[("cookie", &cookie)],
        Some(json!({"refresh_token": token})),
    )
    .await;
    assert_eq!(
        no_header.status,
        StatusCode::FORBIDDEN,
        "{}",
        no_header.text()
    );
    assert_eq!(no_header.error_code().as_deref(), Some("invalid_request"));
    for value in ["cookies", "json", ""] {
        let bad = post(
            &origin,
            "/auth/refresh",
            &[("x-token-delivery", value), ("cookie", &cookie)],
            None,
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{value:?}");
    }
    let ok = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    // An unknown token, or none: 401 invalid_grant, and the cookie is cleared.
    for cookie in [format!("{PROD_NAME}=not-a-token"), String::new()] {
        let mut headers = vec![DELIVERY];
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let refused = post(&origin, "/auth/refresh", &headers, None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.error_code().as_deref(), Some("invalid_grant"));
        assert!(clears(&refused, PROD_NAME), "{:?}", refused.headers);
    }
    // A reused one (rotated past the grace window is not needed: reuse after the
    // successor was used) revokes the session and clears the cookie too.
    let successor = cookie_value(&ok, PROD_NAME).unwrap();
    let successor_cookie = format!("{PROD_NAME}={successor}");
    let used = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &successor_cookie)],
        None,
    )
    .await;
    assert_eq!(used.status, StatusCode::OK);
    let reused = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert!(clears(&reused, PROD_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_logout_all_and_deleting_the_current_session_clear_the_cookie() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let bearer_post = |path: &'static str, access: String, cookie: String| {
        let origin = &origin;
        async move {
            let request = origin
                .http
                .post(origin.url(path))
                .bearer_auth(access)
                .header("cookie", cookie)
                .header(DELIVERY.0, DELIVERY.1);
            Reply::from(request.send().await.unwrap()).await
        }
    };
    let session = |reply: &Reply| {
        (
            reply.json()["access_token"].as_str().unwrap().to_owned(),
            format!("{PROD_NAME}={}", cookie_value(reply, PROD_NAME).unwrap()),
        )
    };

    let (access, cookie) = session(&login(&origin, &user, &[DELIVERY]).await);
    let out = bearer_post("/auth/logout", access, cookie).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(clears(&out, PROD_NAME), "{:?}", out.headers);

    let (access, cookie) = session(&login(&origin, &user, &[DELIVERY]).await);
    let all = bearer_post("/auth/logout-all", access, cookie).await;
    assert_eq!(all.status, StatusCode::NO_CONTENT);
    assert!(clears(&all, PROD_NAME));

    // Deleting another session leaves this browser's cookie alone; deleting its own
    // clears it.
    let other = origin.login_ok(&user.username, &user.password).await;
    let (access, cookie) = session(&login(&origin, &user, &[DELIVERY]).await);
    let delete = |sid: String| {
        let (origin, access, cookie) = (&origin, access.clone(), cookie.clone());
        async move {
            let request = origin
                .http
                .delete(origin.url(&format!("/auth/sessions/{sid}")))
                .bearer_auth(access)
                .header("cookie", cookie);
            Reply::from(request.send().await.unwrap()).await
        }
    };
    let deleted_other = delete(other.sid()).await;
    assert_eq!(deleted_other.status, StatusCode::NO_CONTENT);
    assert!(set_cookies(&deleted_other, PROD_NAME).is_empty());
    let own_sid = common::jwt_part(&access, 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted_own = delete(own_sid).await;
    assert_eq!(deleted_own.status, StatusCode::NO_CONTENT);
    assert!(clears(&deleted_own, PROD_NAME));

    // A JSON-mode logout (no header, no cookie) sets no cookie.
    let json_mode = origin.login_ok(&user.username, &user.password).await;
    let out = origin
        .bearer(reqwest::Method::POST, "/auth/logout", json_mode.access())
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers.get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reached_directly_cookie_mode_takes_only_its_own_or_a_listed_origin() {
    let origin = Origin::start_with(&[
        ("ALLOWED_ORIGINS", "https://app.example"),
        ("DEV_COOKIE_NAMES", "true"),
    ])
    .await;
    let user = origin.new_user().await;
    let own = format!("http://{}", origin.authority());

    let evil = login(
        &origin,
        &user,
        &[DELIVERY, ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(evil.status, StatusCode::FORBIDDEN, "{}", evil.text());
    assert!(evil.headers.get("set-cookie").is_none());
    for allowed in ["https://app.example", own.as_str()] {
        let reply = login(&origin, &user, &[DELIVERY, ("origin", allowed)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{allowed}: {}", reply.text());
    }

    // Under DEV_COOKIE_NAMES the cookie has no prefix (http://127.0.0.1 development).
    let reply = login(&origin, &user, &[DELIVERY]).await;
    let token = cookie_value(&reply, "refresh_token").expect("an unprefixed cookie");
    assert!(set_cookies(&reply, PROD_NAME).is_empty());
    let cookie = format!("refresh_token={token}");

    // A page of another origin (another port is the same site: SameSite does not stop
    // it) posting to /auth/refresh with the cookie: refused, nothing rotated.
    let other_port = format!("http://127.0.0.1:{}", common::free_port());
    let refused = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &cookie), ("origin", &other_port)],
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.headers.get("set-cookie").is_none(),
        "not cleared either"
    );
    let rotations: i64 =
        sqlx::query_scalar("select count(*) from refresh_token where rotated_at is not null")
            .fetch_one(&origin.pg)
            .await
            .unwrap();
    assert_eq!(rotations, 0);

    // Through the edge (its proof present), the edge applied the rule already.
    let mut request = origin
        .http
        .post(origin.url("/auth/refresh"))
        .header(DELIVERY.0, DELIVERY.1)
        .header("cookie", &cookie)
        .header("origin", "https://edge.example");
    for (name, value) in origin.edge_headers("POST", "/auth/refresh", "203.0.113.9") {
        request = request.header(name, value);
    }
    let via_edge = Reply::from(request.send().await.unwrap()).await;
    assert_eq!(via_edge.status, StatusCode::OK, "{}", via_edge.text());
    assert!(cookie_value(&via_edge, "refresh_token").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowed_origins_setting_stops_the_origin_naming_it() {
    for bad in [
        "*",
        "null",
        "http://app.example",
        "https://app.example/path",
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_origin"))
            .env_clear()
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("ALLOWED_ORIGINS", bad)
            .output()
            .expect("run the origin");
        assert!(!output.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("ALLOWED_ORIGINS"), "{bad}: {stderr}");
    }
}

/// A sibling subdomain can plant a second cookie of the same name (`Domain=`, same
/// path): the request then carries two. Expected: 400, and nothing cleared (clearing
/// would delete the real, host-only cookie and leave the planted one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refresh_cookies_are_a_bad_request_and_neither_is_cleared() {
    let origin = Origin::start().await;
    let user = origin.new_user().await;
    let reply = login(&origin, &user, &[DELIVERY]).await;
    let token = cookie_value(&reply, PROD_NAME).unwrap();
    let both = format!("{PROD_NAME}={token}; {PROD_NAME}=planted-by-a-sibling");
    let refused = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &both)],
        None,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert!(refused.headers.get("set-cookie").is_none());
    let alone = format!("{PROD_NAME}={token}");
    let ok = post(
        &origin,
        "/auth/refresh",
        &[DELIVERY, ("cookie", &alone)],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "the real cookie still works");
}
