//! End to end with an AWS provider on moto (a real EC2 API server on
//! 127.0.0.1): a Zuul-like client's requests are fulfilled by EC2 instances,
//! the nodes come back and every instance is terminated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../np-driver-aws/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use np_core::{NodeRequest, NodeState, RequestState};
use np_launcher::{Launcher, ProviderSet};
use np_testing::{eventually, TestZk};

use support::PROVIDER;

/// One pool of at most 3 t3.medium Ubuntu instances tagged `team: ci`.
fn yaml() -> String {
    support::aws_yaml(
        "          - name: ubuntu\n            cloud-image: ubuntu\n            instance-type: t3.medium\n            key-name: zuul\n            tags:\n              team: ci\n",
        "        max-servers: 3",
        "",
    )
}

async fn running_instances(env: &support::TestEnv) -> usize {
    let out = env.ec2().describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str() != "terminated").unwrap_or(false))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_ec2_instances_and_cleaned_up() {
    let env = support::TestEnv::new().await;
    let t = TestZk::new().await;
    let config = np_config::load_str(&yaml(), "aws.yaml").unwrap();
    let provider = env.provider(&yaml(), PROVIDER).await;
    let providers: ProviderSet = HashMap::from([(PROVIDER.to_owned(), Arc::new(provider) as _)]);
    let launcher = Launcher::start(&config, t.zk.clone(), providers).await.unwrap();

    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut r = NodeRequest::new(vec!["ubuntu".into(), "ubuntu".into()]);
        r.tenant_name = Some("tenant".into());
        t.zk.create_request(&mut r, 200, false).await.unwrap();
        ids.push(r.id);
    }
    // max-servers 3: the first request gets two instances, the second waits
    // for quota until the first's nodes come back.
    let first_done = eventually(Duration::from_secs(60), || async {
        ids.iter().any(|id| {
            futures::executor::block_on(t.zk.get_request(id)).unwrap().unwrap().0.state
                == RequestState::Fulfilled
        })
    })
    .await;
    assert!(first_done);
    let (first, _) = {
        let mut found = None;
        for id in &ids {
            let (r, s) = t.zk.get_request(id).await.unwrap().unwrap();
            if r.state == RequestState::Fulfilled {
                found = Some((r, s));
                break;
            }
        }
        found.unwrap()
    };
    for id in &first.nodes {
        let (node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        assert_eq!(node.provider.as_deref(), Some(PROVIDER));
        assert_eq!(node.cloud.as_deref(), Some("AWS"));
        assert_eq!(node.username.as_deref(), Some("ubuntu"));
        assert!(node.external_id.as_ref().unwrap()["instance"].as_str().unwrap().starts_with("i-"));
        assert!(node.interface_ip.is_some());
        // As upstream: cores = DefaultCores, the family quota code counts vCPUs.
        let resources = node.resources.as_ref().unwrap();
        assert_eq!(resources["cores"], 1, "{resources}");
        assert_eq!(resources["L-1216C47A"], 2, "{resources}");
    }
    assert!(running_instances(&env).await <= 3);

    // Zuul uses and returns the nodes: they are deleted, the instances
    // terminated, and the second request goes through.
    for id in &first.nodes {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(&first.id).await.unwrap();
    let second = ids.iter().find(|id| **id != first.id).unwrap().clone();
    assert!(
        eventually(Duration::from_secs(60), || async {
            t.zk.get_request(&second).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await
    );
    let (second_req, _) = t.zk.get_request(&second).await.unwrap().unwrap();
    for id in &second_req.nodes {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(&second).await.unwrap();
    let gone = eventually(Duration::from_secs(60), || async {
        t.zk.node_ids().await.unwrap().is_empty() && running_instances(&env).await == 0
    })
    .await;
    if !gone {
        let mut left = Vec::new();
        for id in t.zk.node_ids().await.unwrap() {
            let zk_view = t.zk.get_node(&id).await.unwrap().map(|(n, _)| (n.state, n.allocated_to));
            let cache_view = launcher.shared().nodes.get(&id).map(|e| (e.value.state, e.is_locked()));
            left.push(format!("{id}: zk {zk_view:?} cache {cache_view:?}"));
        }
        panic!("nodes left: {left:?}; running instances: {}", running_instances(&env).await);
    }

    // And the whole Zuul 14 sequence through the real-protocol Python client.
    let hosts = format!("{}{}", np_testing::env("NP_ZK_HOSTS"), t.chroot);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(np_testing::env("NP_PYTHON"))
            .arg(np_testing::repo_root().join("tests/python/zuul_client.py"))
            .args(["--hosts", &hosts, "--labels", "ubuntu", "--count", "4", "--outstanding", "2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(summary["done"], 4, "{summary}");
    assert_eq!(summary["error_count"], 0, "{summary}");
    assert!(
        eventually(Duration::from_secs(60), || async { running_instances(&env).await == 0 }).await,
        "instances of returned nodes are terminated"
    );
    launcher.stop().await;
}
