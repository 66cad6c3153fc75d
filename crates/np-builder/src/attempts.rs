//! The bookkeeping the build and upload workers share: attempts run as
//! tasks, at most one per key (an image; an image and provider) and at most
//! `workers` at once; a key whose attempt failed waits `retry_delay` before
//! the next.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use std::sync::Arc;

use np_zk::ZkError;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::Setup;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Someone else holds the work's lock, or it was no longer needed under
    /// the lock.
    Skipped,
    Ready,
    Failed,
}

/// An attempt's result, a ZooKeeper error counting as a failure.
pub(crate) fn outcome(result: Result<Outcome, ZkError>, what: &str) -> Outcome {
    result.unwrap_or_else(|e| {
        warn!(error = %e, "{what} attempt failed");
        Outcome::Failed
    })
}

/// The running attempts and the retry deadlines.
pub(crate) struct Attempts<K> {
    running: JoinSet<(K, Outcome)>,
    busy: HashSet<K>,
    retry_at: HashMap<K, Instant>,
    workers: usize,
    retry_delay: Duration,
}

impl<K: Clone + Eq + Hash + Send + 'static> Attempts<K> {
    pub(crate) fn new(workers: usize, retry_delay: Duration) -> Self {
        Attempts {
            running: JoinSet::new(),
            busy: HashSet::new(),
            retry_at: HashMap::new(),
            workers: workers.max(1),
            retry_delay,
        }
    }

    /// Whether `key` can be looked at: no attempt of it is running, and a
    /// failed one's delay is over (else `wake` is moved up to that time).
    pub(crate) fn idle(&self, key: &K, wake: &mut Instant) -> bool {
        if self.busy.contains(key) {
            return false;
        }
        match self.retry_at.get(key) {
            Some(at) if *at > Instant::now() => {
                *wake = (*wake).min(*at);
                false
            }
            _ => true,
        }
    }

    /// Whether another attempt may start.
    pub(crate) fn has_room(&self) -> bool {
        self.busy.len() < self.workers
    }

    /// Starts an attempt for `key`.
    pub(crate) fn start(&mut self, key: K, attempt: impl Future<Output = Outcome> + Send + 'static) {
        self.busy.insert(key.clone());
        self.running.spawn(async move { (key, attempt.await) });
    }

    /// Records a finished attempt: its key is free, and after a failure it
    /// waits `retry_delay`.
    fn finished(&mut self, done: Result<(K, Outcome), JoinError>) {
        match done {
            Ok((key, outcome)) => {
                self.busy.remove(&key);
                if outcome == Outcome::Failed {
                    self.retry_at.insert(key, Instant::now() + self.retry_delay);
                } else {
                    self.retry_at.remove(&key);
                }
            }
            Err(e) => {
                // A panicked task: its key is unknown, forget them all.
                error!(error = %e, "an attempt's task failed");
                self.busy.clear();
            }
        }
    }

    /// Waits for the worker's next reason to look again: a ZooKeeper change
    /// under `/nodepool/images` (let settle for a moment: one change brings
    /// others), a new setup, `wake`, or a finished attempt (recorded).
    /// `false`: stop.
    pub(crate) async fn next_turn(
        &mut self,
        cancel: &CancellationToken,
        changes: &Notify,
        setup: &mut watch::Receiver<Arc<Setup>>,
        wake: Instant,
    ) -> bool {
        tokio::select! {
            () = cancel.cancelled() => false,
            () = changes.notified() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                true
            }
            changed = setup.changed() => changed.is_ok(),
            () = tokio::time::sleep_until(wake) => true,
            Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                self.finished(done);
                true
            }
        }
    }

    /// Waits for the running attempts (after they saw the cancellation),
    /// or aborts them.
    pub(crate) async fn shutdown(mut self, abort: bool) {
        if abort {
            self.running.abort_all();
        }
        while self.running.join_next().await.is_some() {}
    }
}
