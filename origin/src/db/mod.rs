//! The SQL, by table: handlers call these and never hold a query themselves.
//!
//! One clock: every time stored or compared here is Postgres's `now()`, taken in the
//! statement that uses it. The origin's own clock only signs tokens (their `iat` and
//! `exp` are checked by other machines' clocks anyway, within the leeway). Two clocks
//! for one column, one writing it and another comparing against it, made a session
//! look idle or alive by however far they drifted apart.

pub mod lane;
pub mod outbox;
pub mod rotations;
pub mod sessions;
pub mod users;
