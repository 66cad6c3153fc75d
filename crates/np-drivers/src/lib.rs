//! The registry of drivers: the one crate that names every driver crate
//! (fake, static, OpenStack, AWS, Kubernetes). The launcher and the builder
//! know no driver; they ask this crate for
//! * the [`np_provider::Provider`] of each configured provider
//!   ([`build_providers`], [`build_providers_async`]);
//! * the pools a provider serves, with their labels, limits and node
//!   settings ([`pools`]);
//! * whether a provider's driver manages images ([`manages_images`]);
//! * the drivers' background tasks, such as the static driver's
//!   registration of its hosts ([`DriverTasks`]).
//!
//! Adding a driver means one arm in each `match` below (see ARCHITECTURE.md,
//! "Adding a driver").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use np_config::{Config, ProviderDriver};
use np_driver_fake::{FakeCloud, FakeProvider, FakeSettings};
use np_provider::{PoolDescription, Provider, ProviderSet};
use tokio_util::sync::CancellationToken;

/// The pools of one configured provider, as its driver describes them.
pub fn pools(p: &np_config::Provider) -> Vec<PoolDescription> {
    match &p.driver {
        ProviderDriver::Fake(c) => np_driver_fake::pools(c),
        ProviderDriver::Static(c) => np_driver_static::pools(c),
        ProviderDriver::OpenStack(c) => np_driver_openstack::pools(c),
        ProviderDriver::Aws(c) => np_driver_aws::pools(c),
        ProviderDriver::Kubernetes(c) => np_driver_kubernetes::pools(c),
    }
}

/// Whether the provider's driver uploads and deletes images for the builder.
pub fn manages_images(p: &np_config::Provider) -> bool {
    match &p.driver {
        ProviderDriver::Fake(_) | ProviderDriver::OpenStack(_) | ProviderDriver::Aws(_) => true,
        ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => false,
    }
}

/// The simulated clouds behind the `fake` providers of `providers`, so that
/// rebuilding those providers (a configuration reload) keeps their
/// instances; pass the result to [`build_providers_async`].
pub fn simulated_clouds(providers: &ProviderSet) -> HashMap<String, FakeCloud> {
    providers
        .iter()
        .filter_map(|(name, provider)| {
            let fake = provider.as_any()?.downcast_ref::<FakeProvider>()?;
            Some((name.clone(), fake.cloud().clone()))
        })
        .collect()
}

/// The drivers' long-running tasks besides launches: today the static
/// driver's registration of its hosts as ready nodes. [`DriverTasks::sync`]
/// starts, updates and stops them to match a configuration.
#[derive(Default)]
pub struct DriverTasks {
    statics: HashMap<String, (np_driver_static::StaticSyncHandle, CancellationToken)>,
}

