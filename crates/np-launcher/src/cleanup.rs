//! Background work of the launcher, driven by the node and request caches'
//! change streams (with a slow safety sweep):
//!
//! * delete unlocked nodes of our providers in cleanup states (`used`,
//!   `in-use` whose holder vanished, `failed`, `aborted`, `building` after a
//!   crash, `deleting`): lock, mark `deleting`, delete the instance, delete
//!   the znode (spec launcher §4.7). A `building` node whose launcher died
//!   before it could record the instance's id has its instance looked up by
//!   the node id it is tagged with, so the crash leaks nothing (upstream
//!   leaves that to the leak cleanup, two passes later). Every write goes
//!   through the node lock's session;
//! * clear `allocated_to` on unlocked ready nodes whose request is gone;
//! * keep `min-ready` nodes: one ephemeral request at priority 900 per missing
//!   node; fulfilled min-ready requests give their nodes back and are deleted.
//!   A label is only asked for when what it boots is available in one of the
//!   pools serving it (a ready upload of its diskimage, or a cloud image the
//!   driver finds; upstream's `labelImageIsAvailable`, looked at once per
//!   [`MIN_READY_RECHECK`]), and a label whose min-ready request failed waits
//!   as long before the next: passes follow every request event, so without
//!   that a label no pool can serve would be asked for again and again at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use np_core::{NodeRequest, NodeState, RequestState};
use np_provider::Provider;
use np_zk::{drain_events, CacheEvent, CacheEventKind, LockOptions};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pool::{cloud_image_ready, PoolSpec, SharedState};
use crate::MIN_READY_REQUESTOR;

/// How long min-ready leaves a label alone after its request failed, and
/// how long it trusts what it found about the label's image (upstream looks
/// again on each pass of its main loop, every 10 s by default).
pub const MIN_READY_RECHECK: Duration = Duration::from_secs(10);

/// A label `min-ready` keeps ready nodes of.
#[derive(Debug, Clone)]
pub struct MinReadyLabel {
    /// Its `min-ready`.
    pub want: u32,
    /// The pools of this launcher that serve it.
    pub sources: Vec<LabelSource>,
}

/// One pool serving a min-ready label.
#[derive(Debug, Clone)]
pub struct LabelSource {
    pub provider: String,
    pub pool: String,
    /// The diskimage the label boots in this pool (`None`: a cloud image,
    /// or a driver without images).
    pub diskimage: Option<String>,
}

/// The labels of `config` with a `min-ready` that `specs` (this launcher's
/// pools) serve, with the pools serving each.
pub fn min_ready_labels(config: &np_config::Config, specs: &[PoolSpec]) -> BTreeMap<String, MinReadyLabel> {
    config
        .labels
        .iter()
        .filter(|l| l.min_ready > 0)
        .filter_map(|l| {
            let sources: Vec<LabelSource> = specs
                .iter()
                .filter(|s| s.labels.contains(&l.name))
                .map(|s| LabelSource {
                    provider: s.provider.clone(),
                    pool: s.pool.clone(),
                    diskimage: s.label_settings.get(&l.name).and_then(|ls| ls.diskimage.clone()),
                })
                .collect();
            (!sources.is_empty()).then(|| (l.name.clone(), MinReadyLabel { want: l.min_ready, sources }))
        })
        .collect()
}

/// What min-ready remembers between passes, per label: when its last
/// request failed, and whether its image was available when last looked at
/// (and when). Passes follow every request event, so neither is asked for
/// more than once per [`MIN_READY_RECHECK`].
#[derive(Default)]
struct MinReadyState {
    failed: HashMap<String, Instant>,
    image: HashMap<String, (bool, Instant)>,
}

