//! The `aws` driver's provider schema.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::defaults;
use crate::drivers::{common_pool, CommonPool, Refs};
use crate::error::{ErrorKind, KeyPath};
use crate::model::{Dict, LabelImage};
use crate::read::{Ctx, MapReader};
use crate::yaml::{Node, Value};

/// AWS provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsProvider {
    /// `region-name` (required).
    pub region_name: String,
    /// `profile-name`.
    pub profile_name: Option<String>,
    /// `rate`: API operations per second, default 2.
    pub rate: f64,
    /// `boot-timeout`, default 180 s.
    pub boot_timeout: Duration,
    /// `launch-timeout`, default 3600 s.
    pub launch_timeout: Duration,
    /// `launch-retries`, default 3.
    pub launch_retries: u32,
    /// `object-storage.bucket-name`.
    pub object_storage_bucket: Option<String>,
    /// `image-format`: one of ova, vhd, vhdx, vmdk, raw; default raw.
    pub image_format: String,
    /// `image-import-timeout`.
    pub image_import_timeout: Option<Duration>,
    /// `post-upload-hook`.
    pub post_upload_hook: Option<String>,
    /// `max-servers`; `None` = unlimited. Pools inherit it.
    pub max_servers: Option<u64>,
    /// `max-cores`; pools inherit it.
    pub max_cores: Option<u64>,
    /// `max-ram`; pools inherit it.
    pub max_ram: Option<u64>,
    /// `max-resources`: other quota keys; pools inherit and overlay them.
    pub max_resources: BTreeMap<String, u64>,
    /// `cloud-images`.
    pub cloud_images: Vec<AwsCloudImage>,
    /// `diskimages`.
    pub diskimages: Vec<AwsDiskImage>,
    /// `pools`.
    pub pools: Vec<AwsPool>,
}

impl AwsProvider {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&AwsPool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// An AWS `cloud-images` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsCloudImage {
    /// `name`.
    pub name: String,
    /// `username` (required).
    pub username: String,
    /// `image-id` (exclusive with `image-filters`).
    pub image_id: Option<String>,
    /// `image-filters`: `(Name, Values)` pairs.
    pub image_filters: Option<Vec<AwsImageFilter>>,
    /// `python-path`, default `auto`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `connection-type`, default `ssh`.
    pub connection_type: String,
    /// `connection-port`, default 22 (5986 for winrm).
    pub connection_port: u16,
}

/// One `image-filters` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsImageFilter {
    /// `name` / `Name`.
    pub name: String,
    /// `values` / `Values`.
    pub values: Vec<String>,
}

/// An AWS `diskimages` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsDiskImage {
    /// `name` of a top-level diskimage.
    pub name: String,
    /// `username`; default the top-level diskimage's.
    pub username: Option<String>,
    /// `pause`.
    pub pause: bool,
    /// `connection-type`, default `ssh`.
    pub connection_type: String,
    /// `connection-port`, default 22 (5986 for winrm).
    pub connection_port: u16,
    /// `python-path`, default `auto`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `architecture`, default `x86_64`.
    pub architecture: String,
    /// `ena-support`, default true.
    pub ena_support: bool,
    /// `volume-size` (GB).
    pub volume_size: Option<u64>,
    /// `volume-type`, default `gp3`.
    pub volume_type: String,
    /// `import-method`: snapshot (default), ebs-direct or image.
    pub import_method: String,
    /// `imds-support`: `v2.0` or none.
    pub imds_support: Option<String>,
    /// `iops`.
    pub iops: Option<u64>,
    /// `throughput`.
    pub throughput: Option<u64>,
    /// `tags`.
    pub tags: Dict,
}

/// An AWS pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsPool {
    /// `name`.
    pub name: String,
    /// `max-servers`, default the provider's.
    pub max_servers: Option<u64>,
    /// `node-attributes`.
    pub node_attributes: Option<Dict>,
    /// `priority`.
    pub priority: Option<i64>,
    /// `max-cores`, default the provider's.
    pub max_cores: Option<u64>,
    /// `max-ram`, default the provider's.
    pub max_ram: Option<u64>,
    /// `max-resources`, the provider's overlaid with the pool's.
    pub max_resources: BTreeMap<String, u64>,
    /// `security-group-id`.
    pub security_group_id: Option<String>,
    /// `subnet-id`.
    pub subnet_id: Option<String>,
    /// `public-ipv4` (or the deprecated `public-ip-address`), default true.
    pub public_ipv4: bool,
    /// `public-ipv6`, default false.
    pub public_ipv6: bool,
    /// `host-key-checking`, default true.
    pub host_key_checking: bool,
    /// `availability-zone`.
    pub availability_zone: Option<String>,
    /// `labels`.
    pub labels: Vec<AwsLabel>,
}

