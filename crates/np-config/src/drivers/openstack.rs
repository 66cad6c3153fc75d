//! The `openstack` driver's provider schema, also used by the `fake` test driver.

use std::time::Duration;

use crate::defaults;
use crate::drivers::{common_pool, CommonPool, Refs};
use crate::error::{ErrorKind, KeyPath};
use crate::model::{Dict, LabelImage};
use crate::read::{Ctx, MapReader};

/// OpenStack (and fake) provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackProvider {
    /// `cloud`: the entry of `clouds.yaml` to use (required).
    pub cloud: String,
    /// `region-name`.
    pub region_name: Option<String>,
    /// `boot-timeout`, default 60 s.
    pub boot_timeout: Duration,
    /// `launch-timeout`, default 3600 s.
    pub launch_timeout: Duration,
    /// `launch-retries`, default 3.
    pub launch_retries: u32,
    /// `image-upload-timeout`, default 3600 s.
    pub image_upload_timeout: Duration,
    /// `rate`: seconds between API calls, default 1.0.
    pub rate: f64,
    /// The format builds are uploaded in: the cloud's `image_format` in
    /// clouds.yaml, as upstream reads it when loading the configuration
    /// (`qcow2` when clouds.yaml or the key is missing).
    pub image_format: String,
    /// `clean-floating-ips`, default false (upstream's code; its docs say true).
    pub clean_floating_ips: bool,
    /// `port-cleanup-interval`; `None` when 0 (disabled). Default 600 s.
    pub port_cleanup_interval: Option<Duration>,
    /// `image-name-format`, default `{image_name}-{timestamp}`.
    pub image_name_format: String,
    /// `post-upload-hook`.
    pub post_upload_hook: Option<String>,
    /// `diskimages`: Nodepool-built images uploaded to this provider.
    pub diskimages: Vec<OpenStackDiskImage>,
    /// `cloud-images`: images that already exist in the cloud.
    pub cloud_images: Vec<OpenStackCloudImage>,
    /// `pools`.
    pub pools: Vec<OpenStackPool>,
}

impl OpenStackProvider {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&OpenStackPool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The cloud image called `name`.
    pub fn cloud_image(&self, name: &str) -> Option<&OpenStackCloudImage> {
        self.cloud_images.iter().find(|c| c.name == name)
    }

    /// The provider diskimage called `name`.
    pub fn diskimage(&self, name: &str) -> Option<&OpenStackDiskImage> {
        self.diskimages.iter().find(|c| c.name == name)
    }
}

/// A provider `diskimages` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackDiskImage {
    /// `name` of a top-level diskimage.
    pub name: String,
    /// `pause`: pause uploads to this provider only.
    pub pause: bool,
    /// `config-drive`; `None` = the cloud's default.
    pub config_drive: Option<bool>,
    /// `meta`: glance image properties.
    pub meta: Dict,
    /// `connection-type`, default `ssh`.
    pub connection_type: String,
    /// `connection-port`, default 22 (5986 for winrm).
    pub connection_port: u16,
    /// Copied from the top-level diskimage.
    pub username: String,
    /// Copied from the top-level diskimage.
    pub python_path: String,
    /// Copied from the top-level diskimage.
    pub shell_type: Option<String>,
}

/// A `cloud-images` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackCloudImage {
    /// `name`: how labels refer to it (and the image name when neither id nor name is set).
    pub name: String,
    /// `config-drive`.
    pub config_drive: Option<bool>,
    /// `image-id`.
    pub image_id: Option<String>,
    /// `image-name`.
    pub image_name: Option<String>,
    /// `username`.
    pub username: Option<String>,
    /// `python-path`, default `auto`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `connection-type`, default `ssh`.
    pub connection_type: String,
    /// `connection-port`, default 22 (5986 for winrm).
    pub connection_port: u16,
}

impl OpenStackCloudImage {
    /// What to look up in the cloud: the id, else the image name, else `name`.
    pub fn external_name(&self) -> &str {
        self.image_id.as_deref().or(self.image_name.as_deref()).unwrap_or(&self.name)
    }
}

