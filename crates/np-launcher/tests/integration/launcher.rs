//! End-to-end launcher tests: the launcher in-process with a fake cloud, a real
//! ZooKeeper, and a Python client that behaves like Zuul 14.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_core::{NodeRequest, NodeState, RequestState};
use np_driver_fake::FakeSettings;
use np_testing::{env, eventually, repo_root, TestZk};

use crate::common::{self, reaches, state_of, submit, FakeConfig};

fn config(max_servers: u32, min_ready: u32) -> np_config::Config {
    FakeConfig::new(&["small", "large"])
        .label("small", &format!("min-ready: {min_ready}"))
        .pool(&format!("max-servers: {max_servers}"))
        .load()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

fn zuul_client(t: &TestZk, labels: &str, count: u32, outstanding: u32) -> std::process::Output {
    std::process::Command::new(env("NP_PYTHON"))
        .arg(repo_root().join("tests/python/zuul_client.py"))
        .args(["--hosts", &format!("{}{}", env("NP_ZK_HOSTS"), t.chroot)])
        .args(["--labels", labels, "--count", &count.to_string(), "--outstanding", &outstanding.to_string()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zuul_like_client_gets_every_node_and_they_come_back() {
    let mut cfg = config(10, 0);
    cfg.webapp = np_config::WebApp { port: 0, listen_address: "127.0.0.1".into() };
    let (t, cloud, mut launcher) = common::fake_launcher(&cfg, FakeSettings::default()).await;
    let web = launcher.start_webapp().await.unwrap();

    let t2 = TestZk::with(false, Some(&t.chroot)).await;
    let out =
        tokio::task::spawn_blocking(move || zuul_client(&t2, "small,large,small", 12, 3)).await.unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(summary["done"], 12, "{summary}");
    assert_eq!(summary["error_count"], 0, "{summary}");

    // Every used node is deleted, in ZooKeeper and in the cloud.
    assert!(
        eventually(Duration::from_secs(20), || async {
            t.zk.node_ids().await.unwrap().is_empty() && cloud.server_ids().is_empty()
        })
        .await,
        "used nodes must be cleaned up: {:?}",
        t.zk.node_ids().await
    );
    assert_eq!(cloud.counts().0, 36);

    // The launches and fulfilments were measured.
    let metrics = http_get(web, "/metrics").await;
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("provider=\"fake-provider\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(count("nodepool_request_fulfillment_seconds_count") >= 12.0, "{metrics}");
    assert!(count("nodepool_launch_duration_seconds_count") >= 36.0, "{metrics}");
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nodepool_lists_our_nodes() {
    let (t, cloud, launcher) = common::fake_launcher(&config(10, 2), FakeSettings::default()).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            launcher.shared().nodes.values().iter().filter(|n| n.state == NodeState::Ready).count() == 2
        })
        .await
    );
    // Exactly min-ready: no extra nodes appear once the requests settle.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cloud.counts().0, 2, "min-ready launched too many nodes");
    let listed = t.python().run(&["list-nodes"], "").await;
    let states: Vec<&str> = listed.as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["ready", "ready"]);
    for n in listed.as_array().unwrap() {
        let full = t.python().run(&["read-node", n["id"].as_str().unwrap()], "").await;
        assert_eq!(full["provider"], "fake-provider");
        assert_eq!(full["allocated_to"], serde_json::Value::Null, "min-ready nodes are handed back");
        assert!(full["interface_ip"].as_str().unwrap().starts_with("127."));
        assert_eq!(full["resources"]["cores"], 4);
    }
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_unknown_label_fails_when_every_pool_declined() {
    let (t, _cloud, launcher) = common::fake_launcher(&config(10, 0), FakeSettings::default()).await;
    let id = submit(&t, &["no-such-label"]).await;
    assert!(reaches(&t, &id, RequestState::Failed, Duration::from_secs(10)).await);
    let (r, _) = t.zk.get_request(&id).await.unwrap().unwrap();
    assert_eq!(r.declined_by.len(), 1);
    assert!(r.declined_by[0].contains("PoolWorker.fake-provider-main-"), "{:?}", r.declined_by);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_pauses_at_quota_and_resumes_when_nodes_are_returned() {
    let (t, _cloud, launcher) = common::fake_launcher(&config(1, 0), FakeSettings::default()).await;
    let first = submit(&t, &["small"]).await;
    assert!(reaches(&t, &first, RequestState::Fulfilled, Duration::from_secs(10)).await);
    let second = submit(&t, &["large"]).await;
    // At quota: accepted (pending) but not fulfilled; the pool shows as paused.
    assert!(common::pool_paused(&launcher, Duration::from_secs(10)).await);
    let (r, _) = t.zk.get_request(&second).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Pending);
    // Zuul returns the first node: used -> deleted -> quota frees -> second fulfilled.
    common::return_request(&t, &first).await;
    assert!(reaches(&t, &second, RequestState::Fulfilled, Duration::from_secs(15)).await);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launches_are_retried_then_the_request_fails_and_nothing_leaks() {
    let (t, cloud, launcher) = common::fake_launcher(&config(10, 0), FakeSettings::default()).await;
    // Upstream's default launch-retries is 3: two failures are absorbed.
    cloud.fail_next_launches(2);
    let ok = submit(&t, &["small"]).await;
    assert!(reaches(&t, &ok, RequestState::Fulfilled, Duration::from_secs(10)).await);
    cloud.fail_next_launches(3);
    let bad = submit(&t, &["large"]).await;
    assert!(reaches(&t, &bad, RequestState::Failed, Duration::from_secs(10)).await);
    // The failed node is deleted; only the fulfilled request's node remains.
    assert!(
        eventually(Duration::from_secs(10), || async { t.zk.node_ids().await.unwrap().len() == 1 }).await
    );
    assert_eq!(cloud.server_ids().len(), 1);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_releases_locks_and_unregisters() {
    let (t, _cloud, launcher) = common::fake_launcher(&config(10, 1), FakeSettings::default()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.components(np_core::ComponentKind::Pool).await.unwrap().len() == 1
        })
        .await
    );
    launcher.stop().await;
    assert!(t.zk.components(np_core::ComponentKind::Pool).await.unwrap().is_empty());
    assert!(t.zk.components(np_core::ComponentKind::Launcher).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_defer_requests_without_declining() {
    let config = FakeConfig::new(&["small"])
        .top("tenant-resource-limits:\n  - tenant-name: tenant-one\n    max-servers: 1")
        .pool("max-servers: 10")
        .load();
    let (t, _cloud, launcher) = common::fake_launcher(&config, FakeSettings::default()).await;
    let mut reqs = Vec::new();
    for tenant in ["tenant-one", "tenant-one", "tenant-two"] {
        reqs.push(common::submit_with(&t, &["small"], |r| r.tenant_name = Some(tenant.into())).await);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&t, &reqs[0]).await == RequestState::Fulfilled
                && state_of(&t, &reqs[2]).await == RequestState::Fulfilled
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second, _) = t.zk.get_request(&reqs[1]).await.unwrap().unwrap();
    assert_eq!(second.state, RequestState::Requested, "deferred, not declined");
    assert!(second.declined_by.is_empty());
    // The tenant's node is returned and deleted: the deferred request goes through.
    let (first, _) = t.zk.get_request(&reqs[0]).await.unwrap().unwrap();
    let (mut node, _) = t.zk.get_node(&first.nodes[0]).await.unwrap().unwrap();
    node.set_state(NodeState::Used);
    t.zk.update_node(&node).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            state_of(&t, &reqs[1]).await == RequestState::Fulfilled
        })
        .await
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_changed_pools_and_keeps_work_in_flight() {
    let (t, cloud, mut launcher) = common::fake_launcher(
        &config(10, 0),
        FakeSettings { launch_delay: Duration::from_millis(1500), ..FakeSettings::default() },
    )
    .await;
    assert!(eventually(Duration::from_secs(10), || async { launcher.shared().pools.len() == 1 }).await);
    let id = submit(&t, &["small"]).await;
    assert!(reaches(&t, &id, RequestState::Pending, Duration::from_secs(5)).await);
    // Same config: nothing restarts.
    let before: Vec<String> =
        launcher.shared().pools.values().iter().map(|c| c.pool.as_ref().unwrap().id.clone()).collect();
    launcher.reload(&config(10, 0)).await.unwrap();
    // A changed pool (max-servers) drains: the in-flight launch still completes.
    launcher.reload(&config(8, 0)).await.unwrap();
    assert!(
        reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(10)).await,
        "work in flight survives the reload"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let now: Vec<String> = launcher
                .shared()
                .pools
                .values()
                .iter()
                .map(|c| c.pool.as_ref().unwrap().id.clone())
                .collect();
            now.len() == 1 && now != before
        })
        .await
    );
    // The same simulated cloud is kept: the node's instance still exists.
    assert_eq!(cloud.server_ids().len(), 1);
    launcher.stop().await;
}