/// How an AWS label chooses its instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsInstance {
    /// `instance-type`.
    Type(String),
    /// `fleet`.
    Fleet {
        /// `fleet.instance-types`.
        instance_types: Vec<serde_json::Value>,
        /// `fleet.allocation-strategy`.
        allocation_strategy: String,
    },
}

/// `iam-instance-profile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsIamInstanceProfile {
    /// `name`.
    Name(String),
    /// `arn`.
    Arn(String),
}

/// An AWS pool label.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsLabel {
    /// `name`.
    pub name: String,
    /// `cloud-image` or `diskimage`.
    pub image: Option<LabelImage>,
    /// `instance-type` or `fleet`.
    pub instance: Option<AwsInstance>,
    /// `key-name` (required).
    pub key_name: String,
    /// `ebs-optimized`.
    pub ebs_optimized: bool,
    /// `volume-type`.
    pub volume_type: Option<String>,
    /// `volume-size` (GB).
    pub volume_size: Option<u64>,
    /// `iops`.
    pub iops: Option<u64>,
    /// `throughput`.
    pub throughput: Option<u64>,
    /// `userdata`.
    pub userdata: Option<String>,
    /// `iam-instance-profile`.
    pub iam_instance_profile: Option<AwsIamInstanceProfile>,
    /// `tags`.
    pub tags: Dict,
    /// `dynamic-tags`.
    pub dynamic_tags: Dict,
    /// `use-spot`.
    pub use_spot: bool,
    /// `imdsv2`: `required`, `optional` or none.
    pub imdsv2: Option<String>,
    /// `dedicated-host`.
    pub dedicated_host: bool,
    /// The pool's `host-key-checking`.
    pub host_key_checking: bool,
}

fn one_of(
    cx: &mut Ctx,
    m: &mut MapReader<'_>,
    key: &'static str,
    allowed: &[&str],
    allow_null: bool,
) -> Option<String> {
    let node = m.node(key)?;
    match &node.value {
        Value::Null if allow_null => None,
        Value::Str(s) if allowed.contains(&s.as_str()) => Some(s.clone()),
        other => {
            let shown = match other {
                Value::Str(s) => format!("'{s}'"),
                v => v.kind().to_string(),
            };
            cx.error(
                Some(node.loc),
                &m.path.key(key),
                ErrorKind::InvalidValue(format!(
                    "expected one of {}, found {shown}",
                    allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
                )),
            );
            None
        }
    }
}

fn exclusive(cx: &mut Ctx, m: &MapReader<'_>, a: &str, b: &str) {
    if m.has(a) && m.has(b) {
        cx.error(m.key_loc(b), &m.path, ErrorKind::Exclusive(a.into(), b.into()));
    }
}

fn uint_map(cx: &mut Ctx, m: &mut MapReader<'_>, key: &'static str) -> BTreeMap<String, u64> {
    let loc = m.key_loc(key);
    let path = m.path.key(key);
    let mut out = BTreeMap::new();
    for (k, v) in m.int_map(cx, key).unwrap_or_default() {
        match u64::try_from(v) {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(_) => cx.error(
                loc,
                &path.key(&k),
                ErrorKind::InvalidValue(format!("expected a non-negative integer, found {v}")),
            ),
        }
    }
    out
}

