//! End to end with a Kubernetes provider on the fake API server (the
//! Kubernetes driver's tests/support): a Zuul-like client's requests are
//! fulfilled by namespaces and pods, the pool's `max-servers` holds the
//! second request back, returned nodes' namespaces are deleted, Python
//! Nodepool reads the nodes, and a leaked namespace is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../np-driver-kubernetes/tests/support/fake_kube.rs"]
mod fake_kube;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fake_kube::FakeKube;
use np_core::{NodeRequest, NodeState, RequestState};
use np_launcher::{Launcher, ProviderSet};
use np_testing::{eventually, TestZk};
use serde_json::json;

const PROVIDER: &str = "kubespray";

const YAML: &str = r#"
labels:
  - name: pod-fedora
  - name: kubernetes-namespace
providers:
  - name: kubespray
    driver: kubernetes
    context: admin-cluster.local
    pools:
      - name: main
        max-servers: 2
        labels:
          - name: kubernetes-namespace
            type: namespace
          - name: pod-fedora
            type: pod
            image: docker.io/fedora:28
            python-path: /usr/bin/python3
            shell-type: bash
            cpu: 2
            memory: 512
"#;

async fn state_of(t: &TestZk, id: &str) -> RequestState {
    t.zk.get_request(id).await.unwrap().unwrap().0.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_namespaces_and_pods_and_cleaned_up() {
    let kube = FakeKube::start().await;
    let dir = std::env::temp_dir().join(format!("np-k8s-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = kube.kubeconfig(&dir, "admin-cluster.local");
    // A namespace a crashed launcher left: our provider's, no such node.
    kube.plant_namespace(
        "main-0000009999",
        json!({"nodepool_provider_name": PROVIDER, "nodepool_pool_name": "main", "nodepool_node_id": "0000009999"}),
    );
    // Somebody else's, looking alike: left alone.
    kube.plant_namespace(
        "main-0000009998",
        json!({"nodepool_provider_name": "other", "nodepool_pool_name": "main", "nodepool_node_id": "0000009998"}),
    );
    let t = TestZk::new().await;
    let config = np_config::load_str(YAML, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::Kubernetes(k) = &config.providers[0].driver else { panic!() };
    let provider =
        np_driver_kubernetes::KubernetesProvider::new(PROVIDER, k, Some(&kubeconfig)).await.unwrap();
    let providers: ProviderSet = HashMap::from([(PROVIDER.to_owned(), Arc::new(provider) as _)]);
    let launcher = Launcher::start_with(&config, t.zk.clone(), providers, Some(Duration::from_millis(300)))
        .await
        .unwrap();

    let mut first = NodeRequest::new(vec!["pod-fedora".into(), "kubernetes-namespace".into()]);
    first.tenant_name = Some("tenant".into());
    t.zk.create_request(&mut first, 100, false).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            state_of(&t, &first.id).await == RequestState::Fulfilled
        })
        .await
    );
    // max-servers 2: the second request waits for the first's nodes.
    let mut second = NodeRequest::new(vec!["pod-fedora".into()]);
    t.zk.create_request(&mut second, 100, false).await.unwrap();

    let (done, _) = t.zk.get_request(&first.id).await.unwrap().unwrap();
    let (pod, _) = t.zk.get_node(&done.nodes[0]).await.unwrap().unwrap();
    let (ns, _) = t.zk.get_node(&done.nodes[1]).await.unwrap().unwrap();
    assert_eq!(pod.state, NodeState::Ready);
    assert_eq!(pod.connection_type.as_deref(), Some("kubectl"));
    assert_eq!(pod.interface_ip.as_deref(), Some("pod-fedora"));
    assert_eq!(pod.host_id.as_deref(), Some("fake-node-1"));
    assert_eq!(pod.python_path.as_deref(), Some("/usr/bin/python3"));
    assert_eq!(pod.shell_type.as_deref(), Some("bash"));
    assert_eq!(pod.username, None);
    assert_eq!(pod.cloud.as_deref(), Some("admin-cluster.local"));
    assert_eq!(pod.external_id, Some(json!(format!("main-{}", pod.id))));
    assert_eq!(pod.connection_port["pod"], "pod-fedora");
    assert_eq!(pod.connection_port["token"], format!("token-main-{}", pod.id));
    assert_eq!(pod.connection_port["host"], kube.url());
    assert_eq!(pod.resources, Some(json!({"cores": 2, "instances": 1, "ram": 512})));
    assert!(pod.host_keys.is_empty(), "no SSH scan");
    assert_eq!(ns.connection_type.as_deref(), Some("namespace"));
    assert_eq!(ns.connection_port["namespace"], format!("main-{}", ns.id));
    assert!(ns.connection_port.get("pod").is_none());
    // Python Nodepool reads the node as Zuul would.
    let py = t.python().run(&["read-node", &pod.id], "").await;
    assert_eq!(py["connection_type"], "kubectl", "{py}");
    assert_eq!(py["connection_port"]["user"], "zuul-worker", "{py}");
    assert_eq!(py["external_id"], format!("main-{}", pod.id), "{py}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (held, _) = t.zk.get_request(&second.id).await.unwrap().unwrap();
    assert!(
        held.state != RequestState::Fulfilled && held.nodes.is_empty(),
        "held back by max-servers: {held:?}"
    );
    // The leak is gone by now; the look-alike stays.
    let leak_gone = eventually(Duration::from_secs(20), || async {
        !kube.namespaces().iter().any(|(n, _)| n == "main-0000009999")
    })
    .await;
    assert!(leak_gone, "{:?}", kube.namespaces());
    assert!(kube.namespaces().iter().any(|(n, _)| n == "main-0000009998"));

    // Zuul returns the nodes: their namespaces go, the second request runs.
    for id in &done.nodes {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(&first.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            state_of(&t, &second.id).await == RequestState::Fulfilled
        })
        .await
    );
    let (second_done, _) = t.zk.get_request(&second.id).await.unwrap().unwrap();
    for id in &second_done.nodes {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(&second.id).await.unwrap();
    let clean = eventually(Duration::from_secs(30), || async {
        t.zk.node_ids().await.unwrap().is_empty()
            && kube.namespaces().iter().all(|(n, _)| n == "main-0000009998")
    })
    .await;
    assert!(clean, "nodes {:?}, namespaces {:?}", t.zk.node_ids().await.unwrap(), kube.namespaces());
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
