//! Routing between pools, providers and launchers (upstream matrix H).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use np_core::{NodeRequest, RequestState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};

use crate::common::{self, FakeConfig};

fn provider(name: &str, priority: i64, max_servers: u32, labels: &[&str]) -> String {
    FakeConfig::new(labels)
        .name(name)
        .provider(&format!("priority: {priority}"))
        .pool(&format!("max-servers: {max_servers}"))
        .provider_entry()
}

fn config(labels: &[&str], providers: &[String]) -> np_config::Config {
    let top: String = labels.iter().map(|l| format!("  - name: {l}\n")).collect();
    let text =
        format!("zookeeper-servers:\n  - host: 127.0.0.1\nlabels:\n{top}providers:\n{}", providers.concat());
    np_config::load_str(&text, "routing.yaml").unwrap()
}

async fn start(t: &TestZk, config: &np_config::Config) -> (Launcher, HashMap<String, FakeCloud>) {
    let clouds: HashMap<String, FakeCloud> = config
        .providers
        .iter()
        .map(|p| (p.name.clone(), FakeCloud::new(&p.name, FakeSettings::default())))
        .collect();
    let launcher = common::start_launcher(t, config, &clouds, None).await;
    // Every provider of this launcher has registered its pool (the cache
    // also holds other launchers' pools in the same chroot).
    let registered = || {
        let providers: Vec<String> = launcher.shared().pools.scan(|entries| {
            entries.filter_map(|e| e.value.pool.as_ref().map(|p| p.provider_name.clone())).collect()
        });
        config.providers.iter().all(|p| providers.contains(&p.name))
    };
    assert!(eventually(Duration::from_secs(10), || async { registered() }).await);
    (launcher, clouds)
}

async fn submit(t: &TestZk, labels: &[&str], f: impl FnOnce(&mut NodeRequest)) -> String {
    common::submit_with(t, labels, f).await
}

async fn fulfilled_by(t: &TestZk, id: &str) -> Vec<String> {
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.get_request(id).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await,
        "request {id} not fulfilled"
    );
    let r = t.zk.get_request(id).await.unwrap().unwrap().0;
    let mut out = Vec::new();
    for n in r.nodes {
        out.push(t.zk.get_node(&n).await.unwrap().unwrap().0.provider.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_provider_is_honoured_and_unknown_ones_fall_back() {
    let t = TestZk::new().await;
    let cfg = config(&["x"], &[provider("a", 100, 10, &["x"]), provider("b", 100, 10, &["x"])]);
    let (launcher, _) = start(&t, &cfg).await;
    for _ in 0..3 {
        let id = submit(&t, &["x"], |r| r.provider = Some("b".into())).await;
        assert_eq!(fulfilled_by(&t, &id).await, vec!["b"]);
    }
    let id = submit(&t, &["x"], |r| r.provider = Some("no-such-provider".into())).await;
    assert_eq!(fulfilled_by(&t, &id).await.len(), 1);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_number_wins_until_it_pauses() {
    let t = TestZk::new().await;
    let cfg = config(&["x"], &[provider("first", 1, 1, &["x"]), provider("second", 2, 10, &["x"])]);
    let (launcher, _) = start(&t, &cfg).await;
    let one = submit(&t, &["x"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &one).await, vec!["first"]);
    // "first" is at max-servers: it pauses with the next request...
    let two = submit(&t, &["x"], |_| {}).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            launcher.shared().pools.values().iter().any(|c| c.pool.as_ref().unwrap().paused)
                || t.zk.get_request(&two).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await
    );
    // ...and while it is paused, the next request goes to "second".
    let three = submit(&t, &["x"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &three).await, vec!["second"]);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pools_with_the_label_serve_it_and_nodes_follow_request_order() {
    let t = TestZk::new().await;
    let cfg =
        config(&["x", "y", "z"], &[provider("px", 100, 10, &["x", "z"]), provider("py", 100, 10, &["y"])]);
    let (launcher, _) = start(&t, &cfg).await;
    let id = submit(&t, &["y"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &id).await, vec!["py"]);
    let id = submit(&t, &["z", "x", "z", "x"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &id).await, vec!["px"; 4]);
    let r = t.zk.get_request(&id).await.unwrap().unwrap().0;
    let mut labels = Vec::new();
    for n in &r.nodes {
        labels.push(t.zk.get_node(n).await.unwrap().unwrap().0.node_type[0].clone());
    }
    assert_eq!(labels, vec!["z", "x", "z", "x"], "nodes follow node_types order");
    // A label nobody serves: both pools decline, then it fails.
    let id = submit(&t, &["x", "y"], |_| {}).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.get_request(&id).await.unwrap().unwrap().0.state == RequestState::Failed
        })
        .await
    );
    assert_eq!(t.zk.get_request(&id).await.unwrap().unwrap().0.declined_by.len(), 2);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_relative_priority_is_served_first() {
    let t = TestZk::new().await;
    // Submitted before any launcher runs: the later, more urgent one goes first.
    let late = submit(&t, &["x"], |r| r.relative_priority = 5).await;
    let urgent = submit(&t, &["x"], |r| r.relative_priority = 0).await;
    let cfg = config(&["x"], &[provider("a", 100, 1, &["x"])]);
    let (launcher, _) = start(&t, &cfg).await;
    fulfilled_by(&t, &urgent).await;
    assert_ne!(t.zk.get_request(&late).await.unwrap().unwrap().0.state, RequestState::Fulfilled);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_launchers_share_the_work() {
    let t = TestZk::new().await;
    let t2 = t.second().await;
    let (l1, _) = start(&t, &config(&["x"], &[provider("a", 100, 10, &["x"])])).await;
    let (l2, _) = start(&t2, &config(&["y"], &[provider("b", 100, 10, &["y"])])).await;
    let x = submit(&t, &["x"], |_| {}).await;
    let y = submit(&t, &["y"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &x).await, vec!["a"]);
    assert_eq!(fulfilled_by(&t, &y).await, vec!["b"]);
    // A label only the second launcher knows is not declined by the first.
    let y2 = submit(&t, &["y"], |_| {}).await;
    assert_eq!(fulfilled_by(&t, &y2).await, vec!["b"]);
    assert!(t.zk.get_request(&y2).await.unwrap().unwrap().0.declined_by.is_empty());
    l1.stop().await;
    l2.stop().await;
}
