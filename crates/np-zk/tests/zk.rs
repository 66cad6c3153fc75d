//! Integration tests of the ZooKeeper layer against a real ZooKeeper 3.8 and
//! the real Python Nodepool 11 / kazoo peer (`tests/python/np_interop.py`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_core::{
    ComponentKind, ComponentRecord, ComponentState, Node, NodeRequest, NodeState, PoolInfo, RequestState,
};
use np_testing::{eventually, TestZk};
use np_zk::{
    CacheEventKind, ComponentRegistration, LockOptions, NodeCache, PoolComponentCache, RequestCache,
};
use serde_json::{json, Value};

const TRACE_ID: &str = "215112374629468731405815305233457823345";

fn sample_node() -> Node {
    let mut node = Node::new(NodeState::Ready);
    node.provider = Some("fake-provider".into());
    node.pool = Some("main".into());
    node.cloud = Some("fake".into());
    node.node_type = vec!["ubuntu-jammy".into()];
    node.interface_ip = Some("127.0.0.5".into());
    node.public_ipv4 = Some("127.0.0.5".into());
    node.host_keys = vec!["ssh-ed25519 AAAAC3Nza".into()];
    node.connection_type = Some("ssh".into());
    node.python_path = Some("auto".into());
    node.attributes = Some(json!({"executor-zone": "east"}));
    node.resources = Some(json!({"cores": 2, "instances": 1, "ram": 2048}));
    node.external_id = Some(json!({"instance": "i-0123", "host": null}));
    node.launcher = Some("host-PoolWorker.fake-provider-main-abc".into());
    node.tenant_name = Some("tenant-one".into());
    node
}

fn zuul_request_json() -> String {
    format!(
        r#"{{"requestor_data": {{"build_set_uuid": "a3f0", "tenant_name": "t", "pipeline_name": "check", "job_uuid": "j1", "job_name": "tox", "span_info": {{"name": "RequestNodes", "trace_id": {TRACE_ID}, "span_id": 13451738231587532214, "trace_flags": 1, "start_time": 1726600000123456000, "parent": null}}}}, "node_types": ["ubuntu-jammy", "ubuntu-jammy"], "requestor": "6d1f3c0a", "created_time": 1726600000.123456, "provider": null, "state": "requested", "state_time": 1726600000.1234, "relative_priority": 0, "event_id": "5f2e8c1d", "tenant_name": "t"}}"#
    )
}

#[tokio::test]
async fn python_nodepool_reads_our_node_with_every_field() {
    let t = TestZk::new().await;
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    assert!(np_core::is_node_id(&node.id), "{}", node.id);

    let py = t.python().run(&["read-node", &node.id], "").await;
    let ours = node.to_value();
    for (key, value) in ours.as_object().unwrap() {
        assert_eq!(&py[key], value, "field {key} as Python Nodepool reads it");
    }
    assert_eq!(py["id"], Value::from(node.id.clone()));
}

#[tokio::test]
async fn we_read_python_written_nodes_and_python_reads_our_rewrite() {
    let t = TestZk::new().await;
    let py = t.python();
    let input = json!({"state": "ready", "provider": "p", "pool": "main", "type": ["label-a"],
        "connection_port": {"name": "n", "namespace": "ns", "token": "tok", "skiptls": true},
        "user_data": {"zuul_system": "sys", "big": 340282366920938463463374607431768211455u128},
        "hold_expiration": 3600, "slot": 2, "host_keys": ["ssh-rsa AAAA"]});
    let created = py.run(&["write-node"], &input.to_string()).await;
    let id = created["id"].as_str().unwrap().to_owned();

    let (mut node, _) = t.zk.get_node(&id).await.unwrap().unwrap();
    assert_eq!(node.state, NodeState::Ready);
    assert_eq!(node.node_type, vec!["label-a".to_owned()]);
    assert_eq!(node.hold_expiration, Some(3600));
    assert_eq!(node.slot, Some(2));
    assert_eq!(node.connection_port["namespace"], json!("ns"));
    let big = node.user_data.as_ref().unwrap()["big"].to_string();
    assert_eq!(big, "340282366920938463463374607431768211455");

    node.set_state(NodeState::InUse);
    node.allocated_to = Some("100-0000000001".into());
    t.zk.update_node(&node).await.unwrap();
    let back = py.run(&["read-node", &id], "").await;
    assert_eq!(back["state"], json!("in-use"));
    assert_eq!(back["allocated_to"], json!("100-0000000001"));
    assert_eq!(back["ssh_port"]["token"], json!("tok"));
    assert_eq!(back["user_data"]["big"].to_string(), "340282366920938463463374607431768211455");
}

