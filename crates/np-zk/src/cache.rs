//! Tree caches over one persistent recursive watch (spec zk-protocol §7.1).
//!
//! A [`TreeCache`] mirrors the records directly under a root
//! (`/nodepool/nodes/<id>`, `/nodepool/requests/<id>`) and, for nodes, the
//! kazoo lock contenders under `<id>/lock/`. It is fed by a single
//! `addWatch(root, PERSISTENT_RECURSIVE)`: every create, change or delete below
//! the root arrives as one event; the cache fetches the data for record events
//! with requests issued in event order (ZooKeeper answers a session's requests
//! in order), so updates are applied in order without a lock step.
//!
//! Consumers get a snapshot API ([`TreeCache::get`], [`TreeCache::values`]) and a
//! change stream ([`TreeCache::subscribe`]), which is how the launcher's workers
//! wake up on a new request or a freed node instead of polling.
//!
//! Rules, as in Python Nodepool's cache:
//! * an update replaces a cached entry only if its `mzxid` is newer;
//! * a record that fails to parse is logged and left out (the cache never
//!   writes anything back);
//! * after a reconnect (events may have been lost, ZOOKEEPER-4698) or a new
//!   session, the tree is walked again and the cache converges; a
//!   [`CacheEventKind::Resynced`] event tells subscribers to re-scan.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use np_core::{ModelError, Node, NodeRequest};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use crate::client::Zk;
use crate::error::ZkError;
use crate::lock::contender_sequence;
use crate::node_index::NodeIndex;
use crate::paths;

/// A record kind that can be cached.
pub trait Cached: Clone + Send + Sync + 'static {
    /// The root whose direct children are the records.
    const ROOT: &'static str;
    /// Whether to track `<id>/lock/` contenders.
    const TRACK_LOCKS: bool;
    /// Parses a record.
    fn parse(id: &str, data: &[u8]) -> Result<Self, ModelError>;
    /// Secondary indexes kept with the records ([`TreeCache::index`]).
    type Index: Default + Send + Sync + 'static;
    /// Adds (`sign` 1) or removes (`sign` -1) one record in the index.
    fn index(index: &mut Self::Index, id: &str, entry: &Entry<Self>, sign: i64);
}

impl Cached for Node {
    const ROOT: &'static str = paths::NODES;
    const TRACK_LOCKS: bool = true;
    fn parse(id: &str, data: &[u8]) -> Result<Self, ModelError> {
        Node::from_json(id, data)
    }
    type Index = NodeIndex;
    fn index(index: &mut NodeIndex, id: &str, entry: &Entry<Self>, sign: i64) {
        index.apply(id, entry, sign);
    }
}

impl Cached for NodeRequest {
    const ROOT: &'static str = paths::REQUESTS;
    const TRACK_LOCKS: bool = false;
    fn parse(id: &str, data: &[u8]) -> Result<Self, ModelError> {
        NodeRequest::from_json(id, data)
    }
    type Index = ();
    fn index(_: &mut (), _: &str, _: &Entry<Self>, _: i64) {}
}

/// The records and their indexes, changed together under one lock.
pub(crate) struct Table<T: Cached> {
    map: HashMap<String, Entry<T>>,
    index: T::Index,
}

impl<T: Cached> Default for Table<T> {
    fn default() -> Self {
        Table { map: HashMap::new(), index: T::Index::default() }
    }
}

impl<T: Cached> Table<T> {
    fn get(&self, id: &str) -> Option<&Entry<T>> {
        self.map.get(id)
    }

    /// Inserts or replaces a record.
    fn put(&mut self, id: &str, entry: Entry<T>) {
        if let Some(old) = self.map.get(id) {
            T::index(&mut self.index, id, old, -1);
        }
        T::index(&mut self.index, id, &entry, 1);
        self.map.insert(id.to_owned(), entry);
    }

    /// Changes a record in place; false if there is none.
    fn change(&mut self, id: &str, f: impl FnOnce(&mut Entry<T>)) -> bool {
        let Some(entry) = self.map.get_mut(id) else { return false };
        T::index(&mut self.index, id, entry, -1);
        f(entry);
        T::index(&mut self.index, id, entry, 1);
        true
    }

