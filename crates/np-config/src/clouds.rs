//! `clouds.yaml`: the cloud a provider's `cloud:` key names, as
//! openstacksdk finds and reads it.
//!
//! Files, first found wins: `$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
//! `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`. A
//! `secure.yaml` found the same way (`$OS_CLIENT_SECURE_FILE` first) is
//! merged over it key by key, so passwords can live in a file of their own.
//!
//! Supported: `auth_type` `password` (the default) and
//! `v3applicationcredential`, `auth.auth_url` with or without `/v3`, user,
//! project and domain by name or id, `region_name`, `interface` (default
//! `public`), `verify`, `cacert`, `image_format` (default `qcow2`), `private`
//! (reach servers on private addresses) and
//! `<service>_endpoint_override` for `compute`, `image`, `network` and
//! `volume`. Secrets are never printed: [`Auth`]'s `Debug` hides them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a cloud cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudsError {
    /// No clouds.yaml was found.
    #[error("no clouds.yaml found (looked at {0})")]
    NoFile(String),
    /// A file cannot be read or is not valid YAML.
    #[error("{path}: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The cloud is not in the file.
    #[error("{path}: no cloud named '{cloud}' under 'clouds'")]
    NoCloud {
        /// The file.
        path: PathBuf,
        /// The cloud asked for.
        cloud: String,
    },
    /// The cloud's entry is incomplete or of an unsupported kind.
    #[error("{path}: cloud '{cloud}': {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The cloud.
        cloud: String,
        /// What is wrong.
        message: String,
    },
}

/// `auth` of a cloud entry.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct Auth {
    /// Keystone's URL, with or without the `/v3` suffix.
    pub auth_url: String,
    /// User name (password auth).
    pub username: Option<String>,
    /// User id (password auth).
    pub user_id: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// Project name (or the old `tenant_name`).
    #[serde(alias = "tenant_name")]
    pub project_name: Option<String>,
    /// Project id (or the old `tenant_id`).
    #[serde(alias = "tenant_id")]
    pub project_id: Option<String>,
    /// The user's domain by name.
    pub user_domain_name: Option<String>,
    /// The user's domain by id.
    pub user_domain_id: Option<String>,
    /// The project's domain by name.
    pub project_domain_name: Option<String>,
    /// The project's domain by id.
    pub project_domain_id: Option<String>,
    /// Both domains at once, when the per-kind keys are missing.
    pub domain_name: Option<String>,
    /// See `domain_name`.
    pub domain_id: Option<String>,
    /// Application credential id.
    pub application_credential_id: Option<String>,
    /// Application credential name (with the user).
    pub application_credential_name: Option<String>,
    /// Application credential secret.
    pub application_credential_secret: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("project_name", &self.project_name)
            .field("project_id", &self.project_id)
            .field("application_credential_id", &self.application_credential_id)
            .field(
                "application_credential_secret",
                &self.application_credential_secret.as_ref().map(|_| "<hidden>"),
            )
            .finish_non_exhaustive()
    }
}

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// `password`: user and password, scoped to a project.
    Password,
    /// `v3applicationcredential`: an application credential (its own scope).
    ApplicationCredential,
}

/// One resolved cloud.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// The cloud's name in clouds.yaml (the nodes' `cloud`).
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Credentials.
    pub auth: Auth,
    /// How to use them.
    pub auth_type: AuthType,
    /// The region (the provider's `region-name` wins).
    pub region_name: Option<String>,
    /// Catalog interface: `public`, `internal` or `admin`.
    pub interface: String,
    /// Verify TLS certificates.
    pub verify: bool,
    /// A CA bundle to trust besides the system's.
    pub cacert: Option<PathBuf>,
    /// The cloud's image format for uploads (`image_format`, default `qcow2`).
    pub image_format: String,
    /// `private`: servers are reached on their private addresses (the
    /// node's `interface_ip`), as openstacksdk decides it.
    pub private: bool,
    /// `<service>_endpoint_override` by service (`compute`, `image`, `network`, `volume`).
    pub endpoint_overrides: Vec<(String, String)>,
}

/// The clouds.yaml and secure.yaml locations, in openstacksdk's order.
fn candidates(env_var: &str, file: &str) -> Vec<PathBuf> {
    candidates_from(std::env::var_os(env_var), std::env::var_os("HOME"), file)
}

fn candidates_from(
    explicit: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    file: &str,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(PathBuf::from(p));
    }
    let mut dirs = vec![PathBuf::new()];
    if let Some(home) = home {
        dirs.push(Path::new(&home).join(".config/openstack"));
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    // Each directory: `.yaml`, then `.yml`, then `.json` (YAML reads JSON).
    let stem = file.trim_end_matches(".yaml");
    for d in dirs {
        for ext in ["yaml", "yml", "json"] {
            out.push(d.join(format!("{stem}.{ext}")));
        }
    }
    out
}

