//! Scale-out (issue 14, items 2 and 5): the whole stack on a throwaway Redis Cluster
//! (3 primaries, 3 replicas) with 3 origins behind HAProxy, the REST front and the
//! edge under `wrangler dev`, through which every request goes.
//!
//! One test, two phases, each stating its expected outcome, asserting it and printing
//! its figures (`--nocapture`) for the CI log:
//!
//! 1. One primary is flushed (`FLUSHALL`): its users' records, tombstones and freshness
//!    markers are gone while the other shards keep theirs. Every live session answers
//!    200 throughout (never 401), every revoked one 401, and the shard's records are
//!    back within [`REBUILD_BOUND`].
//! 2. 60 s of mixed load (logins, refreshes, `/api/me`, logouts, logout-all) by
//!    virtual users while a primary is SIGKILLed (its replica takes over, ~10 s in), a
//!    graceful `CLUSTER FAILOVER` happens (~25 s) and one origin is SIGKILLed (~40 s)
//!    and stays down. A revoked session (its logout or logout-all acknowledged) is
//!    never answered 200; a live session is never answered 401; a 5xx (or a failed
//!    request) comes only within [`FAULT_WINDOW`] of a fault; afterwards the store
//!    alone (Postgres cut) answers every session right, and `origin check-consistency`
//!    agrees.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::cluster::ScaleOut;
use e2e::{Options, Stack, claims_of, me_status, random_below};
use serde_json::{Value, json};
use shared::session::{freshness_key, is_fresh, session_key};

/// How long after a fault a 5xx (or a failed request) is still put down to it. A
/// primary's failover takes the 2 s node timeout plus the election (~3-5 s measured),
/// then the origins rebuild its partitions (markers read every second); an origin's
/// death takes HAProxy 2 checks of 500 ms to notice (retries cover most of that).
const FAULT_WINDOW: Duration = Duration::from_secs(10);
/// How long after a flush the shard's records must be back: origins check the markers
/// every second, and a rebuild of a third of the partitions takes well under a second
/// with this test's few hundred sessions.
const REBUILD_BOUND: Duration = Duration::from_secs(10);
/// Length of the load phase, and when each fault happens in it.
const LOAD: Duration = Duration::from_secs(60);
const KILL_PRIMARY_AT: Duration = Duration::from_secs(10);
const GRACEFUL_FAILOVER_AT: Duration = Duration::from_secs(25);
const KILL_ORIGIN_AT: Duration = Duration::from_secs(40);
/// Virtual users of the load phase: two per shard, so every fault hits someone.
const USERS_PER_SHARD: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_shard_and_failovers_under_load_log_no_live_user_out_and_admit_no_revoked_session()
 {
    let started = Instant::now();
    let mut scale = ScaleOut::start(3, Options::default()).await;
    eprintln!(
        "SCALE-OUT stack up in {:.1} s: 6 Redis nodes, 3 origins behind HAProxy {}, REST front, edge {}",
        started.elapsed().as_secs_f64(),
        scale.stack.origin,
        scale.stack.edge
    );
    flushed_shard_is_rebuilt_with_no_live_user_logged_out(&scale).await;
    failovers_and_a_killed_origin_under_load(&mut scale).await;
    eprintln!("SCALE-OUT total {:.1} s", started.elapsed().as_secs_f64());
}

// ---- helpers ------------------------------------------------------------------------

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

/// (sub, sid) of an access token.
fn ids(token: &str) -> (String, String) {
    let claims = claims_of(token);
    (
        claims["sub"].as_str().unwrap().to_string(),
        claims["sid"].as_str().unwrap().to_string(),
    )
}