/// An OpenStack pool.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackPool {
    /// `name`.
    pub name: String,
    /// `max-servers`; `None` = unlimited.
    pub max_servers: Option<u64>,
    /// `node-attributes`, copied to every node.
    pub node_attributes: Option<Dict>,
    /// `priority`.
    pub priority: Option<i64>,
    /// `max-cores`; `None` = unlimited.
    pub max_cores: Option<u64>,
    /// `max-ram` (MiB); `None` = unlimited.
    pub max_ram: Option<u64>,
    /// `max-volumes`; `None` = unlimited.
    pub max_volumes: Option<u64>,
    /// `max-volume-gb`; `None` = unlimited.
    pub max_volume_gb: Option<u64>,
    /// `ignore-provider-quota`.
    pub ignore_provider_quota: bool,
    /// `availability-zones`; `None` = ask the cloud.
    pub availability_zones: Option<Vec<String>>,
    /// `networks`.
    pub networks: Vec<String>,
    /// `security-groups`.
    pub security_groups: Vec<String>,
    /// `auto-floating-ip`, default true.
    pub auto_floating_ip: bool,
    /// `host-key-checking`, default true.
    pub host_key_checking: bool,
    /// `labels`.
    pub labels: Vec<OpenStackLabel>,
}

impl OpenStackPool {
    /// The pool label called `name`.
    pub fn label(&self, name: &str) -> Option<&OpenStackLabel> {
        self.labels.iter().find(|l| l.name == name)
    }
}

