//! The edge under `wrangler dev`, against the real origin, Postgres, Redis and the
//! REST front (issue: edge validator, "Must show").

use std::time::{Duration, Instant};

use e2e::{AUDIENCE, ISSUER, Options, Stack, claims_of};
use serde_json::{Value, json};
use shared::proof;

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

fn api_requests(stack: &Stack) -> usize {
    stack
        .recorder
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/api/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_the_edge_then_api_me_returns_the_identity_with_a_valid_proof() {
    let stack = Stack::start(Options::default()).await;
    let (username, _, tokens) = stack.user().await;
    let claims = claims_of(&access(&tokens));

    let (status, body, _) = stack
        .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
        .await;

    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert_eq!(body["username"], json!(username));
    assert_eq!(body["user_id"], claims["sub"]);
    assert_eq!(body["session_id"], claims["sid"]);
    let seen = stack
        .recorder
        .seen()
        .into_iter()
        .find(|s| s.path == "/api/me")
        .expect("the upstream got the request");
    let id = proof::Identity {
        user_id: seen.header(proof::header::USER_ID).unwrap(),
        session_id: seen.header(proof::header::SESSION_ID).unwrap(),
        scope: seen.header(proof::header::SCOPE).unwrap(),
    };
    assert_eq!(id.user_id, claims["sub"].as_str().unwrap());
    let authority = format!("127.0.0.1:{}", stack.recorder.port);
    let request = proof::RequestProof {
        authority: &authority,
        method: "GET",
        path_and_query: "/api/me",
        client_ip: seen.header(proof::header::CLIENT_IP).unwrap(),
        identity: Some(id),
        time: seen.header(proof::header::TIME).unwrap().parse().unwrap(),
    };
    let keys = proof::ProofKeys::derive(stack.edge_secret.as_bytes());
    let given = seen.header(proof::header::PROOF).unwrap();
    assert_eq!(
        request.verify(&keys.upstream, given, shared::unix_now()),
        Ok(()),
        "the proof the upstream received verifies with the upstream key"
    );
    assert!(
        request
            .verify(&keys.origin, given, shared::unix_now())
            .is_err(),
        "and with no other purpose's key"
    );
    let elsewhere = proof::RequestProof {
        authority: "127.0.0.1:1",
        ..request
    };
    assert!(
        elsewhere
            .verify(&keys.upstream, given, shared::unix_now())
            .is_err(),
        "nor for another host:port"
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credential is not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_with_www_authenticate_and_reach_no_upstream() {
    let stack = Stack::start(Options::default()).await;
    let (_, _, tokens) = stack.user().await;
    let good = access(&tokens);
    let claims = claims_of(&good);
    let key = stack.signing_key();
    let now = shared::unix_now();
    let mint = |iss: &str, aud: &str, iat: u64, exp: u64| {
        key.sign(&shared::Claims {
            iss: iss.into(),
            aud: aud.into(),
            sub: claims["sub"].as_str().unwrap().into(),
            sid: claims["sid"].as_str().unwrap().into(),
            jti: "e2e-minted".into(),
            iat,
            nbf: iat,
            exp,
            scope: "profile".into(),
        })
        .unwrap()
    };
    // Sanity: the minting works, so the refusals below are about the one thing changed.
    assert_eq!(
        stack
            .get(
                &stack.edge,
                "/api/me",
                Some(&mint(ISSUER, AUDIENCE, now, now + 600)),
                &[]
            )
            .await
            .0,
        200
    );
    let before = api_requests(&stack);

    let tampered = {
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut payload = claims.clone();
        payload["sub"] = json!("00000000-0000-0000-0000-000000000000");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{sig}",
            head.split('.').next().unwrap(),
            b64.encode(payload.to_string())
        )
    };
    let alg_none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "none", "typ": "at+jwt", "kid": key.kid().as_str()});
        format!(
            "{}.{}.",
            b64.encode(header.to_string()),
            good.split('.').nth(1).unwrap()
        )
    };
    let other_key = shared::SigningKey::from_seed([9; 32]).with_kid(key.kid().clone());
    let foreign = other_key
        .sign(&shared::Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: claims["sub"].as_str().unwrap().into(),
            sid: claims["sid"].as_str().unwrap().into(),
            jti: "x".into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            scope: "profile".into(),
        })
        .unwrap();
    let cases = [
        ("tampered payload", tampered),
        ("expired", mint(ISSUER, AUDIENCE, now - 1200, now - 600)),
        (
            "wrong audience",
            mint(ISSUER, "another-api", now, now + 600),
        ),
        (
            "wrong issuer",
            mint("https://evil.test", AUDIENCE, now, now + 600),
        ),
        ("alg none", alg_none),
        ("another key under our kid", foreign),
        (
            "a refresh token",
            tokens["refresh_token"].as_str().unwrap().to_string(),
        ),
    ];
    for (name, token) in &cases {
        let (status, body, headers) = stack.get(&stack.edge, "/api/me", Some(token), &[]).await;
        assert_eq!(status, 401, "{name}: {body}");
        let challenge = headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{name}: {challenge:?}"
        );
    }
    let (status, _, headers) = stack.get(&stack.edge, "/api/me", None, &[]).await;
    assert_eq!(
        (status, headers.contains_key("www-authenticate")),
        (401, true),
        "no token"
    );
    assert_eq!(
        api_requests(&stack),
        before,
        "the upstream received nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_logout_all_take_effect_at_the_edge_on_the_very_next_request() {
    let stack = Stack::start(Options::default()).await;
    let (username, password, first) = stack.user().await;
    let second = stack.login(&username, &password).await;
    let third = stack.login(&username, &password).await;
    for tokens in [&first, &second, &third] {
        assert_eq!(
            stack
                .get(&stack.edge, "/api/me", Some(&access(tokens)), &[])
                .await
                .0,
            200
        );
    }

    assert_eq!(
        stack.bearer_post("/auth/logout", &access(&first)).await,
        204
    );
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&first)), &[])
            .await
            .0,
        401,
        "logged-out token, next request"
    );
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&second)), &[])
            .await
            .0,
        200,
        "other sessions live on"
    );

    assert_eq!(
        stack
            .bearer_post("/auth/logout-all", &access(&second))
            .await,
        204
    );
    for tokens in [&second, &third] {
        assert_eq!(
            stack
                .get(&stack.edge, "/api/me", Some(&access(tokens)), &[])
                .await
                .0,
            401,
            "after logout-all"
        );
    }
    let (status, _, _) = stack
        .post_json(
            &stack.edge,
            "/auth/refresh",
            json!({"refresh_token": third["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401, "refresh after logout-all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_clients_grant_nothing_through_the_edge_or_at_the_origin() {
    let stack = Stack::start(Options::default()).await;
    let (_, _, tokens) = stack.user().await;
    let claims = claims_of(&access(&tokens));
    let spoof = [
        (
            proof::header::USER_ID,
            "00000000-0000-0000-0000-000000000001",
        ),
        (
            proof::header::SESSION_ID,
            "00000000-0000-0000-0000-000000000002",
        ),
        (proof::header::SCOPE, "admin"),
        (proof::header::TIME, "0"),
        (proof::header::PROOF, "AAAA"),
        ("x-forwarded-for", "10.9.8.7"),
    ];
    // Through the edge without a token: refused.
    assert_eq!(stack.get(&stack.edge, "/api/me", None, &spoof).await.0, 401);
    // Through the edge with a token: the edge's identity replaces the client's.
    let (status, body, _) = stack
        .get(&stack.edge, "/api/me", Some(&access(&tokens)), &spoof)
        .await;
    assert_eq!(
        (status, &body["user_id"], &body["scope"]),
        (200, &claims["sub"], &json!("profile"))
    );
    let seen = stack
        .recorder
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.path == "/api/me")
        .unwrap();
    assert_eq!(seen.header(proof::header::USER_ID), claims["sub"].as_str());
    assert_ne!(seen.header(proof::header::CLIENT_IP), Some("10.9.8.7"));
    // Straight to the origin: refused, whatever the headers say.
    assert_eq!(
        stack.get(&stack.origin, "/api/me", None, &spoof).await.0,
        401
    );
    // The edge-only check at the origin is not reachable through the edge.
    let (status, _, _) = stack
        .post_json(&stack.edge, "/internal/validate", json!({}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rest_front_down_the_edge_falls_back_and_never_admits_a_revoked_session() {
    let mut stack = Stack::start(Options::default()).await;
    let (username, password, live) = stack.user().await;
    let revoked = stack.login(&username, &password).await;
    assert_eq!(
        stack.bearer_post("/auth/logout", &access(&revoked)).await,
        204
    );

    stack.stop_rest();
    let (status, body, _) = stack
        .get(&stack.edge, "/api/me", Some(&access(&live)), &[])
        .await;
    assert_eq!(
        status,
        200,
        "active session via the origin's fallback: {body}\n{}",
        stack.logs()
    );
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&revoked)), &[])
            .await
            .0,
        401,
        "revoked stays refused"
    );
    // A revocation during the outage takes effect too (Postgres decides).
    assert_eq!(stack.bearer_post("/auth/logout", &access(&live)).await, 204);
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&live)), &[])
            .await
            .0,
        401
    );

    // The store and the fallback both unavailable: 503 with Retry-After, never 200 or 401.
    let fresh = stack.login(&username, &password).await;
    stack.postgres.set_up(false);
    let (status, body, headers) = stack
        .get(&stack.edge, "/api/me", Some(&access(&fresh)), &[])
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    stack.postgres.set_up(true);

    stack.start_rest().await;
    let started = Instant::now();
    loop {
        let (status, _, _) = stack
            .get(&stack.edge, "/api/me", Some(&access(&fresh)), &[])
            .await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not back to normal within 10 s (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&revoked)), &[])
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_authenticated_requests_work_and_login_and_refresh_answer_503() {
    let stack = Stack::start(Options::default()).await;
    let (username, password, tokens) = stack.user().await;
    // The example API caches usernames; warm it, as any running service would be.
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
            .await
            .0,
        200
    );

    stack.postgres.set_up(false);
    for _ in 0..5 {
        let (status, body, _) = stack
            .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
            .await;
        assert_eq!(status, 200, "the hot path does not touch Postgres: {body}");
    }
    let creds = json!({ "username": username, "password": password });
    let (status, body, _) = stack
        .post_json(&stack.edge, "/auth/login", creds.clone())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "login: {body}"
    );
    let (status, body, _) = stack
        .post_json(
            &stack.edge,
            "/auth/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "refresh: {body}"
    );

    stack.postgres.set_up(true);
    let started = Instant::now();
    loop {
        let (status, _, _) = stack
            .post_json(
                &stack.edge,
                "/auth/refresh",
                json!({"refresh_token": tokens["refresh_token"]}),
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "refresh not back within 15 s (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        stack.post_json(&stack.edge, "/auth/login", creds).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_kv_store_the_flow_works_and_revocation_reaches_the_edge() {
    let stack = Stack::start(Options {
        session_store: "kv",
        ..Options::default()
    })
    .await;
    let (username, password, tokens) = stack.user().await;
    let other = stack.login(&username, &password).await;
    // The origin pushes the KV marker every second until it lands; before that the
    // edge rightly treats KV as unknown and asks the origin.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The example API caches usernames; warm it for both sessions' user.
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
            .await
            .0,
        200
    );

    // With Postgres cut the origin's fallback cannot answer (it would be 503), so
    // each answer below comes from KV alone.
    stack.postgres.set_up(false);
    let (status, body, _) = stack
        .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
        .await;
    assert_eq!(
        status,
        200,
        "active session read from KV: {body}\n{}",
        stack.logs()
    );
    stack.postgres.set_up(true);

    assert_eq!(
        stack.bearer_post("/auth/logout", &access(&tokens)).await,
        204
    );
    stack.postgres.set_up(false);
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&tokens)), &[])
            .await
            .0,
        401,
        "logout reached KV"
    );
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&other)), &[])
            .await
            .0,
        200,
        "the other session is untouched"
    );
    stack.postgres.set_up(true);

    assert_eq!(
        stack.bearer_post("/auth/logout-all", &access(&other)).await,
        204
    );
    stack.postgres.set_up(false);
    assert_eq!(
        stack
            .get(&stack.edge, "/api/me", Some(&access(&other)), &[])
            .await
            .0,
        401,
        "logout-all reached KV"
    );
    stack.postgres.set_up(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_pushes_without_a_valid_proof_are_refused() {
    let stack = Stack::start(Options {
        session_store: "kv",
        ..Options::default()
    })
    .await;
    let body =
        json!({"ops": [{"op": "marker", "key": format!("{}fresh:kv", stack.prefix)}]}).to_string();
    let now = shared::unix_now();
    let forged = shared::proof::sign_message(
        &shared::proof::ProofKeys::derive(b"not the edge secret, but 32 bytes").kv_sync,
        "kv-sync",
        now,
        body.as_bytes(),
    );
    for headers in [
        vec![],
        vec![
            (shared::proof::message_header::TIME, now.to_string()),
            (shared::proof::message_header::PROOF, forged),
        ],
    ] {
        let mut request = stack
            .http
            .post(format!("{}/__edge/kv", stack.edge))
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_responses_pass_through_with_their_headers_and_the_client_address() {
    let stack = Stack::start(Options::default()).await;
    let (username, password, tokens) = stack.user().await;

    // Token responses keep Cache-Control: no-store through the edge.
    let (status, _, headers) = stack
        .post_json(
            &stack.edge,
            "/auth/login",
            json!({"username": username, "password": password}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );

    // The origin saw the client's address as the edge signed it (what wrangler dev
    // reports), not what a client claims in headers of its own: the session list
    // carries it.
    let (status, body, _) = stack
        .post_json_with(
            &stack.edge,
            "/auth/login",
            json!({"username": username, "password": password}),
            &[
                ("x-forwarded-for", "10.9.8.7"),
                ("x-auth-client-ip", "10.9.8.7"),
                ("x-real-ip", "10.9.8.7"),
                ("forwarded", "for=10.9.8.7"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let response = stack
        .http
        .get(format!("{}/auth/sessions", stack.edge))
        .bearer_auth(access(&tokens))
        .send()
        .await
        .unwrap();
    let sessions: Value = response.json().await.unwrap();
    for session in sessions.as_array().unwrap() {
        let ip = session["ip"].as_str().unwrap_or_default().to_string();
        assert!(
            ip.parse::<std::net::IpAddr>().is_ok() && ip != "0.0.0.0" && ip != "10.9.8.7",
            "session ip {ip:?}"
        );
    }

    // A throttled login keeps its status, body and Retry-After.
    let mut throttled = None;
    for _ in 0..20 {
        let (status, body, headers) = stack
            .post_json(
                &stack.edge,
                "/auth/login",
                json!({"username": username, "password": "wrong password"}),
            )
            .await;
        if status == 429 {
            throttled = Some((body, headers));
            break;
        }
        assert_eq!(status, 401);
    }
    let (body, headers) = throttled.expect("throttled through the edge");
    assert_eq!(body["error"], json!("slow_down"));
    assert!(
        headers.get("retry-after").is_some(),
        "Retry-After passes through"
    );
}

/// Expected (DESIGN.md §3, KV): the edge applies a push only when it is newer than
/// what KV holds. A refresh's push fails (the edge unreachable), a logout follows and
/// its tombstone lands, then the refresh's push arrives after all (a retry, or a
/// replay within the proof's minute): it changes nothing, and the session stays
/// refused. Replaying the tombstone's own push changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_push_that_lands_after_a_newer_one_changes_nothing() {
    let stack = Stack::start(Options {
        session_store: "kv",
        kv_gate: true,
        ..Options::default()
    })
    .await;
    let gate = stack.kv_gate.as_ref().unwrap();
    let (username, password, t0) = stack.user().await;
    let _ = (username, password);
    tokio::time::sleep(Duration::from_secs(2)).await; // the KV marker lands
    let puts_of = |pushes: &[e2e::Push]| -> Vec<(usize, u64)> {
        pushes
            .iter()
            .enumerate()
            .flat_map(|(i, push)| {
                let body: Value = serde_json::from_slice(&push.body).unwrap();
                body["ops"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|op| op["op"] == "put")
                    .map(|op| (i, op["ver"].as_u64().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };

    gate.set_open(false);
    let (status, t1, _) = stack
        .post_json(
            &stack.edge,
            "/auth/refresh",
            json!({"refresh_token": t0["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{t1}");
    let failed = gate
        .pushes()
        .into_iter()
        .rev()
        .find(|p| !p.delivered)
        .expect("the refresh's push, refused");
    gate.set_open(true);
    assert_eq!(stack.bearer_post("/auth/logout", &access(&t1)).await, 204);
    let tombstone = gate
        .pushes()
        .into_iter()
        .rev()
        .find(|p| p.delivered && String::from_utf8_lossy(&p.body).contains("revoked"))
        .expect("the logout's push");
    let versions = puts_of(&[failed.clone(), tombstone.clone()]);
    assert!(
        versions[0].1 < versions[1].1,
        "the refresh's version is older: {versions:?}"
    );

    // A replay of the newest push, then the late one lands. The session is not read
    // at the edge before: KV reads are cached for a minute, which would hide what the
    // late push did.
    assert_eq!(gate.resend(&tombstone).await, 204);
    assert_eq!(gate.resend(&failed).await, 204);
    for _ in 0..3 {
        let (status, body, _) = stack
            .get(&stack.edge, "/api/me", Some(&access(&t1)), &[])
            .await;
        assert_eq!(
            status, 401,
            "the late push brought the session back: {body}"
        );
    }
}