/// Runs the cleanup and min-ready work until `cancel` fires.
pub async fn run(
    shared: SharedState,
    providers: HashMap<String, Arc<dyn Provider>>,
    min_ready: BTreeMap<String, MinReadyLabel>,
    cancel: CancellationToken,
) {
    let deleting: InFlight = Arc::default();
    let mut min_ready_state = MinReadyState::default();
    let mut node_events = shared.nodes.subscribe();
    let mut req_events = shared.requests.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        // Only the nodes an event names are looked at; the sweep (and a
        // lagging or resynced stream) looks at everything.
        let mut dirty: HashSet<String> = HashSet::new();
        let mut full = false;
        // Requests that went away: their nodes may need deallocating.
        let mut requests_gone: Vec<String> = Vec::new();
        let mut requests_changed = false;
        let note_node =
            |ev: Result<CacheEvent, broadcast::error::RecvError>, dirty: &mut HashSet<String>| match ev {
                Ok(ev) if ev.kind == CacheEventKind::Resynced => true,
                Ok(ev) => {
                    dirty.insert(ev.id);
                    false
                }
                Err(_) => true,
            };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = node_events.recv() => full |= note_node(r, &mut dirty),
            r = req_events.recv() => match r {
                Ok(ev) if ev.kind == CacheEventKind::Removed => requests_gone.push(ev.id),
                Ok(ev) if ev.kind == CacheEventKind::Resynced => full = true,
                Ok(_) => requests_changed = true,
                Err(_) => full = true,
            },
            _ = sweep.tick() => full = true,
        }
        let nodes_open = drain_events(&mut node_events, |ev| match ev {
            Some(ev) => full |= note_node(Ok(ev), &mut dirty),
            None => full = true,
        });
        let requests_open = drain_events(&mut req_events, |ev| match ev {
            Some(ev) if ev.kind == CacheEventKind::Removed => requests_gone.push(ev.id),
            Some(_) => requests_changed = true,
            None => full = true,
        });
        if !nodes_open || !requests_open {
            return;
        }
        if full {
            node_events = node_events.resubscribe();
            req_events = req_events.resubscribe();
        }
        let scope = if full { None } else { Some(&dirty) };
        delete_nodes(&shared, &providers, &deleting, scope).await;
        if full {
            deallocate_orphans(&shared, None).await;
        } else if !requests_gone.is_empty() || !dirty.is_empty() {
            // The nodes an event named, and those allocated to a request that
            // went away (the node cache's index: no scan).
            let mut ids = dirty.clone();
            shared.nodes.index(|ix| {
                for request in &requests_gone {
                    ids.extend(ix.allocated_to(request).into_iter().flatten().cloned());
                }
            });
            deallocate_orphans(&shared, Some(&ids)).await;
        }
        let requests_gone = !requests_gone.is_empty();
        if !min_ready.is_empty() && (full || requests_changed || requests_gone || !dirty.is_empty()) {
            min_ready_pass(&shared, &providers, &min_ready, &mut min_ready_state).await;
        }
    }
}

/// Node deletions under way: id -> whether an event arrived meanwhile (the
/// node must then be looked at again when the deletion attempt returns, or
/// that event, e.g. the lock holder letting go, would be lost).
type InFlight = Arc<Mutex<HashMap<String, bool>>>;

/// Whether cleanup should delete this cached node now.
fn deletable(shared: &SharedState, providers: &HashMap<String, Arc<dyn Provider>>, id: &str) -> bool {
    shared.nodes.get(id).is_some_and(|entry| {
        let node = &entry.value;
        node.state.is_cleanup_state()
            && !entry.is_locked()
            && node.provider.as_deref().is_some_and(|p| providers.contains_key(p))
    })
}

async fn delete_nodes(
    shared: &SharedState,
    providers: &HashMap<String, Arc<dyn Provider>>,
    deleting: &InFlight,
    only: Option<&HashSet<String>>,
) {
    let candidates: Vec<String> = match only {
        Some(ids) => ids.iter().cloned().collect(),
        None => shared.nodes.ids(),
    };
    for id in candidates {
        {
            let mut map = deleting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = map.get_mut(&id) {
                *again = true;
                continue;
            }
            if !deletable(shared, providers, &id) {
                continue;
            }
            map.insert(id.clone(), false);
        }
        let Some(provider) = shared.nodes.get(&id).and_then(|e| e.value.provider.clone()) else { continue };
        let Some(provider) = providers.get(&provider).cloned() else { continue };
        let shared = shared.clone();
        let providers = providers.clone();
        let deleting = deleting.clone();
        tokio::spawn(async move {
            loop {
                let result = delete_one(&shared.zk, Some(&shared.nodes), provider.as_ref(), &id).await;
                if let Err(e) = result {
                    warn!(node = %id, error = %e, "node deletion failed; will retry");
                }
                let mut map = deleting.lock().unwrap_or_else(|p| p.into_inner());
                let again = map.get_mut(&id).is_some_and(|again| std::mem::replace(again, false));
                if !again || !deletable(&shared, &providers, &id) {
                    map.remove(&id);
                    break;
                }
            }
        });
    }
}

