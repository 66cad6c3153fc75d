//! What the launcher needs to know about an AWS provider's pools and labels,
//! read from the configuration alone (no cloud calls).

use std::time::Duration;

use np_config::{AwsProvider, LabelImage};
use np_core::Quota;
use serde_json::Value;

/// The cloud name written on AWS nodes.
pub const CLOUD: &str = "AWS";

/// One pool, as the launcher's pool worker needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsPoolInfo {
    /// Pool name.
    pub name: String,
    /// The pool's label names.
    pub labels: Vec<String>,
    /// `max-servers` (inherited from the provider).
    pub max_servers: Option<u64>,
    /// Pool limits: `max-servers` as `instances`, `max-cores`, `max-ram` and
    /// `max-resources` (∞ when unset).
    pub limits: Quota,
    /// `priority` (the pool's; the provider's applies when `None`).
    pub priority: Option<i64>,
    /// `node-attributes`.
    pub node_attributes: Option<Value>,
    /// `launch-retries`.
    pub launch_retries: u32,
    /// `launch-timeout`.
    pub launch_timeout: Duration,
    /// `boot-timeout` (how long the host-key scan may take).
    pub boot_timeout: Duration,
}

/// One label's node settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsLabelInfo {
    /// Label name.
    pub name: String,
    /// `host-key-checking` of the pool: scan `interface_ip` before `ready`.
    pub host_key_checking: bool,
    /// The image's `username`.
    pub username: Option<String>,
    /// `connection-type`.
    pub connection_type: String,
    /// `connection-port`.
    pub connection_port: u16,
    /// `python-path`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// The `diskimage` the label boots (None: a cloud image).
    pub diskimage: Option<String>,
    /// The `cloud-images` entry the label boots, by its `name`: what the node's
    /// `image_id` records, as upstream (`label.cloud_image.name`).
    pub cloud_image: Option<String>,
}

/// The pools of an AWS provider.
pub fn pool_infos(config: &AwsProvider) -> Vec<AwsPoolInfo> {
    let f = |v: Option<u64>| v.map(|v| v as f64);
    config
        .pools
        .iter()
        .map(|p| {
            let mut limits = Quota::new(f(p.max_cores), f(p.max_servers), f(p.max_ram), f64::INFINITY);
            for (k, v) in &p.max_resources {
                limits.set(k, *v as f64);
            }
            AwsPoolInfo {
                name: p.name.clone(),
                labels: p.labels.iter().map(|l| l.name.clone()).collect(),
                max_servers: p.max_servers,
                limits,
                priority: p.priority,
                node_attributes: p.node_attributes.clone().map(Value::Object),
                launch_retries: config.launch_retries,
                launch_timeout: config.launch_timeout,
                boot_timeout: config.boot_timeout,
            }
        })
        .collect()
}

/// The node settings of `label` in `pool`.
pub fn label_info(config: &AwsProvider, pool: &str, label: &str) -> Option<AwsLabelInfo> {
    let l = config.pool(pool)?.labels.iter().find(|l| l.name == label)?;
    let mut info = AwsLabelInfo {
        name: l.name.clone(),
        host_key_checking: l.host_key_checking,
        username: None,
        connection_type: "ssh".into(),
        connection_port: 22,
        python_path: "auto".into(),
        shell_type: None,
        diskimage: None,
        cloud_image: None,
    };
    match &l.image {
        Some(LabelImage::CloudImage(name)) => {
            info.cloud_image = Some(name.clone());
            if let Some(ci) = config.cloud_images.iter().find(|c| &c.name == name) {
                info.username = Some(ci.username.clone());
                info.connection_type = ci.connection_type.clone();
                info.connection_port = ci.connection_port;
                info.python_path = ci.python_path.clone();
                info.shell_type = ci.shell_type.clone();
            }
        }
        Some(LabelImage::DiskImage(name)) => {
            info.diskimage = Some(name.clone());
            if let Some(di) = config.diskimages.iter().find(|d| &d.name == name) {
                info.username = di.username.clone();
                info.connection_type = di.connection_type.clone();
                info.connection_port = di.connection_port;
                info.python_path = di.python_path.clone();
                info.shell_type = di.shell_type.clone();
            }
        }
        None => {}
    }
    Some(info)
}

/// The pools of an AWS provider as the launcher runs them.
pub fn pools(config: &AwsProvider) -> Vec<np_provider::PoolDescription> {
    pool_infos(config)
        .into_iter()
        .map(|info| {
            let label_settings = info
                .labels
                .iter()
                .filter_map(|l| label_info(config, &info.name, l))
                .map(|l| {
                    let settings = np_provider::LabelSettings {
                        username: l.username,
                        python_path: l.python_path,
                        shell_type: l.shell_type,
                        connection_type: l.connection_type,
                        connection_port: l.connection_port,
                        host_key_checking: l.host_key_checking,
                        image_id: l.cloud_image,
                        diskimage: l.diskimage,
                    };
                    (l.name, settings)
                })
                .collect();
            np_provider::PoolDescription {
                name: info.name,
                labels: info.labels.into_iter().collect(),
                max_servers: info.max_servers,
                limits: info.limits,
                ignore_provider_quota: false,
                priority: info.priority,
                node_attributes: info.node_attributes,
                launch: np_provider::LaunchPolicy {
                    retries: info.launch_retries,
                    timeout: info.launch_timeout,
                    boot_timeout: info.boot_timeout,
                },
                label_settings,
                cloud: Some(CLOUD.to_owned()),
                never_launch: false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_image_nodes_record_the_cloud_images_name() {
        let text = "labels:\n  - name: small\n  - name: built\ndiskimages:\n  - name: ubuntu\n\
            providers:\n  - name: ec2\n    driver: aws\n    region-name: us-west-2\n\
            \x20   cloud-images:\n      - name: focal\n        image-id: ami-0123456789abcdef0\n        username: ubuntu\n\
            \x20   diskimages:\n      - name: ubuntu\n\
            \x20   pools:\n      - name: main\n        labels:\n\
            \x20         - name: small\n            cloud-image: focal\n            instance-type: t3.small\n            key-name: k\n\
            \x20         - name: built\n            diskimage: ubuntu\n            instance-type: t3.small\n            key-name: k\n";
        let config = np_config::load_str_with(text, "test.yaml", None, &[]).unwrap_or_else(|e| panic!("{e}"));
        let np_config::ProviderDriver::Aws(aws) = &config.providers[0].driver else { panic!("not AWS") };
        let pools = pools(aws);
        let settings = &pools[0].label_settings;
        // Upstream writes the cloud image's name (not the AMI id) on the node.
        assert_eq!(settings["small"].image_id.as_deref(), Some("focal"));
        // A diskimage label's image_id is the upload's znode path, set by the launcher.
        assert_eq!(settings["built"].image_id, None);
        assert_eq!(settings["built"].diskimage.as_deref(), Some("ubuntu"));
    }
}