/// Reads the AWS-specific provider keys.
pub(crate) fn parse(
    cx: &mut Ctx,
    m: &mut MapReader<'_>,
    provider: &str,
    refs: &mut Refs,
) -> Option<AwsProvider> {
    if !m.has("pools") {
        m.missing(cx, "pools");
    }
    let region_name = m.req_str(cx, "region-name");
    let rate = m.number(cx, "rate").unwrap_or(defaults::AWS_RATE);
    let profile_name = m.str(cx, "profile-name");
    let boot_timeout = m.uint(cx, "boot-timeout").unwrap_or(defaults::AWS_BOOT_TIMEOUT_SECS);
    let launch_timeout = m.uint(cx, "launch-timeout").unwrap_or(defaults::LAUNCH_TIMEOUT_SECS);
    let launch_retries = crate::drivers::u32_of(cx, m, "launch-retries").unwrap_or(defaults::LAUNCH_RETRIES);
    let object_storage_bucket = match m.map(cx, "object-storage") {
        Some(mut o) => {
            let b = o.req_str(cx, "bucket-name");
            o.finish(cx);
            b
        }
        None => None,
    };
    let image_format = one_of(cx, m, "image-format", &["ova", "vhd", "vhdx", "vmdk", "raw"], false)
        .unwrap_or_else(|| defaults::AWS_IMAGE_FORMAT.into());
    let image_import_timeout = m.uint(cx, "image-import-timeout").map(Duration::from_secs);
    let post_upload_hook = m.str(cx, "post-upload-hook");
    let max_servers = m.uint(cx, "max-servers");
    let max_cores = m.uint(cx, "max-cores");
    let max_ram = m.uint(cx, "max-ram");
    let max_resources = uint_map(cx, m, "max-resources");

    let mut cloud_images = Vec::new();
    for (node, path) in m.list(cx, "cloud-images").unwrap_or_default() {
        if let Some(ci) = parse_cloud_image(cx, node, &path, provider, refs) {
            cloud_images.push(ci);
        }
    }

    let mut diskimages = Vec::new();
    for (node, path) in m.list(cx, "diskimages").unwrap_or_default() {
        let Some(mut d) = MapReader::new(cx, node, path.clone()) else { continue };
        let name = d.req_str(cx, "name");
        let username = d.str(cx, "username");
        let pause = d.bool(cx, "pause").unwrap_or(false);
        let connection_type =
            d.str(cx, "connection-type").unwrap_or_else(|| defaults::CONNECTION_TYPE.into());
        let connection_port =
            d.port(cx, "connection-port").unwrap_or_else(|| defaults::connection_port(&connection_type));
        let python_path = d.str(cx, "python-path").unwrap_or_else(|| defaults::PYTHON_PATH.into());
        let shell_type = d.str(cx, "shell-type");
        let architecture = d.str(cx, "architecture").unwrap_or_else(|| defaults::AWS_ARCHITECTURE.into());
        let ena_support = d.bool(cx, "ena-support").unwrap_or(true);
        let volume_size = d.uint(cx, "volume-size");
        let volume_type =
            d.str(cx, "volume-type").unwrap_or_else(|| defaults::AWS_DISKIMAGE_VOLUME_TYPE.into());
        let import_method = one_of(cx, &mut d, "import-method", &["snapshot", "ebs-direct", "image"], false)
            .unwrap_or_else(|| defaults::AWS_IMPORT_METHOD.into());
        let imds_support = one_of(cx, &mut d, "imds-support", &["v2.0"], true);
        if imds_support.is_some() && import_method == "image" {
            cx.error(
                d.key_loc("imds-support"),
                &path.key("imds-support"),
                ErrorKind::Semantic(
                    "imds-support v2.0 requires import-method 'snapshot' or 'ebs-direct'".into(),
                ),
            );
        }
        let iops = d.uint(cx, "iops");
        let throughput = d.uint(cx, "throughput");
        let tags = d.dict(cx, "tags").unwrap_or_default();
        let name_loc = d.key_loc("name");
        d.finish(cx);
        if let Some(name) = name {
            refs.unique(
                cx,
                "diskimage",
                &format!("providers.{provider}.diskimages"),
                &name,
                name_loc.unwrap_or(node.loc),
                &path,
            );
            refs.provider_diskimage(provider, &name, name_loc.or(Some(node.loc)), path.key("name"));
            diskimages.push(AwsDiskImage {
                name,
                username,
                pause,
                connection_type,
                connection_port,
                python_path,
                shell_type,
                architecture,
                ena_support,
                volume_size,
                volume_type,
                import_method,
                imds_support,
                iops,
                throughput,
                tags,
            });
        }
    }

    let inherit = Inherit { max_servers, max_cores, max_ram, max_resources: max_resources.clone() };
    let mut pools = Vec::new();
    for (node, path) in m.list(cx, "pools").unwrap_or_default() {
        if let Some(p) = parse_pool(cx, node, &path, provider, &inherit, &cloud_images, &diskimages, refs) {
            pools.push(p);
        }
    }

    Some(AwsProvider {
        region_name: region_name?,
        profile_name,
        rate,
        boot_timeout: Duration::from_secs(boot_timeout),
        launch_timeout: Duration::from_secs(launch_timeout),
        launch_retries,
        object_storage_bucket,
        image_format,
        image_import_timeout,
        post_upload_hook,
        max_servers,
        max_cores,
        max_ram,
        max_resources,
        cloud_images,
        diskimages,
        pools,
    })
}

