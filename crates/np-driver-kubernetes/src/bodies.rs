//! The Kubernetes objects a node is made of, as JSON bodies.
//!
//! They are upstream's objects, with two deliberate differences (QUIRKs not
//! copied):
//! * upstream puts `restartPolicy: Never` beside the pod's `spec`, where an
//!   API server ignores it; here it goes into the spec of the pods Nodepool
//!   builds (their one container sleeps for ever, so only a crashed
//!   container sees the difference: the attempt fails instead of the
//!   container restarting). A label's own `spec` is sent exactly as given,
//!   so its pods behave as upstream's do;
//! * CPU quantities are sent as strings (`"2"`), the canonical form, where
//!   upstream sends JSON integers.
//!
//! The roles are upstream's as they are, including grants that give nothing
//! (`jobs`, `deployments` and `replicasets` under the core API group, and
//! the restricted role's `pods/logs`): Zuul's jobs are written against
//! exactly these permissions.

use std::collections::BTreeMap;

use np_config::KubernetesLabel;
use np_core::json::python_str;
use serde_json::{json, Map, Value};

/// The service account (and its token secret) every node namespace gets.
pub const USER: &str = "zuul-worker";
/// The role of `type: namespace` nodes.
pub const ROLE: &str = "zuul";
/// The role of `type: pod` nodes.
pub const RESTRICTED_ROLE: &str = "zuul-restricted";
/// The role binding's name.
pub const ROLE_BINDING: &str = "zuul-role";
/// The label key naming the Nodepool label (besides the standard metadata).
pub const META_LABEL: &str = "nodepool_node_label";

/// As upstream, every label type other than `namespace` is a pod.
pub fn is_pod(label: &KubernetesLabel) -> bool {
    label.kind != "namespace"
}

/// The node's `connection_type`: `kubectl` for pods, `namespace` otherwise.
pub fn connection_type(label: &KubernetesLabel) -> &'static str {
    if is_pod(label) {
        "kubectl"
    } else {
        "namespace"
    }
}

/// The namespace of node `node_id` in `pool`: `<pool>-<node id>`.
pub fn namespace_name(pool: &str, node_id: &str) -> String {
    format!("{pool}-{node_id}")
}

/// The Kubernetes labels of a node's namespace and pod, by precedence: the
/// label's `labels`, its formatted `dynamic-labels` (a template that cannot
/// be formatted is skipped with a warning, as upstream), then the Nodepool
/// metadata and `nodepool_node_label`.
pub fn k8s_labels(
    label: &KubernetesLabel,
    request: Option<&Value>,
    metadata: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in label.labels.iter().flatten() {
        out.insert(k.clone(), python_str(v));
    }
    let empty = Value::Object(Map::new());
    let request = request.unwrap_or(&empty);
    for (k, v) in &label.dynamic_labels {
        match np_provider::template::format_template(&python_str(v), request) {
            Ok(value) => {
                out.insert(k.clone(), value);
            }
            Err(e) => tracing::warn!(label = %k, error = %e, "cannot format dynamic label; skipped"),
        }
    }
    for (k, v) in metadata {
        out.insert(k.clone(), v.clone());
    }
    out.insert(META_LABEL.into(), label.name.clone());
    out
}

/// `POST /api/v1/namespaces`.
pub fn namespace(name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// `POST …/serviceaccounts`.
pub fn service_account() -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": USER}})
}

/// `POST …/secrets`: a legacy service-account token, filled in by the
/// cluster's token controller (a token that does not expire while the node
/// lives, as upstream).
pub fn token_secret() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": USER,
            "annotations": {"kubernetes.io/service-account.name": USER},
        },
    })
}

const ALL_VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// `POST …/roles`: `zuul-restricted` for pod nodes, `zuul` for namespace
/// nodes.
pub fn role(restricted: bool) -> Value {
    let rules = if restricted {
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ALL_VERBS},
            {"apiGroups": [""], "resources": ["pods/logs"], "verbs": ALL_VERBS},
            {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ALL_VERBS},
        ])
    } else {
        json!([{
            "apiGroups": [""],
            "resources": ["pods", "pods/exec", "pods/log", "pods/portforward", "services",
                          "endpoints", "crontabs", "jobs", "deployments", "replicasets",
                          "configmaps", "secrets"],
            "verbs": ALL_VERBS,
        }])
    };
    json!({
        "kind": "Role",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": role_name(restricted)},
        "rules": rules,
    })
}

/// The role's name.
pub fn role_name(restricted: bool) -> &'static str {
    if restricted {
        RESTRICTED_ROLE
    } else {
        ROLE
    }
}

/// `POST …/rolebindings`: binds the role to the service account. The
/// OpenShift-style `userNames` is sent as upstream does (Kubernetes ignores
/// it).
pub fn role_binding(namespace: &str, restricted: bool) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLE_BINDING},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role_name(restricted),
        },
        "subjects": [{"kind": "ServiceAccount", "name": USER, "namespace": namespace}],
        "userNames": [format!("system:serviceaccount:{namespace}:{USER}")],
    })
}

