//! Provider parsing: the keys common to every driver, dispatch on `driver`, and the
//! cross-references (labels, diskimages) drivers record for the semantic checks.

pub mod aws;
pub mod kubernetes;
pub mod openstack;
pub mod static_;

use std::collections::HashMap;

use crate::defaults;
use crate::error::{ErrorKind, KeyPath, Location};
use crate::model::{Dict, Provider, ProviderDriver};
use crate::read::{Ctx, MapReader};
use crate::yaml::{Node, Value};

/// Upstream drivers this version recognises but does not implement.
pub const UNSUPPORTED_DRIVERS: &[&str] =
    &["gce", "azure", "ibmvpc", "openshift", "openshiftpods", "metastatic", "test", "example"];

/// A pool label's use of a top-level label.
#[derive(Debug, Clone)]
pub(crate) struct LabelUse {
    pub(crate) provider: String,
    pub(crate) label: String,
    pub(crate) loc: Option<Location>,
    pub(crate) path: KeyPath,
}

/// A cloud label's `diskimage:` reference.
#[derive(Debug, Clone)]
pub(crate) struct LabelDiskImage {
    pub(crate) provider: String,
    pub(crate) label: String,
    pub(crate) diskimage: String,
    pub(crate) loc: Option<Location>,
    pub(crate) path: KeyPath,
}

/// A provider `diskimages` entry's reference to a top-level diskimage.
#[derive(Debug, Clone)]
pub(crate) struct ProviderDiskImageRef {
    pub(crate) provider: String,
    pub(crate) diskimage: String,
    pub(crate) loc: Option<Location>,
    pub(crate) path: KeyPath,
}

/// Cross-references collected while reading providers, checked once everything is read.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    pub(crate) label_uses: Vec<LabelUse>,
    pub(crate) label_diskimages: Vec<LabelDiskImage>,
    pub(crate) provider_diskimages: Vec<ProviderDiskImageRef>,
    seen: HashMap<(String, String), Location>,
}

impl Refs {
    /// Reports `name` when it was already seen in `scope`.
    pub(crate) fn unique(
        &mut self,
        cx: &mut Ctx,
        what: &'static str,
        scope: &str,
        name: &str,
        loc: Location,
        path: &KeyPath,
    ) {
        let key = (scope.to_string(), name.to_string());
        if let Some(first) = self.seen.get(&key) {
            cx.error(
                Some(loc),
                &path.key("name"),
                ErrorKind::Duplicate { what, name: name.to_string(), first: Some(*first) },
            );
        } else {
            self.seen.insert(key, loc);
        }
    }

    /// A label defined in a pool: unique in the pool and must exist at top level.
    pub(crate) fn pool_label(
        &mut self,
        cx: &mut Ctx,
        provider: &str,
        pool: &str,
        label: &str,
        loc: Location,
        path: &KeyPath,
    ) {
        self.unique(cx, "label", &format!("providers.{provider}.pools.{pool}.labels"), label, loc, path);
        self.label_use(provider, label, Some(loc), path.key("name"));
    }

    /// A use of a top-level label (which must exist).
    pub(crate) fn label_use(&mut self, provider: &str, label: &str, loc: Option<Location>, path: KeyPath) {
        self.label_uses.push(LabelUse {
            provider: provider.to_string(),
            label: label.to_string(),
            loc,
            path,
        });
    }

    pub(crate) fn label_diskimage(
        &mut self,
        provider: &str,
        _pool: &str,
        label: &str,
        diskimage: &str,
        loc: Option<Location>,
        path: KeyPath,
    ) {
        self.label_diskimages.push(LabelDiskImage {
            provider: provider.to_string(),
            label: label.to_string(),
            diskimage: diskimage.to_string(),
            loc,
            path,
        });
    }

    pub(crate) fn provider_diskimage(
        &mut self,
        provider: &str,
        name: &str,
        loc: Option<Location>,
        path: KeyPath,
    ) {
        self.provider_diskimages.push(ProviderDiskImageRef {
            provider: provider.to_string(),
            diskimage: name.to_string(),
            loc,
            path,
        });
    }
}

/// The pool keys every driver accepts.
pub(crate) struct CommonPool {
    pub(crate) name: Option<String>,
    pub(crate) max_servers: Option<u64>,
    pub(crate) node_attributes: Option<Dict>,
    pub(crate) priority: Option<i64>,
}

