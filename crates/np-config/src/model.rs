//! The validated, typed configuration handed to the daemons.
//!
//! Every value with a default has it applied (see [`crate::defaults`]), so there is no
//! `Option` for a defaulted setting. `Option` means "absent and meaningful as absent"
//! (for quotas, `None` means unlimited). Lists keep the order of the file; names are
//! unique within each list (the loader rejects duplicates), and lookup helpers are
//! provided.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;
use crate::drivers::aws::AwsProvider;
use crate::drivers::kubernetes::KubernetesProvider;
use crate::drivers::openstack::OpenStackProvider;
use crate::drivers::static_::StaticProvider;

/// A free-form mapping from the file (node attributes, metadata, instance properties...).
pub type Dict = serde_json::Map<String, serde_json::Value>;

/// The whole `nodepool.yaml` (merged with the secure file, when one was given).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// ZooKeeper connection settings (`zookeeper-servers`, `zookeeper-tls`, `zookeeper-timeout`).
    pub zookeeper: ZooKeeperConfig,
    /// The launcher's status web server (`webapp`).
    pub webapp: WebApp,
    /// `elements-dir`: exported to diskimage-builder as `ELEMENTS_PATH`.
    pub elements_dir: Option<PathBuf>,
    /// `images-dir`: where the builder writes images (the builder requires it).
    pub images_dir: Option<PathBuf>,
    /// `build-log-dir`; `None` means the builder uses [`defaults::BUILD_LOG_DIR`].
    pub build_log_dir: Option<PathBuf>,
    /// `build-log-retention`: logs kept per image; negative disables pruning.
    pub build_log_retention: i64,
    /// `max-hold-age`; `None` means held nodes are kept forever (absent or <= 0).
    pub max_hold_age: Option<Duration>,
    /// Top-level `labels`, in file order.
    pub labels: Vec<Label>,
    /// Non-abstract `diskimages` with parents resolved, in file order.
    pub diskimages: Vec<DiskImage>,
    /// `providers`, in file order.
    pub providers: Vec<Provider>,
    /// `tenant-resource-limits`, in file order.
    pub tenant_resource_limits: Vec<TenantResourceLimit>,
}

impl Config {
    /// The top-level label called `name`.
    pub fn label(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }

    /// The (non-abstract) diskimage called `name`.
    pub fn diskimage(&self, name: &str) -> Option<&DiskImage> {
        self.diskimages.iter().find(|d| d.name == name)
    }

    /// The formats a build of diskimage `name` must produce: its own
    /// `formats` plus the format of every provider that uploads it.
    pub fn build_formats(&self, name: &str) -> BTreeSet<String> {
        let mut formats = self.diskimage(name).map(|d| d.formats.clone()).unwrap_or_default();
        for p in &self.providers {
            if p.diskimage_names().iter().any(|n| n == name) {
                formats.extend(p.image_format().map(str::to_owned));
            }
        }
        formats
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The resource limits of tenant `name`.
    pub fn tenant_limits(&self, name: &str) -> Option<&TenantResourceLimit> {
        self.tenant_resource_limits.iter().find(|t| t.tenant_name == name)
    }

    /// Providers that upload diskimage `name` (OpenStack, fake and AWS `diskimages`).
    pub fn providers_using_diskimage(&self, name: &str) -> Vec<&Provider> {
        self.providers.iter().filter(|p| p.diskimage_names().iter().any(|d| d == name)).collect()
    }
}

/// ZooKeeper connection settings, ready for a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooKeeperConfig {
    /// `zookeeper-servers` (possibly replaced by the secure file's). Empty when not configured.
    pub servers: Vec<ZooKeeperServer>,
    /// `zookeeper-tls`; when present all three files are set.
    pub tls: Option<ZooKeeperTls>,
    /// `zookeeper-timeout`: the session timeout.
    pub timeout: Duration,
}

impl ZooKeeperConfig {
    /// The common chroot of the servers (`None` when there is none).
    pub fn chroot(&self) -> Option<&str> {
        self.servers.iter().find_map(|s| s.chroot.as_deref())
    }

