//! Faults (issue 7, "Faults and attacks"): Redis killed, Postgres restarted, the
//! origin SIGKILLed, a slow store, and sustained load, against the whole stack with the
//! edge under `wrangler dev`. Each test states its expected outcome, asserts it, and
//! prints its figures (`--nocapture`) for docs/FAULTS.md.
//!
//! `E2E_LOAD_SECS` (default 60) and `E2E_KILL_ROUNDS` (default 5) lengthen the load
//! and SIGKILL scenarios; `SOAK=1 scripts/test` sets them high.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{
    Options, Stack, ThrowawayPostgres, ThrowawayRedis, claims_of, me_status, random_below, rss_kib,
};
use serde_json::{Value, json};

/// One scenario at a time: each measures the machine (rates, latencies, memory), and
/// two stacks at once on 2 cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (token, sent, answered, status) of each request.
type Samples = Arc<Mutex<Vec<(String, Instant, Instant, u16)>>>;
/// (kind, answered, status) of each request.
type Statuses = Arc<Mutex<Vec<(&'static str, Instant, u16)>>>;

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

fn refresh_token(tokens: &Value) -> String {
    tokens["refresh_token"].as_str().unwrap().to_string()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn post_status(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    match http
        .post(url)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn tally(statuses: &[u16]) -> String {
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for s in statuses {
        *counts.entry(*s).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    counts
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- 1. Redis killed during steady load through the edge ---------------------------

/// Expected: revoked sessions (before or during the outage) are never answered 200;
/// live ones get 200 (the origin's Postgres fallback) or 503, never 401; once Redis is
/// back, empty, the origins rebuild it and the edge answers from the store again
/// within seconds, with the same tokens: no new login and no refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_admits_no_revoked_session_and_recovers_without_new_logins() {
    let _serial = SERIAL.lock().await;
    let mut redis = ThrowawayRedis::start();
    let stack = Stack::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let (username, password, first) = stack.user().await;
    let mut live = vec![access(&first)];
    for _ in 0..3 {
        live.push(access(&stack.login(&username, &password).await));
    }
    let mut revoked_before = Vec::new();
    for _ in 0..2 {
        let tokens = stack.login(&username, &password).await;
        assert_eq!(
            stack.bearer_post("/auth/logout", &access(&tokens)).await,
            204
        );
        revoked_before.push(access(&tokens));
    }
    // Two live sessions that are logged out during the outage.
    let to_revoke: Vec<String> = (0..2).map(|i| live[i].clone()).collect::<Vec<_>>();

    // Steady load: 4 clients cycling over every token.
    let all: Vec<(String, &'static str)> = live
        .iter()
        .map(|t| (t.clone(), "live"))
        .chain(revoked_before.iter().map(|t| (t.clone(), "revoked")))
        .collect();
    let revoked_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (http, edge, all) = (stack.http.clone(), stack.edge.clone(), all.clone());
        let (samples, stop) = (samples.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let (token, _) = &all[i % all.len()];
                let sent = Instant::now();
                let status = me_status(&http, &edge, token).await;
                samples
                    .lock()
                    .unwrap()
                    .push((token.clone(), sent, Instant::now(), status));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed = Instant::now();
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for token in &to_revoke {
        // The origin validates the bearer against Postgres (Redis is down) and revokes.
        assert_eq!(stack.bearer_post("/auth/logout", token).await, 204);
        revoked_at
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    redis.restart();
    let restarted = Instant::now();
    // Rebuilt when every partition's freshness marker vouches for the new server.
    let markers: Vec<String> = (0..shared::session::PARTITIONS)
        .map(|p| shared::session::partition_freshness_key(&stack.prefix, p))
        .collect();
    let store_back = loop {
        let mut args = vec!["MGET"];
        args.extend(markers.iter().map(String::as_str));
        let values = stack.redis(&args).await;
        let fresh = values.as_array().is_some_and(|values| {
            values
                .iter()
                .all(|v| shared::session::is_fresh(v.as_str().map(str::as_bytes)))
        });
        if fresh {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "the store was not rebuilt within 15 s\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    // With Postgres cut, only the store can say "active": the same access tokens work,
    // so the edge serves from the rebuilt store, with no new login and no refresh.
    stack.postgres.set_up(false);
    let still_live: Vec<&String> = live.iter().filter(|t| !to_revoke.contains(t)).collect();
    for token in &still_live {
        assert_eq!(
            me_status(&stack.http, &stack.edge, token).await,
            200,
            "a live session, answered from the rebuilt store"
        );
    }
    for token in to_revoke.iter().chain(&revoked_before) {
        assert_eq!(
            me_status(&stack.http, &stack.edge, token).await,
            401,
            "a session revoked before or during the outage stays out after it"
        );
    }
    stack.postgres.set_up(true);

    let samples = samples.lock().unwrap().clone();
    let revoked_at = revoked_at.lock().unwrap().clone();
    let kinds: HashMap<&String, &str> = all.iter().map(|(t, k)| (t, *k)).collect();
    let mut wrongly_admitted = Vec::new();
    let mut live_401 = 0;
    let (mut during, mut before, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (token, sent, _, status) in &samples {
        let revoked =
            kinds[token] == "revoked" || revoked_at.get(token).is_some_and(|at| sent > at);
        if revoked && *status == 200 {
            wrongly_admitted.push(*status);
        }
        let live_now = !revoked && !revoked_at.contains_key(token);
        if live_now && *status == 401 {
            live_401 += 1;
        }
        if *sent < killed {
            before.push(*status);
        } else if *sent < restarted {
            during.push(*status);
        } else {
            after.push(*status);
        }
    }
    let last_non_200_after = samples
        .iter()
        .filter(|(t, sent, _, s)| {
            *sent >= restarted && *s != 200 && kinds[t] == "live" && !revoked_at.contains_key(t)
        })
        .map(|(_, _, done, _)| done.duration_since(restarted))
        .max();
    eprintln!(
        "FAULT 1 redis killed: {} requests; before {}; during the {:.1} s outage {}; after {}; \
         store rebuilt {:.2} s after Redis restarted; last non-200 for a live session {:?} after; \
         revoked answered 200: {}; live answered 401: {live_401}; new logins or refreshes needed: 0",
        samples.len(),
        tally(&before),
        restarted.duration_since(killed).as_secs_f64(),
        tally(&during),
        tally(&after),
        store_back.as_secs_f64(),
        last_non_200_after,
        wrongly_admitted.len(),
    );
    assert!(wrongly_admitted.is_empty(), "revoked sessions answered 200");
    assert_eq!(live_401, 0, "a live session got 401 for the store's outage");
    assert!(
        during.iter().all(|s| [200, 401, 503].contains(s)),
        "during the outage only 200 (live, via Postgres), 401 (revoked) or 503: {}",
        tally(&during)
    );
    assert!(
        during.contains(&200),
        "the edge fell back to the origin during the outage"
    );
    assert!(
        store_back < Duration::from_secs(10),
        "store rebuilt in {store_back:?}"
    );
}

// ---- 2. Postgres restarted during login and refresh load ---------------------------

/// Expected: during the restart clients get 503 (never 500 or another 5xx); no
/// refresh token is lost (every client's chain continues) or issued twice; every
/// session has exactly one current token, and none was revoked as reuse; logins and
/// refreshes work again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_login_and_refresh_load_loses_no_token_and_answers_503() {
    let _serial = SERIAL.lock().await;
    let postgres = ThrowawayPostgres::start();
    let stack = Stack::start(Options {
        database_admin_url: Some(postgres.admin_url()),
        ..Options::default()
    })
    .await;
    let (username, password, _) = stack.user().await;
    let mut chains = Vec::new();
    for _ in 0..4 {
        chains.push(refresh_token(&stack.login(&username, &password).await));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Statuses = Arc::default();
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for start_token in chains.clone() {
        let (http, edge) = (stack.http.clone(), stack.edge.clone());
        let (stop, statuses, issued) = (stop.clone(), statuses.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            // One client's refresh chain: on 503 it keeps its token and retries, as
            // told by Retry-After (shortened to keep the test short).
            let mut current = start_token;
            let mut lost = None;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = post_status(
                    &http,
                    format!("{edge}/auth/refresh"),
                    json!({ "refresh_token": current }),
                )
                .await;
                statuses
                    .lock()
                    .unwrap()
                    .push(("refresh", Instant::now(), status));
                match status {
                    200 => {
                        current = refresh_token(&body);
                        issued.lock().unwrap().push(current.clone());
                    }
                    401 => {
                        lost = Some(current.clone());
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            (current, lost)
        }));
    }
    let logins: Arc<Mutex<Vec<String>>> = Arc::default();
    let login_task = {
        let (http, edge) = (stack.http.clone(), stack.edge.clone());
        let (stop, statuses, logins) = (stop.clone(), statuses.clone(), logins.clone());
        let creds = json!({ "username": username, "password": password });
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) =
                    post_status(&http, format!("{edge}/auth/login"), creds.clone()).await;
                statuses
                    .lock()
                    .unwrap()
                    .push(("login", Instant::now(), status));
                if status == 200 {
                    logins.lock().unwrap().push(refresh_token(&body));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopping = Instant::now();
    postgres.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.start_again();
    let back = Instant::now();
    // Run on until every kind of request has succeeded again after the restart.
    let recovered = loop {
        let seen = statuses.lock().unwrap().clone();
        let ok_after = |kind: &str| {
            seen.iter()
                .filter(|(k, at, s)| *k == kind && *at > back && *s == 200)
                .map(|(_, at, _)| *at)
                .min()
        };
        if let (Some(r), Some(l)) = (ok_after("refresh"), ok_after("login")) {
            break r.max(l).duration_since(back);
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "not recovered 30 s after Postgres restarted\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut finals = Vec::new();
    for task in tasks {
        let (current, lost) = task.await.unwrap();
        assert_eq!(lost, None, "a client's refresh token was refused: lost");
        finals.push(current);
    }
    login_task.await.unwrap();

    let seen = statuses.lock().unwrap().clone();
    let all: Vec<u16> = seen.iter().map(|(_, _, s)| *s).collect();
    let outage: Vec<u16> = seen
        .iter()
        .filter(|(_, at, _)| *at >= stopping && *at <= back + recovered)
        .map(|(_, _, s)| *s)
        .collect();
    let issued = issued.lock().unwrap().clone();
    let distinct: HashSet<&String> = issued.iter().collect();
    eprintln!(
        "FAULT 2 postgres restarted: {} requests ({} refreshes issued, {} logins); all {}; \
         from stop to recovery {}; Postgres down {:.1} s; recovered {:.2} s after it was back",
        all.len(),
        issued.len(),
        logins.lock().unwrap().len(),
        tally(&all),
        tally(&outage),
        back.duration_since(stopping).as_secs_f64(),
        recovered.as_secs_f64(),
    );
    assert!(
        all.iter().all(|s| [200, 503].contains(s)),
        "only 200 or 503: {}",
        tally(&all)
    );
    assert!(outage.contains(&503), "the outage was seen as 503");
    assert_eq!(distinct.len(), issued.len(), "a refresh token issued twice");

    // Postgres: every session has exactly one current token, nothing was revoked as
    // reuse, and each chain's last token is its session's current one.
    let half_rotated = stack.sql(
        "select count(*) from session s where (select count(*) from refresh_token t \
         where t.session_id = s.id and t.rotated_at is null) <> 1",
    );
    assert_eq!(
        half_rotated, "0",
        "sessions without exactly one current token"
    );
    assert_eq!(
        stack.sql("select count(*) from session where revoked_at is not null"),
        "0"
    );
    assert_eq!(stack.sql("select count(*) from security_event"), "0");
    for token in &finals {
        let (status, _) = post_status(
            &stack.http,
            format!("{}/auth/refresh", stack.edge),
            json!({ "refresh_token": token }),
        )
        .await;
        assert_eq!(status, 200, "the chain's last token still refreshes");
    }
    let (code, report) = stack.check_consistency();
    eprintln!("FAULT 2 check-consistency: {}", report.trim());
    assert_eq!(code, 0, "{report}");
}

// ---- 3. The origin SIGKILLed during refreshes and revocations ----------------------

/// Expected: whatever the moment of the kill, once the origin is back Postgres and
/// Redis agree on every session (`origin check-consistency` exits 0), and no client
/// lost its session to the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_sigkilled_during_refreshes_and_revocations_leaves_postgres_and_redis_agreeing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(Options::default()).await;
    let rounds = env_u64("E2E_KILL_ROUNDS", 5);
    let (username, password, _) = stack.user().await;
    let origin = stack.origin.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (http, origin) = (stack.http.clone(), origin.clone());
        let (stop, counts, unexpected) = (stop.clone(), counts.clone(), unexpected.clone());
        let creds = json!({ "username": username, "password": password });
        workers.push(tokio::spawn(async move {
            let mut tokens: Option<Value> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(current) = tokens.clone() else {
                    let (status, body) =
                        post_status(&http, format!("{origin}/auth/login"), creds.clone()).await;
                    if status == 200 {
                        tokens = Some(body);
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                let action = match random_below(10) {
                    0..=5 => "refresh",
                    6..=7 => "logout",
                    8 => "delete",
                    _ => "logout-all",
                };
                let status = match action {
                    "refresh" => {
                        let (status, body) = post_status(
                            &http,
                            format!("{origin}/auth/refresh"),
                            json!({ "refresh_token": current["refresh_token"] }),
                        )
                        .await;
                        if status == 200 {
                            tokens = Some(body);
                        }
                        status
                    }
                    _ => {
                        let sid = claims_of(&access(&current))["sid"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        let request = match action {
                            "logout" => http.post(format!("{origin}/auth/logout")),
                            "delete" => http.delete(format!("{origin}/auth/sessions/{sid}")),
                            _ => http.post(format!("{origin}/auth/logout-all")),
                        };
                        let status = request
                            .bearer_auth(access(&current))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        if status == 204 {
                            tokens = None;
                        }
                        status
                    }
                };
                *counts.lock().unwrap().entry(action).or_default() += 1;
                match status {
                    // 0: the origin was killed under the request; try again shortly.
                    0 => tokio::time::sleep(Duration::from_millis(50)).await,
                    200 | 204 => {}
                    // Another worker's logout-all ended this session (401, or 404 for a
                    // delete whose bearer passed just before), or a delete retried after
                    // a kill had already done it: log in again.
                    401 | 404 => tokens = None,
                    other => unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{action}: {other}")),
                }
            }
        }));
    }

    let mut kill_points = Vec::new();
    for _ in 0..rounds {
        let wait = 200 + random_below(1300);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        stack.kill_origin();
        kill_points.push(wait);
        stack.restart_origin().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // The restarted origin reconciles Redis with Postgres on its first tick (at once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, report) = stack.check_consistency();
    let counts = counts.lock().unwrap().clone();
    eprintln!(
        "FAULT 3 origin SIGKILLed {rounds} times (after {kill_points:?} ms of load each): \
         requests {counts:?}; check-consistency exit {code}: {}",
        report.trim()
    );
    assert_eq!(code, 0, "Postgres and Redis disagree:\n{report}");
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let sessions: u64 = stack.sql("select count(*) from session").parse().unwrap();
    assert!(sessions > 3, "the load made sessions ({sessions})");
}

// ---- 4. A slow store ---------------------------------------------------------------

/// Expected: with the REST front answering after 2 s and a 1 s store budget, the edge
/// gives up on the store within its budget and degrades: live sessions 200 through the
/// origin's check, revoked 401, and 503 with Retry-After when the origin cannot decide
/// either; no request takes longer than the two budgets plus overhead (3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_makes_the_edge_degrade_within_its_budget_and_never_hang() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(Options {
        rest_delay_ms: 2000,
        store_timeout_ms: 1000,
        ..Options::default()
    })
    .await;
    let (username, password, live) = stack.user().await;
    let revoked = stack.login(&username, &password).await;
    assert_eq!(
        stack.bearer_post("/auth/logout", &access(&revoked)).await,
        204
    );

    let timed = async |token: &str| {
        let started = Instant::now();
        let response = stack
            .http
            .get(format!("{}/api/me", stack.edge))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the edge answers");
        (
            response.status().as_u16(),
            response.headers().contains_key("retry-after"),
            started.elapsed(),
        )
    };
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let (status, _, took) = timed(&access(&live)).await;
        assert_eq!(status, 200, "live session via the fallback");
        latencies.push(took);
        let (status, _, took) = timed(&access(&revoked)).await;
        assert_eq!(status, 401, "revoked session via the fallback");
        latencies.push(took);
    }
    stack.postgres.set_up(false);
    let mut unavailable = Vec::new();
    for _ in 0..3 {
        let (status, retry_after, took) = timed(&access(&live)).await;
        assert_eq!((status, retry_after), (503, true), "nobody can decide: 503");
        unavailable.push(took);
    }
    stack.postgres.set_up(true);
    let max = latencies.iter().chain(&unavailable).max().unwrap();
    eprintln!(
        "FAULT 4 slow store (REST_DELAY_MS=2000, STORE_TIMEOUT_MS=1000): 10 requests 200/401 in {:?}; \
         3 requests 503 (Postgres cut too) in {:?}; max {max:?}",
        latencies.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        unavailable
            .iter()
            .map(|d| d.as_millis())
            .collect::<Vec<_>>(),
    );
    assert!(
        latencies.iter().all(|d| *d >= Duration::from_millis(900)),
        "the store was really slow (each request waited for its budget)"
    );
    assert!(*max < Duration::from_secs(3), "a request took {max:?}");
}

// ---- 5. Sustained load -------------------------------------------------------------

/// Expected: `E2E_LOAD_SECS` (60) of closed-loop clients mixing logins, refreshes,
/// validated calls and logouts through the edge: zero 5xx, zero wrongly accepted tokens
/// (a logged-out session's or a tampered token), and flat origin memory (the highest
/// RSS of the second half within 16 MiB of the first half's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_mixed_load_has_no_5xx_no_wrong_acceptance_and_flat_memory() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(Options::default()).await;
    let seconds = env_u64("E2E_LOAD_SECS", 60);
    let (username, password, _) = stack.user().await;
    let pid = stack.origin_pid().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<HashMap<(&'static str, u16), u64>>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, edge) = (stack.http.clone(), stack.edge.clone());
        let (stop, requests, statuses, wrong) = (
            stop.clone(),
            requests.clone(),
            statuses.clone(),
            wrong.clone(),
        );
        let creds = json!({ "username": username, "password": password });
        clients.push(tokio::spawn(async move {
            let record = |kind: &'static str, status: u16| {
                requests.fetch_add(1, Ordering::Relaxed);
                *statuses.lock().unwrap().entry((kind, status)).or_default() += 1;
            };
            while !stop.load(Ordering::Relaxed) {
                let (status, mut tokens) =
                    post_status(&http, format!("{edge}/auth/login"), creds.clone()).await;
                record("login", status);
                if status != 200 {
                    continue;
                }
                for round in 0..30 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if round % 10 == 9 {
                        let (status, body) = post_status(
                            &http,
                            format!("{edge}/auth/refresh"),
                            json!({ "refresh_token": tokens["refresh_token"] }),
                        )
                        .await;
                        record("refresh", status);
                        if status == 200 {
                            tokens = body;
                        }
                    } else {
                        let status = me_status(&http, &edge, &access(&tokens)).await;
                        record("me", status);
                    }
                }
                // A tampered token must never pass.
                let token = access(&tokens);
                let tampered = format!("{}A", &token[..token.len() - 1]);
                let tampered = if tampered == token {
                    format!("{}B", &token[..token.len() - 1])
                } else {
                    tampered
                };
                let status = me_status(&http, &edge, &tampered).await;
                record("tampered", status);
                if status == 200 {
                    wrong.lock().unwrap().push("tampered token accepted".into());
                }
                let status = http
                    .post(format!("{edge}/auth/logout"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                record("logout", status);
                if status == 204 {
                    let status = me_status(&http, &edge, &token).await;
                    record("after-logout", status);
                    if status == 200 {
                        wrong
                            .lock()
                            .unwrap()
                            .push("logged-out token accepted".into());
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Some(kib) = rss_kib(pid) {
            rss.push((started.elapsed().as_secs(), kib));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = requests.load(Ordering::Relaxed);
    let statuses = statuses.lock().unwrap().clone();
    let mut by_kind: Vec<_> = statuses.iter().collect();
    by_kind.sort();
    let server_errors: u64 = statuses
        .iter()
        .filter(|((_, s), _)| *s >= 500 || *s == 0)
        .map(|(_, n)| n)
        .sum();
    let half = seconds / 2;
    let first_half_max = rss
        .iter()
        .filter(|(t, _)| *t >= 5 && *t < half)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    let second_half_max = rss
        .iter()
        .filter(|(t, _)| *t >= half)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    let max = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    eprintln!(
        "FAULT 5 load: {total} requests in {elapsed:.1} s ({:.0}/s) by 8 clients; {by_kind:?}; \
         5xx or failed: {server_errors}; wrongly accepted: {}; origin RSS start {} KiB, end {} KiB, \
         max {max} KiB (first-half max {first_half_max}, second-half max {second_half_max})",
        total as f64 / elapsed,
        wrong.lock().unwrap().len(),
        rss.first().map_or(0, |r| r.1),
        rss.last().map_or(0, |r| r.1),
    );
    assert_eq!(server_errors, 0, "5xx or failed requests: {by_kind:?}");
    assert!(
        wrong.lock().unwrap().is_empty(),
        "{:?}",
        wrong.lock().unwrap()
    );
    assert!(
        statuses.get(&("after-logout", 401)).copied().unwrap_or(0) > 0,
        "logged-out tokens were checked"
    );
    assert!(
        second_half_max <= first_half_max + 16 * 1024,
        "origin memory grew: {first_half_max} → {second_half_max} KiB"
    );
}
