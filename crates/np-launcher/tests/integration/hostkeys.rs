//! Host-key scanning of launched nodes against a real sshd on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_core::RequestState;
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::Launcher;
use np_testing::sshd::{closed_port, Sshd};
use np_testing::{eventually, TestZk};

use crate::common::{self, FakeConfig};

fn config(port: u16, checking: bool) -> np_config::Config {
    FakeConfig::new(&["small"])
        .provider("boot-timeout: 2\nlaunch-retries: 2")
        .image(&format!("username: ubuntu\nconnection-port: {port}"))
        .pool(&format!("host-key-checking: {checking}"))
        .load()
}

/// The launcher and a request for `small`, whose id it returns.
async fn run(config: np_config::Config) -> (TestZk, Launcher, FakeCloud, String) {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new(
        "fake-provider",
        FakeSettings {
            address: Some("127.0.0.1".into()),
            without_host_keys: true,
            ..FakeSettings::default()
        },
    );
    let launcher = common::start_fake(&t, &config, &cloud, None).await;
    let id = common::submit(&t, &["small"]).await;
    (t, launcher, cloud, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_nodes_carry_the_scanned_host_keys() {
    let sshd = Sshd::start();
    let (t, launcher, _cloud, id) = run(config(sshd.port, true)).await;
    assert!(common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(15)).await);
    let r = t.zk.get_request(&id).await.unwrap().unwrap().0;
    let (node, _) = t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap();
    assert_eq!(node.host_keys, sshd.keys);
    assert_eq!(node.connection_port, serde_json::json!(sshd.port));
    assert_eq!(node.username.as_deref(), Some("ubuntu"));
    assert_eq!(node.image_id.as_deref(), Some("img"));
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nodes_fail_after_retries_and_are_deleted() {
    let (t, launcher, cloud, id) = run(config(closed_port(), true)).await;
    assert!(common::reaches(&t, &id, RequestState::Failed, Duration::from_secs(20)).await);
    assert_eq!(cloud.counts().0, 2, "two attempts (launch-retries)");
    assert!(
        eventually(Duration::from_secs(10), || async { cloud.server_ids().is_empty() }).await,
        "nothing leaks"
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_checking_off_skips_the_scan() {
    let (t, launcher, _cloud, id) = run(config(closed_port(), false)).await;
    assert!(common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(10)).await);
    let r = t.zk.get_request(&id).await.unwrap().unwrap().0;
    assert!(t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap().0.host_keys.is_empty());
    launcher.stop().await;
}

/// Upstream's rule: a label's `host-key-checking` wins over its pool's, so a
/// label that asks for the scan gets it under a pool that turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labels_host_key_checking_wins_over_its_pools() {
    let sshd = Sshd::start();
    let yaml = FakeConfig::new(&["small"])
        .provider("boot-timeout: 2\nlaunch-retries: 2")
        .image(&format!("username: ubuntu\nconnection-port: {}", sshd.port))
        .pool("host-key-checking: false")
        .yaml()
        .replace(
            "flavor-name: Fake Flavor\n",
            "flavor-name: Fake Flavor\n            host-key-checking: true\n",
        );
    let config = np_config::load_str(&yaml, "nodepool.yaml").unwrap();
    let (t, launcher, _cloud, id) = run(config).await;
    assert!(common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(15)).await);
    let r = t.zk.get_request(&id).await.unwrap().unwrap().0;
    let (node, _) = t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap();
    assert_eq!(node.host_keys, sshd.keys, "the label's true wins over the pool's false");
    launcher.stop().await;
}
