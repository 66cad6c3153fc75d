//! The launcher with a static provider: registration, reuse, return and
//! re-registration, and requests waiting (not declined) for a free host.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use np_core::{NodeRequest, NodeState, RequestState};
use np_testing::{eventually, TestZk};

use crate::common;

const CONFIG: &str = r#"
zookeeper-servers:
  - host: 127.0.0.1
labels:
  - name: static-label
providers:
  - name: static-provider
    driver: static
    pools:
      - name: main
        nodes:
          - name: fake-host-1
            labels: static-label
            host-key-checking: false
            max-parallel-jobs: 1
          - name: fake-host-2
            labels: static-label
            host-key-checking: false
            max-parallel-jobs: 1
"#;

async fn ready_count(t: &TestZk) -> usize {
    let mut n = 0;
    for id in t.zk.node_ids().await.unwrap() {
        if let Ok(Some((node, _))) = t.zk.get_node(&id).await {
            if node.state == NodeState::Ready && node.allocated_to.is_none() {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_nodes_are_handed_out_returned_and_reregistered() {
    let t = TestZk::new().await;
    let config = np_config::load_str(CONFIG, "static.yaml").unwrap();
    let launcher = common::start_launcher(&t, &config, &HashMap::new(), None).await;
    assert!(eventually(Duration::from_secs(10), || async { ready_count(&t).await == 2 }).await);

    // Three requests for two hosts: two fulfilled, the third waits (requested, not declined).
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(common::submit(&t, &["static-label"]).await);
    }
    let states = || async {
        let mut out = Vec::new();
        for id in &ids {
            out.push(t.zk.get_request(id).await.unwrap().unwrap().0);
        }
        out
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            states().await.iter().filter(|r| r.state == RequestState::Fulfilled).count() == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting: Vec<NodeRequest> =
        states().await.into_iter().filter(|r| r.state != RequestState::Fulfilled).collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].state, RequestState::Requested);
    assert!(waiting[0].declined_by.is_empty(), "static pools wait instead of declining");

    // Return one host: the node is deleted, the host re-registered, the waiting request served.
    let fulfilled = states().await.into_iter().find(|r| r.state == RequestState::Fulfilled).unwrap();
    let (mut node, _) = t.zk.get_node(&fulfilled.nodes[0]).await.unwrap().unwrap();
    assert_eq!(node.launcher.as_deref(), Some("static driver"));
    let host = node.hostname.clone();
    node.set_state(NodeState::Used);
    t.zk.update_node(&node).await.unwrap();
    t.zk.delete_request(&fulfilled.id).await.unwrap();
    assert!(common::reaches(&t, &waiting[0].id, RequestState::Fulfilled, Duration::from_secs(10)).await);
    let served = t.zk.get_request(&waiting[0].id).await.unwrap().unwrap().0;
    let (again, _) = t.zk.get_node(&served.nodes[0]).await.unwrap().unwrap();
    assert_eq!(again.hostname, host, "the returned host was re-registered and handed out again");
    assert_ne!(again.id, node.id);
    launcher.stop().await;
}
