//! The `openstack` driver.
//!
//! Each node is a Nova server named `np<node id>`, carrying upstream's
//! metadata (`groups`, the label's `instance-properties` and formatted
//! `dynamic-instance-properties`, then `nodepool_provider_name`,
//! `nodepool_pool_name` and `nodepool_node_id`); its id is the node's
//! `external_id`. The driver speaks plain REST: [`clouds`] reads the
//! provider's `cloud` from clouds.yaml, [`client`] authenticates with
//! Keystone v3, finds endpoints in the catalog, rate-limits (`rate` is
//! seconds between calls) and classifies errors, [`api`] parses Nova,
//! Glance and Neutron objects, [`provider`] has the [`np_provider::Provider`]
//! with its state machines and caches, and [`image`] uploads builds to
//! Glance.
//!
//! Flavors come from `flavor-name` or `min-ram` as upstream; images from a
//! diskimage upload, a cloud image's `image-id`, or an active Glance image
//! by name; `networks` by name through Neutron; availability zones from the
//! pool or the cloud (the launcher picks one per request, else one at random
//! per server). Cinder's limits and volumes count in quota and usage; a
//! label whose cloud image Glance lacks is not ready; `console-log` labels
//! give their console when a host-key scan fails. Servers that come up
//! without a public address get a floating IP when the pool's
//! `auto-floating-ip` is on and the cloud has an external network; deletes
//! remove those first. Leaked servers are found by their metadata; DOWN
//! ports are removed by upstream's two-strike rule every
//! `port-cleanup-interval`, and unattached floating IPs with
//! `clean-floating-ips`.

pub mod api;
pub mod client;
pub use np_config::clouds;
pub mod image;
pub mod provider;

pub use provider::{OpenStackDriverError, OpenStackProvider};

/// The pools of an OpenStack provider as the launcher runs them.
pub fn pools(config: &np_config::OpenStackProvider) -> Vec<np_provider::PoolDescription> {
    np_provider::pools::openstack_schema_pools(config)
}
