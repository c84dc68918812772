//! The edge validator (DESIGN.md §1, §3, §4): a Cloudflare Worker that verifies access
//! tokens with [`shared`], checks the session in the store (Upstash REST or Workers
//! KV) in one round trip, and forwards the request with a proven identity.
//!
//! Everything that decides lives here in plain functions, tested natively with
//! `cargo test`; the worker entry (`worker_entry`, wasm32 only) does the I/O.

pub mod analytics;
pub mod cache;
pub mod config;
pub mod cors;
pub mod forward;
pub mod pending;
pub mod plan;
pub mod reply;
pub mod request;
pub mod route;
pub mod store;
pub mod sync;
pub mod verify;

#[cfg(test)]
mod testing;

#[cfg(target_arch = "wasm32")]
mod worker_entry;

/// `WWW-Authenticate` for a refused access token (RFC 6750 §3, §3.1). One text for
/// every reason: the reason goes to logs, not to the client.
pub const INVALID_TOKEN_CHALLENGE: &str =
    r#"Bearer error="invalid_token", error_description="the access token is not valid""#;

/// `WWW-Authenticate` when no token was sent (RFC 6750 §3.1: no error code then).
pub const MISSING_TOKEN_CHALLENGE: &str = r#"Bearer realm="api""#;
