//! What several of these tests share: fake-cloud configurations, starting
//! a launcher on them, and the steps of a Zuul-like client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use np_core::{NodeRequest, NodeState, RequestState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::launcher::build_providers;
use np_launcher::{Launcher, ProviderSet};
use np_testing::{eventually, TestZk};

/// A configuration with one fake provider (by default `fake-provider`, on
/// cloud `fake` with the cloud image `img`) whose one pool, `main`, serves
/// each of its labels with the flavor `Fake Flavor`. What the methods add
/// are YAML lines of their own section, unindented.
pub struct FakeConfig {
    name: String,
    zookeeper: String,
    top: String,
    labels: Vec<(String, String)>,
    provider: String,
    image: String,
    pool: String,
}

impl FakeConfig {
    /// The configuration serving `labels`, each with no settings.
    pub fn new(labels: &[&str]) -> Self {
        FakeConfig {
            name: "fake-provider".into(),
            zookeeper: "- host: 127.0.0.1".into(),
            top: String::new(),
            labels: labels.iter().map(|l| ((*l).to_owned(), String::new())).collect(),
            provider: String::new(),
            image: String::new(),
            pool: String::new(),
        }
    }

    /// The provider's name.
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// The `zookeeper-servers` list instead of the one server on 127.0.0.1.
    pub fn zookeeper(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.zookeeper);
        self
    }

    /// Top-level settings (e.g. `max-hold-age: 3600`).
    pub fn top(mut self, yaml: &str) -> Self {
        self.top.push_str(&indent(yaml, 0));
        self
    }

    /// Settings of the top-level label `name` (e.g. `min-ready: 1`).
    pub fn label(mut self, name: &str, yaml: &str) -> Self {
        let label = self.labels.iter_mut().find(|(l, _)| l == name).expect("a label of this config");
        label.1.push_str(&indent(yaml, 4));
        self
    }

    /// Settings of the provider (e.g. `boot-timeout: 2`).
    pub fn provider(mut self, yaml: &str) -> Self {
        self.provider.push_str(&indent(yaml, 4));
        self
    }

    /// Settings of the cloud image `img` (e.g. `username: ubuntu`).
    pub fn image(mut self, yaml: &str) -> Self {
        self.image.push_str(&indent(yaml, 8));
        self
    }

    /// Settings of the pool `main` (e.g. `max-servers: 10`).
    pub fn pool(mut self, yaml: &str) -> Self {
        self.pool.push_str(&indent(yaml, 8));
        self
    }

    /// The provider's entry in the `providers` list.
    pub fn provider_entry(&self) -> String {
        let pool_labels: String = self
            .labels
            .iter()
            .map(|(l, _)| format!("          - name: {l}\n            cloud-image: img\n            flavor-name: Fake Flavor\n"))
            .collect();
        format!(
            "  - name: {}\n    driver: fake\n    rate: 0.0001\n    cloud: fake\n{}    cloud-images:\n      - name: img\n{}    pools:\n      - name: main\n{}        labels:\n{pool_labels}",
            self.name, self.provider, self.image, self.pool
        )
    }

    /// The whole configuration file.
    pub fn yaml(&self) -> String {
        let labels: String =
            self.labels.iter().map(|(l, settings)| format!("  - name: {l}\n{settings}")).collect();
        format!(
            "zookeeper-servers:\n{}{}labels:\n{labels}providers:\n{}",
            indent(&self.zookeeper, 2),
            self.top,
            self.provider_entry()
        )
    }

    /// The configuration, loaded.
    pub fn load(&self) -> np_config::Config {
        np_config::load_str(&self.yaml(), "test.yaml").unwrap()
    }
}

