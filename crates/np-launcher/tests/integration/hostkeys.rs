//! Host-key scanning of launched nodes against a real sshd on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use np_core::{NodeRequest, RequestState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::launcher::build_providers;
use np_launcher::Launcher;
use np_testing::sshd::{closed_port, Sshd};
use np_testing::{eventually, TestZk};

fn config(port: u16, checking: bool) -> np_config::Config {
    let text = format!(
        r#"
zookeeper-servers:
  - host: 127.0.0.1
labels:
  - name: small
providers:
  - name: fake-provider
    driver: fake
    rate: 0.0001
    cloud: fake
    boot-timeout: 2
    launch-retries: 2
    cloud-images:
      - name: img
        username: ubuntu
        connection-port: {port}
    pools:
      - name: main
        host-key-checking: {checking}
        labels:
          - name: small
            cloud-image: img
            flavor-name: Fake Flavor
"#
    );
    np_config::load_str(&text, "test.yaml").unwrap()
}

async fn run(config: np_config::Config) -> (TestZk, Launcher, FakeCloud, NodeRequest) {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new(
        "fake-provider",
        FakeSettings {
            address: Some("127.0.0.1".into()),
            without_host_keys: true,
            ..FakeSettings::default()
        },
    );
    let clouds = HashMap::from([("fake-provider".to_owned(), cloud.clone())]);
    let launcher =
        Launcher::start(&config, t.zk.clone(), build_providers(&config, &clouds).unwrap()).await.unwrap();
    let mut req = NodeRequest::new(vec!["small".into()]);
    t.zk.create_request(&mut req, 200, false).await.unwrap();
    (t, launcher, cloud, req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_nodes_carry_the_scanned_host_keys() {
    let sshd = Sshd::start();
    let (t, launcher, _cloud, req) = run(config(sshd.port, true)).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            t.zk.get_request(&req.id).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await
    );
    let r = t.zk.get_request(&req.id).await.unwrap().unwrap().0;
    let (node, _) = t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap();
    assert_eq!(node.host_keys, sshd.keys);
    assert_eq!(node.connection_port, serde_json::json!(sshd.port));
    assert_eq!(node.username.as_deref(), Some("ubuntu"));
    assert_eq!(node.image_id.as_deref(), Some("img"));
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nodes_fail_after_retries_and_are_deleted() {
    let (t, launcher, cloud, req) = run(config(closed_port(), true)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            t.zk.get_request(&req.id).await.unwrap().unwrap().0.state == RequestState::Failed
        })
        .await
    );
    assert_eq!(cloud.counts().0, 2, "two attempts (launch-retries)");
    assert!(
        eventually(Duration::from_secs(10), || async { cloud.server_ids().is_empty() }).await,
        "nothing leaks"
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_checking_off_skips_the_scan() {
    let (t, launcher, _cloud, req) = run(config(closed_port(), false)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.get_request(&req.id).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await
    );
    let r = t.zk.get_request(&req.id).await.unwrap().unwrap().0;
    assert!(t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap().0.host_keys.is_empty());
    launcher.stop().await;
}
