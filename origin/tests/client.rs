//! The Rust client (`client/`, crate `edge-auth-client`) against the real origin:
//! one refresh for many waiting requests, a retry after a refused token, a session
//! that ended told from an outage, and the successor saved before it is used.

mod common;

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Origin, User};
use edge_auth_client::{Auth, BoxFuture, Error, FileStore, MemoryStore, TokenStore};
use reqwest::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

fn api(auth: &Auth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build()
}

/// Rotations the origin has made (one per successful refresh of a current token).
async fn rotations(origin: &Origin) -> i64 {
    sqlx::query_scalar("select count(*) from refresh_token where rotated_at is not null")
        .fetch_one(&origin.pg)
        .await
        .unwrap()
}

async fn logged_in(origin: &Origin, store: impl TokenStore) -> (User, Auth) {
    let user = origin.new_user().await;
    let auth = Auth::new(&origin.base, store);
    auth.login(&user.username, &user.password).await.unwrap();
    (user, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_when_the_token_has_just_expired_make_exactly_one_refresh() {
    let origin = Origin::start_with(&[("ACCESS_TOKEN_TTL_SECS", "2")]).await;
    let (_, auth) = logged_in(&origin, MemoryStore).await;
    let api = api(&auth);
    assert_eq!(
        api.get(origin.url("/api/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let calls = (0..50).map(|_| {
        let (api, url) = (api.clone(), origin.url("/api/me"));
        tokio::spawn(async move { api.get(url).send().await.map(|r| r.status()) })
    });
    let statuses: Vec<_> = futures::future::join_all(calls).await;
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(Ok(StatusCode::OK))))
        .count();
    eprintln!(
        "CLIENT 50 concurrent calls on an expired token: {ok} × 200, {} refresh(es) by the client, {} rotation(s) at the origin",
        auth.refreshes(),
        rotations(&origin).await
    );
    assert_eq!(ok, 50, "{statuses:?}");
    assert_eq!(auth.refreshes(), 1);
    assert_eq!(rotations(&origin).await, 1);
}

/// A TCP relay on a fixed port to wherever `target` says: the origin's address changes
/// when the harness restarts it, the client's base URL must not.
async fn relay(target: std::sync::Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = target.lock().unwrap().clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once_and_the_request_sent_again() {
    let mut origin = Origin::start().await;
    let target = std::sync::Arc::new(Mutex::new(origin.authority()));
    let base = relay(target.clone()).await;
    let user = origin.new_user().await;
    let auth = Auth::new(&base, MemoryStore);
    auth.login(&user.username, &user.password).await.unwrap();
    let api = api(&auth);
    assert_eq!(
        api.get(format!("{base}/api/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The signing key changes (a new development key after a restart): the token the
    // client holds, fresh by its clock, is refused; its refresh token is still good.
    let token = auth.access_token().await.unwrap();
    std::fs::remove_file(origin.env("SIGNING_KEY_FILE").unwrap()).unwrap();
    origin.kill_and_restart().await;
    *target.lock().unwrap() = origin.authority();
    assert_eq!(origin.me(&token).await.status, StatusCode::UNAUTHORIZED);

    let response = api.get(format!("{base}/api/me")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(auth.refreshes(), 1);
    assert_ne!(auth.access_token().await.unwrap(), token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_elsewhere_ends_here_and_the_store_is_cleared() {
    let origin = Origin::start().await;
    let path = origin.dir.0.join("session");
    let store = FileStore::new(&path);
    let (user, auth) = logged_in(&origin, store.clone()).await;
    assert!(store.load().unwrap().is_some(), "saved at login");
    let api = api(&auth);
    assert_eq!(
        api.get(origin.url("/api/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // "Log out everywhere" from another device.
    let other = origin.login_ok(&user.username, &user.password).await;
    let out = origin
        .bearer(reqwest::Method::POST, "/auth/logout-all", other.access())
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);

    let error = api.get(origin.url("/api/me")).send().await.unwrap_err();
    assert!(
        matches!(Error::of(&error), Some(Error::SessionEnded)),
        "{error:?}"
    );
    assert_eq!(store.load().unwrap(), None, "the dead token is forgotten");
    let again = api.get(origin.url("/api/me")).send().await.unwrap_err();
    assert!(matches!(Error::of(&again), Some(Error::SessionEnded)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_is_an_outage_not_a_logout() {
    let origin = Origin::start_with(&[("ACCESS_TOKEN_TTL_SECS", "2")]).await;
    let user = origin.new_user().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let store = FileStore::new(origin.dir.0.join("session"));
    let auth = Auth::with_http(&origin.base, store.clone(), http);
    auth.login(&user.username, &user.password).await.unwrap();
    let saved = store.load().unwrap();

    // The origin stops answering; the token runs out meanwhile.
    let pid = origin.pid().unwrap() as i32;
    // SAFETY: kill(2) on the origin we started, with valid signal numbers.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let error = auth.access_token().await.unwrap_err();
    let stopped = Instant::now();
    let again = auth.access_token().await.unwrap_err();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(
        matches!(
            again,
            Error::Unavailable {
                retry_after: Some(_)
            }
        ),
        "backing off, not one refresh per call: {again:?}"
    );
    assert!(
        stopped.elapsed() < Duration::from_millis(400),
        "answered at once"
    );
    assert_eq!(store.load().unwrap(), saved, "still logged in");

    // Back: the next call after the backoff refreshes and goes through.
    let api = api(&auth);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.get(origin.url("/api/me")).send().await {
            Ok(response) if response.status() == 200 => break,
            other => {
                assert!(Instant::now() < deadline, "not back: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_ne!(store.load().unwrap(), saved, "the successor was saved");
}

/// A store whose saves fail while `failing` is set, recording what it saved.
#[derive(Default)]
struct FlakyStore {
    failing: AtomicBool,
    saved: Mutex<Vec<String>>,
}

impl TokenStore for &'static FlakyStore {
    fn save(&self, refresh_token: String) -> BoxFuture<'_, io::Result<()>> {
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(io::Error::other("disk full"))
        } else {
            self.saved.lock().unwrap().push(refresh_token);
            Ok(())
        };
        Box::pin(async move { result })
    }
    fn clear(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_successor_is_saved_before_it_is_used_and_nothing_is_lost_when_saving_fails() {
    // No grace window: a stale saved token would be a reuse that revokes the session.
    let origin =
        Origin::start_with(&[("ACCESS_TOKEN_TTL_SECS", "2"), ("REFRESH_GRACE_SECS", "0")]).await;
    let store: &'static FlakyStore = Box::leak(Box::default());
    let (_, auth) = logged_in(&origin, store).await;
    let api = api(&auth);
    assert_eq!(store.saved.lock().unwrap().len(), 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    store.failing.store(true, Ordering::SeqCst);
    let error = api.get(origin.url("/api/me")).send().await.unwrap_err();
    assert!(
        matches!(Error::of(&error), Some(Error::Storage(_))),
        "{error:?}"
    );
    assert_eq!(auth.refreshes(), 1);

    // The store works again: the successor (held in memory) is saved, then used, with
    // no second refresh.
    store.failing.store(false, Ordering::SeqCst);
    let response = api.get(origin.url("/api/me")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(auth.refreshes(), 1);
    let saved = store.saved.lock().unwrap().clone();
    assert_eq!(saved.len(), 2);

    // A new process resuming from the store continues the session: what was saved
    // is the live token (a spent one would have been a reuse).
    let resumed = Auth::new(&origin.base, MemoryStore);
    resumed.resume(saved[1].clone());
    let response = self::api(&resumed)
        .get(origin.url("/api/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let revoked: i64 =
        sqlx::query_scalar("select count(*) from session where revoked_at is not null")
            .fetch_one(&origin.pg)
            .await
            .unwrap();
    assert_eq!(revoked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_mid_refresh_loses_nothing() {
    // No grace window: presenting the spent token again would be a reuse.
    let origin =
        Origin::start_with(&[("ACCESS_TOKEN_TTL_SECS", "2"), ("REFRESH_GRACE_SECS", "0")]).await;
    let (_, auth) = logged_in(&origin, MemoryStore).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The refresh is sent while the origin is stopped; the caller stops waiting; the
    // origin then rotates and answers.
    let pid = origin.pid().unwrap() as i32;
    // SAFETY: kill(2) on the origin we started, with valid signal numbers.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let gave_up = tokio::time::timeout(Duration::from_millis(300), auth.access_token()).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(gave_up.is_err(), "the caller gave up: {gave_up:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while rotations(&origin).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The answer was taken although nobody waited for it: the next call uses the
    // successor, with no second refresh and no reuse.
    let response = api(&auth).get(origin.url("/api/me")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(auth.refreshes(), 1);
    assert_eq!(rotations(&origin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_goes_only_to_the_origins_it_is_for() {
    let origin = Origin::start().await;
    let (_, auth) = logged_in(&origin, MemoryStore).await;
    let api = api(&auth);
    // Another origin sharing the HTTP client (the same server under another name):
    // nothing is sent until it is allowed.
    let other = origin.url("/api/me").replace("127.0.0.1", "localhost");
    let error = api.get(&other).send().await.unwrap_err();
    assert!(
        matches!(Error::of(&error), Some(Error::ForeignOrigin(o)) if o.starts_with("http://localhost:")),
        "{error:?}"
    );
    auth.allow_origin(&other);
    assert_eq!(api.get(&other).send().await.unwrap().status(), 200);
}
