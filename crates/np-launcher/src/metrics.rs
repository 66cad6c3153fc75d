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
//! With `STATSD_HOST` set, the same measurements go to statsd under
//! upstream's keys ([`np_metrics::Statsd`]): every launch's counters and
//! timers from [`Metrics::record_launch`], leak counters from
//! [`Metrics::record_leaked`], and the gauges computed from the caches by
//! [`Metrics::report_statsd`] (the node and request gauges only from the
//! stats leader, see `crate::stats`). One [`Snapshot`] of the caches feeds
//! both the Prometheus gauges and the statsd gauges.
//!
//! The metric names and statsd keys are listed in `doc/metrics.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use np_config::Config;
use np_core::{NodeState, RequestState};
use np_metrics::{normalize, Statsd};
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
    max_servers: GaugeVec,
    tenant_limits: GaugeVec,
    /// The configured limits, as sent to statsd (and set in the gauges above).
    limits: Mutex<Limits>,
    /// Upstream's statsd output, when `STATSD_HOST` is set.
    statsd: Option<Statsd>,
    /// Serialises scrapes: the cache-derived gauges are reset and refilled.
    scrape: Mutex<()>,
}

/// The configured limits: `max-servers` per provider, tenant limits.
#[derive(Debug, Default, Clone, PartialEq)]
struct Limits {
    max_servers: BTreeMap<String, f64>,
    tenants: BTreeMap<(String, String), f64>,
}

impl Limits {
    fn of(config: &Config) -> Limits {
        let mut limits = Limits::default();
        for p in &config.providers {
            limits.max_servers.insert(p.name.clone(), provider_max_servers(p));
        }
        for t in &config.tenant_resource_limits {
            let limit = |v: Option<u64>| v.map_or(f64::INFINITY, |v| v as f64);
            // As upstream's config: cores, instances and ram always (∞ when
            // unset), volumes and volume-gb only when configured.
            let mut these: BTreeMap<&str, f64> = BTreeMap::from([
                ("cores", limit(t.max_cores)),
                ("instances", limit(t.max_servers)),
                ("ram", limit(t.max_ram)),
            ]);
            if let Some(v) = t.max_volumes {
                these.insert("volumes", v as f64);
            }
            if let Some(v) = t.max_volume_gb {
                these.insert("volume-gb", v as f64);
            }
            for (k, v) in &t.other {
                these.insert(k.as_str(), *v as f64);
            }
            for (k, v) in these {
                limits.tenants.insert((t.tenant_name.clone(), k.to_owned()), v);
            }
        }
        limits
    }
}

/// What was in the caches at one moment: the counts both exports report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Nodes per state (every state present, 0 when none).
    pub by_state: BTreeMap<String, i64>,
    /// Nodes per (provider, state); every state of each registered pool's provider.
    pub by_provider: BTreeMap<(String, String), i64>,
    /// Nodes per (label, state); a node counts under each of its labels.
    pub by_label: BTreeMap<(String, String), i64>,
    /// Requests per state.
    pub requests: BTreeMap<String, i64>,
    /// Requests of any state whose labels a registered pool fully supports,
    /// per (provider, pool).
    pub addressable: BTreeMap<(String, String), i64>,
    /// Whether any launcher serving the (provider, pool) is paused.
    pub paused: BTreeMap<(String, String), bool>,
    /// Records in the node, request and pool caches.
    pub cache_records: [i64; 3],
}

/// Everything a launch-attempt record says.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The provider that launched.
    pub provider: &'a str,
    /// The node's label.
    pub label: &'a str,
    /// The node's availability zone, if it has one.
    pub az: Option<&'a str>,
    /// The request's requestor, if it has one (normalised for statsd).
    pub requestor: Option<&'a str>,
    /// How it ended.
    pub result: LaunchResult,
    /// From the start of the attempt to its outcome.
    pub duration: Duration,
}