    fn remove(&mut self, id: &str) -> Option<Entry<T>> {
        let old = self.map.remove(id)?;
        T::index(&mut self.index, id, &old, -1);
        Some(old)
    }
}

/// The node cache.
pub type NodeCache = TreeCache<Node>;
/// The request cache.
pub type RequestCache = TreeCache<NodeRequest>;

/// One cached record.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The parsed record (shared, cheap to clone).
    pub value: Arc<T>,
    /// The znode's `mzxid`, for staleness checks.
    pub mzxid: i64,
    /// The znode's data version.
    pub version: i32,
    /// Names of kazoo lock contenders under `<id>/lock/` (nodes only).
    pub lock_contenders: BTreeSet<String>,
}

impl<T> Entry<T> {
    /// Whether anyone holds or waits for the record's lock.
    pub fn is_locked(&self) -> bool {
        !self.lock_contenders.is_empty()
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEventKind {
    /// Added or updated.
    Upserted,
    /// Deleted.
    Removed,
    /// A lock contender appeared or went away.
    LockChanged,
    /// The whole tree was re-read (after a reconnect); re-scan everything.
    Resynced,
}

/// A change notification; `id` is empty for `Resynced`.
#[derive(Debug, Clone)]
pub struct CacheEvent {
    pub id: String,
    pub kind: CacheEventKind,
}

struct Shared<T: Cached> {
    entries: RwLock<Table<T>>,
    /// Writes this process announced (see [`TreeCache::expect_write`]): the
    /// watch event of each is not followed by a read.
    own_writes: std::sync::Mutex<HashMap<String, u32>>,
    /// Ids to re-read: a withdrawn own write may have swallowed the watch
    /// event of someone else's write (see [`TreeCache::cancel_write`]).
    refresh: tokio::sync::mpsc::UnboundedSender<String>,
    events: broadcast::Sender<CacheEvent>,
    ready: watch::Sender<bool>,
    /// The highest record sequence number (the digits of a sequential id)
    /// whose creation the cache has applied, with everything before it: see
    /// [`TreeCache::wait_created`].
    created: watch::Sender<u64>,
    cancel: CancellationToken,
}

/// A self-updating cache of the records under `T::ROOT`.
pub struct TreeCache<T: Cached> {
    shared: Arc<Shared<T>>,
}

impl<T: Cached> Clone for TreeCache<T> {
    fn clone(&self) -> Self {
        TreeCache { shared: self.shared.clone() }
    }
}

enum Update<T> {
    Fetched {
        id: String,
        result: Result<Option<(Vec<u8>, zookeeper_client::Stat)>, zookeeper_client::Error>,
    },
    Deleted {
        id: String,
    },
    Contender {
        id: String,
        name: String,
        present: bool,
    },
    /// A record with this sequence number was created; applied after its
    /// fetch, so every earlier event is applied too.
    Created(u64),
    Ignore(std::marker::PhantomData<T>),
}

impl<T: Cached> TreeCache<T> {
    /// Starts the cache on `zk`. It stops when [`TreeCache::stop`] is called or
    /// the session handle is closed.
    pub fn start(zk: &Zk) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (ready, _) = watch::channel(false);
        let (created, _) = watch::channel(0);
        let (refresh, refresh_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            entries: RwLock::new(Table::default()),
            own_writes: std::sync::Mutex::new(HashMap::new()),
            refresh,
            events,
            ready,
            created,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(run(zk.clone(), shared.clone(), refresh_rx));
        TreeCache { shared }
    }

    /// Stops the background task.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
    }

    /// Waits until the initial walk is done.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Waits until the cache has applied the creation of the record with
    /// sequence number `seq` (a sequential id such as a node's
    /// `0000000042`), and so every change ZooKeeper made before it: the
    /// persistent watch delivers events in zxid order and the cache applies
    /// them in that order. Sequence numbers of one parent grow with zxid,
    /// so afterwards every record created before `seq` is in the cache
    /// (unless deleted since). False on timeout.
    ///
    /// This is how a launcher that has just created a node knows exactly
    /// which nodes of its pool were created before it, whoever made them.
    pub async fn wait_created(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.created.subscribe();
        let seen = tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq)).await;
        matches!(seen, Ok(Ok(_)))
    }

    /// The sequence watermark of [`TreeCache::wait_created`] now: every
    /// record created later has a higher sequence number.
    pub fn created_watermark(&self) -> u64 {
        *self.shared.created.borrow()
    }

    /// Change notifications. A lagging receiver should treat
    /// `RecvError::Lagged` like `Resynced`.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.shared.events.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table<T>> {
        self.shared.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` over the indexes (see [`crate::node_index`]) under the read
    /// lock: consistent with the records at that moment.
    pub fn index<R>(&self, f: impl FnOnce(&T::Index) -> R) -> R {
        f(&self.read().index)
    }

    /// Runs `f` with the indexes and a lookup of records, under one read lock.
    pub fn with_index<R>(&self, f: impl FnOnce(&T::Index, &dyn Fn(&str) -> Option<Entry<T>>) -> R) -> R {
        let table = self.read();
        let lookup = |id: &str| table.get(id).cloned();
        f(&table.index, &lookup)
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Option<Entry<T>> {
        self.read().map.get(id).cloned()
    }

    /// The ids of all cached records.
    pub fn ids(&self) -> Vec<String> {
        self.read().map.keys().cloned().collect()
    }

    /// Runs `f` over every entry under the read lock, without cloning.
    pub fn scan<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Entry<T>>) -> R) -> R {
        let table = self.read();
        let mut iter = table.map.values();
        f(&mut iter)
    }

    /// All records (unordered).
    pub fn values(&self) -> Vec<Arc<T>> {
        self.read().map.values().map(|e| e.value.clone()).collect()
    }

    /// All entries (unordered).
    pub fn entries(&self) -> Vec<Entry<T>> {
        self.read().map.values().cloned().collect()
    }

    /// Number of cached records.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Announces a write this process is about to make to `id`, whose result
    /// it will hand to [`TreeCache::note_write`]: the watch event of that write
    /// then needs no read. (ZooKeeper sends a session the watch event of its
    /// own write before the write's reply, so the announcement must come
    /// first.) Correct even if someone else writes concurrently: a successful
    /// write maps to one event, and a read after any skipped event returns the
    /// latest data. Call [`TreeCache::cancel_write`] if the write fails.
    pub fn expect_write(&self, id: &str) {
        let mut own = self.shared.own_writes.lock().unwrap_or_else(|p| p.into_inner());
        *own.entry(id.to_owned()).or_default() += 1;
    }

    /// Withdraws an [`TreeCache::expect_write`] whose write failed. A write
    /// that failed on its version lost to someone else's write, whose watch
    /// event may already have been taken for ours and skipped: the record is
    /// therefore re-read.
    pub fn cancel_write(&self, id: &str) {
        {
            let mut own = self.shared.own_writes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = own.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    own.remove(id);
                }
            }
        }
        let _ = self.shared.refresh.send(id.to_owned());
    }

    /// Records a value this process just wrote (read-your-writes); ignored
    /// if the cache already has a newer `mzxid`.
    pub fn note_write(&self, id: &str, value: T, stat: &zookeeper_client::Stat) {
        let mut map = self.shared.entries.write().unwrap_or_else(|p| p.into_inner());
        apply_value(&mut map, &self.shared.events, id, value, stat);
    }
}

fn apply_value<T: Cached>(
    map: &mut Table<T>,
    events: &broadcast::Sender<CacheEvent>,
    id: &str,
    value: T,
    stat: &zookeeper_client::Stat,
) {
    match map.get(id) {
        Some(entry) if entry.mzxid >= stat.mzxid => {}
        Some(_) => {
            map.change(id, |entry| {
                entry.value = Arc::new(value);
                entry.mzxid = stat.mzxid;
                entry.version = stat.version;
            });
            let _ = events.send(CacheEvent { id: id.to_owned(), kind: CacheEventKind::Upserted });
        }
        None => {
            map.put(
                id,
                Entry {
                    value: Arc::new(value),
                    mzxid: stat.mzxid,
                    version: stat.version,
                    lock_contenders: BTreeSet::new(),
                },
            );
            let _ = events.send(CacheEvent { id: id.to_owned(), kind: CacheEventKind::Upserted });
        }
    }
}

/// Walks the tree: returns every record with its lock contenders.
async fn walk<T: Cached>(
    zk: &Zk,
) -> Result<Vec<(String, Vec<u8>, zookeeper_client::Stat, BTreeSet<String>)>, ZkError> {
    let client = zk.client();
    let ids = zk.children(T::ROOT).await?.unwrap_or_default();
    // Issue every read before awaiting any: one flight for the whole tree.
    let data: Vec<_> = ids.iter().map(|id| client.get_data(&format!("{}/{id}", T::ROOT))).collect();
    let locks: Vec<_> = if T::TRACK_LOCKS {
        ids.iter().map(|id| Some(client.list_children(&format!("{}/{id}/lock", T::ROOT)))).collect()
    } else {
        ids.iter().map(|_| None).collect()
    };
    let data = futures::future::join_all(data).await;
    let locks = futures::future::join_all(locks.into_iter().map(|f| async move {
        match f {
            Some(f) => f.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }))
    .await;
    let mut out = Vec::with_capacity(ids.len());
    for ((id, data), lock_children) in ids.into_iter().zip(data).zip(locks) {
        match data {
            Ok((bytes, stat)) => {
                let contenders =
                    lock_children.into_iter().filter(|c| contender_sequence(c).is_some()).collect();
                out.push((id, bytes, stat, contenders));
            }
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("get", &format!("{}/{id}", T::ROOT), e)),
        }
    }
    Ok(out)
}

fn resync<T: Cached>(
    shared: &Shared<T>,
    walked: Vec<(String, Vec<u8>, zookeeper_client::Stat, BTreeSet<String>)>,
) {
    let mut map = shared.entries.write().unwrap_or_else(|p| p.into_inner());
    let seen: HashSet<&str> = walked.iter().map(|(id, ..)| id.as_str()).collect();
    let gone: Vec<String> = map.map.keys().filter(|id| !seen.contains(id.as_str())).cloned().collect();
    for id in gone {
        map.remove(&id);
    }
    for (id, bytes, stat, contenders) in &walked {
        if bytes.is_empty() {
            continue;
        }
        match T::parse(id, bytes) {
            Ok(value) => {
                if map.get(id).is_none() {
                    map.put(
                        id,
                        Entry {
                            value: Arc::new(value),
                            mzxid: stat.mzxid,
                            version: stat.version,
                            lock_contenders: contenders.clone(),
                        },
                    );
                    continue;
                }
                map.change(id, |entry| {
                    if entry.mzxid < stat.mzxid {
                        entry.value = Arc::new(value);
                        entry.mzxid = stat.mzxid;
                        entry.version = stat.version;
                    }
                    entry.lock_contenders = contenders.clone();
                });
            }
            Err(e) => {
                warn!(root = T::ROOT, id, error = %e, "skipping malformed record");
                map.remove(id);
            }
        }
    }
    drop(map);
    // The walk saw every record that existed when it listed the root.
    if let Some(top) = walked.iter().filter_map(|(id, ..)| record_sequence(id)).max() {
        shared.created.send_if_modified(|s| {
            let newer = top > *s;
            if newer {
                *s = top;
            }
            newer
        });
    }
    let _ = shared.events.send(CacheEvent { id: String::new(), kind: CacheEventKind::Resynced });
    shared.ready.send_replace(true);
}

async fn run<T: Cached>(
    zk: Zk,
    shared: Arc<Shared<T>>,
    mut refresh: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut status = zk.subscribe();
    'session: loop {
        if shared.cancel.is_cancelled() || zk.status().closed {
            return;
        }
        if zk.wait_connected(Duration::from_secs(3600)).await.is_err() {
            continue;
        }
        let generation = zk.status().generation;
        let client = zk.client();
        if let Err(e) = zk.ensure_path(T::ROOT).await {
            warn!(root = T::ROOT, error = %e, "cache cannot create its root; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut watcher = match client.watch(T::ROOT, AddWatchMode::PersistentRecursive).await {
            Ok(w) => w,
            Err(e) => {
                warn!(root = T::ROOT, error = %e, "cannot add persistent watch; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // A resumed session on a new connection lacks the persistent watch
        // (see crate::rewatch): add it again before walking.
        let mut rewatch = false;
        'walk: loop {
            if rewatch {
                match crate::rewatch(&client, T::ROOT, AddWatchMode::PersistentRecursive).await {
                    Ok(w) => {
                        watcher = w;
                        rewatch = false;
                    }
                    Err(e) => {
                        warn!(root = T::ROOT, error = %e, "cannot add the persistent watch again; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if zk.status().generation != generation {
                            continue 'session;
                        }
                        continue 'walk;
                    }
                }
            }
            match walk::<T>(&zk).await {
                Ok(walked) => resync(&shared, walked),
                Err(e) => {
                    warn!(root = T::ROOT, error = %e, "cache walk failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if zk.status().generation != generation {
                        continue 'session;
                    }
                    continue 'walk;
                }
            }
            let mut pending: FuturesOrdered<futures::future::BoxFuture<'static, Update<T>>> =
                FuturesOrdered::new();
            let root_prefix = format!("{}/", T::ROOT);
            loop {
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    changed = status.changed() => {
                        if changed.is_err() { return; }
                        let s = *status.borrow_and_update();
                        if s.closed { return; }
                        if s.generation != generation { continue 'session; }
                    }
                    Some(update) = pending.next(), if !pending.is_empty() => {
                        apply(&shared, update);
                    }
                    Some(id) = refresh.recv() => {
                        pending.push_back(fetch(&client, format!("{root_prefix}{id}"), id));
                    }
                    event = watcher.changed() => {
                        if event.event_type == EventType::Session {
                            match event.session_state {
                                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                                    // Events may have been lost while disconnected.
                                    debug!(root = T::ROOT, "reconnected; re-walking cache");
                                    while let Some(update) = pending.next().await { apply(&shared, update); }
                                    rewatch = true;
                                    continue 'walk;
                                }
                                s if s.is_terminated() => {
                                    // The watcher panics if polled after a terminal event:
                                    // wait for the supervisor's new session instead.
                                    let _ = status.wait_for(|st| st.generation != generation || st.closed).await;
                                    continue 'session;
                                }
                                _ => continue,
                            }
                        }
                        let Some(rel) = event.path.strip_prefix(&root_prefix) else { continue };
                        let parts: Vec<&str> = rel.split('/').collect();
                        match (parts.as_slice(), event.event_type) {
                            ([id], EventType::NodeDeleted) => {
                                let id = (*id).to_owned();
                                pending.push_back(async move { Update::Deleted { id } }.boxed());
                            }
                            ([id], EventType::NodeDataChanged) if take_own_write(&shared, id) => {
                                pending.push_back(async { Update::Ignore(std::marker::PhantomData) }.boxed());
                            }
                            ([id], EventType::NodeCreated | EventType::NodeDataChanged) => {
                                pending.push_back(fetch(&client, event.path.clone(), (*id).to_owned()));
                                if event.event_type == EventType::NodeCreated {
                                    if let Some(seq) = record_sequence(id) {
                                        pending.push_back(async move { Update::Created(seq) }.boxed());
                                    }
                                }
                            }
                            ([id, "lock", name], kind) if T::TRACK_LOCKS && contender_sequence(name).is_some() => {
                                let present = kind == EventType::NodeCreated;
                                if present || kind == EventType::NodeDeleted {
                                    let (id, name) = ((*id).to_owned(), (*name).to_owned());
                                    pending.push_back(async move { Update::Contender { id, name, present } }.boxed());
                                }
                            }
                            _ => pending.push_back(async { Update::Ignore(std::marker::PhantomData) }.boxed()),
                        }
                    }
                }
            }
        }
    }
}

/// Reads one record (the read is issued now, in event order).
fn fetch<T: Cached>(
    client: &zookeeper_client::Client,
    path: String,
    id: String,
) -> futures::future::BoxFuture<'static, Update<T>> {
    let read = client.get_data(&path);
    async move {
        let result = match read.await {
            Ok(v) => Ok(Some(v)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(e),
        };
        Update::Fetched { id, result }
    }
    .boxed()
}

/// Takes every event already queued on `rx` without waiting, handing each
/// to `f`; `f(None)` means events were lost (the receiver lagged and has
/// been resubscribed: look at everything). Returns false once the cache is
/// gone (the channel closed).
pub fn drain_events(rx: &mut broadcast::Receiver<CacheEvent>, mut f: impl FnMut(Option<CacheEvent>)) -> bool {
    loop {
        match rx.try_recv() {
            Ok(ev) => f(Some(ev)),
            Err(broadcast::error::TryRecvError::Empty) => return true,
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                *rx = rx.resubscribe();
                f(None);
                return true;
            }
            Err(broadcast::error::TryRecvError::Closed) => return false,
        }
    }
}

/// Consumes one announced own write of `id`, if any.
fn take_own_write<T: Cached>(shared: &Shared<T>, id: &str) -> bool {
    let mut own = shared.own_writes.lock().unwrap_or_else(|p| p.into_inner());
    match own.get_mut(id) {
        Some(n) => {
            *n -= 1;
            if *n == 0 {
                own.remove(id);
            }
            true
        }
        None => false,
    }
}

fn apply<T: Cached>(shared: &Shared<T>, update: Update<T>) {
    let mut map = shared.entries.write().unwrap_or_else(|p| p.into_inner());
    match update {
        Update::Deleted { id } => {
            if map.remove(&id).is_some() {
                let _ = shared.events.send(CacheEvent { id, kind: CacheEventKind::Removed });
            }
        }
        Update::Fetched { id, result } => match result {
            Ok(Some((bytes, stat))) => {
                if bytes.is_empty() {
                    // An empty (e.g. resurrected) znode is not a record.
                    return;
                }
                match T::parse(&id, &bytes) {
                    Ok(value) => apply_value(&mut map, &shared.events, &id, value, &stat),
                    Err(e) => {
                        warn!(root = T::ROOT, id, error = %e, "skipping malformed record");
                        if map.remove(&id).is_some() {
                            let _ = shared.events.send(CacheEvent { id, kind: CacheEventKind::Removed });
                        }
                    }
                }
            }
            Ok(None) => {
                if map.remove(&id).is_some() {
                    let _ = shared.events.send(CacheEvent { id, kind: CacheEventKind::Removed });
                }
            }
            Err(e) => debug!(root = T::ROOT, id, error = %e, "cache fetch failed; a resync will follow"),
        },
        Update::Contender { id, name, present } => {
            let mut changed = false;
            map.change(&id, |entry| {
                changed = if present {
                    entry.lock_contenders.insert(name)
                } else {
                    entry.lock_contenders.remove(&name)
                };
            });
            if changed {
                let _ = shared.events.send(CacheEvent { id, kind: CacheEventKind::LockChanged });
            }
        }
        Update::Created(seq) => {
            drop(map);
            shared.created.send_if_modified(|s| {
                let newer = seq > *s;
                if newer {
                    *s = seq;
                }
                newer
            });
        }
        Update::Ignore(_) => {}
    }
}

/// The sequence number of a record id made by a sequential create: its
/// trailing ten digits (`0000000042`, `100-0000000042`); `None` for names
/// that are not (foreign znodes).
pub fn record_sequence(id: &str) -> Option<u64> {
    let tail = id.rsplit('-').next()?;
    if tail.len() != 10 || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tail.parse().ok()
}
