//! The origin issuer: an axum service for login, refresh rotation, revocation and
//! the JWKS, on Postgres and Redis. Built in its own issue; this crate holds its
//! place in the workspace so the layout of DESIGN.md §1 is in place from the start.
