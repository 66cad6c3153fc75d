//! Time-based upkeep (upstream's `CleanupWorker`, spec launcher §4.2-4.6).
//!
//! * **max-ready-age**: unallocated `ready` nodes older than their label's
//!   `max-ready-age` become `deleting`;
//! * **max-hold-age / hold_expiration**: held nodes whose hold expired become
//!   `deleting`;
//! * **lost requests**: a `pending` request whose lock is free (its launcher
//!   died, or lost its session) goes back to `requested`; `init` nodes
//!   allocated to it are deleted and other allocations cleared. Upstream
//!   finds them once a minute; [`watch_lost_requests`] sees them at once, from
//!   the request and request-lock caches' change streams (the full pass
//!   stays as a safety net);
//! * **leaked instances**: cloud instances carrying our provider's metadata
//!   with no ZooKeeper node, seen on two passes in a row, are deleted;
//! * **request-lock directories** whose request is gone and that are older than
//!   8 hours are removed;
//! * **empty node znodes** (resurrected by a late lock) are removed;
//! * **orphaned `init` nodes**: a node of one of our providers seen in
//!   `init` with nobody holding its lock on passes at least
//!   [`ORPHAN_INIT_AGE`] apart becomes `deleting`. A launcher locks the node
//!   it creates at once, so such a node was left by a launcher that died (or
//!   lost its connection) between the create and the lock. Upstream only
//!   collects those through a lost request, and never when that request is
//!   gone (its QUIRK, not kept).
//!
//! Age deadlines are computed exactly: the task sleeps until the earliest one
//! (or the next full pass, every 60 s as upstream), not on a short poll.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use np_core::{NodeState, RequestState};
use np_provider::{META_BUILD_ID, META_NODE_ID, META_PROVIDER, META_UPLOAD_ID};
use np_zk::{paths, LockOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::launch::delete_instance;
use crate::launcher::ProviderSet;
use crate::pool::SharedState;

/// How often the full pass runs (upstream: 60 s).
pub const PASS_INTERVAL: Duration = Duration::from_secs(60);
/// How long a node must have been seen in `init` without a lock before it
/// counts as orphaned (or two pass intervals, if shorter).
pub const ORPHAN_INIT_AGE: Duration = Duration::from_secs(30);
/// Request-lock directories older than this are garbage (upstream: 8 h).
pub const REQUEST_LOCK_AGE: Duration = Duration::from_secs(8 * 3600);

/// The configuration the upkeep needs.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceConfig {
    /// `max-ready-age` per label.
    pub max_ready_age: BTreeMap<String, Duration>,
    /// Top-level `max-hold-age`.
    pub max_hold_age: Option<Duration>,
    /// Time between full passes; `None` = [`PASS_INTERVAL`].
    pub pass_interval: Option<Duration>,
}

/// Runs until cancelled.
pub async fn run(
    shared: SharedState,
    providers: ProviderSet,
    config: MaintenanceConfig,
    cancel: CancellationToken,
) {
    let mut leak_candidates: HashMap<String, HashSet<String>> = HashMap::new();
    let mut unlocked_init: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut next_pass = tokio::time::Instant::now();
    let mut events = shared.nodes.subscribe();
    loop {
        let now = np_core::now();
        let deadline = expire_aged_nodes(&shared, &config, now).await;
        if tokio::time::Instant::now() >= next_pass {
            reset_lost_requests(&shared).await;
            delete_empty_nodes(&shared).await;
            let orphan_age = ORPHAN_INIT_AGE.min(config.pass_interval.unwrap_or(PASS_INTERVAL) * 2);
            delete_orphaned_init_nodes(&shared, &providers, &mut unlocked_init, orphan_age).await;
            clean_request_locks(&shared).await;
            for (name, provider) in &providers {
                let seen = leak_candidates.entry(name.clone()).or_default();
                clean_leaked_instances(&shared, name, provider.as_ref(), seen).await;
            }
            next_pass = tokio::time::Instant::now() + config.pass_interval.unwrap_or(PASS_INTERVAL);
        }
        let mut wake = next_pass;
        if let Some(at) = deadline {
            let secs = (at - np_core::now()).max(0.0);
            wake = wake.min(tokio::time::Instant::now() + Duration::from_secs_f64(secs + 0.01));
        }
        // Sleep until the next deadline or pass, or until a node that has an
        // age limit changes (it may bring an earlier deadline). Other node
        // events (most of them: Zuul's in-use/used writes, deletions) need
        // no scan.
        let relevant =
            |id: &str| shared.nodes.get(id).is_some_and(|e| age_limit(&e.value, &config).is_some());
        loop {
            let mut rescan = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => true,
                r = events.recv() => match r {
                    Ok(ev) => ev.kind == np_zk::CacheEventKind::Resynced || relevant(&ev.id),
                    Err(_) => {
                        events = events.resubscribe();
                        true
                    }
                },
            };
            np_zk::drain_events(&mut events, |ev| match ev {
                Some(ev) => rescan |= ev.kind == np_zk::CacheEventKind::Resynced || relevant(&ev.id),
                None => rescan = true,
            });
            if rescan {
                break;
            }
        }
    }
}