/// The metrics cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A Prometheus family could not be registered.
    #[error(transparent)]
    Prometheus(#[from] prometheus::Error),
    /// `STATSD_HOST` / `STATSD_PORT` cannot be used.
    #[error(transparent)]
    Statsd(#[from] np_metrics::StatsdError),
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
    /// come from `config`. Statsd is on when `STATSD_HOST` is set (upstream's
    /// switch); a `STATSD_PORT` that is no port, or a host that does not
    /// resolve, is an error.
    pub fn new(config: &Config) -> Result<Metrics, MetricsError> {
        Metrics::with_statsd(config, Statsd::from_env()?)
    }

    /// [`Metrics::new`] with an explicit statsd client (or none).
    pub fn with_statsd(config: &Config, statsd: Option<Statsd>) -> Result<Metrics, MetricsError> {
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

        let metrics = Metrics {
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
                max_servers,
                tenant_limits,
                limits: Mutex::new(Limits::default()),
                statsd,
                scrape: Mutex::new(()),
            }),
        };
        metrics.set_limits(config);
        Ok(metrics)
    }

    /// The statsd client, when statsd is on.
    pub fn statsd(&self) -> Option<&Statsd> {
        self.inner.statsd.as_ref()
    }

    /// Takes the provider and tenant limits of `config` (at start and after
    /// a reload).
    pub fn set_limits(&self, config: &Config) {
        let limits = Limits::of(config);
        let m = &self.inner;
        m.max_servers.reset();
        for (p, v) in &limits.max_servers {
            m.max_servers.with_label_values(&[p.as_str()]).set(*v);
        }
        m.tenant_limits.reset();
        for ((t, k), v) in &limits.tenants {
            m.tenant_limits.with_label_values(&[t.as_str(), k.as_str()]).set(*v);
        }
        *m.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The registry (to add metrics or gather them directly).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// One launch attempt ended (upstream's `recordLaunchStats`: a counter
    /// and a timer per outcome; in statsd under the overall, per-provider,
    /// per-zone and per-requestor keys).
    pub fn record_launch(&self, launch: &Launch<'_>) {
        let result = launch.result.as_str();
        let labels = [launch.provider, launch.label, result];
        self.inner.launches.with_label_values(&labels).inc();
        self.inner.launch_seconds.with_label_values(&labels).observe(launch.duration.as_secs_f64());
        if let Some(statsd) = &self.inner.statsd {
            // One batch, as upstream's pipeline.
            let statsd = statsd.batch();
            for key in launch_keys(launch) {
                statsd.timing(&key, launch.duration);
                statsd.incr(&key);
            }
        }
    }

    /// A request was fulfilled by `provider`, `latency` after it was created.
    pub fn record_fulfilled(&self, provider: &str, latency: Duration) {
        self.inner.fulfilment_seconds.with_label_values(&[provider]).observe(latency.as_secs_f64());
    }

    /// `count` leaked resources of kind `resource` (`instances`, `ports`, ...)
    /// were deleted in `provider`.
    pub fn record_leaked(&self, provider: &str, resource: &str, count: u64) {
        self.inner.leaked.with_label_values(&[provider, resource]).inc_by(count);
        if let Some(statsd) = &self.inner.statsd {
            statsd.count(&format!("nodepool.provider.{provider}.leaked.{resource}"), count);
        }
    }

    /// Sends the statsd gauges: the configured limits (every launcher, as
    /// upstream's pool workers), and with `leader` the node and request
    /// gauges of `snapshot` (upstream's stats leader). Nothing without statsd.
    pub fn report_statsd(&self, snapshot: Option<&Snapshot>) {
        let Some(statsd) = &self.inner.statsd else { return };
        let statsd = statsd.batch();
        let limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (key, value) in limit_gauges(&limits) {
            statsd.gauge(&key, value);
        }
        if let Some(snapshot) = snapshot {
            for (key, value) in node_gauges(snapshot) {
                statsd.gauge(&key, value as f64);
            }
        }
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
        let snap = measure(view);
        m.nodes.reset();
        m.provider_nodes.reset();
        m.label_nodes.reset();
        for (s, n) in &snap.by_state {
            m.nodes.with_label_values(&[s.as_str()]).set(*n);
        }
        for ((p, s), n) in &snap.by_provider {
            m.provider_nodes.with_label_values(&[p.as_str(), s.as_str()]).set(*n);
        }
        for ((l, s), n) in &snap.by_label {
            m.label_nodes.with_label_values(&[l.as_str(), s.as_str()]).set(*n);
        }
        m.requests.reset();
        for (s, n) in &snap.requests {
            m.requests.with_label_values(&[s.as_str()]).set(*n);
        }
        m.addressable_requests.reset();
        m.pool_paused.reset();
        for ((p, pool), n) in &snap.addressable {
            m.addressable_requests.with_label_values(&[p.as_str(), pool.as_str()]).set(*n);
        }
        for ((p, pool), paused) in &snap.paused {
            m.pool_paused.with_label_values(&[p.as_str(), pool.as_str()]).set(i64::from(*paused));
        }
        for (cache, n) in ["nodes", "requests", "pools"].iter().zip(snap.cache_records) {
            m.cache_records.with_label_values(&[cache]).set(n);
        }
        m.zk_connected.set(i64::from(view.zk_connected));
    }
}

