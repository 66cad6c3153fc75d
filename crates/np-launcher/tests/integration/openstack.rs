//! End to end with an OpenStack provider on the fake cloud (the OpenStack
//! driver's tests/support: Keystone, Nova, Glance and Neutron shapes on
//! 127.0.0.1): a Zuul-like client's requests are fulfilled by Nova servers
//! (with floating IPs),
//! Python Nodepool reads the nodes, the cloud's instance limit pauses the
//! pool until a server is gone, a leaked server is deleted (a stranger's is
//! not), and returned nodes' servers are deleted.

#[path = "../../../np-driver-openstack/tests/support/fake_openstack.rs"]
mod fake_openstack;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fake_openstack::{FakeOpenStack, Knobs};
use np_core::{NodeRequest, NodeState, RequestState};
use np_launcher::{Launcher, ProviderSet};
use np_testing::{eventually, TestZk};
use serde_json::json;

const PROVIDER: &str = "devstack";

const YAML: &str = r#"
labels:
  - name: small
  - name: large
providers:
  - name: devstack
    driver: openstack
    cloud: devstack
    rate: 0.001
    cloud-images:
      - name: cirros
        username: cirros
        python-path: /usr/bin/python3
    pools:
      - name: main
        host-key-checking: false
        networks: [private]
        labels:
          - name: small
            cloud-image: cirros
            flavor-name: np-small
          - name: large
            cloud-image: cirros
            min-ram: 16000
"#;

async fn state_of(t: &TestZk, id: &str) -> RequestState {
    t.zk.get_request(id).await.unwrap().unwrap().0.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_nova_servers_within_the_clouds_limits() {
    let os = FakeOpenStack::start().await;
    // Room for two servers (a stranger's among them).
    os.set_knobs(Knobs { max_instances: 3, ..Knobs::default() });
    let dir = std::env::temp_dir().join(format!("np-os-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let clouds = os.clouds_yaml(&dir, "devstack");
    // A server a crashed launcher left: ours, no such node. And a stranger's.
    let leak = os.plant_server(json!({"nodepool_provider_name": PROVIDER, "nodepool_pool_name": "main",
        "nodepool_node_id": "0000009999"}));
    let stranger = os.plant_server(json!({"owner": "someone"}));

    let t = TestZk::new().await;
    let config = np_config::load_str(YAML, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(&clouds, "devstack").unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud(PROVIDER, o, cloud).await.unwrap();
    let providers: ProviderSet = HashMap::from([(PROVIDER.to_owned(), Arc::new(provider) as _)]);
    let launcher = Launcher::start_with(&config, t.zk.clone(), providers, Some(Duration::from_millis(300)))
        .await
        .unwrap();

    // The leak goes; the stranger's server stays.
    let leak_gone = eventually(Duration::from_secs(30), || async { !os.server_ids().contains(&leak) }).await;
    assert!(leak_gone, "{:?}", os.server_ids());
    assert!(os.server_ids().contains(&stranger));

    let mut first = NodeRequest::new(vec!["small".into(), "large".into()]);
    first.tenant_name = Some("tenant".into());
    t.zk.create_request(&mut first, 100, false).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            state_of(&t, &first.id).await == RequestState::Fulfilled
        })
        .await
    );
    let (done, _) = t.zk.get_request(&first.id).await.unwrap().unwrap();
    let (small, _) = t.zk.get_node(&done.nodes[0]).await.unwrap().unwrap();
    let (large, _) = t.zk.get_node(&done.nodes[1]).await.unwrap().unwrap();
    assert_eq!(small.state, NodeState::Ready);
    assert_eq!(small.provider.as_deref(), Some(PROVIDER));
    assert_eq!(small.cloud.as_deref(), Some("devstack"));
    assert_eq!(small.region.as_deref(), Some("RegionOne"));
    assert!(small.az.is_some());
    assert_eq!(small.host_id.as_deref(), Some("fakehost-1"));
    assert_eq!(small.username.as_deref(), Some("cirros"));
    assert_eq!(small.python_path.as_deref(), Some("/usr/bin/python3"));
    // No public address on the private network: the pool's default
    // auto-floating-ip gave it one, which is its interface IP.
    assert!(small.interface_ip.as_deref().unwrap().starts_with("127.0.2."), "{small:?}");
    assert_eq!(small.public_ipv4, small.interface_ip);
    assert!(small.private_ipv4.as_deref().unwrap().starts_with("127.0.1."));
    assert_eq!(small.resources, Some(json!({"cores": 2, "instances": 1, "ram": 2048})));
    assert_eq!(large.resources, Some(json!({"cores": 8, "instances": 1, "ram": 16384})));
    let server = small.external_id.clone().unwrap();
    let meta = os.server_metadata(server.as_str().unwrap()).unwrap();
    assert_eq!(meta["nodepool_node_id"], small.id.as_str());
    assert_eq!(meta["nodepool_pool_name"], "main");
    assert_eq!(meta["groups"], "devstack,cirros,small");
    // Python Nodepool reads the node as Zuul would.
    let py = t.python().run(&["read-node", &small.id], "").await;
    assert_eq!(py["external_id"], server, "{py}");
    assert_eq!(py["cloud"], "devstack", "{py}");
    assert_eq!(py["interface_ip"], small.interface_ip.clone().unwrap(), "{py}");

    // The cloud is full (3 instances with the stranger's): the next request
    // waits, and is served once a server is gone.
    let mut second = NodeRequest::new(vec!["small".into()]);
    t.zk.create_request(&mut second, 100, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (held, _) = t.zk.get_request(&second.id).await.unwrap().unwrap();
    assert!(
        held.state != RequestState::Fulfilled && held.nodes.is_empty(),
        "held back by the cloud's limit: {held:?}"
    );

    for id in &done.nodes {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(&first.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(40), || async {
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
            && os.server_ids() == vec![stranger.clone()]
            && os.floating_ips().is_empty()
    })
    .await;
    assert!(clean, "nodes {:?}, servers {:?}", t.zk.node_ids().await.unwrap(), os.server_ids());
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
