//! The boundary between the launcher and cloud drivers.
//!
//! One [`Provider`] exists per configured provider and is rebuilt when its
//! configuration changes. Creating and deleting an instance are **state
//! machines**: [`CreateMachine::step`] does one bounded unit of work and says
//! when to come back. The launcher owns everything that is not cloud-specific:
//! timeouts, retries, writing `external_id` to ZooKeeper as soon as it is
//! known (so a crash never leaks an instance), the quota → `aborted` path,
//! host-key scanning, metrics and logging.
//!
//! # Guarantees expected from drivers
//! * Every instance a driver creates carries the metadata of
//!   [`LaunchRequest::metadata`] (`nodepool_provider_name`, `nodepool_pool_name`,
//!   `nodepool_node_id`), so leaked instances can be found by
//!   [`Provider::list_instances`].
//! * `step` and `delete` are idempotent: the launcher may call a delete for an
//!   instance that is already gone, and must get `Ok`.
//! * Errors are classified ([`ProviderError`]) so the launcher can act without
//!   parsing messages.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use np_core::Quota;
use serde_json::Value;

pub mod keyscan;
pub mod pools;
pub mod rate;
pub mod template;
pub use pools::{LabelSettings, LaunchPolicy, PoolDescription};
pub use rate::RateLimiter;

/// Metadata key naming the provider that owns an instance.
pub const META_PROVIDER: &str = "nodepool_provider_name";
/// Metadata key naming the pool.
pub const META_POOL: &str = "nodepool_pool_name";
/// Metadata key naming the node id.
pub const META_NODE_ID: &str = "nodepool_node_id";
/// Builder metadata on uploaded images: the build id.
pub const META_BUILD_ID: &str = "nodepool_build_id";
/// Builder metadata on uploaded images: the upload id.
pub const META_UPLOAD_ID: &str = "nodepool_upload_id";

/// Provider instances by provider name.
pub type ProviderSet = std::collections::HashMap<String, std::sync::Arc<dyn Provider>>;

/// A classified cloud error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The cloud refused for quota: the node is aborted and relaunched later,
    /// the pool pauses until quota frees.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// No capacity of this kind right now: counts as a launch failure (retried).
    #[error("insufficient capacity: {0}")]
    Capacity(String),
    /// A temporary failure (throttling, timeouts): retry after backing off.
    #[error("transient cloud error: {0}")]
    Transient(String),
    /// The resource does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A permanent failure for this request (bad image, invalid flavor).
    #[error("{0}")]
    Fatal(String),
}

/// How long the launcher lets one cloud call (one machine step, a quota or
/// listing read) run before it counts as hung: a cloud that stops answering
/// must not hold a launch, a delete or a pool's pass forever. Drivers put
/// their own, shorter, per-request timeouts under it.
pub const CLOUD_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one cloud call with a deadline; a call still running after
/// `limit` is dropped and reported as a transient error (retried or
/// backed off like any other), naming `what`.
pub async fn with_deadline<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Transient(format!("{what}: no answer from the cloud in {limit:?}"))),
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// Server name, `np<node id>`.
    pub hostname: String,
    /// The ZooKeeper node id.
    pub node_id: String,
    /// Provider name.
    pub provider: String,
    /// Pool name.
    pub pool: String,
    /// Label name.
    pub label: String,
    /// Metadata/tags to put on every resource.
    pub metadata: BTreeMap<String, String>,
    /// The request's safe attributes (`id`, `requestor`, `tenant_name`,
    /// `requestor_data`...), for templated properties such as AWS
    /// `dynamic-tags` or OpenStack `dynamic-instance-properties`.
    pub request_attributes: Option<Value>,
    /// For a label that boots a `diskimage`: the cloud id of its newest
    /// ready upload in this provider (e.g. an AMI id).
    pub image_external_id: Option<String>,
    /// The availability zone the launcher chose for the request's nodes
    /// (upstream's `chosen_az`: one zone for all nodes of a request, see
    /// [`Provider::availability_zones`]); `None`: the driver or the cloud
    /// chooses.
    pub az: Option<String>,
}