/// How long `node` may stay in its state (seconds), if a limit applies:
/// `max-ready-age` of its labels for unallocated ready nodes, the smaller of
/// `hold_expiration` and `max-hold-age` for held nodes.
fn age_limit(node: &np_core::Node, config: &MaintenanceConfig) -> Option<f64> {
    match node.state {
        NodeState::Ready if node.allocated_to.is_none() => {
            node.node_type.iter().filter_map(|l| config.max_ready_age.get(l)).min().map(Duration::as_secs_f64)
        }
        NodeState::Hold => {
            let per_node = node.hold_expiration.filter(|h| *h > 0).map(|h| h as f64);
            let global = config.max_hold_age.map(|d| d.as_secs_f64()).filter(|d| *d > 0.0);
            match (per_node, global) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        _ => None,
    }
}

/// Marks expired ready/held nodes `deleting`; returns the next deadline
/// (epoch seconds) among the nodes that are not yet expired.
async fn expire_aged_nodes(shared: &SharedState, config: &MaintenanceConfig, now: f64) -> Option<f64> {
    let (expired, next) = shared.nodes.scan(|entries| {
        let mut next: Option<f64> = None;
        let mut expired = Vec::new();
        for entry in entries {
            let node = &entry.value;
            let Some(limit) = age_limit(node, config) else { continue };
            let due = node.state_time + limit;
            if due <= now {
                if !entry.is_locked() {
                    expired.push((node.id.clone(), node.state));
                }
            } else {
                next = Some(next.map_or(due, |n: f64| n.min(due)));
            }
        }
        (expired, next)
    });
    for (id, state) in expired {
        let zk = &shared.zk;
        let Ok(Some(lock)) = zk.lock_node(&id, LockOptions::try_once()).await else { continue };
        let fenced = lock.fenced();
        if let Ok(Some((mut node, _))) = fenced.get_node(&id).await {
            let still = node.state == state && (state != NodeState::Ready || node.allocated_to.is_none());
            if still {
                info!(node = %id, %state, "node exceeded its age limit; deleting");
                node.set_state(NodeState::Deleting);
                let _ = fenced.update_node(&node).await;
            }
        }
        let _ = lock.release().await;
    }
    next
}

async fn reset_lost_requests(shared: &SharedState) {
    for req in shared.requests.values() {
        if req.state != RequestState::Pending {
            continue;
        }
        if shared.zk.is_locked(&paths::request_lock(&req.id)).await.unwrap_or(true) {
            continue;
        }
        reset_lost_request(shared, &req.id).await;
    }
}

/// Resets one lost request (upstream's `_cleanupLostRequests` for one
/// request): under its lock (non-blocking), re-read; if still `pending`, the
/// nodes allocated to it are locked in turn, `init` ones marked `deleting`
/// and every allocation cleared, then the request goes back to `requested`
/// with no nodes. Everything is written in the request lock's session.
/// Returns whether it was reset.
pub async fn reset_lost_request(shared: &SharedState, id: &str) -> bool {
    let Ok(Some(lock)) = shared.zk.lock_request(id, LockOptions::try_once()).await else { return false };
    let zk = lock.fenced();
    let fresh = match zk.get_request(id).await {
        Ok(Some((r, _))) if r.state == RequestState::Pending => r,
        _ => {
            let _ = lock.release().await;
            return false;
        }
    };
    info!(request = %fresh.id, "resetting lost request");
    let allocated: Vec<String> =
        shared.nodes.index(|ix| ix.allocated_to(&fresh.id).into_iter().flatten().cloned().collect());
    for node_id in allocated {
        let Ok(Some(node_lock)) =
            zk.lock_node(&node_id, LockOptions::blocking(Some(Duration::from_secs(10)))).await
        else {
            continue;
        };
        if let Ok(Some((mut node, _))) = zk.get_node(&node_id).await {
            if node.allocated_to.as_deref() == Some(fresh.id.as_str()) {
                if node.state == NodeState::Init {
                    node.set_state(NodeState::Deleting);
                }
                node.allocated_to = None;
                let _ = zk.update_node_cached(&shared.nodes, &node, None).await;
            }
        }
        let _ = node_lock.release().await;
    }
    let mut reset = fresh;
    reset.set_state(RequestState::Requested);
    reset.nodes.clear();
    let stored = zk.update_request_cached(&shared.requests, &reset, None).await;
    let _ = lock.release().await;
    stored.is_ok()
}

/// How long a request must look lost (`pending`, nobody holding its lock)
/// before it is reset: the request and request-lock caches follow two
/// watches, so the fulfilment that frees a lock and writes the request in
/// one transaction may show in the lock cache a moment before the request
/// cache. The reset re-reads under the lock anyway; the grace only saves
/// that round trip for the requests that were just answered.
pub const LOST_GRACE: Duration = Duration::from_millis(500);

/// Resets lost requests as soon as they are lost: a `pending` request whose
/// lock holder let go without answering, died, or lost its session. Woken
/// by the request-lock cache (a lock went away) and the request cache (a
/// request became `pending`); each candidate is looked at again after
/// [`LOST_GRACE`] and reset if it still looks lost.
pub async fn watch_lost_requests(shared: SharedState, cancel: CancellationToken) {
    let mut lock_events = shared.request_locks.subscribe();
    let mut req_events = shared.requests.subscribe();
    let mut due: BTreeMap<tokio::time::Instant, Vec<String>> = BTreeMap::new();
    let looks_lost = |id: &str| {
        !shared.request_locks.is_locked(id)
            && shared.requests.get(id).is_some_and(|e| e.value.state == RequestState::Pending)
    };
    let mut scan_all = true;
    loop {
        let mut candidates: Vec<String> = Vec::new();
        if scan_all {
            scan_all = false;
            candidates.extend(
                shared
                    .requests
                    .values()
                    .iter()
                    .filter(|r| r.state == RequestState::Pending)
                    .map(|r| r.id.clone()),
            );
        }
        let next = due.keys().next().copied();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = lock_events.recv() => match r {
                Ok(ev) if ev.kind == np_zk::CacheEventKind::Resynced => scan_all = true,
                Ok(ev) => candidates.push(ev.id),
                Err(_) => { lock_events = lock_events.resubscribe(); scan_all = true; }
            },
            r = req_events.recv() => match r {
                Ok(ev) if ev.kind == np_zk::CacheEventKind::Resynced => scan_all = true,
                Ok(ev) => candidates.push(ev.id),
                Err(_) => { req_events = req_events.resubscribe(); scan_all = true; }
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                let now = tokio::time::Instant::now();
                let ready: Vec<tokio::time::Instant> = due.range(..=now).map(|(t, _)| *t).collect();
                for t in ready {
                    for id in due.remove(&t).unwrap_or_default() {
                        if looks_lost(&id) && shared.zk.status().connected {
                            reset_lost_request(&shared, &id).await;
                        }
                    }
                }
            }
        }
        np_zk::drain_events(&mut lock_events, |ev| match ev {
            Some(ev) if ev.kind != np_zk::CacheEventKind::Resynced => candidates.push(ev.id),
            _ => scan_all = true,
        });
        np_zk::drain_events(&mut req_events, |ev| match ev {
            Some(ev) if ev.kind != np_zk::CacheEventKind::Resynced => candidates.push(ev.id),
            _ => scan_all = true,
        });
        let at = tokio::time::Instant::now() + LOST_GRACE;
        let fresh: Vec<String> = candidates.into_iter().filter(|id| looks_lost(id)).collect();
        if !fresh.is_empty() {
            due.entry(at).or_default().extend(fresh);
        }
    }
}

