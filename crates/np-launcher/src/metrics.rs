//! Prometheus metrics: upstream's statsd metric set (spec launcher §6) under
//! Prometheus names, plus latency histograms upstream does not have.
//!
//! A [`Metrics`] owns its own [`Registry`] (no process-global state), is
//! cheap to clone, and is handed to whoever records events:
//!
//! * events are recorded as they happen: [`Metrics::record_launch`] (every
//!   launch attempt's outcome, upstream's `nodepool.launch.*` counters and
//!   timers), [`Metrics::record_fulfilled`] (request fulfilment latency),
//!   [`Metrics::record_leaked`] (leaked-resource cleanup);
//! * everything that is a count of what is in ZooKeeper (nodes by state,
//!   provider and label, requests by state, addressable requests, paused
//!   pools) is computed from the launcher's caches at scrape time by
//!   [`Metrics::export`], so it can never drift from the caches;
//! * configuration limits (`max-servers` per provider, tenant limits) are set
//!   once from the configuration.
//!
//! The metric names are listed in `doc/webapp.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use np_config::Config;
use np_core::{NodeState, RequestState};
use np_provider::ProviderError;
use np_zk::{NodeCache, PoolComponentCache, RequestCache};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracing::warn;

/// Buckets of the launch-duration histogram, in seconds.
const LAUNCH_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0];

/// Buckets of the request-fulfilment histogram, in seconds.
const FULFILMENT_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// How one launch attempt ended: upstream's `<result>` of
/// `nodepool.launch.<result>` (spec launcher §6.1). The Prometheus label
/// value is [`LaunchResult::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaunchResult {
    /// The node is ready (`ready`).
    Ready,
    /// The ZooKeeper session was lost during the launch (`error.zksession`).
    ZkSession,
    /// The cloud refused for quota (`error.quota`).
    Quota,
    /// Any other failure (`error.unknown`).
    Unknown,
    /// The image is missing (`error.nodepool`).
    Nodepool,
    /// The server went to an error status (`error.status`).
    Status,
    /// Networking failed (`error.network`).
    Network,
    /// Host-key scanning failed (`error.keyscan`).
    Keyscan,
    /// The cloud had no capacity (`error.capacity`).
    Capacity,
    /// SSH did not come up (`error.ssh`).
    Ssh,
    /// Adding an IP address failed (`error.ipadd`).
    IpAdd,
    /// The server did not become active in time (`error.servercreatetimeout`).
    ServerCreateTimeout,
    /// The server was not deleted in time (`error.serverdeletetimeout`).
    ServerDeleteTimeout,
    /// The image did not become ready in time (`error.imagetimeout`).
    ImageTimeout,
}

impl LaunchResult {
    /// Upstream's spelling (`ready`, `error.quota`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchResult::Ready => "ready",
            LaunchResult::ZkSession => "error.zksession",
            LaunchResult::Quota => "error.quota",
            LaunchResult::Unknown => "error.unknown",
            LaunchResult::Nodepool => "error.nodepool",
            LaunchResult::Status => "error.status",
            LaunchResult::Network => "error.network",
            LaunchResult::Keyscan => "error.keyscan",
            LaunchResult::Capacity => "error.capacity",
            LaunchResult::Ssh => "error.ssh",
            LaunchResult::IpAdd => "error.ipadd",
            LaunchResult::ServerCreateTimeout => "error.servercreatetimeout",
            LaunchResult::ServerDeleteTimeout => "error.serverdeletetimeout",
            LaunchResult::ImageTimeout => "error.imagetimeout",
        }
    }

    /// The result for a failed attempt with this provider error: quota and
    /// capacity map to their own results, everything else is `error.unknown`
    /// (callers that know better, e.g. a launch timeout, pass the result
    /// directly).
    pub fn from_error(error: &ProviderError) -> LaunchResult {
        match error {
            ProviderError::Quota(_) => LaunchResult::Quota,
            ProviderError::Capacity(_) => LaunchResult::Capacity,
            _ => LaunchResult::Unknown,
        }
    }
}

/// The launcher's metrics. Cloning shares the same registry and series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    nodes: IntGaugeVec,
    provider_nodes: IntGaugeVec,
    label_nodes: IntGaugeVec,
    requests: IntGaugeVec,
    addressable_requests: IntGaugeVec,
    pool_paused: IntGaugeVec,
    cache_records: IntGaugeVec,
    zk_connected: IntGauge,
    launches: IntCounterVec,
    launch_seconds: HistogramVec,
    fulfilment_seconds: HistogramVec,
    leaked: IntCounterVec,
    /// Serialises scrapes: the cache-derived gauges are reset and refilled.
    scrape: Mutex<()>,
}

/// What the scrape-time gauges are computed from.
#[derive(Clone, Copy)]
pub struct CacheView<'a> {
    /// The node cache.
    pub nodes: &'a NodeCache,
    /// The request cache.
    pub requests: &'a RequestCache,
    /// The pool-component cache (every launcher's pools).
    pub pools: &'a PoolComponentCache,
    /// Whether the ZooKeeper session is connected.
    pub zk_connected: bool,
}

