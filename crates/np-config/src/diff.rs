//! Configuration diffing for live reload: which providers, pools and labels changed.
//!
//! Everything is compared by value on the typed configuration (defaults applied), so a
//! key written out with its default value is not a change. A provider's *settings* are
//! everything but its pools; a pool's settings are everything but its labels. For a
//! static pool, a label "changes" when the set of nodes offering it changes.

use crate::drivers::aws::{AwsLabel, AwsPool};
use crate::drivers::kubernetes::{KubernetesLabel, KubernetesPool};
use crate::drivers::openstack::{OpenStackLabel, OpenStackPool};
use crate::drivers::static_::{StaticNode, StaticPool};
use crate::model::{Config, Provider, ProviderDriver};

/// What changed between two configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Providers only in the new configuration.
    pub providers_added: Vec<String>,
    /// Providers only in the old configuration.
    pub providers_removed: Vec<String>,
    /// Providers in both that differ.
    pub providers_changed: Vec<ProviderDiff>,
    /// Top-level labels only in the new configuration.
    pub labels_added: Vec<String>,
    /// Top-level labels only in the old configuration.
    pub labels_removed: Vec<String>,
    /// Top-level labels whose `min-ready` or `max-ready-age` changed.
    pub labels_changed: Vec<String>,
    /// Diskimages only in the new configuration.
    pub diskimages_added: Vec<String>,
    /// Diskimages only in the old configuration.
    pub diskimages_removed: Vec<String>,
    /// Diskimages whose resolved settings changed.
    pub diskimages_changed: Vec<String>,
    /// `zookeeper-servers`, `zookeeper-tls` or `zookeeper-timeout` changed.
    pub zookeeper_changed: bool,
    /// `webapp` changed.
    pub webapp_changed: bool,
    /// `tenant-resource-limits` changed.
    pub tenant_limits_changed: bool,
    /// `elements-dir`, `images-dir`, `build-log-dir`, `build-log-retention` or `max-hold-age` changed.
    pub other_changed: bool,
}

impl ConfigDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }

    /// Names of providers that must be (re)started or stopped: added, removed or changed.
    pub fn affected_providers(&self) -> Vec<&str> {
        self.providers_added
            .iter()
            .chain(&self.providers_removed)
            .map(String::as_str)
            .chain(self.providers_changed.iter().map(|p| p.name.as_str()))
            .collect()
    }
}

/// Changes to one provider present in both configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderDiff {
    /// The provider's name.
    pub name: String,
    /// The provider switched drivers (every pool then counts as removed and added).
    pub driver_changed: bool,
    /// A provider-level setting (anything but `pools`) changed.
    pub settings_changed: bool,
    /// Pools only in the new configuration.
    pub pools_added: Vec<String>,
    /// Pools only in the old configuration.
    pub pools_removed: Vec<String>,
    /// Pools in both that differ.
    pub pools_changed: Vec<PoolDiff>,
}

/// Changes to one pool present in both configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDiff {
    /// The pool's name.
    pub name: String,
    /// A pool-level setting (anything but its labels) changed.
    pub settings_changed: bool,
    /// Labels only in the new pool.
    pub labels_added: Vec<String>,
    /// Labels only in the old pool.
    pub labels_removed: Vec<String>,
    /// Labels in both whose settings changed.
    pub labels_changed: Vec<String>,
}

/// A pool without its labels, for comparing pool-level settings.
#[derive(PartialEq)]
enum PoolSettings {
    OpenStack(OpenStackPool),
    Aws(AwsPool),
    Static(StaticPool),
    Kubernetes(KubernetesPool),
}

/// One label of a pool, for comparing label settings.
#[derive(PartialEq)]
enum LabelSettings {
    OpenStack(Box<OpenStackLabel>),
    Aws(Box<AwsLabel>),
    Static(Vec<StaticNode>),
    Kubernetes(Box<KubernetesLabel>),
}

struct PoolView {
    name: String,
    settings: PoolSettings,
    labels: Vec<(String, LabelSettings)>,
}

fn pool_views(p: &Provider) -> Vec<PoolView> {
    match &p.driver {
        ProviderDriver::OpenStack(o) | ProviderDriver::Fake(o) => o
            .pools
            .iter()
            .map(|pool| PoolView {
                name: pool.name.clone(),
                settings: PoolSettings::OpenStack(OpenStackPool { labels: Vec::new(), ..pool.clone() }),
                labels: pool
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), LabelSettings::OpenStack(Box::new(l.clone()))))
                    .collect(),
            })
            .collect(),
        ProviderDriver::Aws(a) => a
            .pools
            .iter()
            .map(|pool| PoolView {
                name: pool.name.clone(),
                settings: PoolSettings::Aws(AwsPool { labels: Vec::new(), ..pool.clone() }),
                labels: pool
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), LabelSettings::Aws(Box::new(l.clone()))))
                    .collect(),
            })
            .collect(),
        ProviderDriver::Static(s) => s
            .pools
            .iter()
            .map(|pool| PoolView {
                name: pool.name.clone(),
                settings: PoolSettings::Static(StaticPool { nodes: Vec::new(), ..pool.clone() }),
                labels: pool
                    .labels()
                    .into_iter()
                    .map(|label| {
                        let nodes =
                            pool.nodes.iter().filter(|n| n.labels.contains(&label)).cloned().collect();
                        (label, LabelSettings::Static(nodes))
                    })
                    .collect(),
            })
            .collect(),
        ProviderDriver::Kubernetes(k) => k
            .pools
            .iter()
            .map(|pool| PoolView {
                name: pool.name.clone(),
                settings: PoolSettings::Kubernetes(KubernetesPool { labels: Vec::new(), ..pool.clone() }),
                labels: pool
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), LabelSettings::Kubernetes(Box::new(l.clone()))))
                    .collect(),
            })
            .collect(),
    }
}