async fn delete_one(
    zk: &np_zk::Zk,
    nodes: Option<&np_zk::NodeCache>,
    provider: &dyn Provider,
    id: &str,
) -> anyhow::Result<()> {
    let lock = match zk.lock_node(id, LockOptions::try_once()).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            debug!(node = %id, "node is locked by someone else; not deleting it now");
            return Ok(());
        }
        // Already deleted (by us a moment ago, or by another launcher).
        Err(e) if e.is_no_node() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // Under our lock the cached record is current (its writers all hold the
    // lock); without a cache, read it.
    let fenced = lock.fenced();
    let cached = nodes.and_then(|c| c.get(id)).map(|e| (*e.value).clone());
    let mut node = match cached {
        Some(node) => node,
        None => match fenced.get_node(id).await? {
            Some((node, _)) => node,
            None => {
                let _ = lock.release().await;
                return Ok(());
            }
        },
    };
    if !node.state.is_cleanup_state() {
        lock.release().await?;
        return Ok(());
    }
    info!(node = %id, state = %node.state, "deleting node");
    if node.external_id.is_none() && node.state == NodeState::Building {
        // A launch that died between the cloud's create and recording the
        // id: find the instance by its tag.
        node.external_id = tagged_instance(provider, &node).await;
    }
    // Upstream marks the node `deleting` before the cloud delete. When the
    // driver finishes the delete in its first step (static nodes, instant
    // clouds) there is nothing for anyone to see in between, so the write is
    // only made when the delete actually takes time.
    let mut machine = node.external_id.clone().map(|ext| provider.delete(&ext));
    let first = match machine.as_mut() {
        Some(m) => Some(m.step().await),
        None => None,
    };
    let finished = matches!(
        first,
        None | Some(Ok(np_provider::Step::Done(()))) | Some(Err(np_provider::ProviderError::NotFound(_)))
    );
    if !finished {
        if node.state != NodeState::Deleting {
            node.set_state(NodeState::Deleting);
            match nodes {
                Some(cache) => fenced.update_node_cached(cache, &node, None).await?,
                None => fenced.update_node(&node).await?,
            };
        }
        if let Some(Err(e)) = first {
            let _ = lock.release().await;
            anyhow::bail!("cloud delete failed: {e}");
        }
        if let Some(machine) = machine {
            if let Err(e) = crate::launch::drive_delete(machine).await {
                let _ = lock.release().await;
                anyhow::bail!("cloud delete failed: {e}");
            }
        }
    }
    zk.delete_locked_node(&mut node, lock).await?;
    Ok(())
}

/// The cloud id of the instance tagged with this node's id and provider, if
/// the cloud has one.
async fn tagged_instance(provider: &dyn Provider, node: &np_core::Node) -> Option<serde_json::Value> {
    let instances = match np_provider::with_deadline(
        "instance listing",
        np_provider::CLOUD_CALL_TIMEOUT,
        provider.list_instances(),
    )
    .await
    {
        Ok(i) => i,
        Err(e) => {
            debug!(node = %node.id, error = %e, "cannot list instances to find the node's");
            return None;
        }
    };
    let found = instances.into_iter().find(|i| {
        i.metadata.get(np_provider::META_NODE_ID) == Some(&node.id)
            && i.metadata.get(np_provider::META_PROVIDER).map(String::as_str) == node.provider.as_deref()
    })?;
    info!(node = %node.id, instance = %found.external_id, "found the instance of a launch that died before recording it");
    Some(found.external_id)
}

async fn deallocate_orphans(shared: &SharedState, only: Option<&HashSet<String>>) {
    let candidates: Vec<String> = match only {
        Some(ids) => ids.iter().cloned().collect(),
        None => shared.nodes.ids(),
    };
    for id in candidates {
        let Some(entry) = shared.nodes.get(&id) else { continue };
        let node = &entry.value;
        let Some(request) = node.allocated_to.as_deref() else { continue };
        if node.state != NodeState::Ready || entry.is_locked() || shared.requests.get(request).is_some() {
            continue;
        }
        let zk = &shared.zk;
        // The cache may lag: confirm the request is really gone.
        if !matches!(zk.exists(&np_zk::paths::request(request)).await, Ok(None)) {
            continue;
        }
        let Ok(Some(lock)) = zk.lock_node(&node.id, LockOptions::try_once()).await else { continue };
        let fenced = lock.fenced();
        if let Ok(Some((mut fresh, stat))) = fenced.get_node(&node.id).await {
            if fresh.state == NodeState::Ready && fresh.allocated_to.as_deref() == Some(request) {
                debug!(node = %fresh.id, request, "request gone; deallocating node");
                fresh.allocated_to = None;
                // Versioned: an unconditional writer (a client that changed the
                // node without locking it) must not be overwritten.
                let _ =
                    fenced.set(&np_zk::paths::node(&fresh.id), &fresh.to_json(), Some(stat.version)).await;
            }
        }
        let _ = lock.release().await;
    }
}

