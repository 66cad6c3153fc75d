//! The statsd gauge reporter (only when `STATSD_HOST` is set).
//!
//! As upstream's `StatsWorker`: one launcher per ZooKeeper, the *stats
//! leader*, sends the node and request gauges. The leader is elected with
//! kazoo's `Election` recipe, which is its exclusive lock at
//! `/nodepool/elections/stats` with the identifier `<hostname>-<pid>`; our
//! lock is kazoo's lock recipe, so Python launchers and ours elect one
//! leader together. Whoever holds the lock reports; when its session goes,
//! the next contender takes over.
//!
//! Reports are event-driven: a change in the node cache triggers one, and
//! reports are at least one second apart (upstream: it waits for the node
//! cache's event, reports, sleeps a second). Upstream refreshes the
//! addressable-request gauges only on node events too; so do we. Every
//! launcher, leader or not, sends the limit gauges (`max_servers`, tenant
//! limits) with each report, where upstream's pool workers send them on
//! every pass.

use std::time::Duration;

use np_zk::{LockGuard, LockOptions, Zk};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{measure, CacheView};
use crate::pool::SharedState;

/// The election's lock directory (kazoo `Election` on it).
pub const STATS_ELECTION: &str = "/nodepool/elections/stats";

/// Reports are at least this far apart.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the reporter until `cancel`. Returns at once without statsd.
pub async fn run(shared: SharedState, cancel: CancellationToken) {
    if shared.metrics.statsd().is_none() {
        return;
    }
    let identifier = format!("{}-{}", shared.hostname, std::process::id());
    let mut events = shared.nodes.subscribe();
    let mut leader: Option<LockGuard> = None;
    let mut election = Box::pin(elect(shared.zk.clone(), identifier.clone()));
    // The first report goes out at once (the limits, and the gauges once leader).
    let mut due: Option<Instant> = Some(Instant::now());
    let mut last: Option<Instant> = None;
    loop {
        let sleep_until = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = cancel.cancelled() => break,
            won = &mut election, if leader.is_none() => {
                match won {
                    Some(guard) => {
                        info!("won the stats reporter election");
                        leader = Some(guard);
                        due = Some(Instant::now());
                    }
                    None => {
                        // ZooKeeper trouble: try again shortly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        election = Box::pin(elect(shared.zk.clone(), identifier.clone()));
                    }
                }
            }
            _ = lost(&leader) => {
                warn!("stats leadership lost with the ZooKeeper session; standing again");
                if let Some(guard) = leader.take() {
                    guard.disarm();
                }
                election = Box::pin(elect(shared.zk.clone(), identifier.clone()));
            }
            event = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                    break;
                }
                // Lagged: something changed all the same.
                if due.is_none() {
                    let now = Instant::now();
                    due = Some(last.map_or(now, |l| (l + REPORT_INTERVAL).max(now)));
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if due.is_some() => {
                due = None;
                last = Some(Instant::now());
                report(&shared, leader.is_some());
            }
        }
    }
    if let Some(guard) = leader.take() {
        let _ = guard.release().await;
    }
}

/// Sends one report: limits always, the cache gauges as leader.
fn report(shared: &SharedState, leader: bool) {
    let snapshot = leader.then(|| {
        measure(CacheView {
            nodes: &shared.nodes,
            requests: &shared.requests,
            pools: &shared.pools,
            zk_connected: true,
        })
    });
    shared.metrics.report_statsd(snapshot.as_ref());
}

/// Stands in the election until won (`None` after a ZooKeeper error).
async fn elect(zk: Zk, identifier: String) -> Option<LockGuard> {
    match zk.lock(STATS_ELECTION, &LockOptions::blocking(None).identifier(identifier)).await {
        Ok(guard) => guard,
        Err(e) => {
            warn!(error = %e, "stats election failed");
            None
        }
    }
}

/// Resolves when the held leadership is lost; never without one.
async fn lost(leader: &Option<LockGuard>) {
    match leader {
        Some(guard) => guard.lost().await,
        None => std::future::pending().await,
    }
}