/// A request that another launcher holds locked while this one looks at it
/// is looked at again once the lock is gone. Request locks live outside the
/// request tree, so their release is no cache event: without the pool's own
/// retry the request would wait for some unrelated event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_locked_elsewhere_is_taken_once_the_lock_is_released() {
    let (t, _cloud, launcher) = common::fake_launcher(&config(10, 0), FakeSettings::default()).await;
    assert!(eventually(Duration::from_secs(10), || async { launcher.shared().pools.len() == 1 }).await);
    // Another launcher deciding on the request: its lock is taken before
    // the request appears, so the pool finds it locked on its first look.
    let mut req = NodeRequest::new(vec!["small".into()]);
    req.id = "200-0000000000".into();
    let other = t.second().await;
    let lock = other.zk.lock_request(&req.id, np_zk::LockOptions::try_once()).await.unwrap().unwrap();
    t.zk.create_request(&mut req, 200, false).await.unwrap();
    assert_eq!(req.id, "200-0000000000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_of(&t, &req.id).await, RequestState::Requested);
    lock.release().await.unwrap();
    let fulfilled = reaches(&t, &req.id, RequestState::Fulfilled, Duration::from_secs(5)).await;
    assert!(fulfilled, "the pool looked again after the lock was released");
    launcher.stop().await;
}

/// A min-ready request that fails (here: the cloud allows no instance, so
/// every pool declines it) is asked for again only after a delay; before,
/// it was deleted and made again at once, in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_min_ready_request_is_not_made_again_at_once() {
    let cfg = config(10, 1);
    let settings = FakeSettings { max_instances: Some(0), ..FakeSettings::default() };
    let (t, cloud, launcher) = common::fake_launcher(&cfg, settings).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Request ids are sequential: a probe's number counts the requests made
    // before it (the first min-ready request, which failed).
    let probe = submit(&t, &["large"]).await;
    let seq = common::requests_before(&probe);
    assert!(seq <= 2, "min-ready made {seq} requests in 4 s for a label no pool can serve");
    assert!(reaches(&t, &probe, RequestState::Failed, Duration::from_secs(10)).await);
    assert_eq!(cloud.counts().0, 0);
    launcher.stop().await;
}
