//! [`StaticProvider`]: the `np_provider::Provider` of a static provider.
//!
//! Static hosts exist before Nodepool and outlive it, so the provider never
//! creates or destroys anything (upstream `StaticNodeProvider`):
//! * `create` fails with [`ProviderError::Fatal`] (the launcher must not
//!   launch for static pools: upstream's `hasRemainingQuota` is always false);
//! * `delete` succeeds at once, so the launcher's cleanup can remove the
//!   znode of a `used` or `deleting` static node; [`crate::sync`] then
//!   registers the slot again;
//! * limits are unlimited, a node costs `instances = 1`, and there are no
//!   instances to list (no leak cleanup).

use async_trait::async_trait;
use np_core::Quota;
use np_provider::{
    CreateMachine, DeleteMachine, Instance, LaunchRequest, NothingToDelete, Provider, ProviderError,
    RefusedCreate,
};
use serde_json::Value;

/// The error message of a create attempt.
pub const NOT_LAUNCHED: &str = "static nodes are not launched";

/// A static provider.
#[derive(Debug, Clone)]
pub struct StaticProvider {
    name: String,
}

impl StaticProvider {
    /// A provider called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        StaticProvider { name: name.into() }
    }
}

#[async_trait]
impl Provider for StaticProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, request: LaunchRequest) -> Box<dyn CreateMachine> {
        tracing::warn!(provider = %self.name, node = %request.node_id, "launch requested from a static provider");
        Box::new(RefusedCreate(NOT_LAUNCHED.to_owned()))
    }

    fn delete(&self, _external_id: &Value) -> Box<dyn DeleteMachine> {
        Box::new(NothingToDelete)
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(Vec::new())
    }

    async fn quota_limits(&self) -> Result<Quota, ProviderError> {
        Ok(Quota::unlimited())
    }

    fn quota_for_label(&self, _pool: &str, _label: &str) -> Quota {
        Quota::new(Some(0.0), Some(1.0), Some(0.0), 1.0)
    }
}

/// The pools of a static provider as the launcher runs them: every node is
/// pre-existing, so the pools only ever hand out ready nodes (`never_launch`);
/// `max-servers` limits the registrations.
pub fn pools(config: &np_config::StaticProvider) -> Vec<np_provider::PoolDescription> {
    config
        .pools
        .iter()
        .map(|pool| np_provider::PoolDescription {
            name: pool.name.clone(),
            labels: pool.labels(),
            max_servers: pool.max_servers,
            limits: np_provider::pools::pool_limits(None, pool.max_servers, None),
            ignore_provider_quota: true,
            priority: pool.priority,
            node_attributes: pool.node_attributes.clone().map(Value::Object),
            launch: np_provider::LaunchPolicy {
                retries: 1,
                timeout: std::time::Duration::from_secs(60),
                boot_timeout: std::time::Duration::from_secs(60),
            },
            label_settings: std::collections::HashMap::new(),
            cloud: None,
            never_launch: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use np_provider::Step;

    #[tokio::test]
    async fn never_launches_and_deletes_nothing() {
        let p = StaticProvider::new("static-a");
        assert_eq!(p.name(), "static-a");
        let mut create = p.create(LaunchRequest::new("0000000001", "static-a", "main", "l"));
        assert_eq!(create.step().await, Err(ProviderError::Fatal(NOT_LAUNCHED.to_owned())));
        assert_eq!(create.external_id(), None);
        let mut delete = p.delete(&Value::from("host"));
        assert_eq!(delete.step().await, Ok(Step::Done(())));
        assert_eq!(p.list_instances().await, Ok(Vec::new()));
        assert_eq!(p.quota_limits().await, Ok(Quota::unlimited()));
        assert_eq!(p.quota_for_label("main", "l"), Quota::new(Some(0.0), Some(1.0), Some(0.0), 1.0));
    }
}