/// An OpenStack pool label.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackLabel {
    /// `name` of a top-level label.
    pub name: String,
    /// `diskimage` or `cloud-image` (exactly one).
    pub image: LabelImage,
    /// `min-ram` (MiB), default 0.
    pub min_ram: u64,
    /// `flavor-name`.
    pub flavor_name: Option<String>,
    /// `key-name`.
    pub key_name: Option<String>,
    /// `console-log`.
    pub console_log: bool,
    /// `boot-from-volume`.
    pub boot_from_volume: bool,
    /// `volume-size` (GB), default 50.
    pub volume_size: u64,
    /// `instance-properties`: server metadata.
    pub instance_properties: Dict,
    /// `dynamic-instance-properties`: metadata formatted with `{request.*}`.
    pub dynamic_instance_properties: Dict,
    /// `userdata`.
    pub userdata: Option<String>,
    /// `networks`, default the pool's.
    pub networks: Vec<String>,
    /// `host-key-checking`, default the pool's.
    pub host_key_checking: bool,
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// Reads the OpenStack-specific provider keys of `m` (the common ones are already read).
pub(crate) fn parse(
    cx: &mut Ctx,
    m: &mut MapReader<'_>,
    provider: &str,
    refs: &mut Refs,
) -> Option<OpenStackProvider> {
    let cloud = m.req_str(cx, "cloud");
    let region_name = m.str(cx, "region-name");
    let boot_timeout = m.uint(cx, "boot-timeout").unwrap_or(defaults::OPENSTACK_BOOT_TIMEOUT_SECS);
    let launch_timeout = m.uint(cx, "launch-timeout").unwrap_or(defaults::LAUNCH_TIMEOUT_SECS);
    let launch_retries = crate::drivers::u32_of(cx, m, "launch-retries").unwrap_or(defaults::LAUNCH_RETRIES);
    let image_upload_timeout =
        m.uint(cx, "image-upload-timeout").unwrap_or(defaults::OPENSTACK_IMAGE_UPLOAD_TIMEOUT_SECS);
    m.refuse(
        cx,
        "nodepool-id",
        "it has had no effect since Nodepool 3 (Python Nodepool 11 accepts it and ignores it too); delete it",
    );
    let rate = crate::drivers::coerce_float(cx, m, "rate").unwrap_or(defaults::OPENSTACK_RATE);
    let image_name_format =
        m.str(cx, "image-name-format").unwrap_or_else(|| defaults::OPENSTACK_IMAGE_NAME_FORMAT.to_string());
    let clean_floating_ips = m.bool(cx, "clean-floating-ips").unwrap_or(false);
    let port_cleanup_interval =
        m.uint(cx, "port-cleanup-interval").unwrap_or(defaults::OPENSTACK_PORT_CLEANUP_INTERVAL_SECS);
    let post_upload_hook = m.str(cx, "post-upload-hook");

    let mut diskimages = Vec::new();
    for (node, path) in m.list(cx, "diskimages").unwrap_or_default() {
        let Some(mut d) = MapReader::new(cx, node, path.clone()) else { continue };
        let name = d.req_str(cx, "name");
        let pause = d.bool(cx, "pause").unwrap_or(false);
        let meta = d.dict(cx, "meta").unwrap_or_default();
        let config_drive = d.bool(cx, "config-drive");
        let connection_type =
            d.str(cx, "connection-type").unwrap_or_else(|| defaults::CONNECTION_TYPE.into());
        let connection_port =
            d.port(cx, "connection-port").unwrap_or_else(|| defaults::connection_port(&connection_type));
        let name_loc = d.key_loc("name");
        d.finish(cx);
        if let Some(name) = name {
            refs.provider_diskimage(provider, &name, name_loc.or(Some(node.loc)), path.key("name"));
            diskimages.push(OpenStackDiskImage {
                name,
                pause,
                config_drive,
                meta,
                connection_type,
                connection_port,
                // Filled from the top-level diskimage once it is known.
                username: defaults::USERNAME.to_string(),
                python_path: defaults::PYTHON_PATH.to_string(),
                shell_type: None,
            });
        }
    }

    let mut cloud_images = Vec::new();
    for (node, path) in m.list(cx, "cloud-images").unwrap_or_default() {
        let Some(mut c) = MapReader::new(cx, node, path.clone()) else { continue };
        // Upstream does not require `name` here, but labels can only refer to named images.
        let name = c.req_str(cx, "name");
        let config_drive = c.bool(cx, "config-drive");
        let connection_type =
            c.str(cx, "connection-type").unwrap_or_else(|| defaults::CONNECTION_TYPE.into());
        let connection_port =
            c.port(cx, "connection-port").unwrap_or_else(|| defaults::connection_port(&connection_type));
        let image_id = c.str(cx, "image-id");
        let image_name = c.str(cx, "image-name");
        if image_id.is_some() && image_name.is_some() {
            cx.error(
                c.key_loc("image-name"),
                &path,
                ErrorKind::Exclusive("image-id".into(), "image-name".into()),
            );
        }
        let username = c.str(cx, "username");
        let python_path = c.str(cx, "python-path").unwrap_or_else(|| defaults::PYTHON_PATH.into());
        let shell_type = c.str(cx, "shell-type");
        let name_loc = c.key_loc("name").unwrap_or(node.loc);
        c.finish(cx);
        if let Some(name) = name {
            refs.unique(
                cx,
                "cloud-image",
                &format!("providers.{provider}.cloud-images"),
                &name,
                name_loc,
                &path,
            );
            cloud_images.push(OpenStackCloudImage {
                name,
                config_drive,
                image_id,
                image_name,
                username,
                python_path,
                shell_type,
                connection_type,
                connection_port,
            });
        }
    }

    let mut pools = Vec::new();
    for (node, path) in m.list(cx, "pools").unwrap_or_default() {
        if let Some(pool) = parse_pool(cx, node, &path, provider, &cloud_images, refs) {
            pools.push(pool);
        }
    }

    let image_format =
        cloud.as_deref().and_then(crate::clouds::image_format).unwrap_or_else(|| "qcow2".to_owned());
    Some(OpenStackProvider {
        image_format,
        cloud: cloud?,
        region_name,
        boot_timeout: secs(boot_timeout),
        launch_timeout: secs(launch_timeout),
        launch_retries,
        image_upload_timeout: secs(image_upload_timeout),
        rate,
        clean_floating_ips,
        port_cleanup_interval: (port_cleanup_interval > 0).then(|| secs(port_cleanup_interval)),
        image_name_format,
        post_upload_hook,
        diskimages,
        cloud_images,
        pools,
    })
}

