//! `np-config`: the typed `nodepool.yaml` shared by every Nodepool daemon and the CLI.
//!
//! The crate reads the configuration files upstream Nodepool reads (the main file and
//! the optional secure file), checks them, and returns a [`Config`] with every default
//! applied, or [`ConfigErrors`] listing **every** problem found, each with file, line,
//! column and key path (`providers[2].pools[0].labels[1].flavor-name`).
//!
//! Pipeline ([`load`]):
//! 1. `%(NODEPOOL_*)` environment substitution, as upstream;
//! 2. YAML parsing into a located tree ([`yaml`]), with PyYAML's YAML 1.1 scalar rules;
//! 3. a typed read of each section with schema checks that collect all errors
//!    (drivers: `openstack`, `fake`, `aws`, `static`, `kubernetes`; the other upstream
//!    drivers are recognised and rejected);
//! 4. diskimage `parent`/`abstract` inheritance ([`diskimage`]);
//! 5. semantic checks across sections ([`checks`]);
//! 6. the secure file merge.
//!
//! [`diff()`] compares two configurations for live reload.
//!
//! The crate does no networking and starts no runtime; only [`load_file`] and
//! [`validate_file`] touch the file system.

mod checks;
pub mod clouds;
pub mod defaults;
mod diff;
mod diskimage;
pub mod drivers;
mod error;
mod load;
mod model;
mod read;
pub mod watch;
pub mod yaml;

use std::path::Path;

pub use diff::{diff, ConfigDiff, PoolDiff, ProviderDiff};
pub use drivers::aws::{
    AwsCloudImage, AwsDiskImage, AwsIamInstanceProfile, AwsImageFilter, AwsInstance, AwsLabel, AwsPool,
    AwsProvider,
};
pub use drivers::kubernetes::{KubernetesLabel, KubernetesPool, KubernetesProvider};
pub use drivers::openstack::{
    OpenStackCloudImage, OpenStackDiskImage, OpenStackLabel, OpenStackPool, OpenStackProvider,
};
pub use drivers::static_::{StaticNode, StaticPool, StaticProvider};
pub use error::{ConfigError, ConfigErrors, ErrorKind, KeyPath, Location, Segment};
pub use load::{nodepool_env, substitute_env_vars};
pub use model::{
    Config, Dict, DiskImage, DriverName, Label, LabelImage, Provider, ProviderDiskImage, ProviderDriver,
    TenantResourceLimit, WebApp, ZooKeeperConfig, ZooKeeperServer, ZooKeeperTls,
};
pub use read::KeyUse;

/// Every key the schema takes, as `(section, key) -> use`, found by running the
/// readers over `main` (and `secure`): a reader asks for all of its keys whether or
/// not they are present, so one instance of each section yields the whole schema.
/// Sections are key paths without list indices, providers qualified by their schema
/// (`providers(aws).pools.labels`, `top`, `secure.zookeeper-tls`); `*` stands for
/// free-form keys. The test `schema_audit` compares this with the audit table of
/// `doc/config-differences.md`.
#[doc(hidden)]
pub fn schema_keys(main: &str, secure: Option<&str>) -> std::collections::BTreeMap<(String, String), KeyUse> {
    load::record_schema(main, secure)
}

/// Loads a main configuration from text, with this process's `NODEPOOL_*` variables.
/// `file_name` is only used in error messages.
pub fn load_str(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    load::load((text, file_name), None, &nodepool_env())
}

/// Like [`load_str`], with an explicit environment for `%(NODEPOOL_*)` substitution and
/// an optional secure file `(text, file_name)`.
pub fn load_str_with(
    text: &str,
    file_name: &str,
    secure: Option<(&str, &str)>,
    env: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    load::load((text, file_name), secure, env)
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::from(ConfigError {
            file: path.display().to_string(),
            location: None,
            path: KeyPath::root(),
            kind: ErrorKind::Io(e.to_string()),
        })
    })
}

/// Reads and loads the main file and, when given, the secure file (`-s`), merged as
/// upstream merges them.
pub fn load_file(path: &Path, secure: Option<&Path>) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    let secure_text = match secure {
        Some(s) => Some((read(s)?, s.display().to_string())),
        None => None,
    };
    let name = path.display().to_string();
    load::load((&text, &name), secure_text.as_ref().map(|(t, n)| (t.as_str(), n.as_str())), &nodepool_env())
}

/// What `nodepool config-validate` runs: exactly the daemons' loader. On error, the
/// `Display` of [`ConfigErrors`] prints every error, one per line.
pub fn validate_file(path: &Path, secure: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_file(path, secure)
}