/// The first secure.yaml found, if any.
fn secure_file() -> Result<Option<Value>, CloudsError> {
    for s in candidates("OS_CLIENT_SECURE_FILE", "secure.yaml") {
        if let Some(d) = read_yaml(&s)? {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// Loads cloud `name` from the clouds.yaml at `path` (and the first
/// secure.yaml found the usual way).
pub fn load_file(path: &Path, name: &str) -> Result<CloudConfig, CloudsError> {
    let doc = read_yaml(path)?.ok_or_else(|| CloudsError::NoFile(path.display().to_string()))?;
    from_documents(name, path, doc, secure_file()?)
}

/// Reads a YAML file into JSON values (`None` if it does not exist).
fn read_yaml(path: &Path) -> Result<Option<Value>, CloudsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CloudsError::Unreadable { path: path.into(), message: e.to_string() }),
    };
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| CloudsError::Unreadable { path: path.into(), message: e.to_string() })?;
    Ok(Some(docs.first().map(yaml_to_json).unwrap_or(Value::Null)))
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => {
            s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
        }
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Real(r) => r.clone(),
                    _ => continue,
                };
                m.insert(key, yaml_to_json(v));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

/// Merges `over` into `base`, objects key by key.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Loads cloud `name` from the first clouds.yaml found (and secure.yaml).
pub fn load(name: &str) -> Result<CloudConfig, CloudsError> {
    let files = candidates("OS_CLIENT_CONFIG_FILE", "clouds.yaml");
    for path in &files {
        if let Some(doc) = read_yaml(path)? {
            return from_documents(name, path, doc, secure_file()?);
        }
    }
    let looked = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(CloudsError::NoFile(looked))
}

/// The `image_format` of cloud `name` in the first clouds.yaml found (or
/// its secure.yaml), without checking the rest of the entry: the
/// configuration reads it to know the format builds are uploaded in.
pub fn image_format(name: &str) -> Option<String> {
    let doc = candidates("OS_CLIENT_CONFIG_FILE", "clouds.yaml")
        .iter()
        .find_map(|p| read_yaml(p).ok().flatten())?;
    let secure = secure_file().ok().flatten();
    image_format_from(&doc, secure.as_ref(), name)
}

fn image_format_from(doc: &Value, secure: Option<&Value>, name: &str) -> Option<String> {
    let of = |d: &Value| d.get("clouds")?.get(name)?.get("image_format")?.as_str().map(str::to_owned);
    secure.and_then(of).or_else(|| of(doc))
}

