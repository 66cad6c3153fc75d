//! [`AwsProvider`]: the `driver: aws` provider on `aws-sdk-ec2`.
//!
//! One provider owns the EC2 and Service Quotas clients, three rate limiters
//! (mutating calls at `rate`, non-mutating at `10 × rate`, Service Quotas at
//! `rate`), the shared listings (instances, volumes, hosts; one paginated
//! describe per TTL for all machines), the instance-type, image and quota
//! caches, and the terminate batcher (one `TerminateInstances` for up to 50
//! queued deletes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_servicequotas as sq;
use ec2::types::{
    AllocationState, Filter, Host, Image, Instance as Ec2Instance, InstanceStateName, Tag, TagSpecification,
    Volume, VolumeState,
};
use np_config::{AwsInstance, AwsLabel, AwsPool, LabelImage};
use np_core::Quota;
use np_provider::{
    CreateMachine, DeleteMachine, Instance, LaunchRequest, Provider, ProviderError, Step, META_PROVIDER,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::{classify, code_of, is_throttling, AwsError};
use crate::listing::Listing;
use crate::quota::{self, InstanceTypeInfo, Market};
use crate::rate::RateLimiter;
use crate::tags::node_tags;
use crate::templates;

mod import;

/// The most instances one `TerminateInstances` call names (AWS recommends
/// small batches; upstream uses 50).
pub const TERMINATE_BATCH: usize = 50;

/// Tunables that are not in `nodepool.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    /// Age at which the instance, volume and host listings are refreshed
    /// (upstream: 10 s).
    pub cache_ttl: Duration,
    /// Age at which Service Quotas are read again (upstream: 300 s).
    pub quota_cache_ttl: Duration,
    /// Age at which an `image-filters` lookup is repeated (upstream: 300 s).
    pub image_cache_ttl: Duration,
    /// What `step` asks the launcher to wait between polls.
    pub poll_interval: Duration,
    /// How long the terminate batcher waits for more deletes after the first.
    pub terminate_batch_window: Duration,
    /// Read limits from Service Quotas (`false`: the cloud's limits are
    /// unknown, so unlimited; pool limits still apply).
    pub service_quotas: bool,
    /// Between two looks at a running VM Import task, and before another
    /// try after `ResourceCountLimitExceeded` (upstream's
    /// `IMAGE_UPLOAD_SLEEP`: 30 s).
    pub import_poll_interval: Duration,
    /// Part size of the multipart S3 upload that stages an image for import
    /// (files up to this size go up in one `PutObject`; at least 5 MiB).
    pub s3_part_size: u64,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            cache_ttl: Duration::from_secs(10),
            quota_cache_ttl: Duration::from_secs(300),
            image_cache_ttl: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            terminate_batch_window: Duration::from_millis(100),
            service_quotas: true,
            import_poll_interval: Duration::from_secs(30),
            s3_part_size: 64 * 1024 * 1024,
        }
    }
}

/// The SDK clients a provider uses.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// EC2.
    pub ec2: ec2::Client,
    /// Service Quotas.
    pub quotas: sq::Client,
    /// EBS direct APIs (image upload).
    pub ebs: aws_sdk_ebs::Client,
    /// S3 (staging images for import; leaked objects).
    pub s3: aws_sdk_s3::Client,
}

/// How long one EC2, S3 or EBS call attempt may take (image imports and
/// EBS uploads are many short calls).
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl AwsClients {
    /// Clients for `config`'s region and profile, with credentials from the
    /// standard chain (environment, profile, SSO, IMDS...). `endpoint_url`
    /// overrides the endpoint of both services; without it the standard
    /// `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_EC2`, ...) variables apply.
    pub async fn load(config: &np_config::AwsProvider, endpoint_url: Option<String>) -> AwsClients {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region_name.clone()));
        if let Some(profile) = &config.profile_name {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        // The SDK sets no read timeout by default: a call to an endpoint that
        // stops answering would wait forever. Every attempt gets a deadline
        // (the SDK's retries, with back-off, still apply).
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
        let sdk = loader.load().await;
        // Other S3-compatible endpoints rarely serve virtual-hosted buckets.
        let s3_config =
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(sdk.endpoint_url().is_some()).build();
        AwsClients {
            ec2: ec2::Client::new(&sdk),
            quotas: sq::Client::new(&sdk),
            ebs: aws_sdk_ebs::Client::new(&sdk),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
        }
    }
}

/// Counters of cloud calls, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AwsStats {
    /// `DescribeInstances` listings (each may be several pages).
    pub instance_listings: u64,
    /// `RunInstances` calls.
    pub run_instances: u64,
    /// `TerminateInstances` calls.
    pub terminate_calls: u64,
    /// Mutating calls let through the rate limiter.
    pub mutating_calls: u64,
    /// Non-mutating calls let through the rate limiter.
    pub non_mutating_calls: u64,
}

/// The `driver: aws` provider.
#[derive(Clone)]
pub struct AwsProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

struct TerminateJob {
    instance_id: String,
    done: oneshot::Sender<Result<(), ProviderError>>,
}

type QuotaMaps = (HashMap<String, f64>, HashMap<String, f64>);

struct Inner {
    name: String,
    config: np_config::AwsProvider,
    clients: AwsClients,
    settings: AwsSettings,
    mutating: RateLimiter,
    non_mutating: RateLimiter,
    quota_limiter: RateLimiter,
    instances: Listing<Ec2Instance>,
    volumes: Listing<Volume>,
    hosts: Listing<Host>,
    instance_types: RwLock<HashMap<String, InstanceTypeInfo>>,
    invalid_types: RwLock<HashMap<String, String>>,
    images_by_filter: Mutex<HashMap<String, (Instant, String)>>,
    images: Mutex<HashMap<String, Image>>,
    service_quotas: Mutex<Option<(Instant, QuotaMaps)>>,
    terminator: std::sync::Mutex<Option<mpsc::UnboundedSender<TerminateJob>>>,
    /// Launch template name per (pool, label) for `fleet` labels.
    templates: HashMap<(String, String), String>,
    /// Whether the launch templates were made sure of (held while doing so).
    templates_ready: Mutex<bool>,
    run_instances: std::sync::atomic::AtomicU64,
    terminate_calls: std::sync::atomic::AtomicU64,
    /// Untagged AMIs and snapshots found not to come from this provider's
    /// imports (upstream's `not_our_images` / `not_our_snapshots`).
    not_our_images: std::sync::Mutex<HashSet<String>>,
    not_our_snapshots: std::sync::Mutex<HashSet<String>>,
    /// Tags of the objects in the `object-storage` bucket, by key and ETag
    /// (an object's tags do not change, so each is read once).
    object_tags: Mutex<HashMap<(String, String), BTreeMap<String, String>>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn tag_list(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// The same tags on the instance and on its volumes (RunInstances, CreateFleet).
fn instance_and_volume_tags(tags: &BTreeMap<String, String>) -> Vec<TagSpecification> {
    [ec2::types::ResourceType::Instance, ec2::types::ResourceType::Volume]
        .into_iter()
        .map(|kind| TagSpecification::builder().resource_type(kind).set_tags(Some(tag_list(tags))).build())
        .collect()
}

/// EC2 tags as a map.
pub fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .collect()
}

/// What an `external_id` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalId {
    /// `instance`.
    pub instance: Option<String>,
    /// `host` (dedicated host).
    pub host: Option<String>,
    /// `volume` (only for leaked volumes found by `list_instances`).
    pub volume: Option<String>,
    /// `image`: an AMI (only for leaked images found by `list_instances`).
    pub image: Option<String>,
    /// `snapshot` (only for leaked snapshots found by `list_instances`).
    pub snapshot: Option<String>,
    /// `object`: a key in the `object-storage` bucket (only for leaked
    /// objects found by `list_instances`).
    pub object: Option<String>,
}

impl ExternalId {
    /// Reads `{"instance": .., "host": ..}` or an old plain instance id string.
    pub fn parse(v: &Value) -> ExternalId {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        match v {
            Value::String(id) => ExternalId { instance: Some(id.clone()), ..ExternalId::default() },
            _ => ExternalId {
                instance: s("instance"),
                host: s("host"),
                volume: s("volume"),
                image: s("image"),
                snapshot: s("snapshot"),
                object: s("object"),
            },
        }
    }

    /// The JSON form written to the node.
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("instance", &self.instance),
            ("host", &self.host),
            ("volume", &self.volume),
            ("image", &self.image),
            ("snapshot", &self.snapshot),
            ("object", &self.object),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        Value::Object(m)
    }
}