#[tokio::test]
async fn zuul_request_survives_python_and_rust_rewrites_losslessly() {
    let t = TestZk::new().await;
    let py = t.python();
    // Zuul's request, as Zuul writes it (persistent sequential, priority 200).
    let created = py.run(&["write-request", "--priority", "200"], &zuul_request_json()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("200-"), "{id}");

    // We accept it: pending, write back.
    let (mut req, _) = t.zk.get_request(&id).await.unwrap().unwrap();
    assert_eq!(req.node_types, vec!["ubuntu-jammy", "ubuntu-jammy"]);
    req.set_state(RequestState::Pending);
    req.declined_by.push("other-pool".into());
    t.zk.update_request(&req).await.unwrap();

    // Python Nodepool rewrites it (fulfils it).
    py.run(&["update-request", &id], r#"{"state": "fulfilled", "nodes": ["0000000001", "0000000002"]}"#)
        .await;
    let (req, _) = t.zk.get_request(&id).await.unwrap().unwrap();
    assert_eq!(req.state, RequestState::Fulfilled);
    assert_eq!(req.declined_by, vec!["other-pool"]);
    assert_eq!(req.nodes, vec!["0000000001", "0000000002"]);
    let span = &req.requestor_data.as_ref().unwrap()["span_info"];
    assert_eq!(span["trace_id"].to_string(), TRACE_ID);
    assert_eq!(span["span_id"].to_string(), "13451738231587532214");

    // And what we write, Python reads with the 128-bit id intact.
    t.zk.update_request(&req).await.unwrap();
    let py_view = py.run(&["read-request", &id], "").await;
    assert_eq!(py_view["requestor_data"]["span_info"]["trace_id"].to_string(), TRACE_ID);
    assert_eq!(py_view["state"], json!("fulfilled"));
}

#[tokio::test]
async fn our_requests_have_the_priority_prefix_and_every_key() {
    let t = TestZk::new().await;
    let mut req = NodeRequest::new(vec!["small".into()]);
    req.requestor = Some("NodePool:min-ready".into());
    req.reuse = false;
    t.zk.create_request(&mut req, 900, false).await.unwrap();
    assert!(req.id.starts_with("900-") && req.id.len() == 14, "{}", req.id);
    let raw = t.python().run(&["raw-get", &format!("/nodepool/requests/{}", req.id)], "").await;
    let data: Value = serde_json::from_str(raw["data"].as_str().unwrap()).unwrap();
    assert_eq!(data.as_object().unwrap().len(), 13);
    assert_eq!(data["reuse"], json!(false));
    assert!(data["event_id"].is_string());
    let py = t.python().run(&["read-request", &req.id], "").await;
    assert_eq!(py["requestor"], json!("NodePool:min-ready"));
}

#[tokio::test]
async fn malformed_znodes_are_errors_and_skipped_by_the_cache() {
    let t = TestZk::new().await;
    let py = t.python();
    let cache = NodeCache::start(&t.zk);
    assert!(cache.wait_ready(Duration::from_secs(10)).await);
    for bad in ["{not json", r#"{"state": "exploded"}"#, r#"{"state": "ready", "type": 5}"#] {
        py.run(&["raw-create", "/nodepool/nodes/", "--sequence", "--data", bad], "").await;
    }
    let mut good = sample_node();
    t.zk.create_node(&mut good).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { cache.get(&good.id).is_some() }).await);
    assert_eq!(cache.len(), 1, "malformed nodes must not be cached");
    let mut errors = 0;
    for id in t.zk.node_ids().await.unwrap() {
        match t.zk.get_node(&id).await {
            Ok(_) => {}
            Err(np_zk::ZkError::Malformed { .. }) => errors += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(errors, 3);
    // Nothing was overwritten.
    let raw = py.run(&["raw-children", "/nodepool/nodes"], "").await;
    assert_eq!(raw.as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn kazoo_lock_excludes_ours_and_hands_over() {
    let t = TestZk::new().await;
    let py = t.python();
    let path = "/nodepool/requests-lock/200-0000000001";

    // kazoo holds: our non-blocking attempt fails and leaves no contender.
    let (held, first) = py.hold(&["hold-lock", path]).await;
    assert_eq!(first, json!({"acquired": true}));
    assert!(t.zk.lock(path, &LockOptions::try_once()).await.unwrap().is_none());
    let contenders = py.run(&["lock-contenders", path], "").await;
    assert_eq!(contenders.as_array().unwrap().len(), 1, "our failed attempt must delete its contender");

    // Our blocking waiter gets it when kazoo releases.
    let zk = t.zk.clone();
    let waiter =
        tokio::spawn(
            async move { zk.lock(path, &LockOptions::blocking(Some(Duration::from_secs(20)))).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    assert_eq!(held.release().await, json!({"released": true}));
    let guard = waiter.await.unwrap().unwrap().expect("acquired after kazoo released");

    // Now we hold: kazoo cannot take it; a blocking kazoo waiter gets it on our release.
    assert_eq!(py.run(&["try-lock", path], "").await, json!({"acquired": false}));
    let py2 = py.clone();
    let waiting = tokio::spawn(async move { py2.hold(&["hold-lock", path, "--timeout", "20"]).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "kazoo must wait while we hold the lock");
    guard.release().await.unwrap();
    let (waiting, acquired) = waiting.await.unwrap();
    assert_eq!(acquired, json!({"acquired": true}));
    assert_eq!(waiting.release().await, json!({"released": true}));
}

#[tokio::test]
async fn blocking_lock_times_out_and_cleans_up() {
    let t = TestZk::new().await;
    let py = t.python();
    let path = "/nodepool/nodes-lock-test/lock";
    let (held, _) = py.hold(&["hold-lock", path]).await;
    let started = std::time::Instant::now();
    let got = t.zk.lock(path, &LockOptions::blocking(Some(Duration::from_millis(500)))).await.unwrap();
    assert!(got.is_none());
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(py.run(&["lock-contenders", path], "").await.as_array().unwrap().len(), 1);
    held.release().await;
}

#[tokio::test]
async fn python_node_lock_and_ours_exclude_each_other() {
    let t = TestZk::new().await;
    let py = t.python();
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();

    let guard = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    let attempt = py.run(&["lock-node", &node.id], "").await;
    assert_eq!(attempt["acquired"], json!(false), "{attempt}");
    guard.release().await.unwrap();

    let (held, first) = py.hold(&["lock-node", &node.id]).await;
    assert_eq!(first["acquired"], json!(true));
    assert!(t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().is_none());
    held.release().await;
    assert!(t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().is_some());
}

#[tokio::test]
async fn locking_a_deleted_node_does_not_resurrect_it() {
    let t = TestZk::new().await;
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    t.zk.delete_node(&mut node).await.unwrap();
    let err = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap_err();
    assert!(err.is_no_node(), "{err}");
    assert!(t.zk.exists(&format!("/nodepool/nodes/{}", node.id)).await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_a_locked_node_removes_it_with_its_lock_even_with_a_waiter() {
    let t = TestZk::new().await;
    // Nobody else contends: one transaction.
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    let lock = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    t.zk.delete_locked_node(&mut node, lock).await.unwrap();
    assert!(t.zk.exists(&format!("/nodepool/nodes/{}", node.id)).await.unwrap().is_none());

    // A second session waits for the lock: the node still goes, and the
    // waiter is told the node is gone rather than getting a lock on nothing.
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    let lock = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    let other = t.second().await;
    let id = node.id.clone();
    let waiter = tokio::spawn(async move {
        other
            .zk
            .lock_node(&id, LockOptions::blocking(Some(Duration::from_secs(10))))
            .await
            .map(|g| g.is_some())
    });
    let lock_dir = format!("/nodepool/nodes/{}/lock", node.id);
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.zk.children(&lock_dir).await.unwrap().unwrap_or_default().len() == 2
        })
        .await
    );
    t.zk.delete_locked_node(&mut node, lock).await.unwrap();
    assert!(t.zk.exists(&format!("/nodepool/nodes/{}", node.id)).await.unwrap().is_none());
    assert!(!matches!(waiter.await.unwrap(), Ok(true)), "the waiter must not hold a lock on a deleted node");
}

#[tokio::test]
async fn waiter_gets_the_lock_when_the_holders_session_dies() {
    let t = TestZk::new().await;
    let py = t.python();
    let path = "/locks/session-death";
    let (held, _) = py.hold(&["hold-lock", path]).await;
    let zk = t.zk.clone();
    let waiter =
        tokio::spawn(
            async move { zk.lock(path, &LockOptions::blocking(Some(Duration::from_secs(30)))).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.kill(); // the kazoo session closes with the process
    let guard = waiter.await.unwrap().unwrap();
    assert!(guard.is_some());
}

#[tokio::test]
async fn session_expiry_drops_our_locks_tells_the_holder_and_recovers() {
    let t = TestZk::new().await;
    let py = t.python();
    let path = "/locks/expiry";
    let guard = t.zk.lock(path, &LockOptions::try_once()).await.unwrap().unwrap();
    assert!(guard.is_valid());
    let g0 = t.zk.status().generation;
    // A kazoo waiter queues behind us...
    let py2 = py.clone();
    let waiter = tokio::spawn(async move { py2.hold(&["hold-lock", path, "--timeout", "30"]).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiter.is_finished());

    t.zk.expire_session().await.unwrap();
    // ...and gets the lock when our session dies.
    let (waiting, acquired) = waiter.await.unwrap();
    assert_eq!(acquired, json!({"acquired": true}));
    waiting.release().await;
    tokio::time::timeout(Duration::from_secs(20), guard.lost()).await.expect("holder is told");
    assert!(!guard.is_valid());
    assert!(t.zk.wait_connected(Duration::from_secs(20)).await.unwrap().generation > g0);

    // The ephemeral contender is gone: kazoo can take the lock now.
    assert!(
        eventually(Duration::from_secs(10), || async {
            py.run(&["try-lock", path], "").await == json!({"acquired": true})
        })
        .await
    );
    // And the new session works.
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    guard.release().await.unwrap();
}

#[tokio::test]
async fn caches_follow_changes_and_converge_after_session_expiry() {
    let t = TestZk::new().await;
    let nodes = NodeCache::start(&t.zk);
    let requests = RequestCache::start(&t.zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    assert!(requests.wait_ready(Duration::from_secs(10)).await);
    let mut events = nodes.subscribe();

    let other = t.second().await;
    let mut node = sample_node();
    other.zk.create_node(&mut node).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.id == node.id {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.kind, CacheEventKind::Upserted);

    // Lock contenders are tracked.
    let guard = other.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    assert!(eventually(Duration::from_secs(5), || async { nodes.get(&node.id).unwrap().is_locked() }).await);
    guard.release().await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { !nodes.get(&node.id).unwrap().is_locked() }).await);

    // Updates are applied in order.
    for state in [NodeState::InUse, NodeState::Used, NodeState::Hold] {
        node.set_state(state);
        other.zk.update_node(&node).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            nodes.get(&node.id).unwrap().value.state == NodeState::Hold
        })
        .await
    );

    // Changes made while our session is being replaced still show up.
    t.zk.expire_session().await.unwrap();
    let mut req = NodeRequest::new(vec!["x".into()]);
    other.zk.create_request(&mut req, 100, false).await.unwrap();
    let mut n2 = sample_node();
    other.zk.create_node(&mut n2).await.unwrap();
    other.zk.delete_node(&mut node).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            requests.get(&req.id).is_some() && nodes.get(&n2.id).is_some() && nodes.get(&node.id).is_none()
        })
        .await,
        "caches converge after a new session"
    );
}

/// A versioned write that loses to someone else's write must not leave the
/// cache stale: the other write's watch event may have been taken for ours.
#[tokio::test]
async fn failed_own_write_does_not_hide_a_concurrent_write() {
    let t = TestZk::new().await;
    let nodes = NodeCache::start(&t.zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { nodes.get(&node.id).is_some() }).await);
    let version = nodes.get(&node.id).unwrap().version;

    // Our write is announced; Zuul's write lands first and its event is
    // taken for ours; our versioned write then fails.
    nodes.expect_write(&node.id);
    let mut theirs = node.clone();
    theirs.set_state(NodeState::Used);
    t.zk.update_node(&theirs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ours = node.clone();
    ours.allocated_to = None;
    let stat = t.zk.set(&format!("/nodepool/nodes/{}", node.id), &ours.to_json(), Some(version)).await;
    assert!(stat.is_err(), "the stale versioned write fails");
    nodes.cancel_write(&node.id);
    assert!(
        eventually(Duration::from_secs(5), || async {
            nodes.get(&node.id).unwrap().value.state == NodeState::Used
        })
        .await,
        "the cache re-reads the record after a failed own write"
    );
}

#[tokio::test]
async fn component_registration_is_python_compatible_and_survives_expiry() {
    let t = TestZk::new().await;
    let mut record = ComponentRecord::new(ComponentKind::Pool, "testhost", "11.0.0", ComponentState::Running);
    record.pool = Some(PoolInfo {
        id: "testhost-PoolWorker.p-main-abc".into(),
        name: "main".into(),
        provider_name: "p".into(),
        supported_labels: vec!["a".into(), "b".into()],
        priority: 100,
        paused: false,
    });
    let reg = ComponentRegistration::register(&t.zk, record).await.unwrap();
    let path = reg.path().await.unwrap();
    assert!(path.starts_with("/nodepool/components/pool/testhost0"), "{path}");
    let raw = t.python().run(&["raw-get", &path], "").await;
    assert_eq!(
        raw["data"],
        json!(
            r#"{"hostname": "testhost", "id": "testhost-PoolWorker.p-main-abc", "kind": "pool", "model_api": 0, "name": "main", "paused": false, "priority": 100, "provider_name": "p", "state": "running", "supported_labels": ["a", "b"], "version": "11.0.0"}"#
        )
    );
    let cache = PoolComponentCache::start(&t.zk);
    assert!(cache.wait_ready(Duration::from_secs(10)).await);
    reg.update(|r| r.pool.as_mut().unwrap().paused = true).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            cache.values().iter().any(|c| c.pool.as_ref().unwrap().paused)
        })
        .await
    );

    t.zk.expire_session().await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let p = reg.path().await.unwrap();
            p != path && t.zk.exists(&p).await.ok().flatten().is_some()
        })
        .await,
        "re-registered under a new sequence"
    );
    let all = t.zk.components(ComponentKind::Pool).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].1.pool.as_ref().unwrap().paused);
    reg.unregister().await.unwrap();
    assert!(t.zk.components(ComponentKind::Pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn tls_connection_reads_and_writes_and_python_agrees() {
    let t = TestZk::new_tls().await;
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    let py = t.python().run(&["read-node", &node.id], "").await;
    assert_eq!(py["provider"], json!("fake-provider"));
    let guard = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    assert_eq!(t.python().run(&["lock-node", &node.id], "").await["acquired"], json!(false));
    guard.release().await.unwrap();
}

#[tokio::test]
async fn connecting_to_a_dead_server_fails_with_the_address_in_time() {
    let mut config = np_zk::ZkConfig::new("127.0.0.1:1");
    config.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = np_zk::Zk::connect(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn fulfilment_transaction_unlocks_nodes_writes_request_and_releases_its_lock() {
    let t = TestZk::new().await;
    let py = t.python();
    let requests = RequestCache::start(&t.zk);
    assert!(requests.wait_ready(Duration::from_secs(10)).await);
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    let mut req = NodeRequest::new(vec!["ubuntu-jammy".into()]);
    t.zk.create_request(&mut req, 200, false).await.unwrap();
    let req_lock = t.zk.lock_request(&req.id, LockOptions::try_once()).await.unwrap().unwrap();
    let node_lock = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    req.nodes = vec![node.id.clone()];
    req.set_state(RequestState::Fulfilled);
    t.zk.fulfil_request(&requests, &req, vec![node_lock], req_lock).await.map_err(|(e, _, _)| e).unwrap();
    assert_eq!(t.zk.get_request(&req.id).await.unwrap().unwrap().0.state, RequestState::Fulfilled);
    assert_eq!(
        py.run(&["try-lock", &format!("/nodepool/nodes/{}/lock", node.id)], "").await,
        json!({"acquired": true})
    );
    assert_eq!(
        py.run(&["try-lock", &format!("/nodepool/requests-lock/{}", req.id)], "").await,
        json!({"acquired": true})
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests.get(&req.id).is_some_and(|e| e.value.state == RequestState::Fulfilled)
        })
        .await
    );

    // A request deleted meanwhile (Zuul cancelled it): nothing changes and
    // the locks come back, still held.
    let mut gone = NodeRequest::new(vec!["x".into()]);
    t.zk.create_request(&mut gone, 200, false).await.unwrap();
    let req_lock = t.zk.lock_request(&gone.id, LockOptions::try_once()).await.unwrap().unwrap();
    let node_lock = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    t.zk.delete_request(&gone.id).await.unwrap();
    let (err, node_locks, req_lock) =
        t.zk.fulfil_request(&requests, &gone, vec![node_lock], req_lock).await.unwrap_err();
    assert!(err.is_no_node(), "{err}");
    assert_eq!(
        py.run(&["try-lock", &format!("/nodepool/nodes/{}/lock", node.id)], "").await,
        json!({"acquired": false})
    );
    for l in node_locks {
        l.release().await.unwrap();
    }
    req_lock.release().await.unwrap();
}

/// The request-lock cache sees a kazoo process take a request's lock and
/// sees the lock vanish when that process dies (the killed-launcher case of
/// issue 11: nothing in the request tree changes then).
#[tokio::test]
async fn request_lock_cache_follows_kazoo_locks_and_their_holders_death() {
    let t = TestZk::new().await;
    let locks = np_zk::RequestLockCache::requests(&t.zk);
    assert!(locks.wait_ready(Duration::from_secs(10)).await);
    let mut events = locks.subscribe();
    let py = t.python();
    let path = np_zk::paths::request_lock("200-0000000041");
    let (held, acquired) = py.hold(&["hold-lock", &path]).await;
    assert_eq!(acquired, json!({"acquired": true}));
    assert!(eventually(Duration::from_secs(5), || async { locks.is_locked("200-0000000041") }).await);
    assert!(!locks.is_locked("200-0000000042"));

    held.kill(); // the kazoo session expires (10 s) after the process dies
    assert!(eventually(Duration::from_secs(30), || async { !locks.is_locked("200-0000000041") }).await);
    // Both changes arrived as events naming the request.
    let mut seen = 0;
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if ev.kind == CacheEventKind::LockChanged && ev.id == "200-0000000041" {
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "one event for the lock taken, one for it gone");
    locks.stop();
}

/// After our session expires, a write made through the lock's fenced handle
/// fails and changes nothing, although the client has a new session (the
/// zombie case: nothing is acted on under a lock that is gone).
#[tokio::test]
async fn a_write_under_a_lock_lost_to_session_expiry_fails_and_changes_nothing() {
    let t = TestZk::new().await;
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    let guard = t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().unwrap();
    let fenced = guard.fenced();
    let g0 = t.zk.status().generation;
    t.zk.expire_session().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), guard.lost()).await.expect("the holder is told");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = t.zk.status();
            s.connected && s.generation > g0
        })
        .await
    );
    assert!(!guard.is_valid());
    assert!(!fenced.session_alive());

    let mut changed = node.clone();
    changed.state = NodeState::InUse;
    let err = fenced.update_node(&changed).await;
    assert!(err.is_err(), "a fenced write after expiry must fail: {err:?}");
    let (now, _) = t.zk.get_node(&node.id).await.unwrap().unwrap();
    assert_eq!(now.state, NodeState::Ready, "the record is untouched");
    // The unfenced client works on the new session.
    t.zk.update_node(&changed).await.unwrap();
}