    /// `host:port` pairs joined by commas, IPv6 literals in brackets, without chroot.
    pub fn hosts(&self) -> String {
        self.servers.iter().map(ZooKeeperServer::address).collect::<Vec<_>>().join(",")
    }

    /// The standard ZooKeeper connect string: `h1:p1,h2:p2/chroot`.
    pub fn connect_string(&self) -> String {
        format!("{}{}", self.hosts(), self.chroot().unwrap_or(""))
    }
}

/// One `zookeeper-servers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooKeeperServer {
    /// `host`: host name or IP address.
    pub host: String,
    /// `port`, default [`defaults::ZOOKEEPER_PORT`] (2281).
    pub port: u16,
    /// `chroot`, e.g. `/nodepool`; `None` when absent or empty.
    pub chroot: Option<String>,
}

impl ZooKeeperServer {
    /// `host:port`, with an IPv6 literal put in brackets.
    pub fn address(&self) -> String {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// `zookeeper-tls`: client certificate, key and CA, all PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooKeeperTls {
    /// `ca`: CA certificate.
    pub ca: PathBuf,
    /// `cert`: client certificate.
    pub cert: PathBuf,
    /// `key`: client private key.
    pub key: PathBuf,
}

/// `webapp`: the launcher's status HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebApp {
    /// `port`, default 8005.
    pub port: u16,
    /// `listen_address` (underscore, as upstream), default `0.0.0.0`.
    pub listen_address: String,
}

impl Default for WebApp {
    fn default() -> Self {
        WebApp { port: defaults::WEBAPP_PORT, listen_address: defaults::WEBAPP_LISTEN_ADDRESS.to_string() }
    }
}

/// A top-level `labels` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// `name`.
    pub name: String,
    /// `min-ready`: nodes kept ready; negative values in the file become 0.
    pub min_ready: u32,
    /// `max-ready-age`: delete a READY node after this long; `None` = never (absent or 0).
    pub max_ready_age: Option<Duration>,
}

/// A diskimage after parent inheritance (abstract images are not included).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskImage {
    /// `name`.
    pub name: String,
    /// `parent`, as written (informational; values are already merged).
    pub parent: Option<String>,
    /// `build-timeout`, default 8 h.
    pub build_timeout: Duration,
    /// `dib-cmd`, default `disk-image-create`.
    pub dib_cmd: String,
    /// `elements`, root parent first.
    pub elements: Vec<String>,
    /// `env-vars`, merged down the parent chain, then with the secure file's.
    pub env_vars: BTreeMap<String, String>,
    /// `formats` given in the file. Providers add their own format when building.
    pub formats: BTreeSet<String>,
    /// `keep-formats`.
    pub keep_formats: BTreeSet<String>,
    /// `delete-after-upload`.
    pub delete_after_upload: bool,
    /// `pause`.
    pub pause: bool,
    /// `python-path`, default `auto`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `rebuild-age`, default 24 h.
    pub rebuild_age: Duration,
    /// `release` (an integer in the file becomes its decimal string), default empty.
    pub release: String,
    /// `username`, default `zuul`.
    pub username: String,
    /// `metadata` (not inherited: only the image's own).
    pub metadata: Dict,
}

impl DiskImage {
    /// The elements as the single space-separated string passed to diskimage-builder.
    pub fn elements_string(&self) -> String {
        self.elements.join(" ")
    }
}

/// A `tenant-resource-limits` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantResourceLimit {
    /// `tenant-name`.
    pub tenant_name: String,
    /// `max-cores`; `None` = unlimited.
    pub max_cores: Option<u64>,
    /// `max-servers` (instances); `None` = unlimited.
    pub max_servers: Option<u64>,
    /// `max-ram` (MiB); `None` = unlimited.
    pub max_ram: Option<u64>,
    /// `max-volumes`; `None` = unlimited.
    pub max_volumes: Option<u64>,
    /// `max-volume-gb`; `None` = unlimited.
    pub max_volume_gb: Option<u64>,
    /// Any other `<resource>: <int>` key (e.g. AWS quota codes), verbatim.
    pub other: BTreeMap<String, u64>,
}

