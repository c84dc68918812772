//! The client half of edge-auth for Rust services and CLIs (DESIGN §7): it holds the
//! access and refresh tokens, attaches the access token to every request, refreshes
//! it ahead of expiry with one refresh in flight however many requests wait, retries
//! a request once when the server says its token is no longer valid, and tells a
//! session that ended (log in again) from an outage (keep going while the access token
//! is valid, then back off).
//!
//! It is a [`reqwest_middleware`] middleware:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use edge_auth_client::{Auth, FileStore};
//!
//! let store = FileStore::new("/home/me/.config/app/session");
//! let auth = Auth::new("https://auth.example.com", store.clone());
//! match store.load()? {
//!     Some(refresh_token) => auth.resume(refresh_token),
//!     None => auth.login("alice", "correct horse battery staple").await?,
//! }
//! let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.clone())
//!     .build();
//! let me = api.get("https://api.example.com/api/me").send().await?;
//! # let _ = me;
//! # Ok(()) }
//! ```
//!
//! A failure of the client itself reaches the caller as
//! `reqwest_middleware::Error::Middleware`; [`Error::of`] finds ours in it.

mod policy;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Extensions;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use policy::{Backoff, Outcome, TokenResponse};
pub use policy::{Freshness, refresh_ahead};
pub use store::{BoxFuture, FileStore, MemoryStore, TokenStore};

