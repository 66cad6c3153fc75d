//! One worker per provider pool: request selection, accept/decline, node
//! reuse and launch, pausing at quota, fulfilment (spec launcher §2,
//! zk-protocol §5.2).
//!
//! The worker is event-driven: it sleeps until the request, node,
//! request-lock or pool-component cache reports a change, the ZooKeeper
//! session changes, or one of its launches finishes. Every wake re-evaluates
//! in-flight requests first, then (unless paused at quota) looks for new
//! ones. A request another process held when this pool looked is looked at
//! again when its lock goes (the request-lock cache says so), whether its
//! holder let go or died.
//!
//! Session loss: every request and node lock of the old session is gone, so
//! the worker drops those handlers without writing anything (their launches
//! stop and delete what they created); the requests, left `pending` with no
//! lock, are reset by the lost-request watcher (`maintenance.rs`) and served
//! again. Everything written under a lock goes through that lock's session
//! ([`LockGuard::fenced`]), so nothing lands once the lock is lost.
//!
//! Ordering rules kept from upstream, because Zuul depends on them:
//! * request lock first, then node locks;
//! * `nodes` filled in `node_types` order;
//! * on fulfilment the nodes keep `allocated_to` and are **unlocked before**
//!   the request is written `fulfilled`; the request lock is released last;
//! * a request is `failed` only when every registered pool declined it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use np_core::{Node, NodeRequest, NodeState, Quota, RequestState};
use np_provider::Provider;
use np_zk::{
    drain_events, CacheEvent, CacheEventKind, ComponentRegistration, LockGuard, LockOptions, NodeCache,
    PoolComponentCache, RequestCache, RequestLockCache, Zk,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::launch::{run_launch, LabelSettings, LaunchOutcome, LaunchPolicy};
use crate::MIN_READY_REQUESTOR;

/// What a pool worker serves, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub provider: String,
    pub pool: String,
    pub labels: BTreeSet<String>,
    /// `max-servers`; `None` = unlimited.
    pub max_servers: Option<u64>,
    /// Pool limits: `max-servers` as instances, `max-cores`, `max-ram`,
    /// `max-volumes`, `max-volume-gb` (default ∞).
    pub limits: Quota,
    /// `ignore-provider-quota`: skip the cloud's limits (pool limits still apply).
    pub ignore_provider_quota: bool,
    /// Lower wins.
    pub priority: i64,
    pub node_attributes: Option<Value>,
    pub launch: LaunchPolicy,
    /// Provider `max-concurrency`: in-flight requests; `None` = unlimited.
    pub max_concurrency: Option<u32>,
    /// Cloud name written on nodes.
    pub cloud: Option<String>,
    /// `tenant-resource-limits`, as limits (default ∞) per tenant.
    pub tenant_limits: HashMap<String, Quota>,
    /// Node settings per label (image user, python path, connection, host-key checking).
    pub label_settings: HashMap<String, LabelSettings>,
    /// Static pools: nodes are only ever reused, never launched; with no free
    /// node the request is left for later (not paused, not declined).
    pub never_launch: bool,
}