/// Resolves cloud `name` from a parsed clouds.yaml (and secure.yaml).
pub fn from_documents(
    name: &str,
    path: &Path,
    doc: Value,
    secure: Option<Value>,
) -> Result<CloudConfig, CloudsError> {
    let invalid = |message: String| CloudsError::Invalid { path: path.into(), cloud: name.into(), message };
    let mut entry = doc
        .get("clouds")
        .and_then(|c| c.get(name))
        .cloned()
        .ok_or_else(|| CloudsError::NoCloud { path: path.into(), cloud: name.into() })?;
    if let Some(s) = secure.as_ref().and_then(|s| s.get("clouds")).and_then(|c| c.get(name)) {
        merge(&mut entry, s.clone());
    }
    if !entry.is_object() {
        return Err(invalid("is not a mapping".into()));
    }
    let auth: Auth = match entry.get("auth") {
        Some(a) => serde_json::from_value(a.clone()).map_err(|e| invalid(format!("auth: {e}")))?,
        None => return Err(invalid("has no 'auth' section".into())),
    };
    if auth.auth_url.is_empty() {
        return Err(invalid("auth.auth_url is missing".into()));
    }
    let auth_type = match entry.get("auth_type").and_then(Value::as_str).unwrap_or("password") {
        "password" | "v3password" => AuthType::Password,
        "v3applicationcredential" | "application_credential" => AuthType::ApplicationCredential,
        other => {
            return Err(invalid(format!(
                "auth_type '{other}' is not supported (password, v3applicationcredential)"
            )))
        }
    };
    match auth_type {
        AuthType::Password => {
            if auth.username.is_none() && auth.user_id.is_none() {
                return Err(invalid("auth.username (or user_id) is missing".into()));
            }
            if auth.password.is_none() {
                return Err(invalid("auth.password is missing".into()));
            }
        }
        AuthType::ApplicationCredential => {
            if auth.application_credential_secret.is_none() {
                return Err(invalid("auth.application_credential_secret is missing".into()));
            }
            if auth.application_credential_id.is_none() && auth.application_credential_name.is_none() {
                return Err(invalid("auth.application_credential_id (or _name) is missing".into()));
            }
        }
    }
    let str_of = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
    let region_name = str_of("region_name").or_else(|| {
        // `regions: [a, b]` or `[{name: a}]`: the first.
        entry.get("regions").and_then(Value::as_array).and_then(|r| r.first()).and_then(|r| {
            r.as_str().map(str::to_owned).or_else(|| r.get("name").and_then(Value::as_str).map(str::to_owned))
        })
    });
    let verify = match entry.get("verify") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !matches!(s.to_ascii_lowercase().as_str(), "false" | "no" | "0"),
        // openstacksdk's older spelling.
        _ => !entry.get("insecure").and_then(Value::as_bool).unwrap_or(false),
    };
    let mut endpoint_overrides = Vec::new();
    for service in ["compute", "image", "network", "volume", "block_storage"] {
        if let Some(url) = str_of(&format!("{service}_endpoint_override")) {
            endpoint_overrides.push((service.to_owned(), url));
        }
    }
    Ok(CloudConfig {
        name: name.to_owned(),
        path: path.to_owned(),
        auth,
        auth_type,
        region_name,
        interface: str_of("interface").unwrap_or_else(|| "public".into()),
        verify,
        cacert: str_of("cacert").map(PathBuf::from),
        image_format: str_of("image_format").unwrap_or_else(|| "qcow2".into()),
        private: entry.get("private").and_then(Value::as_bool).unwrap_or(false),
        endpoint_overrides,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn yaml(s: &str) -> Value {
        yaml_to_json(&yaml_rust2::YamlLoader::load_from_str(s).unwrap()[0])
    }

    #[test]
    fn password_cloud_with_secure_file_merged() {
        let doc = yaml(
            "clouds:\n  mycloud:\n    auth:\n      auth_url: https://id.example:5000/v3\n      username: zuul\n      project_name: ci\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    image_format: raw\n    verify: false\n",
        );
        let secure = yaml("clouds:\n  mycloud:\n    auth:\n      password: s3cret\n");
        let c = from_documents("mycloud", Path::new("c.yaml"), doc, Some(secure)).unwrap();
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.auth.password.as_deref(), Some("s3cret"));
        assert_eq!(c.auth.username.as_deref(), Some("zuul"));
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.image_format, "raw");
        assert_eq!(c.interface, "public");
        assert!(!c.verify);
        assert!(!c.private);
        let doc = yaml("clouds:\n  a:\n    insecure: true\n    private: true\n    auth:\n      auth_url: http://x\n      username: u\n      password: p\n");
        let c = from_documents("a", Path::new("c.yaml"), doc, None).unwrap();
        assert!(!c.verify && c.private);
        // Secrets stay out of debug output (and so out of logs).
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_file_cloud_and_key() {
        let doc = yaml("clouds:\n  a:\n    auth:\n      auth_url: http://x/v3\n      username: u\n");
        let e = from_documents("a", Path::new("/etc/openstack/clouds.yaml"), doc.clone(), None).unwrap_err();
        assert_eq!(e.to_string(), "/etc/openstack/clouds.yaml: cloud 'a': auth.password is missing");
        let e = from_documents("b", Path::new("c.yaml"), doc, None).unwrap_err();
        assert_eq!(e.to_string(), "c.yaml: no cloud named 'b' under 'clouds'");
        let doc = yaml("clouds:\n  a:\n    auth_type: token\n    auth:\n      auth_url: http://x\n");
        let e = from_documents("a", Path::new("c.yaml"), doc, None).unwrap_err();
        assert!(e.to_string().contains("auth_type 'token' is not supported"), "{e}");
    }

    #[test]
    fn files_are_searched_in_openstacksdks_order() {
        let c = candidates_from(Some("/x/c.yaml".into()), Some("/home/z".into()), "clouds.yaml");
        let want: Vec<PathBuf> = [
            "/x/c.yaml",
            "clouds.yaml",
            "clouds.yml",
            "clouds.json",
            "/home/z/.config/openstack/clouds.yaml",
            "/home/z/.config/openstack/clouds.yml",
            "/home/z/.config/openstack/clouds.json",
            "/etc/openstack/clouds.yaml",
            "/etc/openstack/clouds.yml",
            "/etc/openstack/clouds.json",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(c, want);
        assert_eq!(candidates_from(None, None, "secure.yaml").len(), 6);
        let e = load_file(Path::new("/nonexistent/clouds.yaml"), "a").unwrap_err();
        assert_eq!(e.to_string(), "no clouds.yaml found (looked at /nonexistent/clouds.yaml)");
    }

    #[test]
    fn the_image_format_is_read_without_the_credentials() {
        let doc = yaml("clouds:\n  ceph:\n    image_format: raw\n  plain:\n    auth: {}\n");
        assert_eq!(image_format_from(&doc, None, "ceph").as_deref(), Some("raw"));
        assert_eq!(image_format_from(&doc, None, "plain"), None);
        let secure = yaml("clouds:\n  plain:\n    image_format: vhd\n");
        assert_eq!(image_format_from(&doc, Some(&secure), "plain").as_deref(), Some("vhd"));
    }

    #[test]
    fn application_credentials_and_regions_list() {
        let doc = yaml(
            "clouds:\n  a:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://x\n      application_credential_id: abc\n      application_credential_secret: shh\n    regions:\n      - name: R2\n      - R3\n    compute_endpoint_override: http://127.0.0.1:1/v2.1\n",
        );
        let c = from_documents("a", Path::new("c.yaml"), doc, None).unwrap();
        assert_eq!(c.auth_type, AuthType::ApplicationCredential);
        assert_eq!(c.region_name.as_deref(), Some("R2"));
        assert_eq!(c.endpoint_overrides, vec![("compute".to_owned(), "http://127.0.0.1:1/v2.1".to_owned())]);
    }
}
