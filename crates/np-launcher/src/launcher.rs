//! Wiring: providers and pool workers for one configuration, the shared
//! caches, and orderly shutdown.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use np_config::Config;
use np_zk::{NodeCache, PoolComponentCache, RequestCache, Zk};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::pool::{PoolSpec, PoolWorker, SharedState};
use crate::webapp::WebServer;

pub use np_provider::ProviderSet;

pub use np_drivers::{build_providers, build_providers_async};

/// The pool workers' specifications: the pools each provider's driver
/// describes ([`np_drivers::pools`]), with what the launcher adds (the
/// provider's priority default, `max-concurrency`, tenant limits).
pub fn pool_specs(config: &Config) -> Vec<PoolSpec> {
    let tenants = tenant_limits(config);
    let mut out = Vec::new();
    for p in &config.providers {
        for pool in np_drivers::pools(p) {
            out.push(PoolSpec {
                provider: p.name.clone(),
                pool: pool.name,
                labels: pool.labels,
                max_servers: pool.max_servers,
                limits: pool.limits,
                ignore_provider_quota: pool.ignore_provider_quota,
                priority: p.effective_priority(pool.priority),
                node_attributes: pool.node_attributes,
                launch: pool.launch,
                max_concurrency: p.max_concurrency,
                cloud: pool.cloud,
                tenant_limits: tenants.clone(),
                label_settings: pool.label_settings,
                never_launch: pool.never_launch,
            });
        }
    }
    out
}

/// `tenant-resource-limits` as quota limits (unset resources unlimited).
pub fn tenant_limits(config: &Config) -> HashMap<String, np_core::Quota> {
    let f = |v: Option<u64>| v.map(|v| v as f64);
    config
        .tenant_resource_limits
        .iter()
        .map(|t| {
            let mut q = np_core::Quota::new(f(t.max_cores), f(t.max_servers), f(t.max_ram), f64::INFINITY);
            if let Some(v) = t.max_volumes {
                q.set("volumes", v as f64);
            }
            if let Some(v) = t.max_volume_gb {
                q.set("volume-gb", v as f64);
            }
            for (k, v) in &t.other {
                q.set(k, *v as f64);
            }
            (t.tenant_name.clone(), q)
        })
        .collect()
}

struct PoolHandle {
    spec: PoolSpec,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A running launcher.
pub struct Launcher {
    config: Config,
    providers: ProviderSet,
    pools: HashMap<(String, String), PoolHandle>,
    aux_cancel: CancellationToken,
    aux: JoinSet<()>,
    /// The drivers' background tasks (static hosts' registration).
    driver_tasks: np_drivers::DriverTasks,
    maintenance_interval: Option<Duration>,
    shared: SharedState,
    registration: np_zk::ComponentRegistration,
    metrics: Metrics,
    web: Option<WebServer>,
    /// The statsd gauge reporter (`crate::stats`), across reloads.
    stats: (CancellationToken, tokio::task::JoinHandle<()>),
}

impl Launcher {
    /// Starts caches, the launcher component, pool workers and cleanup.
    pub async fn start(config: &Config, zk: Zk, providers: ProviderSet) -> anyhow::Result<Launcher> {
        Self::start_with(config, zk, providers, None).await
    }