/// Reads `name`, `max-servers`, `node-attributes` and `priority` of a pool.
pub(crate) fn common_pool(
    cx: &mut Ctx,
    p: &mut MapReader<'_>,
    provider: &str,
    refs: &mut Refs,
) -> CommonPool {
    let name = p.req_str(cx, "name");
    if let Some(n) = &name {
        let loc = p.key_loc("name").unwrap_or(p.loc);
        let path = p.path.clone();
        refs.unique(cx, "pool", &format!("providers.{provider}.pools"), n, loc, &path);
    }
    CommonPool {
        name,
        max_servers: p.uint(cx, "max-servers"),
        node_attributes: p.dict(cx, "node-attributes"),
        priority: p.int(cx, "priority"),
    }
}

/// A non-negative integer that fits in `u32`.
pub(crate) fn u32_of(cx: &mut Ctx, m: &mut MapReader<'_>, key: &'static str) -> Option<u32> {
    let v = m.uint(cx, key)?;
    match u32::try_from(v) {
        Ok(v) => Some(v),
        Err(_) => {
            cx.error(m.key_loc(key), &m.path.key(key), ErrorKind::InvalidValue(format!("{v} is too large")));
            None
        }
    }
}

/// A number, or a string holding one (upstream's `Coerce(float)`).
pub(crate) fn coerce_float(cx: &mut Ctx, m: &mut MapReader<'_>, key: &'static str) -> Option<f64> {
    let node = m.node(key)?;
    let v = match &node.value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    if v.is_none() {
        cx.wrong_type(node, &m.path.key(key), "a number");
    }
    v
}

/// Reads one `providers` entry. Returns `None` when it has errors.
pub(crate) fn parse_provider(cx: &mut Ctx, node: &Node, path: &KeyPath, refs: &mut Refs) -> Option<Provider> {
    let mut m = MapReader::new(cx, node, path.clone())?;
    let name = m.req_str(cx, "name");
    let driver_written = m.str(cx, "driver");
    let driver_loc = m.key_loc("driver");
    let max_concurrency = m.int(cx, "max-concurrency");
    let priority = m.int(cx, "priority");
    let name_loc = m.key_loc("name").unwrap_or(node.loc);
    if let Some(n) = &name {
        refs.unique(cx, "provider", "providers", n, name_loc, path);
    }
    let max_concurrency = match max_concurrency {
        None | Some(defaults::MAX_CONCURRENCY) => None,
        Some(v) => match u32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                cx.error(
                    m.key_loc("max-concurrency"),
                    &path.key("max-concurrency"),
                    ErrorKind::InvalidValue(format!(
                        "expected -1 (unlimited), 0 (handle no requests) or a positive integer, found {v}"
                    )),
                );
                None
            }
        },
    };
    // Upstream forces the fake driver on providers whose name starts with "fake".
    let pname = name.clone().unwrap_or_default();
    let driver = if pname.starts_with("fake") {
        "fake".to_string()
    } else {
        driver_written.clone().unwrap_or_else(|| "openstack".to_string())
    };
    if m.has("driver") && driver_written.is_none() {
        // Wrong type, already reported.
        m.take_unused();
        return None;
    }
    cx.schema = match driver.as_str() {
        "openstack" | "fake" => Some("openstack"),
        "aws" => Some("aws"),
        "static" => Some("static"),
        "kubernetes" => Some("kubernetes"),
        _ => None,
    };
    let driver = match driver.as_str() {
        "openstack" => openstack::parse(cx, &mut m, &pname, refs).map(ProviderDriver::OpenStack),
        "fake" => openstack::parse(cx, &mut m, &pname, refs).map(ProviderDriver::Fake),
        "aws" => aws::parse(cx, &mut m, &pname, refs).map(ProviderDriver::Aws),
        "static" => static_::parse(cx, &mut m, &pname, refs).map(ProviderDriver::Static),
        "kubernetes" => kubernetes::parse(cx, &mut m, &pname, refs).map(ProviderDriver::Kubernetes),
        other => {
            let kind = if UNSUPPORTED_DRIVERS.contains(&other) {
                ErrorKind::UnsupportedDriver(other.to_string())
            } else {
                ErrorKind::UnknownDriver(other.to_string())
            };
            cx.error(driver_loc.or(Some(node.loc)), &path.key("driver"), kind);
            // Do not report the unknown driver's keys one by one.
            m.take_unused();
            return None;
        }
    };
    m.finish(cx);
    cx.schema = None;
    Some(Provider { name: name?, max_concurrency, priority, driver: driver? })
}
