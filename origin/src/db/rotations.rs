//! The common refresh's statement, run for the refreshes that arrive together.
//!
//! Each refresh used to run [`sessions::rotate_current`] alone: one round trip and one
//! commit (one WAL flush with `synchronous_commit` on) per refresh. Here a refresh
//! joins a queue, and at most [`RUNNERS`] tasks (one) run the queue, each taking
//! everything waiting (up to [`MAX_BATCH`]) into one statement on a lane connection
//! (`crate::db::lane`). Nothing waits for a batch to fill: a refresh arriving while a
//! runner is free runs at once, alone; under load, the refreshes that arrived while
//! the runners were busy go together. Postgres then does one round trip and one commit
//! for a batch, and the origin wakes once for it.
//!
//! A refresh whose batch failed, went unanswered within the lane's budget, or waited
//! in the queue longer than that budget is told [`NotRun`], and its caller runs it
//! alone through the pool, as it did when the lane had no connection free. That second
//! run is harmless even if the batch committed and only its answer was lost: the
//! successor is sealed under the presented token, and the grace window hands it out.
//! A runner is a task of its own, so a client hanging up cancels nothing in a batch.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::lane::{self, ATTEMPT_BUDGET, Lane};
use super::sessions::{self, Presentation, SessionRow};
use crate::metrics::METRICS;

/// Tasks running batches at once, each on its own lane connection. One: the queue
/// then fills for as long as a whole statement takes, so batches are largest, and a
/// statement's cost in Postgres is mostly per statement, not per row. Measured with
/// `BENCH_ONLY=refresh scripts/bench` on 2026-12-04 (refreshes ÷ pgbench at 16 and
/// 64 connections, means of two pairs): one runner 120 % and 144 %, two 73 % and
/// 114 %, four 53 % and 94 %, against 61 % and 65 % for one statement per refresh on
/// 16 lane connections an hour before (docs/PERFORMANCE-LOG.md, "Refreshes ÷ pgbench").
pub const RUNNERS: usize = 1;

/// The most refreshes in one statement.
pub const MAX_BATCH: usize = 64;

/// The refresh was not decided here; run it alone through the pool.
#[derive(Debug, PartialEq)]
pub struct NotRun;

/// What a runner answers: the rotated session, or `None` when the token was not its
/// session's current one (the caller decides that under locks).
type Answer = Option<SessionRow>;

struct Job {
    presented: Presentation,
    queued: Instant,
    reply: oneshot::Sender<Answer>,
}

#[derive(Clone)]
pub struct Rotations {
    shared: Arc<Shared>,
}

struct Shared {
    lane: Lane,
    queue: Mutex<Queue<Job>>,
    idle_ttl_secs: u64,
    access_ttl_secs: u64,
}

impl Rotations {
    /// Runs batches on `lane`, which should hold at least [`RUNNERS`] connections.
    pub fn new(lane: Lane, idle_ttl_secs: u64, access_ttl_secs: u64) -> Self {
        Rotations {
            shared: Arc::new(Shared {
                lane,
                queue: Mutex::new(Queue::new(RUNNERS, MAX_BATCH)),
                idle_ttl_secs,
                access_ttl_secs,
            }),
        }
    }

    /// Rotates `presented` if its token is its session's current one, together with
    /// whatever other refreshes are waiting.
    pub async fn rotate(&self, presented: Presentation) -> Result<Answer, NotRun> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            presented,
            queued: Instant::now(),
            reply,
        };
        if self.shared.queue().push(job) {
            tokio::spawn(run(self.shared.clone()));
        }
        // A dropped sender (the batch failed, or its runner is gone) is NotRun.
        answer.await.map_err(|_| NotRun)
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A runner: batches until the queue is empty.
async fn run(shared: Arc<Shared>) {
    let mut guard = Runner {
        shared: shared.clone(),
        finished: false,
    };
    loop {
        let Some(jobs) = shared.queue().next_batch() else {
            // The queue counted this runner out when it found itself empty.
            guard.finished = true;
            return;
        };
        // Jobs that waited longer than a lane connection may be waited for go through
        // the pool now, as they would have without the queue; dropping them tells them.
        let (jobs, stale): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| job.queued.elapsed() < ATTEMPT_BUDGET);
        drop(stale);
        if !jobs.is_empty() {
            batch(&shared, jobs).await;
        }
    }
}