impl Inner {
    async fn call<T, E, R, Fut>(
        &self,
        limiter: &RateLimiter,
        operation: &str,
        f: impl FnOnce() -> Fut,
    ) -> Result<T, ProviderError>
    where
        Fut: std::future::Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        limiter.acquire().await;
        match f().await {
            Ok(v) => {
                limiter.succeeded();
                Ok(v)
            }
            Err(e) => {
                if code_of(&e).is_some_and(is_throttling) {
                    warn!(provider = %self.name, operation, "throttled by AWS; backing off");
                    limiter.throttled();
                }
                Err(classify(operation, &e))
            }
        }
    }

    fn ec2(&self) -> &ec2::Client {
        &self.clients.ec2
    }

    fn find_label(&self, pool: Option<&str>, label: &str) -> Option<(&AwsPool, &AwsLabel)> {
        self.config
            .pools
            .iter()
            .filter(|p| pool.is_none_or(|n| p.name == n))
            .find_map(|p| p.labels.iter().find(|l| l.name == label).map(|l| (p, l)))
    }

    /// Every page of a paginated, non-mutating Describe call, rate limited.
    async fn describe_all<P, T, E, R, Fut>(
        &self,
        operation: &str,
        fetch: impl Fn(Option<String>) -> Fut,
        items: impl Fn(&P) -> Vec<T>,
        next: impl Fn(&P) -> Option<&str>,
    ) -> Result<Vec<T>, ProviderError>
    where
        Fut: std::future::Future<Output = Result<P, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.take();
            let page = self.call(&self.non_mutating, operation, || fetch(t)).await?;
            out.extend(items(&page));
            token = next(&page).filter(|t| !t.is_empty()).map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn list_instances_cached(&self) -> Result<Arc<Vec<Ec2Instance>>, ProviderError> {
        self.instances
            .get(|| async {
                let out = self
                    .describe_all(
                        "DescribeInstances",
                        |t| self.ec2().describe_instances().set_next_token(t).send(),
                        |p| p.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect(),
                        |p| p.next_token(),
                    )
                    .await?;
                debug!(provider = %self.name, count = out.len(), "listed instances");
                Ok(out)
            })
            .await
    }

    async fn list_volumes_cached(&self) -> Result<Arc<Vec<Volume>>, ProviderError> {
        self.volumes
            .get(|| {
                self.describe_all(
                    "DescribeVolumes",
                    |t| self.ec2().describe_volumes().set_next_token(t).send(),
                    |p| p.volumes().to_vec(),
                    |p| p.next_token(),
                )
            })
            .await
    }

    async fn list_hosts_cached(&self) -> Result<Arc<Vec<Host>>, ProviderError> {
        self.hosts
            .get(|| {
                self.describe_all(
                    "DescribeHosts",
                    |t| self.ec2().describe_hosts().set_next_token(t).send(),
                    |p| p.hosts().to_vec(),
                    |p| p.next_token(),
                )
            })
            .await
    }

    /// Every instance type the labels use.
    fn label_instance_types(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for pool in &self.config.pools {
            for label in &pool.labels {
                match &label.instance {
                    Some(AwsInstance::Type(t)) => out.push(t.clone()),
                    Some(AwsInstance::Fleet { instance_types, .. }) => {
                        out.extend(instance_types.iter().filter_map(Value::as_str).map(str::to_owned))
                    }
                    None => {}
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Reads cores/vCPUs/RAM of every label instance type not known yet.
    /// `InvalidInstanceType` marks the type invalid (its labels are disabled);
    /// other errors are returned and the type is tried again later.
    async fn load_instance_types(&self) -> Result<(), ProviderError> {
        self.load_types(self.label_instance_types()).await
    }

    /// Reads the instance types of `types` not known yet (see
    /// [`Inner::load_instance_types`]).
    async fn load_types(&self, types: Vec<String>) -> Result<(), ProviderError> {
        let missing: Vec<String> = {
            let known = read(&self.instance_types);
            let invalid = read(&self.invalid_types);
            types.into_iter().filter(|t| !known.contains_key(t) && !invalid.contains_key(t)).collect()
        };
        for t in missing {
            let result = self
                .call(&self.non_mutating, "DescribeInstanceTypes", || {
                    self.ec2()
                        .describe_instance_types()
                        .instance_types(ec2::types::InstanceType::from(t.as_str()))
                        .send()
                })
                .await;
            match result {
                Ok(resp) => {
                    let Some(it) = resp.instance_types().first() else {
                        write(&self.invalid_types).insert(t.clone(), format!("instance type {t} not found"));
                        continue;
                    };
                    let vcpu = it.v_cpu_info();
                    let info = InstanceTypeInfo {
                        vcpus: vcpu.and_then(|v| v.default_v_cpus()).unwrap_or(0) as f64,
                        cores: vcpu.and_then(|v| v.default_cores()).unwrap_or(0) as f64,
                        ram_mib: it.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0) as f64,
                    };
                    debug!(provider = %self.name, instance_type = %t, ?info, "instance type");
                    write(&self.instance_types).insert(t, info);
                }
                Err(ProviderError::Fatal(msg)) if msg.contains("InvalidInstanceType") => {
                    warn!(provider = %self.name, instance_type = %t, error = %msg,
                        "invalid instance type; its labels are disabled");
                    write(&self.invalid_types).insert(t, msg);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn label_disabled(&self, label: &AwsLabel) -> Option<String> {
        let invalid = read(&self.invalid_types);
        match &label.instance {
            Some(AwsInstance::Type(t)) => invalid.get(t).cloned(),
            _ => None,
        }
    }

    fn quota_for(&self, label: &AwsLabel, actual_type: Option<&str>) -> Quota {
        let mut q = match (&label.instance, label.dedicated_host) {
            (Some(AwsInstance::Type(t)), true) => quota::host_quota(t),
            (Some(AwsInstance::Fleet { .. }), _) if actual_type.is_none() => {
                let mut q = Quota::zero();
                q.set("instances", 1.0);
                q
            }
            (instance, _) => {
                let t = actual_type.map(str::to_owned).or(match instance {
                    Some(AwsInstance::Type(t)) => Some(t.clone()),
                    _ => None,
                });
                let market = if label.use_spot { Market::Spot } else { Market::OnDemand };
                match t.as_deref().and_then(|t| read(&self.instance_types).get(t).map(|i| (t.to_owned(), *i)))
                {
                    Some((t, info)) => quota::instance_quota(&t, &info, market),
                    None => {
                        let mut q = Quota::zero();
                        q.set("instances", 1.0);
                        q
                    }
                }
            }
        };
        if let Some(vt) = &label.volume_type {
            q.add(&quota::volume_quota(
                vt,
                label.volume_size.map(|v| v as f64),
                label.iops.map(|v| v as f64),
            ));
        }
        q
    }

    async fn service_quota_maps(&self) -> Result<QuotaMaps, ProviderError> {
        let mut cached = self.service_quotas.lock().await;
        if let Some((at, maps)) = cached.as_ref() {
            if at.elapsed() < self.settings.quota_cache_ttl {
                return Ok(maps.clone());
            }
        }
        let ec2_quotas = self.list_service_quotas("ec2").await?;
        let ebs_quotas = self.list_service_quotas("ebs").await?;
        let maps = (ec2_quotas, ebs_quotas);
        *cached = Some((Instant::now(), maps.clone()));
        Ok(maps)
    }

    async fn list_service_quotas(&self, service: &str) -> Result<HashMap<String, f64>, ProviderError> {
        let mut out = HashMap::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.take();
            let page = self
                .call(&self.quota_limiter, "ListServiceQuotas", || {
                    self.clients.quotas.list_service_quotas().service_code(service).set_next_token(t).send()
                })
                .await?;
            for q in page.quotas() {
                if let (Some(code), Some(value)) = (q.quota_code(), q.value()) {
                    out.insert(code.to_owned(), value);
                }
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        debug!(provider = %self.name, service, count = out.len(), "listed service quotas");
        Ok(out)
    }

    async fn quota_limits(&self) -> Result<Quota, ProviderError> {
        if let Err(e) = self.load_instance_types().await {
            warn!(provider = %self.name, error = %e, "cannot read instance types");
        }
        let mut limits = Quota::unlimited();
        if !self.settings.service_quotas {
            return Ok(limits);
        }
        let (ec2_quotas, ebs_quotas) = self.service_quota_maps().await?;
        for pool in &self.config.pools {
            for label in &pool.labels {
                let mut codes: Vec<&str> = Vec::new();
                match &label.instance {
                    Some(AwsInstance::Type(t)) if label.dedicated_host => {
                        codes.extend(quota::host_quota_code(t))
                    }
                    Some(AwsInstance::Type(t)) => {
                        let m = if label.use_spot { Market::Spot } else { Market::OnDemand };
                        codes.extend(quota::instance_quota_code(t, m));
                    }
                    Some(AwsInstance::Fleet { instance_types, .. }) => {
                        let m = if label.use_spot { Market::Spot } else { Market::OnDemand };
                        codes.extend(
                            instance_types
                                .iter()
                                .filter_map(Value::as_str)
                                .filter_map(|t| quota::instance_quota_code(t, m)),
                        );
                    }
                    None => {}
                }
                for code in codes {
                    match ec2_quotas.get(code) {
                        Some(v) => {
                            limits.set(code, *v);
                        }
                        None => warn!(provider = %self.name, code, "AWS quota code not known"),
                    }
                }
                if let Some(vt) = &label.volume_type {
                    let (storage, iops) = quota::volume_quota_codes(vt);
                    if let Some(code) = storage {
                        match ebs_quotas.get(code) {
                            // Storage limits are in TiB, usage in GiB.
                            Some(v) => {
                                limits.set(code, v * 1000.0);
                            }
                            None => warn!(provider = %self.name, code, "AWS quota code not known"),
                        }
                    }
                    if let Some(code) = iops {
                        if let Some(v) = ebs_quotas.get(code) {
                            limits.set(code, *v);
                        }
                    }
                }
            }
        }
        Ok(limits)
    }

    /// The AMI id of a cloud image: its `image-id`, or the newest image
    /// matching its `image-filters` (cached).
    async fn image_id(&self, cloud_image: &np_config::AwsCloudImage) -> Result<String, ProviderError> {
        let Some(filters) = &cloud_image.image_filters else {
            return cloud_image.image_id.clone().ok_or_else(|| {
                ProviderError::Fatal(format!(
                    "cloud-image {} has neither image-id nor image-filters",
                    cloud_image.name
                ))
            });
        };
        let key = serde_json::to_string(&filters.iter().map(|f| (&f.name, &f.values)).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut cache = self.images_by_filter.lock().await;
        if let Some((at, id)) = cache.get(&key) {
            if at.elapsed() < self.settings.image_cache_ttl {
                return Ok(id.clone());
            }
        }
        let ec2_filters: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::builder().name(&f.name).set_values(Some(f.values.clone())).build())
            .collect();
        let mut images = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.take();
            let fs = ec2_filters.clone();
            let page = self
                .call(&self.non_mutating, "DescribeImages", || {
                    self.ec2().describe_images().set_filters(Some(fs)).set_next_token(t).send()
                })
                .await?;
            images.extend(page.images().iter().cloned());
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        images.sort_by(|a, b| b.creation_date().unwrap_or("").cmp(a.creation_date().unwrap_or("")));
        let id = images.first().and_then(|i| i.image_id()).map(str::to_owned).ok_or_else(|| {
            ProviderError::Fatal("No cloud-image (AMI) matches supplied image filters".into())
        })?;
        cache.insert(key, (Instant::now(), id.clone()));
        Ok(id)
    }

    async fn image(&self, image_id: &str) -> Result<Image, ProviderError> {
        if let Some(i) = self.images.lock().await.get(image_id) {
            return Ok(i.clone());
        }
        let resp = self
            .call(&self.non_mutating, "DescribeImages", || {
                self.ec2().describe_images().image_ids(image_id).send()
            })
            .await?;
        let image = resp
            .images()
            .first()
            .cloned()
            .ok_or_else(|| ProviderError::Fatal(format!("image {image_id} not found")))?;
        self.images.lock().await.insert(image_id.to_owned(), image.clone());
        Ok(image)
    }

    async fn run_instance(
        &self,
        pool: &AwsPool,
        label: &AwsLabel,
        instance_type: &str,
        image_id: &str,
        tags: &BTreeMap<String, String>,
        host_id: Option<&str>,
    ) -> Result<Ec2Instance, ProviderError> {
        use ec2::types::{
            Affinity, BlockDeviceMapping, HttpTokensState, IamInstanceProfileSpecification,
            InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
            InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, MarketType, Placement,
            SpotInstanceType, SpotMarketOptions, Tenancy, VolumeType,
        };
        let mut nic = InstanceNetworkInterfaceSpecification::builder()
            .associate_public_ip_address(pool.public_ipv4)
            .device_index(0);
        if let Some(sg) = &pool.security_group_id {
            nic = nic.groups(sg);
        }
        if let Some(subnet) = &pool.subnet_id {
            nic = nic.subnet_id(subnet);
        }
        if pool.public_ipv6 {
            nic = nic.ipv6_address_count(1);
        }
        let mut req = self
            .ec2()
            .run_instances()
            .image_id(image_id)
            .min_count(1)
            .max_count(1)
            .key_name(&label.key_name)
            .ebs_optimized(label.ebs_optimized)
            .instance_type(ec2::types::InstanceType::from(instance_type))
            .network_interfaces(nic.build())
            .set_tag_specifications(Some(instance_and_volume_tags(tags)));
        if let Some(userdata) = &label.userdata {
            req = req.user_data(aws_smithy_types::base64::encode(userdata.as_bytes()));
        }
        match &label.iam_instance_profile {
            Some(np_config::AwsIamInstanceProfile::Name(n)) => {
                req = req.iam_instance_profile(IamInstanceProfileSpecification::builder().name(n).build());
            }
            Some(np_config::AwsIamInstanceProfile::Arn(a)) => {
                req = req.iam_instance_profile(IamInstanceProfileSpecification::builder().arn(a).build());
            }
            None => {}
        }
        // The AMI's first block device, deleted with the instance, with the
        // label's volume settings.
        let image = self.image(image_id).await?;
        if let Some(first) = image.block_device_mappings().first() {
            if let Some(ebs) = first.ebs() {
                let mut ebs = ebs.clone();
                ebs.delete_on_termination = Some(true);
                ebs.encrypted = None;
                if let Some(size) = label.volume_size {
                    ebs.volume_size = i32::try_from(size).ok();
                }
                if let Some(vt) = &label.volume_type {
                    ebs.volume_type = Some(VolumeType::from(vt.as_str()));
                }
                if let Some(iops) = label.iops {
                    ebs.iops = i32::try_from(iops).ok();
                }
                if let Some(tp) = label.throughput {
                    ebs.throughput = i32::try_from(tp).ok();
                }
                req = req.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .set_device_name(first.device_name().map(str::to_owned))
                        .ebs(ebs)
                        .build(),
                );
            }
        }
        if label.use_spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        match label.imdsv2.as_deref() {
            Some("required") => {
                req = req.metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .build(),
                );
            }
            Some("optional") => {
                req = req.metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Optional)
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .build(),
                );
            }
            _ => {}
        }
        if host_id.is_some() || pool.availability_zone.is_some() {
            let mut placement = Placement::builder();
            if let Some(h) = host_id {
                placement = placement.tenancy(Tenancy::Host).host_id(h).affinity(Affinity::Host.as_str());
            }
            if let Some(az) = &pool.availability_zone {
                placement = placement.availability_zone(az);
            }
            req = req.placement(placement.build());
        }
        self.run_instances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self.call(&self.mutating, "RunInstances", || req.send()).await?;
        resp.instances()
            .first()
            .cloned()
            .ok_or_else(|| ProviderError::Fatal("RunInstances returned no instance".into()))
    }

    /// Creates the launch templates of the `fleet` labels that do not exist
    /// yet and deletes templates of this provider that no label uses any
    /// more (upstream's `_createLaunchTemplates`). Done once; a failure is
    /// retried by the next fleet launch.
    async fn ensure_launch_templates(&self) -> Result<(), ProviderError> {
        use ec2::types::{
            LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
            LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataEndpointState,
            LaunchTemplateInstanceMetadataOptionsRequest, RequestLaunchTemplateData, ResourceType,
            VolumeType,
        };
        let mut ready = self.templates_ready.lock().await;
        if *ready || self.templates.is_empty() {
            *ready = true;
            return Ok(());
        }
        let existing = self
            .describe_all(
                "DescribeLaunchTemplates",
                |t| {
                    self.ec2()
                        .describe_launch_templates()
                        .filters(
                            Filter::builder()
                                .name("launch-template-name")
                                .values(format!("{}-*", templates::PREFIX))
                                .build(),
                        )
                        .set_next_token(t)
                        .send()
                },
                |p| p.launch_templates().to_vec(),
                |p| p.next_token(),
            )
            .await?;
        let existing_names: std::collections::HashSet<&str> =
            existing.iter().filter_map(|t| t.launch_template_name()).collect();
        let mut created = std::collections::HashSet::new();
        for pool in &self.config.pools {
            for label in &pool.labels {
                let Some(name) = self.templates.get(&(pool.name.clone(), label.name.clone())) else {
                    continue;
                };
                if existing_names.contains(name.as_str()) || created.contains(name) {
                    debug!(provider = %self.name, template = %name, "launch template exists");
                    continue;
                }
                let spec = templates::TemplateSpec::of(pool, label);
                let ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
                    .delete_on_termination(true)
                    .set_volume_size(spec.volume_size.and_then(|v| i32::try_from(v).ok()))
                    .set_volume_type(spec.volume_type.as_deref().map(VolumeType::from))
                    .set_iops(spec.iops.and_then(|v| i32::try_from(v).ok()))
                    .set_throughput(spec.throughput.and_then(|v| i32::try_from(v).ok()));
                let mut data = RequestLaunchTemplateData::builder()
                    .key_name(&spec.key_name)
                    .set_security_group_ids(spec.security_group_id.clone().map(|g| vec![g]))
                    .block_device_mappings(
                        LaunchTemplateBlockDeviceMappingRequest::builder()
                            .device_name("/dev/sda1")
                            .ebs(ebs.build())
                            .build(),
                    )
                    .set_user_data(spec.user_data.clone());
                if let Some(tokens) = &spec.http_tokens {
                    data = data.metadata_options(
                        LaunchTemplateInstanceMetadataOptionsRequest::builder()
                            .http_tokens(LaunchTemplateHttpTokensState::from(tokens.as_str()))
                            .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                            .build(),
                    );
                }
                let tags: Vec<Tag> = templates::template_tags(&self.name)
                    .into_iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect();
                let req = self
                    .ec2()
                    .create_launch_template()
                    .launch_template_name(name)
                    .launch_template_data(data.build())
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::LaunchTemplate)
                            .set_tags(Some(tags))
                            .build(),
                    );
                match self.call(&self.mutating, "CreateLaunchTemplate", || req.send()).await {
                    Ok(_) => {
                        info!(provider = %self.name, template = %name, label = %label.name, "launch template created")
                    }
                    // Another launcher (ours or Python's) made it meanwhile.
                    Err(e) if e.to_string().contains("AlreadyExists") => {}
                    Err(e) => return Err(e),
                }
                created.insert(name.clone());
            }
        }
        let configured: std::collections::HashSet<&String> = self.templates.values().collect();
        for template in &existing {
            let Some(name) = template.launch_template_name() else { continue };
            let ours = template
                .tags()
                .iter()
                .any(|t| t.key() == Some("nodepool_provider_name") && t.value() == Some(self.name.as_str()));
            if ours && !configured.contains(&name.to_owned()) {
                let req = self.ec2().delete_launch_template().launch_template_name(name);
                self.call(&self.mutating, "DeleteLaunchTemplate", || req.send()).await?;
                info!(provider = %self.name, template = %name, "unused launch template deleted");
            }
        }
        *ready = true;
        Ok(())
    }

    /// Launches one instance of a `fleet` label with an instant fleet
    /// (upstream's `_createFleet`); returns its id.
    async fn create_fleet(
        &self,
        pool: &AwsPool,
        label: &AwsLabel,
        image_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        use ec2::types::{
            DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
            FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType,
            OnDemandOptionsRequest, SpotAllocationStrategy, SpotOptionsRequest,
            TargetCapacitySpecificationRequest,
        };
        let Some(AwsInstance::Fleet { instance_types, allocation_strategy }) = &label.instance else {
            return Err(ProviderError::Fatal(format!("label {} is not a fleet label", label.name)));
        };
        self.ensure_launch_templates().await?;
        let template = self
            .templates
            .get(&(pool.name.clone(), label.name.clone()))
            .ok_or_else(|| ProviderError::Fatal(format!("label {} has no launch template", label.name)))?;
        let overrides: Vec<FleetLaunchTemplateOverridesRequest> = instance_types
            .iter()
            .map(|t| {
                let t = t.as_str().map(str::to_owned).unwrap_or_else(|| t.to_string());
                FleetLaunchTemplateOverridesRequest::builder()
                    .image_id(image_id)
                    .instance_type(ec2::types::InstanceType::from(t.as_str()))
                    .set_subnet_id(pool.subnet_id.clone())
                    .build()
            })
            .collect();
        let capacity = TargetCapacitySpecificationRequest::builder().total_target_capacity(1);
        let mut req = self
            .ec2()
            .create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(template)
                            .version("$Latest")
                            .build(),
                    )
                    .set_overrides(Some(overrides))
                    .build(),
            )
            .set_tag_specifications(Some(instance_and_volume_tags(tags)));
        req = if label.use_spot {
            req.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::from(allocation_strategy.as_str()))
                    .build(),
            )
            .target_capacity_specification(
                capacity.default_target_capacity_type(DefaultTargetCapacityType::Spot).build(),
            )
        } else {
            req.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::from(allocation_strategy.as_str()))
                    .build(),
            )
            .target_capacity_specification(
                capacity.default_target_capacity_type(DefaultTargetCapacityType::OnDemand).build(),
            )
        };
        self.run_instances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self.call(&self.mutating, "CreateFleet", || req.send()).await?;
        if let Some(id) = resp.instances().iter().flat_map(|i| i.instance_ids()).next() {
            return Ok(id.clone());
        }
        // An instant fleet reports launch failures in the answer, not as an
        // API error: classify them like RunInstances errors.
        match resp.errors().first() {
            Some(e) => Err(crate::error::classify_code(
                e.error_code().unwrap_or("Unknown"),
                &format!("CreateFleet: {}", e.error_message().unwrap_or_default()),
            )),
            None => Err(ProviderError::Fatal("CreateFleet returned no instance".into())),
        }
    }

    /// This account's AMIs and snapshots (`Owners = self`).
    async fn own_images_and_snapshots(
        &self,
    ) -> Result<(Vec<Image>, Vec<ec2::types::Snapshot>), ProviderError> {
        let images = self
            .call(&self.non_mutating, "DescribeImages", || self.ec2().describe_images().owners("self").send())
            .await?
            .images()
            .to_vec();
        let snapshots = self
            .describe_all(
                "DescribeSnapshots",
                |t| self.ec2().describe_snapshots().owner_ids("self").set_next_token(t).send(),
                |p| p.snapshots().to_vec(),
                |p| p.next_token(),
            )
            .await?;
        Ok((images, snapshots))
    }

    /// Deregisters an AMI and deletes the snapshots behind it (upstream's
    /// `deleteImage`). A missing AMI is fine.
    async fn delete_image(&self, ami: &str) -> Result<(), ProviderError> {
        let found = self
            .call(&self.non_mutating, "DescribeImages", || self.ec2().describe_images().image_ids(ami).send())
            .await;
        let snapshots: Vec<String> = match found {
            Ok(r) => r
                .images()
                .iter()
                .flat_map(|i| i.block_device_mappings())
                .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                .collect(),
            Err(ProviderError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        match self
            .call(&self.mutating, "DeregisterImage", || self.ec2().deregister_image().image_id(ami).send())
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        info!(provider = %self.name, image = ami, "image deregistered");
        for snap in snapshots {
            self.delete_snapshot(&snap).await?;
        }
        Ok(())
    }

    async fn delete_snapshot(&self, snapshot: &str) -> Result<(), ProviderError> {
        match self
            .call(&self.mutating, "DeleteSnapshot", || {
                self.ec2().delete_snapshot().snapshot_id(snapshot).send()
            })
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => {
                info!(provider = %self.name, snapshot, "snapshot deleted");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn allocate_host(
        &self,
        pool: &AwsPool,
        instance_type: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let az = pool.availability_zone.clone().ok_or_else(|| {
            ProviderError::Fatal("dedicated hosts need the pool's availability-zone".into())
        })?;
        let resp = self
            .call(&self.mutating, "AllocateHosts", || {
                self.ec2()
                    .allocate_hosts()
                    .availability_zone(az)
                    .instance_type(instance_type)
                    .quantity(1)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ec2::types::ResourceType::DedicatedHost)
                            .set_tags(Some(tag_list(tags)))
                            .build(),
                    )
                    .send()
            })
            .await?;
        resp.host_ids()
            .first()
            .cloned()
            .ok_or_else(|| ProviderError::Fatal("AllocateHosts returned no host".into()))
    }

    fn to_instance(&self, i: &Ec2Instance, host: Option<&str>, label: Option<&AwsLabel>) -> Instance {
        let id = ExternalId {
            instance: i.instance_id().map(str::to_owned),
            host: host.map(str::to_owned),
            ..ExternalId::default()
        };
        let public_ipv4 = i.public_ip_address().map(str::to_owned);
        let private_ipv4 = i.private_ip_address().map(str::to_owned);
        let public_ipv6 = i
            .network_interfaces()
            .first()
            .and_then(|n| n.ipv6_addresses().first())
            .and_then(|a| a.ipv6_address())
            .map(str::to_owned);
        let interface_ip = public_ipv4.clone().or(public_ipv6.clone()).or(private_ipv4.clone());
        Instance {
            external_id: id.to_value(),
            interface_ip,
            public_ipv4,
            private_ipv4,
            public_ipv6,
            az: i.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
            region: Some(self.config.region_name.clone()),
            host_id: None,
            cloud: Some("AWS".into()),
            host_keys: Vec::new(),
            metadata: tag_map(i.tags()),
            node_properties: label.map(|l| {
                json!({"fleet": matches!(l.instance, Some(AwsInstance::Fleet { .. })), "spot": l.use_spot})
            }),
            ..Instance::default()
        }
    }

    fn terminator(self: &Arc<Self>) -> mpsc::UnboundedSender<TerminateJob> {
        let mut slot = self.terminator.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref() {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(self);
        let window = self.settings.terminate_batch_window;
        tokio::spawn(
            terminate_loop(weak, rx, window).instrument(info_span!("aws_terminator", provider = %self.name)),
        );
        *slot = Some(tx.clone());
        tx
    }

    async fn terminate_batch(&self, batch: Vec<TerminateJob>) {
        let ids: Vec<String> = batch.iter().map(|j| j.instance_id.clone()).collect();
        self.terminate_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self
            .call(&self.mutating, "TerminateInstances", || {
                self.ec2().terminate_instances().set_instance_ids(Some(ids.clone())).send()
            })
            .await;
        match result {
            Ok(_) => {
                info!(provider = %self.name, count = ids.len(), instances = ?ids, "terminated instances");
                for job in batch {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(ProviderError::NotFound(_)) if batch.len() > 1 => {
                // One unknown id fails the whole call: go one by one.
                for job in batch {
                    let id = job.instance_id.clone();
                    self.terminate_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let r = self
                        .call(&self.mutating, "TerminateInstances", || {
                            self.ec2().terminate_instances().instance_ids(id).send()
                        })
                        .await;
                    let _ = job.done.send(match r {
                        Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
                        Err(e) => Err(e),
                    });
                }
            }
            Err(ProviderError::NotFound(_)) => {
                for job in batch {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(e) => {
                warn!(provider = %self.name, error = %e, "cannot terminate instances");
                for job in batch {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
        self.instances.invalidate().await;
    }
}

async fn terminate_loop(weak: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<TerminateJob>, window: Duration) {
    while let Some(first) = rx.recv().await {
        if !window.is_zero() {
            tokio::time::sleep(window).await;
        }
        let mut batch = vec![first];
        while batch.len() < TERMINATE_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(inner) = weak.upgrade() else { break };
        inner.terminate_batch(batch).await;
    }
}

impl AwsProvider {
    /// A provider named `name` for `config`, with clients from the standard
    /// AWS configuration (profile, region, credentials) and an optional
    /// endpoint (else `AWS_ENDPOINT_URL`).
    pub async fn new(
        name: &str,
        config: &np_config::AwsProvider,
        endpoint_override: Option<String>,
    ) -> Result<AwsProvider, AwsError> {
        let clients = AwsClients::load(config, endpoint_override).await;
        AwsProvider::with_clients(name, config, clients, AwsSettings::default()).await
    }

    /// A provider on given clients and settings. Reads the label instance
    /// types once (a failure here is retried later, not fatal).
    pub async fn with_clients(
        name: &str,
        config: &np_config::AwsProvider,
        clients: AwsClients,
        settings: AwsSettings,
    ) -> Result<AwsProvider, AwsError> {
        let inner = Inner {
            name: name.to_owned(),
            config: config.clone(),
            clients,
            mutating: RateLimiter::new(config.rate),
            non_mutating: RateLimiter::new(config.rate * 10.0),
            quota_limiter: RateLimiter::new(config.rate),
            instances: Listing::new(settings.cache_ttl),
            volumes: Listing::new(settings.cache_ttl),
            hosts: Listing::new(settings.cache_ttl),
            settings,
            instance_types: RwLock::new(HashMap::new()),
            invalid_types: RwLock::new(HashMap::new()),
            images_by_filter: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            service_quotas: Mutex::new(None),
            terminator: std::sync::Mutex::new(None),
            templates: config
                .pools
                .iter()
                .flat_map(|p| {
                    p.labels.iter().filter(|l| matches!(l.instance, Some(AwsInstance::Fleet { .. }))).map(
                        |l| {
                            let name = templates::TemplateSpec::of(p, l).name(name);
                            ((p.name.clone(), l.name.clone()), name)
                        },
                    )
                })
                .collect(),
            templates_ready: Mutex::new(false),
            run_instances: Default::default(),
            terminate_calls: Default::default(),
            not_our_images: Default::default(),
            not_our_snapshots: Default::default(),
            object_tags: Default::default(),
        };
        let provider = AwsProvider { inner: Arc::new(inner) };
        if let Err(e) = provider.inner.load_instance_types().await {
            warn!(provider = name, error = %e, "cannot read instance types yet");
        }
        if let Err(e) = provider.inner.ensure_launch_templates().await {
            warn!(provider = name, error = %e, "cannot set up launch templates yet; retried at the first fleet launch");
        }
        Ok(provider)
    }

    /// Uploads a disk image file for the provider diskimage `diskimage` and
    /// registers it as an AMI named `image_name`; returns the AMI id. The
    /// AMI and its snapshot carry `metadata` (the builder's
    /// `nodepool_provider_name`, `nodepool_build_id`, `nodepool_upload_id`)
    /// and the diskimage's `tags`. The diskimage's `import-method` says how:
    /// * `ebs-direct`: the raw image goes straight into an EBS snapshot
    ///   (`StartSnapshot`, one `PutSnapshotBlock` per 512 KiB with its
    ///   SHA-256, `CompleteSnapshot`), as upstream's `EBSSnapshotUploader`;
    /// * `snapshot` (the default): the file is staged in the provider's
    ///   `object-storage` bucket and imported with `ImportSnapshot`;
    /// * `image`: staged the same way and imported with `ImportImage`,
    ///   which makes the AMI itself.
    ///
    /// `ebs-direct` and `snapshot` register the AMI with `RegisterImage`.
    pub async fn upload_image(
        &self,
        diskimage: &str,
        path: &std::path::Path,
        image_name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let inner = &self.inner;
        let di = inner.config.diskimages.iter().find(|d| d.name == diskimage).ok_or_else(|| {
            ProviderError::Fatal(format!("diskimage {diskimage} is not in provider {}", inner.name))
        })?;
        let mut tags: BTreeMap<String, String> =
            di.tags.iter().map(|(k, v)| (k.clone(), crate::tags::python_str(v))).collect();
        tags.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        let span = info_span!("aws_upload", provider = %inner.name, diskimage, image = image_name);
        async {
            let (size_gib, snapshot) = match di.import_method.as_str() {
                "ebs-direct" => {
                    let deadline = inner.config.image_import_timeout.map(|t| Instant::now() + t);
                    let ebs = &inner.clients.ebs;
                    let (size, size_gib, snapshot) =
                        crate::ebs::start_snapshot(ebs, &inner.mutating, path, &tags).await?;
                    if let Err(e) = crate::ebs::fill(ebs, &inner.mutating, path, size, &snapshot, deadline).await
                    {
                        warn!(snapshot = %snapshot, error = %e, "image upload failed; deleting the snapshot");
                        let _ = inner.delete_snapshot(&snapshot).await;
                        return Err(e);
                    }
                    (size_gib, snapshot)
                }
                method => {
                    let imported = inner.import(di, method, path, image_name, &tags).await?;
                    match imported {
                        import::Imported::Image(ami) => {
                            info!(image = %ami, "image imported");
                            return Ok(ami);
                        }
                        import::Imported::Snapshot { snapshot, size_gib } => (size_gib, snapshot),
                    }
                }
            };
            match self.register(di, image_name, &tags, size_gib, &snapshot).await {
                Ok(ami) => {
                    info!(image = %ami, snapshot = %snapshot, "image uploaded");
                    Ok(ami)
                }
                Err(e) => {
                    // Do not leave the snapshot behind.
                    warn!(snapshot = %snapshot, error = %e, "image registration failed; deleting the snapshot");
                    let _ = inner.delete_snapshot(&snapshot).await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn register(
        &self,
        di: &np_config::AwsDiskImage,
        image_name: &str,
        tags: &BTreeMap<String, String>,
        size_gib: i32,
        snapshot: &str,
    ) -> Result<String, ProviderError> {
        use ec2::types::{
            ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, ImdsSupportValues, ResourceType,
        };
        let inner = &self.inner;
        let mut ebs = EbsBlockDevice::builder()
            .delete_on_termination(true)
            .snapshot_id(snapshot)
            .volume_size(size_gib)
            .volume_type(ec2::types::VolumeType::from(di.volume_type.as_str()));
        if let Some(iops) = di.iops.filter(|v| *v != 0) {
            ebs = ebs.set_iops(i32::try_from(iops).ok());
        }
        if let Some(tp) = di.throughput.filter(|v| *v != 0) {
            ebs = ebs.set_throughput(i32::try_from(tp).ok());
        }
        let mut req = inner
            .ec2()
            .register_image()
            .architecture(ArchitectureValues::from(di.architecture.as_str()))
            .block_device_mappings(
                BlockDeviceMapping::builder().device_name("/dev/sda1").ebs(ebs.build()).build(),
            )
            .root_device_name("/dev/sda1")
            .virtualization_type("hvm")
            .ena_support(di.ena_support)
            .name(image_name)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(tag_list(tags)))
                    .build(),
            );
        if di.imds_support.as_deref() == Some("v2.0") {
            req = req.imds_support(ImdsSupportValues::V20);
        }
        let ami = inner
            .call(&inner.mutating, "RegisterImage", || req.send())
            .await?
            .image_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Fatal("RegisterImage returned no image id".into()))?;
        // Some EC2 implementations ignore the tags of RegisterImage and
        // StartSnapshot: set them again (a no-op where they were applied).
        let tag_req =
            inner.ec2().create_tags().resources(&ami).resources(snapshot).set_tags(Some(tag_list(tags)));
        inner.call(&inner.mutating, "CreateTags", || tag_req.send()).await?;
        Ok(ami)
    }

    /// Deregisters an uploaded AMI and deletes its snapshots (the builder's
    /// image delete). A missing AMI is fine.
    pub async fn delete_image(&self, ami: &str) -> Result<(), ProviderError> {
        self.inner.delete_image(ami).await
    }

    /// The configuration this provider was built from.
    pub fn config(&self) -> &np_config::AwsProvider {
        &self.inner.config
    }

    /// The clients.
    pub fn clients(&self) -> &AwsClients {
        &self.inner.clients
    }

    /// Why `label` cannot be launched (an invalid instance type), if so. The
    /// launcher should stop offering such labels.
    pub fn label_disabled(&self, label: &str) -> Option<String> {
        let (_, l) = self.inner.find_label(None, label)?;
        self.inner.label_disabled(l)
    }

    /// Starts a create whose `dynamic-tags` are formatted with the request's
    /// safe attributes (`{"id": .., "requestor": .., "tenant_name": .., ..}`).
    pub fn create_for_request(
        &self,
        request: LaunchRequest,
        request_attributes: Option<Value>,
    ) -> Box<dyn CreateMachine> {
        let span = info_span!("aws_create", provider = %self.inner.name, node = %request.node_id);
        Box::new(AwsCreate {
            inner: self.inner.clone(),
            request,
            request_attributes,
            state: CreateState::Start,
            host_id: None,
            instance_id: None,
            span,
        })
    }

    /// Call counters.
    pub fn stats(&self) -> AwsStats {
        use std::sync::atomic::Ordering::Relaxed;
        AwsStats {
            instance_listings: self.inner.instances.refreshes(),
            run_instances: self.inner.run_instances.load(Relaxed),
            terminate_calls: self.inner.terminate_calls.load(Relaxed),
            mutating_calls: self.inner.mutating.calls(),
            non_mutating_calls: self.inner.non_mutating.calls(),
        }
    }

    /// Forgets the cached listings (the next poll describes again).
    pub async fn invalidate_caches(&self) {
        self.inner.instances.invalidate().await;
        self.inner.volumes.invalidate().await;
        self.inner.hosts.invalidate().await;
    }

    /// Forgets the cached Service Quotas (after a quota error).
    pub async fn invalidate_quota_cache(&self) {
        *self.inner.service_quotas.lock().await = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateState {
    Start,
    AllocatingHost,
    Creating,
    Complete,
}

struct AwsCreate {
    inner: Arc<Inner>,
    request: LaunchRequest,
    request_attributes: Option<Value>,
    state: CreateState,
    host_id: Option<String>,
    instance_id: Option<String>,
    span: tracing::Span,
}

impl AwsCreate {
    fn label(&self) -> Result<(&AwsPool, &AwsLabel), ProviderError> {
        self.inner.find_label(Some(&self.request.pool), &self.request.label).ok_or_else(|| {
            ProviderError::Fatal(format!("label {} is not in pool {}", self.request.label, self.request.pool))
        })
    }

    fn tags(&self, label: &AwsLabel) -> BTreeMap<String, String> {
        node_tags(
            &label.tags,
            &label.dynamic_tags,
            self.request_attributes.as_ref(),
            &self.request.metadata,
            &self.request.hostname,
        )
    }

    async fn launch_instance(&mut self) -> Result<Step<Instance>, ProviderError> {
        let inner = self.inner.clone();
        let (pool, label) = self.label()?;
        let instance_type = match &label.instance {
            Some(AwsInstance::Type(t)) => Some(t),
            Some(AwsInstance::Fleet { .. }) => None,
            None => return Err(ProviderError::Fatal(format!("label {} has no instance-type", label.name))),
        };
        let image_id = match &label.image {
            Some(LabelImage::CloudImage(name)) => {
                let ci = inner
                    .config
                    .cloud_images
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| ProviderError::Fatal(format!("cloud-image {name} is not defined")))?;
                inner.image_id(ci).await?
            }
            // The launcher looked up the newest ready upload (an AMI).
            Some(LabelImage::DiskImage(name)) => self.request.image_external_id.clone().ok_or_else(|| {
                ProviderError::Fatal(format!("label {}: no uploaded image of diskimage {name}", label.name))
            })?,
            None => return Err(ProviderError::Fatal(format!("label {} has no image", label.name))),
        };
        let tags = self.tags(label);
        let id = match instance_type {
            Some(instance_type) => {
                let instance = inner
                    .run_instance(pool, label, instance_type, &image_id, &tags, self.host_id.as_deref())
                    .await?;
                let id = instance
                    .instance_id()
                    .map(str::to_owned)
                    .ok_or_else(|| ProviderError::Fatal("RunInstances returned no instance id".into()))?;
                info!(instance = %id, image = %image_id, instance_type = %instance_type, "instance created");
                id
            }
            None => {
                let id = inner.create_fleet(pool, label, &image_id, &tags).await?;
                info!(instance = %id, image = %image_id, "instance created through an instant fleet");
                id
            }
        };
        self.instance_id = Some(id);
        self.state = CreateState::Creating;
        Ok(Step::Pending(inner.settings.poll_interval))
    }

    async fn advance(&mut self) -> Result<Step<Instance>, ProviderError> {
        let inner = self.inner.clone();
        match self.state {
            CreateState::Start => {
                let (pool, label) = self.label()?;
                if let Some(AwsInstance::Type(_)) = &label.instance {
                    if inner.load_instance_types().await.is_ok() {
                        if let Some(why) = inner.label_disabled(label) {
                            return Err(ProviderError::Fatal(format!(
                                "label {} is disabled: {why}",
                                label.name
                            )));
                        }
                    }
                }
                if label.dedicated_host {
                    let Some(AwsInstance::Type(t)) = &label.instance else {
                        return Err(ProviderError::Fatal("dedicated hosts need an instance-type".into()));
                    };
                    let tags = self.tags(label);
                    let host = inner.allocate_host(pool, t, &tags).await?;
                    info!(host = %host, "dedicated host allocated");
                    self.host_id = Some(host);
                    self.state = CreateState::AllocatingHost;
                    return Ok(Step::Pending(Duration::ZERO));
                }
                self.launch_instance().await
            }
            CreateState::AllocatingHost => {
                let Some(host_id) = self.host_id.clone() else {
                    return Err(ProviderError::Fatal("no host id".into()));
                };
                let hosts = inner.list_hosts_cached().await?;
                let state = hosts
                    .iter()
                    .find(|h| h.host_id() == Some(host_id.as_str()))
                    .and_then(|h| h.state().cloned());
                match state {
                    Some(AllocationState::Available) => self.launch_instance().await,
                    Some(
                        s @ (AllocationState::PermanentFailure
                        | AllocationState::Released
                        | AllocationState::ReleasedPermanentFailure),
                    ) => Err(ProviderError::Fatal(format!("Host in {} state", s.as_str()))),
                    _ => Ok(Step::Pending(inner.settings.poll_interval)),
                }
            }
            CreateState::Creating => {
                let Some(id) = self.instance_id.clone() else {
                    return Err(ProviderError::Fatal("no instance id".into()));
                };
                let listing = inner.list_instances_cached().await?;
                let Some(i) = listing.iter().find(|i| i.instance_id() == Some(id.as_str())) else {
                    return Ok(Step::Pending(inner.settings.poll_interval));
                };
                match i.state().and_then(|s| s.name()) {
                    Some(InstanceStateName::Running) => {
                        let (_, label) = self.label()?;
                        let instance = inner.to_instance(i, self.host_id.as_deref(), Some(label));
                        self.state = CreateState::Complete;
                        info!(instance = %id, ip = ?instance.interface_ip, "instance running");
                        Ok(Step::Done(instance))
                    }
                    Some(
                        s @ (InstanceStateName::Terminated
                        | InstanceStateName::ShuttingDown
                        | InstanceStateName::Stopped
                        | InstanceStateName::Stopping),
                    ) => Err(ProviderError::Fatal(format!("Instance in {} state", s.as_str()))),
                    _ => Ok(Step::Pending(inner.settings.poll_interval)),
                }
            }
            CreateState::Complete => Err(ProviderError::Fatal("create already complete".into())),
        }
    }
}

#[async_trait]
impl CreateMachine for AwsCreate {
    async fn step(&mut self) -> Result<Step<Instance>, ProviderError> {
        let span = self.span.clone();
        let result = self.advance().instrument(span.clone()).await;
        if let Err(e) = &result {
            let _g = span.enter();
            warn!(state = self.state(), error = %e, "create step failed");
        }
        result
    }

    fn external_id(&self) -> Option<Value> {
        if self.instance_id.is_none() && self.host_id.is_none() {
            return None;
        }
        Some(
            ExternalId {
                instance: self.instance_id.clone(),
                host: self.host_id.clone(),
                ..ExternalId::default()
            }
            .to_value(),
        )
    }

    fn state(&self) -> &'static str {
        match self.state {
            CreateState::Start => "start",
            CreateState::AllocatingHost => "allocating host",
            CreateState::Creating => "creating instance",
            CreateState::Complete => "complete",
        }
    }
}

enum DeleteState {
    Start,
    Terminating(oneshot::Receiver<Result<(), ProviderError>>),
    WaitInstanceGone,
    ReleaseHost,
    WaitHostGone,
    DeleteVolume,
    DeleteImage,
    DeleteSnapshot,
    DeleteObject,
    Done,
}

struct AwsDelete {
    inner: Arc<Inner>,
    id: ExternalId,
    state: DeleteState,
    span: tracing::Span,
}

impl AwsDelete {
    async fn advance(&mut self) -> Result<Step<()>, ProviderError> {
        let inner = self.inner.clone();
        let poll = inner.settings.poll_interval;
        loop {
            match &mut self.state {
                DeleteState::Start => {
                    self.state = if let Some(instance) = &self.id.instance {
                        let (tx, rx) = oneshot::channel();
                        let job = TerminateJob { instance_id: instance.clone(), done: tx };
                        if inner.terminator().send(job).is_err() {
                            return Err(ProviderError::Transient("terminate queue closed".into()));
                        }
                        debug!(instance = %instance, "terminate queued");
                        DeleteState::Terminating(rx)
                    } else if self.id.host.is_some() {
                        DeleteState::ReleaseHost
                    } else if self.id.volume.is_some() {
                        DeleteState::DeleteVolume
                    } else if self.id.image.is_some() {
                        DeleteState::DeleteImage
                    } else if self.id.snapshot.is_some() {
                        DeleteState::DeleteSnapshot
                    } else if self.id.object.is_some() {
                        DeleteState::DeleteObject
                    } else {
                        DeleteState::Done
                    };
                }
                DeleteState::Terminating(rx) => match rx.try_recv() {
                    Ok(Ok(())) => self.state = DeleteState::WaitInstanceGone,
                    Ok(Err(e)) => {
                        self.state = DeleteState::Start;
                        return Err(e);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        return Ok(Step::Pending(Duration::from_millis(50)))
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.state = DeleteState::Start;
                        return Err(ProviderError::Transient("terminate batch dropped".into()));
                    }
                },
                DeleteState::WaitInstanceGone => {
                    let id = self.id.instance.clone().unwrap_or_default();
                    let listing = inner.list_instances_cached().await?;
                    let alive = listing.iter().any(|i| {
                        i.instance_id() == Some(id.as_str())
                            && i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated)
                    });
                    if alive {
                        return Ok(Step::Pending(poll));
                    }
                    info!(instance = %id, "instance deleted");
                    self.state =
                        if self.id.host.is_some() { DeleteState::ReleaseHost } else { DeleteState::Done };
                }
                DeleteState::ReleaseHost => {
                    let host = self.id.host.clone().unwrap_or_default();
                    let r = inner
                        .call(&inner.mutating, "ReleaseHosts", || {
                            inner.ec2().release_hosts().host_ids(host.clone()).send()
                        })
                        .await;
                    match r {
                        Ok(_) | Err(ProviderError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                    inner.hosts.invalidate().await;
                    self.state = DeleteState::WaitHostGone;
                }
                DeleteState::WaitHostGone => {
                    let host = self.id.host.clone().unwrap_or_default();
                    let hosts = inner.list_hosts_cached().await?;
                    let alive = hosts.iter().any(|h| {
                        h.host_id() == Some(host.as_str())
                            && !matches!(
                                h.state(),
                                Some(AllocationState::Released | AllocationState::ReleasedPermanentFailure)
                            )
                    });
                    if alive {
                        return Ok(Step::Pending(poll));
                    }
                    info!(host = %host, "dedicated host released");
                    self.state = DeleteState::Done;
                }
                DeleteState::DeleteVolume => {
                    let vol = self.id.volume.clone().unwrap_or_default();
                    let r = inner
                        .call(&inner.mutating, "DeleteVolume", || {
                            inner.ec2().delete_volume().volume_id(vol.clone()).send()
                        })
                        .await;
                    match r {
                        Ok(_) | Err(ProviderError::NotFound(_)) => {
                            info!(volume = %vol, "volume deleted");
                            inner.volumes.invalidate().await;
                        }
                        Err(e) => return Err(e),
                    }
                    self.state = DeleteState::Done;
                }
                DeleteState::DeleteImage => {
                    let ami = self.id.image.clone().unwrap_or_default();
                    inner.delete_image(&ami).await?;
                    self.state = DeleteState::Done;
                }
                DeleteState::DeleteSnapshot => {
                    let snap = self.id.snapshot.clone().unwrap_or_default();
                    inner.delete_snapshot(&snap).await?;
                    self.state = DeleteState::Done;
                }
                DeleteState::DeleteObject => {
                    let key = self.id.object.clone().unwrap_or_default();
                    inner.delete_object(&key).await?;
                    self.state = DeleteState::Done;
                }
                DeleteState::Done => return Ok(Step::Done(())),
            }
        }
    }
}

#[async_trait]
impl DeleteMachine for AwsDelete {
    async fn step(&mut self) -> Result<Step<()>, ProviderError> {
        let span = self.span.clone();
        self.advance().instrument(span).await
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn create(&self, request: LaunchRequest) -> Box<dyn CreateMachine> {
        let attributes = request.request_attributes.clone();
        self.create_for_request(request, attributes)
    }

    fn delete(&self, external_id: &Value) -> Box<dyn DeleteMachine> {
        let id = ExternalId::parse(external_id);
        let span = info_span!("aws_delete", provider = %self.inner.name, external_id = %external_id);
        Box::new(AwsDelete { inner: self.inner.clone(), id, state: DeleteState::Start, span })
    }

    /// Instances (not terminated), volumes (not deleted) and dedicated hosts
    /// (not released) tagged with this provider's name. Volumes and hosts are
    /// reported with `external_id` `{"volume": id}` / `{"host": id}`, and
    /// `node_properties.resource` says which kind each entry is.
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let inner = &self.inner;
        let ours =
            |tags: &[Tag]| tag_map(tags).get(META_PROVIDER).map(String::as_str) == Some(inner.name.as_str());
        let mut out = Vec::new();
        for i in inner.list_instances_cached().await?.iter() {
            if i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Terminated) || !ours(i.tags()) {
                continue;
            }
            let host = i.placement().and_then(|p| p.host_id());
            let mut instance = inner.to_instance(i, host, None);
            instance.node_properties = Some(json!({"resource": "instance"}));
            out.push(instance);
        }
        for v in inner.list_volumes_cached().await?.iter() {
            if v.state() == Some(&VolumeState::Deleted) || !ours(v.tags()) {
                continue;
            }
            out.push(Instance {
                external_id: ExternalId { volume: v.volume_id().map(str::to_owned), ..ExternalId::default() }
                    .to_value(),
                metadata: tag_map(v.tags()),
                az: v.availability_zone().map(str::to_owned),
                region: Some(inner.config.region_name.clone()),
                cloud: Some("AWS".into()),
                node_properties: Some(json!({"resource": "volume"})),
                ..Instance::default()
            });
        }
        for h in inner.list_hosts_cached().await?.iter() {
            if matches!(
                h.state(),
                Some(AllocationState::Released | AllocationState::ReleasedPermanentFailure)
            ) || !ours(h.tags())
            {
                continue;
            }
            // A host that still carries an instance is deleted with it.
            if !h.instances().is_empty() {
                continue;
            }
            out.push(Instance {
                external_id: ExternalId { host: h.host_id().map(str::to_owned), ..ExternalId::default() }
                    .to_value(),
                metadata: tag_map(h.tags()),
                az: h.availability_zone().map(str::to_owned),
                region: Some(inner.config.region_name.clone()),
                cloud: Some("AWS".into()),
                node_properties: Some(json!({"resource": "host"})),
                ..Instance::default()
            });
        }
        // Uploaded images and their snapshots (tagged with the build and
        // upload ids; the launcher deletes those whose upload is gone).
        let (images, snapshots) = inner.own_images_and_snapshots().await?;
        // Imports leave their AMIs and snapshots untagged: tag ours, and
        // count them in this listing already.
        let tagged = inner.tag_imports(&images, &snapshots).await;
        for i in images.iter() {
            let tags = i.image_id().and_then(|id| tagged.get(id)).map_or(i.tags(), Vec::as_slice);
            if !ours(tags) {
                continue;
            }
            if i.state() == Some(&ec2::types::ImageState::Deregistered) {
                continue;
            }
            out.push(Instance {
                external_id: ExternalId { image: i.image_id().map(str::to_owned), ..ExternalId::default() }
                    .to_value(),
                metadata: tag_map(tags),
                region: Some(inner.config.region_name.clone()),
                cloud: Some("AWS".into()),
                node_properties: Some(json!({"resource": "image"})),
                ..Instance::default()
            });
        }
        for snap in snapshots.iter() {
            let tags = snap.snapshot_id().and_then(|id| tagged.get(id)).map_or(snap.tags(), Vec::as_slice);
            if !ours(tags) {
                continue;
            }
            out.push(Instance {
                external_id: ExternalId {
                    snapshot: snap.snapshot_id().map(str::to_owned),
                    ..ExternalId::default()
                }
                .to_value(),
                metadata: tag_map(tags),
                region: Some(inner.config.region_name.clone()),
                cloud: Some("AWS".into()),
                node_properties: Some(json!({"resource": "snapshot"})),
                ..Instance::default()
            });
        }
        // Images staged for import. A bucket that cannot be read must not
        // stop the cleanup of everything else.
        match inner.objects().await {
            Ok(objects) => {
                for (key, tags) in objects {
                    if tags.get(META_PROVIDER).map(String::as_str) != Some(inner.name.as_str()) {
                        continue;
                    }
                    out.push(Instance {
                        external_id: ExternalId { object: Some(key), ..ExternalId::default() }.to_value(),
                        metadata: tags,
                        region: Some(inner.config.region_name.clone()),
                        cloud: Some("AWS".into()),
                        node_properties: Some(json!({"resource": "object"})),
                        ..Instance::default()
                    });
                }
            }
            Err(e) => warn!(provider = %inner.name, error = %e, "cannot list the object-storage bucket"),
        }
        Ok(out)
    }

    async fn quota_limits(&self) -> Result<Quota, ProviderError> {
        self.inner.quota_limits().await
    }

    /// Every instance that is not terminated (from the shared listing), as
    /// upstream's `listInstances`: an instance on a dedicated host costs the
    /// host's quota, any other its type's cores, RAM, one instance and its
    /// family's vCPU code (spot or on-demand), plus its attached volumes.
    async fn instance_usage(&self) -> Result<Vec<np_provider::InstanceUsage>, ProviderError> {
        let inner = &self.inner;
        let instances = inner.list_instances_cached().await?;
        let live: Vec<&Ec2Instance> = instances
            .iter()
            .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
            .collect();
        let types: Vec<String> =
            live.iter().filter_map(|i| i.instance_type().map(|t| t.as_str().to_owned())).collect();
        if let Err(e) = inner.load_types(types).await {
            debug!(provider = %inner.name, error = %e, "cannot read every instance type yet");
        }
        let volumes = inner.list_volumes_cached().await?;
        let volumes: HashMap<&str, &Volume> =
            volumes.iter().filter_map(|v| v.volume_id().map(|id| (id, v))).collect();
        let known = read(&inner.instance_types).clone();
        let mut out = Vec::with_capacity(live.len());
        for i in live {
            let itype = i.instance_type().map(|t| t.as_str()).unwrap_or_default();
            let mut q = if i.placement().and_then(|p| p.host_id()).is_some() {
                quota::host_quota(itype)
            } else {
                let market = if i.instance_lifecycle() == Some(&ec2::types::InstanceLifecycleType::Spot) {
                    Market::Spot
                } else {
                    Market::OnDemand
                };
                match known.get(itype) {
                    Some(info) => quota::instance_quota(itype, info, market),
                    None => {
                        let mut q = Quota::zero();
                        q.set("instances", 1.0);
                        q
                    }
                }
            };
            for mapping in i.block_device_mappings() {
                let Some(id) = mapping.ebs().and_then(|e| e.volume_id()) else { continue };
                match volumes.get(id) {
                    Some(v) => {
                        q.add(&quota::volume_quota(
                            v.volume_type().map(|t| t.as_str()).unwrap_or_default(),
                            v.size().map(f64::from),
                            v.iops().map(f64::from),
                        ));
                    }
                    None => {
                        debug!(provider = %inner.name, volume = id, "volume of an instance not listed yet")
                    }
                }
            }
            out.push(np_provider::InstanceUsage { metadata: tag_map(i.tags()), quota: q });
        }
        Ok(out)
    }

    fn usage_refresh(&self) -> Option<Duration> {
        Some(self.inner.settings.cache_ttl)
    }

    fn quota_for_label(&self, pool: &str, label: &str) -> Quota {
        match self.inner.find_label(Some(pool), label) {
            Some((_, l)) => self.inner.quota_for(l, None),
            None => {
                let mut q = Quota::zero();
                q.set("instances", 1.0);
                q
            }
        }
    }

    async fn upload_image(&self, request: &np_provider::ImageUploadRequest) -> Result<String, ProviderError> {
        // The provider diskimage's `image-format` decides the file; the
        // builder passes the file of that format.
        AwsProvider::upload_image(self, &request.diskimage, &request.path, &request.name, &request.metadata)
            .await
    }

    async fn delete_image(&self, external_id: &str) -> Result<(), ProviderError> {
        self.inner.delete_image(external_id).await
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