/// The driver a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriverName {
    /// `openstack` (the default).
    OpenStack,
    /// `fake`: upstream's in-memory test cloud with the OpenStack schema.
    Fake,
    /// `aws`.
    Aws,
    /// `static`.
    Static,
    /// `kubernetes`.
    Kubernetes,
}

impl DriverName {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverName::OpenStack => "openstack",
            DriverName::Fake => "fake",
            DriverName::Aws => "aws",
            DriverName::Static => "static",
            DriverName::Kubernetes => "kubernetes",
        }
    }
}

/// A `providers` entry: the keys common to all drivers plus the driver's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// `name`.
    pub name: String,
    /// `max-concurrency`: `None` = unlimited (-1, the default); `Some(0)` = handle no requests.
    pub max_concurrency: Option<u32>,
    /// `priority` (lower wins); pools may override.
    pub priority: Option<i64>,
    /// The driver-specific part.
    pub driver: ProviderDriver,
}

/// The driver-specific part of a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderDriver {
    /// `driver: openstack`.
    OpenStack(OpenStackProvider),
    /// `driver: fake` (or a provider whose name starts with `fake`): OpenStack schema.
    Fake(OpenStackProvider),
    /// `driver: aws`.
    Aws(AwsProvider),
    /// `driver: static`.
    Static(StaticProvider),
    /// `driver: kubernetes`.
    Kubernetes(KubernetesProvider),
}

impl Provider {
    /// Which driver this provider uses.
    pub fn driver_name(&self) -> DriverName {
        match &self.driver {
            ProviderDriver::OpenStack(_) => DriverName::OpenStack,
            ProviderDriver::Fake(_) => DriverName::Fake,
            ProviderDriver::Aws(_) => DriverName::Aws,
            ProviderDriver::Static(_) => DriverName::Static,
            ProviderDriver::Kubernetes(_) => DriverName::Kubernetes,
        }
    }

    /// Whether the builder uploads images to this provider.
    pub fn manages_images(&self) -> bool {
        matches!(self.driver, ProviderDriver::OpenStack(_) | ProviderDriver::Fake(_) | ProviderDriver::Aws(_))
    }