/// Counts what is in the caches (upstream's `updateNodeStats` and
/// `updateNodeRequestStats`): every node state pre-set to 0, per provider
/// and label of every registered pool; providers and labels not registered
/// are added as seen.
pub fn measure(view: CacheView<'_>) -> Snapshot {
    let nodes = view.nodes.values();
    let requests = view.requests.values();
    let pools: Vec<np_core::PoolInfo> = view.pools.values().iter().filter_map(|c| c.pool.clone()).collect();
    let providers: BTreeSet<&str> = pools.iter().map(|p| p.provider_name.as_str()).collect();
    let labels: BTreeSet<&str> =
        pools.iter().flat_map(|p| p.supported_labels.iter().map(String::as_str)).collect();
    let mut snap = Snapshot::default();
    for state in NodeState::ALL {
        let s = state.as_str();
        snap.by_state.insert(s.to_owned(), 0);
        for p in &providers {
            snap.by_provider.insert(((*p).to_owned(), s.to_owned()), 0);
        }
        for l in &labels {
            snap.by_label.insert(((*l).to_owned(), s.to_owned()), 0);
        }
    }
    for node in &nodes {
        let s = node.state.as_str();
        *snap.by_state.entry(s.to_owned()).or_default() += 1;
        // Upstream counts a node without a provider under provider `None`.
        let p = node.provider.as_deref().unwrap_or("None");
        *snap.by_provider.entry((p.to_owned(), s.to_owned())).or_default() += 1;
        for l in &node.node_type {
            *snap.by_label.entry((l.clone(), s.to_owned())).or_default() += 1;
        }
    }
    for s in [RequestState::Requested, RequestState::Pending, RequestState::Fulfilled, RequestState::Failed] {
        snap.requests.insert(s.as_str().to_owned(), 0);
    }
    for r in &requests {
        *snap.requests.entry(r.state.as_str().to_owned()).or_default() += 1;
    }
    for pool in &pools {
        let supported: BTreeSet<&str> = pool.supported_labels.iter().map(String::as_str).collect();
        let addressable =
            requests.iter().filter(|r| r.node_types.iter().all(|t| supported.contains(t.as_str()))).count();
        let key = (pool.provider_name.clone(), pool.name.clone());
        snap.addressable.insert(key.clone(), i64::try_from(addressable).unwrap_or(i64::MAX));
        // Several launchers may serve one pool: paused if any of them is.
        *snap.paused.entry(key).or_default() |= pool.paused;
    }
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    snap.cache_records = [count(nodes.len()), count(requests.len()), count(pools.len())];
    snap
}

/// Upstream's launch keys for one attempt (`stats.py` `recordLaunchStats`).
fn launch_keys(launch: &Launch<'_>) -> Vec<String> {
    let (provider, result) = (launch.provider, launch.result.as_str());
    let mut keys =
        vec![format!("nodepool.launch.provider.{provider}.{result}"), format!("nodepool.launch.{result}")];
    if let Some(az) = launch.az.filter(|az| !az.is_empty()) {
        keys.push(format!("nodepool.launch.provider.{provider}.{az}.{result}"));
    }
    if let Some(requestor) = launch.requestor.filter(|r| !r.is_empty()) {
        keys.push(format!("nodepool.launch.requestor.{}.{result}", normalize(requestor)));
    }
    keys
}

