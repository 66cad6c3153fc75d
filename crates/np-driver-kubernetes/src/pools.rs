//! The pools of a Kubernetes provider as the launcher runs them: limits from
//! the pool's `max-*` (the cluster itself reports no quota), node settings
//! from the labels.

use std::time::Duration;

use np_config::KubernetesProvider;
use np_provider::{pools::pool_limits, LabelSettings, LaunchPolicy, PoolDescription};
use serde_json::Value;

use crate::{bodies, machine};

/// The pools of `k`.
pub fn pools(k: &KubernetesProvider) -> Vec<PoolDescription> {
    k.pools
        .iter()
        .map(|pool| {
            let mut limits = pool_limits(pool.max_cores, pool.max_servers, pool.max_ram);
            for (key, v) in &pool.max_resources {
                limits.set(key, *v as f64);
            }
            let label_settings = pool
                .labels
                .iter()
                .map(|l| {
                    let settings = LabelSettings {
                        // Upstream leaves a Kubernetes node's username unset.
                        username: None,
                        python_path: l.python_path.clone(),
                        shell_type: l.shell_type.clone(),
                        connection_type: bodies::connection_type(l).into(),
                        connection_port: 22,
                        host_key_checking: false,
                        image_id: None,
                        diskimage: None,
                    };
                    (l.name.clone(), settings)
                })
                .collect();
            PoolDescription {
                name: pool.name.clone(),
                labels: pool.labels.iter().map(|l| l.name.clone()).collect(),
                max_servers: pool.max_servers,
                limits,
                ignore_provider_quota: true,
                priority: pool.priority,
                node_attributes: pool.node_attributes.clone().map(Value::Object),
                launch: LaunchPolicy {
                    retries: k.launch_retries,
                    // Upstream's own bounds: 30 s for the token, 300 s for the pod.
                    timeout: machine::TOKEN_WAIT + machine::POD_WAIT + Duration::from_secs(60),
                    boot_timeout: Duration::from_secs(60),
                },
                label_settings,
                cloud: k.context.clone(),
                never_launch: false,
            }
        })
        .collect()
}