/// Marks `deleting` the nodes of our providers that have stayed in `init`
/// with no lock contender since an earlier pass at least
/// `age` ago (`first_seen` remembers when each was first seen so).
/// Under the node's lock, after re-reading it.
async fn delete_orphaned_init_nodes(
    shared: &SharedState,
    providers: &ProviderSet,
    first_seen: &mut HashMap<String, tokio::time::Instant>,
    age: Duration,
) {
    let now = tokio::time::Instant::now();
    let orphans: Vec<String> = shared.nodes.scan(|entries| {
        entries
            .filter(|e| {
                e.value.state == NodeState::Init
                    && !e.is_locked()
                    && e.value.provider.as_deref().is_some_and(|p| providers.contains_key(p))
            })
            .map(|e| e.value.id.clone())
            .collect()
    });
    first_seen.retain(|id, _| orphans.contains(id));
    for id in orphans {
        let since = *first_seen.entry(id.clone()).or_insert(now);
        if now.duration_since(since) < age {
            continue;
        }
        let Ok(Some(lock)) = shared.zk.lock_node(&id, LockOptions::try_once()).await else { continue };
        let fenced = lock.fenced();
        if let Ok(Some((mut node, _))) = fenced.get_node(&id).await {
            if node.state == NodeState::Init {
                info!(node = %id, allocated_to = ?node.allocated_to, "node left in init without a lock; deleting it");
                node.set_state(NodeState::Deleting);
                node.allocated_to = None;
                let _ = fenced.update_node_cached(&shared.nodes, &node, None).await;
            }
        }
        first_seen.remove(&id);
        let _ = lock.release().await;
    }
}

