//! End to end with an OpenStack provider on the fake cloud (the OpenStack
//! driver's tests/support: Keystone, Nova, Glance and Neutron shapes on
//! 127.0.0.1): a Zuul-like client's requests are fulfilled by Nova servers
//! (with floating IPs),
//! Python Nodepool reads the nodes, the cloud's instance limit pauses the
//! pool until a server is gone, a leaked server is deleted (a stranger's is
//! not), and returned nodes' servers are deleted.

#[path = "../../../np-driver-openstack/tests/support/fake_openstack.rs"]
mod fake_openstack;

use std::time::Duration;

use crate::common::{self, reaches};
use fake_openstack::{FakeOpenStack, Knobs};
use np_core::{NodeState, RequestState};
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
    region-name: RegionOne
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_nova_servers_within_the_clouds_limits() {
    let os = FakeOpenStack::start().await;
    // Room for two servers (a stranger's among them).
    os.set_knobs(Knobs { max_instances: 3, ..Knobs::default() });
    let dir = common::scratch_dir("np-os-e2e");
    let clouds = os.clouds_yaml_public(&dir, "devstack");
    // A server a crashed launcher left: ours, no such node. And a stranger's.
    let leak = os.plant_server(json!({"nodepool_provider_name": PROVIDER, "nodepool_pool_name": "main",
        "nodepool_node_id": "0000009999"}));
    let stranger = os.plant_server(json!({"owner": "someone"}));

    let t = TestZk::new().await;
    let config = np_config::load_str(YAML, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(&clouds, "devstack").unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud(PROVIDER, o, cloud).await.unwrap();
    let launcher =
        common::start_provider(&t, &config, PROVIDER, provider, Some(Duration::from_millis(300))).await;

    // The leak goes; the stranger's server stays.
    let leak_gone = eventually(Duration::from_secs(30), || async { !os.server_ids().contains(&leak) }).await;
    assert!(leak_gone, "{:?}", os.server_ids());
    assert!(os.server_ids().contains(&stranger));

    let first = common::submit_with(&t, &["small", "large"], |r| r.tenant_name = Some("tenant".into())).await;
    assert!(reaches(&t, &first, RequestState::Fulfilled, Duration::from_secs(30)).await);
    let (done, _) = t.zk.get_request(&first).await.unwrap().unwrap();
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
    let second = common::submit(&t, &["small"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (held, _) = t.zk.get_request(&second).await.unwrap().unwrap();
    assert!(
        held.state != RequestState::Fulfilled && held.nodes.is_empty(),
        "held back by the cloud's limit: {held:?}"
    );

    common::return_request(&t, &first).await;
    assert!(reaches(&t, &second, RequestState::Fulfilled, Duration::from_secs(40)).await);
    common::return_request(&t, &second).await;
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

const ZONES_YAML: &str = r#"
labels:
  - name: small
    min-ready: 1
  - name: ghost
  - name: scanned
providers:
  - name: devstack
    driver: openstack
    cloud: devstack
    rate: 0.001
    boot-timeout: 1
    launch-retries: 2
    cloud-images:
      - name: cirros
      - name: ghost
        image-name: no-such-image
    pools:
      - name: main
        max-servers: 20
        # Host keys are scanned (and fail: nothing listens on the fake
        # servers' addresses) only in pool `scan`.
        host-key-checking: false
        networks: [private]
        labels:
          - name: small
            cloud-image: cirros
            flavor-name: np-small
          - name: ghost
            cloud-image: ghost
            flavor-name: np-small
      - name: scan
        max-servers: 2
        networks: [private]
        labels:
          - name: scanned
            cloud-image: cirros
            flavor-name: np-small
            console-log: true
"#;

/// Upstream's generic request rules on an OpenStack provider: one zone for
/// all nodes of a request (the zone of a ready node it reuses, else one
/// picked for its first node), requests for a cloud image missing in
/// Glance declined without a launch (`labelReady`), and the console of a
/// server whose host-key scan failed read for a label with `console-log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_one_zone_missing_images_are_declined_and_consoles_read() {
    let os = FakeOpenStack::start().await;
    os.set_knobs(Knobs { max_instances: 30, max_cores: -1, max_ram: -1, ..Knobs::default() });
    let dir = common::scratch_dir("np-os-zones");
    let clouds = os.clouds_yaml(&dir, "devstack");
    let t = TestZk::new().await;
    let config = np_config::load_str(ZONES_YAML, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(&clouds, "devstack").unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud(PROVIDER, o, cloud).await.unwrap();
    let launcher = common::start_provider(&t, &config, PROVIDER, provider, None).await;

    // min-ready makes one ready node; a request of four reuses it, and its
    // three new nodes go to that node's zone.
    let ready = eventually(Duration::from_secs(30), || async {
        let ids = t.zk.node_ids().await.unwrap();
        for id in ids {
            if let Ok(Some((n, _))) = t.zk.get_node(&id).await {
                if n.state == NodeState::Ready && n.allocated_to.is_none() {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(ready, "min-ready made a node");
    let mut zones_seen = std::collections::BTreeSet::new();
    for round in 0..2 {
        let id = common::submit(&t, &["small", "small", "small", "small"]).await;
        assert!(reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(40)).await, "round {round}");
        let (done, _) = t.zk.get_request(&id).await.unwrap().unwrap();
        let mut zones = std::collections::BTreeSet::new();
        for n in &done.nodes {
            let (node, _) = t.zk.get_node(n).await.unwrap().unwrap();
            zones.insert(node.az.clone().unwrap());
        }
        assert_eq!(zones.len(), 1, "round {round}: one zone for the request's nodes: {zones:?}");
        zones_seen.extend(zones);
        common::return_request(&t, &id).await;
    }
    // Every server Nova got for the request was asked for in a zone.
    assert!(os.created_servers().iter().all(|b| b["availability_zone"].is_string()));

    // A label whose cloud image Glance does not have: declined (the only
    // pool that has it), without a node or a launch; the image is looked up
    // once for both requests, not per launch attempt.
    let servers_before = os.created_servers().len();
    for _ in 0..2 {
        let id = common::submit(&t, &["ghost"]).await;
        assert!(reaches(&t, &id, RequestState::Failed, Duration::from_secs(20)).await);
        let (failed, _) = t.zk.get_request(&id).await.unwrap().unwrap();
        assert!(failed.nodes.is_empty());
    }
    let lookups = os
        .requests()
        .iter()
        .filter(|r| r.path == "/image/v2/images" && r.query.contains("name=no-such-image"))
        .count();
    assert_eq!(lookups, 1, "one Glance lookup, remembered");
    let ghost_servers = os.created_servers().len() - servers_before;
    assert!(
        ghost_servers <= 1,
        "no server for the ghost label (min-ready may have made one): {ghost_servers}"
    );

    // The host-key scan of a `console-log` label fails: its console is read
    // (once per failed attempt) before the server is deleted.
    let id = common::submit(&t, &["scanned"]).await;
    assert!(reaches(&t, &id, RequestState::Failed, Duration::from_secs(60)).await);
    let consoles = os.requests().iter().filter(|r| r.path.ends_with("/action")).count();
    assert_eq!(consoles, 2, "one console read per failed attempt (launch-retries 2)");

    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Python Nodepool 11's launcher and ours, each with its own provider on one
/// real OpenStack project (tools/openstack-env.sh: Keystone, Nova, Glance)
/// and one ZooKeeper, as during a migration: both fulfil their requests,
/// their node records agree field by field, and each deletes only its own
/// servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cloud_python_and_rust_launchers_share_one_project() {
    let clouds = std::env::var("NP_OS_CLOUDS").expect(
        "NP_OS_CLOUDS is not set: start the real OpenStack with tools/openstack-env.sh start and source .openstack-env/env.sh (tools/test.sh does both)",
    );
    let cloud_name = std::env::var("NP_OS_CLOUD").unwrap_or_else(|_| "devstack".into());
    let dir = common::scratch_dir("np-os-py");
    let t = TestZk::new_tls().await;
    let provider_yaml = |provider: &str, pool: &str, label: &str| {
        format!(
            "labels:\n  - name: {label}\nproviders:\n  - name: {provider}\n    driver: openstack\n    cloud: {cloud_name}\n    region-name: RegionOne\n    rate: 0.01\n    cloud-images:\n      - name: cirros\n        username: cirros\n    pools:\n      - name: {pool}\n        max-servers: 2\n        host-key-checking: false\n        networks: [private]\n        labels:\n          - name: {label}\n            cloud-image: cirros\n            flavor-name: np-small\n            instance-properties:\n              team: ci\n"
        )
    };
    let (_py, python_log) = common::python_launcher(
        &t,
        &dir,
        &provider_yaml("py-os", "py", "py-small"),
        &[("OS_CLIENT_CONFIG_FILE", std::ffi::OsStr::new(&clouds))],
    );
    let ours = np_config::load_str(&provider_yaml("rs-os", "rs", "rs-small"), "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &ours.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(std::path::Path::new(&clouds), &cloud_name).unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud("rs-os", o, cloud).await.unwrap();
    let session_probe = np_driver_openstack::OpenStackProvider::with_cloud(
        "probe",
        o,
        np_driver_openstack::clouds::load_file(std::path::Path::new(&clouds), &cloud_name).unwrap(),
    )
    .await
    .unwrap();
    let launcher =
        common::start_provider(&t, &ours, "rs-os", provider, Some(Duration::from_millis(300))).await;

    let both = eventually(Duration::from_secs(60), || async { launcher.shared().pools.len() == 2 }).await;
    assert!(both, "python launcher did not register:\n{}", python_log());
    let (ids, nodes) =
        common::request_each(&t, &["py-small", "rs-small"], Duration::from_secs(90), &python_log).await;
    let (py, rs) = (&nodes[0], &nodes[1]);
    assert_eq!(py.provider.as_deref(), Some("py-os"));
    assert_eq!(rs.provider.as_deref(), Some("rs-os"));
    // The same fields, filled the same way, by both launchers.
    assert_eq!(py.cloud, rs.cloud);
    assert_eq!(py.region, rs.region);
    assert_eq!(py.az, rs.az);
    assert_eq!(py.username, rs.username);
    assert_eq!(py.connection_type, rs.connection_type);
    assert_eq!(py.connection_port, rs.connection_port);
    assert_eq!(py.resources, rs.resources);
    assert_eq!(py.image_id, rs.image_id);
    for (a, b) in [
        (&py.interface_ip, &rs.interface_ip),
        (&py.private_ipv4, &rs.private_ipv4),
        (&py.public_ipv4, &rs.public_ipv4),
        (&py.host_id, &rs.host_id),
        (&py.public_ipv6, &rs.public_ipv6),
    ] {
        // Present or not, and empty (openstacksdk's '' for a missing address) or not.
        let form = |v: &Option<String>| v.as_deref().map(str::is_empty);
        assert_eq!(form(a), form(b), "python {py:?}\nours {rs:?}");
    }
    assert!(rs.interface_ip.as_deref().unwrap().starts_with("127.10.0."), "{rs:?}");
    // Nova has both servers with the same metadata keys and the same groups form.
    let session = session_probe.inner().session();
    // Nova's own view of a server, by the node's external id.
    let nova_server = |id: serde_json::Value| async move {
        session
            .call(
                np_driver_openstack::client::Service::Compute,
                np_driver_openstack::client::Method::GET,
                &format!("servers/{}", id.as_str().unwrap()),
                None,
            )
            .await
            .map(|(_, v)| v["server"].clone())
    };
    let meta_of = |id: serde_json::Value| async move { nova_server(id).await.unwrap()["metadata"].clone() };
    let py_meta = meta_of(py.external_id.clone().unwrap()).await;
    let rs_meta = meta_of(rs.external_id.clone().unwrap()).await;
    let keys = |m: &serde_json::Value| {
        let mut k: Vec<String> = m.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&py_meta), keys(&rs_meta), "python {py_meta}\nours {rs_meta}");
    assert_eq!(py_meta["groups"], "py-os,cirros,py-small");
    assert_eq!(rs_meta["groups"], "rs-os,cirros,rs-small");
    // Python reads our node.
    let read = t.python().run(&["read-node", &rs.id], "").await;
    assert_eq!(read["external_id"], rs.external_id.clone().unwrap(), "{read}");

    for id in &ids {
        common::return_request(&t, id).await;
    }
    let server_gone =
        |id: serde_json::Value| async move { nova_server(id).await.is_err_and(|e| e.is_gone()) };
    let clean = eventually(Duration::from_secs(90), || async {
        t.zk.node_ids().await.unwrap().is_empty()
            && server_gone(py.external_id.clone().unwrap()).await
            && server_gone(rs.external_id.clone().unwrap()).await
    })
    .await;
    assert!(clean, "python launcher log:\n{}", python_log());
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Leaked resources the driver removes itself while listing (an unattached
/// floating IP with `clean-floating-ips`) are counted by the launcher under
/// upstream's name, `leaked.floatingips`, as a leaked server is under
/// `leaked.instances`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_floating_ips_and_servers_are_counted() {
    let os = FakeOpenStack::start().await;
    let dir = common::scratch_dir("np-os-leak-metrics");
    let clouds = os.clouds_yaml(&dir, "devstack");
    let leak = os.plant_server(json!({"nodepool_provider_name": PROVIDER, "nodepool_pool_name": "main",
        "nodepool_node_id": "0000009998"}));
    let loose = os.plant_floating_ip();
    let t = TestZk::new().await;
    let yaml = YAML.replace("    rate: 0.001\n", "    rate: 0.001\n    clean-floating-ips: true\n");
    let config = np_config::load_str(&yaml, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(&clouds, "devstack").unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud(PROVIDER, o, cloud).await.unwrap();
    let launcher =
        common::start_provider(&t, &config, PROVIDER, provider, Some(Duration::from_millis(300))).await;
    let leaked = |resource: &str| {
        launcher
            .metrics()
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "nodepool_provider_leaked_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "resource" && l.value() == resource))
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
    };
    let counted = eventually(Duration::from_secs(30), || async {
        leaked("floatingips") == 1.0 && leaked("instances") == 1.0
    })
    .await;
    assert!(counted, "floatingips {} instances {}", leaked("floatingips"), leaked("instances"));
    assert!(os.floating_ips().iter().all(|(a, _)| a != &loose));
    // Counted when the delete starts; the server goes soon after.
    assert!(eventually(Duration::from_secs(30), || async { !os.server_ids().contains(&leak) }).await);
    launcher.stop().await;
}