    /// Like [`Launcher::start`], with the maintenance pass interval (tests use a short one).
    pub async fn start_with(
        config: &Config,
        zk: Zk,
        providers: ProviderSet,
        maintenance_interval: Option<Duration>,
    ) -> anyhow::Result<Launcher> {
        let metrics = Metrics::new(config).context("registering metrics")?;
        let hostname = hostname();
        let nodes = NodeCache::start(&zk);
        let requests = RequestCache::start(&zk);
        let pools = PoolComponentCache::start(&zk);
        let request_locks = np_zk::RequestLockCache::requests(&zk);
        for ready in [
            nodes.wait_ready(Duration::from_secs(60)).await,
            requests.wait_ready(Duration::from_secs(60)).await,
            pools.wait_ready(Duration::from_secs(60)).await,
            request_locks.wait_ready(Duration::from_secs(60)).await,
        ] {
            anyhow::ensure!(ready, "ZooKeeper caches did not load in time");
        }
        let record = np_core::ComponentRecord::new(
            np_core::ComponentKind::Launcher,
            &hostname,
            crate::VERSION,
            np_core::ComponentState::Running,
        );
        let registration = np_zk::ComponentRegistration::register(&zk, record)
            .await
            .context("registering launcher component")?;
        let shared = SharedState {
            zk,
            nodes,
            requests,
            request_locks,
            pools,
            hostname,
            metrics: metrics.clone(),
            attempts: Default::default(),
        };
        let stats_cancel = CancellationToken::new();
        let stats_task = tokio::spawn(crate::stats::run(shared.clone(), stats_cancel.clone()));
        let mut launcher = Launcher {
            config: config.clone(),
            providers,
            pools: HashMap::new(),
            aux_cancel: CancellationToken::new(),
            aux: JoinSet::new(),
            maintenance_interval,
            driver_tasks: np_drivers::DriverTasks::new(),
            shared,
            registration,
            metrics,
            web: None,
            stats: (stats_cancel, stats_task),
        };
        launcher.driver_tasks.sync(config, &launcher.shared.zk, &launcher.shared.nodes);
        launcher.start_pools(pool_specs(config));
        launcher.start_aux();
        info!(pools = launcher.pools.len(), "launcher running");
        Ok(launcher)
    }

    fn start_pools(&mut self, specs: Vec<PoolSpec>) {
        for spec in specs {
            let Some(provider) = self.providers.get(&spec.provider).cloned() else { continue };
            let key = (spec.provider.clone(), spec.pool.clone());
            let cancel = CancellationToken::new();
            let (shared, token, run_spec) = (self.shared.clone(), cancel.clone(), spec.clone());
            let task = tokio::spawn(async move {
                let name = format!("{}/{}", run_spec.provider, run_spec.pool);
                if let Err(e) = PoolWorker::run(run_spec, shared, provider, token).await {
                    warn!(pool = name, error = %e, "pool worker failed");
                }
            });
            self.pools.insert(key, PoolHandle { spec, cancel, task });
        }
    }

    /// Cleanup and maintenance, which depend on the whole configuration.
    fn start_aux(&mut self) {
        let config = &self.config;
        let min_ready = crate::cleanup::min_ready_labels(config, &pool_specs(config));
        let upkeep = crate::maintenance::MaintenanceConfig {
            max_ready_age: config
                .labels
                .iter()
                .filter_map(|l| l.max_ready_age.map(|a| (l.name.clone(), a)))
                .collect(),
            max_hold_age: config.max_hold_age,
            pass_interval: self.maintenance_interval,
        };
        let token = self.aux_cancel.clone();
        self.aux.spawn(crate::maintenance::run(
            self.shared.clone(),
            self.providers.clone(),
            upkeep,
            token.child_token(),
        ));
        self.aux.spawn(crate::cleanup::run(
            self.shared.clone(),
            self.providers.clone(),
            min_ready,
            token.child_token(),
        ));
        self.aux.spawn(crate::maintenance::watch_lost_requests(self.shared.clone(), token.child_token()));
    }

    async fn stop_aux(&mut self) {
        self.aux_cancel.cancel();
        while self.aux.join_next().await.is_some() {}
        self.aux_cancel = CancellationToken::new();
    }

    /// Starts the status web server on the configuration's
    /// `webapp.listen_address:port` (port 0: any free port) and returns the
    /// bound address; [`Launcher::stop`] stops it.
    pub async fn start_webapp(&mut self) -> anyhow::Result<std::net::SocketAddr> {
        anyhow::ensure!(self.web.is_none(), "the web app is already running");
        let sources = crate::webapp::Sources {
            zk: self.shared.zk.clone(),
            nodes: self.shared.nodes.clone(),
            requests: self.shared.requests.clone(),
            pools: self.shared.pools.clone(),
        };
        let web =
            WebServer::start(&self.config.webapp, sources, self.metrics.clone(), CancellationToken::new())
                .await?;
        let addr = web.local_addr();
        self.web = Some(web);
        Ok(addr)
    }