    /// Names of the pools, in file order.
    pub fn pool_names(&self) -> Vec<&str> {
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => {
                p.pools.iter().map(|x| x.name.as_str()).collect()
            }
            ProviderDriver::Aws(p) => p.pools.iter().map(|x| x.name.as_str()).collect(),
            ProviderDriver::Static(p) => p.pools.iter().map(|x| x.name.as_str()).collect(),
            ProviderDriver::Kubernetes(p) => p.pools.iter().map(|x| x.name.as_str()).collect(),
        }
    }

    /// The label names a pool (or, with `None`, the whole provider) can supply.
    pub fn supported_labels(&self, pool: Option<&str>) -> BTreeSet<String> {
        let keep = |name: &str| pool.is_none_or(|p| p == name);
        let mut out = BTreeSet::new();
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => {
                for pl in p.pools.iter().filter(|x| keep(&x.name)) {
                    out.extend(pl.labels.iter().map(|l| l.name.clone()));
                }
            }
            ProviderDriver::Aws(p) => {
                for pl in p.pools.iter().filter(|x| keep(&x.name)) {
                    out.extend(pl.labels.iter().map(|l| l.name.clone()));
                }
            }
            ProviderDriver::Static(p) => {
                for pl in p.pools.iter().filter(|x| keep(&x.name)) {
                    out.extend(pl.labels());
                }
            }
            ProviderDriver::Kubernetes(p) => {
                for pl in p.pools.iter().filter(|x| keep(&x.name)) {
                    out.extend(pl.labels.iter().map(|l| l.name.clone()));
                }
            }
        }
        out
    }

    /// Names of the provider's `diskimages` entries (image-managing drivers only).
    pub fn diskimage_names(&self) -> Vec<String> {
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => {
                p.diskimages.iter().map(|d| d.name.clone()).collect()
            }
            ProviderDriver::Aws(p) => p.diskimages.iter().map(|d| d.name.clone()).collect(),
            ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => Vec::new(),
        }
    }

    /// The provider's `diskimages` entry `name` (image-managing drivers
    /// only), in the terms the builder needs.
    pub fn provider_diskimage(&self, name: &str) -> Option<ProviderDiskImage<'_>> {
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => {
                p.diskimages.iter().find(|d| d.name == name).map(|d| ProviderDiskImage {
                    name: &d.name,
                    pause: d.pause,
                    metadata: &d.meta,
                    username: Some(&d.username),
                    python_path: &d.python_path,
                    shell_type: d.shell_type.as_deref(),
                })
            }
            ProviderDriver::Aws(p) => {
                p.diskimages.iter().find(|d| d.name == name).map(|d| ProviderDiskImage {
                    name: &d.name,
                    pause: d.pause,
                    metadata: &d.tags,
                    username: d.username.as_deref(),
                    python_path: &d.python_path,
                    shell_type: d.shell_type.as_deref(),
                })
            }
            ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => None,
        }
    }

    /// The cloud name of an upload: a Python format string over
    /// `image_name`, `upload_id` and `timestamp` (OpenStack's
    /// `image-name-format`; AWS uses upstream's fixed default).
    pub fn image_name_format(&self) -> &str {
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => &p.image_name_format,
            _ => "{image_name}-{timestamp}",
        }
    }

    /// `post-upload-hook`.
    pub fn post_upload_hook(&self) -> Option<&str> {
        match &self.driver {
            ProviderDriver::OpenStack(p) | ProviderDriver::Fake(p) => p.post_upload_hook.as_deref(),
            ProviderDriver::Aws(p) => p.post_upload_hook.as_deref(),
            ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => None,
        }
    }

    /// The disk format this provider takes builds in (image-managing drivers
    /// only): AWS's `image-format` (default raw); an OpenStack cloud's
    /// `image_format` from clouds.yaml (default qcow2); qcow2 for the fake
    /// driver, as upstream's defaults.
    pub fn image_format(&self) -> Option<&str> {
        match &self.driver {
            ProviderDriver::OpenStack(p) => Some(p.image_format.as_str()),
            ProviderDriver::Fake(_) => Some("qcow2"),
            ProviderDriver::Aws(p) => Some(p.image_format.as_str()),
            ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => None,
        }
    }

    /// The effective priority of `pool_priority`: pool, else provider, else 100.
    pub fn effective_priority(&self, pool_priority: Option<i64>) -> i64 {
        pool_priority.or(self.priority).unwrap_or(defaults::PRIORITY)
    }
}

/// A provider's `diskimages` entry, driver-independent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderDiskImage<'a> {
    /// The diskimage name.
    pub name: &'a str,
    /// `pause`: build, but do not upload to this provider.
    pub pause: bool,
    /// What the cloud image is tagged with: OpenStack's `meta`, AWS's `tags`.
    pub metadata: &'a Dict,
    /// `username` (AWS: none unless set).
    pub username: Option<&'a str>,
    /// `python-path`.
    pub python_path: &'a str,
    /// `shell-type`.
    pub shell_type: Option<&'a str>,
}

/// Which image a cloud label boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelImage {
    /// `diskimage: NAME`: a Nodepool-built image (top-level and provider `diskimages`).
    DiskImage(String),
    /// `cloud-image: NAME`: an entry of the provider's `cloud-images`.
    CloudImage(String),
}

impl LabelImage {
    /// The referenced name.
    pub fn name(&self) -> &str {
        match self {
            LabelImage::DiskImage(n) | LabelImage::CloudImage(n) => n,
        }
    }
}
