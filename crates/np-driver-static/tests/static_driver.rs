//! Static driver against the real test ZooKeeper and a real `sshd` on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use np_core::{Node, NodeState};
use np_driver_static::keyscan::{self, KeyType, KeyscanError};
use np_driver_static::{free_ready_nodes_by_label, STATIC_LAUNCHER};
use np_testing::TestZk;
use np_zk::{LockOptions, NodeCache};
use serde_json::Value;
use support::{closed_port, host, provider, Fixture, Sshd, PROVIDER};

/// What the launcher's cleanup does with a returned node: `used`, then delete.
async fn return_and_delete(zk: &np_zk::Zk, id: &str) {
    let (mut node, _) = zk.get_node(id).await.unwrap().unwrap();
    node.set_state(NodeState::Used);
    zk.update_node(&node).await.unwrap();
    zk.delete_node(&mut node).await.unwrap();
}

/// Zuul takes a node: lock it (held by `holder`) and mark it in use.
async fn take(holder: &np_zk::Zk, id: &str) -> np_zk::LockGuard {
    let lock = holder.lock_node(id, LockOptions::try_once()).await.unwrap().expect("node lock");
    let (mut node, _) = holder.get_node(id).await.unwrap().unwrap();
    node.allocated_to = Some("100-0000000001".into());
    node.set_state(NodeState::InUse);
    holder.update_node(&node).await.unwrap();
    lock
}