async fn delete_empty_nodes(shared: &SharedState) {
    let zk = &shared.zk;
    let Ok(ids) = zk.node_ids().await else { return };
    for id in ids {
        if shared.nodes.get(&id).is_some() {
            continue;
        }
        if let Ok(Some((data, _))) = zk.get(&paths::node(&id)).await {
            if data.is_empty() {
                debug!(node = %id, "deleting empty node znode");
                let _ = zk.delete_recursive(&paths::node(&id)).await;
            }
        }
    }
}

async fn clean_request_locks(shared: &SharedState) {
    let zk = &shared.zk;
    let Ok(Some(dirs)) = zk.children(paths::REQUEST_LOCKS).await else { return };
    let now_ms = (np_core::now() * 1000.0) as i64;
    for dir in dirs {
        if shared.requests.get(&dir).is_some() {
            continue;
        }
        let path = format!("{}/{dir}", paths::REQUEST_LOCKS);
        let Ok(Some(stat)) = zk.exists(&path).await else { continue };
        let age_ms = now_ms - stat.mtime;
        if age_ms > REQUEST_LOCK_AGE.as_millis() as i64
            && matches!(zk.exists(&paths::request(&dir)).await, Ok(None))
        {
            debug!(lock = %path, "removing stale request-lock directory");
            let _ = zk.delete_recursive(&path).await;
        }
    }
}

/// Upstream's `plural_metric_name` of a leaked resource (the kind a driver
/// gives in `node_properties.resource`, plural; an AWS image is an `ami`).
fn leaked_metric_name(instance: &np_provider::Instance) -> String {
    match instance.node_properties.as_ref().and_then(|p| p.get("resource")).and_then(|r| r.as_str()) {
        Some("image") => "amis".to_owned(),
        Some(kind) => format!("{kind}s"),
        None => "instances".to_owned(),
    }
}

