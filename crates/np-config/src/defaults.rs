//! Every default value of `nodepool.yaml`, in one place.
//!
//! The values are those of Python Nodepool 11's *code* (which wins where its
//! documentation disagrees, e.g. the ZooKeeper port). The loader applies them while it
//! builds the typed [`crate::Config`]; no consumer applies defaults of its own.

/// `webapp.port`.
pub const WEBAPP_PORT: u16 = 8005;
/// `webapp.listen_address`.
pub const WEBAPP_LISTEN_ADDRESS: &str = "0.0.0.0";
/// `zookeeper-servers[].port` (the TLS port; upstream's docs say 2181 but the code says 2281).
pub const ZOOKEEPER_PORT: u16 = 2281;
/// `zookeeper-timeout`, in seconds.
pub const ZOOKEEPER_TIMEOUT_SECS: f64 = 10.0;
/// `build-log-retention`.
pub const BUILD_LOG_RETENTION: i64 = 7;
/// Builder's log directory when `build-log-dir` is not set.
pub const BUILD_LOG_DIR: &str = "/var/log/nodepool/builds";

/// `diskimages[].build-timeout`, seconds (8 hours).
pub const DISKIMAGE_BUILD_TIMEOUT_SECS: u64 = 8 * 60 * 60;
/// `diskimages[].rebuild-age`, seconds (24 hours).
pub const DISKIMAGE_REBUILD_AGE_SECS: u64 = 24 * 60 * 60;
/// `diskimages[].dib-cmd`.
pub const DISKIMAGE_DIB_CMD: &str = "disk-image-create";
/// `diskimages[].python-path` and every other `python-path`.
pub const PYTHON_PATH: &str = "auto";
/// `diskimages[].username` and static nodes' `username`.
pub const USERNAME: &str = "zuul";

/// Provider `max-concurrency` (-1 = unlimited).
pub const MAX_CONCURRENCY: i64 = -1;
/// Effective priority when neither pool nor provider sets one (lower wins).
pub const PRIORITY: i64 = 100;

/// `connection-type` everywhere.
pub const CONNECTION_TYPE: &str = "ssh";
/// Default `connection-port` for a connection type: 5986 for winrm, 22 otherwise.
pub fn connection_port(connection_type: &str) -> u16 {
    if connection_type == "winrm" {
        5986
    } else {
        22
    }
}

/// OpenStack `boot-timeout`, seconds.
pub const OPENSTACK_BOOT_TIMEOUT_SECS: u64 = 60;
/// `launch-timeout` of OpenStack and AWS, seconds.
pub const LAUNCH_TIMEOUT_SECS: u64 = 3600;
/// `launch-retries` of every driver.
pub const LAUNCH_RETRIES: u32 = 3;
/// OpenStack `image-upload-timeout`, seconds.
pub const OPENSTACK_IMAGE_UPLOAD_TIMEOUT_SECS: u64 = 3600;
/// OpenStack `rate`, seconds between API calls.
pub const OPENSTACK_RATE: f64 = 1.0;
/// OpenStack `port-cleanup-interval`, seconds (0 disables).
pub const OPENSTACK_PORT_CLEANUP_INTERVAL_SECS: u64 = 600;
/// OpenStack `image-name-format`.
pub const OPENSTACK_IMAGE_NAME_FORMAT: &str = "{image_name}-{timestamp}";
/// OpenStack label `volume-size`, GB.
pub const OPENSTACK_VOLUME_SIZE_GB: u64 = 50;

/// AWS `rate`, operations per second.
pub const AWS_RATE: f64 = 2.0;
/// AWS `boot-timeout`, seconds.
pub const AWS_BOOT_TIMEOUT_SECS: u64 = 180;
/// AWS `image-format`.
pub const AWS_IMAGE_FORMAT: &str = "raw";
/// AWS image name format (fixed, not configurable).
pub const AWS_IMAGE_NAME_FORMAT: &str = "{image_name}-{timestamp}";
/// AWS provider `public-ipv4`.
pub const AWS_PUBLIC_IPV4: bool = true;
/// AWS provider `public-ipv6`.
pub const AWS_PUBLIC_IPV6: bool = false;
/// AWS diskimage `architecture`.
pub const AWS_ARCHITECTURE: &str = "x86_64";
/// AWS diskimage `volume-type`.
pub const AWS_DISKIMAGE_VOLUME_TYPE: &str = "gp3";
/// AWS diskimage `import-method`.
pub const AWS_IMPORT_METHOD: &str = "snapshot";

/// Static node `timeout` (ssh-keyscan), seconds.
pub const STATIC_TIMEOUT_SECS: u64 = 5;
/// Static node `max-parallel-jobs`.
pub const STATIC_MAX_PARALLEL_JOBS: u32 = 1;

/// Kubernetes label `image-pull`.
pub const K8S_IMAGE_PULL: &str = "IfNotPresent";
