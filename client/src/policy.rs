//! The client's decisions, as plain functions of what it holds and what the server
//! answered: when to refresh, what a refresh answer means, when to try again. No I/O
//! and no clock of their own (`now` is passed in), so every rule is tested natively.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// The body of a successful login or refresh (DESIGN §4).
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    /// Absent only in browser (cookie) mode, which this client does not use.
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// How long before the access token expires the client refreshes it: a fifth of its
/// lifetime, at most a minute (a 15-minute token is refreshed at 14 min, a 10 s one
/// at 8 s). Measured from when the response arrived, with the server's `expires_in`,
/// so a client clock that is off does not matter.
pub fn refresh_ahead(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60))
}

/// Where an access token stands at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid, but refresh now (whoever is first; the others keep using it).
    RefreshSoon,
    /// Not usable: refresh before the request.
    Expired,
}

/// Where a token that lives `lifetime` from `received` stands at `now`.
pub fn freshness(now: Instant, received: Instant, lifetime: Duration) -> Freshness {
    let expires = received + lifetime;
    if now >= expires {
        Freshness::Expired
    } else if now >= expires - refresh_ahead(lifetime) {
        Freshness::RefreshSoon
    } else {
        Freshness::Fresh
    }
}

/// What a refresh (or login) answer means.
#[derive(Debug)]
pub enum Outcome {
    /// New tokens.
    Tokens(TokenResponse),
    /// The session is over (`invalid_grant`: revoked, logged out elsewhere, reused,
    /// expired): log out.
    Ended,
    /// Our outage, not the user's: a 5xx, 408, 429, no answer, or an answer that is
    /// not ours (a proxy's page). Keep the tokens; try again after the wait.
    Transient { retry_after: Option<Duration> },
    /// Any other refusal (a 403 or 404: a misconfigured client). Keep the tokens.
    Refused(u16),
}

/// Classifies a refresh answer: `status`, its `Retry-After` header and body.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let wait = || parse_retry_after(retry_after);
    match status {
        200 => match serde_json::from_slice::<TokenResponse>(body) {
            Ok(tokens) if tokens.refresh_token.is_some() => Outcome::Tokens(tokens),
            _ => Outcome::Transient { retry_after: None },
        },
        400 | 401 => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) if e.error == "invalid_grant" => Outcome::Ended,
            Ok(_) => Outcome::Refused(status),
            // Not our JSON: a proxy in the way.
            Err(_) => Outcome::Transient {
                retry_after: wait(),
            },
        },
        408 | 429 | 500..=599 => Outcome::Transient {
            retry_after: wait(),
        },
        other => Outcome::Refused(other),
    }
}

/// A `Retry-After` header's wait (delay-seconds, RFC 9110 §10.2.3), at most 5 min.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(300)))
}

/// Whether an API answer says the access token was refused (RFC 6750 §3.1): then the
/// client refreshes once and sends the request again.
pub fn is_invalid_token(status: u16, www_authenticate: Option<&str>) -> bool {
    status == 401 && www_authenticate.is_some_and(|v| v.contains("error=\"invalid_token\""))
}