impl LaunchRequest {
    /// A request with the standard metadata filled in.
    pub fn new(node_id: &str, provider: &str, pool: &str, label: &str) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert(META_PROVIDER.to_owned(), provider.to_owned());
        metadata.insert(META_POOL.to_owned(), pool.to_owned());
        metadata.insert(META_NODE_ID.to_owned(), node_id.to_owned());
        LaunchRequest {
            hostname: format!("np{node_id}"),
            node_id: node_id.to_owned(),
            provider: provider.to_owned(),
            pool: pool.to_owned(),
            label: label.to_owned(),
            metadata,
            request_attributes: None,
            image_external_id: None,
            az: None,
        }
    }
}

/// A running (or listed) instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instance {
    /// The cloud's id (a string, or an object for AWS).
    pub external_id: Value,
    pub interface_ip: Option<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub az: Option<String>,
    pub region: Option<String>,
    pub host_id: Option<String>,
    pub cloud: Option<String>,
    /// SSH host keys, when the driver knows them without a scan.
    pub host_keys: Vec<String>,
    /// The instance's metadata (for leak detection).
    pub metadata: BTreeMap<String, String>,
    /// Driver-specific node properties (Nodepool 11 `node_properties`).
    pub node_properties: Option<Value>,
    /// The node's `connection_type` when the driver decides it (Kubernetes:
    /// `namespace` or `kubectl`); `None` keeps the label's.
    pub connection_type: Option<String>,
    /// The node's `connection_port` when the driver decides it (Kubernetes:
    /// an object with the cluster credentials); `None` keeps the label's.
    pub connection_port: Option<Value>,
}

/// One cloud instance's tags and resource use (see [`Provider::instance_usage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceUsage {
    /// The instance's metadata or tags (`nodepool_provider_name`,
    /// `nodepool_node_id` for Nodepool's instances).
    pub metadata: BTreeMap<String, String>,
    /// What it consumes.
    pub quota: Quota,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<T> {
    /// Not done; call `step` again after this long.
    Pending(Duration),
    /// Done.
    Done(T),
}

/// A create in progress.
#[async_trait]
pub trait CreateMachine: Send {
    /// Advances by one bounded unit of work.
    async fn step(&mut self) -> Result<Step<Instance>, ProviderError>;
    /// The cloud id, as soon as it is known.
    fn external_id(&self) -> Option<Value>;
    /// A short state name for logs and metrics.
    fn state(&self) -> &'static str;
}

/// A delete in progress.
#[async_trait]
pub trait DeleteMachine: Send {
    /// Advances; `Done(())` once the instance is gone.
    async fn step(&mut self) -> Result<Step<()>, ProviderError>;
}

/// A create that fails at once with [`ProviderError::Fatal`]: for a driver
/// that never launches (static) or a request it cannot serve (a label gone
/// after a reload).
pub struct RefusedCreate(pub String);

#[async_trait]
impl CreateMachine for RefusedCreate {
    async fn step(&mut self) -> Result<Step<Instance>, ProviderError> {
        Err(ProviderError::Fatal(self.0.clone()))
    }
    fn external_id(&self) -> Option<Value> {
        None
    }
    fn state(&self) -> &'static str {
        "refused"
    }
}

/// A delete with nothing to do (done at once).
pub struct NothingToDelete;

#[async_trait]
impl DeleteMachine for NothingToDelete {
    async fn step(&mut self) -> Result<Step<()>, ProviderError> {
        Ok(Step::Done(()))
    }
}

/// A built disk image to upload (the builder's upload worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUploadRequest {
    /// The provider's `diskimages` entry (the diskimage name).
    pub diskimage: String,
    /// The image file.
    pub path: std::path::PathBuf,
    /// Its disk format (`qcow2`, `raw`, ...).
    pub format: String,
    /// The name to give it in the cloud.
    pub name: String,
    /// Tags or properties for the cloud image: the diskimage's metadata and
    /// the builder's `nodepool_provider_name`, `nodepool_build_id` and
    /// `nodepool_upload_id`.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The file's MD5 and SHA-256 (hex), from diskimage-builder's checksum
    /// files, when present.
    pub md5: Option<String>,
    /// See `md5`.
    pub sha256: Option<String>,
}

