//! Static node registration: keeps ZooKeeper in line with the configuration
//! (upstream `StaticNodeProvider`, spec drivers §4.1–4.3).
//!
//! A configured host is identified by its [`NodeTuple`] (hostname, username,
//! connection port). For each one, `max-parallel-jobs` node records exist,
//! with `slot` 0..n-1. [`StaticSync::run`] wakes on the node cache's change
//! stream, on a new configuration ([`StaticSyncHandle::update_config`]), on a
//! retry deadline and on a slow safety timer, and then does one *pass*:
//!
//! 1. Build the slot table from the cache, as upstream's `getRegisteredNodes`:
//!    our provider's nodes (never another provider's; records without a
//!    hostname, username or integer port are left alone) go to their `slot`,
//!    nodes without a usable slot to the first free one, the rest are excess.
//!    `building` nodes are ignored. A `deleting`/`deleted` node keeps its slot
//!    until its znode is gone, so a returned node is re-registered once the
//!    launcher's cleanup has removed it (upstream's `nodeDeletedNotification`).
//! 2. Empty slots are registered (after the host check), excess nodes and
//!    nodes of hosts no longer configured are deregistered, and free nodes
//!    whose attributes differ from the configuration are updated.
//!
//! *Free* means `ready`, not allocated, and unlocked. Deregistering and
//! updating take the node lock non-blocking and re-read the node under it, so
//! a node in use is left alone until it is returned; it is then deleted by the
//! launcher and, if it is still configured, registered from the current
//! configuration. Deregistering writes `deleting`, as upstream; the launcher's
//! cleanup deletes the znode through [`crate::StaticProvider::delete`].
//!
//! Host check (`checkHost`): for `ssh`/`network_cli` with `host-key-checking`
//! the host keys are scanned and the configured `host-key`s must be a subset;
//! with checking off the configured keys are used without any connection;
//! other connection types need an open port and get no keys. A host that
//! fails is logged and retried after [`SyncOptions::retry_interval`]. Scanned
//! keys are cached per host and configuration; every registration scans again
//! (it doubles as a liveness check). As upstream, a host name containing
//! `fake` is not contacted: it gets `ssh-rsa FAKEKEY` and no IP address.
//!
//! Deliberate differences from upstream: updates also cover `pool` and
//! `attributes` (pool `node-attributes`), and a free node that could not be
//! locked for an update is updated on a later pass instead of never;
//! host-key comparison ignores key comments.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use np_config::{StaticNode, StaticPool};
use np_core::{Node, NodeState};
use np_zk::cache::Entry;
use np_zk::{LockOptions, NodeCache, Zk, ZkError};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::keyscan::{self, KeyscanError};

/// The `launcher` field of static nodes.
pub const STATIC_LAUNCHER: &str = "static driver";

/// The key upstream's scanner returns for host names containing `fake`.
pub const FAKE_HOST_KEY: &str = "ssh-rsa FAKEKEY";

/// A static host's identity: renaming any part means deregister + register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTuple {
    pub hostname: String,
    pub username: String,
    pub port: u16,
}

impl std::fmt::Display for NodeTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.username, self.hostname, self.port)
    }
}

impl NodeTuple {
    /// The tuple of a configured host.
    pub fn of_config(node: &StaticNode) -> Self {
        NodeTuple { hostname: node.name.clone(), username: node.username.clone(), port: node.connection_port }
    }

    /// The tuple of a node record; `None` when it lacks a hostname or
    /// username, or its port is not an integer port (such records are
    /// never touched).
    pub fn of_node(node: &Node) -> Option<Self> {
        let port = node.connection_port.as_u64().and_then(|p| u16::try_from(p).ok())?;
        Some(NodeTuple { hostname: node.hostname.clone()?, username: node.username.clone()?, port })
    }
}

