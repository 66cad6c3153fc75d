//! The `kubernetes` driver's provider schema.

use std::collections::BTreeMap;

use crate::defaults;
use crate::drivers::{common_pool, CommonPool, Refs};
use crate::error::{ErrorKind, KeyPath};
use crate::model::Dict;
use crate::read::{Ctx, MapReader};
use crate::yaml::Node;

/// Kubernetes provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesProvider {
    /// `context` in the kube config; `None` = in-cluster service account.
    pub context: Option<String>,
    /// `launch-retries`, default 3.
    pub launch_retries: u32,
    /// `max-cores`; pools inherit it.
    pub max_cores: Option<u64>,
    /// `max-ram`; pools inherit it.
    pub max_ram: Option<u64>,
    /// `max-resources`; pools inherit and overlay it.
    pub max_resources: BTreeMap<String, i64>,
    /// `pools`.
    pub pools: Vec<KubernetesPool>,
}

impl KubernetesProvider {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&KubernetesPool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A Kubernetes pool.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesPool {
    /// `name`.
    pub name: String,
    /// `max-servers`; `None` = unlimited.
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
    pub max_resources: BTreeMap<String, i64>,
    /// `default-label-cpu`.
    pub default_label_cpu: Option<i64>,
    /// `default-label-memory` (MiB).
    pub default_label_memory: Option<i64>,
    /// `default-label-storage` (MB).
    pub default_label_storage: Option<i64>,
    /// `default-label-cpu-limit`.
    pub default_label_cpu_limit: Option<i64>,
    /// `default-label-memory-limit`.
    pub default_label_memory_limit: Option<i64>,
    /// `default-label-storage-limit`.
    pub default_label_storage_limit: Option<i64>,
    /// `default-label-extra-resources` (upstream accepts but ignores it; we apply it).
    pub default_label_extra_resources: BTreeMap<String, i64>,
    /// `labels`.
    pub labels: Vec<KubernetesLabel>,
}

/// A Kubernetes pool label.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesLabel {
    /// `name`.
    pub name: String,
    /// `type`: `namespace` or `pod`.
    pub kind: String,
    /// `spec`: a user-supplied pod spec (exclusive with the pod keys below).
    pub spec: Option<Dict>,
    /// `image`.
    pub image: Option<String>,
    /// `image-pull`, default `IfNotPresent`.
    pub image_pull: String,
    /// `python-path`, default `auto`.
    pub python_path: String,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `cpu`, default the pool's `default-label-cpu`.
    pub cpu: Option<i64>,
    /// `memory`, default the pool's `default-label-memory`.
    pub memory: Option<i64>,
    /// `storage`, default the pool's `default-label-storage`.
    pub storage: Option<i64>,
    /// `cpu-limit`: label limit, pool default limit, then the request.
    pub cpu_limit: Option<i64>,
    /// `memory-limit`: same fallback.
    pub memory_limit: Option<i64>,
    /// `storage-limit`: same fallback.
    pub storage_limit: Option<i64>,
    /// `gpu`.
    pub gpu: Option<f64>,
    /// `gpu-resource`.
    pub gpu_resource: Option<String>,
    /// `env`: `(name, value)` pairs.
    pub env: Vec<(String, String)>,
    /// `node-selector`.
    pub node_selector: Option<Dict>,
    /// `privileged`.
    pub privileged: Option<bool>,
    /// `scheduler-name`.
    pub scheduler_name: Option<String>,
    /// `volumes`.
    pub volumes: Option<Vec<serde_json::Value>>,
    /// `volume-mounts`.
    pub volume_mounts: Option<Vec<serde_json::Value>>,
    /// `labels`: Kubernetes labels for the pod.
    pub labels: Option<Dict>,
    /// `dynamic-labels`.
    pub dynamic_labels: Dict,
    /// `annotations`.
    pub annotations: Option<Dict>,
    /// `extra-resources`, on top of the pool's `default-label-extra-resources`.
    pub extra_resources: BTreeMap<String, i64>,
}

/// Keys only allowed in a label without `spec`.
const POD_KEYS: &[&str] = &[
    "image",
    "image-pull",
    "python-path",
    "shell-type",
    "cpu",
    "memory",
    "storage",
    "cpu-limit",
    "memory-limit",
    "storage-limit",
    "gpu",
    "gpu-resource",
    "env",
    "node-selector",
    "privileged",
    "scheduler-name",
    "volumes",
    "volume-mounts",
    "extra-resources",
];

/// Reads the Kubernetes-specific provider keys.
pub(crate) fn parse(
    cx: &mut Ctx,
    m: &mut MapReader<'_>,
    provider: &str,
    refs: &mut Refs,
) -> Option<KubernetesProvider> {
    if !m.has("pools") {
        m.missing(cx, "pools");
    }
    let context = m.str(cx, "context");
    let launch_retries = crate::drivers::u32_of(cx, m, "launch-retries").unwrap_or(defaults::LAUNCH_RETRIES);
    m.refuse(
        cx,
        "max-servers",
        "Python Nodepool 11 accepts it on a Kubernetes provider but never applies it; set max-servers on each pool",
    );
    let max_cores = m.uint(cx, "max-cores");
    let max_ram = m.uint(cx, "max-ram");
    let max_resources = m.int_map(cx, "max-resources").unwrap_or_default();
    let mut pools = Vec::new();
    for (node, path) in m.list(cx, "pools").unwrap_or_default() {
        if let Some(p) = parse_pool(cx, node, &path, provider, (max_cores, max_ram, &max_resources), refs) {
            pools.push(p);
        }
    }
    Some(KubernetesProvider { context, launch_retries, max_cores, max_ram, max_resources, pools })
}

