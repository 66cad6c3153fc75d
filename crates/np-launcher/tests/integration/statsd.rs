//! statsd as upstream sends it: our `nodepool-launcher` binary and Python
//! Nodepool 11's, each with `STATSD_HOST`/`STATSD_PORT` pointing at a UDP
//! recorder on 127.0.0.1, run the same configuration and workload; every
//! key (with its type) Python sends, ours sends too. And one stats leader
//! per ZooKeeper: with both launchers on one ZooKeeper, only the election's
//! winner sends the node gauges, and the other takes over when it goes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use np_core::{NodeState, RequestState};
use np_testing::statsd::StatsdRecorder;
use np_testing::{eventually, zk_yaml_tls, ChildGuard, TestZk};

use crate::common::{self, return_request, submit_with};

/// The configuration both launchers run (without `zookeeper-servers`).
const PROVIDERS: &str = "\
labels:
  - name: small
    min-ready: 1
  - name: large
tenant-resource-limits:
  - tenant-name: tenant.one
    max-cores: 100
    max-servers: 10
providers:
  - name: fake-provider
    driver: fake
    cloud: fake
    region-name: fake-region
    rate: 0.0001
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 5
        host-key-checking: false
        labels:
          - name: small
            cloud-image: fake-image
            flavor-name: Fake Flavor
          - name: large
            cloud-image: fake-image
            flavor-name: Fake Flavor
";

/// The requestor of the workload's requests (normalised by upstream to
/// `zuul_example_org_main`).
const REQUESTOR: &str = "zuul.example.org:main";

fn clouds_yaml(dir: &std::path::Path) -> std::path::PathBuf {
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  fake:\n    auth:\n      username: fake\n      password: fake\n      project_id: fake\n      auth_url: fake\n",
    )
    .unwrap();
    clouds
}

/// Python's launcher on `t`, sending statsd to `port`.
fn python(t: &TestZk, dir: &std::path::Path, port: u16) -> (ChildGuard, impl Fn() -> String) {
    let clouds = clouds_yaml(dir);
    let port = port.to_string();
    common::python_launcher(
        t,
        dir,
        PROVIDERS,
        &[
            ("OS_CLIENT_CONFIG_FILE", clouds.as_os_str()),
            ("STATSD_HOST", std::ffi::OsStr::new("127.0.0.1")),
            ("STATSD_PORT", std::ffi::OsStr::new(&port)),
        ],
    )
}

