//! Wiring: providers and pool workers for one configuration, the shared
//! caches, and orderly shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use np_config::{Config, ProviderDriver};
use np_driver_fake::{FakeCloud, FakeProvider, FakeSettings};
use np_provider::Provider;
use np_zk::{NodeCache, PoolComponentCache, RequestCache, Zk};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::launch::LaunchPolicy;
use crate::pool::{PoolSpec, PoolWorker, SharedState};

/// Provider instances by provider name.
pub type ProviderSet = HashMap<String, Arc<dyn Provider>>;

/// Builds a provider for every provider in `config` that this launcher can
/// drive. Fake providers get a fresh simulated cloud; `fake_clouds` lets tests
/// and benchmarks supply (and then inspect) their own.
pub fn build_providers(
    config: &Config,
    fake_clouds: &HashMap<String, FakeCloud>,
) -> anyhow::Result<ProviderSet> {
    let mut out: ProviderSet = HashMap::new();
    for p in &config.providers {
        match &p.driver {
            ProviderDriver::Fake(os) => {
                let cloud = fake_clouds.get(&p.name).cloned().unwrap_or_else(|| {
                    let delay = std::env::var("NODEPOOL_FAKE_LAUNCH_DELAY_MS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .map(Duration::from_millis)
                        .unwrap_or_default();
                    FakeCloud::new(&p.name, FakeSettings { launch_delay: delay, ..FakeSettings::default() })
                });
                out.insert(p.name.clone(), Arc::new(FakeProvider::new(cloud, os.region_name.clone())));
            }
            other => {
                anyhow::bail!(
                    "provider '{}': driver '{}' is not supported by this launcher yet",
                    p.name,
                    match other {
                        ProviderDriver::OpenStack(_) => "openstack",
                        ProviderDriver::Aws(_) => "aws",
                        ProviderDriver::Static(_) => "static",
                        ProviderDriver::Kubernetes(_) => "kubernetes",
                        ProviderDriver::Fake(_) => "fake",
                    }
                )
            }
        }
    }
    Ok(out)
}

/// The pool workers' specifications.
pub fn pool_specs(config: &Config) -> Vec<PoolSpec> {
    let mut out = Vec::new();
    for p in &config.providers {
        let ProviderDriver::Fake(os) = &p.driver else { continue };
        for pool in &os.pools {
            out.push(PoolSpec {
                provider: p.name.clone(),
                pool: pool.name.clone(),
                labels: pool.labels.iter().map(|l| l.name.clone()).collect(),
                max_servers: pool.max_servers,
                priority: p.effective_priority(pool.priority),
                node_attributes: pool.node_attributes.clone().map(serde_json::Value::Object),
                launch: LaunchPolicy { retries: os.launch_retries, timeout: os.launch_timeout },
                max_concurrency: p.max_concurrency,
                cloud: Some(os.cloud.clone()),
                tenant_limits: tenant_limits(config),
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

/// A running launcher.
pub struct Launcher {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    shared: SharedState,
    registration: np_zk::ComponentRegistration,
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
        let hostname = hostname();
        let nodes = NodeCache::start(&zk);
        let requests = RequestCache::start(&zk);
        let pools = PoolComponentCache::start(&zk);
        for ready in [
            nodes.wait_ready(Duration::from_secs(60)).await,
            requests.wait_ready(Duration::from_secs(60)).await,
            pools.wait_ready(Duration::from_secs(60)).await,
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
        let shared = SharedState { zk, nodes, requests, pools, hostname };
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for spec in pool_specs(config) {
            let Some(provider) = providers.get(&spec.provider).cloned() else { continue };
            let (shared, cancel) = (shared.clone(), cancel.child_token());
            tasks.spawn(async move {
                let name = format!("{}/{}", spec.provider, spec.pool);
                if let Err(e) = PoolWorker::run(spec, shared, provider, cancel).await {
                    warn!(pool = name, error = %e, "pool worker failed");
                }
            });
        }
        let served: std::collections::BTreeSet<String> =
            pool_specs(config).into_iter().flat_map(|s| s.labels.into_iter()).collect();
        let min_ready: BTreeMap<String, u32> = config
            .labels
            .iter()
            .filter(|l| l.min_ready > 0 && served.contains(&l.name))
            .map(|l| (l.name.clone(), l.min_ready))
            .collect();
        let upkeep = crate::maintenance::MaintenanceConfig {
            max_ready_age: config
                .labels
                .iter()
                .filter_map(|l| l.max_ready_age.map(|a| (l.name.clone(), a)))
                .collect(),
            max_hold_age: config.max_hold_age,
            pass_interval: maintenance_interval,
        };
        tasks.spawn(crate::maintenance::run(shared.clone(), providers.clone(), upkeep, cancel.child_token()));
        tasks.spawn(crate::cleanup::run(shared.clone(), providers, min_ready, cancel.child_token()));
        info!(tasks = tasks.len(), "launcher running");
        Ok(Launcher { cancel, tasks, shared, registration })
    }

    /// The shared caches (for the web API and tests).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// Stops accepting work, releases every lock, unregisters components.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("workers did not stop within 30 s; aborting them");
            self.tasks.abort_all();
        }
        let _ = self.registration.unregister().await;
        self.shared.nodes.stop();
        self.shared.requests.stop();
        self.shared.pools.stop();
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
