//! Steps of a Zuul-like client that several of these tests take.

use np_core::{NodeState, RequestState};
use np_testing::TestZk;

/// The state of request `id`.
pub async fn state_of(t: &TestZk, id: &str) -> RequestState {
    t.zk.get_request(id).await.unwrap().unwrap().0.state
}

/// Zuul is done with request `id`: every node it was given is marked
/// `used`, and the request is deleted.
pub async fn return_request(t: &TestZk, id: &str) {
    let (request, _) = t.zk.get_request(id).await.unwrap().unwrap();
    for node_id in &request.nodes {
        let (mut node, _) = t.zk.get_node(node_id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(id).await.unwrap();
}

/// One request per label, each waited for until fulfilled (within
/// `timeout`; `log` says what to print when one is not); returns the request
/// ids and each request's node, in the labels' order.
pub async fn request_each(
    t: &TestZk,
    labels: &[&str],
    timeout: std::time::Duration,
    log: &dyn Fn() -> String,
) -> (Vec<String>, Vec<np_core::Node>) {
    let mut ids = Vec::new();
    for label in labels {
        let mut r = np_core::NodeRequest::new(vec![(*label).into()]);
        t.zk.create_request(&mut r, 100, false).await.unwrap();
        ids.push(r.id);
    }
    for id in &ids {
        let done =
            np_testing::eventually(timeout, || async { state_of(t, id).await == RequestState::Fulfilled })
                .await;
        assert!(done, "{id} not fulfilled; python launcher log:\n{}", log());
    }
    let mut nodes = Vec::new();
    for id in &ids {
        let (r, _) = t.zk.get_request(id).await.unwrap().unwrap();
        nodes.push(t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap().0);
    }
    (ids, nodes)
}

/// Python Nodepool 11's `nodepool-launcher` in the foreground (no web app)
/// on `providers_yaml` with this test's ZooKeeper (TLS) prepended, written
/// to `dir/python.yaml`; `env` is added to its environment. Its output goes
/// to `dir/python-launcher.log`; the returned closure reads that log.
pub fn python_launcher(
    t: &TestZk,
    dir: &std::path::Path,
    providers_yaml: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (np_testing::ChildGuard, impl Fn() -> String) {
    let config = dir.join("python.yaml");
    std::fs::write(&config, format!("{}{}", np_testing::zk_yaml_tls(&t.chroot), providers_yaml)).unwrap();
    let python = std::path::PathBuf::from(np_testing::env("NP_PYTHON"));
    let log_path = dir.join("python-launcher.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = std::process::Command::new(python.with_file_name("nodepool-launcher"));
    cmd.arg("-c").arg(&config).args(["-f", "--no-webapp"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child =
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    (np_testing::ChildGuard(child), move || std::fs::read_to_string(&log_path).unwrap_or_default())
}