/// Counts a runner out if it ends without the queue having done so (a panic), and
/// starts another if refreshes are still waiting, so none is stranded.
struct Runner {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for Runner {
    fn drop(&mut self) {
        if !self.finished && self.shared.queue().abandon() {
            tokio::spawn(run(self.shared.clone()));
        }
    }
}

/// One statement for `jobs`; each is answered, or dropped (NotRun) if it failed.
async fn batch(shared: &Shared, jobs: Vec<Job>) {
    let Some(mut taken) = shared.lane.take().await else {
        return;
    };
    METRICS.refresh_batch.observe(jobs.len() as f64);
    let (presented, replies): (Vec<Presentation>, Vec<_>) = jobs
        .into_iter()
        .map(|job| (job.presented, job.reply))
        .unzip();
    let statement = sessions::rotate_current(
        taken.conn(),
        &presented,
        shared.idle_ttl_secs,
        shared.access_ttl_secs,
    );
    let Some(rotated) = lane::attempt(statement).await else {
        return;
    };
    taken.done();
    for (reply, answer) in replies.into_iter().zip(answers(rotated, presented.len())) {
        // A caller that hung up is no longer listening; its rotation stands.
        let _ = reply.send(answer);
    }
}

/// The statement's rows put in the order of the `count` presentations.
fn answers(rotated: Vec<(usize, SessionRow)>, count: usize) -> Vec<Answer> {
    let mut answers: Vec<Answer> = vec![None; count];
    for (index, row) in rotated {
        if let Some(slot) = answers.get_mut(index) {
            *slot = Some(row);
        }
    }
    answers
}

/// The queue and the runners' count: plain, so its rules are tested natively.
struct Queue<T> {
    waiting: VecDeque<T>,
    running: usize,
    runners: usize,
    max_batch: usize,
}

impl<T> Queue<T> {
    fn new(runners: usize, max_batch: usize) -> Self {
        Queue {
            waiting: VecDeque::new(),
            running: 0,
            runners,
            max_batch,
        }
    }

    /// Adds `item`; true when the caller must start a runner (one is free).
    fn push(&mut self, item: T) -> bool {
        self.waiting.push_back(item);
        let start = self.running < self.runners;
        if start {
            self.running += 1;
        }
        start
    }

    /// The next batch for a runner, oldest first; `None` when nothing waits, and the
    /// runner is then counted out in the same step, so an item pushed after it is seen
    /// starts a new one.
    fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.waiting.is_empty() {
            self.running -= 1;
            return None;
        }
        let n = self.waiting.len().min(self.max_batch);
        Some(self.waiting.drain(..n).collect())
    }

    /// A runner ended early; true when it must be replaced (items are waiting).
    fn abandon(&mut self) -> bool {
        if self.waiting.is_empty() {
            self.running -= 1;
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_runs_at_once_while_a_runner_is_free_and_waits_for_one_otherwise() {
        let mut queue = Queue::new(2, 64);
        assert!(queue.push(1), "the first starts a runner");
        assert!(queue.push(2), "so does the second: two may run");
        assert!(!queue.push(3), "the third waits for one of them");
        assert_eq!(queue.next_batch(), Some(vec![1, 2, 3]));
        assert_eq!(queue.next_batch(), None, "the runner is counted out");
        assert!(queue.push(4), "which frees a place");
    }

    #[test]
    fn batches_take_everything_waiting_up_to_the_limit_oldest_first() {
        let mut queue = Queue::new(1, 3);
        assert!(queue.push(0));
        for i in 1..7 {
            assert!(!queue.push(i));
        }
        assert_eq!(queue.next_batch(), Some(vec![0, 1, 2]));
        assert_eq!(queue.next_batch(), Some(vec![3, 4, 5]));
        assert_eq!(queue.next_batch(), Some(vec![6]));
        assert_eq!(queue.next_batch(), None);
        assert_eq!(queue.running, 0);
    }

    #[test]
    fn a_runner_ending_early_is_replaced_only_while_refreshes_wait() {
        let mut queue = Queue::new(1, 8);
        assert!(queue.push(1));
        assert!(!queue.push(2));
        assert!(queue.abandon(), "items wait: start another in its place");
        assert_eq!(queue.running, 1, "which keeps its count");
        assert_eq!(queue.next_batch(), Some(vec![1, 2]));
        assert!(!queue.abandon(), "nothing waits");
        assert_eq!(queue.running, 0);
    }

    #[test]
    fn rows_answer_the_presentation_they_name_and_the_rest_are_none() {
        let row = |version| SessionRow {
            id: uuid::Uuid::nil(),
            user_id: uuid::Uuid::nil(),
            scope: String::new(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            last_used_at: chrono::DateTime::UNIX_EPOCH,
            expires_at: chrono::DateTime::UNIX_EPOCH,
            access_expires_at: chrono::DateTime::UNIX_EPOCH,
            revoked_at: None,
            version,
            now: chrono::DateTime::UNIX_EPOCH,
            outbox_id: None,
        };
        let answers = answers(vec![(2, row(7)), (0, row(5)), (9, row(1))], 4);
        let versions: Vec<_> = answers
            .iter()
            .map(|a| a.as_ref().map(|r| r.version))
            .collect();
        assert_eq!(versions, [Some(5), None, Some(7), None]);
    }
}