/// A session resumed on a new connection (what a ZooKeeper restart or a
/// leader change shorter than the session timeout does) keeps every cache
/// following changes: the persistent watches are added again (the chaos
/// suite's launcher went deaf after a ZooKeeper restart, issue 11).
#[tokio::test]
async fn caches_keep_following_changes_after_the_session_moves_to_a_new_connection() {
    let t = TestZk::new().await;
    let target = np_testing::env("NP_ZK_HOSTS");
    let first = target.split(',').next().unwrap().to_owned();
    let proxy = np_testing::proxy::CutProxy::start(&first).await;
    let mut config = TestZk::config(false, &t.chroot);
    config.hosts = format!("{}{}", proxy.addr(), t.chroot);
    config.session_timeout = Duration::from_secs(20);
    let zk = np_zk::Zk::connect(config).await.unwrap();
    let nodes = NodeCache::start(&zk);
    let locks = np_zk::RequestLockCache::requests(&zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    assert!(locks.wait_ready(Duration::from_secs(10)).await);
    let session = zk.status().generation;

    for round in 0..2 {
        let mut status = zk.subscribe();
        proxy.cut();
        status.wait_for(|s| !s.connected).await.unwrap();
        status.wait_for(|s| s.connected).await.unwrap();
        assert_eq!(zk.status().generation, session, "the same session, resumed (round {round})");
        tokio::time::sleep(Duration::from_millis(500)).await; // the re-walk is done

        // Changes made after the reconnect, by another client, still arrive.
        let mut node = sample_node();
        t.zk.create_node(&mut node).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || async { nodes.get(&node.id).is_some() }).await,
            "the node cache missed a node created after reconnect {round}"
        );
        let id = format!("200-00000000{round}");
        let guard = t.zk.lock_request(&id, LockOptions::try_once()).await.unwrap().unwrap();
        assert!(
            eventually(Duration::from_secs(5), || async { locks.is_locked(&id) }).await,
            "the lock cache missed a lock taken after reconnect {round}"
        );
        guard.release().await.unwrap();
    }
    nodes.stop();
    locks.stop();
}