/// Waits between failed refreshes: 0.5 s doubling to 10 s, or the server's
/// `Retry-After` up to 10 s, so an outage is not met with a refresh per request. At
/// most 10 s because a failure may be a lost answer: the server then rotated, and the
/// token held is good only within its grace window (30 s by default) to get the same
/// successor; a later retry would be a reuse.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default)]
pub struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Whether a refresh may be tried at `now`; else how long until it may.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|&until| until > now)
            .map(|until| until - now)
    }

    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        let doubling = Duration::from_millis(500) * 2u32.saturating_pow(self.failures.min(6));
        let wait = retry_after.unwrap_or(doubling).min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        self.until = Some(now + wait);
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn tokens_are_refreshed_a_fifth_of_their_life_ahead_at_most_a_minute() {
        assert_eq!(refresh_ahead(10 * S), 2 * S);
        assert_eq!(refresh_ahead(900 * S), 60 * S);
        let t0 = Instant::now();
        let life = 10 * S;
        assert_eq!(freshness(t0, t0, life), Freshness::Fresh);
        assert_eq!(freshness(t0 + 7_900 * S / 1000, t0, life), Freshness::Fresh);
        assert_eq!(freshness(t0 + 8 * S, t0, life), Freshness::RefreshSoon);
        assert_eq!(
            freshness(t0 + 9_999 * S / 1000, t0, life),
            Freshness::RefreshSoon
        );
        assert_eq!(freshness(t0 + 10 * S, t0, life), Freshness::Expired);
        assert_eq!(freshness(t0, t0, Duration::ZERO), Freshness::Expired);
    }

    #[test]
    fn invalid_grant_ends_the_session_and_outages_do_not() {
        let tokens = br#"{"access_token":"a","token_type":"Bearer","expires_in":900,"refresh_token":"r","scope":"x"}"#;
        assert!(matches!(classify(200, None, tokens), Outcome::Tokens(t) if t.access_token == "a"));
        let grant = br#"{"error":"invalid_grant","error_description":"x"}"#;
        assert!(matches!(classify(401, None, grant), Outcome::Ended));
        assert!(matches!(classify(400, None, grant), Outcome::Ended));
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(
                matches!(
                    classify(status, Some("7"), b"{}"),
                    Outcome::Transient { retry_after: Some(d) } if d == 7 * S
                ),
                "{status}"
            );
        }
        assert!(matches!(
            classify(503, Some("99999"), b""),
            Outcome::Transient { retry_after: Some(d) } if d == 300 * S
        ));
        // Not our answers: a proxy's HTML 401, a 200 that is no token response.
        assert!(matches!(
            classify(401, None, b"<html>"),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(200, None, b"<html>"),
            Outcome::Transient { .. }
        ));
        let cookie_mode = br#"{"access_token":"a","expires_in":900}"#;
        assert!(matches!(
            classify(200, None, cookie_mode),
            Outcome::Transient { .. }
        ));
        let other = br#"{"error":"invalid_request","error_description":"x"}"#;
        assert!(matches!(classify(400, None, other), Outcome::Refused(400)));
        assert!(matches!(classify(403, None, other), Outcome::Refused(403)));
        assert!(matches!(classify(404, None, b""), Outcome::Refused(404)));
    }

    #[test]
    fn only_an_invalid_token_challenge_triggers_the_retry() {
        assert!(is_invalid_token(
            401,
            Some(r#"Bearer error="invalid_token", error_description="x""#)
        ));
        assert!(!is_invalid_token(401, Some(r#"Bearer realm="api""#)));
        assert!(!is_invalid_token(401, None));
        assert!(!is_invalid_token(
            403,
            Some(r#"Bearer error="invalid_token""#)
        ));
        assert!(!is_invalid_token(
            401,
            Some(r#"Bearer error="insufficient_scope""#)
        ));
    }

    #[test]
    fn failed_refreshes_back_off_doubling_or_as_the_server_says() {
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.wait(t0), None);
        backoff.failed(t0, None);
        assert_eq!(backoff.wait(t0), Some(S / 2));
        backoff.failed(t0, None);
        assert_eq!(backoff.wait(t0), Some(S));
        for _ in 0..10 {
            backoff.failed(t0, None);
        }
        assert_eq!(
            backoff.wait(t0),
            Some(10 * S),
            "capped inside the grace window"
        );
        backoff.failed(t0, Some(5 * S));
        assert_eq!(backoff.wait(t0), Some(5 * S), "Retry-After wins");
        assert_eq!(backoff.wait(t0 + 5 * S), None);
        backoff.failed(t0, Some(120 * S));
        assert_eq!(backoff.wait(t0), Some(10 * S), "within the cap");
        backoff.succeeded();
        assert_eq!(backoff.wait(t0), None);
    }
}