type Inherit<'a> = (Option<u64>, Option<u64>, &'a BTreeMap<String, i64>);

fn parse_pool(
    cx: &mut Ctx,
    node: &Node,
    path: &KeyPath,
    provider: &str,
    inherit: Inherit<'_>,
    refs: &mut Refs,
) -> Option<KubernetesPool> {
    let mut p = MapReader::new(cx, node, path.clone())?;
    if !p.has("labels") {
        p.missing(cx, "labels");
    }
    let CommonPool { name, max_servers, node_attributes, priority } = common_pool(cx, &mut p, provider, refs);
    let max_cores = p.uint(cx, "max-cores").or(inherit.0);
    let max_ram = p.uint(cx, "max-ram").or(inherit.1);
    let mut max_resources = inherit.2.clone();
    max_resources.extend(p.int_map(cx, "max-resources").unwrap_or_default());
    let default_label_cpu = p.int(cx, "default-label-cpu");
    let default_label_memory = p.int(cx, "default-label-memory");
    let default_label_storage = p.int(cx, "default-label-storage");
    let default_label_cpu_limit = p.int(cx, "default-label-cpu-limit");
    let default_label_memory_limit = p.int(cx, "default-label-memory-limit");
    let default_label_storage_limit = p.int(cx, "default-label-storage-limit");
    let default_label_extra_resources = p.int_map(cx, "default-label-extra-resources").unwrap_or_default();
    let pool_name = name.clone().unwrap_or_default();

    let mut labels = Vec::new();
    for (lnode, lpath) in p.list(cx, "labels").unwrap_or_default() {
        let Some(mut l) = MapReader::new(cx, lnode, lpath.clone()) else { continue };
        let lname = l.req_str(cx, "name");
        let kind = l.req_str(cx, "type");
        if l.has("spec") {
            for key in POD_KEYS {
                if l.has(key) {
                    cx.error(l.key_loc(key), &lpath, ErrorKind::Exclusive("spec".into(), (*key).into()));
                }
            }
        }
        let spec = l.dict(cx, "spec");
        let image = l.str(cx, "image");
        let image_pull = l.str(cx, "image-pull").unwrap_or_else(|| defaults::K8S_IMAGE_PULL.into());
        let python_path = l.str(cx, "python-path").unwrap_or_else(|| defaults::PYTHON_PATH.into());
        let shell_type = l.str(cx, "shell-type");
        let cpu = l.int(cx, "cpu").or(default_label_cpu);
        let memory = l.int(cx, "memory").or(default_label_memory);
        let storage = l.int(cx, "storage").or(default_label_storage);
        let cpu_limit = l.int(cx, "cpu-limit").or(default_label_cpu_limit).or(cpu);
        let memory_limit = l.int(cx, "memory-limit").or(default_label_memory_limit).or(memory);
        let storage_limit = l.int(cx, "storage-limit").or(default_label_storage_limit).or(storage);
        let gpu = l.number(cx, "gpu");
        let gpu_resource = l.str(cx, "gpu-resource");
        let mut env = Vec::new();
        for (enode, epath) in l.list(cx, "env").unwrap_or_default() {
            let Some(mut e) = MapReader::new(cx, enode, epath) else { continue };
            let n = e.req_str(cx, "name");
            let v = e.req_str(cx, "value");
            e.finish(cx);
            if let (Some(n), Some(v)) = (n, v) {
                env.push((n, v));
            }
        }
        let node_selector = l.dict(cx, "node-selector");
        let privileged = l.bool(cx, "privileged");
        let scheduler_name = l.str(cx, "scheduler-name");
        let volumes = l.any_list(cx, "volumes");
        let volume_mounts = l.any_list(cx, "volume-mounts");
        let klabels = l.dict(cx, "labels");
        let dynamic_labels = l.dict(cx, "dynamic-labels").unwrap_or_default();
        let annotations = l.dict(cx, "annotations");
        let mut extra_resources = default_label_extra_resources.clone();
        extra_resources.extend(l.int_map(cx, "extra-resources").unwrap_or_default());
        let name_loc = l.key_loc("name").unwrap_or(lnode.loc);
        l.finish(cx);
        let Some(lname) = lname else { continue };
        refs.pool_label(cx, provider, &pool_name, &lname, name_loc, &lpath);
        let Some(kind) = kind else { continue };
        labels.push(KubernetesLabel {
            name: lname,
            kind,
            spec,
            image,
            image_pull,
            python_path,
            shell_type,
            cpu,
            memory,
            storage,
            cpu_limit,
            memory_limit,
            storage_limit,
            gpu,
            gpu_resource,
            env,
            node_selector,
            privileged,
            scheduler_name,
            volumes,
            volume_mounts,
            labels: klabels,
            dynamic_labels,
            annotations,
            extra_resources,
        });
    }
    p.finish(cx);
    Some(KubernetesPool {
        name: name?,
        max_servers,
        node_attributes,
        priority,
        max_cores,
        max_ram,
        max_resources,
        default_label_cpu,
        default_label_memory,
        default_label_storage,
        default_label_cpu_limit,
        default_label_memory_limit,
        default_label_storage_limit,
        default_label_extra_resources,
        labels,
    })
}