impl Metrics {
    /// Creates and registers every metric family; provider and tenant limits
    /// come from `config`.
    pub fn new(config: &Config) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let nodes = gauge_vec("nodepool_nodes", "Nodes by state (nodepool.nodes.<state>).", &["state"])?;
        let provider_nodes = gauge_vec(
            "nodepool_provider_nodes",
            "Nodes by provider and state (nodepool.provider.<provider>.nodes.<state>).",
            &["provider", "state"],
        )?;
        let label_nodes = gauge_vec(
            "nodepool_label_nodes",
            "Nodes by label and state; a node counts under each of its labels (nodepool.label.<label>.nodes.<state>).",
            &["label", "state"],
        )?;
        let requests = gauge_vec("nodepool_requests", "Node requests by state.", &["state"])?;
        let addressable_requests = gauge_vec(
            "nodepool_pool_addressable_requests",
            "Requests of any state whose labels the pool supports \
             (nodepool.provider.<provider>.pool.<pool>.addressable_requests).",
            &["provider", "pool"],
        )?;
        let pool_paused = gauge_vec(
            "nodepool_pool_paused",
            "1 while a registered pool worker is paused at quota.",
            &["provider", "pool"],
        )?;
        let cache_records =
            gauge_vec("nodepool_cache_records", "Records in the launcher's ZooKeeper caches.", &["cache"])?;
        let zk_connected =
            IntGauge::new("nodepool_zk_connected", "1 while the ZooKeeper session is connected.")?;
        registry.register(Box::new(zk_connected.clone()))?;

