//! One day of the seed scenario in accelerated time: 1,000 users making 100
//! requests each, through the edge, with 30-minute access tokens.
//!
//! Time runs `SCALE` times faster: the origin issues `1800 / SCALE`-second tokens and
//! each user's requests are replayed at `t / SCALE` real seconds. Every client does
//! what a real one does: logs in at its first request, refreshes when its access
//! token has expired (or is about to), and on a 401 refreshes once and retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::PASSWORD;

/// One real second is six simulated minutes: the day takes 240 s, a token lives 5 s.
/// Faster would make whole-second `exp` a large part of a token's life.
pub const SCALE: u64 = 360;
pub const USERS: usize = 1000;
const REQUESTS: usize = 100;
const DAY: f64 = 86_400.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Two visits a day, each 50 requests 30 s apart (about 25 minutes).
    TwoVisits,
    /// 100 requests at random times over a 16-hour waking day that starts between
    /// 05:00 and 08:00.
    Spread,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::TwoVisits => "two visits",
            Pattern::Spread => "spread",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Pattern::TwoVisits => {
                "each user comes twice a day at random times, and each visit makes 50 requests 30 s apart (25 minutes)."
            }
            Pattern::Spread => {
                "each user wakes between 05:00 and 08:00, and makes 100 requests at random times over the next 16 hours, about one every 10 minutes: the worst case for a 30-minute token."
            }
        }
    }

    /// The simulated times (seconds into the day) of one user's requests.
    fn schedule(self, rng: &mut Rng) -> Vec<f64> {
        let mut times: Vec<f64> = match self {
            Pattern::TwoVisits => (0..2)
                .flat_map(|_| {
                    let start = rng.next() * (DAY - 1500.0);
                    (0..REQUESTS / 2).map(move |i| start + 30.0 * i as f64)
                })
                .collect(),
            Pattern::Spread => {
                // Wake-up times spread over 3 hours: 1,000 logins in the same accelerated
                // minute would be a login storm the scenario does not describe.
                let wake = 5.0 * 3600.0 + rng.next() * 3.0 * 3600.0;
                (0..REQUESTS)
                    .map(|_| wake + rng.next() * 16.0 * 3600.0)
                    .collect()
            }
        };
        times.sort_by(f64::total_cmp);
        times
    }
}

/// xorshift64*: a seeded generator, so that every run replays the same day.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Default)]
pub struct DayResult {
    pub requests: u64,
    pub ok: u64,
    pub logins: u64,
    pub refreshes: u64,
    /// Requests answered 401 that succeeded after one refresh.
    pub retried: u64,
    /// Requests of a live session refused even after a refresh.
    pub wrongly_refused: u64,
    /// Anything else: 5xx, transport errors, failed logins or refreshes.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    logins: AtomicU64,
    refreshes: AtomicU64,
    retried: AtomicU64,
    wrongly_refused: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Users `sim-0` … `sim-{n-1}`, inserted directly with one Argon2id hash of the
/// shared password: registering 1,000 users over HTTP would take a minute of hashing
/// that is not part of the day.
pub async fn create_users(db: &PgPool, n: usize) {
    use argon2::{PasswordHasher, password_hash::SaltString};
    let salt = SaltString::encode_b64(b"bench-simulation").unwrap();
    let hash = crate::stack::argon2()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string();
    sqlx::query(
        "insert into app_user (id, username, password_hash) \
         select gen_random_uuid(), 'sim-' || i, $1 from generate_series(0, $2 - 1) i",
    )
    .bind(hash)
    .bind(n as i32)
    .execute(db)
    .await
    .unwrap();
}

pub async fn run_day(edge: &str, pattern: Pattern) -> DayResult {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + Duration::from_secs(1);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ pattern as u64);
    let tasks: Vec<_> = (0..USERS)
        .map(|user| {
            let client = Client {
                http: http.clone(),
                edge: edge.to_string(),
                username: format!("sim-{user}"),
                counters: counters.clone(),
                access: None,
            };
            tokio::spawn(client.day(start, pattern.schedule(&mut rng)))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    DayResult {
        requests: get(&c.requests),
        ok: get(&c.ok),
        logins: get(&c.logins),
        refreshes: get(&c.refreshes),
        retried: get(&c.retried),
        wrongly_refused: get(&c.wrongly_refused),
        errors: get(&c.errors),
    }
}

struct Tokens {
    access: String,
    refresh: String,
    /// The access token's `exp`, unix seconds.
    exp: u64,
}

struct Client {
    http: reqwest::Client,
    edge: String,
    username: String,
    counters: Arc<Counters>,
    access: Option<Tokens>,
}

impl Client {
    async fn day(mut self, start: Instant, schedule: Vec<f64>) {
        for t in schedule {
            let at = start + Duration::from_secs_f64(t / SCALE as f64);
            tokio::time::sleep_until(at.into()).await;
            self.request().await;
        }
    }

    async fn request(&mut self) {
        bump(&self.counters.requests);
        let now = unix_now_f64();
        let fresh = match &self.access {
            None => self.login().await,
            // Expired by its own `exp`: refresh first. (Refreshing some minutes ahead,
            // as many clients do, would cost more refreshes and hide nothing here.)
            Some(t) if now >= t.exp as f64 => self.refresh().await,
            Some(_) => true,
        };
        if !fresh {
            bump(&self.counters.errors);
            return;
        }
        match self.get().await {
            Some(200) => bump(&self.counters.ok),
            Some(401) => {
                // The token expired between the check and the edge (scheduling lag).
                if self.refresh().await && self.get().await == Some(200) {
                    bump(&self.counters.retried);
                    bump(&self.counters.ok);
                } else {
                    bump(&self.counters.wrongly_refused);
                }
            }
            _ => bump(&self.counters.errors),
        }
    }

    async fn get(&self) -> Option<u16> {
        let token = &self.access.as_ref()?.access;
        let reply = self
            .http
            .get(format!("{}/api/sim", self.edge))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        Some(reply.status().as_u16())
    }

    async fn login(&mut self) -> bool {
        bump(&self.counters.logins);
        let body = json!({"username": self.username, "password": PASSWORD});
        self.exchange("/auth/login", body).await
    }

    async fn refresh(&mut self) -> bool {
        bump(&self.counters.refreshes);
        let Some(tokens) = &self.access else {
            return false;
        };
        let body = json!({"refresh_token": tokens.refresh});
        self.exchange("/auth/refresh", body).await
    }

    async fn exchange(&mut self, path: &str, body: Value) -> bool {
        let reply = self
            .http
            .post(format!("{}{path}", self.edge))
            .json(&body)
            .send()
            .await;
        let Ok(reply) = reply else { return false };
        if reply.status() != 200 {
            return false;
        }
        let Ok(body) = reply.json::<Value>().await else {
            return false;
        };
        let access = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exp = e2e::claims_of(&access)["exp"].as_u64().unwrap_or(0);
        self.access = Some(Tokens {
            access,
            refresh: body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            exp,
        });
        true
    }
}

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