/// Why a host could not be registered or updated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The host check failed (unreachable, timeout, no keys, …).
    #[error("{tuple}: host check failed: {source}")]
    HostCheck {
        tuple: NodeTuple,
        #[source]
        source: KeyscanError,
    },
    /// A configured host key is not among the scanned ones.
    #[error("{tuple}: host key mismatches (configured {configured:?}, scanned {scanned:?})")]
    HostKeyMismatch { tuple: NodeTuple, configured: Vec<String>, scanned: Vec<String> },
    /// A ZooKeeper operation failed.
    #[error(transparent)]
    Zk(#[from] ZkError),
}

/// Timers of the sync task.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// A full pass runs at least this often, even without events.
    pub safety_interval: Duration,
    /// After a host fails its check (or a write fails), wait this long
    /// before trying it again (a configuration change retries at once).
    pub retry_interval: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions { safety_interval: Duration::from_secs(60), retry_interval: Duration::from_secs(30) }
    }
}

struct Inner {
    zk: Zk,
    nodes: NodeCache,
    provider: String,
    config: watch::Sender<np_config::StaticProvider>,
    options: SyncOptions,
}

/// A cloneable handle to a running [`StaticSync`]: hand it new
/// configurations and ask it for liveness checks.
#[derive(Clone)]
pub struct StaticSyncHandle {
    inner: Arc<Inner>,
}

/// The registration task of one static provider.
pub struct StaticSync {
    inner: Arc<Inner>,
    config_rx: watch::Receiver<np_config::StaticProvider>,
    /// Host keys found for a host, with the configuration they were checked against.
    keys: HashMap<NodeTuple, (StaticNode, Vec<String>)>,
    /// Hosts not to try before the instant, unless their configuration changes.
    backoff: HashMap<NodeTuple, (StaticNode, Instant)>,
    /// Nodes this task updated, with the configuration applied: each node is
    /// updated at most once per configuration, so a value that does not
    /// survive a round trip can never cause a write loop.
    updated: HashMap<String, StaticNode>,
    /// The configured hosts, recomputed only when the configuration changes.
    wanted: Option<Arc<BTreeMap<NodeTuple, (StaticPool, StaticNode)>>>,
}

/// Runs the registration of provider `provider_name` until `cancel` fires,
/// with default timers and a fixed configuration. Use [`StaticSync::new`]
/// to be able to change the configuration while it runs.
pub async fn run_sync(
    zk: Zk,
    nodes: NodeCache,
    provider_name: String,
    config: np_config::StaticProvider,
    cancel: CancellationToken,
) {
    let (sync, _handle) = StaticSync::new(zk, nodes, provider_name, config, SyncOptions::default());
    sync.run(cancel).await;
}