impl DriverTasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts, updates or stops the tasks to match `config`.
    pub fn sync(&mut self, config: &Config, zk: &np_zk::Zk, nodes: &np_zk::NodeCache) {
        let mut wanted = HashMap::new();
        for p in &config.providers {
            if let ProviderDriver::Static(st) = &p.driver {
                wanted.insert(p.name.clone(), st.clone());
            }
        }
        self.statics.retain(|name, (_, cancel)| {
            let keep = wanted.contains_key(name);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for (name, cfg) in wanted {
            if let Some((handle, _)) = self.statics.get(&name) {
                if handle.config() != cfg {
                    handle.update_config(cfg);
                }
                continue;
            }
            let cancel = CancellationToken::new();
            let (handle, _task) = np_driver_static::StaticSync::spawn(
                zk.clone(),
                nodes.clone(),
                name.clone(),
                cfg,
                np_driver_static::SyncOptions::default(),
                cancel.clone(),
            );
            self.statics.insert(name, (handle, cancel));
        }
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for (_, (_, cancel)) in self.statics.drain() {
            cancel.cancel();
        }
    }
}

/// Builds a provider for every provider in `config` that this launcher can
/// drive. Fake providers get a fresh simulated cloud; `fake_clouds` lets tests
/// and benchmarks supply (and then inspect) their own.
pub fn build_providers(
    config: &Config,
    fake_clouds: &HashMap<String, FakeCloud>,
) -> anyhow::Result<ProviderSet> {
    let mut out: ProviderSet = HashMap::new();
    for p in &config.providers {
        match build_one(p, fake_clouds)? {
            Some(provider) => {
                out.insert(p.name.clone(), provider);
            }
            None => anyhow::bail!(
                "provider '{}': driver '{}' needs build_providers_async",
                p.name,
                p.driver_name().as_str()
            ),
        }
    }
    Ok(out)
}

/// Like [`build_providers`], for every driver, including those whose
/// construction talks to the cloud (AWS reads its instance types, OpenStack
/// authenticates and reads its flavors). Only the
/// providers named in `only` are built when it is given.
pub async fn build_providers_async(
    config: &Config,
    fake_clouds: &HashMap<String, FakeCloud>,
    only: Option<&std::collections::BTreeSet<String>>,
) -> anyhow::Result<ProviderSet> {
    let mut out: ProviderSet = HashMap::new();
    for p in &config.providers {
        if only.is_some_and(|names| !names.contains(&p.name)) {
            continue;
        }
        let provider: Arc<dyn Provider> = match &p.driver {
            ProviderDriver::Aws(aws) => Arc::new(
                np_driver_aws::AwsProvider::new(
                    &p.name,
                    aws,
                    std::env::var("NODEPOOL_AWS_ENDPOINT_URL").ok(),
                )
                .await
                .with_context(|| format!("provider '{}': cannot set up AWS", p.name))?,
            ),
            ProviderDriver::OpenStack(os) => Arc::new(
                np_driver_openstack::OpenStackProvider::new(&p.name, os)
                    .await
                    .with_context(|| format!("provider '{}': cannot set up OpenStack", p.name))?,
            ),
            ProviderDriver::Kubernetes(k) => Arc::new(
                np_driver_kubernetes::KubernetesProvider::new(&p.name, k, None)
                    .await
                    .with_context(|| format!("provider '{}': cannot set up Kubernetes", p.name))?,
            ),
            _ => match build_one(p, fake_clouds)? {
                Some(provider) => provider,
                None => continue,
            },
        };
        out.insert(p.name.clone(), provider);
    }
    Ok(out)
}

/// The provider for one config entry, for drivers that need no I/O to set
/// up; `None` for those that do (OpenStack, AWS, Kubernetes).
fn build_one(
    p: &np_config::Provider,
    fake_clouds: &HashMap<String, FakeCloud>,
) -> anyhow::Result<Option<Arc<dyn Provider>>> {
    Ok(Some(match &p.driver {
        ProviderDriver::Fake(os) => {
            let cloud = fake_clouds.get(&p.name).cloned().unwrap_or_else(|| {
                let delay = std::env::var("NODEPOOL_FAKE_LAUNCH_DELAY_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis)
                    .unwrap_or_default();
                let settings = FakeSettings { launch_delay: delay, ..FakeSettings::default() };
                match std::env::var_os(np_driver_fake::STATE_DIR_ENV) {
                    Some(dir) => FakeCloud::persistent(&p.name, settings.clone(), std::path::Path::new(&dir))
                        .unwrap_or_else(|e| {
                            tracing::warn!(provider = %p.name, error = %e, "cannot keep the fake cloud on disk; it stays in memory");
                            FakeCloud::new(&p.name, settings)
                        }),
                    None => FakeCloud::new(&p.name, settings),
                }
            });
            Arc::new(FakeProvider::new(cloud, os.region_name.clone()).with_rate(os.rate))
        }
        ProviderDriver::Static(_) => Arc::new(np_driver_static::StaticProvider::new(&p.name)),
        ProviderDriver::Aws(_) | ProviderDriver::Kubernetes(_) | ProviderDriver::OpenStack(_) => {
            return Ok(None)
        }
    }))
}