async fn min_ready_pass(
    shared: &SharedState,
    providers: &HashMap<String, Arc<dyn Provider>>,
    min_ready: &BTreeMap<String, MinReadyLabel>,
    state: &mut MinReadyState,
) {
    if min_ready.is_empty() {
        return;
    }
    let zk = &shared.zk;
    let now = Instant::now();
    let mut outstanding: BTreeMap<String, u32> = BTreeMap::new();
    for req in shared.requests.values() {
        if req.requestor.as_deref() != Some(MIN_READY_REQUESTOR) {
            continue;
        }
        match req.state {
            RequestState::Fulfilled => {
                // Hand the nodes back (upstream does this without locks), then drop the request.
                for id in &req.nodes {
                    if let Ok(Some((mut node, _))) = zk.get_node(id).await {
                        if node.allocated_to.as_deref() == Some(req.id.as_str()) {
                            node.allocated_to = None;
                            if let Ok(stat) = zk.update_node(&node).await {
                                shared.nodes.note_write(id, node, &stat);
                            }
                        }
                    }
                }
                let _ = zk.delete_request(&req.id).await;
                // Until the caches show the node as free, this request still covers it.
                for label in &req.node_types {
                    *outstanding.entry(label.clone()).or_default() += 1;
                }
            }
            RequestState::Failed => {
                let _ = zk.delete_request(&req.id).await;
                for label in &req.node_types {
                    debug!(request = %req.id, label, "min-ready request failed; asking again later");
                    state.failed.insert(label.clone(), now);
                }
            }
            _ => {
                for label in &req.node_types {
                    *outstanding.entry(label.clone()).or_default() += 1;
                }
            }
        }
    }
    state.failed.retain(|_, at| now.duration_since(*at) < MIN_READY_RECHECK);
    for (label, wanted) in min_ready {
        let ready = shared.nodes.index(|ix| ix.ready_unallocated(label));
        let have = u32::try_from(ready)
            .unwrap_or(u32::MAX)
            .saturating_add(outstanding.get(label).copied().unwrap_or(0));
        if have >= wanted.want || state.failed.contains_key(label) {
            continue;
        }
        let available = match state.image.get(label) {
            Some(&(available, at)) if now.duration_since(at) < MIN_READY_RECHECK => available,
            before => {
                let available = label_available(shared, providers, label, &wanted.sources).await;
                match (before.map(|b| b.0), available) {
                    (None | Some(true), false) => info!(
                        label,
                        "min-ready: what the label boots is in none of its pools yet; not asking for nodes"
                    ),
                    (Some(false), true) => info!(label, "min-ready: the label's image is available now"),
                    _ => {}
                }
                state.image.insert(label.clone(), (available, now));
                available
            }
        };
        if !available {
            continue;
        }
        for _ in have..wanted.want {
            let mut req = NodeRequest::new(vec![label.clone()]);
            req.requestor = Some(MIN_READY_REQUESTOR.into());
            req.reuse = false;
            match zk.create_request(&mut req, 900, true).await {
                Ok(stat) => {
                    debug!(request = %req.id, label, "min-ready request");
                    shared.requests.note_write(&req.id.clone(), req, &stat);
                }
                Err(e) => warn!(label, error = %e, "cannot create min-ready request"),
            }
        }
    }
}

/// Whether one of the pools serving `label` can boot it now (upstream's
/// `labelImageIsAvailable`): a diskimage label needs a ready upload in the
/// pool's provider, any other label [`cloud_image_ready`] (an OpenStack
/// cloud image found in Glance; other drivers: always). A ZooKeeper or
/// cloud that cannot answer counts as available: the request then says
/// what is wrong. QUIRK not copied: upstream looks at every label
/// of each pool serving the label, so another label's image counts too.
async fn label_available(
    shared: &SharedState,
    providers: &HashMap<String, Arc<dyn Provider>>,
    label: &str,
    sources: &[LabelSource],
) -> bool {
    for source in sources {
        match &source.diskimage {
            Some(image) => match shared.zk.most_recent_upload(image, &source.provider).await {
                Ok(Some(_)) => return true,
                Ok(None) => {}
                Err(e) => {
                    debug!(label, image, error = %e, "cannot read the diskimage's uploads");
                    return true;
                }
            },
            None => {
                let Some(provider) = providers.get(&source.provider) else { return true };
                if cloud_image_ready(provider.as_ref(), &source.pool, label).await {
                    return true;
                }
            }
        }
    }
    false
}