/// Free `ready` nodes per label of a provider (and pool, if given): what a
/// static pool can hand out right now (upstream `getLabelQuota`, which counts
/// ready unallocated nodes; locked ones are left out here as well).
pub fn free_ready_nodes_by_label(
    nodes: &NodeCache,
    provider: &str,
    pool: Option<&str>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for entry in provider_entries(nodes, provider) {
        let n = &entry.value;
        if pool.is_some_and(|p| n.pool.as_deref() != Some(p)) || !is_free(&entry) {
            continue;
        }
        for label in &n.node_type {
            *out.entry(label.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// The cached nodes of `provider` (the node cache's index: no scan of the
/// other providers' nodes).
fn provider_entries(nodes: &NodeCache, provider: &str) -> Vec<Entry<Node>> {
    nodes.with_index(|ix, lookup| {
        ix.provider_nodes(provider)
            .map(|ids| ids.iter().filter_map(|id| lookup(id)).collect())
            .unwrap_or_default()
    })
}

fn is_free(entry: &Entry<Node>) -> bool {
    entry.value.state == NodeState::Ready && entry.value.allocated_to.is_none() && !entry.is_locked()
}

/// The configured hosts by tuple (the first definition wins, as upstream's dict).
fn configured(config: &np_config::StaticProvider) -> BTreeMap<NodeTuple, (StaticPool, StaticNode)> {
    let mut out = BTreeMap::new();
    for pool in &config.pools {
        for node in &pool.nodes {
            let tuple = NodeTuple::of_config(node);
            if out.contains_key(&tuple) {
                warn!(%tuple, pool = %pool.name, "static node defined twice; using the first definition");
                continue;
            }
            // The pool's own settings only (cloning `nodes` here would make
            // every pass quadratic in the number of hosts).
            let pool_only = StaticPool {
                name: pool.name.clone(),
                max_servers: pool.max_servers,
                node_attributes: pool.node_attributes.clone(),
                priority: pool.priority,
                nodes: Vec::new(),
            };
            out.insert(tuple, (pool_only, node.clone()));
        }
    }
    out
}

fn gathers_keys(node: &StaticNode) -> bool {
    node.connection_type == "ssh" || node.connection_type == "network_cli"
}

/// Upstream `checkHost`: the host keys to store, or why the host is unusable.
pub async fn check_host(node: &StaticNode) -> Result<Vec<String>, SyncError> {
    let tuple = NodeTuple::of_config(node);
    let gather = gathers_keys(node);
    if gather && !node.host_key_checking {
        return Ok(node.host_keys.clone());
    }
    if node.name.contains("fake") {
        return Ok(if gather { vec![FAKE_HOST_KEY.to_owned()] } else { Vec::new() });
    }
    if !gather {
        keyscan::wait_for_port(&node.name, node.connection_port, node.timeout)
            .await
            .map_err(|source| SyncError::HostCheck { tuple, source })?;
        return Ok(Vec::new());
    }
    let scanned = keyscan::wait_for_ssh(&node.name, node.connection_port, node.timeout, None)
        .await
        .map_err(|source| SyncError::HostCheck { tuple: tuple.clone(), source })?;
    let have: Vec<String> = scanned.iter().map(|k| keyscan::normalize_key(k)).collect();
    let all_known = node.host_keys.iter().all(|k| have.contains(&keyscan::normalize_key(k)));
    if !all_known {
        return Err(SyncError::HostKeyMismatch { tuple, configured: node.host_keys.clone(), scanned });
    }
    Ok(scanned)
}

/// Upstream `set_node_ip`: the first address of the host name (none for `fake` names).
async fn node_ip(node: &StaticNode) -> Result<Option<IpAddr>, SyncError> {
    if node.name.contains("fake") {
        return Ok(None);
    }
    keyscan::resolve(&node.name, node.connection_port)
        .await
        .map(|a| Some(a.ip()))
        .map_err(|source| SyncError::HostCheck { tuple: NodeTuple::of_config(node), source })
}

/// The attributes a registered node of `node` in `pool` should have.
struct Desired<'a> {
    pool: &'a StaticPool,
    node: &'a StaticNode,
    host_keys: &'a [String],
}

impl Desired<'_> {
    fn attributes(&self) -> Option<Value> {
        self.pool.node_attributes.clone().map(Value::Object)
    }

    fn matches(&self, n: &Node) -> bool {
        n.node_type == self.node.labels
            && n.username.as_deref() == Some(self.node.username.as_str())
            && n.connection_port.as_u64() == Some(u64::from(self.node.connection_port))
            && n.shell_type == self.node.shell_type
            && n.connection_type.as_deref() == Some(self.node.connection_type.as_str())
            && n.python_path.as_deref() == Some(self.node.python_path.as_str())
            && n.host_keys == self.host_keys
            && n.pool.as_deref() == Some(self.pool.name.as_str())
            && n.attributes == self.attributes()
    }

    fn apply(&self, n: &mut Node) {
        n.node_type = self.node.labels.clone();
        n.username = Some(self.node.username.clone());
        n.connection_port = Value::from(self.node.connection_port);
        n.connection_type = Some(self.node.connection_type.clone());
        n.shell_type = self.node.shell_type.clone();
        n.python_path = Some(self.node.python_path.clone());
        n.host_keys = self.host_keys.to_vec();
        n.pool = Some(self.pool.name.clone());
        n.attributes = self.attributes();
    }

    fn new_node(&self, provider: &str, slot: usize, ip: Option<IpAddr>) -> Node {
        let mut n = Node::new(NodeState::Ready);
        n.provider = Some(provider.to_owned());
        n.launcher = Some(STATIC_LAUNCHER.to_owned());
        n.external_id = Some(Value::from(self.node.name.clone()));
        n.hostname = Some(self.node.name.clone());
        n.interface_ip = Some(self.node.name.clone());
        match ip {
            Some(IpAddr::V4(a)) => n.public_ipv4 = Some(a.to_string()),
            Some(IpAddr::V6(a)) => n.public_ipv6 = Some(a.to_string()),
            None => {}
        }
        n.slot = i64::try_from(slot).ok();
        self.apply(&mut n);
        n
    }
}

/// The slot table of one configured host.
struct Slots {
    slots: Vec<Option<Entry<Node>>>,
    excess: Vec<Entry<Node>>,
}

/// What happened to one host in a pass.
#[derive(Default)]
struct HostOutcome {
    keys: Option<Vec<String>>,
    failed: bool,
    updated: Vec<String>,
}

impl StaticSync {
    /// A sync task for provider `provider_name` and its handle.
    pub fn new(
        zk: Zk,
        nodes: NodeCache,
        provider_name: impl Into<String>,
        config: np_config::StaticProvider,
        options: SyncOptions,
    ) -> (StaticSync, StaticSyncHandle) {
        let (tx, rx) = watch::channel(config);
        let inner = Arc::new(Inner { zk, nodes, provider: provider_name.into(), config: tx, options });
        let sync = StaticSync {
            inner: inner.clone(),
            config_rx: rx,
            keys: HashMap::new(),
            backoff: HashMap::new(),
            updated: HashMap::new(),
            wanted: None,
        };
        (sync, StaticSyncHandle { inner })
    }

    /// Starts [`StaticSync::run`] on the runtime; returns the handle and the task.
    pub fn spawn(
        zk: Zk,
        nodes: NodeCache,
        provider_name: impl Into<String>,
        config: np_config::StaticProvider,
        options: SyncOptions,
        cancel: CancellationToken,
    ) -> (StaticSyncHandle, tokio::task::JoinHandle<()>) {
        let (sync, handle) = StaticSync::new(zk, nodes, provider_name, config, options);
        (handle, tokio::spawn(sync.run(cancel)))
    }

    /// Runs until `cancel` fires. Waits for the node cache's first load
    /// before it registers anything.
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = info_span!("static-sync", provider = %self.inner.provider);
        async move {
            let mut events = self.inner.nodes.subscribe();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ready = self.inner.nodes.wait_ready(Duration::from_secs(5)) => if ready { break },
                }
            }
            info!("static node sync started");
            let mut events_open = true;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = self.pass() => next,
                };
                // Wait for something that can change what to register: a
                // node gone (its slot is free), one of ours becoming free (a
                // pending update or deregistration can proceed), a resync, a
                // new configuration or a timer. Other node changes are ignored.
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = events.recv(), if events_open => match r {
                            Ok(ev) if !self.matters(&ev) => continue,
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => {
                                warn!("node cache stopped; syncing on timers only");
                                events_open = false;
                            }
                        },
                        _ = self.config_rx.changed() => {
                            debug!("configuration updated");
                            self.wanted = None;
                        }
                        _ = tokio::time::sleep_until(next) => {}
                    }
                    break;
                }
                // Everything already queued is covered by the next pass.
                while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
            }
            info!("static node sync stopped");
        }
        .instrument(span)
        .await
    }

    /// Whether a node-cache event can change what this provider registers.
    fn matters(&self, event: &np_zk::CacheEvent) -> bool {
        use np_zk::CacheEventKind;
        match event.kind {
            CacheEventKind::Removed | CacheEventKind::Resynced => true,
            CacheEventKind::Upserted | CacheEventKind::LockChanged => {
                self.inner.nodes.get(&event.id).is_some_and(|e| {
                    let n = &e.value;
                    n.provider.as_deref() == Some(self.inner.provider.as_str())
                        && n.state == np_core::NodeState::Ready
                        && n.allocated_to.is_none()
                        && !e.is_locked()
                })
            }
        }
    }

    /// One pass; returns when the next timer-driven pass is due.
    async fn pass(&mut self) -> Instant {
        let now = Instant::now();
        if self.wanted.is_none() || self.config_rx.has_changed().unwrap_or(false) {
            let config = self.config_rx.borrow_and_update().clone();
            self.wanted = Some(Arc::new(configured(&config)));
        }
        let wanted = self.wanted.clone().unwrap_or_default();
        self.keys.retain(|t, (cfg, _)| wanted.get(t).is_some_and(|(_, n)| n == cfg));
        self.backoff.retain(|t, (cfg, until)| *until > now && wanted.get(t).is_some_and(|(_, n)| n == cfg));

        let (mut table, removed) = self.slot_table(&wanted);
        let nodes = &self.inner.nodes;
        self.updated.retain(|id, _| nodes.get(id).is_some());
        let inner = &self.inner;
        let mut work = Vec::new();
        for (tuple, (pool, node)) in wanted.iter() {
            let Some(slots) = table.remove(tuple) else { continue };
            let cached = self.keys.get(tuple).map(|(_, k)| k.clone());
            let backing_off = self.backoff.contains_key(tuple);
            let done: HashSet<String> =
                self.updated.iter().filter(|(_, cfg)| *cfg == node).map(|(id, _)| id.clone()).collect();
            // Most passes (a node of another host came or went) find nothing
            // to do for most hosts: skip those without any further work.
            let idle = slots.excess.is_empty()
                && slots.slots.iter().all(Option::is_some)
                && cached.as_ref().is_some_and(|keys| {
                    let desired = Desired { pool, node, host_keys: keys };
                    slots
                        .slots
                        .iter()
                        .flatten()
                        .filter(|e| is_free(e))
                        .all(|e| desired.matches(&e.value) || done.contains(&e.value.id))
                });
            if idle {
                continue;
            }
            let span = info_span!("static-node", host = %node.name, port = node.connection_port, user = %node.username);
            work.push(
                async move {
                    let outcome = sync_host(inner, pool, node, slots, cached, backing_off, &done).await;
                    (tuple.clone(), node.clone(), outcome)
                }
                .instrument(span),
            );
        }
        let deregs = removed.iter().map(|e| {
            let id = e.value.id.clone();
            async move {
                match deregister(inner, &id).await {
                    Ok(true) => info!(node = %id, "deregistered static node no longer in the configuration"),
                    Ok(false) => {}
                    Err(e) => warn!(node = %id, error = %e, "cannot deregister static node"),
                }
            }
        });
        let (outcomes, _) =
            futures::join!(futures::future::join_all(work), futures::future::join_all(deregs));
        for (tuple, node, outcome) in outcomes {
            if let Some(keys) = outcome.keys {
                self.keys.insert(tuple.clone(), (node.clone(), keys));
            }
            for id in outcome.updated {
                self.updated.insert(id, node.clone());
            }
            if outcome.failed {
                self.backoff.insert(tuple, (node, Instant::now() + self.inner.options.retry_interval));
            }
        }
        let safety = Instant::now() + self.inner.options.safety_interval;
        self.backoff.values().map(|(_, until)| *until).fold(safety, Instant::min)
    }

    /// Upstream `getRegisteredNodes`: slots per configured host, and the
    /// nodes of hosts that are no longer configured.
    fn slot_table(
        &self,
        wanted: &BTreeMap<NodeTuple, (StaticPool, StaticNode)>,
    ) -> (HashMap<NodeTuple, Slots>, Vec<Entry<Node>>) {
        let mut table: HashMap<NodeTuple, Slots> = wanted
            .iter()
            .map(|(t, (_, n))| {
                let len = usize::try_from(n.max_parallel_jobs).unwrap_or(1);
                (t.clone(), Slots { slots: vec![None; len], excess: Vec::new() })
            })
            .collect();
        let mut entries = provider_entries(&self.inner.nodes, &self.inner.provider);
        entries.sort_by(|a, b| a.value.id.cmp(&b.value.id));
        let mut unslotted = Vec::new();
        let mut removed = Vec::new();
        for entry in entries {
            let Some(tuple) = NodeTuple::of_node(&entry.value) else {
                debug!(node = %entry.value.id, "skipping static node record without host identity");
                continue;
            };
            let state = entry.value.state;
            if state == NodeState::Building {
                continue;
            }
            let going = matches!(state, NodeState::Deleting | NodeState::Deleted);
            match table.get_mut(&tuple) {
                Some(s) => {
                    let idx = entry.value.slot.and_then(|i| usize::try_from(i).ok());
                    match idx {
                        Some(i) if i < s.slots.len() && s.slots[i].is_none() => s.slots[i] = Some(entry),
                        _ if going => {}
                        _ => unslotted.push((tuple, entry)),
                    }
                }
                None if going => {}
                None => removed.push(entry),
            }
        }
        for (tuple, entry) in unslotted {
            let Some(s) = table.get_mut(&tuple) else { continue };
            match s.slots.iter().position(Option::is_none) {
                Some(i) => s.slots[i] = Some(entry),
                None => {
                    debug!(node = %entry.value.id, %tuple, "tracking excess static node");
                    s.excess.push(entry);
                }
            }
        }
        (table, removed)
    }
}

