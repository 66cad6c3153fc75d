//! The Kubernetes driver against the fake API server (tests/support): the
//! exact objects it creates, the node credentials, deletes, error classes,
//! the leak listing and kubeconfig contexts.
#![allow(clippy::unwrap_used)]

#[path = "support/fake_kube.rs"]
mod fake_kube;

use std::time::Duration;

use fake_kube::{FakeKube, Knobs, FAKE_CA};
use np_driver_kubernetes::machine::Waits;
use np_driver_kubernetes::{bodies, KubernetesProvider};
use np_provider::{Instance, LaunchRequest, Provider, ProviderError, Step};
use serde_json::{json, Value};

const CONFIG: &str = r#"
labels:
  - name: kubernetes-namespace
  - name: pod-fedora
providers:
  - name: kubespray
    driver: kubernetes
    context: admin-cluster.local
    pools:
      - name: main
        labels:
          - name: kubernetes-namespace
            type: namespace
          - name: pod-fedora
            type: pod
            image: docker.io/fedora:28
            cpu: 2
            memory: 512
            dynamic-labels:
              tenant: "{request.tenant_name}"
      - name: big
        labels:
          - name: pod-fedora
            type: pod
            image: docker.io/fedora:28
            cpu: 8
            memory: 4096
"#;

fn provider_config() -> np_config::KubernetesProvider {
    let config = np_config::load_str(CONFIG, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::Kubernetes(k) = &config.providers[0].driver else { panic!() };
    k.clone()
}

struct Env {
    kube: FakeKube,
    provider: KubernetesProvider,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let d = std::env::temp_dir().join(format!("np-k8s-{}-{}", std::process::id(), rand()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    fn rand() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Env {
    async fn new() -> Env {
        let kube = FakeKube::start().await;
        let dir = tempdir::Dir::new();
        let kubeconfig = kube.kubeconfig(&dir.0, "admin-cluster.local");
        let provider =
            KubernetesProvider::new("kubespray", &provider_config(), Some(&kubeconfig)).await.unwrap();
        Env { kube, provider, _dir: dir }
    }

    fn request(&self, node_id: &str, label: &str) -> LaunchRequest {
        let mut r = LaunchRequest::new(node_id, "kubespray", "main", label);
        r.request_attributes =
            Some(json!({"id": "200-0000000001", "tenant_name": "tenant-a", "requestor": "zuul"}));
        r
    }
}

/// Steps a create to the end; returns the instance or the error, and the
/// external id seen.
async fn run_create(
    p: &KubernetesProvider,
    r: LaunchRequest,
) -> (Result<Instance, ProviderError>, Option<Value>) {
    let mut m = p.create(r);
    for _ in 0..1000 {
        match m.step().await {
            Ok(Step::Done(i)) => return (Ok(i), m.external_id()),
            Ok(Step::Pending(d)) => tokio::time::sleep(d).await,
            Err(e) => return (Err(e), m.external_id()),
        }
    }
    panic!("create did not finish");
}

/// The create failed with a fatal error that says `text`.
fn assert_fatal(result: Result<Instance, ProviderError>, text: &str) {
    match result {
        Err(ProviderError::Fatal(m)) => assert!(m.contains(text), "{m}"),
        other => panic!("{other:?}"),
    }
}

async fn run_delete(p: &KubernetesProvider, id: &Value) -> Result<(), ProviderError> {
    let mut m = p.delete(id);
    for _ in 0..1000 {
        match m.step().await? {
            Step::Done(()) => return Ok(()),
            Step::Pending(d) => tokio::time::sleep(d).await,
        }
    }
    panic!("delete did not finish");
}

#[tokio::test]
async fn a_namespace_node_gets_its_account_token_role_and_credentials() {
    let e = Env::new().await;
    let (instance, external_id) =
        run_create(&e.provider, e.request("0000000001", "kubernetes-namespace")).await;
    let instance = instance.unwrap();
    assert_eq!(external_id, Some(json!("main-0000000001")));
    assert_eq!(instance.external_id, json!("main-0000000001"));
    assert_eq!(instance.connection_type.as_deref(), Some("namespace"));
    assert_eq!(instance.interface_ip, None);
    assert_eq!(instance.cloud.as_deref(), Some("admin-cluster.local"));
    // upstream's connection_port object, in upstream's key order.
    let port = instance.connection_port.unwrap();
    let ca = fake_kube::b64(FAKE_CA);
    assert_eq!(
        port.to_string(),
        json!({
            "name": "main-0000000001",
            "namespace": "main-0000000001",
            "host": e.kube.url(),
            "skiptls": false,
            "token": "token-main-0000000001",
            "user": "zuul-worker",
            "ca_crt": ca,
        })
        .to_string()
    );
    // What the cluster got, in order.
    let posts: Vec<String> =
        e.kube.requests().into_iter().filter(|r| r.method == "POST").map(|r| r.path).collect();
    assert_eq!(
        posts,
        [
            "/api/v1/namespaces",
            "/api/v1/namespaces/main-0000000001/serviceaccounts",
            "/api/v1/namespaces/main-0000000001/secrets",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/main-0000000001/roles",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/main-0000000001/rolebindings",
        ]
    );
    let ns = &e.kube.created("namespaces")[0];
    assert_eq!(
        ns["metadata"]["labels"],
        json!({
            "nodepool_node_id": "0000000001",
            "nodepool_node_label": "kubernetes-namespace",
            "nodepool_pool_name": "main",
            "nodepool_provider_name": "kubespray",
        })
    );
    assert_eq!(e.kube.created("roles")[0], bodies::role(false));
    assert_eq!(e.kube.created("rolebindings")[0], bodies::role_binding("main-0000000001", false));
    assert_eq!(e.kube.created("secrets")[0], bodies::token_secret());
    assert!(e.kube.created("pods").is_empty());
}

#[tokio::test]
async fn a_pod_node_runs_its_pod_and_reports_where() {
    let e = Env::new().await;
    let (instance, _) = run_create(&e.provider, e.request("0000000002", "pod-fedora")).await;
    let instance = instance.unwrap();
    assert_eq!(instance.connection_type.as_deref(), Some("kubectl"));
    assert_eq!(instance.interface_ip.as_deref(), Some("pod-fedora"));
    assert_eq!(instance.host_id.as_deref(), Some("fake-node-1"));
    let port = instance.connection_port.unwrap();
    assert_eq!(port["pod"], "pod-fedora");
    assert_eq!(port["namespace"], "main-0000000002");
    // The restricted role, and the pod exactly as the driver builds it, with
    // the request's tenant as a dynamic label.
    assert_eq!(e.kube.created("roles")[0]["metadata"]["name"], "zuul-restricted");
    let pod = &e.kube.created("pods")[0];
    assert_eq!(pod["metadata"]["labels"]["tenant"], "tenant-a");
    assert_eq!(pod["metadata"]["labels"]["nodepool_node_label"], "pod-fedora");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"],
        json!({"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}})
    );
    // Pending twice, then Running: three reads, no more.
    let pod_reads = e
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/pods/pod-fedora"))
        .count();
    assert_eq!(pod_reads, 3);
    assert_eq!(
        e.provider.quota_for_label("main", "pod-fedora").to_resources(),
        json!({"cores": 2, "instances": 1, "ram": 512})
    );
}

#[tokio::test]
async fn deleting_waits_until_the_namespace_and_its_contents_are_gone() {
    let e = Env::new().await;
    e.kube.set_knobs(Knobs { terminating_reads: 3, ..Knobs::default() });
    let (instance, _) = run_create(&e.provider, e.request("0000000003", "pod-fedora")).await;
    let id = instance.unwrap().external_id;
    assert!(!e.kube.objects_in("main-0000000003").is_empty());
    run_delete(&e.provider, &id).await.unwrap();
    assert!(e.kube.namespaces().is_empty());
    assert!(e.kube.objects_in("main-0000000003").is_empty());
    let delete = e.kube.requests().into_iter().find(|r| r.method == "DELETE").unwrap();
    assert_eq!(delete.path, "/api/v1/namespaces/main-0000000003");
    assert_eq!(delete.body["propagationPolicy"], "Background");
    // Read while terminating, until it is gone.
    let reads = e.kube.requests().iter().filter(|r| r.method == "GET" && r.path == delete.path).count();
    assert_eq!(reads, 4);
    // Deleting what is already gone succeeds.
    run_delete(&e.provider, &id).await.unwrap();
}

#[tokio::test]
async fn api_errors_are_classified() {
    let e = Env::new().await;
    e.kube.fail_next(
        "pods",
        403,
        "Forbidden",
        "pods \"pod-fedora\" is forbidden: exceeded quota: compute-resources, requested: cpu=2, used: cpu=8, limited: cpu=8",
    );
    let (result, external_id) = run_create(&e.provider, e.request("0000000004", "pod-fedora")).await;
    // Not the launcher's quota class: it would relaunch for ever.
    assert!(matches!(result, Err(ProviderError::Fatal(_))), "{result:?}");
    // The namespace was made: the launcher knows it and deletes it.
    assert_eq!(external_id, Some(json!("main-0000000004")));

    // 503 (and 429, 504) the step itself retries with backoff.
    e.kube.fail_next("namespaces", 503, "ServiceUnavailable", "the server is shutting down");
    let before = e.kube.created("namespaces").len();
    let (result, _) = run_create(&e.provider, e.request("0000000005", "kubernetes-namespace")).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(e.kube.created("namespaces").len() - before, 2, "one retry");
    e.kube.fail_next("namespaces", 500, "InternalError", "etcdserver: request timed out");
    let (result, _) = run_create(&e.provider, e.request("0000000008", "kubernetes-namespace")).await;
    assert!(matches!(result, Err(ProviderError::Transient(_))), "{result:?}");

    e.kube.fail_next(
        "roles",
        403,
        "Forbidden",
        "roles.rbac.authorization.k8s.io is forbidden: User cannot create",
    );
    let (result, _) = run_create(&e.provider, e.request("0000000006", "kubernetes-namespace")).await;
    assert!(matches!(result, Err(ProviderError::Fatal(_))), "{result:?}");

    // A refusal made nothing: no namespace is claimed.
    e.kube.fail_next("namespaces", 403, "Forbidden", "namespaces is forbidden: User cannot create");
    let (result, external_id) =
        run_create(&e.provider, e.request("0000000009", "kubernetes-namespace")).await;
    assert!(matches!(result, Err(ProviderError::Fatal(_))), "{result:?}");
    assert_eq!(external_id, None);
}

#[tokio::test]
async fn a_namespace_of_that_name_is_adopted_only_if_it_is_this_nodes() {
    let e = Env::new().await;
    let labels = |provider: &str, id: &str| json!({"nodepool_provider_name": provider, "nodepool_pool_name": "main", "nodepool_node_id": id});
    // Another installation's node with the same id: never claimed (the
    // launcher would delete it).
    e.kube.plant_namespace("main-0000000007", labels("elsewhere", "0000000007"));
    let (result, external_id) =
        run_create(&e.provider, e.request("0000000007", "kubernetes-namespace")).await;
    assert!(matches!(result, Err(ProviderError::Transient(_))), "{result:?}");
    assert_eq!(external_id, None);
    // This node's, from a POST whose answer was lost: adopted.
    e.kube.plant_namespace("main-0000000008", labels("kubespray", "0000000008"));
    let (result, external_id) =
        run_create(&e.provider, e.request("0000000008", "kubernetes-namespace")).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(external_id, Some(json!("main-0000000008")));
    // This node's but being deleted (an earlier attempt's): not claimed,
    // the attempt fails and is retried once it is gone.
    e.kube.set_knobs(Knobs { terminating_reads: 100, ..Knobs::default() });
    e.kube.plant_namespace("main-0000000009", labels("kubespray", "0000000009"));
    e.kube.terminate("main-0000000009");
    let (result, external_id) =
        run_create(&e.provider, e.request("0000000009", "kubernetes-namespace")).await;
    assert!(matches!(result, Err(ProviderError::Transient(_))), "{result:?}");
    assert_eq!(external_id, None);
}

#[tokio::test]
async fn busy_answers_are_retried_a_bounded_number_of_times() {
    let e = Env::new().await;
    e.kube.fail_next_call("GET", "secrets", 503, "ServiceUnavailable", "try again");
    e.kube.fail_next_call("GET", "pods", 429, "TooManyRequests", "slow down");
    let (result, _) = run_create(&e.provider, e.request("0000000020", "pod-fedora")).await;
    assert!(result.is_ok(), "{result:?}");
    for _ in 0..=np_driver_kubernetes::machine::BUSY_RETRIES {
        e.kube.fail_next_call("GET", "pods", 429, "TooManyRequests", "slow down");
    }
    let (result, external_id) = run_create(&e.provider, e.request("0000000021", "pod-fedora")).await;
    assert!(matches!(result, Err(ProviderError::Transient(_))), "{result:?}");
    assert_eq!(external_id, Some(json!("main-0000000021")));
}

#[tokio::test]
async fn a_second_delete_waits_for_the_first() {
    let e = Env::new().await;
    e.kube.set_knobs(Knobs { terminating_reads: 3, ..Knobs::default() });
    let (instance, _) = run_create(&e.provider, e.request("0000000030", "kubernetes-namespace")).await;
    let id = instance.unwrap().external_id;
    e.kube.terminate("main-0000000030");
    // The API server answers 409 to the second DELETE; it is not an error.
    run_delete(&e.provider, &id).await.unwrap();
    assert!(e.kube.namespaces().is_empty());
    // A failing DELETE is reported.
    let (instance, _) = run_create(&e.provider, e.request("0000000031", "kubernetes-namespace")).await;
    let id = instance.unwrap().external_id;
    e.kube.fail_next_call("DELETE", "namespaces", 403, "Forbidden", "namespaces is forbidden");
    assert!(matches!(run_delete(&e.provider, &id).await, Err(ProviderError::Fatal(_))));
    run_delete(&e.provider, &id).await.unwrap();
}

#[tokio::test]
async fn without_tls_verification_the_node_gets_no_ca_and_each_pool_its_own_sizes() {
    let e = Env::new().await;
    let path = e.kube.kubeconfig_with(&e._dir.0, "admin-cluster.local", true);
    let p = KubernetesProvider::new("kubespray", &provider_config(), Some(&path)).await.unwrap();
    assert!(p.access().skiptls);
    let (instance, _) = run_create(&p, e.request("0000000040", "kubernetes-namespace")).await;
    let port = instance.unwrap().connection_port.unwrap();
    assert_eq!(port["skiptls"], true);
    assert!(port.get("ca_crt").is_none(), "{port}");
    assert_eq!(
        p.quota_for_label("main", "pod-fedora").to_resources(),
        json!({"cores": 2, "instances": 1, "ram": 512})
    );
    assert_eq!(
        p.quota_for_label("big", "pod-fedora").to_resources(),
        json!({"cores": 8, "instances": 1, "ram": 4096})
    );
}

#[tokio::test]
async fn a_pod_that_fails_or_never_runs_fails_the_attempt() {
    let e = Env::new().await;
    let provider = KubernetesProvider::new(
        "kubespray",
        &provider_config(),
        Some(&e.kube.kubeconfig(&e._dir.0, "admin-cluster.local")),
    )
    .await
    .unwrap()
    .with_waits(Waits { token: Duration::from_millis(500), pod: Duration::from_millis(500) });
    e.kube.set_knobs(Knobs { pods_fail: true, ..Knobs::default() });
    let (result, _) = run_create(&provider, e.request("0000000010", "pod-fedora")).await;
    assert_fatal(result, "pod failed to initialize (Failed)");
    e.kube.set_knobs(Knobs { pods_stuck: true, ..Knobs::default() });
    let started = std::time::Instant::now();
    let (result, _) = run_create(&provider, e.request("0000000011", "pod-fedora")).await;
    assert_fatal(result, "(Pending)");
    assert!(started.elapsed() < Duration::from_secs(5));
    // No token controller: the token wait runs out.
    e.kube.set_knobs(Knobs { token_reads: u32::MAX, ..Knobs::default() });
    let (result, _) = run_create(&provider, e.request("0000000012", "kubernetes-namespace")).await;
    assert_fatal(result, "couldn't find token");
}

#[tokio::test]
async fn only_node_namespaces_of_our_pools_are_listed() {
    let e = Env::new().await;
    let ours = json!({"nodepool_provider_name": "kubespray", "nodepool_node_id": "0000000099",
                      "nodepool_pool_name": "main"});
    e.kube.plant_namespace("main-0000000099", ours.clone());
    e.kube.plant_namespace("main-scratch", ours.clone());
    e.kube.plant_namespace("other-0000000001", ours);
    e.kube.plant_namespace("kube-system", json!({}));
    let listed = e.provider.list_instances().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].external_id, json!("main-0000000099"));
    assert_eq!(listed[0].metadata["nodepool_node_id"], "0000000099");
    // Counted as upstream's `nodepool.provider.<p>.leaked.nodes` once leaked.
    assert_eq!(listed[0].node_properties, Some(json!({"resource": "node"})));
    assert!(e.provider.quota_limits().await.unwrap().is_unlimited());
}

#[tokio::test]
async fn the_kubeconfig_context_decides_the_cluster() {
    let kube = FakeKube::start().await;
    let dir = tempdir::Dir::new();
    let path = kube.kubeconfig(&dir.0, "admin-cluster.local");
    let p = KubernetesProvider::new("kubespray", &provider_config(), Some(&path)).await.unwrap();
    assert_eq!(p.access().host, kube.url());
    assert!(!p.access().skiptls);
    let mut other = provider_config();
    other.context = Some("no-such-context".into());
    let err = KubernetesProvider::new("kubespray", &other, Some(&path)).await.err().unwrap().to_string();
    assert!(err.contains("kubespray") && err.contains("no-such-context"), "{err}");
    let missing = dir.0.join("missing");
    let err = KubernetesProvider::new("kubespray", &provider_config(), Some(&missing))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}
