//! Attacks at the HTTP level (issue 7, "Faults and attacks"), against the whole stack
//! with the edge under `wrangler dev`. Refresh-token theft in both orders and brute
//! force from many addresses are origin-level (`origin/tests/attacks.rs`): they need
//! client addresses the test chooses, which the origin takes from its configured
//! client-IP header.

use base64::Engine as _;
use e2e::hostile::Forge;
use e2e::{Stack, claims_of};
use serde_json::Value;

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

/// Expected: every rejection vector of `shared` (structure, encoding, header, `alg`,
/// key references, `crit`, `typ`, `kid`, signature, claims, issuer, audience, times),
/// a token signed by another key under our `kid`, a revoked session's token, a token
/// for a session that never existed and a refresh token sent as an access token are
/// each refused with 401 and an RFC 6750 challenge, at the edge and at the origin
/// alike; none reaches the upstream; the valid token built the same way is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_access_tokens_are_refused_at_the_edge_and_at_the_origin_alike() {
    let stack = Stack::start(e2e::Options::default()).await;
    let (username, password, tokens) = stack.user().await;
    let revoked = stack.login(&username, &password).await;
    assert_eq!(
        stack.bearer_post("/auth/logout", &access(&revoked)).await,
        204
    );

    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(std::fs::read_to_string(&stack.key_file).unwrap().trim())
        .unwrap();
    let kid = stack.signing_key().kid().as_str().to_string();
    let mut claims = claims_of(&access(&tokens));
    let now = shared::unix_now();
    claims["iat"] = now.into();
    claims["nbf"] = now.into();
    claims["exp"] = (now + 600).into();
    claims["jti"] = "e2e-forged".into();
    let forge = Forge::new(&seed, &kid, &claims);
    let mut unknown_session = claims.clone();
    unknown_session["sid"] = "7d1c6e0a-0000-4000-8000-000000000000".into();

    let mut cases = forge.hostile();
    cases.push(("a revoked session's token".into(), access(&revoked)));
    cases.push((
        "a session that never existed".into(),
        Forge::new(&seed, &kid, &unknown_session).valid(),
    ));
    cases.push((
        "a refresh token as an access token".into(),
        tokens["refresh_token"].as_str().unwrap().into(),
    ));

    // Control: the forge's valid token passes both, so each refusal is about its defect.
    for base in [&stack.edge, &stack.origin] {
        let (status, body, _) = stack.get(base, "/api/me", Some(&forge.valid()), &[]).await;
        assert_eq!(status, 200, "control at {base}: {body}\n{}", stack.logs());
    }
    let upstream_before = stack.recorder.seen().len();

    let mut failures = Vec::new();
    for (name, token) in &cases {
        for (place, base, challenge) in [
            ("edge", &stack.edge, "Bearer error=\"invalid_token\""),
            ("origin", &stack.origin, "Bearer error=\"invalid_token\""),
        ] {
            let (status, body, headers) = stack.get(base, "/api/me", Some(token), &[]).await;
            let got = headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if status != 401 || !got.starts_with(challenge) {
                failures.push(format!("{place}: {name}: {status} {got:?} {body}"));
            }
        }
    }
    let upstream = stack.recorder.seen().len() - upstream_before;
    eprintln!(
        "ATTACK 6 hostile tokens: {} tokens × (edge, origin) = {} requests, {} not refused with \
         401 + Bearer error=\"invalid_token\", {upstream} reached the upstream; cases: {}",
        cases.len(),
        cases.len() * 2,
        failures.len(),
        cases
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(upstream, 0, "a hostile token reached the upstream");
}
