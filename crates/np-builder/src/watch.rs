//! "Something changed under this ZooKeeper path": a persistent recursive
//! watch turned into a wake-up signal, re-added after a session change (and
//! signalled then, since events may have been missed).

use std::sync::Arc;
use std::time::Duration;

use np_zk::Zk;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

/// Signals every one of `all` on every change below `root` until
/// `cancel` (one ZooKeeper watch for all the workers).
pub async fn watch_tree(zk: Zk, root: &'static str, all: Vec<Arc<Notify>>, cancel: CancellationToken) {
    let notify = |all: &[Arc<Notify>]| all.iter().for_each(|n| n.notify_one());
    let mut status = zk.subscribe();
    'session: loop {
        if cancel.is_cancelled() || zk.status().closed {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = zk.wait_connected(Duration::from_secs(3600)) => if r.is_err() { continue },
        }
        let generation = zk.status().generation;
        if let Err(e) = zk.ensure_path(root).await {
            warn!(root, error = %e, "cannot create the watched path; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut watcher = match zk.client().watch(root, AddWatchMode::PersistentRecursive).await {
            Ok(w) => w,
            Err(e) => {
                warn!(root, error = %e, "cannot add the persistent watch; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Anything may have changed while there was no watch.
        notify(&all);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = status.changed() => {
                    if changed.is_err() { return; }
                    let s = *status.borrow_and_update();
                    if s.closed { return; }
                    if s.generation != generation { continue 'session; }
                }
                event = watcher.changed() => {
                    if event.event_type == EventType::Session {
                        match event.session_state {
                            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                                debug!(root, "reconnected; adding the watch again");
                                // The session moved to a new connection, which
                                // lacks our persistent watch (see np_zk::rewatch).
                                match np_zk::rewatch(&zk.client(), root, AddWatchMode::PersistentRecursive).await {
                                    Ok(w) => watcher = w,
                                    Err(e) => {
                                        warn!(root, error = %e, "cannot add the persistent watch again; retrying");
                                        tokio::time::sleep(Duration::from_millis(500)).await;
                                        continue 'session;
                                    }
                                }
                                notify(&all);
                            }
                            s if s.is_terminated() => {
                                // Polling the watcher after a terminal event
                                // panics: wait for the next session.
                                let _ = status.wait_for(|st| st.generation != generation || st.closed).await;
                                continue 'session;
                            }
                            _ => {}
                        }
                        continue;
                    }
                    notify(&all);
                }
            }
        }
    }
}