fn parse_cloud_image(
    cx: &mut Ctx,
    node: &Node,
    path: &KeyPath,
    provider: &str,
    refs: &mut Refs,
) -> Option<AwsCloudImage> {
    let mut c = MapReader::new(cx, node, path.clone())?;
    let name = c.req_str(cx, "name");
    let username = c.req_str(cx, "username");
    exclusive(cx, &c, "image-id", "image-filters");
    if !c.has("image-id") && !c.has("image-filters") {
        cx.error(
            Some(c.loc),
            path,
            ErrorKind::OneOfRequired(vec!["image-id".into(), "image-filters".into()]),
        );
    }
    let image_id = c.str(cx, "image-id");
    let mut image_filters = None;
    if let Some(items) = c.list(cx, "image-filters") {
        let mut filters = Vec::new();
        for (fnode, fpath) in items {
            let Some(mut f) = MapReader::new(cx, fnode, fpath.clone()) else { continue };
            f.declare(&["Name", "name", "Values", "values"]);
            let fname = if f.has("Name") { f.str(cx, "Name") } else { f.str(cx, "name") };
            let values = if f.has("Values") { f.str_list(cx, "Values") } else { f.str_list(cx, "values") };
            f.finish(cx);
            if let (Some(name), Some(values)) = (fname, values) {
                filters.push(AwsImageFilter { name, values });
            }
        }
        image_filters = Some(filters);
    }
    let connection_type = c.str(cx, "connection-type").unwrap_or_else(|| defaults::CONNECTION_TYPE.into());
    let connection_port =
        c.port(cx, "connection-port").unwrap_or_else(|| defaults::connection_port(&connection_type));
    let python_path = c.str(cx, "python-path").unwrap_or_else(|| defaults::PYTHON_PATH.into());
    let shell_type = c.str(cx, "shell-type");
    let name_loc = c.key_loc("name").unwrap_or(node.loc);
    c.finish(cx);
    let name = name?;
    refs.unique(cx, "cloud-image", &format!("providers.{provider}.cloud-images"), &name, name_loc, path);
    Some(AwsCloudImage {
        name,
        username: username?,
        image_id,
        image_filters,
        python_path,
        shell_type,
        connection_type,
        connection_port,
    })
}

struct Inherit {
    max_servers: Option<u64>,
    max_cores: Option<u64>,
    max_ram: Option<u64>,
    max_resources: BTreeMap<String, u64>,
}

