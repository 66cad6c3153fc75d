//! Test support: a private OpenSSH server on 127.0.0.1 with throwaway host
//! keys, ZooKeeper-backed sync fixtures, and configuration builders.

use std::time::Duration;

use np_config::{StaticNode, StaticPool, StaticProvider};
use np_core::Node;
use np_driver_static::{StaticSync, StaticSyncHandle, SyncOptions};
use np_testing::TestZk;
use np_zk::NodeCache;
use tokio_util::sync::CancellationToken;

pub use np_testing::sshd::{closed_port, Sshd};

/// A configured host with upstream's defaults.
pub fn host(name: &str, port: u16, labels: &[&str]) -> StaticNode {
    StaticNode {
        name: name.to_owned(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        username: "zuul".to_owned(),
        timeout: Duration::from_secs(2),
        host_key_checking: false,
        host_keys: Vec::new(),
        connection_type: "ssh".to_owned(),
        connection_port: port,
        shell_type: None,
        max_parallel_jobs: 1,
        python_path: "auto".to_owned(),
    }
}

/// A provider with one pool `main`.
pub fn provider(nodes: Vec<StaticNode>) -> StaticProvider {
    let mut attrs = serde_json::Map::new();
    attrs.insert("executor-zone".into(), serde_json::Value::from("lo"));
    StaticProvider {
        pools: vec![StaticPool {
            name: "main".to_owned(),
            max_servers: None,
            node_attributes: Some(attrs),
            priority: None,
            nodes,
        }],
    }
}

/// A ZooKeeper chroot with a node cache and a running sync.
pub struct Fixture {
    pub tz: TestZk,
    pub nodes: NodeCache,
    pub handle: StaticSyncHandle,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub const PROVIDER: &str = "static-lo";

impl Fixture {
    pub async fn start(config: StaticProvider) -> Fixture {
        let tz = TestZk::new().await;
        let nodes = NodeCache::start(&tz.zk);
        assert!(nodes.wait_ready(Duration::from_secs(20)).await);
        Self::start_in(tz, nodes, config).await
    }

    /// Starts the sync in an existing chroot (pre-seeded znodes).
    pub async fn start_in(tz: TestZk, nodes: NodeCache, config: StaticProvider) -> Fixture {
        let options = SyncOptions {
            safety_interval: Duration::from_secs(60),
            retry_interval: Duration::from_millis(500),
        };
        let cancel = CancellationToken::new();
        let (handle, task) =
            StaticSync::spawn(tz.zk.clone(), nodes.clone(), PROVIDER, config, options, cancel.clone());
        Fixture { tz, nodes, handle, cancel, task: Some(task) }
    }

    /// Our provider's nodes, by id.
    pub fn ours(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .nodes
            .values()
            .iter()
            .filter(|n| n.provider.as_deref() == Some(PROVIDER))
            .map(|n| (**n).clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Our provider's nodes of `host` in `state`.
    pub fn of_host(&self, host: &str, state: np_core::NodeState) -> Vec<Node> {
        self.ours().into_iter().filter(|n| n.hostname.as_deref() == Some(host) && n.state == state).collect()
    }

    /// Waits until `check` holds on the cache.
    pub async fn until(&self, what: &str, check: impl Fn(&Fixture) -> bool) {
        let ok = np_testing::eventually(Duration::from_secs(15), || async { check(self) }).await;
        assert!(ok, "timed out waiting for: {what}; nodes: {:#?}", self.ours());
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.nodes.stop();
    }
}