/// One configured host: deregister excess nodes, register empty slots,
/// update free nodes (upstream `syncNodeCount` + `updateNodeFromConfig`).
async fn sync_host(
    inner: &Inner,
    pool: &StaticPool,
    node: &StaticNode,
    slots: Slots,
    cached_keys: Option<Vec<String>>,
    backing_off: bool,
    already_updated: &HashSet<String>,
) -> HostOutcome {
    let mut outcome = HostOutcome::default();
    for entry in &slots.excess {
        match deregister(inner, &entry.value.id).await {
            Ok(true) => info!(node = %entry.value.id, "deregistered static node above max-parallel-jobs"),
            Ok(false) => {}
            Err(e) => warn!(node = %entry.value.id, error = %e, "cannot deregister static node"),
        }
    }
    let empty: Vec<usize> =
        slots.slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    // Without checked keys we cannot tell whether a free node is up to date.
    let stale_free: Vec<&Entry<Node>> = slots.slots.iter().flatten().filter(|e| is_free(e)).collect();
    let need_check = !empty.is_empty() || (cached_keys.is_none() && !stale_free.is_empty());
    let keys = if need_check {
        if backing_off {
            return outcome;
        }
        match check_host(node).await {
            Ok(keys) => keys,
            Err(e) => {
                error!(error = %e, "static node unusable; not registering it, will retry");
                outcome.failed = true;
                return outcome;
            }
        }
    } else {
        match cached_keys {
            Some(k) => k,
            None => return outcome,
        }
    };
    outcome.keys = Some(keys.clone());
    let desired = Desired { pool, node, host_keys: &keys };
    if !empty.is_empty() {
        let ip = match node_ip(node).await {
            Ok(ip) => ip,
            Err(e) => {
                error!(error = %e, "static node unusable; not registering it, will retry");
                outcome.failed = true;
                return outcome;
            }
        };
        for slot in empty {
            let mut n = desired.new_node(&inner.provider, slot, ip);
            match inner.zk.create_node(&mut n).await {
                Ok(stat) => {
                    debug!(node = %n.id, slot, "registered static node");
                    inner.nodes.note_write(&n.id.clone(), n, &stat);
                }
                Err(e) => {
                    warn!(slot, error = %e, "cannot register static node");
                    outcome.failed = true;
                }
            }
        }
    }
    for entry in stale_free {
        if desired.matches(&entry.value) {
            continue;
        }
        if already_updated.contains(&entry.value.id) {
            debug!(node = %entry.value.id, "static node still differs after its update; not rewriting it");
            continue;
        }
        match update(inner, &entry.value.id, &desired).await {
            Ok(true) => {
                info!(node = %entry.value.id, "updated static node from the configuration");
                outcome.updated.push(entry.value.id.clone());
            }
            Ok(false) => debug!(node = %entry.value.id, "static node busy; update postponed"),
            Err(e) => {
                warn!(node = %entry.value.id, error = %e, "cannot update static node");
                outcome.failed = true;
            }
        }
    }
    outcome
}