/// Upstream's limit gauges (`updateProviderLimits`, `updateTenantLimits`).
fn limit_gauges(limits: &Limits) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> =
        limits.max_servers.iter().map(|(p, v)| (format!("nodepool.provider.{p}.max_servers"), *v)).collect();
    for ((tenant, key), v) in &limits.tenants {
        out.push((format!("nodepool.tenant_limits.{}.{}", normalize(tenant), normalize(key)), *v));
    }
    out
}

/// Upstream's node and request gauges (`updateNodeStats`,
/// `updateNodeRequestStats`); requests by state are not among them.
fn node_gauges(snap: &Snapshot) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (s, n) in &snap.by_state {
        out.push((format!("nodepool.nodes.{s}"), *n));
    }
    for ((p, s), n) in &snap.by_provider {
        out.push((format!("nodepool.provider.{p}.nodes.{s}"), *n));
    }
    for ((l, s), n) in &snap.by_label {
        out.push((format!("nodepool.label.{l}.nodes.{s}"), *n));
    }
    for ((p, pool), n) in &snap.addressable {
        out.push((format!("nodepool.provider.{p}.pool.{pool}.addressable_requests"), *n));
    }
    out
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

    fn config(max_servers: &str, tenant: &str) -> Config {
        let yaml = format!(
            "labels:\n  - name: small\n{tenant}providers:\n  - name: p\n    driver: fake\n    cloud: fake\n    cloud-images:\n      - name: img\n    pools:\n      - name: main\n{max_servers}        labels:\n          - name: small\n            cloud-image: img\n            flavor-name: f\n"
        );
        np_config::load_str(&yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn launch_keys_are_upstreams() {
        let launch = Launch {
            provider: "p",
            label: "small",
            az: Some("az1"),
            requestor: Some("zuul.example.org:main"),
            result: LaunchResult::Quota,
            duration: Duration::from_secs(1),
        };
        assert_eq!(
            launch_keys(&launch),
            [
                "nodepool.launch.provider.p.error.quota",
                "nodepool.launch.error.quota",
                "nodepool.launch.provider.p.az1.error.quota",
                "nodepool.launch.requestor.zuul_example_org_main.error.quota",
            ]
        );
        let bare = Launch { az: None, requestor: None, ..launch };
        assert_eq!(
            launch_keys(&bare),
            ["nodepool.launch.provider.p.error.quota", "nodepool.launch.error.quota"]
        );
    }

    #[test]
    fn limit_gauges_follow_the_configuration_as_upstream() {
        let tenant = "tenant-resource-limits:\n  - tenant-name: t.one\n    max-cores: 8\n";
        let metrics = Metrics::with_statsd(&config("", tenant), None).unwrap_or_else(|e| panic!("{e}"));
        let gauges = |m: &Metrics| limit_gauges(&m.inner.limits.lock().unwrap_or_else(|p| p.into_inner()));
        // No max-servers: inf; unset tenant limits: inf; no volumes keys.
        assert_eq!(
            gauges(&metrics),
            [
                ("nodepool.provider.p.max_servers".to_owned(), f64::INFINITY),
                ("nodepool.tenant_limits.t_one.cores".to_owned(), 8.0),
                ("nodepool.tenant_limits.t_one.instances".to_owned(), f64::INFINITY),
                ("nodepool.tenant_limits.t_one.ram".to_owned(), f64::INFINITY),
            ]
        );
        // A reload takes the new limits (statsd and Prometheus).
        metrics.set_limits(&config("        max-servers: 3\n", ""));
        assert_eq!(gauges(&metrics), [("nodepool.provider.p.max_servers".to_owned(), 3.0)]);
        let families = metrics.registry().gather();
        let max = families.iter().find(|f| f.name() == "nodepool_provider_max_servers");
        assert_eq!(max.map(|f| f.get_metric()[0].get_gauge().get_value()), Some(3.0));
        assert!(families
            .iter()
            .find(|f| f.name() == "nodepool_tenant_limit")
            .is_none_or(|f| f.get_metric().is_empty()));
    }
}