        let max_servers = GaugeVec::new(
            Opts::new(
                "nodepool_provider_max_servers",
                "Sum of the pools' max-servers; +Inf when a pool has none (nodepool.provider.<provider>.max_servers).",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(max_servers.clone()))?;
        let tenant_limits = GaugeVec::new(
            Opts::new(
                "nodepool_tenant_limit",
                "Configured tenant resource limits; +Inf when unset (nodepool.tenant_limits.<tenant>.<limit>).",
            ),
            &["tenant", "limit"],
        )?;
        registry.register(Box::new(tenant_limits.clone()))?;

        let launches = IntCounterVec::new(
            Opts::new(
                "nodepool_launch_total",
                "Launch attempts by outcome (nodepool.launch.provider.<provider>.<result>).",
            ),
            &["provider", "label", "result"],
        )?;
        registry.register(Box::new(launches.clone()))?;
        let launch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nodepool_launch_duration_seconds",
                "Time from the start of a launch attempt to its outcome.",
            )
            .buckets(LAUNCH_BUCKETS.to_vec()),
            &["provider", "label", "result"],
        )?;
        registry.register(Box::new(launch_seconds.clone()))?;
        let fulfilment_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nodepool_request_fulfillment_seconds",
                "Time from a request's creation to its fulfilment, by the fulfilling provider.",
            )
            .buckets(FULFILMENT_BUCKETS.to_vec()),
            &["provider"],
        )?;
        registry.register(Box::new(fulfilment_seconds.clone()))?;
        let leaked = IntCounterVec::new(
            Opts::new(
                "nodepool_provider_leaked_total",
                "Leaked cloud resources deleted (nodepool.provider.<provider>.leaked.<resource>).",
            ),
            &["provider", "resource"],
        )?;
        registry.register(Box::new(leaked.clone()))?;

        for p in &config.providers {
            max_servers.with_label_values(&[p.name.as_str()]).set(provider_max_servers(p));
        }
        for t in &config.tenant_resource_limits {
            let limit = |v: Option<u64>| v.map_or(f64::INFINITY, |v| v as f64);
            let mut limits: BTreeMap<&str, f64> = BTreeMap::from([
                ("cores", limit(t.max_cores)),
                ("instances", limit(t.max_servers)),
                ("ram", limit(t.max_ram)),
                ("volumes", limit(t.max_volumes)),
                ("volume-gb", limit(t.max_volume_gb)),
            ]);
            for (k, v) in &t.other {
                limits.insert(k.as_str(), *v as f64);
            }
            for (k, v) in limits {
                tenant_limits.with_label_values(&[t.tenant_name.as_str(), k]).set(v);
            }
        }

        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                nodes,
                provider_nodes,
                label_nodes,
                requests,
                addressable_requests,
                pool_paused,
                cache_records,
                zk_connected,
                launches,
                launch_seconds,
                fulfilment_seconds,
                leaked,
                scrape: Mutex::new(()),
            }),
        })
    }

    /// The registry (to add metrics or gather them directly).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// One launch attempt ended with `result` after `duration` (upstream's
    /// `recordLaunchStats`: a counter and a timer per outcome).
    pub fn record_launch(&self, provider: &str, label: &str, result: LaunchResult, duration: Duration) {
        let labels = [provider, label, result.as_str()];
        self.inner.launches.with_label_values(&labels).inc();
        self.inner.launch_seconds.with_label_values(&labels).observe(duration.as_secs_f64());
    }

    /// A request was fulfilled by `provider`, `latency` after it was created.
    pub fn record_fulfilled(&self, provider: &str, latency: Duration) {
        self.inner.fulfilment_seconds.with_label_values(&[provider]).observe(latency.as_secs_f64());
    }

    /// `count` leaked resources of kind `resource` (`instances`, `ports`, ...)
    /// were deleted in `provider`.
    pub fn record_leaked(&self, provider: &str, resource: &str, count: u64) {
        self.inner.leaked.with_label_values(&[provider, resource]).inc_by(count);
    }

    /// Recomputes the cache-derived gauges and renders every metric in the
    /// Prometheus text exposition format.
    pub fn export(&self, view: CacheView<'_>) -> String {
        let _serial = self.inner.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(view);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.inner.registry.gather(), &mut out) {
            warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn refresh(&self, view: CacheView<'_>) {
        let m = &self.inner;
        let nodes = view.nodes.values();
        let requests = view.requests.values();
        let pools: Vec<np_core::PoolInfo> =
            view.pools.values().iter().filter_map(|c| c.pool.clone()).collect();

        // Upstream pre-sets every state to 0, per provider and label of every
        // registered pool; unknown providers and labels are added as seen.
        let providers: BTreeSet<&str> = pools.iter().map(|p| p.provider_name.as_str()).collect();
        let labels: BTreeSet<&str> =
            pools.iter().flat_map(|p| p.supported_labels.iter().map(String::as_str)).collect();
        let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
        let mut by_provider: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut by_label: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for state in NodeState::ALL {
            let s = state.as_str();
            by_state.insert(s, 0);
            for p in &providers {
                by_provider.insert((p, s), 0);
            }
            for l in &labels {
                by_label.insert((l, s), 0);
            }
        }
        for node in &nodes {
            let s = node.state.as_str();
            *by_state.entry(s).or_default() += 1;
            if let Some(p) = node.provider.as_deref() {
                *by_provider.entry((p, s)).or_default() += 1;
            }
            for l in &node.node_type {
                *by_label.entry((l.as_str(), s)).or_default() += 1;
            }
        }
        m.nodes.reset();
        m.provider_nodes.reset();
        m.label_nodes.reset();
        for (s, n) in by_state {
            m.nodes.with_label_values(&[s]).set(n);
        }
        for ((p, s), n) in by_provider {
            m.provider_nodes.with_label_values(&[p, s]).set(n);
        }
        for ((l, s), n) in by_label {
            m.label_nodes.with_label_values(&[l, s]).set(n);
        }

        let mut req_states: BTreeMap<&str, i64> =
            [RequestState::Requested, RequestState::Pending, RequestState::Fulfilled, RequestState::Failed]
                .into_iter()
                .map(|s| (s.as_str(), 0))
                .collect();
        for r in &requests {
            *req_states.entry(r.state.as_str()).or_default() += 1;
        }
        m.requests.reset();
        for (s, n) in req_states {
            m.requests.with_label_values(&[s]).set(n);
        }

        m.addressable_requests.reset();
        m.pool_paused.reset();
        for pool in &pools {
            let supported: BTreeSet<&str> = pool.supported_labels.iter().map(String::as_str).collect();
            let addressable = requests
                .iter()
                .filter(|r| r.node_types.iter().all(|t| supported.contains(t.as_str())))
                .count();
            let key = [pool.provider_name.as_str(), pool.name.as_str()];
            m.addressable_requests
                .with_label_values(&key)
                .set(i64::try_from(addressable).unwrap_or(i64::MAX));
            // Several launchers may serve one pool: paused if any of them is.
            let paused = m.pool_paused.with_label_values(&key);
            paused.set(paused.get().max(i64::from(pool.paused)));
        }

        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        m.cache_records.with_label_values(&["nodes"]).set(count(nodes.len()));
        m.cache_records.with_label_values(&["requests"]).set(count(requests.len()));
        m.cache_records.with_label_values(&["pools"]).set(count(pools.len()));
        m.zk_connected.set(i64::from(view.zk_connected));
    }
}

/// Σ of the pools' `max-servers`; `+Inf` as soon as one pool has none
/// (upstream sends `inf` then).
fn provider_max_servers(provider: &np_config::Provider) -> f64 {
    np_drivers::pools(provider).iter().map(|p| p.max_servers.map_or(f64::INFINITY, |m| m as f64)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_results_use_upstream_names() {
        assert_eq!(LaunchResult::Ready.as_str(), "ready");
        assert_eq!(LaunchResult::ServerCreateTimeout.as_str(), "error.servercreatetimeout");
        assert_eq!(LaunchResult::from_error(&ProviderError::Quota("x".into())), LaunchResult::Quota);
        assert_eq!(LaunchResult::from_error(&ProviderError::Fatal("x".into())), LaunchResult::Unknown);
    }
}