/// Updates a free node under its lock; `Ok(false)` if it is not free.
async fn update(inner: &Inner, id: &str, desired: &Desired<'_>) -> Result<bool, SyncError> {
    let lock = match inner.zk.lock_node(id, LockOptions::try_once()).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return Ok(false),
        Err(e) if e.is_no_node() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let result = async {
        let Some((mut node, _)) = inner.zk.get_node(id).await? else { return Ok(false) };
        if node.state != NodeState::Ready || node.allocated_to.is_some() {
            return Ok(false);
        }
        desired.apply(&mut node);
        let stat = inner.zk.update_node(&node).await?;
        inner.nodes.note_write(id, node, &stat);
        Ok(true)
    }
    .await;
    if let Err(e) = lock.release().await {
        warn!(node = %id, error = %e, "cannot release static node lock");
    }
    result
}

/// Upstream `deregisterNode`: a free node becomes `deleting` (the launcher's
/// cleanup removes it); a node in use is left alone. `Ok(true)` if done.
async fn deregister(inner: &Inner, id: &str) -> Result<bool, SyncError> {
    let lock = match inner.zk.lock_node(id, LockOptions::try_once()).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return Ok(false),
        Err(e) if e.is_no_node() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let result = async {
        let Some((mut node, _)) = inner.zk.get_node(id).await? else { return Ok(false) };
        if node.state != NodeState::Ready || node.allocated_to.is_some() {
            return Ok(false);
        }
        node.set_state(NodeState::Deleting);
        let stat = inner.zk.update_node(&node).await?;
        inner.nodes.note_write(id, node, &stat);
        Ok(true)
    }
    .await;
    if let Err(e) = lock.release().await {
        warn!(node = %id, error = %e, "cannot release static node lock");
    }
    result
}

