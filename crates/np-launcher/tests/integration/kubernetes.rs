//! End to end with a Kubernetes provider on the fake API server (the
//! Kubernetes driver's tests/support): a Zuul-like client's requests are
//! fulfilled by namespaces and pods, the pool's `max-servers` holds the
//! second request back, returned nodes' namespaces are deleted, Python
//! Nodepool reads the nodes, and a leaked namespace is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../np-driver-kubernetes/tests/support/fake_kube.rs"]
mod fake_kube;

use std::time::Duration;

use crate::common::{self, reaches};
use fake_kube::FakeKube;
use np_core::{NodeState, RequestState};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_namespaces_and_pods_and_cleaned_up() {
    let kube = FakeKube::start().await;
    let dir = common::scratch_dir("np-k8s-e2e");
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
    let launcher =
        common::start_provider(&t, &config, PROVIDER, provider, Some(Duration::from_millis(300))).await;

    let first = common::submit_with(&t, &["pod-fedora", "kubernetes-namespace"], |r| {
        r.tenant_name = Some("tenant".into())
    })
    .await;
    assert!(reaches(&t, &first, RequestState::Fulfilled, Duration::from_secs(30)).await);
    // max-servers 2: the second request waits for the first's nodes.
    let second = common::submit(&t, &["pod-fedora"]).await;

    let (done, _) = t.zk.get_request(&first).await.unwrap().unwrap();
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
    let (held, _) = t.zk.get_request(&second).await.unwrap().unwrap();
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
    common::return_request(&t, &first).await;
    assert!(reaches(&t, &second, RequestState::Fulfilled, Duration::from_secs(30)).await);
    common::return_request(&t, &second).await;
    let clean = eventually(Duration::from_secs(30), || async {
        t.zk.node_ids().await.unwrap().is_empty()
            && kube.namespaces().iter().all(|(n, _)| n == "main-0000009998")
    })
    .await;
    assert!(clean, "nodes {:?}, namespaces {:?}", t.zk.node_ids().await.unwrap(), kube.namespaces());
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Python Nodepool 11's launcher and ours, each with its own Kubernetes
/// provider on one cluster and one ZooKeeper, as during a migration: both
/// fulfil their requests, their node records have the same shape, and each
/// deletes only its own namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_launchers_share_one_cluster() {
    let kube = FakeKube::start().await;
    let dir = common::scratch_dir("np-k8s-py");
    let kubeconfig = kube.kubeconfig(&dir, "admin-cluster.local");
    let t = TestZk::new_tls().await;
    let provider_yaml = |provider: &str, pool: &str, prefix: &str| {
        format!(
            "labels:\n  - name: {prefix}-ns\n  - name: {prefix}-pod\nproviders:\n  - name: {provider}\n    driver: kubernetes\n    context: admin-cluster.local\n    pools:\n      - name: {pool}\n        labels:\n          - name: {prefix}-ns\n            type: namespace\n          - name: {prefix}-pod\n            type: pod\n            image: docker.io/fedora:40\n            cpu: 1\n            memory: 256\n"
        )
    };
    let venv = std::path::PathBuf::from(np_testing::env("NP_PYTHON"));
    let venv = venv.parent().unwrap().parent().unwrap();
    // See tools/setup.sh: the client Python Nodepool's driver works with.
    let pythonpath = venv.join("kubernetes-29");
    let (_py, python_log) = common::python_launcher(
        &t,
        &dir,
        &provider_yaml("py-k8s", "py", "py"),
        &[("KUBECONFIG", kubeconfig.as_os_str()), ("PYTHONPATH", pythonpath.as_os_str())],
    );
    let ours = np_config::load_str(&provider_yaml("rs-k8s", "rs", "rs"), "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::Kubernetes(k) = &ours.providers[0].driver else { panic!() };
    let provider =
        np_driver_kubernetes::KubernetesProvider::new("rs-k8s", k, Some(&kubeconfig)).await.unwrap();
    let launcher =
        common::start_provider(&t, &ours, "rs-k8s", provider, Some(Duration::from_millis(300))).await;

    // Both pools registered first (Python's takes a few seconds to start): a
    // label no registered pool serves would be failed, as upstream does.
    let both = eventually(Duration::from_secs(60), || async { launcher.shared().pools.len() == 2 }).await;
    assert!(both, "python launcher did not register:\n{}", python_log());
    let (ids, nodes) = common::request_each(
        &t,
        &["py-ns", "py-pod", "rs-ns", "rs-pod"],
        Duration::from_secs(60),
        &python_log,
    )
    .await;
    // The same record shape from both launchers, for both label types.
    for (py, rs) in [(&nodes[0], &nodes[2]), (&nodes[1], &nodes[3])] {
        assert_eq!(py.provider.as_deref(), Some("py-k8s"));
        assert_eq!(rs.provider.as_deref(), Some("rs-k8s"));
        assert_eq!(py.connection_type, rs.connection_type);
        let keys =
            |n: &np_core::Node| n.connection_port.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(py), keys(rs), "connection_port keys, in order");
        assert_eq!(py.connection_port["host"], rs.connection_port["host"]);
        assert_eq!(py.connection_port["ca_crt"], rs.connection_port["ca_crt"]);
        assert_eq!(py.connection_port["token"], format!("token-py-{}", py.id));
        assert_eq!(py.external_id, Some(json!(format!("py-{}", py.id))));
        assert_eq!(rs.external_id, Some(json!(format!("rs-{}", rs.id))));
        assert_eq!(
            (py.host_id.is_some(), py.interface_ip.is_some()),
            (rs.host_id.is_some(), rs.interface_ip.is_some())
        );
        assert_eq!(py.cloud, rs.cloud);
        assert_eq!(py.username, rs.username);
    }
    // Both clean up after a while without touching the other's namespaces.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kube.namespaces().len(), 4, "{:?}", kube.namespaces());
    for id in &ids {
        common::return_request(&t, id).await;
    }
    let clean = eventually(Duration::from_secs(60), || async {
        kube.namespaces().is_empty() && t.zk.node_ids().await.unwrap().is_empty()
    })
    .await;
    assert!(clean, "namespaces left: {:?}; python launcher log:\n{}", kube.namespaces(), python_log());
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
