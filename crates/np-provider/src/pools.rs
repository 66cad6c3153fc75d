//! What a driver tells the launcher about the pools of one provider: their
//! labels, limits, launch policy and the settings of the nodes each label
//! makes. The launcher adds what is not the driver's business (the
//! provider's `priority` default, `max-concurrency`, tenant limits) and runs
//! one generic pool worker per [`PoolDescription`]; it never looks at a
//! driver's configuration itself.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use np_core::Quota;
use serde_json::Value;

/// How a pool's launches run.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPolicy {
    /// Attempts before giving up (`launch-retries`).
    pub retries: u32,
    /// Time allowed for one attempt (`launch-timeout`).
    pub timeout: Duration,
    /// Time allowed for the node to answer SSH once the cloud says it is up
    /// (`boot-timeout`), used by the host-key scan.
    pub boot_timeout: Duration,
}

/// Per-label node settings from the image and label configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSettings {
    pub username: Option<String>,
    pub python_path: String,
    pub shell_type: Option<String>,
    /// `ssh`, `winrm`, `network_cli`, ...
    pub connection_type: String,
    pub connection_port: u16,
    /// Scan the node's SSH host keys before it becomes ready.
    pub host_key_checking: bool,
    /// What `image_id` records for a cloud image: the `cloud-images` entry's
    /// `name`, as upstream's state machine writes it (`label.cloud_image.name`).
    pub image_id: Option<String>,
    /// The diskimage the label boots: the launcher looks up its newest ready
    /// upload in this provider, declines requests while there is none, and
    /// hands the upload's cloud id to the driver.
    pub diskimage: Option<String>,
}

impl Default for LabelSettings {
    fn default() -> Self {
        LabelSettings {
            username: Some("zuul".into()),
            python_path: "auto".into(),
            shell_type: None,
            connection_type: "ssh".into(),
            connection_port: 22,
            host_key_checking: true,
            image_id: None,
            diskimage: None,
        }
    }
}

/// One pool of a provider, as its driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDescription {
    /// The pool's name.
    pub name: String,
    /// The labels it serves.
    pub labels: BTreeSet<String>,
    /// `max-servers`; `None` = unlimited.
    pub max_servers: Option<u64>,
    /// The pool's own limits (`max-servers` as instances, cores, RAM,
    /// volumes...; unset ones unlimited).
    pub limits: Quota,
    /// Skip the cloud's limits (the pool's still apply). Drivers whose cloud
    /// reports no quota set it.
    pub ignore_provider_quota: bool,
    /// The pool's own `priority`, if set (the provider's applies otherwise).
    pub priority: Option<i64>,
    pub node_attributes: Option<Value>,
    pub launch: LaunchPolicy,
    /// Node settings per label.
    pub label_settings: HashMap<String, LabelSettings>,
    /// The cloud name written on nodes.
    pub cloud: Option<String>,
    /// Pools of pre-existing nodes: only ever reused, never launched; with no
    /// free node a request is left for later (not paused, not declined).
    pub never_launch: bool,
}

/// `max-cores`, `max-servers`, `max-ram` (and extra resources) as pool
/// limits; unset ones unlimited.
pub fn pool_limits(cores: Option<u64>, servers: Option<u64>, ram: Option<u64>) -> Quota {
    let f = |v: Option<u64>| v.map(|v| v as f64);
    Quota::new(f(cores), f(servers), f(ram), f64::INFINITY)
}

/// The pools of a provider written in the OpenStack schema (the OpenStack
/// driver's, and the simulated `fake` cloud's, which shares it).
pub fn openstack_schema_pools(os: &np_config::OpenStackProvider) -> Vec<PoolDescription> {
    os.pools
        .iter()
        .map(|pool| {
            let mut limits = pool_limits(pool.max_cores, pool.max_servers, pool.max_ram);
            if let Some(v) = pool.max_volumes {
                limits.set("volumes", v as f64);
            }
            if let Some(v) = pool.max_volume_gb {
                limits.set("volume-gb", v as f64);
            }
            PoolDescription {
                name: pool.name.clone(),
                labels: pool.labels.iter().map(|l| l.name.clone()).collect(),
                max_servers: pool.max_servers,
                limits,
                ignore_provider_quota: pool.ignore_provider_quota,
                priority: pool.priority,
                node_attributes: pool.node_attributes.clone().map(Value::Object),
                launch: LaunchPolicy {
                    retries: os.launch_retries,
                    timeout: os.launch_timeout,
                    boot_timeout: os.boot_timeout,
                },
                label_settings: pool
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), openstack_label_settings(os, pool, l)))
                    .collect(),
                cloud: Some(os.cloud.clone()),
                never_launch: false,
            }
        })
        .collect()
}