/// Why the client could not give a request an access token.
#[derive(Debug)]
pub enum Error {
    /// The session is over (logged out, revoked, reused, expired): log in again. The
    /// store was cleared.
    SessionEnded,
    /// Login refused the credentials.
    InvalidCredentials,
    /// The auth server is down or unreachable and no valid access token is left; try
    /// again after `retry_after` (when the server said). Not a logout.
    Unavailable { retry_after: Option<Duration> },
    /// The store could not save a new refresh token. The client keeps it in memory
    /// and saves it before the next request; until then requests fail with this.
    Storage(std::io::Error),
    /// The auth server refused for another reason (a 403, a 404: misconfiguration),
    /// or login was throttled (429).
    Refused(u16),
    /// The request goes to an origin the access token is not for (see
    /// [`Auth::allow_origin`]); nothing was sent.
    ForeignOrigin(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::SessionEnded => f.write_str("the session has ended; log in again"),
            Error::InvalidCredentials => f.write_str("wrong username or password"),
            Error::Unavailable { retry_after } => match retry_after {
                Some(wait) => write!(f, "the auth server is unavailable; retry in {wait:?}"),
                None => f.write_str("the auth server is unavailable; retry later"),
            },
            Error::Storage(e) => write!(f, "could not save the refresh token: {e}"),
            Error::Refused(status) => write!(f, "the auth server refused the request ({status})"),
            Error::ForeignOrigin(origin) => {
                write!(
                    f,
                    "the access token is not sent to {origin} (Auth::allow_origin)"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Ours, if `error` came from this client rather than from the network.
    pub fn of(error: &reqwest_middleware::Error) -> Option<&Error> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// The tokens held, and what is known of them.
struct Held {
    access: String,
    refresh: String,
    /// When the access token's response arrived, and how long it lives from then.
    received: Instant,
    lifetime: Duration,
    /// The refresh token is not yet in the store.
    unsaved: bool,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    backoff: Backoff,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    /// Origins the middleware sends the access token to: the auth server's, and any
    /// allowed since. A bearer token works for whoever holds it, so it never goes to
    /// a host that merely shares the HTTP client.
    origins: Mutex<Vec<String>>,
    store: Box<dyn TokenStore>,
    state: Mutex<State>,
    /// Held while refreshing (and logging in or out): one refresh in flight.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    refreshes: AtomicU64,
}

type Flight = tokio::sync::OwnedMutexGuard<()>;

/// A session with the auth server: cheap to clone (shared), and the middleware.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// A client of the auth server at `base` (the edge's URL, e.g.
    /// `https://auth.example.com`), saving refresh tokens to `store`. Requests to it
    /// time out after 10 s.
    pub fn new(base: &str, store: impl TokenStore) -> Auth {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client with a timeout builds");
        Auth::with_http(base, store, http)
    }

    /// [`Auth::new`] with the `reqwest::Client` used for login and refresh.
    pub fn with_http(base: &str, store: impl TokenStore, http: reqwest::Client) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                http,
                base: base.trim_end_matches('/').to_owned(),
                origins: Mutex::new(origin_of(base).into_iter().collect()),
                store: Box::new(store),
                state: Mutex::default(),
                refreshing: Arc::default(),
                refreshes: AtomicU64::new(0),
            }),
        }
    }

    /// Logs in; the refresh token is saved before this returns.
    pub async fn login(&self, username: &str, password: &str) -> Result<(), Error> {
        // Not while a refresh of an older session could land after it.
        let _flight = self.flight().await;
        let body = serde_json::json!({ "username": username, "password": password });
        match self.post("/auth/login", &body).await {
            Outcome::Tokens(tokens) => self.take(tokens, Instant::now()).await,
            Outcome::Ended => Err(Error::InvalidCredentials),
            Outcome::Transient { retry_after } => Err(Error::Unavailable { retry_after }),
            Outcome::Refused(status) => Err(Error::Refused(status)),
        }
    }

    /// Resumes a session from a saved refresh token: the first request refreshes.
    pub fn resume(&self, refresh_token: String) {
        self.lock().held = Some(Held {
            access: String::new(),
            refresh: refresh_token,
            received: Instant::now(),
            lifetime: Duration::ZERO,
            unsaved: false,
        });
    }

    /// Ends the session at the server (`POST /auth/logout`) and forgets it here. A
    /// refused access token is refreshed once first; the session is forgotten only
    /// once the server ended it (or says it had).
    pub async fn logout(&self) -> Result<(), Error> {
        let mut access = self.access_token().await?;
        let mut retried = false;
        let response = loop {
            let response = self
                .inner
                .http
                .post(format!("{}/auth/logout", self.inner.base))
                .bearer_auth(&access)
                .send()
                .await
                .map_err(|_| Error::Unavailable { retry_after: None })?;
            if retried || !refused_token(&response) {
                break response;
            }
            retried = true;
            access = match self.after_rejection(&access).await {
                Err(Error::SessionEnded) => return Ok(()), // ended already, and forgotten
                other => other?,
            };
        };
        match response.status().as_u16() {
            204 => {
                let _flight = self.flight().await;
                self.ended().await;
                Ok(())
            }
            408 | 429 | 500..=599 => Err(Error::Unavailable {
                retry_after: retry_after(&response),
            }),
            other => Err(Error::Refused(other)),
        }
    }

    /// Lets the middleware send the access token to `origin` too (`https://api.example.com`):
    /// an API served apart from the auth server.
    pub fn allow_origin(&self, origin: &str) {
        if let Some(origin) = origin_of(origin) {
            self.inner
                .origins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(origin);
        }
    }

    fn sends_to(&self, url: &reqwest::Url) -> bool {
        let origin = url.origin().ascii_serialization();
        self.inner
            .origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&origin)
    }

    /// How many refreshes this client has made (for logs and tests).
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// An access token to send now: the one held while it is fresh; refreshed first
    /// when it is expired (callers wait for the one refresh in flight); refreshed by
    /// the first caller when it is about to expire, the others using it meanwhile.
    pub async fn access_token(&self) -> Result<String, Error> {
        let (freshness, token, unsaved) = {
            let state = self.lock();
            let held = state.held.as_ref().ok_or(Error::SessionEnded)?;
            let freshness = policy::freshness(Instant::now(), held.received, held.lifetime);
            (freshness, held.access.clone(), held.unsaved)
        };
        if unsaved {
            let _flight = self.flight().await;
            self.save_held().await?;
        }
        match freshness {
            Freshness::Fresh => Ok(token),
            Freshness::RefreshSoon => {
                // Whoever is first refreshes; a failure is not the caller's: the token
                // is still valid, and the backoff spaces the next try.
                if let Ok(flight) = self.inner.refreshing.clone().try_lock_owned() {
                    match self.refresh_unless_changed(flight, &token).await {
                        Ok(fresh) => return Ok(fresh),
                        Err(Error::SessionEnded) => return Err(Error::SessionEnded),
                        Err(_) => {}
                    }
                }
                Ok(self.current().unwrap_or(token))
            }
            Freshness::Expired => {
                let flight = self.flight().await;
                self.refresh_unless_changed(flight, &token).await
            }
        }
    }

    /// After the server refused `used`: a new token, refreshed unless another caller
    /// already replaced `used`.
    async fn after_rejection(&self, used: &str) -> Result<String, Error> {
        let flight = self.flight().await;
        self.refresh_unless_changed(flight, used).await
    }

    async fn flight(&self) -> Flight {
        self.inner.refreshing.clone().lock_owned().await
    }

    /// Refreshes, holding `flight`, unless the held token is no longer `seen` and is
    /// fresh (someone refreshed while this caller waited: use theirs).
    async fn refresh_unless_changed(&self, flight: Flight, seen: &str) -> Result<String, Error> {
        // Another caller's refresh whose token the store has not taken yet: saved
        // first, never used unsaved.
        self.save_held().await?;
        let refresh = {
            let state = self.lock();
            let held = state.held.as_ref().ok_or(Error::SessionEnded)?;
            let now = Instant::now();
            if held.access != seen
                && policy::freshness(now, held.received, held.lifetime) != Freshness::Expired
            {
                return Ok(held.access.clone());
            }
            if let Some(wait) = state.backoff.wait(now) {
                return Err(Error::Unavailable {
                    retry_after: Some(wait),
                });
            }
            held.refresh.clone()
        };
        self.inner.refreshes.fetch_add(1, Ordering::Relaxed);
        // In a task of its own, holding the flight: once sent, the old token is spent,
        // so the answer must be taken and saved even if this caller gives up waiting.
        let auth = self.clone();
        tokio::spawn(async move {
            let _flight = flight;
            auth.exchange(refresh).await
        })
        .await
        .unwrap_or(Err(Error::Unavailable { retry_after: None }))
    }

    /// Presents `refresh` and takes what the server answers.
    async fn exchange(&self, refresh: String) -> Result<String, Error> {
        let body = serde_json::json!({ "refresh_token": refresh });
        match self.post("/auth/refresh", &body).await {
            Outcome::Tokens(tokens) => {
                self.take(tokens, Instant::now()).await?;
                self.current().ok_or(Error::SessionEnded)
            }
            Outcome::Ended => {
                self.ended().await;
                Err(Error::SessionEnded)
            }
            Outcome::Transient { retry_after } => {
                self.lock().backoff.failed(Instant::now(), retry_after);
                Err(Error::Unavailable { retry_after })
            }
            Outcome::Refused(status) => {
                self.lock().backoff.failed(Instant::now(), None);
                Err(Error::Refused(status))
            }
        }
    }

    /// Holds new tokens, then saves the refresh token: until the store has it, it is
    /// not used (requests answer [`Error::Storage`] and the save is tried again).
    async fn take(&self, tokens: TokenResponse, received: Instant) -> Result<(), Error> {
        let refresh = tokens
            .refresh_token
            .ok_or(Error::Unavailable { retry_after: None })?;
        {
            let mut state = self.lock();
            state.backoff.succeeded();
            state.held = Some(Held {
                access: tokens.access_token,
                refresh,
                received,
                // Bounded so no arithmetic on it can overflow.
                lifetime: Duration::from_secs(tokens.expires_in.min(86_400)),
                unsaved: true,
            });
        }
        self.save_held().await
    }

    async fn save_held(&self) -> Result<(), Error> {
        let refresh = match &self.lock().held {
            Some(held) if held.unsaved => held.refresh.clone(),
            _ => return Ok(()),
        };
        self.inner
            .store
            .save(refresh.clone())
            .await
            .map_err(Error::Storage)?;
        if let Some(held) = self.lock().held.as_mut().filter(|h| h.refresh == refresh) {
            held.unsaved = false;
        }
        Ok(())
    }

    async fn ended(&self) {
        self.lock().held = None;
        // Best effort: a token left behind is a dead one.
        let _ = self.inner.store.clear().await;
    }

    fn current(&self) -> Option<String> {
        self.lock()
            .held
            .as_ref()
            .filter(|h| !h.unsaved)
            .map(|h| h.access.clone())
    }

    /// A JSON POST to the auth server, classified (no answer: an outage).
    async fn post(&self, path: &str, body: &serde_json::Value) -> Outcome {
        let sent = self
            .inner
            .http
            .post(format!("{}{path}", self.inner.base))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(response) => read_outcome(response).await,
            Err(_) => Outcome::Transient { retry_after: None },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the state is still whole.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn read_outcome(response: Response) -> Outcome {
    let status = response.status().as_u16();
    let wait = header(&response, RETRY_AFTER).map(str::to_owned);
    let body = response.bytes().await.unwrap_or_default();
    policy::classify(status, wait.as_deref(), &body)
}

fn header(response: &Response, name: reqwest::header::HeaderName) -> Option<&str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn retry_after(response: &Response) -> Option<Duration> {
    policy::parse_retry_after(header(response, RETRY_AFTER))
}

/// Whether `response` refused the access token sent (`401 invalid_token`).
fn refused_token(response: &Response) -> bool {
    policy::is_invalid_token(
        response.status().as_u16(),
        header(response, WWW_AUTHENTICATE),
    )
}

/// `scheme://host[:port]` of a URL, as `url` writes an origin.
fn origin_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

fn with_bearer(request: &mut Request, token: &str) -> Result<(), Error> {
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Unavailable { retry_after: None })?;
    request.headers_mut().insert(AUTHORIZATION, value);
    Ok(())
}

#[async_trait::async_trait]
impl Middleware for Auth {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.sends_to(request.url()) {
            let origin = request.url().origin().ascii_serialization();
            return Err(reqwest_middleware::Error::middleware(Error::ForeignOrigin(
                origin,
            )));
        }
        let token = self
            .access_token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        // A streaming body cannot be sent twice: such a request gets no retry.
        let retry = request.try_clone();
        with_bearer(&mut request, &token).map_err(reqwest_middleware::Error::middleware)?;
        let response = next.clone().run(request, extensions).await?;
        let Some(mut retry) = retry.filter(|_| refused_token(&response)) else {
            return Ok(response);
        };
        // Refused although it looked valid (a key rotated, the session revoked, our
        // clock off): refresh once and send it once more. A second refusal is final.
        let token = self
            .after_rejection(&token)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        with_bearer(&mut retry, &token).map_err(reqwest_middleware::Error::middleware)?;
        next.run(retry, extensions).await
    }
}