#[tokio::test]
async fn keyscan_returns_the_real_host_keys() {
    let sshd = Sshd::start();
    let keys = keyscan::scan_host_keys("127.0.0.1", sshd.port, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(keys, sshd.keys, "ed25519, ecdsa, rsa in upstream order");
    assert!(keys[0].starts_with("ssh-ed25519 "));
    assert!(keys[1].starts_with("ecdsa-sha2-nistp256 "));
    assert!(keys[2].starts_with("ssh-rsa "));
    let rsa = keyscan::scan_host_keys("127.0.0.1", sshd.port, Duration::from_secs(5), Some(&[KeyType::Rsa]))
        .await
        .unwrap();
    assert_eq!(rsa, vec![sshd.keys[2].clone()]);
    let waited = keyscan::wait_for_ssh("127.0.0.1", sshd.port, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(waited, sshd.keys);
    keyscan::wait_for_port("127.0.0.1", sshd.port, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn unreachable_port_gives_a_timely_error() {
    let port = closed_port();
    let started = Instant::now();
    let err = keyscan::wait_for_ssh("127.0.0.1", port, Duration::from_secs(2), None).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "took {took:?}");
    assert!(matches!(err, KeyscanError::Timeout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("refused") && msg.contains(&port.to_string()), "{msg}");

    let err =
        keyscan::scan_host_keys("no-such-host.invalid", 22, Duration::from_secs(2), None).await.unwrap_err();
    assert!(matches!(err, KeyscanError::Resolve { .. }), "{err:?}");

    // The sync does not register a host it cannot reach.
    let mut node = host("127.0.0.1", port, &["small"]);
    node.host_key_checking = true;
    let f = Fixture::start(provider(vec![node])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(f.ours().is_empty(), "{:#?}", f.ours());
    f.stop().await;
}

#[tokio::test]
async fn registers_slots_with_scanned_host_keys() {
    let sshd = Sshd::start();
    let mut node = host("127.0.0.1", sshd.port, &["small", "ssh-lo"]);
    node.host_key_checking = true;
    node.host_keys = vec![format!("{} comment@ignored", sshd.keys[0])];
    node.max_parallel_jobs = 2;
    node.username = "ci".into();
    node.shell_type = Some("bash".into());
    let f = Fixture::start(provider(vec![node])).await;
    f.until("two ready slots", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 2).await;
    let nodes = f.ours();
    let mut slots: Vec<i64> = nodes.iter().filter_map(|n| n.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![0, 1]);
    for n in &nodes {
        // What is stored in ZooKeeper, not just the cache.
        let (stored, _) = f.tz.zk.get_node(&n.id).await.unwrap().unwrap();
        assert_eq!(stored.state, NodeState::Ready);
        assert_eq!(stored.provider.as_deref(), Some(PROVIDER));
        assert_eq!(stored.pool.as_deref(), Some("main"));
        assert_eq!(stored.node_type, vec!["small".to_owned(), "ssh-lo".to_owned()]);
        assert_eq!(stored.launcher.as_deref(), Some(STATIC_LAUNCHER));
        assert_eq!(stored.hostname.as_deref(), Some("127.0.0.1"));
        assert_eq!(stored.interface_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(stored.public_ipv4.as_deref(), Some("127.0.0.1"));
        assert_eq!(stored.external_id, Some(Value::from("127.0.0.1")));
        assert_eq!(stored.connection_port, Value::from(sshd.port));
        assert_eq!(stored.connection_type.as_deref(), Some("ssh"));
        assert_eq!(stored.username.as_deref(), Some("ci"));
        assert_eq!(stored.python_path.as_deref(), Some("auto"));
        assert_eq!(stored.shell_type.as_deref(), Some("bash"));
        assert_eq!(stored.host_keys, sshd.keys);
        assert_eq!(stored.attributes, Some(serde_json::json!({"executor-zone": "lo"})));
        assert_eq!(stored.allocated_to, None);
        assert!(stored.created_time.is_some());
        let raw = f.tz.zk.get(&np_zk::paths::node(&n.id)).await.unwrap().unwrap().0;
        let json: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(json["ssh_port"], Value::from(sshd.port));
        assert_eq!(json["resources"], Value::Null);
    }
    let free = free_ready_nodes_by_label(&f.nodes, PROVIDER, Some("main"));
    assert_eq!(free.get("small"), Some(&2));
    // A pass with nothing to do writes nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.ours().len(), 2);
    f.stop().await;
}

#[tokio::test]
async fn mismatching_host_key_blocks_registration_until_fixed() {
    let sshd = Sshd::start();
    let mut node = host("127.0.0.1", sshd.port, &["small"]);
    node.host_key_checking = true;
    // Generous: ssh-keyscan on a loaded 2-core CI machine took over 2 s.
    node.timeout = Duration::from_secs(10);
    node.host_keys =
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBogusBogusBogusBogusBogusBogusBogusBogus".into()];
    let f = Fixture::start(provider(vec![node.clone()])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(f.ours().is_empty(), "registered despite a host-key mismatch: {:#?}", f.ours());
    let err = np_driver_static::sync::check_host(&node).await.unwrap_err();
    assert!(err.to_string().contains("host key mismatches"), "{err}");

    node.host_keys = vec![sshd.keys[2].clone()];
    f.handle.update_config(provider(vec![node]));
    f.until("registered after the key was fixed", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 1)
        .await;
    f.stop().await;
}

#[tokio::test]
async fn host_key_checking_off_uses_configured_keys_without_connecting() {
    // Nothing listens on the port: checking off must not connect.
    let mut node = host("127.0.0.1", closed_port(), &["small"]);
    node.host_keys = vec!["ssh-rsa AAAAconfigured".into()];
    let f = Fixture::start(provider(vec![node])).await;
    f.until("registered", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 1).await;
    assert_eq!(f.ours()[0].host_keys, vec!["ssh-rsa AAAAconfigured".to_owned()]);
    f.stop().await;
}

#[tokio::test]
async fn returned_node_is_reregistered_after_cleanup_deletes_it() {
    let f = Fixture::start(provider(vec![host("127.0.0.1", 22, &["small"])])).await;
    f.until("registered", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 1).await;
    let first = f.ours()[0].clone();
    let zk = &f.tz.zk;

    // While the old record is being deleted, its slot stays taken.
    let (mut old, _) = zk.get_node(&first.id).await.unwrap().unwrap();
    old.set_state(NodeState::Deleting);
    zk.update_node(&old).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(f.ours().len(), 1, "re-registered before the old record was gone: {:#?}", f.ours());

    zk.delete_node(&mut old).await.unwrap();
    f.until("re-registered", |f| {
        let n = f.of_host("127.0.0.1", NodeState::Ready);
        n.len() == 1 && n[0].id != first.id
    })
    .await;
    let second = f.ours()[0].clone();
    assert_eq!(second.slot, Some(0));

    // Used and deleted by the launcher, promptly back.
    let started = Instant::now();
    return_and_delete(zk, &second.id).await;
    f.until("re-registered again", |f| {
        let n = f.of_host("127.0.0.1", NodeState::Ready);
        n.len() == 1 && n[0].id != second.id
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    f.stop().await;
}

#[tokio::test]
async fn config_changes_touch_only_free_nodes() {
    let keep_busy = host("127.0.0.1", 22001, &["a"]);
    let keep_free = host("127.0.0.1", 22002, &["a"]);
    let drop_busy = host("127.0.0.2", 22003, &["b"]);
    let drop_free = host("127.0.0.2", 22004, &["b"]);
    let f = Fixture::start(provider(vec![
        keep_busy.clone(),
        keep_free.clone(),
        drop_busy.clone(),
        drop_free.clone(),
    ]))
    .await;
    f.until("four nodes", |f| f.ours().len() == 4 && f.ours().iter().all(|n| n.state == NodeState::Ready))
        .await;
    let by_port = |f: &Fixture, port: u16| -> Vec<Node> {
        f.ours().into_iter().filter(|n| n.connection_port.as_u64() == Some(u64::from(port))).collect()
    };
    let busy_keep = by_port(&f, 22001)[0].clone();
    let free_keep = by_port(&f, 22002)[0].clone();
    let busy_drop = by_port(&f, 22003)[0].clone();
    let free_drop = by_port(&f, 22004)[0].clone();

    // Zuul (another session) holds two of them.
    let zuul = f.tz.second().await;
    let lock_keep = take(&zuul.zk, &busy_keep.id).await;
    let lock_drop = take(&zuul.zk, &busy_drop.id).await;
    f.until("in use", |f| by_port(f, 22001)[0].state == NodeState::InUse).await;

    // New config: labels changed on both kept hosts, two hosts removed, one added.
    let mut keep_busy2 = keep_busy.clone();
    keep_busy2.labels = vec!["a2".into()];
    let mut keep_free2 = keep_free.clone();
    keep_free2.labels = vec!["a2".into()];
    keep_free2.python_path = "/usr/bin/python3".into();
    let added = host("127.0.0.3", 22005, &["c"]);
    f.handle.update_config(provider(vec![keep_busy2, keep_free2, added]));

    f.until("added host registered", |f| by_port(f, 22005).len() == 1).await;
    f.until("free kept host updated in place", |f| {
        let n = by_port(f, 22002);
        n.len() == 1 && n[0].id == free_keep.id && n[0].node_type == vec!["a2".to_owned()]
    })
    .await;
    assert_eq!(by_port(&f, 22002)[0].python_path.as_deref(), Some("/usr/bin/python3"));
    f.until("free removed host deregistered", |f| {
        by_port(f, 22004).iter().all(|n| n.id == free_drop.id && n.state == NodeState::Deleting)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let busy = by_port(&f, 22001);
    assert_eq!((busy.len(), busy[0].state), (1, NodeState::InUse));
    assert_eq!(busy[0].node_type, vec!["a".to_owned()], "in-use node must keep its old labels");
    let busy = by_port(&f, 22003);
    assert_eq!((busy.len(), busy[0].state), (1, NodeState::InUse), "in-use removed node must stay");

    // The launcher deletes the deregistered node; it does not come back.
    let (mut gone, _) = f.tz.zk.get_node(&free_drop.id).await.unwrap().unwrap();
    f.tz.zk.delete_node(&mut gone).await.unwrap();

    // Zuul returns both busy nodes; the launcher deletes them.
    lock_keep.release().await.unwrap();
    lock_drop.release().await.unwrap();
    return_and_delete(&f.tz.zk, &busy_keep.id).await;
    return_and_delete(&f.tz.zk, &busy_drop.id).await;
    f.until("kept host re-registered from the new config", |f| {
        let n = by_port(f, 22001);
        n.len() == 1 && n[0].id != busy_keep.id && n[0].node_type == vec!["a2".to_owned()]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(by_port(&f, 22003).is_empty(), "removed host came back: {:#?}", by_port(&f, 22003));
    assert!(by_port(&f, 22004).is_empty());
    assert_eq!(f.ours().len(), 3);
    f.stop().await;
}

#[tokio::test]
async fn max_parallel_jobs_changes_per_slot() {
    let mut node = host("127.0.0.1", 22, &["small"]);
    node.max_parallel_jobs = 3;
    let f = Fixture::start(provider(vec![node.clone()])).await;
    f.until("three slots", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 3).await;
    let slot = |f: &Fixture, s: i64| {
        f.ours().into_iter().find(|n| n.slot == Some(s) && n.state != NodeState::Deleting)
    };
    let slot2 = slot(&f, 2).unwrap();
    let slot1 = slot(&f, 1).unwrap();
    let zuul = f.tz.second().await;
    let lock = take(&zuul.zk, &slot2.id).await;
    f.until("slot 2 in use", |f| slot(f, 2).is_some_and(|n| n.state == NodeState::InUse)).await;

    node.max_parallel_jobs = 1;
    f.handle.update_config(provider(vec![node.clone()]));
    f.until("slot 1 deregistered", |f| {
        f.ours().iter().any(|n| n.id == slot1.id && n.state == NodeState::Deleting)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slot(&f, 2).map(|n| n.state), Some(NodeState::InUse), "busy slot 2 must be left alone");

    // Slot 2 is returned and deleted; it is not registered again.
    lock.release().await.unwrap();
    return_and_delete(&f.tz.zk, &slot2.id).await;
    let (mut s1, _) = f.tz.zk.get_node(&slot1.id).await.unwrap().unwrap();
    f.tz.zk.delete_node(&mut s1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ready = f.of_host("127.0.0.1", NodeState::Ready);
    assert_eq!(ready.len(), 1, "{ready:#?}");
    assert_eq!(ready[0].slot, Some(0));

    // Increase: new slots 1 and 2.
    node.max_parallel_jobs = 3;
    f.handle.update_config(provider(vec![node]));
    f.until("three slots again", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 3).await;
    let mut slots: Vec<i64> = f.ours().iter().filter_map(|n| n.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![0, 1, 2]);
    drop(zuul);
    f.stop().await;
}

#[tokio::test]
async fn foreign_malformed_and_legacy_nodes() {
    let tz = TestZk::new().await;
    let zk = tz.zk.clone();
    // Another provider's node for the very same host.
    let mut foreign = Node::new(NodeState::Ready);
    foreign.provider = Some("other-static".into());
    foreign.hostname = Some("127.0.0.1".into());
    foreign.node_type = vec!["old".into()];
    foreign.slot = Some(0);
    zk.create_node(&mut foreign).await.unwrap();
    // Not a node record at all.
    let (bad_path, _) = zk
        .create("/nodepool/nodes/", b"not json", zookeeper_client::CreateMode::PersistentSequential, true)
        .await
        .unwrap();
    // Ours, but without a usable identity (object port): never touched.
    let mut odd = Node::new(NodeState::Ready);
    odd.provider = Some(PROVIDER.into());
    odd.hostname = Some("127.0.0.9".into());
    odd.connection_port = serde_json::json!({"name": "pod"});
    zk.create_node(&mut odd).await.unwrap();
    // Ours, registered by an older version without a slot: adopted, updated in place.
    let mut legacy = Node::new(NodeState::Ready);
    legacy.provider = Some(PROVIDER.into());
    legacy.pool = Some("main".into());
    legacy.hostname = Some("127.0.0.1".into());
    legacy.username = Some("zuul".into());
    legacy.connection_port = Value::from(22);
    legacy.node_type = vec!["old".into()];
    zk.create_node(&mut legacy).await.unwrap();
    let before = |path: String| {
        let zk = zk.clone();
        async move { zk.get(&path).await.unwrap().unwrap().0 }
    };
    let foreign_bytes = before(np_zk::paths::node(&foreign.id)).await;
    let odd_bytes = before(np_zk::paths::node(&odd.id)).await;

    let nodes = NodeCache::start(&zk);
    assert!(nodes.wait_ready(Duration::from_secs(20)).await);
    let mut cfg = host("127.0.0.1", 22, &["small"]);
    cfg.max_parallel_jobs = 2;
    let f = Fixture::start_in(tz, nodes, provider(vec![cfg])).await;
    f.until("legacy node updated and second slot registered", |f| {
        let ready = f.of_host("127.0.0.1", NodeState::Ready);
        ready.len() == 2
            && ready.iter().all(|n| n.node_type == vec!["small".to_owned()])
            && ready.iter().any(|n| n.id == legacy.id)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.tz.zk.get(&np_zk::paths::node(&foreign.id)).await.unwrap().unwrap().0, foreign_bytes);
    assert_eq!(f.tz.zk.get(&np_zk::paths::node(&odd.id)).await.unwrap().unwrap().0, odd_bytes);
    assert_eq!(f.tz.zk.get(&bad_path).await.unwrap().unwrap().0, b"not json".to_vec());
    f.stop().await;
}

#[tokio::test]
async fn liveness_check_deregisters_a_dead_host() {
    let mut sshd = Sshd::start();
    let mut node = host("127.0.0.1", sshd.port, &["small"]);
    node.host_key_checking = true;
    let f = Fixture::start(provider(vec![node])).await;
    f.until("registered", |f| f.of_host("127.0.0.1", NodeState::Ready).len() == 1).await;
    let n = f.ours()[0].clone();
    assert_eq!(n.host_keys, sshd.keys);
    assert!(f.handle.check_node_liveness(&n).await);

    sshd.stop();
    let started = Instant::now();
    assert!(!f.handle.check_node_liveness(&n).await);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    f.until("dead node deregistered", |f| {
        f.ours().iter().any(|x| x.id == n.id && x.state == NodeState::Deleting)
    })
    .await;
    // The launcher deletes it; a dead host is not registered again.
    let (mut dead, _) = f.tz.zk.get_node(&n.id).await.unwrap().unwrap();
    f.tz.zk.delete_node(&mut dead).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(f.ours().is_empty(), "{:#?}", f.ours());
    f.stop().await;
}