/// Each line of `yaml` indented by `by` spaces, each ending in a newline.
fn indent(yaml: &str, by: usize) -> String {
    yaml.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

/// A launcher on `config` and this test's ZooKeeper, with `clouds` (by
/// provider name) as its fake providers' clouds and, unless `None`, its
/// maintenance pass every `maintenance_interval`.
pub async fn start_launcher(
    t: &TestZk,
    config: &np_config::Config,
    clouds: &HashMap<String, FakeCloud>,
    maintenance_interval: Option<Duration>,
) -> Launcher {
    let providers = build_providers(config, clouds).unwrap();
    Launcher::start_with(config, t.zk.clone(), providers, maintenance_interval).await.unwrap()
}

/// A launcher on `config` whose one provider, `name`, is `provider` (one
/// the test built itself), with its maintenance pass every
/// `maintenance_interval` unless `None`.
pub async fn start_provider(
    t: &TestZk,
    config: &np_config::Config,
    name: &str,
    provider: impl np_provider::Provider + 'static,
    maintenance_interval: Option<Duration>,
) -> Launcher {
    let providers: ProviderSet = HashMap::from([(name.to_owned(), Arc::new(provider) as _)]);
    Launcher::start_with(config, t.zk.clone(), providers, maintenance_interval).await.unwrap()
}

/// A scratch directory of this test's own, `prefix` and a UUID in the
/// system's temporary directory.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`start_launcher`] with `cloud` as the cloud of `fake-provider`.
pub async fn start_fake(
    t: &TestZk,
    config: &np_config::Config,
    cloud: &FakeCloud,
    maintenance_interval: Option<Duration>,
) -> Launcher {
    let clouds = HashMap::from([("fake-provider".to_owned(), cloud.clone())]);
    start_launcher(t, config, &clouds, maintenance_interval).await
}

/// A test's ZooKeeper, a fake cloud for `fake-provider` with `settings`,
/// and a launcher on `config` and that cloud.
pub async fn fake_launcher(
    config: &np_config::Config,
    settings: FakeSettings,
) -> (TestZk, FakeCloud, Launcher) {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", settings);
    let launcher = start_fake(&t, config, &cloud, None).await;
    (t, cloud, launcher)
}

/// Submits a request for `labels` (priority 200); returns its id.
pub async fn submit(t: &TestZk, labels: &[&str]) -> String {
    submit_with(t, labels, |_| {}).await
}

/// [`submit`], `edit` changing the request first.
pub async fn submit_with(t: &TestZk, labels: &[&str], edit: impl FnOnce(&mut NodeRequest)) -> String {
    let mut r = NodeRequest::new(labels.iter().map(|l| (*l).to_owned()).collect());
    edit(&mut r);
    t.zk.create_request(&mut r, 200, false).await.unwrap();
    r.id
}

/// Whether request `id` is in state `want` within `timeout`.
pub async fn reaches(t: &TestZk, id: &str, want: RequestState, timeout: Duration) -> bool {
    eventually(timeout, || async {
        matches!(t.zk.get_request(id).await, Ok(Some((r, _))) if r.state == want)
    })
    .await
}

/// Whether a pool of `launcher` says `paused: true` within `timeout`.
pub async fn pool_paused(launcher: &Launcher, timeout: Duration) -> bool {
    eventually(timeout, || async {
        launcher.shared().pools.values().iter().any(|c| c.pool.as_ref().unwrap().paused)
    })
    .await
}

/// How many requests were made before request `id` (ZooKeeper numbers the
/// children of the requests znode in order).
pub fn requests_before(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).expect("a request id ends in its sequence number")
}

/// The ready nodes of `label` allocated to no request, as `launcher`'s node
/// cache has them (min-ready's nodes).
pub fn free_ready(launcher: &Launcher, label: &str) -> Vec<String> {
    launcher
        .shared()
        .nodes
        .values()
        .iter()
        .filter(|n| n.state == NodeState::Ready && n.has_label(label) && n.allocated_to.is_none())
        .map(|n| n.id.clone())
        .collect()
}

/// The state of request `id`.
pub async fn state_of(t: &TestZk, id: &str) -> RequestState {
    t.zk.get_request(id).await.unwrap().unwrap().0.state
}

/// Zuul is done with request `id`: every node it was given is marked
/// `used`, and the request is deleted.
pub async fn return_request(t: &TestZk, id: &str) {
    let (request, _) = t.zk.get_request(id).await.unwrap().unwrap();
    for node_id in &request.nodes {
        let (mut node, _) = t.zk.get_node(node_id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
    }
    t.zk.delete_request(id).await.unwrap();
}

/// One request per label, each waited for until fulfilled (within
/// `timeout`; `log` says what to print when one is not); returns the request
/// ids and each request's node, in the labels' order.
pub async fn request_each(
    t: &TestZk,
    labels: &[&str],
    timeout: std::time::Duration,
    log: &dyn Fn() -> String,
) -> (Vec<String>, Vec<np_core::Node>) {
    let mut ids = Vec::new();
    for label in labels {
        ids.push(submit(t, &[label]).await);
    }
    for id in &ids {
        let done =
            np_testing::eventually(timeout, || async { state_of(t, id).await == RequestState::Fulfilled })
                .await;
        assert!(done, "{id} not fulfilled; python launcher log:\n{}", log());
    }
    let mut nodes = Vec::new();
    for id in &ids {
        let (r, _) = t.zk.get_request(id).await.unwrap().unwrap();
        nodes.push(t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap().0);
    }
    (ids, nodes)
}

/// Python Nodepool 11's `nodepool-launcher` in the foreground (no web app)
/// on `providers_yaml` with this test's ZooKeeper (TLS) prepended, written
/// to `dir/python.yaml`; `env` is added to its environment. Its output goes
/// to `dir/python-launcher.log`; the returned closure reads that log.
pub fn python_launcher(
    t: &TestZk,
    dir: &std::path::Path,
    providers_yaml: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (np_testing::ChildGuard, impl Fn() -> String) {
    let config = dir.join("python.yaml");
    std::fs::write(&config, format!("{}{}", np_testing::zk_yaml_tls(&t.chroot), providers_yaml)).unwrap();
    let python = std::path::PathBuf::from(np_testing::env("NP_PYTHON"));
    let log_path = dir.join("python-launcher.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = std::process::Command::new(python.with_file_name("nodepool-launcher"));
    cmd.arg("-c").arg(&config).args(["-f", "--no-webapp"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child =
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    (np_testing::ChildGuard(child), move || std::fs::read_to_string(&log_path).unwrap_or_default())
}