/// A node create that the server carried out but whose reply was lost (a
/// leader killed mid-request; here a proxy swallows the reply and then cuts
/// the connection) is found again instead of being made twice: the chaos
/// suite's ensemble scenario left an `init` node nobody owned and failed
/// the request (issue 11).
#[tokio::test]
async fn a_node_create_whose_reply_was_lost_is_found_not_made_twice() {
    let t = TestZk::new().await;
    let target = np_testing::env("NP_ZK_HOSTS");
    let first = target.split(',').next().unwrap().to_owned();
    let proxy = np_testing::proxy::CutProxy::start(&first).await;
    let mut config = TestZk::config(false, &t.chroot);
    config.hosts = format!("{}{}", proxy.addr(), t.chroot);
    config.session_timeout = Duration::from_secs(20);
    let zk = np_zk::Zk::connect(config).await.unwrap();
    let nodes = NodeCache::start(&zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    // Someone else's node before ours.
    t.zk.create_node(&mut sample_node()).await.unwrap();
    let after = nodes.created_watermark();

    let mut node = sample_node();
    node.state = NodeState::Init;
    node.allocated_to = Some("100-0000000007".into());
    proxy.swallow_replies();
    let create = tokio::spawn({
        let zk = zk.clone();
        let mut node = node.clone();
        async move {
            let stat = zk.create_node_once(&mut node, after).await;
            (node, stat)
        }
    });
    // The create reaches the server and is carried out; its reply is lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let (created, stat) = tokio::time::timeout(Duration::from_secs(30), create).await.unwrap().unwrap();
    let stat = stat.unwrap();
    assert_eq!(stat.version, 0);

    let mut mine = Vec::new();
    for id in t.zk.node_ids().await.unwrap() {
        if let Ok(Some((n, _))) = t.zk.get_node(&id).await {
            if n.allocated_to.as_deref() == Some("100-0000000007") {
                mine.push(id);
            }
        }
    }
    assert_eq!(mine, vec![created.id.clone()], "exactly one record, and the create returned it");
}

/// `wait_created` returns once the cache has applied the creation of a
/// given sequence number, and with it every record created before.
#[tokio::test]
async fn the_node_cache_says_when_it_has_seen_every_node_created_before_one() {
    let t = TestZk::new().await;
    let nodes = NodeCache::start(&t.zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    let other = t.second().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let mut node = sample_node();
        other.zk.create_node(&mut node).await.unwrap();
        ids.push(node.id);
    }
    let last: u64 = ids.last().unwrap().parse().unwrap();
    assert!(nodes.wait_created(last, Duration::from_secs(10)).await);
    for id in &ids {
        assert!(nodes.get(id).is_some(), "node {id} created before {last} is in the cache");
    }
    assert!(nodes.created_watermark() >= last);
    assert!(!nodes.wait_created(last + 1000, Duration::from_millis(300)).await, "not seen: times out");
    assert_eq!(np_zk::cache::record_sequence("0000000042"), Some(42));
    assert_eq!(np_zk::cache::record_sequence("100-0000000042"), Some(42));
    assert_eq!(np_zk::cache::record_sequence("foreign-3"), None);
}

/// A lock whose contender create was carried out but whose reply was lost
/// (a leader killed mid-request) is still taken, with exactly one
/// contender: the attempt finds its own contender by its unique prefix
/// instead of failing (the chaos suite's ensemble scenario failed a request
/// this way, issue 11).
#[tokio::test]
async fn a_lock_whose_contender_reply_was_lost_is_still_taken_once() {
    let t = TestZk::new().await;
    let target = np_testing::env("NP_ZK_HOSTS");
    let first = target.split(',').next().unwrap().to_owned();
    let proxy = np_testing::proxy::CutProxy::start(&first).await;
    let mut config = TestZk::config(false, &t.chroot);
    config.hosts = format!("{}{}", proxy.addr(), t.chroot);
    config.session_timeout = Duration::from_secs(20);
    let zk = np_zk::Zk::connect(config).await.unwrap();
    let mut node = sample_node();
    t.zk.create_node(&mut node).await.unwrap();
    // The lock directory exists already (as for a node locked before).
    t.zk.ensure_path(&format!("/nodepool/nodes/{}/lock", node.id)).await.unwrap();

    proxy.swallow_replies();
    let lock = tokio::spawn({
        let (zk, id) = (zk.clone(), node.id.clone());
        async move { zk.lock_node(&id, LockOptions::try_once()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let guard = tokio::time::timeout(Duration::from_secs(30), lock).await.unwrap().unwrap();
    let guard = guard.unwrap().expect("the lock is ours");
    let contenders = t.zk.children(&format!("/nodepool/nodes/{}/lock", node.id)).await.unwrap().unwrap();
    assert_eq!(contenders.len(), 1, "one contender: {contenders:?}");
    assert!(guard.contender_path().ends_with(&contenders[0]));
    // Someone else cannot take it.
    assert!(t.zk.lock_node(&node.id, LockOptions::try_once()).await.unwrap().is_none());
    guard.release().await.unwrap();
}

/// The node cache's indexes agree with a scan of its records after creates,
/// changes, lock contenders coming and going, and deletes (issue 13: the
/// launcher asks the indexes instead of scanning every node).
#[tokio::test]
async fn the_node_index_agrees_with_a_scan_of_the_records() {
    use np_core::Quota;
    let t = TestZk::new().await;
    let nodes = NodeCache::start(&t.zk);
    assert!(nodes.wait_ready(Duration::from_secs(10)).await);
    let mut ids = Vec::new();
    for i in 0..24u32 {
        let mut node = sample_node();
        node.provider = Some(["p1", "p2"][(i % 2) as usize].into());
        node.pool = Some(["a", "b", "c"][(i % 3) as usize].into());
        node.node_type = vec![["small", "large"][(i % 4 / 2) as usize].into()];
        node.state =
            [NodeState::Ready, NodeState::InUse, NodeState::Hold, NodeState::Ready][(i % 4) as usize];
        node.allocated_to = (i % 5 == 0).then(|| format!("200-00000000{:02}", i % 3));
        node.tenant_name = (i % 3 == 0).then(|| "tenant-a".into());
        node.resources = (i % 7 != 0).then(|| json!({"cores": 2 + i % 3, "ram": 1024, "instances": 1}));
        t.zk.create_node(&mut node).await.unwrap();
        ids.push(node.id);
    }
    let locked = t.zk.lock_node(&ids[0], LockOptions::try_once()).await.unwrap().unwrap();
    let locked2 = t.zk.lock_node(&ids[3], LockOptions::try_once()).await.unwrap().unwrap();
    for id in &ids[5..9] {
        let (mut n, _) = t.zk.get_node(id).await.unwrap().unwrap();
        n.state = NodeState::Ready;
        n.allocated_to = None;
        t.zk.update_node(&n).await.unwrap();
    }
    for id in &ids[20..] {
        let (mut n, _) = t.zk.get_node(id).await.unwrap().unwrap();
        t.zk.delete_node(&mut n).await.unwrap();
    }
    locked2.release().await.unwrap();

    let check = || {
        let entries = nodes.entries();
        nodes.index(|ix| {
            let cost = |n: &Node| n.resources.as_ref().map(Quota::from_resources);
            for provider in ["p1", "p2"] {
                for pool in ["a", "b", "c"] {
                    let mine: Vec<&np_zk::cache::Entry<Node>> = entries
                        .iter()
                        .filter(|e| e.value.provider.as_deref() == Some(provider))
                        .filter(|e| e.value.pool.as_deref() == Some(pool))
                        .collect();
                    let mut sized = Quota::zero();
                    for e in &mine {
                        if let Some(q) = cost(&e.value) {
                            sized.add(&q);
                        }
                    }
                    let got = ix.pool(provider, pool).map(|p| (p.usage.count, p.usage.sized.clone()));
                    let want = (!mine.is_empty()).then_some((mine.len() as u64, sized));
                    if got != want {
                        return Err(format!("{provider}/{pool}: {got:?} != {want:?}"));
                    }
                    for label in ["small", "large"] {
                        let free: std::collections::BTreeSet<String> = mine
                            .iter()
                            .filter(|e| e.value.state == NodeState::Ready && e.value.allocated_to.is_none())
                            .filter(|e| !e.is_locked() && e.value.has_label(label))
                            .map(|e| e.value.id.clone())
                            .collect();
                        let got = ix.free(provider, pool, label).cloned().unwrap_or_default();
                        if got != free {
                            return Err(format!("free {provider}/{pool}/{label}: {got:?} != {free:?}"));
                        }
                    }
                }
            }
            for label in ["small", "large"] {
                let ready = entries
                    .iter()
                    .filter(|e| e.value.state == NodeState::Ready && e.value.allocated_to.is_none())
                    .filter(|e| e.value.has_label(label))
                    .count() as u64;
                if ix.ready_unallocated(label) != ready {
                    return Err(format!("ready {label}: {} != {ready}", ix.ready_unallocated(label)));
                }
            }
            for r in 0..3 {
                let request = format!("200-00000000{r:02}");
                let want: std::collections::BTreeSet<String> = entries
                    .iter()
                    .filter(|e| e.value.allocated_to.as_deref() == Some(request.as_str()))
                    .map(|e| e.value.id.clone())
                    .collect();
                if ix.allocated_to(&request).cloned().unwrap_or_default() != want {
                    return Err(format!("allocated to {request}"));
                }
            }
            let mut tenant = Quota::zero();
            for e in entries.iter().filter(|e| e.value.tenant_name.as_deref() == Some("tenant-a")) {
                if let Some(q) = cost(&e.value) {
                    tenant.add(&q);
                }
            }
            if ix.tenant("tenant-a") != Some(&tenant) {
                return Err(format!("tenant: {:?} != {tenant:?}", ix.tenant("tenant-a")));
            }
            Ok(())
        })
    };
    let mut last = Err(String::new());
    for _ in 0..100 {
        last = check();
        if last.is_ok() && nodes.len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, Ok(()));
    assert_eq!(nodes.len(), 20);
    // A pool's nodes by sequence.
    let seq: u64 = ids[1].parse().unwrap();
    let (p, q) = (
        nodes.get(&ids[1]).unwrap().value.provider.clone().unwrap(),
        nodes.get(&ids[1]).unwrap().value.pool.clone().unwrap(),
    );
    let after = nodes.index(|ix| ix.pool(&p, &q).map_or(0, |u| u.created_since(seq).count()));
    let want = nodes
        .entries()
        .iter()
        .filter(|e| {
            e.value.provider.as_deref() == Some(p.as_str())
                && e.value.pool.as_deref() == Some(q.as_str())
                && e.value.id.parse::<u64>().unwrap() >= seq
        })
        .count();
    assert_eq!(after, want);
    locked.release().await.unwrap();
}