/// The provider without pools, for comparing provider-level settings.
fn without_pools(p: &Provider) -> Provider {
    let mut p = p.clone();
    match &mut p.driver {
        ProviderDriver::OpenStack(o) | ProviderDriver::Fake(o) => o.pools.clear(),
        ProviderDriver::Aws(a) => a.pools.clear(),
        ProviderDriver::Static(s) => s.pools.clear(),
        ProviderDriver::Kubernetes(k) => k.pools.clear(),
    }
    p
}

/// Splits two named lists into added, removed and changed names (new file order).
fn named<T: PartialEq>(old: &[(String, T)], new: &[(String, T)]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added =
        new.iter().filter(|(n, _)| !old.iter().any(|(o, _)| o == n)).map(|(n, _)| n.clone()).collect();
    let removed =
        old.iter().filter(|(n, _)| !new.iter().any(|(o, _)| o == n)).map(|(n, _)| n.clone()).collect();
    let changed = new
        .iter()
        .filter(|(n, v)| old.iter().any(|(o, ov)| o == n && ov != v))
        .map(|(n, _)| n.clone())
        .collect();
    (added, removed, changed)
}

fn diff_provider(old: &Provider, new: &Provider) -> Option<ProviderDiff> {
    let mut d = ProviderDiff {
        name: new.name.clone(),
        driver_changed: old.driver_name() != new.driver_name(),
        settings_changed: without_pools(old) != without_pools(new),
        ..ProviderDiff::default()
    };
    let old_pools = pool_views(old);
    let new_pools = pool_views(new);
    for np in &new_pools {
        match old_pools.iter().find(|op| op.name == np.name) {
            None => d.pools_added.push(np.name.clone()),
            Some(_) if d.driver_changed => {
                d.pools_removed.push(np.name.clone());
                d.pools_added.push(np.name.clone());
            }
            Some(op) => {
                let (labels_added, labels_removed, labels_changed) = named(&op.labels, &np.labels);
                let pd = PoolDiff {
                    name: np.name.clone(),
                    settings_changed: op.settings != np.settings,
                    labels_added,
                    labels_removed,
                    labels_changed,
                };
                if pd != (PoolDiff { name: np.name.clone(), ..PoolDiff::default() }) {
                    d.pools_changed.push(pd);
                }
            }
        }
    }
    for op in &old_pools {
        if !new_pools.iter().any(|np| np.name == op.name) {
            d.pools_removed.push(op.name.clone());
        }
    }
    let unchanged = !d.driver_changed
        && !d.settings_changed
        && d.pools_added.is_empty()
        && d.pools_removed.is_empty()
        && d.pools_changed.is_empty();
    (!unchanged).then_some(d)
}

/// Compares two configurations.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    for p in &new.providers {
        match old.provider(&p.name) {
            None => d.providers_added.push(p.name.clone()),
            Some(op) => d.providers_changed.extend(diff_provider(op, p)),
        }
    }
    d.providers_removed =
        old.providers.iter().filter(|p| new.provider(&p.name).is_none()).map(|p| p.name.clone()).collect();

    let labels = |c: &Config| c.labels.iter().map(|l| (l.name.clone(), l.clone())).collect::<Vec<_>>();
    (d.labels_added, d.labels_removed, d.labels_changed) = named(&labels(old), &labels(new));
    let images = |c: &Config| c.diskimages.iter().map(|i| (i.name.clone(), i.clone())).collect::<Vec<_>>();
    (d.diskimages_added, d.diskimages_removed, d.diskimages_changed) = named(&images(old), &images(new));

    d.zookeeper_changed = old.zookeeper != new.zookeeper;
    d.webapp_changed = old.webapp != new.webapp;
    d.tenant_limits_changed = old.tenant_resource_limits != new.tenant_resource_limits;
    d.other_changed = old.elements_dir != new.elements_dir
        || old.images_dir != new.images_dir
        || old.build_log_dir != new.build_log_dir
        || old.build_log_retention != new.build_log_retention
        || old.max_hold_age != new.max_hold_age;
    d
}