/// `POST …/pods`: the label's pod, named after the label.
pub fn pod(label: &KubernetesLabel, labels: &BTreeMap<String, String>) -> Value {
    let annotations = label.annotations.clone().unwrap_or_default();
    let spec = match &label.spec {
        Some(custom) => Value::Object(custom.clone()),
        None => nodepool_pod_spec(label),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": label.name, "labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

/// The spec of a label without a custom `spec`: one container that sleeps.
fn nodepool_pod_spec(label: &KubernetesLabel) -> Value {
    let env: Vec<Value> = label.env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
    let mut container = json!({
        "name": label.name,
        "image": label.image,
        "imagePullPolicy": label.image_pull,
        "command": ["/bin/sh", "-c"],
        "args": ["while true; do sleep 30; done;"],
        "env": env,
    });
    let mut requests = quantities(label.cpu, label.memory, label.storage);
    let mut limits = quantities(label.cpu_limit, label.memory_limit, label.storage_limit);
    if let (Some(resource), Some(gpu)) = (&label.gpu_resource, label.gpu.filter(|g| *g != 0.0)) {
        requests.insert(resource.clone(), json!(format!("{gpu:.2}")));
        limits.insert(resource.clone(), json!(format!("{gpu:.2}")));
    }
    let mut resources = Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    if let Some(c) = container.as_object_mut() {
        if !resources.is_empty() {
            c.insert("resources".into(), Value::Object(resources));
        }
        if let Some(mounts) = label.volume_mounts.as_ref().filter(|m| !m.is_empty()) {
            c.insert("volumeMounts".into(), json!(mounts));
        }
        if let Some(privileged) = label.privileged {
            c.insert("securityContext".into(), json!({"privileged": privileged}));
        }
    }
    let mut spec = Map::new();
    spec.insert("containers".into(), json!([container]));
    if let Some(selector) = label.node_selector.as_ref().filter(|s| !s.is_empty()) {
        spec.insert("nodeSelector".into(), Value::Object(selector.clone()));
    }
    if let Some(scheduler) = &label.scheduler_name {
        spec.insert("schedulerName".into(), json!(scheduler));
    }
    if let Some(volumes) = label.volumes.as_ref().filter(|v| !v.is_empty()) {
        spec.insert("volumes".into(), json!(volumes));
    }
    spec.insert("restartPolicy".into(), json!("Never"));
    Value::Object(spec)
}

/// A container's requests or limits: CPU, memory (MiB) and ephemeral
/// storage (MB); unset and zero values are left out, as upstream.
fn quantities(cpu: Option<i64>, memory: Option<i64>, storage: Option<i64>) -> Map<String, Value> {
    let positive = |v: Option<i64>| v.filter(|v| *v != 0);
    let mut out = Map::new();
    if let Some(cpu) = positive(cpu) {
        out.insert("cpu".into(), json!(cpu.to_string()));
    }
    if let Some(memory) = positive(memory) {
        out.insert("memory".into(), json!(format!("{memory}Mi")));
    }
    if let Some(storage) = positive(storage) {
        out.insert("ephemeral-storage".into(), json!(format!("{storage}M")));
    }
    out
}

/// What a node of `label` counts against pool and tenant quotas, as upstream:
/// one instance, `cpu` cores, `memory` MiB of RAM, `storage` MB of
/// `ephemeral-storage`, the GPU resource and the `extra-resources`.
pub fn label_quota(label: &KubernetesLabel) -> np_core::Quota {
    let mut q = np_core::Quota::new(None, Some(1.0), None, 0.0);
    if let Some(cpu) = label.cpu.filter(|v| *v != 0) {
        q.set("cores", cpu as f64);
    }
    if let Some(memory) = label.memory.filter(|v| *v != 0) {
        q.set("ram", memory as f64);
    }
    if let Some(storage) = label.storage.filter(|v| *v != 0) {
        q.set("ephemeral-storage", storage as f64);
    }
    if let (Some(resource), Some(gpu)) = (&label.gpu_resource, label.gpu.filter(|g| *g != 0.0)) {
        q.set(resource, gpu);
    }
    for (k, v) in &label.extra_resources {
        q.set(k, *v as f64);
    }
    q
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels_of(yaml: &str) -> Vec<KubernetesLabel> {
        let config = np_config::load_str(yaml, "nodepool.yaml").unwrap();
        let np_config::ProviderDriver::Kubernetes(k) = &config.providers[0].driver else { panic!() };
        k.pools[0].labels.clone()
    }

    const CONFIG: &str = r#"
labels:
  - name: pod-default
  - name: pod-extra
  - name: kubernetes-namespace
  - name: pod-custom
providers:
  - name: kubespray
    driver: kubernetes
    context: admin-cluster.local
    pools:
      - name: main
        default-label-cpu: 2
        default-label-memory: 1024
        labels:
          - name: kubernetes-namespace
            type: namespace
          - name: pod-default
            type: pod
            image: docker.io/fedora:28
          - name: pod-extra
            type: pod
            image: docker.io/fedora:28
            python-path: /usr/bin/python3
            shell-type: csh
            cpu: 4
            memory: 2048
            storage: 100
            cpu-limit: 8
            gpu: 1
            gpu-resource: gpu-vendor.example/example-gpu
            labels:
              environment: qa
            dynamic-labels:
              tenant: "{request.tenant_name}"
              broken: "{request.secret}"
            privileged: true
            node-selector:
              storageType: ssd
            scheduler-name: myscheduler
            volumes:
              - name: my-csi-inline-vol
                csi:
                  driver: inline.storage.kubernetes.io
            volume-mounts:
              - name: my-csi-inline-vol
                mountPath: /data
            env:
              - name: FOO
                value: bar
            annotations:
              team: ci
            extra-resources:
              mygpu: 2
          - name: pod-custom
            type: pod
            spec:
              containers:
                - name: pod-custom
                  image: ubuntu:jammy
"#;

    fn meta() -> BTreeMap<String, String> {
        let r = np_provider::LaunchRequest::new("0000000001", "kubespray", "main", "pod-extra");
        r.metadata
    }

    #[test]
    fn the_default_pod_is_upstreams_with_the_restart_policy_in_its_spec() {
        let labels = labels_of(CONFIG);
        let l = &labels[1];
        let body = pod(l, &k8s_labels(l, None, &meta()));
        assert_eq!(
            body,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "pod-default",
                    "labels": {
                        "nodepool_node_id": "0000000001",
                        "nodepool_provider_name": "kubespray",
                        "nodepool_pool_name": "main",
                        "nodepool_node_label": "pod-default",
                    },
                    "annotations": {},
                },
                "spec": {
                    "containers": [{
                        "name": "pod-default",
                        "image": "docker.io/fedora:28",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sh", "-c"],
                        "args": ["while true; do sleep 30; done;"],
                        "env": [],
                        "resources": {
                            "requests": {"cpu": "2", "memory": "1024Mi"},
                            "limits": {"cpu": "2", "memory": "1024Mi"},
                        },
                    }],
                    "restartPolicy": "Never",
                },
            })
        );
    }

    #[test]
    fn every_pod_option_lands_where_upstream_puts_it() {
        let labels = labels_of(CONFIG);
        let l = &labels[2];
        let request = json!({"tenant_name": "tenant-1", "requestor": "zuul"});
        let body = pod(l, &k8s_labels(l, Some(&request), &meta()));
        let metadata = &body["metadata"];
        assert_eq!(metadata["labels"]["environment"], "qa");
        assert_eq!(metadata["labels"]["tenant"], "tenant-1");
        assert!(metadata["labels"].get("broken").is_none(), "an unformattable template is skipped");
        assert_eq!(metadata["labels"]["nodepool_node_label"], "pod-extra");
        assert_eq!(metadata["annotations"], json!({"team": "ci"}));
        let spec = &body["spec"];
        assert_eq!(spec["nodeSelector"], json!({"storageType": "ssd"}));
        assert_eq!(spec["schedulerName"], "myscheduler");
        assert_eq!(spec["volumes"][0]["name"], "my-csi-inline-vol");
        let c = &spec["containers"][0];
        assert_eq!(c["env"], json!([{"name": "FOO", "value": "bar"}]));
        assert_eq!(c["securityContext"], json!({"privileged": true}));
        assert_eq!(c["volumeMounts"], json!([{"name": "my-csi-inline-vol", "mountPath": "/data"}]));
        assert_eq!(
            c["resources"],
            json!({
                "requests": {"cpu": "4", "memory": "2048Mi", "ephemeral-storage": "100M",
                             "gpu-vendor.example/example-gpu": "1.00"},
                "limits": {"cpu": "8", "memory": "2048Mi", "ephemeral-storage": "100M",
                           "gpu-vendor.example/example-gpu": "1.00"},
            })
        );
        let q = label_quota(l);
        assert_eq!(
            q.to_resources(),
            json!({"cores": 4, "ephemeral-storage": 100, "gpu-vendor.example/example-gpu": 1,
                   "instances": 1, "mygpu": 2, "ram": 2048})
        );
    }

    #[test]
    fn a_custom_spec_is_used_as_given() {
        let labels = labels_of(CONFIG);
        let l = &labels[3];
        let body = pod(l, &k8s_labels(l, None, &meta()));
        assert_eq!(body["spec"], json!({"containers": [{"name": "pod-custom", "image": "ubuntu:jammy"}]}));
    }

    #[test]
    fn namespace_objects_are_upstreams() {
        assert_eq!(namespace_name("main", "0000000001"), "main-0000000001");
        let binding = role_binding("main-0000000001", true);
        assert_eq!(binding["roleRef"]["name"], "zuul-restricted");
        assert_eq!(binding["subjects"][0]["namespace"], "main-0000000001");
        assert_eq!(binding["userNames"], json!(["system:serviceaccount:main-0000000001:zuul-worker"]));
        assert_eq!(role(false)["rules"][0]["resources"].as_array().unwrap().len(), 12);
        assert_eq!(role(true)["rules"][0]["verbs"], json!(["get", "list"]));
        assert_eq!(token_secret()["type"], "kubernetes.io/service-account-token");
    }
}
