//! The edge's own policy under `wrangler dev` (issue: edge, "Defects to close"):
//! what it routes, which methods, headers and bodies it lets through, CORS, what it
//! answers when it cannot get its keys, and key rotation end to end.

use std::time::{Duration, Instant};

use e2e::{AUDIENCE, ISSUER, Options, Stack, TempDir, random_hex};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

/// Sends raw bytes to the edge and returns the status line's code (0: no answer).
async fn raw(edge: &str, request: Vec<u8>) -> u16 {
    let addr = edge.trim_start_matches("http://");
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    if stream.write_all(&request).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A request with a chunked body of `size` bytes: no `Content-Length` to trust.
fn chunked_post(path: &str, size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in vec![b'a'; size].chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_forwards_only_what_it_knows_with_the_real_method_and_polices_the_rest() {
    let stack = Stack::start(Options {
        edge_vars: vec![
            ("PUBLIC_PATHS", "/public".into()),
            ("ALLOWED_ORIGINS", "https://app.example".into()),
        ],
        ..Options::default()
    })
    .await;
    let (_, _, tokens) = stack.user().await;
    let token = access(&tokens);

    // Not configured: 404 at the edge, nothing forwarded anywhere.
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/internal/validate",
        "/apiary",
        "/demo.jsx",
    ] {
        let (status, body, _) = stack.get(&stack.edge, path, Some(&token), &[]).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found", "{path}");
    }
    // Its own static assets (the demo page, the browser package) it serves itself.
    for (path, marker) in [("/", "edge-auth demo"), ("/edge-auth.js", "class EdgeAuth")] {
        let page = stack
            .http
            .get(format!("{}{path}", stack.edge))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert!(page.text().await.unwrap().contains(marker), "{path}");
    }
    assert!(
        stack.recorder.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        stack.recorder.seen()
    );

    // A public path gets the request without the client's credential.
    let (status, _, _) = stack
        .get(&stack.edge, "/public/page?x=1", Some(&token), &[])
        .await;
    let _ = status; // the recording upstream relays to the origin, which has no such page
    let seen = stack.recorder.seen();
    let public = seen.iter().find(|s| s.path == "/public/page").unwrap();
    assert_eq!(public.header("authorization"), None);
    assert!(public.header("x-auth-client-ip").is_some());

    // The real method and body reach the upstream.
    for method in ["PROPFIND", "PATCH"] {
        let response = stack
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/api/me", stack.edge),
            )
            .bearer_auth(&token)
            .body(format!("body of {method}"))
            .send()
            .await
            .unwrap();
        assert_ne!(response.status().as_u16(), 401, "{method}");
        let seen = stack.recorder.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.method, method);
        assert_eq!(
            last.body,
            format!("body of {method}").as_bytes(),
            "{method}"
        );
    }
    let before = stack.recorder.seen().len();
    // TRACE reaches the worker (unknown methods such as BREW get 501 from the
    // runtime first, see the README): refused here, never forwarded.
    let brew = stack
        .http
        .request(reqwest::Method::TRACE, format!("{}/api/me", stack.edge))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(brew.status().as_u16(), 405);
    assert!(brew.headers()["allow"].to_str().unwrap().contains("PATCH"));
    assert_eq!(
        stack.recorder.seen().len(),
        before,
        "a refused method is not forwarded"
    );

    // Two Authorization headers, or two tokens in one: 400.
    let two = stack
        .http
        .get(format!("{}/api/me", stack.edge))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(two.status().as_u16(), 400);
    let (status, _, _) = stack
        .get(
            &stack.edge,
            "/api/me",
            None,
            &[("authorization", &format!("Bearer {token}, Bearer {token}"))],
        )
        .await;
    assert_eq!(status, 400);

    // Oversized /auth/* bodies: 413 from the edge, declared or chunked, and the worker
    // keeps serving.
    for _ in 0..3 {
        let big = stack
            .http
            .post(format!("{}/auth/register", stack.edge))
            .header("content-type", "application/json")
            .body(vec![b'a'; 1 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(big.status().as_u16(), 413);
        let (status, body, _) = stack.get(&stack.edge, "/api/me", Some(&token), &[]).await;
        assert_eq!(status, 200, "{body}\n{}", stack.logs());
    }
    assert_eq!(
        raw(&stack.edge, chunked_post("/auth/register", 1 << 20)).await,
        413
    );
    let (status, _, _) = stack.get(&stack.edge, "/api/me", Some(&token), &[]).await;
    assert_eq!(status, 200);

    // CORS: preflights answered at the edge, not challenged; responses say who may read.
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/api/me", stack.edge))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.status().as_u16(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(allowed.headers()["vary"], "Origin", "listed once");
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    for bearer in [Some(token.as_str()), None] {
        let (status, _, headers) = stack
            .get(
                &stack.edge,
                "/api/me",
                bearer,
                &[("origin", "https://app.example")],
            )
            .await;
        assert_eq!(status, if bearer.is_some() { 200 } else { 401 });
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(headers["vary"].to_str().unwrap().contains("Origin"));
        let exposed = headers["access-control-expose-headers"].to_str().unwrap();
        for name in ["WWW-Authenticate", "Retry-After", "Date"] {
            assert!(exposed.contains(name), "{exposed}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_hostile_requests_each_get_an_answer_while_valid_ones_all_succeed() {
    let stack = Stack::start(Options::default()).await;
    let (_, _, tokens) = stack.user().await;
    let token = access(&tokens);
    let edge = stack.edge.clone();

    let hostile: Vec<Vec<u8>> = (0..100)
        .map(|i| match i % 10 {
            0 => chunked_post("/auth/login", 2 << 20),
            1 => format!(
                "POST /auth/register HTTP/1.1\r\nhost: e\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                1 << 20,
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            2 => b"TRACE /api/me HTTP/1.1\r\nhost: e\r\nconnection: close\r\n\r\n".to_vec(),
            3 => b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: e\r\nconnection: close\r\n\r\n".to_vec(),
            4 => b"BREW /api/me HTTP/1.1\r\nhost: e\r\nconnection: close\r\n\r\n".to_vec(),
            5 => b"GET /api/me HTTP/1.1\r\nhost: e\r\nbad header\r\nconnection: close\r\n\r\n"
                .to_vec(),
            6 => format!(
                "GET /api/me HTTP/1.1\r\nhost: e\r\nauthorization: Bearer {token}\r\nauthorization: Bearer x\r\nconnection: close\r\n\r\n"
            )
            .into_bytes(),
            7 => b"GET /%zz/../%00?%%% HTTP/1.1\r\nhost: e\r\nconnection: close\r\n\r\n".to_vec(),
            8 => format!(
                "GET /{} HTTP/1.1\r\nhost: e\r\nconnection: close\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            _ => format!(
                "GET /api/me HTTP/1.1\r\nhost: e\r\nauthorization: Bearer {}\r\nx-auth-user-id: admin\r\nconnection: close\r\n\r\n",
                "x".repeat(9000)
            )
            .into_bytes(),
        })
        .collect();
    let attacks = hostile.into_iter().map(|request| {
        let edge = edge.clone();
        tokio::spawn(async move { raw(&edge, request).await })
    });
    let attacks: Vec<_> = attacks.collect();
    let valid: Vec<_> = (0..50)
        .map(|_| {
            let (http, edge, token) = (stack.http.clone(), edge.clone(), token.clone());
            tokio::spawn(async move {
                http.get(format!("{edge}/api/me"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for attack in attacks {
        let status = attack.await.unwrap();
        *answers.entry(status).or_insert(0) += 1;
    }
    let mut valid_statuses = std::collections::BTreeMap::new();
    for request in valid {
        *valid_statuses.entry(request.await.unwrap()).or_insert(0) += 1;
    }
    println!("hostile answers by status: {answers:?}; valid: {valid_statuses:?}");
    assert_eq!(
        answers.get(&0),
        None,
        "every hostile request got an answer: {answers:?}"
    );
    assert!(
        !answers.contains_key(&200),
        "no hostile request was admitted: {answers:?}"
    );
    assert_eq!(valid_statuses, [(200, 50)].into(), "{}", stack.logs());
    let (status, _, _) = stack.get(&edge, "/api/me", Some(&token), &[]).await;
    assert_eq!(status, 200, "the worker is unharmed");
}

/// Writes a signing key file the origin's `SIGNING_KEYS_DIR` reads: `<kid>.key`
/// holding a base64url seed.
/// `FORWARD_TIMEOUT_MS` (default none: a timer on every forward costs CPU) bounds the
/// wait for an upstream that accepts and never answers: 504 `gateway_timeout`, on a
/// public path and on a protected one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_budget_when_set_answers_504_for_an_upstream_that_never_answers() {
    // An upstream that takes connections and reads them, and never writes a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let stack = Stack::start(Options {
        edge_vars: vec![
            ("UPSTREAM_URL", format!("http://127.0.0.1:{port}")),
            ("PUBLIC_PATHS", "/public".into()),
            ("FORWARD_TIMEOUT_MS", "1000".into()),
        ],
        ..Options::default()
    })
    .await;
    let (_, _, tokens) = stack.user().await;
    let token = access(&tokens);

    for (path, bearer) in [("/public/page", None), ("/api/me", Some(token.as_str()))] {
        let started = Instant::now();
        let (status, body, _) = stack.get(&stack.edge, path, bearer, &[]).await;
        let waited = started.elapsed();
        assert_eq!(status, 504, "{path}: {body}\n{}", stack.logs());
        assert_eq!(body["error"], "gateway_timeout", "{path}");
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "{path}: answered after {waited:?}"
        );
    }
    holder.abort();
}

fn write_key(dir: &std::path::Path, kid: &str) {
    use base64::Engine as _;
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&random_hex()[..2], 16).unwrap() ^ i)
        .collect();
    std::fs::write(
        dir.join(format!("{kid}.key")),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed),
    )
    .unwrap();
}

/// Polls `/api/me` with `token` until it answers `want`, for at most `limit`.
async fn until(stack: &Stack, token: &str, want: u16, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (status, _, _) = stack.get(&stack.edge, "/api/me", Some(token), &[]).await;
        if status == want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_keys_the_edge_answers_503_and_a_rotated_out_key_stops_verifying() {
    const MAX_AGE: u64 = 2;
    let keys = TempDir::new("keys");
    write_key(&keys.0, "a");
    let mut stack = Stack::start(Options {
        origin_env: vec![
            ("SIGNING_KEYS_DIR", keys.0.display().to_string()),
            ("ACTIVE_KID", "a".into()),
            ("JWKS_MAX_AGE_SECS", MAX_AGE.to_string()),
        ],
        edge_vars: vec![("JWKS_STALE_SECS", "4".into())],
        ..Options::default()
    })
    .await;
    let (_, _, tokens) = stack.user().await;
    let token_a = access(&tokens);

    // A fresh isolate, the origin down (the store up): 503, never 401.
    stack.kill_origin();
    for _ in 0..3 {
        let (status, body, headers) = stack.get(&stack.edge, "/api/me", Some(&token_a), &[]).await;
        assert_eq!(status, 503, "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    stack.restart_origin().await;
    let back = until(&stack, &token_a, 200, Duration::from_secs(5)).await;
    assert!(back.is_some(), "the origin back: 200\n{}", stack.logs());

    // Past the set's max-age with the origin down: a token naming a key the edge does
    // not hold may be signed by a new key, so 503; a known key keeps working for
    // JWKS_STALE_SECS, then 503 too.
    stack.kill_origin();
    tokio::time::sleep(Duration::from_secs(MAX_AGE + 1)).await;
    let stranger = shared::SigningKey::from_seed([9; 32])
        .with_kid(shared::KeyId::new("c").unwrap())
        .sign(&shared::Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "u".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: shared::unix_now(),
            nbf: shared::unix_now(),
            exp: shared::unix_now() + 300,
            scope: String::new(),
        })
        .unwrap();
    let (status, _, _) = stack
        .get(&stack.edge, "/api/me", Some(&stranger), &[])
        .await;
    assert_eq!(status, 503, "unknown kid, origin unreachable");
    // Forwarded: the upstream saw it (its relay to the stopped origin then fails).
    let before = stack.recorder.seen().len();
    let (status, _, _) = stack.get(&stack.edge, "/api/me", Some(&token_a), &[]).await;
    assert_eq!(
        stack.recorder.seen().len(),
        before + 1,
        "a stale set still verifies within JWKS_STALE_SECS (status {status})"
    );
    let stale_503 = until(&stack, &token_a, 503, Duration::from_secs(10)).await;
    assert!(stale_503.is_some(), "then 503 after the stale bound");
    stack.restart_origin().await;
    assert!(
        until(&stack, &token_a, 200, Duration::from_secs(5))
            .await
            .is_some()
    );

    // Rotation, as the README describes it: publish b, wait a max-age, switch to b.
    write_key(&keys.0, "b");
    stack.restart_origin().await;
    tokio::time::sleep(Duration::from_secs(MAX_AGE + 1)).await;
    stack
        .restart_origin_with(&[("ACTIVE_KID", "b".into())])
        .await;
    let (username, password) = (format!("rot-{}", random_hex()), "pw-rotation-1".to_string());
    let creds = json!({ "username": username, "password": password });
    let (status, _, _) = stack.post_json(&stack.edge, "/auth/register", creds).await;
    assert_eq!(status, 201);
    let token_b = access(&stack.login(&username, &password).await);
    for token in [&token_a, &token_b] {
        let (status, body, _) = stack.get(&stack.edge, "/api/me", Some(token), &[]).await;
        assert_eq!(status, 200, "old and new keys both verify: {body}");
    }

    // Remove a: a still-unexpired token signed by it (its verification cached by the
    // edge) gets 401 within the max-age; b's tokens keep working.
    std::fs::remove_file(keys.0.join("a.key")).unwrap();
    stack.restart_origin().await;
    let took = until(&stack, &token_a, 401, Duration::from_secs(MAX_AGE + 5))
        .await
        .expect("the removed key stops verifying");
    println!("a token of the removed key got 401 after {took:?} (max-age {MAX_AGE} s)");
    assert!(took <= Duration::from_secs(MAX_AGE + 2), "{took:?}");
    let (status, _, _) = stack.get(&stack.edge, "/api/me", Some(&token_b), &[]).await;
    assert_eq!(status, 200);
}

/// The `Set-Cookie` header of `headers` for cookie `name`, whole.
fn set_cookie<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_mode_through_the_edge_the_cookie_passes_untouched_and_other_origins_are_refused() {
    let app = "https://app.example";
    let stack = Stack::start(Options {
        edge_vars: vec![("ALLOWED_ORIGINS", app.into())],
        origin_env: vec![("ALLOWED_ORIGINS", app.into())],
        ..Options::default()
    })
    .await;
    let (username, password, _) = stack.user().await;
    let creds = json!({ "username": username, "password": password });
    let delivery = ("x-token-delivery", "cookie");
    let name = "__Secure-refresh_token";

    // The preflight a cross-origin page's cookie-mode call needs is answered.
    let preflight = stack
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/auth/refresh", stack.edge),
        )
        .header("origin", app)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-token-delivery",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);

    // Login from the listed origin: the cookie arrives as the origin set it.
    let (status, body, headers) = stack
        .post_json_with(
            &stack.edge,
            "/auth/login",
            creds.clone(),
            &[delivery, ("origin", app)],
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(headers["access-control-allow-origin"], app);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let set = set_cookie(&headers, name)
        .expect("the refresh cookie")
        .to_string();
    let max_age = body["refresh_token_expires_in"].as_u64().unwrap();
    let value = set.split(';').next().unwrap()[name.len() + 1..].to_string();
    assert_eq!(
        set,
        format!("{name}={value}; Max-Age={max_age}; Path=/auth; HttpOnly; Secure; SameSite=Strict")
    );
    let cookie = format!("{name}={value}");

    // A page of another origin, even on this host at another port (the same site, so
    // SameSite does not hold the cookie back), posting to /auth/refresh with it: 403 at
    // the edge, and nothing reached the origin (no rotation, no request in its log).
    let rotations = || stack.sql("select count(*) from refresh_token where rotated_at is not null");
    let before = rotations();
    let other_port = format!("http://127.0.0.1:{}", e2e::free_port());
    for origin in [other_port.as_str(), "https://evil.example", "null"] {
        let (status, body, headers) = stack
            .post_json_with(
                &stack.edge,
                "/auth/refresh",
                json!({}),
                &[delivery, ("cookie", &cookie), ("origin", origin)],
            )
            .await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(headers.get("access-control-allow-origin").is_none());
        assert!(headers.get("set-cookie").is_none());
    }
    assert_eq!(rotations(), before);

    // From the listed origin, and from the edge's own, the cookie refreshes.
    let mut cookie = cookie;
    for origin in [app, stack.edge.as_str()] {
        let (status, body, headers) = stack
            .post_json_with(
                &stack.edge,
                "/auth/refresh",
                json!({}),
                &[delivery, ("cookie", &cookie), ("origin", origin)],
            )
            .await;
        assert_eq!(status, 200, "{origin}: {body}\n{}", stack.logs());
        assert!(body.get("refresh_token").is_none());
        let set = set_cookie(&headers, name).expect("the successor's cookie");
        let next = set.split(';').next().unwrap().to_string();
        assert_ne!(next, cookie, "rotated");
        cookie = next;
    }
    assert_eq!(
        rotations().parse::<u32>().unwrap(),
        before.parse::<u32>().unwrap() + 2
    );

    // Logout through the edge clears it.
    let (status, body, _) = stack
        .post_json_with(
            &stack.edge,
            "/auth/refresh",
            json!({}),
            &[delivery, ("cookie", &cookie)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().unwrap();
    let out = stack
        .http
        .post(format!("{}/auth/logout", stack.edge))
        .bearer_auth(access)
        .header(delivery.0, delivery.1)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 204);
    let cleared = set_cookie(out.headers(), name).expect("a clearing cookie");
    assert!(cleared.starts_with(&format!("{name}=;")) && cleared.contains("Max-Age=0"));
}