/// Node settings of an OpenStack-schema label, from its cloud image or
/// provider diskimage. The label's `host-key-checking` wins over its pool's
/// (np-config gives the label the pool's value when it sets none), as upstream.
fn openstack_label_settings(
    os: &np_config::OpenStackProvider,
    _pool: &np_config::OpenStackPool,
    label: &np_config::OpenStackLabel,
) -> LabelSettings {
    let mut s = LabelSettings { host_key_checking: label.host_key_checking, ..Default::default() };
    match &label.image {
        np_config::LabelImage::CloudImage(name) => {
            if let Some(img) = os.cloud_image(name) {
                s.username = img.username.clone();
                s.python_path = img.python_path.clone();
                s.shell_type = img.shell_type.clone();
                s.connection_type = img.connection_type.clone();
                s.connection_port = img.connection_port;
                s.image_id = Some(img.name.clone());
            }
        }
        np_config::LabelImage::DiskImage(name) => {
            s.diskimage = Some(name.clone());
            if let Some(img) = os.diskimage(name) {
                s.username = Some(img.username.clone());
                s.python_path = img.python_path.clone();
                s.shell_type = img.shell_type.clone();
                s.connection_type = img.connection_type.clone();
                s.connection_port = img.connection_port;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_pools(yaml: &str) -> Vec<PoolDescription> {
        let text = format!(
            "labels:\n  - name: small\n  - name: large\nproviders:\n  - name: os\n    cloud: c\n{yaml}"
        );
        let config =
            np_config::load_str_with(&text, "test.yaml", None, &[]).unwrap_or_else(|e| panic!("{e}"));
        match &config.providers[0].driver {
            np_config::ProviderDriver::OpenStack(os) => openstack_schema_pools(os),
            other => panic!("not OpenStack: {other:?}"),
        }
    }

    const POOL: &str = "    cloud-images:\n      - name: focal\n        image-name: ubuntu-20.04-cloud\n    pools:\n      - name: p\n";

    #[test]
    fn a_labels_host_key_checking_wins_over_its_pools() {
        let pools = os_pools(&format!(
            "{POOL}        host-key-checking: false\n        labels:\n          - name: small\n            cloud-image: focal\n            min-ram: 1\n            host-key-checking: true\n          - name: large\n            cloud-image: focal\n            min-ram: 1\n"
        ));
        let settings = &pools[0].label_settings;
        assert!(settings["small"].host_key_checking, "label true under pool false scans");
        assert!(!settings["large"].host_key_checking, "a label without the key takes the pool's false");

        let pools = os_pools(&format!(
            "{POOL}        labels:\n          - name: small\n            cloud-image: focal\n            min-ram: 1\n            host-key-checking: false\n          - name: large\n            cloud-image: focal\n            min-ram: 1\n"
        ));
        let settings = &pools[0].label_settings;
        assert!(!settings["small"].host_key_checking, "label false under pool true does not scan");
        assert!(settings["large"].host_key_checking, "the default is to scan");
    }

    #[test]
    fn cloud_image_nodes_record_the_cloud_images_name() {
        let pools = os_pools(&format!(
            "{POOL}        labels:\n          - name: small\n            cloud-image: focal\n            min-ram: 1\n"
        ));
        // Upstream writes `label.cloud_image.name`, not the image looked up in the cloud.
        assert_eq!(pools[0].label_settings["small"].image_id.as_deref(), Some("focal"));
    }
}