/// Deletes instances that carry our provider metadata but have no node; an
/// instance must be seen leaked on two passes in a row (a launch may be
/// between cloud create and node write).
async fn clean_leaked_instances(
    shared: &SharedState,
    provider_name: &str,
    provider: &dyn np_provider::Provider,
    seen_before: &mut HashSet<String>,
) {
    let instances = match np_provider::with_deadline(
        "instance listing",
        np_provider::CLOUD_CALL_TIMEOUT,
        provider.list_instances(),
    )
    .await
    {
        Ok(i) => i,
        Err(e) => {
            warn!(provider = provider_name, error = %e, "cannot list instances for leak cleanup");
            return;
        }
    };
    // What the driver removed itself while listing (OpenStack's ports and
    // floating IPs).
    for (resource, count) in provider.take_leaked() {
        shared.metrics.record_leaked(provider_name, &resource, count);
    }
    let mut leaked_now = HashSet::new();
    let mut to_delete = Vec::new();
    // Uploaded images (and their snapshots) carry the builder's build and
    // upload ids instead of a node id: leaked once the upload record is gone.
    let mut uploads: Option<HashSet<String>> = None;
    for instance in instances {
        if instance.metadata.get(META_PROVIDER).map(String::as_str) != Some(provider_name) {
            continue;
        }
        // What the resource belongs to, if that is gone.
        let owner = if let Some(upload) = instance.metadata.get(META_UPLOAD_ID) {
            let build = instance.metadata.get(META_BUILD_ID).map(String::as_str).unwrap_or_default();
            if uploads.is_none() {
                match shared.zk.provider_upload_keys(provider_name).await {
                    Ok(keys) => uploads = Some(keys),
                    Err(e) => {
                        // Without the records nothing can be called leaked.
                        warn!(provider = provider_name, error = %e, "cannot read uploads for leak cleanup");
                        return;
                    }
                }
            }
            let key = format!("{build}-{upload}");
            if uploads.as_ref().is_some_and(|u| u.contains(&key)) {
                continue;
            }
            format!("upload {key}")
        } else {
            let Some(node_id) = instance.metadata.get(META_NODE_ID) else { continue };
            if shared.nodes.get(node_id).is_some() {
                continue;
            }
            // The cache may lag behind a brand-new node: confirm in ZooKeeper.
            if !matches!(shared.zk.exists(&paths::node(node_id)).await, Ok(None)) {
                continue;
            }
            format!("node {node_id}")
        };
        let key = instance.external_id.to_string();
        if seen_before.contains(&key) {
            info!(provider = provider_name, resource = %key, owner, "deleting leaked resource");
            shared.metrics.record_leaked(provider_name, &leaked_metric_name(&instance), 1);
            to_delete.push((key, instance.external_id));
        } else {
            leaked_now.insert(key);
        }
    }
    // Deletes run side by side: one that waits for the cloud (a Kubernetes
    // namespace takes its pods' grace period to go) holds up no other.
    let deleted: Vec<(String, Result<(), np_provider::ProviderError>)> = futures::stream::iter(to_delete)
        .map(|(key, id)| async move {
            let result = delete_instance(provider, &id).await;
            (key, result)
        })
        .buffer_unordered(LEAK_DELETES_AT_ONCE)
        .collect()
        .await;
    for (key, result) in deleted {
        if let Err(e) = result {
            warn!(resource = %key, error = %e, "cannot delete leaked resource");
            leaked_now.insert(key);
        }
    }
    *seen_before = leaked_now;
}

/// How many leaked resources one provider deletes at once.
const LEAK_DELETES_AT_ONCE: usize = 8;

#[cfg(test)]
mod tests {
    use super::leaked_metric_name;
    use np_provider::Instance;
    use serde_json::json;

    #[test]
    fn leaked_resources_are_counted_under_upstreams_names() {
        let kind = |resource: Option<&str>| Instance {
            node_properties: resource.map(|r| json!({ "resource": r })),
            ..Instance::default()
        };
        assert_eq!(leaked_metric_name(&kind(None)), "instances");
        assert_eq!(leaked_metric_name(&kind(Some("instance"))), "instances");
        assert_eq!(leaked_metric_name(&kind(Some("volume"))), "volumes");
        assert_eq!(leaked_metric_name(&kind(Some("host"))), "hosts");
        assert_eq!(leaked_metric_name(&kind(Some("image"))), "amis");
        assert_eq!(leaked_metric_name(&kind(Some("snapshot"))), "snapshots");
        assert_eq!(leaked_metric_name(&kind(Some("object"))), "objects");
        // Kubernetes namespaces: upstream's Kubernetes driver counts `leaked.nodes`.
        assert_eq!(leaked_metric_name(&kind(Some("node"))), "nodes");
    }
}