fn parse_pool(
    cx: &mut Ctx,
    node: &crate::yaml::Node,
    path: &KeyPath,
    provider: &str,
    cloud_images: &[OpenStackCloudImage],
    refs: &mut Refs,
) -> Option<OpenStackPool> {
    let mut p = MapReader::new(cx, node, path.clone())?;
    let CommonPool { name, max_servers, node_attributes, priority } = common_pool(cx, &mut p, provider, refs);
    let max_cores = p.uint(cx, "max-cores");
    let max_ram = p.uint(cx, "max-ram");
    let max_volumes = p.uint(cx, "max-volumes");
    let max_volume_gb = p.uint(cx, "max-volume-gb");
    let ignore_provider_quota = p.bool(cx, "ignore-provider-quota").unwrap_or(false);
    let availability_zones = p.str_list(cx, "availability-zones");
    let networks = p.str_list(cx, "networks").unwrap_or_default();
    let security_groups = p.str_list(cx, "security-groups").unwrap_or_default();
    let auto_floating_ip = p.bool(cx, "auto-floating-ip").unwrap_or(true);
    let host_key_checking = p.bool(cx, "host-key-checking").unwrap_or(true);
    let pool_name = name.clone().unwrap_or_default();

    let mut labels = Vec::new();
    for (lnode, lpath) in p.list(cx, "labels").unwrap_or_default() {
        let Some(mut l) = MapReader::new(cx, lnode, lpath.clone()) else { continue };
        let name = l.req_str(cx, "name");
        let diskimage = l.str(cx, "diskimage");
        let cloud_image = l.str(cx, "cloud-image");
        let min_ram = l.uint(cx, "min-ram");
        let flavor_name = l.str(cx, "flavor-name");
        let image = match (diskimage, cloud_image) {
            (Some(_), Some(_)) => {
                cx.error(
                    l.key_loc("cloud-image"),
                    &lpath,
                    ErrorKind::Exclusive("diskimage".into(), "cloud-image".into()),
                );
                None
            }
            (Some(d), None) => {
                if let Some(n) = &name {
                    refs.label_diskimage(
                        provider,
                        &pool_name,
                        n,
                        &d,
                        l.key_loc("diskimage"),
                        lpath.key("diskimage"),
                    );
                }
                Some(LabelImage::DiskImage(d))
            }
            (None, Some(c)) => {
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
            }
            (None, None) => {
                if !l.has("diskimage") && !l.has("cloud-image") {
                    cx.error(
                        Some(l.loc),
                        &lpath,
                        ErrorKind::OneOfRequired(vec!["diskimage".into(), "cloud-image".into()]),
                    );
                }
                None
            }
        };
        if !l.has("min-ram") && !l.has("flavor-name") {
            cx.error(
                Some(l.loc),
                &lpath,
                ErrorKind::OneOfRequired(vec!["min-ram".into(), "flavor-name".into()]),
            );
        }
        let key_name = l.str(cx, "key-name");
        let console_log = l.bool(cx, "console-log").unwrap_or(false);
        let boot_from_volume = l.bool(cx, "boot-from-volume").unwrap_or(false);
        let volume_size = l.uint(cx, "volume-size").unwrap_or(defaults::OPENSTACK_VOLUME_SIZE_GB);
        let instance_properties = l.dict(cx, "instance-properties").unwrap_or_default();
        let dynamic_instance_properties = l.dict(cx, "dynamic-instance-properties").unwrap_or_default();
        let userdata = l.str(cx, "userdata");
        let label_networks = l.str_list(cx, "networks");
        let label_hkc = l.bool(cx, "host-key-checking");
        let name_loc = l.key_loc("name").unwrap_or(lnode.loc);
        l.finish(cx);
        if let Some(name) = name {
            refs.pool_label(cx, provider, &pool_name, &name, name_loc, &lpath);
            if let Some(image) = image {
                labels.push(OpenStackLabel {
                    name,
                    image,
                    min_ram: min_ram.unwrap_or(0),
                    flavor_name,
                    key_name,
                    console_log,
                    boot_from_volume,
                    volume_size,
                    instance_properties,
                    dynamic_instance_properties,
                    userdata,
                    networks: label_networks.unwrap_or_else(|| networks.clone()),
                    host_key_checking: label_hkc.unwrap_or(host_key_checking),
                });
            }
        }
    }
    p.finish(cx);
    Some(OpenStackPool {
        name: name?,
        max_servers,
        node_attributes,
        priority,
        max_cores,
        max_ram,
        max_volumes,
        max_volume_gb,
        ignore_provider_quota,
        availability_zones,
        networks,
        security_groups,
        auto_floating_ip,
        host_key_checking,
        labels,
    })
}
