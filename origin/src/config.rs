//! Configuration, read once at start from the environment (or flags).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use secrecy::SecretString;

/// The origin's settings. Every one is an environment variable; only `DATABASE_URL`
/// and `REDIS_URL` are required.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "origin",
    about = "Issuer of access and refresh tokens (login, refresh, revocation, JWKS)"
)]
pub struct Config {
    /// Postgres connection URL. Migrations are applied at start.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,

    /// Redis connection URL (session records, login throttling). Several URLs
    /// separated by commas are the nodes of a Redis Cluster
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`). Every node must have
    /// `maxmemory-policy noeviction`, or the origin refuses to start.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: SecretString,

    /// Treat a single `REDIS_URL` as the seed of a Redis Cluster (a cluster behind
    /// one name, such as a managed cluster's configuration endpoint).
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,

    /// Prefix of every Redis key: namespaces deployments and tests.
    #[arg(long, env = "REDIS_PREFIX", default_value = "auth:")]
    pub redis_prefix: String,

    /// Address of the public listener (the API of DESIGN.md §4).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Address of the operations listener: `/metrics` and `/readyz`, which the public
    /// listener answers with 404. Keep it off the public network (loopback by default;
    /// the container sets `0.0.0.0:9090` for the orchestrator's network).
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "127.0.0.1:9090")]
    pub ops_listen_addr: SocketAddr,

    /// `iss` of issued tokens.
    #[arg(long, env = "ISSUER", default_value = "http://127.0.0.1:8080")]
    pub issuer: String,

    /// `aud` of issued tokens.
    #[arg(long, env = "AUDIENCE", default_value = "api")]
    pub audience: String,

    /// Access-token lifetime, seconds (1–3600). Default 15 min. Lifetimes under a
    /// minute only make sense for accelerated-time simulations (`scripts/bench`): every
    /// client then refreshes that often.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub access_token_ttl_secs: u64,

    /// Absolute session lifetime, seconds. Default 30 days.
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub session_ttl_secs: u64,

    /// Idle timeout: a session unused (no refresh) this long ends, seconds. Default 7 days.
    #[arg(long, env = "SESSION_IDLE_TTL_SECS", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub session_idle_ttl_secs: u64,

    /// How long a client or the edge may cache the JWKS (`Cache-Control: max-age`),
    /// seconds. A key removed from the set keeps verifying at the edge for at most this
    /// long (plus the edge's `JWKS_STALE_SECS` while the origin is unreachable).
    /// Default 300.
    #[arg(long, env = "JWKS_MAX_AGE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwks_max_age_secs: u64,

    /// How long after a rotation the previous refresh token may be retried and get the
    /// same new token back (lost responses, two tabs), seconds. 0 disables. Default 30.
    #[arg(long, env = "REFRESH_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub refresh_grace_secs: u64,

    /// How long a rotated refresh token is kept, seconds. Within it, presenting the
    /// token again revokes the session (reuse detection); after it, the token is
    /// deleted and answers 401 like any unknown one. Each refresh adds a row, so this
    /// bounds a session's rows: 7 days of 15-minute refreshes is 672 (`scripts/bench`
    /// prints the bytes). Default 7 days, the idle timeout's default: an owner whose
    /// token a thief rotated is detected when they come back within a week.
    #[arg(long, env = "REUSE_DETECTION_SECS", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u64).range(3600..))]
    pub reuse_detection_secs: u64,

    /// How long security events are kept, days.
    #[arg(long, env = "SECURITY_EVENT_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    pub security_event_retention_days: u64,

    /// Extra seconds a session record outlives the access token in Redis. Default 60.
    #[arg(long, env = "SESSION_RECORD_BUFFER_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub session_record_buffer_secs: u64,

    /// Clock-skew leeway when verifying access tokens, seconds (0–60). Default 30.
    #[arg(long, env = "TOKEN_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub token_leeway_secs: u64,

    /// Scope given to new sessions.
    #[arg(long, env = "DEFAULT_SCOPE", default_value = "profile")]
    pub default_scope: String,

    /// Directory of production signing keys: one file per key named `<kid>.key`, each
    /// holding a 32-byte Ed25519 seed as base64url. Every key is published in the JWKS;
    /// `ACTIVE_KID` signs. Unset: a development key is used (`SIGNING_KEY_FILE`).
    #[arg(long, env = "SIGNING_KEYS_DIR")]
    pub signing_keys_dir: Option<PathBuf>,

    /// Key id that signs, with `SIGNING_KEYS_DIR`.
    #[arg(long, env = "ACTIVE_KID")]
    pub active_kid: Option<String>,

    /// Development signing key, generated on first start and kept here.
    #[arg(
        long,
        env = "SIGNING_KEY_FILE",
        default_value = ".dev-keys/signing.key"
    )]
    pub signing_key_file: PathBuf,

    /// Secret shared with the edge: keys the identity proof (HMAC) and authenticates the
    /// edge on `/internal/*`. At least 32 bytes. Unset: edge identity is not accepted.
    #[arg(long, env = "EDGE_SECRET", hide_env_values = true)]
    pub edge_secret: Option<SecretString>,

    /// `host:port` of this origin as the edge's `ORIGIN_URL` names it
    /// (`auth.internal:443`): proofs on `/auth/*` and `/internal/validate` must cover
    /// it, so a proof made for another service sharing `EDGE_SECRET` is refused here.
    /// Default: `LISTEN_ADDR`, unless that listens on every address (as in the
    /// container), where it must be set when `EDGE_SECRET` is.
    #[arg(long, env = "ORIGIN_AUTHORITY", value_parser = parse_authority)]
    pub origin_authority: Option<String>,

    /// `host:port` of the edge's `UPSTREAM_URL`, for the identity proofs this origin
    /// accepts on its example API (`/api/*`). Default: `ORIGIN_AUTHORITY` (the edge's
    /// upstream defaults to its origin).
    #[arg(long, env = "UPSTREAM_AUTHORITY", value_parser = parse_authority)]
    pub upstream_authority: Option<String>,

    /// The edge's KV sync endpoint (`https://<worker>/__edge/kv`), for deployments whose
    /// edge reads sessions from Workers KV: every record change is pushed there too,
    /// signed with `EDGE_SECRET`. Unset: Redis only.
    #[arg(long, env = "EDGE_KV_SYNC_URL")]
    pub edge_kv_sync_url: Option<String>,

    /// Client id for `/auth/revoke` and `/auth/introspect` (HTTP Basic). Unset: those
    /// endpoints refuse every client.
    #[arg(long, env = "CLIENT_ID")]
    pub client_id: Option<String>,

    /// Client secret for `CLIENT_ID`.
    #[arg(long, env = "CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<SecretString>,

    /// Argon2id memory, KiB (OWASP minimum 19456 = 19 MiB).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19_456, value_parser = clap::value_parser!(u32).range(19_456..))]
    pub argon2_memory_kib: u32,

    /// Argon2id passes (at least 2).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..))]
    pub argon2_iterations: u32,

    /// Password hashes computed at once; bounds CPU and memory (each takes ARGON2_MEMORY_KIB).
    /// Default: the number of CPUs.
    #[arg(long, env = "HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// How long a login or registration waits for a hashing slot before 503 with
    /// `Retry-After`, seconds.
    #[arg(long, env = "HASH_QUEUE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub hash_queue_timeout_secs: u64,

    /// For deployments WITHOUT the edge only: the header holding the client's address,
    /// set by a proxy in front of the origin (e.g. `x-forwarded-for`, first entry).
    /// Whoever can reach the origin can write this header, so set it only when every
    /// request passes through that proxy, which must overwrite it. Behind the edge leave
    /// it unset: the edge signs the address it saw (`x-auth-client-ip`), and a request
    /// without a valid proof counts as coming from its TCP peer.
    #[arg(long, env = "CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,

    /// Failed logins per account (and per remembered device) before each further one
    /// locks it for 1 s, 2 s, 4 s … up to 15 min (NIST SP 800-63B §5.2.2).
    #[arg(long, env = "LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub login_failures_per_account: u64,

    /// Login attempts per client address (IPv6: per /64) in an hour before delays
    /// start. Looser than per account: many people share an address (NAT, offices).
    #[arg(long, env = "LOGIN_ATTEMPTS_PER_ADDRESS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub login_attempts_per_address: u64,

    /// Registrations per client address (IPv6: per /64) in an hour before delays
    /// start: each costs an Argon2 hash.
    #[arg(long, env = "REGISTRATIONS_PER_ADDRESS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub registrations_per_address: u64,

    /// Cookies without the `__Secure-` name prefix, for a browser talking to
    /// `http://127.0.0.1` in development (`scripts/dev` sets it). Never in production:
    /// the prefix makes browsers refuse the cookie from a page that is not HTTPS.
    #[arg(long, env = "DEV_COOKIE_NAMES", default_value_t = false)]
    pub dev_cookie_names: bool,

    /// Browser origins allowed to use cookie mode besides this server's own (DESIGN §7):
    /// exact `https://host[:port]` (`http://` only for loopback), comma-separated, no
    /// wildcard, never `null`. Applied to requests that reach the origin directly; the
    /// edge applies its own `ALLOWED_ORIGINS` (set both to the same list).
    #[arg(long, env = "ALLOWED_ORIGINS", default_value = "", value_parser = parse_allowed_origins)]
    pub allowed_origins: shared::origins::AllowedOrigins,

    /// Requests per second the edge's degraded-mode check (`/internal/validate`) may make.
    #[arg(long, env = "FALLBACK_RATE_PER_SEC", default_value_t = 200)]
    pub fallback_rate_per_sec: u32,

    /// `json` or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

fn parse_allowed_origins(value: &str) -> Result<shared::origins::AllowedOrigins, String> {
    shared::origins::AllowedOrigins::parse(value)
}

/// A `host:port` setting, written as proofs cover it (`shared::proof::authority`):
/// host in lower case, the port required.
fn parse_authority(value: &str) -> Result<String, String> {
    let has_port = value
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'));
    shared::proof::authority(&format!("http://{value}"))
        .filter(|_| has_port && !value.contains(['/', '?', '#']))
        .ok_or_else(|| format!("{value:?} is not host:port (e.g. auth.internal:443)"))
}
