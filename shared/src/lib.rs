//! Access tokens for an edge-validated API: Ed25519 JWTs, their keys, JWK sets,
//! validation with an injected clock, and the session records the edge checks.
//!
//! `no_std` + `alloc`, no I/O and no clock of its own: the origin (issuer) and the edge
//! (verifier, compiled to Wasm) both build on it, so both read tokens the same way.
//! The `std` feature (default) only adds [`unix_now`].
//!
//! Misuse is made hard by types: claims are only readable from a [`VerifiedClaims`],
//! which only [`Validator::verify`] creates; the algorithm is fixed by the key type
//! ([`VerifyingKey`] is Ed25519), never read from the token.
//!
//! See [`Validator`] for an example.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

extern crate alloc;

mod b64;
mod claims;
mod error;
mod json;
mod jwk;
mod key;
pub mod origins;
pub mod proof;
pub mod session;
mod token;

pub use claims::{Claims, MAX_TIME, VerifiedClaims, is_identifier, is_scope};
pub use error::{Claim, Error};
pub use key::{KeyId, KeySet, SigningKey, VerifyingKey};
pub use token::{ALGORITHM, Limits, MAX_LEEWAY, TOKEN_TYPE, Validator};

/// The current Unix time in seconds, for std callers. 0 if the clock is before 1970.
#[cfg(feature = "std")]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
