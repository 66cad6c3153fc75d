//! Provider construction: one [`np_provider::Provider`] per configured
//! provider, for every driver this project has (fake, static, OpenStack,
//! AWS, Kubernetes). Shared by the launcher and the builder, so neither
//! depends on the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use np_config::{Config, ProviderDriver};
use np_driver_fake::{FakeCloud, FakeProvider, FakeSettings};
use np_provider::{Provider, ProviderSet};

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