    /// The web server's bound address, if it runs.
    pub fn webapp_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().map(WebServer::local_addr)
    }

    /// The metrics (record launches and fulfilments here; `/metrics` shows them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shared caches (for the web API and tests).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies a new configuration: only pools whose settings (or provider)
    /// changed are restarted, and a restarted pool first finishes the
    /// requests it is working on (drain), so no work in flight is dropped.
    pub async fn reload(&mut self, new: &Config) -> anyhow::Result<()> {
        let diff = np_config::diff(&self.config, new);
        if diff.is_empty() {
            return Ok(());
        }
        // Simulated clouds keep their instances across the rebuild.
        let clouds = np_drivers::simulated_clouds(&self.providers);
        let affected: std::collections::BTreeSet<String> =
            diff.affected_providers().into_iter().map(str::to_owned).collect();
        let mut rebuild = affected.clone();
        rebuild
            .extend(new.providers.iter().map(|p| p.name.clone()).filter(|n| !self.providers.contains_key(n)));
        let providers = build_providers_async(new, &clouds, Some(&rebuild)).await?;
        let new_specs: HashMap<(String, String), PoolSpec> =
            pool_specs(new).into_iter().map(|s| ((s.provider.clone(), s.pool.clone()), s)).collect();
        let keys: Vec<(String, String)> = self.pools.keys().cloned().collect();
        let mut draining = Vec::new();
        for key in keys {
            let keep = new_specs.get(&key).is_some_and(|s| {
                self.pools.get(&key).is_some_and(|h| h.spec == *s) && !affected.contains(&key.0)
            });
            if !keep {
                if let Some(handle) = self.pools.remove(&key) {
                    info!(provider = %key.0, pool = %key.1, "pool changed: draining the old worker");
                    handle.cancel.cancel();
                    draining.push(handle.task);
                }
            }
        }
        // Providers whose config did not change keep their instance.
        let mut merged = providers;
        for (name, provider) in &self.providers {
            if !rebuild.contains(name) && new.provider(name).is_some() {
                merged.insert(name.clone(), provider.clone());
            }
        }
        self.providers = merged;
        let to_start: Vec<PoolSpec> =
            new_specs.into_iter().filter(|(k, _)| !self.pools.contains_key(k)).map(|(_, s)| s).collect();
        self.config = new.clone();
        self.metrics.set_limits(new);
        self.driver_tasks.sync(new, &self.shared.zk, &self.shared.nodes);
        self.stop_aux().await;
        self.start_pools(to_start);
        self.start_aux();
        // Old workers finish their in-flight requests in the background.
        for task in draining {
            tokio::spawn(async move {
                let _ = task.await;
            });
        }
        info!(pools = self.pools.len(), "configuration reloaded");
        Ok(())
    }

    /// Stops accepting work, finishes or releases in-flight requests (the
    /// workers' drain is bounded), releases every lock, unregisters components.
    pub async fn stop(mut self) {
        self.driver_tasks.stop();
        if let Some(web) = self.web.take() {
            web.stop().await;
        }
        for handle in self.pools.values() {
            handle.cancel.cancel();
        }
        let tasks: Vec<_> = self.pools.drain().map(|(_, h)| h.task).collect();
        let drained = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks)).await;
        if drained.is_err() {
            warn!("pool workers did not stop in time");
        }
        self.stop_aux().await;
        self.stats.0.cancel();
        let _ = (&mut self.stats.1).await;
        let _ = self.registration.unregister().await;
        self.shared.nodes.stop();
        self.shared.requests.stop();
        self.shared.pools.stop();
        self.shared.request_locks.stop();
        info!("launcher stopped");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
