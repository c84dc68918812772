//! Connections for the common refresh's statement, handed out without pings.
//!
//! sqlx 0.8's pool tests a connection with a `Sync` round trip before handing it out
//! (`test_before_acquire`) and again when it comes back (`return_to_pool`, which no
//! option turns off). For a refresh, one statement, that is three round trips where
//! one would do, each waking both the origin and Postgres.
//! Measured with `BENCH_ONLY=refresh scripts/bench` (docs/PERFORMANCE-LOG.md,
//! "Refreshes ÷ pgbench"): the origin's CPU per refresh 131–142 µs with 8 lane
//! connections that callers did not wait for (the rest went through the pool),
//! 109–117 µs with 16 that they wait for. Its callers are now the runners of
//! `crate::db::rotations`, one connection each.
//!
//! The lane holds connections taken out of the pool (`detach`), at most `size`, and
//! hands them out as they are, with their own time limits ([`LIMITS`]). One goes back
//! only after its statement succeeded; one whose statement failed, ran out of its
//! budget, or whose caller was dropped mid-statement is closed, so a connection in an
//! unknown state is never reused. When every lane connection is busy a caller waits
//! for one, up to [`ATTEMPT_BUDGET`] (with one runner and one connection, nobody
//! waits).
//!
//! Without the ping, a connection Postgres has closed (a restart, a failover, a cut
//! link) is found by the statement itself, and a link gone silent by its budget
//! ([`attempt`]). Each refresh of the batch then runs the statement again alone
//! through the pool, whose ping replaces dead connections. So the lane is only for a
//! statement whose second run is harmless even when the first committed and only its
//! answer was lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a caller waits for a lane connection, and how long its statement may
/// take on one, before it goes through the pool instead: the pool's own budget for
/// handing out a connection.
pub const ATTEMPT_BUDGET: Duration = Duration::from_secs(3);

/// Postgres gives up a lane statement itself before its caller stops waiting for it
/// ([`ATTEMPT_BUDGET`]): a statement the caller has given up on and runs again
/// elsewhere must not commit later (a backend waiting for a row lock does not notice
/// its client has gone). And it waits for a row lock at most half a second: a batch of
/// refreshes (`crate::db::rotations`) waits for every row it touches, so one row held
/// elsewhere would otherwise hold them all. The given-up refreshes run again alone,
/// through the pool, and only the one whose row is held waits for it. Within a
/// second, Postgres's `deadlock_timeout`, so of a batch and a transaction waiting for
/// each other's rows the batch gives way.
const LIMITS: &str = "select set_config('statement_timeout', '2500ms', false), \
                             set_config('lock_timeout', '500ms', false)";

#[derive(Clone)]
pub struct Lane {
    pool: PgPool,
    idle: Arc<Mutex<Vec<PgConnection>>>,
    permits: Arc<Semaphore>,
}

/// A lane connection in use. [`Taken::done`] puts it back; dropping it closes it.
pub struct Taken {
    conn: Option<PgConnection>,
    idle: Arc<Mutex<Vec<PgConnection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Lane {
    /// A lane of at most `size` connections, each taken from `pool` when first needed
    /// (the pool opens and checks it); they do not count against the pool's size.
    pub fn new(pool: PgPool, size: usize) -> Self {
        Lane {
            pool,
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// A connection, or `None` when none of the `size` came free within
    /// [`ATTEMPT_BUDGET`] or the pool had none to give.
    pub async fn take(&self) -> Option<Taken> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(ATTEMPT_BUDGET, self.permits.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let mut conn = self.pool.acquire().await.ok()?.detach();
                sqlx::query(LIMITS).execute(&mut conn).await.ok()?;
                conn
            }
        };
        Some(Taken {
            conn: Some(conn),
            idle: self.idle.clone(),
            _permit: permit,
        })
    }
}

impl Taken {
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("present until done or dropped")
    }

    /// Puts the connection back for the next caller: only after a statement on it
    /// succeeded, so its protocol state is known to be idle.
    pub fn done(mut self) {
        if let Some(conn) = self.conn.take() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

/// The outcome of a statement on a lane connection: its value, or `None` when it failed
/// or had no answer within [`ATTEMPT_BUDGET`], and the caller runs it through the pool
/// (dropping the [`Taken`], which closes the connection).
pub async fn attempt<T>(statement: impl Future<Output = sqlx::Result<T>>) -> Option<T> {
    match tokio::time::timeout(ATTEMPT_BUDGET, statement).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::debug!(%error, "statement failed on a lane connection; running it through the pool");
            None
        }
        Err(_) => {
            tracing::warn!(
                budget_ms = ATTEMPT_BUDGET.as_millis() as u64,
                "no answer on a lane connection within its budget; running the statement through the pool"
            );
            None
        }
    }
}
