//! Who holds the request locks: a cache of `/nodepool/requests-lock`.
//!
//! A request's kazoo lock lives outside the request tree
//! (`/nodepool/requests-lock/<id>/<contender>`, spec zk-protocol §1.1, §4.8),
//! so the request cache sees nothing when a launcher takes or lets go of a
//! request, or when a dead launcher's session expires and its lock vanishes.
//! [`LockDirCache`] follows that tree with one persistent recursive watch:
//! every contender's create and delete arrives as an event with its path, so
//! no znode is ever read after the initial walk. Its change stream says when
//! a request's lock became free or taken, which is how a launcher reacts to
//! a lock that another process held when it looked, and to a lost request
//! (`pending` with nobody holding its lock) at once, instead of polling.
//!
//! After a reconnect (events may be lost) or a new session the tree is
//! walked again and a [`CacheEventKind::Resynced`] event is sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use crate::cache::{CacheEvent, CacheEventKind};
use crate::client::Zk;
use crate::error::ZkError;
use crate::lock::contender_sequence;
use crate::paths;

struct Shared {
    /// Lock directory name -> its kazoo contenders (only non-empty sets).
    held: RwLock<HashMap<String, BTreeSet<String>>>,
    events: broadcast::Sender<CacheEvent>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
}

/// The contenders of every lock directory under a root.
#[derive(Clone)]
pub struct LockDirCache {
    root: &'static str,
    shared: Arc<Shared>,
}

/// The cache of the request locks.
pub type RequestLockCache = LockDirCache;

impl LockDirCache {
    /// Follows the request locks (`/nodepool/requests-lock`).
    pub fn requests(zk: &Zk) -> Self {
        Self::start(zk, paths::REQUEST_LOCKS)
    }

    /// Follows the lock directories directly under `root`.
    pub fn start(zk: &Zk, root: &'static str) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (ready, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            held: RwLock::new(HashMap::new()),
            events,
            ready,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(run(zk.clone(), root, shared.clone()));
        LockDirCache { root, shared }
    }

    /// Stops the background task.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
    }

    /// The root this cache follows.
    pub fn root(&self) -> &'static str {
        self.root
    }

    /// Waits until the initial walk is done.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        let ready = tokio::time::timeout(timeout, async { rx.wait_for(|r| *r).await.is_ok() }).await;
        matches!(ready, Ok(true))
    }

    /// Change notifications: [`CacheEventKind::LockChanged`] with the lock
    /// directory's name whenever its contenders change, `Resynced` after a
    /// walk. A lagging receiver should treat `RecvError::Lagged` like
    /// `Resynced`.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.shared.events.subscribe()
    }

    /// Whether anyone holds (or waits for) the lock `id`, as last seen.
    pub fn is_locked(&self, id: &str) -> bool {
        self.read().contains_key(id)
    }

    /// How many locks are held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.shared.held.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every lock directory with its contenders, in one flight.
async fn walk(zk: &Zk, root: &str) -> Result<HashMap<String, BTreeSet<String>>, ZkError> {
    let client = zk.client();
    let dirs = zk.children(root).await?.unwrap_or_default();
    let listings: Vec<_> = dirs.iter().map(|d| client.list_children(&format!("{root}/{d}"))).collect();
    let listings = futures::future::join_all(listings).await;
    let mut out = HashMap::new();
    for (dir, listed) in dirs.into_iter().zip(listings) {
        match listed {
            Ok(children) => {
                let contenders: BTreeSet<String> =
                    children.into_iter().filter(|c| contender_sequence(c).is_some()).collect();
                if !contenders.is_empty() {
                    out.insert(dir, contenders);
                }
            }
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("list", &format!("{root}/{dir}"), e)),
        }
    }
    Ok(out)
}

fn replace_all(shared: &Shared, walked: HashMap<String, BTreeSet<String>>) {
    let changed: Vec<String> = {
        let mut map = shared.held.write().unwrap_or_else(|p| p.into_inner());
        let mut changed: Vec<String> = map.keys().filter(|k| !walked.contains_key(*k)).cloned().collect();
        changed.extend(walked.iter().filter(|(k, v)| map.get(*k) != Some(*v)).map(|(k, _)| k.clone()));
        *map = walked;
        changed
    };
    debug!(changed = changed.len(), "request-lock cache walked");
    let _ = shared.events.send(CacheEvent { id: String::new(), kind: CacheEventKind::Resynced });
    shared.ready.send_replace(true);
}

fn apply(shared: &Shared, dir: &str, contender: &str, present: bool) {
    let changed = {
        let mut map = shared.held.write().unwrap_or_else(|p| p.into_inner());
        if present {
            map.entry(dir.to_owned()).or_default().insert(contender.to_owned())
        } else {
            match map.get_mut(dir) {
                Some(set) => {
                    let removed = set.remove(contender);
                    if set.is_empty() {
                        map.remove(dir);
                    }
                    removed
                }
                None => false,
            }
        }
    };
    if changed {
        let _ = shared.events.send(CacheEvent { id: dir.to_owned(), kind: CacheEventKind::LockChanged });
    }
}

async fn run(zk: Zk, root: &'static str, shared: Arc<Shared>) {
    let mut status = zk.subscribe();
    let prefix = format!("{root}/");
    'session: loop {
        if shared.cancel.is_cancelled() || zk.status().closed {
            return;
        }
        if zk.wait_connected(Duration::from_secs(3600)).await.is_err() {
            continue;
        }
        let generation = zk.status().generation;
        let client = zk.client();
        if let Err(e) = zk.ensure_path(root).await {
            warn!(root, error = %e, "lock cache cannot create its root; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut watcher = match client.watch(root, AddWatchMode::PersistentRecursive).await {
            Ok(w) => w,
            Err(e) => {
                warn!(root, error = %e, "cannot add persistent watch; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // A resumed session on a new connection lacks the persistent watch
        // (see crate::rewatch): add it again before walking.
        let mut rewatch = false;
        'walk: loop {
            if rewatch {
                match crate::rewatch(&client, root, AddWatchMode::PersistentRecursive).await {
                    Ok(w) => {
                        watcher = w;
                        rewatch = false;
                    }
                    Err(e) => {
                        warn!(root = root, error = %e, "cannot add the persistent watch again; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if zk.status().generation != generation {
                            continue 'session;
                        }
                        continue 'walk;
                    }
                }
            }
            match walk(&zk, root).await {
                Ok(walked) => replace_all(&shared, walked),
                Err(e) => {
                    warn!(root, error = %e, "lock cache walk failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if zk.status().generation != generation {
                        continue 'session;
                    }
                    continue 'walk;
                }
            }
            loop {
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
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
                                    debug!(root, "reconnected; re-walking lock cache");
                                    rewatch = true;
                                    continue 'walk;
                                }
                                s if s.is_terminated() => {
                                    let _ = status.wait_for(|st| st.generation != generation || st.closed).await;
                                    continue 'session;
                                }
                                _ => continue,
                            }
                        }
                        let Some(rel) = event.path.strip_prefix(&prefix) else { continue };
                        let mut parts = rel.split('/');
                        let (Some(dir), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                            continue;
                        };
                        if contender_sequence(name).is_none() {
                            continue;
                        }
                        match event.event_type {
                            EventType::NodeCreated => apply(&shared, dir, name, true),
                            EventType::NodeDeleted => apply(&shared, dir, name, false),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