/// Our launcher binary on `t`, sending statsd to `port`.
fn ours(t: &TestZk, dir: &std::path::Path, port: u16) -> ChildGuard {
    let config = dir.join("rust.yaml");
    std::fs::write(&config, format!("{}{PROVIDERS}", zk_yaml_tls(&t.chroot))).unwrap();
    let log = std::fs::File::create(dir.join("rust-launcher.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nodepool-launcher"))
        .arg("-c")
        .arg(&config)
        .args(["-f", "--no-webapp"])
        .env("STATSD_HOST", "127.0.0.1")
        .env("STATSD_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Whether a pool is registered on `t` within a minute.
async fn registered(t: &TestZk) -> bool {
    eventually(Duration::from_secs(90), || async {
        !t.zk.components(np_core::ComponentKind::Pool).await.unwrap_or_default().is_empty()
    })
    .await
}

/// Two requests from Zuul (with a requestor), fulfilled and returned, and
/// min-ready's node; waits until the used nodes are gone and returns how
/// many nodes are left (all ready).
async fn workload(t: &TestZk, log: &dyn Fn() -> String) -> usize {
    let mut ids = Vec::new();
    for labels in [&["small"][..], &["small", "large"][..]] {
        ids.push(submit_with(t, labels, |r| r.requestor = Some(REQUESTOR.into())).await);
    }
    for id in &ids {
        assert!(
            common::reaches(t, id, RequestState::Fulfilled, Duration::from_secs(90)).await,
            "{id} not fulfilled; log:\n{}",
            log()
        );
        return_request(t, id).await;
    }
    let nodes = || async {
        let mut nodes = Vec::new();
        for id in t.zk.node_ids().await.unwrap_or_default() {
            if let Ok(Some((node, _))) = t.zk.get_node(&id).await {
                nodes.push(node);
            }
        }
        nodes
    };
    let settled = eventually(Duration::from_secs(90), || async {
        let nodes = nodes().await;
        !nodes.is_empty() && nodes.iter().all(|n| n.state == NodeState::Ready)
    })
    .await;
    let left: Vec<_> = nodes().await.into_iter().map(|n| (n.id, n.state, n.node_type)).collect();
    assert!(settled, "used nodes not deleted, or no min-ready node: {left:?}; log:\n{}", log());
    left.len()
}

/// Waits until `recorder` has the gauge `key` at `value`.
async fn gauge_reaches(recorder: &StatsdRecorder, key: &str, value: &str, secs: u64) -> bool {
    eventually(Duration::from_secs(secs), || async { recorder.last(key, "g").as_deref() == Some(value) })
        .await
}

/// Python's keys that are its ZooKeeper client's internals
/// (`nodepool.launcher.<host>.zk.*`: kazoo's connection queue and its
/// TreeCaches' event queues). Ours has no such queues and leaves them out
/// (doc/metrics.md).
fn python_internal(key: &str) -> bool {
    key.starts_with("nodepool.launcher.") && key.contains(".zk.")
}

/// The availability zone in a per-zone launch key replaced by `<az>`: the
/// fake clouds pick zones of their own (Python's at random from `az1`,
/// `az2`; ours `az1`), like ids.
fn zone_masked((key, kind): (String, String)) -> (String, String) {
    let parts: Vec<&str> = key.split('.').collect();
    let masked = match parts.as_slice() {
        ["nodepool", "launch", "provider", provider, az, rest @ ..]
            if az.starts_with("az") && !rest.is_empty() =>
        {
            format!("nodepool.launch.provider.{provider}.<az>.{}", rest.join("."))
        }
        _ => key,
    };
    (masked, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_keys_are_a_superset_of_python_launchers() {
    let dir = common::scratch_dir("np-statsd");
    let (py_zk, rs_zk) = (TestZk::new_tls().await, TestZk::new_tls().await);
    let (py_rec, rs_rec) = (StatsdRecorder::start(), StatsdRecorder::start());
    let py_dir = dir.join("python");
    let rs_dir = dir.join("rust");
    std::fs::create_dir_all(&py_dir).unwrap();
    std::fs::create_dir_all(&rs_dir).unwrap();
    let (_py, py_log) = python(&py_zk, &py_dir, py_rec.port());
    let _rs = ours(&rs_zk, &rs_dir, rs_rec.port());
    let rs_log = || std::fs::read_to_string(rs_dir.join("rust-launcher.log")).unwrap_or_default();
    assert!(registered(&py_zk).await, "python launcher did not register:\n{}", py_log());
    assert!(registered(&rs_zk).await, "our launcher did not register:\n{}", rs_log());

    // The same workload on both, at the same time.
    let (py_left, rs_left) = tokio::join!(workload(&py_zk, &py_log), workload(&rs_zk, &rs_log));
    // Both report the settled state: the nodes left ready, none used.
    for (rec, left, log) in [(&py_rec, py_left, &py_log as &dyn Fn() -> String), (&rs_rec, rs_left, &rs_log)]
    {
        assert!(
            gauge_reaches(rec, "nodepool.nodes.ready", &left.to_string(), 30).await
                && gauge_reaches(rec, "nodepool.nodes.used", "0", 30).await,
            "settled gauges not reported: nodes.ready {:?} (want {left}), nodes.used {:?}; got {:?}\nlog:\n{}",
            rec.last("nodepool.nodes.ready", "g"),
            rec.last("nodepool.nodes.used", "g"),
            rec.keys(),
            log()
        );
    }
    // Python's per-pass limit gauges come with its pool worker's next pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let python: BTreeSet<(String, String)> =
        py_rec.keys().into_iter().filter(|(k, _)| !python_internal(k)).map(zone_masked).collect();
    let rust: BTreeSet<(String, String)> = rs_rec.keys().into_iter().map(zone_masked).collect();
    let missing: Vec<_> = python.difference(&rust).collect();
    assert!(missing.is_empty(), "keys Python sends and we do not: {missing:?}\nours: {rust:?}");
    eprintln!(
        "python launcher: {} lines in {} datagrams, {} keys; ours: {} lines in {} datagrams, {} keys",
        py_rec.metrics().len(),
        py_rec.datagrams(),
        python.len(),
        rs_rec.metrics().len(),
        rs_rec.datagrams(),
        rust.len()
    );
    // What the comparison covered (so an empty Python run cannot pass it).
    for (key, kind) in [
        ("nodepool.launch.ready", "c"),
        ("nodepool.launch.ready", "ms"),
        ("nodepool.launch.provider.fake-provider.ready", "c"),
        ("nodepool.launch.provider.fake-provider.<az>.ready", "ms"),
        ("nodepool.launch.requestor.zuul_example_org_main.ready", "ms"),
        ("nodepool.launch.requestor.NodePool_min-ready.ready", "c"),
        ("nodepool.nodes.ready", "g"),
        ("nodepool.provider.fake-provider.nodes.deleting", "g"),
        ("nodepool.label.large.nodes.in-use", "g"),
        ("nodepool.provider.fake-provider.pool.main.addressable_requests", "g"),
        ("nodepool.provider.fake-provider.max_servers", "g"),
        ("nodepool.tenant_limits.tenant_one.cores", "g"),
    ] {
        let k = (key.to_owned(), kind.to_owned());
        assert!(python.contains(&k), "python did not send {key}|{kind}: {python:?}");
    }
    // Values as upstream's: the configured limits.
    assert_eq!(rs_rec.last("nodepool.provider.fake-provider.max_servers", "g").as_deref(), Some("5"));
    assert_eq!(rs_rec.last("nodepool.tenant_limits.tenant_one.ram", "g").as_deref(), Some("inf"));
    assert_eq!(
        rs_rec.last("nodepool.tenant_limits.tenant_one.ram", "g"),
        py_rec.last("nodepool.tenant_limits.tenant_one.ram", "g")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stats_leader_with_python_on_one_zookeeper() {
    let dir = common::scratch_dir("np-statsd-leader");
    let t = TestZk::new_tls().await;
    let (py_rec, rs_rec) = (StatsdRecorder::start(), StatsdRecorder::start());
    // Python first: it wins the election.
    let (py, py_log) = python(&t, &dir, py_rec.port());
    assert!(
        eventually(Duration::from_secs(90), || async { py_rec.last("nodepool.nodes.ready", "g").is_some() })
            .await,
        "python did not report as stats leader:\n{}",
        py_log()
    );
    let _rs = ours(&t, &dir, rs_rec.port());
    let rs_log = || std::fs::read_to_string(dir.join("rust-launcher.log")).unwrap_or_default();
    // Ours reports its limits (every launcher does), but no node gauges
    // while Python leads, even as nodes change.
    assert!(
        eventually(Duration::from_secs(60), || async {
            rs_rec.last("nodepool.provider.fake-provider.max_servers", "g").is_some()
        })
        .await,
        "our launcher sent no limits:\n{}",
        rs_log()
    );
    let both = eventually(Duration::from_secs(30), || async {
        t.zk.lock_contenders(np_launcher::stats::STATS_ELECTION).await.unwrap_or_default().len() == 2
    })
    .await;
    assert!(
        both,
        "both launchers stand: {:?}",
        t.zk.lock_contenders(np_launcher::stats::STATS_ELECTION).await
    );
    let id = submit_with(&t, &["small"], |r| r.requestor = Some(REQUESTOR.into())).await;
    assert!(common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(90)).await);
    return_request(&t, &id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rs_rec.keys().iter().all(|(k, _)| !k.starts_with("nodepool.nodes.")),
        "ours sent node gauges while not leader: {:?}",
        rs_rec.keys()
    );
    // Python goes (its session with it): ours takes over.
    drop(py);
    assert!(
        eventually(Duration::from_secs(60), || async { rs_rec.last("nodepool.nodes.ready", "g").is_some() })
            .await,
        "ours did not take over the stats leadership:\n{}",
        rs_log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each failed attempt of a launch is recorded as it fails, with its own
/// result, and the launch's success after them once, as upstream's
/// `recordLaunchStats` does (the statsd keys come from the same records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_counted_each() {
    let config = common::FakeConfig::new(&["small"]).provider("launch-retries: 3").load();
    let (t, cloud, launcher) = common::fake_launcher(&config, np_driver_fake::FakeSettings::default()).await;
    cloud.fail_next_launches(2);
    let id = submit_with(&t, &["small"], |r| r.requestor = Some(REQUESTOR.into())).await;
    assert!(common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(30)).await);
    let launches = |result: &str| {
        launcher
            .metrics()
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "nodepool_launch_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "result" && l.value() == result))
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
    };
    assert_eq!(launches("error.unknown"), 2.0, "one per failed attempt");
    assert_eq!(launches("ready"), 1.0);
    launcher.stop().await;
}