#[allow(clippy::too_many_arguments)]
fn parse_pool(
    cx: &mut Ctx,
    node: &Node,
    path: &KeyPath,
    provider: &str,
    inherit: &Inherit,
    cloud_images: &[AwsCloudImage],
    diskimages: &[AwsDiskImage],
    refs: &mut Refs,
) -> Option<AwsPool> {
    let mut p = MapReader::new(cx, node, path.clone())?;
    if !p.has("labels") {
        p.missing(cx, "labels");
    }
    let CommonPool { name, max_servers, node_attributes, priority } = common_pool(cx, &mut p, provider, refs);
    let security_group_id = p.str(cx, "security-group-id");
    let subnet_id = p.str(cx, "subnet-id");
    let public_ip_address = p.bool(cx, "public-ip-address");
    let public_ipv4 = public_ip_address.or(p.bool(cx, "public-ipv4")).unwrap_or(defaults::AWS_PUBLIC_IPV4);
    let public_ipv6 = p.bool(cx, "public-ipv6").unwrap_or(defaults::AWS_PUBLIC_IPV6);
    let host_key_checking = p.bool(cx, "host-key-checking").unwrap_or(true);
    let max_cores = p.uint(cx, "max-cores").or(inherit.max_cores);
    let max_ram = p.uint(cx, "max-ram").or(inherit.max_ram);
    let mut max_resources = inherit.max_resources.clone();
    max_resources.extend(uint_map(cx, &mut p, "max-resources"));
    let availability_zone = p.str(cx, "availability-zone");
    let pool_name = name.clone().unwrap_or_default();

    let mut labels = Vec::new();
    for (lnode, lpath) in p.list(cx, "labels").unwrap_or_default() {
        let Some(mut l) = MapReader::new(cx, lnode, lpath.clone()) else { continue };
        let lname = l.req_str(cx, "name");
        exclusive(cx, &l, "cloud-image", "diskimage");
        exclusive(cx, &l, "instance-type", "fleet");
        let image = if let Some(c) = l.str(cx, "cloud-image") {
            if !cloud_images.iter().any(|ci| ci.name == c) {
                cx.error(
                    l.key_loc("cloud-image"),
                    &lpath.key("cloud-image"),
                    ErrorKind::Undefined(format!(
                        "cloud-image '{c}' is not defined in the cloud-images of provider '{provider}'"
                    )),
                );
            }
            Some(LabelImage::CloudImage(c))
        } else {
            None
        };
        let image = match (image, l.str(cx, "diskimage")) {
            (Some(i), _) => Some(i),
            (None, Some(d)) => {
                if !diskimages.iter().any(|di| di.name == d) {
                    cx.error(
                        l.key_loc("diskimage"),
                        &lpath.key("diskimage"),
                        ErrorKind::Undefined(format!(
                            "diskimage '{d}' is not defined in the diskimages of provider '{provider}'"
                        )),
                    );
                }
                Some(LabelImage::DiskImage(d))
            }
            (None, None) => None,
        };
        let instance_type = l.str(cx, "instance-type");
        let fleet = match l.map(cx, "fleet") {
            Some(mut f) => {
                if !f.has("instance-types") {
                    f.missing(cx, "instance-types");
                }
                let instance_types = f.any_list(cx, "instance-types");
                if !f.has("allocation-strategy") {
                    f.missing(cx, "allocation-strategy");
                }
                let strategy = one_of(
                    cx,
                    &mut f,
                    "allocation-strategy",
                    &[
                        "prioritized",
                        "price-capacity-optimized",
                        "capacity-optimized",
                        "diversified",
                        "lowest-price",
                    ],
                    false,
                );
                f.finish(cx);
                match (instance_types, strategy) {
                    (Some(instance_types), Some(allocation_strategy)) => {
                        Some(AwsInstance::Fleet { instance_types, allocation_strategy })
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let instance = instance_type.map(AwsInstance::Type).or(fleet);
        let key_name = l.req_str(cx, "key-name");
        let ebs_optimized = l.bool(cx, "ebs-optimized").unwrap_or(false);
        let volume_type = l.str(cx, "volume-type");
        let volume_size = l.uint(cx, "volume-size");
        let iops = l.uint(cx, "iops");
        let throughput = l.uint(cx, "throughput");
        let userdata = l.str(cx, "userdata");
        let iam_instance_profile = match l.map(cx, "iam-instance-profile") {
            Some(mut i) => {
                exclusive(cx, &i, "name", "arn");
                let n = i.str(cx, "name");
                let a = i.str(cx, "arn");
                i.finish(cx);
                n.map(AwsIamInstanceProfile::Name).or(a.map(AwsIamInstanceProfile::Arn))
            }
            None => None,
        };
        let tags = l.dict(cx, "tags").unwrap_or_default();
        let dynamic_tags = l.dict(cx, "dynamic-tags").unwrap_or_default();
        let use_spot = l.bool(cx, "use-spot").unwrap_or(false);
        let imdsv2 = one_of(cx, &mut l, "imdsv2", &["required", "optional"], true);
        let dedicated_host = l.bool(cx, "dedicated-host").unwrap_or(false);
        if dedicated_host && use_spot {
            cx.error(
                l.key_loc("dedicated-host"),
                &lpath.key("dedicated-host"),
                ErrorKind::Semantic("spot instances can not be used on dedicated hosts".into()),
            );
        }
        if dedicated_host && availability_zone.is_none() {
            cx.error(
                l.key_loc("dedicated-host"),
                &lpath.key("dedicated-host"),
                ErrorKind::Semantic("dedicated hosts need the pool's availability-zone".into()),
            );
        }
        let name_loc = l.key_loc("name").unwrap_or(lnode.loc);
        l.finish(cx);
        let Some(lname) = lname else { continue };
        refs.pool_label(cx, provider, &pool_name, &lname, name_loc, &lpath);
        let Some(key_name) = key_name else { continue };
        labels.push(AwsLabel {
            name: lname,
            image,
            instance,
            key_name,
            ebs_optimized,
            volume_type,
            volume_size,
            iops,
            throughput,
            userdata,
            iam_instance_profile,
            tags,
            dynamic_tags,
            use_spot,
            imdsv2,
            dedicated_host,
            host_key_checking,
        });
    }
    p.finish(cx);
    Some(AwsPool {
        name: name?,
        max_servers: max_servers.or(inherit.max_servers),
        node_attributes,
        priority,
        max_cores,
        max_ram,
        max_resources,
        security_group_id,
        subnet_id,
        public_ipv4,
        public_ipv6,
        host_key_checking,
        availability_zone,
        labels,
    })
}