async fn post(
    http: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.post(url).timeout(Duration::from_secs(30));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn tally(statuses: impl IntoIterator<Item = u16>) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The stack's logs without the origins' routine lines (one per login, logout…):
/// warnings, errors, HAProxy's failed requests and state changes, wrangler's output.
fn notable_logs(stack: &Stack) -> String {
    stack
        .logs()
        .lines()
        .filter(|l| !l.contains(r#""level":"INFO""#) && !l.contains(r#""level":"DEBUG""#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The time of day, UTC, as `HH:MM:SS.mmm`: to find a moment in the processes' logs.
fn utc_time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (secs, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn is_failure(status: u16) -> bool {
    status >= 500 || status == 0
}

/// Runs a blocking cluster operation (it polls with `std::thread::sleep`) without
/// stalling the virtual users on this worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---- 1. one primary flushed ---------------------------------------------------------

/// Expected: with one shard's data gone (`FLUSHALL` on its primary, replicated to its
/// replica), the edge finds that shard's markers missing and asks the origins, which
/// answer from Postgres: live sessions 200 throughout (never 401), revoked 401; the
/// origins rebuild the shard and its records are back within [`REBUILD_BOUND`].
async fn flushed_shard_is_rebuilt_with_no_live_user_logged_out(scale: &ScaleOut) {
    let (stack, cluster) = (&scale.stack, &scale.cluster);
    // Users on every shard: 18 users, 6 per shard on average.
    let mut live = Vec::new();
    let mut revoked = Vec::new();
    for _ in 0..18 {
        let (username, password, tokens) = stack.user().await;
        live.push(access(&tokens));
        let gone = access(&stack.login(&username, &password).await);
        assert_eq!(stack.bearer_post("/auth/logout", &gone).await, 204);
        revoked.push(gone);
    }
    let shard_of = |token: &String| {
        let (sub, sid) = ids(token);
        blocking(|| cluster.shard_of_key(&session_key(&stack.prefix, &sub, &sid)))
    };
    let shards: Vec<usize> = live.iter().map(shard_of).collect();
    let flushed = (0..3)
        .max_by_key(|s| shards.iter().filter(|x| *x == s).count())
        .unwrap();
    let on_flushed: Vec<&String> = live
        .iter()
        .zip(&shards)
        .filter(|(_, s)| **s == flushed)
        .map(|(t, _)| t)
        .collect();
    assert!(
        on_flushed.len() >= 2,
        "users on the flushed shard: {}",
        on_flushed.len()
    );
    let record_keys: Vec<String> = on_flushed
        .iter()
        .map(|t| {
            let (sub, sid) = ids(t);
            session_key(&stack.prefix, &sub, &sid)
        })
        .collect();
    let marker_keys: Vec<String> = on_flushed
        .iter()
        .map(|t| freshness_key(&stack.prefix, &ids(t).0))
        .collect();
    for key in &record_keys {
        assert!(blocking(|| cluster.exists(key)), "{key} published");
    }

    // Probes: 4 clients cycling over every live and revoked token.
    let all: Vec<(String, bool)> = live
        .iter()
        .map(|t| (t.clone(), true))
        .chain(revoked.iter().map(|t| (t.clone(), false)))
        .collect();
    let samples: Arc<Mutex<Vec<(bool, Instant, u16)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut probes = Vec::new();
    for c in 0..4 {
        let (http, edge, all) = (stack.http.clone(), stack.edge.clone(), all.clone());
        let (samples, stop) = (samples.clone(), stop.clone());
        probes.push(tokio::spawn(async move {
            let mut i = c * 7;
            while !stop.load(Ordering::Relaxed) {
                let (token, is_live) = &all[i % all.len()];
                let status = me_status(&http, &edge, token).await;
                samples
                    .lock()
                    .unwrap()
                    .push((*is_live, Instant::now(), status));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let shard = blocking(|| cluster.shards())[flushed].clone();
    let keys_before = blocking(|| cluster.dbsize(flushed));
    let flushed_at = Instant::now();
    blocking(|| cluster.flush_primary(flushed));
    let back = loop {
        let records = record_keys.iter().all(|k| blocking(|| cluster.exists(k)));
        let markers = marker_keys
            .iter()
            .all(|k| is_fresh(blocking(|| cluster.get(k)).as_deref().map(str::as_bytes)));
        if records && markers {
            break flushed_at.elapsed();
        }
        assert!(
            flushed_at.elapsed() < REBUILD_BOUND + Duration::from_secs(5),
            "the flushed shard was not rebuilt within {:?}\n{}",
            REBUILD_BOUND + Duration::from_secs(5),
            notable_logs(stack)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for probe in probes {
        probe.await.unwrap();
    }

    let samples = samples.lock().unwrap().clone();
    let during = |live: bool| {
        samples
            .iter()
            .filter(move |(l, at, _)| *l == live && *at >= flushed_at)
            .map(|(_, _, s)| *s)
    };
    let before = samples.iter().filter(|(_, at, _)| *at < flushed_at);
    eprintln!(
        "SCALE-OUT 1 flush: shard {flushed} (primary {}, slots {:?}) flushed with {} of {} live users \
         on it ({keys_before} keys flushed); records and markers back {:.2} s after \
         (bound {REBUILD_BOUND:?}); /api/me before: {}; after the flush live: {}; revoked: {}",
        shard.primary_port,
        shard.slots,
        on_flushed.len(),
        live.len(),
        back.as_secs_f64(),
        tally(before.map(|(_, _, s)| *s)),
        tally(during(true)),
        tally(during(false)),
    );
    assert!(
        during(true).all(|s| s == 200),
        "a live session was not answered 200 after the flush: {}\n{}",
        tally(during(true)),
        notable_logs(stack)
    );
    assert!(
        during(false).all(|s| s == 401),
        "a revoked session was not answered 401 after the flush: {}",
        tally(during(false))
    );
    assert!(back <= REBUILD_BOUND, "rebuilt in {back:?}");
}

// ---- 2. failovers and a killed origin under load ------------------------------------

/// A session as a virtual user holds it.
struct Session {
    access: String,
    /// `None` once a refresh failed without an answer: it may have rotated the token,
    /// and using it again after the grace window would be reuse (the session revoked
    /// by design). The access token keeps the session usable.
    refresh: Option<String>,
    /// When its login was answered.
    since: Instant,
}

/// What a session was when a request about it was sent. A virtual user makes one
/// request at a time and is the only one using its account, so this is exact.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Class {
    /// Never revoked.
    Live,
    /// Its logout or logout-all was acknowledged (2xx).
    Revoked,
}

/// One answered request.
#[derive(Clone, Debug)]
struct Answer {
    kind: &'static str,
    class: Option<Class>,
    /// The shard holding the virtual user's keys.
    shard: usize,
    sent: Instant,
    answered: Instant,
    status: u16,
    /// For a request on a session: when its login (live) or its revocation (revoked)
    /// was answered.
    since: Option<Instant>,
}

impl Answer {
    /// One line for a report, times in seconds from `start`.
    fn describe(&self, start: Instant) -> String {
        let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
        format!(
            "{} {}{} on shard {} sent {:.2} s answered {:.2} s{}",
            self.kind,
            self.status,
            self.class
                .map_or(String::new(), |c| format!(" ({c:?})").to_lowercase()),
            self.shard,
            at(self.sent),
            at(self.answered),
            self.since.map_or(String::new(), |t| format!(
                ", {} at {:.2} s",
                if self.class == Some(Class::Revoked) {
                    "revoked"
                } else {
                    "logged in"
                },
                at(t)
            )),
        )
    }
}

type Answers = Arc<Mutex<Vec<Answer>>>;

/// Expected: see the module documentation, phase 2.
async fn failovers_and_a_killed_origin_under_load(scale: &mut ScaleOut) {
    // Two users per shard (registered until each shard has its two).
    let mut users: Vec<(String, String, Value, usize)> = Vec::new();
    let mut per_shard = [0usize; 3];
    let mut registered = 0;
    while per_shard.iter().any(|n| *n < USERS_PER_SHARD) {
        registered += 1;
        assert!(registered < 60, "users never covered every shard");
        let (username, password, tokens) = scale.stack.user().await;
        let (sub, sid) = ids(&access(&tokens));
        let key = session_key(&scale.stack.prefix, &sub, &sid);
        let shard = blocking(|| scale.cluster.shard_of_key(&key));
        if per_shard[shard] < USERS_PER_SHARD {
            per_shard[shard] += 1;
            users.push((username, password, tokens, shard));
        }
    }
    let subs: Vec<String> = users.iter().map(|u| ids(&access(&u.2)).0).collect();

    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut virtual_users = Vec::new();
    for (username, password, tokens, shard) in users.clone() {
        let user = VirtualUser {
            http: scale.stack.http.clone(),
            edge: scale.stack.edge.clone(),
            creds: json!({ "username": username, "password": password }),
            shard,
            answers: answers.clone(),
        };
        virtual_users.push(tokio::spawn(user.run(tokens, stop.clone())));
    }

    let load_started = Instant::now();
    eprintln!(
        "SCALE-OUT 2 load starts at {} UTC (the origins' log timestamps)",
        utc_time_of_day()
    );
    let mut faults: Vec<(&'static str, Instant)> = Vec::new();
    let until = async |at: Duration| {
        tokio::time::sleep_until((load_started + at).into()).await;
    };

    until(KILL_PRIMARY_AT).await;
    // The shard of the first user: someone's records are on it.
    let killed_shard = users[0].3;
    faults.push(("primary SIGKILLed", Instant::now()));
    let killed_port = blocking(|| scale.cluster.shards())[killed_shard].primary_port;
    let promoted_in = blocking(|| scale.cluster.kill_primary(killed_shard));

    until(GRACEFUL_FAILOVER_AT).await;
    faults.push(("graceful CLUSTER FAILOVER", Instant::now()));
    let (switched_shard, switched_in) = blocking(|| scale.cluster.graceful_failover());

    until(KILL_ORIGIN_AT).await;
    faults.push(("origin 2 SIGKILLed", Instant::now()));
    scale.stack.kill_origin_at(2);
    let lb = scale.stack.load_balancer.as_ref().unwrap();
    let marked_down_in = lb
        .wait_states(&[true, true, false], Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", notable_logs(&scale.stack)));

    until(LOAD).await;
    stop.store(true, Ordering::Relaxed);
    let mut finals = Vec::new();
    for vu in virtual_users {
        finals.push(vu.await.unwrap());
    }
    let load_secs = load_started.elapsed().as_secs_f64();

    // ---- figures ----
    let answers = answers.lock().unwrap().clone();
    let mut by_kind: BTreeMap<(&str, Option<Class>), Vec<u16>> = BTreeMap::new();
    for a in &answers {
        by_kind.entry((a.kind, a.class)).or_default().push(a.status);
    }
    let revoked_200: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.class == Some(Class::Revoked) && a.status == 200)
        .collect();
    // A live session refused: `/api/me`, a refresh, a logout or logout-all answered
    // 401. One exception: HAProxy sends a request again when an origin dies under it
    // (`retry-on empty-response`), so a logout the killed origin had committed is
    // retried on another and refused there, the session being revoked already.
    let origin_killed = faults[2].1;
    let retried_logout = |a: &Answer| {
        a.kind.starts_with("logout")
            && a.sent <= origin_killed
            && a.answered >= origin_killed
            && a.answered <= origin_killed + FAULT_WINDOW
    };
    let (retried_logouts, live_401): (Vec<&Answer>, Vec<&Answer>) = answers
        .iter()
        .filter(|a| a.class == Some(Class::Live) && a.status == 401)
        .partition(|a| retried_logout(a));
    let mut per_fault: Vec<usize> = vec![0; faults.len()];
    let mut outside = Vec::new();
    for a in answers.iter().filter(|a| is_failure(a.status)) {
        match faults
            .iter()
            .position(|(_, at)| a.answered >= *at && a.answered <= *at + FAULT_WINDOW)
        {
            Some(i) => per_fault[i] += 1,
            None => outside.push(a.describe(load_started)),
        }
    }
    eprintln!(
        "SCALE-OUT 2 load: {} requests in {load_secs:.1} s by {} virtual users ({:.0}/s)",
        answers.len(),
        users.len(),
        answers.len() as f64 / load_secs
    );
    for ((kind, class), statuses) in &by_kind {
        let class = class.map_or(String::new(), |c| format!(" ({c:?})").to_lowercase());
        eprintln!(
            "SCALE-OUT 2   {kind}{class}: {} → {}",
            statuses.len(),
            tally(statuses.iter().copied())
        );
    }
    eprintln!(
        "SCALE-OUT 2 faults: primary {killed_port} of shard {killed_shard} SIGKILLed at {:.1} s, \
         replica serving after {:.2} s; CLUSTER FAILOVER of shard {switched_shard} at {:.1} s, \
         roles switched after {:.2} s; origin 2 SIGKILLed at {:.1} s, marked down by HAProxy after {:.2} s",
        faults[0].1.duration_since(load_started).as_secs_f64(),
        promoted_in.as_secs_f64(),
        faults[1].1.duration_since(load_started).as_secs_f64(),
        switched_in.as_secs_f64(),
        faults[2].1.duration_since(load_started).as_secs_f64(),
        marked_down_in.as_secs_f64(),
    );
    let mut wrong: Vec<&&Answer> = revoked_200.iter().chain(&live_401).collect();
    wrong.sort_by_key(|a| a.sent);
    for a in wrong.iter().take(40) {
        eprintln!("SCALE-OUT 2 WRONG {}", a.describe(load_started));
    }
    eprintln!(
        "SCALE-OUT 2 5xx or failed within {FAULT_WINDOW:?} of a fault: {}; outside any: {}; \
         revoked sessions answered 200: {}; live sessions answered 401: {} (logouts retried \
         by HAProxy after the killed origin had done them: {})",
        faults
            .iter()
            .zip(&per_fault)
            .map(|((name, _), n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        outside.len(),
        revoked_200.len(),
        live_401.len(),
        retried_logouts.len(),
    );

    // ---- afterwards: the store alone is right, and Postgres agrees ----
    // Every virtual user's partition vouched for again (after the failovers the origins
    // rebuild; then the edge may decide from the store alone).
    let settle = Instant::now();
    let stale = loop {
        let stale: Vec<(usize, Option<String>)> = subs
            .iter()
            .zip(&users)
            .filter_map(|(sub, user)| {
                let key = freshness_key(&scale.stack.prefix, sub);
                let marker = blocking(|| scale.cluster.get(&key));
                (!is_fresh(marker.as_deref().map(str::as_bytes))).then_some((user.3, marker))
            })
            .collect();
        if stale.is_empty() || settle.elapsed() > Duration::from_secs(15) {
            break stale;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let markers_fresh_in = settle.elapsed();
    if !stale.is_empty() {
        eprintln!(
            "SCALE-OUT 2 markers still not fresh {:.0} s after the load (shard, marker): {stale:?}",
            markers_fresh_in.as_secs_f64()
        );
    }
    // With Postgres cut, the edge decides from the store, without the origins' check:
    // every acknowledged publish (a login, a refresh) and revocation is in it.
    scale.stack.postgres.set_up(false);
    let mut sweep: Vec<(Class, u16)> = Vec::new();
    for (live, revoked) in &finals {
        for token in live {
            sweep.push((
                Class::Live,
                me_status(&scale.stack.http, &scale.stack.edge, token).await,
            ));
        }
        for token in revoked {
            sweep.push((
                Class::Revoked,
                me_status(&scale.stack.http, &scale.stack.edge, token).await,
            ));
        }
    }
    scale.stack.postgres.set_up(true);
    let sweep_of = |class: Class| {
        sweep
            .iter()
            .filter(move |(c, _)| *c == class)
            .map(|(_, s)| *s)
    };
    let consistency = check_consistency_settled(&scale.stack).await;
    eprintln!(
        "SCALE-OUT 2 after: markers fresh after {:.2} s; from the store alone (Postgres cut) \
         live {} revoked {}; check-consistency {}",
        markers_fresh_in.as_secs_f64(),
        tally(sweep_of(Class::Live)),
        tally(sweep_of(Class::Revoked)),
        consistency.1.trim()
    );

    // The logs, once, before the first assertion that can fail.
    if !wrong.is_empty() || !outside.is_empty() || !stale.is_empty() || consistency.0 != 0 {
        eprintln!("SCALE-OUT 2 logs:\n{}", notable_logs(&scale.stack));
    }
    assert_eq!(revoked_200.len(), 0, "revoked sessions answered 200");
    assert!(
        stale.is_empty(),
        "partitions still rebuilding 15 s after the load: {stale:?}"
    );
    assert_eq!(live_401.len(), 0, "live sessions answered 401");
    assert!(
        outside.is_empty(),
        "5xx or failed requests outside {FAULT_WINDOW:?} of any fault: {outside:?}"
    );
    let unexpected: Vec<String> = answers
        .iter()
        .filter(|a| {
            !is_failure(a.status)
                && !matches!(
                    (a.kind, a.status),
                    ("me" | "refresh", 200 | 401)
                        | ("login", 200)
                        | ("logout" | "logout-all", 204 | 401)
                )
        })
        .map(|a| format!("{} {}", a.kind, a.status))
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    for kind in ["login", "refresh", "logout", "logout-all"] {
        assert!(
            answers.iter().any(|a| a.kind == kind && a.status < 300),
            "the load did some {kind}"
        );
    }
    assert!(
        by_kind
            .get(&("me", Some(Class::Revoked)))
            .is_some_and(|s| s.len() > 10),
        "revoked sessions were probed"
    );
    assert!(
        sweep_of(Class::Live).all(|s| s == 200),
        "live sessions from the store alone"
    );
    assert!(
        sweep_of(Class::Revoked).all(|s| s == 401),
        "revoked sessions from the store alone"
    );
    assert_eq!(consistency.0, 0, "check-consistency: {}", consistency.1);
}

/// One virtual user: its own account, up to 4 sessions at a time, one request at a
/// time.
struct VirtualUser {
    http: reqwest::Client,
    edge: String,
    creds: Value,
    shard: usize,
    answers: Answers,
}

impl VirtualUser {
    fn record(
        &self,
        kind: &'static str,
        class: Option<Class>,
        sent: Instant,
        status: u16,
        since: Option<Instant>,
    ) {
        self.answers.lock().unwrap().push(Answer {
            kind,
            class,
            shard: self.shard,
            sent,
            answered: Instant::now(),
            status,
            since,
        });
    }

    /// Runs until `stop`: returns its live and revoked access tokens.
    async fn run(self, first: Value, stop: Arc<AtomicBool>) -> (Vec<String>, Vec<String>) {
        let (http, edge) = (&self.http, &self.edge);
        let session = |tokens: &Value, since: Instant| Session {
            access: access(tokens),
            refresh: tokens["refresh_token"].as_str().map(str::to_string),
            since,
        };
        let mut live: Vec<Session> = vec![session(&first, Instant::now())];
        // Recently revoked tokens (and when), probed again and again: a revocation
        // must hold through every fault that follows it. Every revoked token, for the
        // final sweep.
        let mut recent: VecDeque<(String, Instant)> = VecDeque::new();
        let mut revoked: Vec<String> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let action = match random_below(100) {
                _ if live.is_empty() => "login",
                0..50 => "me",
                50..65 if !recent.is_empty() => "me revoked",
                50..65 => "me",
                65..77 => "refresh",
                77..85 if live.len() < 4 => "login",
                77..85 => "me",
                85..95 => "logout",
                _ => "logout-all",
            };
            let sent = Instant::now();
            match action {
                "login" => {
                    let url = format!("{edge}/auth/login");
                    let (status, body) = post(http, url, None, Some(self.creds.clone())).await;
                    self.record("login", None, sent, status, None);
                    if status == 200 {
                        live.push(session(&body, Instant::now()));
                    }
                }
                "me" => {
                    let chosen = &live[random_below(live.len() as u64) as usize];
                    let status = me_status(http, edge, &chosen.access).await;
                    self.record("me", Some(Class::Live), sent, status, Some(chosen.since));
                }
                "me revoked" => {
                    let (token, at) = &recent[random_below(recent.len() as u64) as usize];
                    let status = me_status(http, edge, token).await;
                    self.record("me", Some(Class::Revoked), sent, status, Some(*at));
                }
                "refresh" => {
                    let i = random_below(live.len() as u64) as usize;
                    let Some(refresh) = live[i].refresh.clone() else {
                        continue;
                    };
                    let url = format!("{edge}/auth/refresh");
                    let body = json!({ "refresh_token": refresh });
                    let (status, body) = post(http, url, None, Some(body)).await;
                    let since = Some(live[i].since);
                    self.record("refresh", Some(Class::Live), sent, status, since);
                    match status {
                        200 => live[i] = session(&body, live[i].since),
                        // Refused: no longer known to be live (counted as a failure).
                        401 => {
                            live.remove(i);
                        }
                        _ => live[i].refresh = None,
                    }
                }
                "logout" => {
                    let gone = live.remove(random_below(live.len() as u64) as usize);
                    let url = format!("{edge}/auth/logout");
                    let (status, _) = post(http, url, Some(&gone.access), None).await;
                    self.record("logout", Some(Class::Live), sent, status, Some(gone.since));
                    // Unacknowledged: revoked or not, unknown; no longer probed.
                    if (200..300).contains(&status) {
                        recent.push_back((gone.access.clone(), Instant::now()));
                        revoked.push(gone.access);
                    }
                }
                _ => {
                    let url = format!("{edge}/auth/logout-all");
                    let (status, _) = post(http, url, Some(&live[0].access), None).await;
                    let since = Some(live[0].since);
                    self.record("logout-all", Some(Class::Live), sent, status, since);
                    for gone in live.drain(..) {
                        if (200..300).contains(&status) {
                            recent.push_back((gone.access.clone(), Instant::now()));
                            revoked.push(gone.access);
                        }
                    }
                }
            }
            while recent.len() > 8 {
                recent.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(10 + random_below(20))).await;
        }
        (live.into_iter().map(|s| s.access).collect(), revoked)
    }
}

/// `origin check-consistency`, retried for a few seconds: publishes of the last
/// requests (the outbox) may still be on their way. (exit code, report.)
async fn check_consistency_settled(stack: &Stack) -> (i32, String) {
    let started = Instant::now();
    loop {
        let (code, report) = blocking(|| stack.check_consistency());
        if code == 0 || started.elapsed() > Duration::from_secs(10) {
            return (
                code,
                format!(
                    "exit {code} after {:.1} s: {report}",
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