/// The caches every worker shares.
#[derive(Clone)]
pub struct SharedState {
    pub zk: Zk,
    pub nodes: NodeCache,
    pub requests: RequestCache,
    /// Who holds the request locks (they live outside the request tree).
    pub request_locks: RequestLockCache,
    pub pools: PoolComponentCache,
    pub hostname: String,
    pub metrics: crate::metrics::Metrics,
    /// Requests a pool of this launcher is trying to lock right now: the
    /// launcher's other pools leave them alone meanwhile, instead of every
    /// pool that offers the label racing for the same lock (one failed
    /// lock attempt, three ZooKeeper writes, per pool and request).
    pub attempts: Arc<std::sync::Mutex<HashSet<String>>>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum SlotState {
    Empty,
    Launching,
    Ready,
    Failed,
}

struct Slot {
    label: String,
    launched: Option<std::time::Instant>,
    node: Option<String>,
    lock: Option<LockGuard>,
    state: SlotState,
}

struct Handler {
    request: NodeRequest,
    lock: LockGuard,
    slots: Vec<Slot>,
    started: std::time::Instant,
    /// The upload each diskimage of the request boots, looked up once when
    /// the request is accepted.
    images: Images,
    /// The availability zone of the request's nodes (upstream's
    /// `chosen_az`): taken from the first ready node reused, else picked at
    /// random among the provider's zones for the first node launched; later
    /// nodes are launched there and only nodes there are reused.
    chosen_az: Option<String>,
}

/// Diskimage name -> the newest ready upload's znode path and cloud id.
type Images = HashMap<String, (String, Option<String>)>;

struct LaunchDone {
    request: String,
    slot: usize,
    outcome: LaunchOutcome,
}

/// A running pool worker.
pub struct PoolWorker {
    spec: PoolSpec,
    id: String,
    shared: SharedState,
    provider: Arc<dyn Provider>,
    registration: ComponentRegistration,
    handlers: HashMap<String, Handler>,
    order: Vec<String>,
    paused: bool,
    /// After the cloud refused a launch for quota, the pool counts as at
    /// quota until then, whatever its own accounting says (else it would
    /// relaunch at once, over and over).
    quota_blocked_until: Option<tokio::time::Instant>,
    draining: bool,
    done_tx: mpsc::UnboundedSender<LaunchDone>,
    /// When the cloud's quota could last not be read was logged.
    quota_warned: std::sync::Mutex<Option<std::time::Instant>>,
    /// The cloud's limits as last read, and until when they stand without
    /// asking again (after a failed read).
    last_limits: std::sync::Mutex<(Option<Quota>, Option<tokio::time::Instant>)>,
}

/// How often a locked request's write is tried over fresher copies.
const STORE_ATTEMPTS: usize = 5;

/// A pool looks at everything at least this often, events or not: a safety
/// net under the event-driven passes (upstream looks every second).
pub const SAFETY_PASS: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a pool counts as at quota after the cloud refused a launch for
/// quota (upstream's pool loop looks again after about a second).
pub const QUOTA_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a pool waits for the cloud's limits before it goes on with the
/// last ones read: the read happens in the pool's pass, and a cloud that
/// hangs must not hold the pool's other requests (issue 11's cloud-fault
/// scenario: a hung `/limits` stalled an OpenStack pool for two minutes).
pub const QUOTA_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether the driver says a label that boots no diskimage can be launched
/// in `pool` (`Provider::label_ready`, upstream's `labelReady`). A driver
/// that does not answer in [`QUOTA_READ_TIMEOUT`] counts as ready: the
/// launch itself then fails or succeeds.
pub(crate) async fn cloud_image_ready(provider: &dyn Provider, pool: &str, label: &str) -> bool {
    tokio::time::timeout(QUOTA_READ_TIMEOUT, provider.label_ready(pool, label)).await != Ok(false)
}

/// After a failed limits read, how long the last limits stand before the
/// cloud is asked again.
pub const QUOTA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a stopping pool worker may spend finishing in-flight requests.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `<fqdn>-PoolWorker.<provider>-<pool>-<uuidhex>`.
pub fn pool_id(hostname: &str, provider: &str, pool: &str) -> String {
    format!("{hostname}-PoolWorker.{provider}-{pool}-{}", uuid::Uuid::new_v4().simple())
}

fn sequence(id: &str) -> &str {
    id.split_once('-').map(|(_, s)| s).unwrap_or(id)
}

fn priority_prefix(id: &str) -> &str {
    id.split_once('-').map(|(p, _)| p).unwrap_or(id)
}

impl PoolWorker {
    /// Registers the pool component and runs until `cancel` fires.
    pub async fn run(
        spec: PoolSpec,
        shared: SharedState,
        provider: Arc<dyn Provider>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let id = pool_id(&shared.hostname, &spec.provider, &spec.pool);
        let mut record = np_core::ComponentRecord::new(
            np_core::ComponentKind::Pool,
            &shared.hostname,
            crate::VERSION,
            np_core::ComponentState::Running,
        );
        record.pool = Some(np_core::PoolInfo {
            id: id.clone(),
            name: spec.pool.clone(),
            provider_name: spec.provider.clone(),
            supported_labels: spec.labels.iter().cloned().collect(),
            priority: spec.priority,
            paused: false,
        });
        let registration = ComponentRegistration::register(&shared.zk, record).await?;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let span = info_span!("pool", provider = %spec.provider, pool = %spec.pool);
        let mut worker = PoolWorker {
            spec,
            id,
            shared,
            provider,
            registration,
            handlers: HashMap::new(),
            order: Vec::new(),
            paused: false,
            quota_blocked_until: None,
            draining: false,
            done_tx,
            quota_warned: std::sync::Mutex::new(None),
            last_limits: std::sync::Mutex::new((None, None)),
        };
        async move {
            let mut req_events = worker.shared.requests.subscribe();
            let mut node_events = worker.shared.nodes.subscribe();
            let mut pool_events = worker.shared.pools.subscribe();
            let mut lock_events = worker.shared.request_locks.subscribe();
            let mut session = worker.shared.zk.subscribe();
            let mut safety = tokio::time::interval_at(tokio::time::Instant::now() + SAFETY_PASS, SAFETY_PASS);
            info!(id = %worker.id, "pool worker started");
            let recheck = worker.provider.usage_refresh();
            let drain_deadline = tokio::time::sleep(std::time::Duration::from_secs(86400));
            tokio::pin!(drain_deadline);
            // Only events that can change this pool's decisions trigger a pass.
            let mut wake = true;
            loop {
                if wake {
                    worker.work().await;
                }
                if worker.draining && worker.handlers.is_empty() {
                    break;
                }
                wake = false;
                let recheck_after = worker.recheck_in(recheck);
                tokio::select! {
                    _ = cancel.cancelled(), if !worker.draining => {
                        // Stop taking requests; finish the ones in flight (bounded).
                        info!(in_flight = worker.handlers.len(), "pool worker draining");
                        worker.draining = true;
                        wake = true;
                        drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                    }
                    _ = &mut drain_deadline, if worker.draining => break,
                    r = req_events.recv() => wake |= worker.request_event_matters(r.ok()),
                    r = node_events.recv() => wake |= worker.node_event_matters(r.ok()),
                    r = lock_events.recv() => wake |= worker.lock_event_matters(r.ok()),
                    _ = pool_events.recv() => wake = true,
                    // A lost session takes every lock with it; a new one may
                    // let work that waited go on.
                    changed = session.changed() => {
                        if changed.is_err() { break; }
                        wake = true;
                    }
                    _ = safety.tick() => wake = true,
                    // Paused at quota: cloud-side usage and limits change
                    // without ZooKeeper events; look again now and then.
                    _ = tokio::time::sleep(recheck_after.unwrap_or_default()),
                        if worker.paused && recheck_after.is_some() => {
                        wake = true;
                    }
                    Some(done) = done_rx.recv() => {
                        worker.launch_done(done).await;
                        wake = true;
                    }
                }
                // Coalesce bursts: everything already queued is covered by one pass.
                // (A closed cache stream only happens at shutdown.)
                drain_events(&mut req_events, |ev| wake |= worker.request_event_matters(ev));
                drain_events(&mut node_events, |ev| wake |= worker.node_event_matters(ev));
                drain_events(&mut lock_events, |ev| wake |= worker.lock_event_matters(ev));
                while pool_events.try_recv().is_ok() {
                    wake = true;
                }
                while let Ok(done) = done_rx.try_recv() {
                    worker.launch_done(done).await;
                    wake = true;
                }
                if pool_events.is_closed() {
                    pool_events = pool_events.resubscribe();
                }
            }
            worker.shutdown().await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Whether a request-cache event can change this pool's decisions: a
    /// request it could take, or one it is working on (`None`: events were
    /// lost, re-scan).
    fn request_event_matters(&self, event: Option<CacheEvent>) -> bool {
        let Some(event) = event else { return true };
        match event.kind {
            CacheEventKind::Resynced => true,
            _ if self.handlers.contains_key(&event.id) => true,
            CacheEventKind::Removed | CacheEventKind::LockChanged => false,
            CacheEventKind::Upserted => self.shared.requests.get(&event.id).is_some_and(|r| {
                r.value.state == RequestState::Requested && !r.value.declined_by.contains(&self.id)
            }),
        }
    }

    /// Whether a request-lock event can change this pool's decisions: the
    /// lock of a request this pool could take went away (its holder let go,
    /// or died and its session expired). Our own locks never matter.
    fn lock_event_matters(&self, event: Option<CacheEvent>) -> bool {
        let Some(event) = event else { return true };
        match event.kind {
            CacheEventKind::Resynced => true,
            _ if self.handlers.contains_key(&event.id) => false,
            _ => {
                !self.shared.request_locks.is_locked(&event.id)
                    && self.shared.requests.get(&event.id).is_some_and(|r| {
                        r.value.state == RequestState::Requested && !r.value.declined_by.contains(&self.id)
                    })
            }
        }
    }

    /// Whether a node-cache event can change this pool's decisions: a node
    /// went away (quota freed), or one of this pool's nodes became reusable.
    fn node_event_matters(&self, event: Option<CacheEvent>) -> bool {
        let Some(event) = event else { return true };
        match event.kind {
            CacheEventKind::Resynced | CacheEventKind::Removed => true,
            CacheEventKind::Upserted | CacheEventKind::LockChanged => {
                self.shared.nodes.get(&event.id).is_some_and(|e| {
                    let n = &e.value;
                    n.provider.as_deref() == Some(&self.spec.provider)
                        && n.state == NodeState::Ready
                        && n.allocated_to.is_none()
                        && !e.is_locked()
                })
            }
        }
    }

    /// When a paused pool should look at its quota again without an event:
    /// the provider's cloud-side refresh interval, or the end of a quota
    /// back-off, whichever comes first.
    fn recheck_in(&self, refresh: Option<std::time::Duration>) -> Option<std::time::Duration> {
        let backoff = self
            .quota_blocked_until
            .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
            .filter(|d| !d.is_zero());
        match (refresh, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn shutdown(&mut self) {
        info!(id = %self.id, in_flight = self.handlers.len(), "pool worker stopping");
        for (_, handler) in self.handlers.drain() {
            for slot in handler.slots {
                if let Some(lock) = slot.lock {
                    let _ = lock.release().await;
                }
            }
            let _ = handler.lock.release().await;
        }
        let _ = self.registration.unregister().await;
    }

    async fn work(&mut self) {
        self.drop_lost_handlers();
        if !self.shared.zk.status().connected {
            // Nothing can be decided without ZooKeeper; the reconnect wakes us.
            return;
        }
        self.work_pass().await;
    }

    /// Forgets every request whose lock went with an expired session: none
    /// of its locks is ours any more, so nothing is written for it (the
    /// request is reset by whoever sees it lost, maybe this launcher's own
    /// watcher). Its launches notice the lost node locks themselves.
    fn drop_lost_handlers(&mut self) {
        let lost: Vec<String> =
            self.handlers.iter().filter(|(_, h)| !h.lock.is_valid()).map(|(id, _)| id.clone()).collect();
        for id in lost {
            if let Some(handler) = self.handlers.remove(&id) {
                self.remove_order(&id);
                warn!(request = %id, "request lock lost with the ZooKeeper session; dropping the request unchanged");
                for slot in handler.slots {
                    if let Some(lock) = slot.lock {
                        lock.disarm();
                    }
                }
                handler.lock.disarm();
            }
        }
    }

    async fn work_pass(&mut self) {
        // Our own registration must be visible before we decide anything
        // that depends on the set of registered pools.
        let registered: Vec<np_core::PoolInfo> =
            self.shared.pools.values().iter().filter_map(|c| c.pool.clone()).collect();
        if !registered.iter().any(|p| p.id == self.id) {
            return;
        }
        let ids: Vec<String> = self.order.clone();
        let mut paused = false;
        for id in ids {
            if !self.advance(&id, &registered).await {
                if self.draining {
                    // Stopping: do not wait for quota; let another launcher take it.
                    self.release_unchanged(&id).await;
                } else {
                    paused = true;
                }
            }
        }
        self.set_paused(paused).await;
        if !self.draining {
            // A paused pool still declines what it could never serve.
            self.assign(&registered, paused).await;
        }
    }

    async fn set_paused(&mut self, paused: bool) {
        if self.paused != paused {
            self.paused = paused;
            info!(paused, "pool pause state changed");
            if let Err(e) = self
                .registration
                .update(|r| {
                    if let Some(p) = r.pool.as_mut() {
                        p.paused = paused;
                    }
                })
                .await
            {
                warn!(error = %e, "cannot update pool component");
            }
        }
    }

    // === selection ===

    async fn assign(&mut self, registered: &[np_core::PoolInfo], only_declines: bool) {
        let mut candidates: Vec<Arc<NodeRequest>> = self
            .shared
            .requests
            .values()
            .into_iter()
            .filter(|r| {
                r.state == RequestState::Requested
                    && !r.declined_by.contains(&self.id)
                    && !self.handlers.contains_key(&r.id)
                    // Held by someone (one of our pools, or another
                    // launcher): its release is a lock event that wakes us.
                    && !self.shared.request_locks.is_locked(&r.id)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let labels = self.spec.labels.clone();
        let lacking = |r: &NodeRequest| r.node_types.iter().filter(|l| !labels.contains(*l)).count();
        candidates.sort_by(|a, b| {
            (lacking(a), priority_prefix(&a.id), a.relative_priority, sequence(&a.id)).cmp(&(
                lacking(b),
                priority_prefix(&b.id),
                b.relative_priority,
                sequence(&b.id),
            ))
        });
        for req in candidates {
            if let Some(max) = self.spec.max_concurrency {
                if self.handlers.len() >= max as usize {
                    break;
                }
            }
            let able: Vec<&np_core::PoolInfo> = registered
                .iter()
                .filter(|p| {
                    !req.declined_by.contains(&p.id)
                        && req.node_types.iter().all(|l| p.supported_labels.contains(l))
                })
                .collect();
            if let Some(wanted) = &req.provider {
                if *wanted != self.spec.provider && able.iter().any(|p| p.provider_name == *wanted) {
                    continue;
                }
            }
            if able.iter().any(|p| p.id != self.id && p.priority < self.spec.priority && !p.paused) {
                continue;
            }
            let lacks = lacking(&req) > 0;
            if lacks && able.iter().any(|p| p.id != self.id) {
                continue;
            }
            if only_declines && !lacks && self.could_ever_fit(&req.node_types).await {
                continue;
            }
            if self.spec.never_launch && !lacks && !self.has_free_nodes(&req.node_types) {
                continue;
            }
            if !self.tenant_has_room(&req) {
                debug!(request = %req.id, tenant = ?req.tenant_name, "deferring: tenant at its resource limit");
                continue;
            }
            if !self.try_accept(&req.id, lacks, registered).await {
                continue;
            }
            if self.paused && !only_declines {
                // Newly paused: from here on only declines.
                return Box::pin(self.assign(registered, true)).await;
            }
        }
    }

    /// The nodes this pool could hand out now for `label`: ready,
    /// unallocated, unlocked, of this provider and pool (the node cache's
    /// index), and not already picked for another request.
    fn free_nodes(&self, label: &str, claimed: &HashSet<String>) -> Vec<String> {
        self.shared.nodes.index(|ix| {
            ix.free(&self.spec.provider, &self.spec.pool, label)
                .map(|ids| ids.iter().filter(|id| !claimed.contains(*id)).cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Whether this pool has enough free (ready, unallocated, unlocked) nodes
    /// for every label of the request (upstream's label quota for static pools).
    fn has_free_nodes(&self, labels: &[String]) -> bool {
        let claimed = self.claimed();
        let mut wanted: HashMap<&str, usize> = HashMap::new();
        for l in labels {
            *wanted.entry(l.as_str()).or_default() += 1;
        }
        wanted.iter().all(|(l, n)| self.free_nodes(l, &claimed).len() >= *n)
    }

    /// Upstream's tenant check: the tenant's usage over all nodes plus this
    /// request's needs (labels this pool has) must fit its limits.
    fn tenant_has_room(&self, req: &NodeRequest) -> bool {
        let Some(tenant) = req.tenant_name.as_deref() else { return true };
        let Some(limits) = self.spec.tenant_limits.get(tenant) else { return true };
        let mut left = limits.clone();
        if let Some(used) = self.shared.nodes.index(|ix| ix.tenant(tenant).cloned()) {
            left.subtract(&used);
        }
        for label in req.node_types.iter().filter(|l| self.spec.labels.contains(*l)) {
            left.subtract(&self.provider.quota_for_label(&self.spec.pool, label));
        }
        left.non_negative()
    }

    /// Locks and re-reads a request, then declines or accepts it.
    async fn try_accept(&mut self, id: &str, lacks: bool, registered: &[np_core::PoolInfo]) -> bool {
        let zk = self.shared.zk.clone();
        if !self.shared.attempts.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned()) {
            // Another of our pools is taking it; if it lets go, the lock
            // event wakes us.
            return false;
        }
        let attempt = zk.lock_request(id, LockOptions::try_once()).await;
        self.shared.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let lock = match attempt {
            Ok(Some(lock)) => lock,
            // Busy: its release is a request-lock event that wakes us.
            Ok(None) => return false,
            Err(e) => {
                debug!(request = id, error = %e, "cannot lock request");
                return false;
            }
        };
        // After taking the lock upstream re-reads the request. The cached copy
        // is used instead, and the `pending` write below is conditional on its
        // version: if anyone changed the request meanwhile, the write fails
        // and the request is read again.
        let wanted =
            |r: &NodeRequest| r.state == RequestState::Requested && !r.declined_by.contains(&self.id);
        let (request, mut version) = match self.shared.requests.get(id) {
            Some(e) if wanted(&e.value) => ((*e.value).clone(), Some(e.version)),
            _ => match zk.get_request(id).await {
                Ok(Some((r, stat))) if wanted(&r) => (r, Some(stat.version)),
                Ok(_) => {
                    let _ = lock.release().await;
                    return false;
                }
                Err(e) => {
                    warn!(request = id, error = %e, "cannot read request");
                    let _ = lock.release().await;
                    return false;
                }
            },
        };
        let too_big = !lacks && !self.could_ever_fit(&request.node_types).await;
        let images = if lacks || too_big {
            Some(Images::new())
        } else if !self.labels_ready(&request.node_types).await {
            None
        } else {
            self.newest_uploads(&request.node_types).await
        };
        let no_image = images.is_none();
        let slots = request
            .node_types
            .iter()
            .map(|l| Slot {
                label: l.clone(),
                launched: None,
                node: None,
                lock: None,
                state: SlotState::Empty,
            })
            .collect();
        let images = images.unwrap_or_default();
        let mut handler =
            Handler { request, lock, slots, started: std::time::Instant::now(), images, chosen_az: None };
        if lacks || too_big || no_image || self.spec.max_servers == Some(0) {
            info!(request = id, lacks, too_big, no_image, "declining request");
            // Conditional on the cached copy's version: a decline written
            // over a stale copy would drop another pool's decline.
            self.decline(handler, registered, version).await;
            return true;
        }
        let pending = |r: &mut NodeRequest| r.set_state(RequestState::Pending);
        let fenced = handler.lock.fenced();
        match self.store_locked(&fenced, &mut handler.request, version.take(), wanted, pending).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = handler.lock.release().await;
                return false;
            }
            Err(e) => {
                debug!(request = id, error = %e, "request vanished while accepting");
                let _ = handler.lock.release().await;
                return false;
            }
        }
        info!(request = id, labels = ?handler.request.node_types, "accepted request");
        self.handlers.insert(id.to_owned(), handler);
        self.order.push(id.to_owned());
        if !self.advance(id, registered).await {
            self.set_paused(true).await;
        }
        true
    }

    // === filling and completing ===

    /// Fills empty slots and completes the request when it can. Returns false
    /// when the handler is waiting for quota (the pool is paused).
    async fn advance(&mut self, id: &str, registered: &[np_core::PoolInfo]) -> bool {
        let Some(mut handler) = self.handlers.remove(id) else { return true };
        let mut waiting_for_quota = false;
        for i in 0..handler.slots.len() {
            if handler.slots[i].state != SlotState::Empty {
                continue;
            }
            if (handler.request.reuse || self.spec.never_launch) && self.try_reuse(&mut handler, i).await {
                continue;
            }
            if self.spec.never_launch {
                // Static pools never launch and never pause (upstream
                // PAUSE_AT_QUOTA = False): give the request back unchanged.
                self.handlers.insert(id.to_owned(), handler);
                self.release_unchanged(id).await;
                return true;
            }
            if !self.has_quota(&handler.slots[i].label).await {
                if handler.request.requestor.as_deref() == Some(MIN_READY_REQUESTOR) {
                    info!(request = id, "at quota: declining min-ready request");
                    self.remove_order(id);
                    self.decline(handler, registered, None).await;
                    return true;
                }
                self.free_oldest_unused_node().await;
                waiting_for_quota = true;
                break;
            }
            if !self.launch_slot(&mut handler, i).await {
                // Another launcher's node took the pool's last room first.
                waiting_for_quota = true;
                break;
            }
        }
        let states: Vec<SlotState> = handler.slots.iter().map(|s| s.state).collect();
        if states.iter().all(|s| *s == SlotState::Ready) {
            self.remove_order(id);
            self.fulfil(handler).await;
            return true;
        }
        if states.contains(&SlotState::Failed) && !states.contains(&SlotState::Launching) {
            self.remove_order(id);
            self.decline(handler, registered, None).await;
            return true;
        }
        self.handlers.insert(id.to_owned(), handler);
        !waiting_for_quota
    }

    fn remove_order(&mut self, id: &str) {
        self.order.retain(|x| x != id);
    }

    fn claimed(&self) -> HashSet<String> {
        self.handlers.values().flat_map(|h| h.slots.iter().filter_map(|s| s.node.clone())).collect()
    }

    async fn try_reuse(&self, handler: &mut Handler, i: usize) -> bool {
        let label = handler.slots[i].label.clone();
        let mut claimed = self.claimed();
        claimed.extend(handler.slots.iter().filter_map(|s| s.node.clone()));
        let mut candidates = self.free_nodes(&label, &claimed);
        // Upstream's `checkReusableNode`: once the request has a zone, only
        // nodes in it.
        if let Some(az) = &handler.chosen_az {
            candidates.retain(|id| {
                self.shared.nodes.get(id).is_some_and(|e| e.value.az.as_deref() == Some(az.as_str()))
            });
        }
        // Node locks are taken in the request lock's session: if that one is
        // gone, so is the right to allocate for the request.
        let zk = handler.lock.fenced();
        for node_id in candidates {
            let Ok(Some(lock)) = zk.lock_node(&node_id, LockOptions::try_once()).await else { continue };
            // As for requests: the cached copy, written back only over the
            // version it was read at (upstream re-reads after the lock).
            let free = |n: &Node| n.state == NodeState::Ready && n.allocated_to.is_none();
            let (node, version) = match self.shared.nodes.get(&node_id) {
                Some(e) if free(&e.value) => ((*e.value).clone(), e.version),
                _ => {
                    let _ = lock.release().await;
                    continue;
                }
            };
            let mut node = node;
            node.allocated_to = Some(handler.request.id.clone());
            node.tenant_name = handler.request.tenant_name.clone();
            node.requestor = handler.request.requestor.clone();
            match lock.fenced().update_node_cached(&self.shared.nodes, &node, Some(version)).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = lock.release().await;
                    continue;
                }
            }
            debug!(request = %handler.request.id, node = %node_id, label, "reusing ready node");
            // Upstream's `nodeReusedNotification`: the request's later nodes
            // go to this node's zone.
            if handler.chosen_az.is_none() {
                handler.chosen_az = node.az.clone().filter(|z| !z.is_empty());
            }
            let slot = &mut handler.slots[i];
            slot.node = Some(node_id);
            slot.lock = Some(lock);
            slot.state = SlotState::Ready;
            return true;
        }
        false
    }

    /// What this pool's nodes (`pool_only`) or all the provider's nodes use,
    /// from the node cache's index (no scan).
    fn usage(&self, pool_only: bool) -> Quota {
        let price = |pool: &str, label: &str| self.provider.quota_for_label(pool, label);
        self.shared.nodes.index(|ix| {
            let usage = if pool_only {
                ix.pool(&self.spec.provider, &self.spec.pool).map(|p| &p.usage)
            } else {
                ix.provider(&self.spec.provider)
            };
            usage.map_or_else(Quota::zero, |u| u.total(price))
        })
    }

    /// Room for one more node of `label` (upstream's `hasRemainingQuota`):
    /// pool limits minus the pool's usage, and (unless ignored) the cloud's
    /// limits minus the provider's usage.
    async fn has_quota(&self, label: &str) -> bool {
        if self.quota_blocked_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            return false;
        }
        let needed = self.provider.quota_for_label(&self.spec.pool, label);
        let pool_used = self.usage(true);
        let mut pool_left = self.spec.limits.clone();
        pool_left.subtract(&pool_used).subtract(&needed);
        if !pool_left.non_negative() {
            return false;
        }
        if self.spec.ignore_provider_quota {
            return true;
        }
        let limits = match self.cloud_limits().await {
            Ok(l) => l,
            Err(e) => {
                // Once a minute: the pool asks again at every pass.
                let mut last = self.quota_warned.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                    warn!(error = %e, "cannot read provider quota; assuming none left");
                    *last = Some(std::time::Instant::now());
                }
                return false;
            }
        };
        if limits.is_unlimited() {
            return true;
        }
        let used = self.usage(false);
        let mut left = limits;
        left.subtract(&used).subtract(&self.unmanaged_usage().await).subtract(&needed);
        left.non_negative()
    }

    /// The cloud's limits, read with a short deadline ([`QUOTA_READ_TIMEOUT`]).
    /// When the cloud cannot answer (an error, a hung call), the last limits
    /// read stand, as upstream keeps its cached quota, and the cloud is not
    /// asked again for [`QUOTA_RETRY_AFTER`]: a hung limits call costs a pool
    /// one short wait a minute, not one per pass.
    async fn cloud_limits(&self) -> Result<Quota, np_provider::ProviderError> {
        let now = tokio::time::Instant::now();
        let (last, skip_until) = self.last_limits.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(l), Some(until)) = (&last, skip_until) {
            if now < until {
                return Ok(l.clone());
            }
        }
        let read =
            np_provider::with_deadline("quota limits", QUOTA_READ_TIMEOUT, self.provider.quota_limits())
                .await;
        let mut state = self.last_limits.lock().unwrap_or_else(|p| p.into_inner());
        match (read, last) {
            (Ok(l), _) => {
                *state = (Some(l.clone()), None);
                Ok(l)
            }
            (Err(e), Some(l)) => {
                warn!(error = %e, "cannot read provider quota; using the last limits read for a minute");
                *state = (Some(l.clone()), Some(now + QUOTA_RETRY_AFTER));
                Ok(l)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// What the cloud's instances that are not nodes of this provider use
    /// (upstream's `unmanagedQuotaUsed`): instances without this provider's
    /// tag, and leaked ones whose node is gone. Unknown (an error): none.
    async fn unmanaged_usage(&self) -> Quota {
        let mut used = Quota::zero();
        let instances = match np_provider::with_deadline(
            "instance usage",
            QUOTA_READ_TIMEOUT,
            self.provider.instance_usage(),
        )
        .await
        {
            Ok(i) => i,
            Err(e) => {
                debug!(error = %e, "cannot list the cloud's instances; not counting unmanaged ones");
                return used;
            }
        };
        for i in instances {
            let ours = i.metadata.get(np_provider::META_PROVIDER).is_some_and(|p| *p == self.spec.provider);
            let known = i
                .metadata
                .get(np_provider::META_NODE_ID)
                .is_some_and(|id| self.shared.nodes.get(id).is_some());
            if !(ours && known) {
                used.add(&i.quota);
            }
        }
        used
    }

    /// Whether the driver can launch every label of the request that boots
    /// no diskimage (upstream's `labelReady` in `imagesAvailable`: an
    /// OpenStack cloud image missing in Glance; [`cloud_image_ready`]).
    async fn labels_ready(&self, labels: &[String]) -> bool {
        let mut seen = HashSet::new();
        for label in labels {
            if !seen.insert(label.as_str()) {
                continue;
            }
            if self.spec.label_settings.get(label).is_some_and(|s| s.diskimage.is_some()) {
                continue;
            }
            if !cloud_image_ready(self.provider.as_ref(), &self.spec.pool, label).await {
                info!(label, "the label's cloud image is not available in this provider");
                return false;
            }
        }
        true
    }

    /// The newest ready upload in this provider of every diskimage the
    /// request's labels boot; `None` if one has none (upstream's
    /// `imagesAvailable`; cloud images always are available).
    async fn newest_uploads(&self, labels: &[String]) -> Option<Images> {
        let mut images = Images::new();
        for label in labels {
            let Some(image) = self.spec.label_settings.get(label).and_then(|s| s.diskimage.as_deref()) else {
                continue;
            };
            if images.contains_key(image) {
                continue;
            }
            match self.shared.zk.most_recent_upload(image, &self.spec.provider).await {
                Ok(Some((path, upload))) => {
                    images.insert(image.to_owned(), (path, upload.external_id));
                }
                Ok(None) => {
                    info!(image, label, "no ready upload of the diskimage");
                    return None;
                }
                Err(e) => {
                    warn!(image, error = %e, "cannot read the diskimage's uploads");
                    return None;
                }
            }
        }
        Some(images)
    }

    /// Whether the whole request could ever fit an empty pool and provider
    /// (upstream's `hasProviderQuota`, the static decline check).
    async fn could_ever_fit(&self, labels: &[String]) -> bool {
        let mut needed = Quota::zero();
        for label in labels {
            needed.add(&self.provider.quota_for_label(&self.spec.pool, label));
        }
        let mut pool = self.spec.limits.clone();
        if !pool.subtract(&needed).non_negative() {
            return false;
        }
        if self.spec.ignore_provider_quota {
            return true;
        }
        match self.cloud_limits().await {
            Ok(mut limits) => limits.subtract(&needed).non_negative(),
            Err(_) => true,
        }
    }

    /// At quota, upstream deletes the oldest unused ready node of the pool so
    /// that another label can be launched.
    async fn free_oldest_unused_node(&self) {
        let claimed = self.claimed();
        let mut idle: Vec<Arc<Node>> = self.shared.nodes.with_index(|ix, lookup| {
            // A node of several labels is in several of the index's sets.
            let ids: BTreeSet<&String> = ix
                .free_in_pool(&self.spec.provider, &self.spec.pool)
                .filter(|id| !claimed.contains(*id))
                .collect();
            ids.into_iter().filter_map(|id| lookup(id).map(|e| e.value)).collect()
        });
        idle.sort_by(|a, b| a.state_time.total_cmp(&b.state_time));
        let Some(oldest) = idle.first() else { return };
        let zk = &self.shared.zk;
        if let Ok(Some(lock)) = zk.lock_node(&oldest.id, LockOptions::try_once()).await {
            let fenced = lock.fenced();
            if let Ok(Some((mut node, _))) = fenced.get_node(&oldest.id).await {
                if node.state == NodeState::Ready && node.allocated_to.is_none() {
                    info!(node = %node.id, "at quota: deleting oldest unused ready node");
                    node.set_state(NodeState::Deleting);
                    let _ = fenced.update_node(&node).await;
                }
            }
            let _ = lock.release().await;
        }
    }

    /// Whether the pool's limits leave room for `node` (just created, id
    /// and sequence `seq`) counting only the pool's nodes created before it.
    /// Launchers serving one pool (ours, or ours beside Python's) decide on
    /// caches that may lag each other by a few milliseconds, so two of them
    /// can both see the last free slot (upstream accepts the overshoot and
    /// lets the cloud refuse it). Node ids are one ZooKeeper sequence, and
    /// once the node cache has applied our own node's creation it holds
    /// every node created before ours: the earlier node keeps the slot and
    /// ours gives way, whoever made the other one. `None`: the cache did not
    /// catch up in time (the launch goes ahead, as upstream's would).
    async fn within_limits_in_sequence(&self, node: &Node, seq: u64) -> Option<bool> {
        if !self.shared.nodes.wait_created(seq, std::time::Duration::from_secs(5)).await {
            warn!(node = %node.id, "node cache did not catch up with our own create; not checking the pool's limits in sequence");
            return None;
        }
        let label = node.node_type.first().map_or("", |s| s.as_str());
        let mut left = self.spec.limits.clone();
        left.subtract(&self.provider.quota_for_label(&self.spec.pool, label));
        let price = |pool: &str, label: &str| self.provider.quota_for_label(pool, label);
        // The pool's usage less what its nodes created at or after ours use.
        let used = self.shared.nodes.index(|ix| {
            let Some(pool) = ix.pool(&self.spec.provider, &self.spec.pool) else { return Quota::zero() };
            let mut used = pool.usage.total(price);
            for cost in pool.created_since(seq) {
                match cost {
                    np_zk::node_index::Cost::Sized(q) => used.subtract(q),
                    np_zk::node_index::Cost::ByLabel(pool, label) => used.subtract(&price(pool, label)),
                };
            }
            used
        });
        left.subtract(&used);
        Some(left.non_negative())
    }

    /// A zone at random among the provider's zones for this pool (upstream's
    /// `setNodeMetadata`); `None` when it has none, or cannot say (then the
    /// driver or the cloud places the node).
    async fn pick_zone(&self) -> Option<String> {
        let zones = np_provider::with_deadline(
            "availability zones",
            QUOTA_READ_TIMEOUT,
            self.provider.availability_zones(&self.spec.pool),
        )
        .await;
        match zones {
            Ok(zones) if !zones.is_empty() => {
                let i = (uuid::Uuid::new_v4().as_u128() % zones.len() as u128) as usize;
                zones.into_iter().nth(i)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot list the provider's availability zones; the cloud places the node");
                None
            }
        }
    }

    /// Creates, locks and starts launching the node of slot `i`. False when
    /// the pool turned out to be full once every node created before ours
    /// was counted (the slot stays empty; the pool waits for quota).
    async fn launch_slot(&mut self, handler: &mut Handler, i: usize) -> bool {
        // The node is created and locked in the request lock's session.
        let zk = handler.lock.fenced();
        let label = handler.slots[i].label.clone();
        let mut node = Node::new(NodeState::Init);
        node.provider = Some(self.spec.provider.clone());
        node.pool = Some(self.spec.pool.clone());
        node.cloud = self.spec.cloud.clone();
        node.node_type = vec![label.clone()];
        node.allocated_to = Some(handler.request.id.clone());
        node.launcher = Some(self.id.clone());
        node.tenant_name = handler.request.tenant_name.clone();
        node.requestor = handler.request.requestor.clone();
        node.attributes = self.spec.node_attributes.clone();
        let settings = self.spec.label_settings.get(&label).cloned().unwrap_or_default();
        node.connection_type = Some(settings.connection_type.clone());
        node.connection_port = Value::from(settings.connection_port);
        node.python_path = Some(settings.python_path.clone());
        node.username = settings.username.clone();
        node.shell_type = settings.shell_type.clone();
        node.image_id = settings.image_id.clone();
        // A diskimage label boots the newest ready upload (upstream: the
        // node's image_id is the upload's znode path).
        let mut image_external_id = None;
        if let Some(image) = &settings.diskimage {
            let Some((path, external_id)) = handler.images.get(image) else {
                warn!(image, "no ready upload of the diskimage in this provider");
                handler.slots[i].state = SlotState::Failed;
                return true;
            };
            node.image_id = Some(path.clone());
            image_external_id = external_id.clone();
        }
        node.resources = Some(self.provider.quota_for_label(&self.spec.pool, &label).to_resources());
        if handler.chosen_az.is_none() {
            handler.chosen_az = self.pick_zone().await;
        }
        let after = self.shared.nodes.created_watermark();
        let stat = match zk.create_node_once(&mut node, after).await {
            Ok(stat) => stat,
            Err(e) => {
                warn!(error = %e, "cannot create node");
                handler.slots[i].state = SlotState::Failed;
                return true;
            }
        };
        self.shared.nodes.note_write(&node.id, node.clone(), &stat);
        if !self.spec.limits.is_unlimited() {
            if let Some(seq) = np_zk::cache::record_sequence(&node.id) {
                if self.within_limits_in_sequence(&node, seq).await == Some(false) {
                    info!(node = %node.id, "a node created before ours took the pool's last room; giving way");
                    if let Err(e) = zk.delete_node(&mut node).await {
                        // Left in `init` without a lock: the orphan sweep
                        // of maintenance removes it.
                        warn!(node = %node.id, error = %e, "cannot delete the node that gave way");
                    }
                    return false;
                }
            }
        }
        let lock = match zk.lock_node(&node.id, LockOptions::try_once()).await {
            Ok(Some(lock)) => lock,
            other => {
                warn!(node = %node.id, ?other, "cannot lock new node");
                handler.slots[i].state = SlotState::Failed;
                return true;
            }
        };
        node.set_state(NodeState::Building);
        // From here on the launch writes through the node lock's session.
        let zk = lock.fenced();
        match zk.update_node_cached(&self.shared.nodes, &node, None).await {
            Ok(_) => {}
            Err(e) => warn!(node = %node.id, error = %e, "cannot mark node building"),
        }
        let slot = &mut handler.slots[i];
        slot.node = Some(node.id.clone());
        slot.lock = Some(lock);
        slot.state = SlotState::Launching;
        slot.launched = Some(std::time::Instant::now());
        let tx = self.done_tx.clone();
        let nodes = self.shared.nodes.clone();
        let provider = self.provider.clone();
        let policy = self.spec.launch.clone();
        let request = handler.request.id.clone();
        let az = handler.chosen_az.clone();
        // Upstream's "safe attributes" of a request, for templated properties.
        let attributes = serde_json::json!({
            "id": handler.request.id,
            "requestor": handler.request.requestor,
            "tenant_name": handler.request.tenant_name,
            "requestor_data": handler.request.requestor_data,
            "event_id": handler.request.event_id,
        });
        let stats = crate::launch::AttemptStats {
            metrics: self.shared.metrics.clone(),
            provider: self.spec.provider.clone(),
            requestor: handler.request.requestor.clone(),
            started: std::time::Instant::now(),
        };
        let span = info_span!("launch", node = %node.id, request = %request, label);
        tokio::spawn(
            async move {
                let outcome = run_launch(
                    zk,
                    nodes,
                    provider,
                    node,
                    policy,
                    settings.host_key_checking,
                    crate::launch::LaunchContext {
                        request_attributes: Some(attributes),
                        image_external_id,
                        az,
                        stats: Some(stats),
                    },
                )
                .await;
                let _ = tx.send(LaunchDone { request, slot: i, outcome });
            }
            .instrument(span),
        );
        true
    }

    async fn launch_done(&mut self, done: LaunchDone) {
        let Some(handler) = self.handlers.get_mut(&done.request) else { return };
        let Some(slot) = handler.slots.get_mut(done.slot) else { return };
        let took = slot.launched.take().map(|t| t.elapsed()).unwrap_or_default();
        // A failed launch's attempts were each recorded as they failed
        // (`launch::AttemptStats`), as upstream records them.
        let recorded = match &done.outcome {
            LaunchOutcome::Ready(n) => Some((crate::metrics::LaunchResult::Ready, n)),
            LaunchOutcome::Aborted(n) => Some((crate::metrics::LaunchResult::Quota, n)),
            LaunchOutcome::Failed(..) => None,
            // Upstream: the ZooKeeper session went during the launch.
            LaunchOutcome::LockLost(n) => Some((crate::metrics::LaunchResult::ZkSession, n)),
        };
        if let Some((result, node)) = recorded {
            self.shared.metrics.record_launch(&crate::metrics::Launch {
                provider: &self.spec.provider,
                label: &slot.label,
                az: node.az.as_deref(),
                requestor: handler.request.requestor.as_deref(),
                result,
                duration: took,
            });
        }
        match done.outcome {
            LaunchOutcome::Ready(_) => slot.state = SlotState::Ready,
            LaunchOutcome::Aborted(_) => {
                // Unlocked, the aborted node is deleted by cleanup; the label is
                // launched again once quota allows, and not before the back-off.
                self.quota_blocked_until = Some(tokio::time::Instant::now() + QUOTA_ERROR_BACKOFF);
                if let Some(lock) = slot.lock.take() {
                    let _ = lock.release().await;
                }
                slot.node = None;
                slot.state = SlotState::Empty;
            }
            LaunchOutcome::Failed(node, error) => {
                warn!(node = %node.id, error, "launch failed after retries");
                slot.state = SlotState::Failed;
            }
            LaunchOutcome::LockLost(_) => {
                // Its lock is gone: not ours to touch again.
                if let Some(lock) = slot.lock.take() {
                    lock.disarm();
                }
                slot.state = SlotState::Failed;
            }
        }
    }

    async fn fulfil(&mut self, mut handler: Handler) {
        let id = handler.request.id.clone();
        // The request may have vanished (Zuul cancelled it): the cache knows
        // without a round trip. A delete racing with the write below makes the
        // write fail; the nodes then keep a dangling `allocated_to`, which
        // cleanup clears, as upstream's DeletedNodeWorker does.
        if self.shared.requests.get(&id).is_none() {
            info!(request = %id, "request vanished; releasing its nodes");
            self.release_nodes(&mut handler, true).await;
            let _ = handler.lock.release().await;
            return;
        }
        let mut request = handler.request.clone();
        request.nodes = handler.slots.iter().filter_map(|s| s.node.clone()).collect();
        request.set_state(RequestState::Fulfilled);
        // Unlock the nodes, write `fulfilled`, release the request lock: in
        // this order (Zuul locks the nodes next), as one transaction.
        let node_locks: Vec<LockGuard> = handler.slots.iter_mut().filter_map(|s| s.lock.take()).collect();
        let Handler { lock, started, mut slots, .. } = handler;
        let zk = self.shared.zk.clone();
        if let Err((e, node_locks, lock)) =
            zk.fulfil_request(&self.shared.requests, &request, node_locks, lock).await
        {
            // Nothing was written. Put the node locks back where they were.
            let mut locks = node_locks.into_iter();
            for slot in slots.iter_mut().filter(|s| s.node.is_some()) {
                slot.lock = locks.next();
            }
            let handler = Handler {
                request: handler.request,
                lock,
                slots,
                started,
                images: handler.images,
                chosen_az: handler.chosen_az,
            };
            self.fulfil_failed(handler, e).await;
            return;
        }
        let latency = match request.created_time {
            Some(created) if created > 0.0 => {
                std::time::Duration::from_secs_f64((np_core::now() - created).max(0.0))
            }
            _ => started.elapsed(),
        };
        self.shared.metrics.record_fulfilled(&self.spec.provider, latency);
        info!(request = %id, nodes = ?request.nodes, elapsed_ms = started.elapsed().as_millis() as u64, "fulfilled request");
    }

    /// The fulfilment transaction did not land. With the request lock lost
    /// (session expiry) nothing is written: the request is reset by whoever
    /// finds it lost. A request deleted meanwhile (Zuul cancelled it) gives
    /// its nodes back. Otherwise (a node lock vanished, say) the request goes
    /// back to `requested`, its nodes unallocated, for a fresh start.
    async fn fulfil_failed(&mut self, mut handler: Handler, e: np_zk::ZkError) {
        let id = handler.request.id.clone();
        if !handler.lock.is_valid() {
            warn!(request = %id, error = %e, "request lock lost before fulfilment; leaving the request to be reset");
            for slot in handler.slots.iter_mut() {
                if let Some(l) = slot.lock.take() {
                    l.disarm();
                }
            }
            handler.lock.disarm();
            return;
        }
        let fenced = handler.lock.fenced();
        let gone = matches!(fenced.exists(&np_zk::paths::request(&id)).await, Ok(None));
        self.release_nodes(&mut handler, true).await;
        if gone {
            info!(request = %id, "request vanished during fulfilment; released its nodes");
        } else {
            warn!(request = %id, error = %e, "fulfilment failed; giving the request back");
            handler.request.set_state(RequestState::Requested);
            handler.request.nodes.clear();
            if let Err(e) = fenced.update_request_cached(&self.shared.requests, &handler.request, None).await
            {
                warn!(request = %id, error = %e, "cannot give the request back");
            }
        }
        let _ = handler.lock.release().await;
    }

    /// Unlocks every node of the handler; with `deallocate`, clears
    /// `allocated_to` on ready nodes first.
    async fn release_nodes(&self, handler: &mut Handler, deallocate: bool) {
        let mut releases = Vec::new();
        for slot in handler.slots.iter_mut() {
            if deallocate && slot.state == SlotState::Ready {
                if let (Some(id), Some(lock)) = (&slot.node, &slot.lock) {
                    let zk = lock.fenced();
                    if let Ok(Some((mut node, _))) = zk.get_node(id).await {
                        node.allocated_to = None;
                        let _ = zk.update_node_cached(&self.shared.nodes, &node, None).await;
                    }
                }
            }
            if let Some(lock) = slot.lock.take() {
                releases.push(lock.release());
            }
        }
        for r in futures::future::join_all(releases).await {
            if let Err(e) = r {
                warn!(error = %e, "cannot release node lock");
            }
        }
    }

    /// Gives a request back without declining it (upstream's
    /// `_declinedHandlerCleanup` without `declined_by`): allocations cleared,
    /// nodes unlocked, the request `requested` again for any pool.
    async fn release_unchanged(&mut self, id: &str) {
        let Some(mut handler) = self.handlers.remove(id) else { return };
        self.remove_order(id);
        if handler.slots.iter().any(|s| s.state == SlotState::Launching) {
            // Launches still running: keep the handler; they finish first.
            self.handlers.insert(id.to_owned(), handler);
            self.order.push(id.to_owned());
            return;
        }
        self.release_nodes(&mut handler, true).await;
        handler.request.set_state(RequestState::Requested);
        handler.request.nodes.clear();
        let zk = handler.lock.fenced();
        match zk.update_request_cached(&self.shared.requests, &handler.request, None).await {
            Ok(_) => {}
            Err(e) => debug!(request = id, error = %e, "cannot store released request"),
        }
        let _ = handler.lock.release().await;
        info!(request = id, "released request unchanged");
    }

    /// Stores `change` applied to `request`, which this pool has locked.
    /// With `version` the write is conditional on it: if the request changed
    /// since that copy was read (the cache had not seen another pool's
    /// decline or Zuul's new priority yet), it is read again, as upstream
    /// always re-reads after locking, and `change` applied to the fresh copy
    /// while it is still `wanted`. `Ok(false)`: no longer wanted, or gone.
    async fn store_locked(
        &self,
        zk: &Zk,
        request: &mut NodeRequest,
        mut version: Option<i32>,
        wanted: impl Fn(&NodeRequest) -> bool,
        change: impl Fn(&mut NodeRequest),
    ) -> Result<bool, np_zk::ZkError> {
        for _ in 0..STORE_ATTEMPTS {
            change(request);
            match zk.update_request_cached(&self.shared.requests, request, version.take()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_bad_version() => match zk.get_request(&request.id).await? {
                    Some((fresh, stat)) if wanted(&fresh) => {
                        *request = fresh;
                        version = Some(stat.version);
                    }
                    _ => return Ok(false),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Adds this pool to `declined_by` (failing the request once every
    /// registered pool has declined it) and gives the request back. With
    /// `version` (a cached copy's), the write is conditional, see
    /// [`PoolWorker::store_locked`]: a decline written over a stale copy
    /// would drop another pool's.
    async fn decline(
        &mut self,
        mut handler: Handler,
        registered: &[np_core::PoolInfo],
        version: Option<i32>,
    ) {
        let id = handler.request.id.clone();
        self.release_nodes(&mut handler, true).await;
        let me = self.id.clone();
        let decline = |r: &mut NodeRequest| {
            if !r.declined_by.contains(&me) {
                r.declined_by.push(me.clone());
            }
            let everyone_declined = registered.iter().all(|p| r.declined_by.contains(&p.id));
            r.set_state(if everyone_declined { RequestState::Failed } else { RequestState::Requested });
        };
        let requested = |r: &NodeRequest| r.state == RequestState::Requested;
        let fenced = handler.lock.fenced();
        if let Err(e) = self.store_locked(&fenced, &mut handler.request, version, requested, decline).await {
            debug!(request = %id, error = %e, "cannot store declined request");
        }
        let state = handler.request.state;
        let _ = handler.lock.release().await;
        info!(request = %id, %state, "declined request");
    }
}