/// One configured provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider name.
    fn name(&self) -> &str;
    /// Starts creating an instance.
    fn create(&self, request: LaunchRequest) -> Box<dyn CreateMachine>;
    /// Starts deleting an instance.
    fn delete(&self, external_id: &Value) -> Box<dyn DeleteMachine>;
    /// Instances that carry this provider's metadata (for leak cleanup).
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError>;
    /// The cloud's limits for this provider (∞ where unknown).
    async fn quota_limits(&self) -> Result<Quota, ProviderError>;
    /// What one node of `label` consumes in `pool` (pools may size one
    /// label differently, as upstream's `quotaNeededByLabel(label, pool)`).
    fn quota_for_label(&self, pool: &str, label: &str) -> Quota;
    /// Every instance the cloud account runs where this provider launches,
    /// ours or not, with what it consumes: the launcher counts those that
    /// are not nodes of this provider against the cloud's limits (upstream's
    /// unmanaged quota). Default: the driver knows of none.
    async fn instance_usage(&self) -> Result<Vec<InstanceUsage>, ProviderError> {
        Ok(Vec::new())
    }
    /// How often the cloud-side usage ([`Provider::instance_usage`]) or
    /// limits can change without any ZooKeeper event: a pool paused at this
    /// provider's quota re-checks that often. `None` (the default): only
    /// ZooKeeper changes free quota.
    fn usage_refresh(&self) -> Option<Duration> {
        None
    }
    /// Uploads a built image; returns its id in the cloud (the upload's
    /// `external_id`). Only drivers that manage images implement it.
    async fn upload_image(&self, request: &ImageUploadRequest) -> Result<String, ProviderError> {
        Err(ProviderError::Fatal(format!(
            "provider {} cannot upload image {}: its driver does not manage images",
            self.name(),
            request.name
        )))
    }
    /// Deletes an uploaded image (and what belongs to it, such as its
    /// snapshots). An image that is already gone is not an error.
    async fn delete_image(&self, external_id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Fatal(format!(
            "provider {} cannot delete image {external_id}: its driver does not manage images",
            self.name()
        )))
    }
    /// The availability zones a new node of `pool` may be placed in (the
    /// pool's configured zones, else the cloud's available ones). The
    /// launcher picks one at random for the first node of a request and
    /// passes it in [`LaunchRequest::az`]; the request's later nodes, and
    /// the ready nodes it reuses, keep the zone of the nodes it already has
    /// (upstream's `getAZs` and `chosen_az`). Empty (the default): the driver
    /// has no zones to choose from, and nodes are placed by the cloud.
    async fn availability_zones(&self, pool: &str) -> Result<Vec<String>, ProviderError> {
        let _ = pool;
        Ok(Vec::new())
    }
    /// Whether `label` of `pool` can be launched now (upstream's
    /// `labelReady`): a driver returns false when what the label boots is
    /// missing in the cloud (an OpenStack cloud image not found in Glance),
    /// and the launcher then declines requests for the label, as upstream
    /// does, instead of launching nodes that must fail. Diskimage labels are
    /// the launcher's business (it waits for a ready upload). Default: ready.
    async fn label_ready(&self, pool: &str, label: &str) -> bool {
        let _ = (pool, label);
        true
    }
    /// The console output of an instance whose host-key scan failed, when
    /// the label asks for it (OpenStack's `console-log`); the launcher logs
    /// it line by line. `None` (the default): nothing to show.
    async fn console_log(&self, pool: &str, label: &str, external_id: &Value) -> Option<String> {
        let _ = (pool, label, external_id);
        None
    }
    /// Cloud resources without node metadata that the driver deleted itself
    /// as leaked since the last call (during [`Provider::list_instances`]:
    /// OpenStack's DOWN ports and unattached floating IPs), each with
    /// upstream's metric name (`ports`, `floatingips`) and how many. The
    /// launcher counts them as `nodepool.provider.<provider>.leaked.<name>`.
    /// Default: none.
    fn take_leaked(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// The concrete provider, for code that must keep driver state across a
    /// configuration reload (e.g. the fake driver's simulated cloud).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