impl StaticSyncHandle {
    /// The provider name.
    pub fn provider_name(&self) -> &str {
        &self.inner.provider
    }

    /// The configuration in use.
    pub fn config(&self) -> np_config::StaticProvider {
        self.inner.config.borrow().clone()
    }

    /// Replaces the configuration (live reload); the task syncs at once.
    pub fn update_config(&self, config: np_config::StaticProvider) {
        self.inner.config.send_replace(config);
    }

    /// Upstream `checkNodeLiveness`, called before a ready node is reused:
    /// true if the host still accepts connections (always true with
    /// `host-key-checking: false`). A dead or unconfigured node is
    /// deregistered (if free) and false is returned.
    pub async fn check_node_liveness(&self, node: &Node) -> bool {
        let span = info_span!("static-liveness", provider = %self.inner.provider, node = %node.id);
        async {
            let Some(tuple) = NodeTuple::of_node(node) else { return false };
            let config = self.config();
            let wanted = configured(&config);
            let Some((_, cfg)) = wanted.get(&tuple) else { return false };
            if !cfg.host_key_checking || cfg.name.contains("fake") {
                return true;
            }
            match keyscan::wait_for_port(&cfg.name, cfg.connection_port, cfg.timeout).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(%tuple, error = %e, "static node is not reachable; deregistering it");
                    if let Err(e) = deregister(&self.inner, &node.id).await {
                        warn!(error = %e, "cannot deregister static node");
                    }
                    false
                }
            }
        }
        .instrument(span)
        .await
    }
}
