//! The builder's metrics: Prometheus on `--metrics-listen`'s `/metrics` and
//! upstream's statsd keys, for a ready build and upload and a failed build.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_driver_fake::{FakeCloud, FakeSettings};
use np_testing::statsd::StatsdRecorder;
use np_testing::{eventually, TestZk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, built_image_yaml};

/// `GET path` on `addr`: (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the sample `series` (name and labels as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_uploads_in_prometheus_and_statsd() {
    let t = TestZk::new().await;
    let dir = common::scratch_dir("np-builder-metrics");
    // `built-image` builds and uploads; `broken` fails (fake-dib exits 127).
    let yaml = built_image_yaml(&dir, "", "name: fake-provider\ndriver: fake\ncloud: fake\n", "", "min-ram: 1024")
        .replace(
            "providers:\n",
            &format!(
                "  - name: broken\n    dib-cmd: {}\n    elements: [vm]\n    formats: [qcow2]\n    env-vars:\n      FAKE_DIB_FAIL: '1'\nproviders:\n",
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib").display()
            ),
        );
    let config = np_config::load_str(&yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let recorder = StatsdRecorder::start();
    let settings = np_builder::BuilderSettings {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        statsd: Some(np_metrics::Statsd::to("127.0.0.1", recorder.port()).unwrap()),
        ..common::quick_settings()
    };
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let providers = np_drivers::build_providers(
        &config,
        &std::collections::HashMap::from([("fake-provider".to_owned(), cloud)]),
    )
    .unwrap();
    let builder = np_builder::Builder::start(&config, t.zk.clone(), providers, settings).await.unwrap();
    let addr = builder.metrics_addr().expect("the metrics server runs");
    common::first_upload(&t, "fake-provider").await;

    let ready = r#"{image="built-image",result="ready"}"#;
    let upload = r#"{image="built-image",provider="fake-provider",result="ready"}"#;
    let complete = |text: &str| {
        sample(text, &format!("nodepool_builder_uploads_total{upload}")) == Some(1.0)
            && sample(text, r#"nodepool_builder_builds_total{image="broken",result="failed"}"#)
                .is_some_and(|n| n >= 1.0)
            && sample(text, r#"nodepool_builder_image_build_state{image="built-image"}"#) == Some(0.0)
    };
    let scraped = eventually(Duration::from_secs(30), || async {
        let (status, body) = get(addr, "/metrics").await;
        status.contains("200") && complete(&body)
    })
    .await;
    let (_, text) = get(addr, "/metrics").await;
    assert!(scraped, "metrics:\n{text}");
    assert_eq!(sample(&text, &format!("nodepool_builder_builds_total{ready}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("nodepool_builder_build_duration_seconds_count{ready}")), Some(1.0));
    assert_eq!(sample(&text, &format!("nodepool_builder_upload_duration_seconds_count{upload}")), Some(1.0));
    assert_eq!(sample(&text, r#"nodepool_builder_build_rc{image="built-image"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"nodepool_builder_build_rc{image="broken"}"#), Some(127.0), "{text}");
    assert!(sample(&text, r#"nodepool_builder_image_size_bytes{format="qcow2",image="built-image"}"#)
        .is_some_and(|n| n > 0.0));
    assert!(sample(&text, r#"nodepool_builder_last_build_timestamp_seconds{image="built-image"}"#)
        .is_some_and(|n| n > 1.7e9));
    assert_eq!(
        sample(&text, r#"nodepool_builder_image_upload_state{image="built-image",provider="fake-provider"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&text, r#"nodepool_image_build_requests{image="built-image"}"#), Some(0.0));
    assert!(get(addr, "/").await.0.contains("404"));

    // statsd: upstream's keys and types.
    let host = np_builder::hostname();
    let has = |key: &str, kind: &str| recorder.keys().contains(&(key.to_owned(), kind.to_owned()));
    let expected = [
        ("nodepool.dib_image_build.built-image.qcow2.size", "g"),
        ("nodepool.dib_image_build.built-image.status.duration", "ms"),
        ("nodepool.dib_image_build.built-image.status.rc", "g"),
        ("nodepool.dib_image_build.built-image.status.last_build", "g"),
        ("nodepool.dib_image_build.broken.status.duration", "ms"),
        ("nodepool.dib_image_build.broken.status.rc", "g"),
        ("nodepool.image_update.built-image.fake-provider", "c"),
        ("nodepool.image_update.built-image.fake-provider", "ms"),
        (&format!("nodepool.builder.{host}.image.built-image.build.state"), "g"),
        (&format!("nodepool.builder.{host}.image.built-image.provider.fake-provider.upload.state"), "g"),
        ("nodepool.image.built-image.image_build_requests", "g"),
        ("nodepool.image_build_requests", "g"),
    ];
    let all = eventually(Duration::from_secs(10), || async { expected.iter().all(|(k, t)| has(k, t)) }).await;
    assert!(
        all,
        "missing: {:?}\ngot: {:?}",
        expected.iter().filter(|(k, t)| !has(k, t)).collect::<Vec<_>>(),
        recorder.keys()
    );
    assert_eq!(recorder.last("nodepool.dib_image_build.broken.status.rc", "g").as_deref(), Some("127"));
    assert_eq!(recorder.last("nodepool.dib_image_build.built-image.status.rc", "g").as_deref(), Some("0"));
    // A failed build has no size, a failed upload no image_update.
    assert!(!has("nodepool.dib_image_build.broken.qcow2.size", "g"));
    builder.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The builders' configuration (without `zookeeper-servers`): `built-image`
/// builds and uploads, `broken` fails (fake-dib exits 127).
fn side_by_side_yaml(images: &std::path::Path, logs: &std::path::Path) -> String {
    let fake_dib = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
    format!(
        "images-dir: {images}\nbuild-log-dir: {logs}\nlabels:\n  - name: small\ndiskimages:\n  - name: built-image\n    dib-cmd: {dib}\n    elements: [vm]\n  - name: broken\n    dib-cmd: {dib}\n    elements: [vm]\n    formats: [qcow2]\n    env-vars:\n      FAKE_DIB_FAIL: '1'\nproviders:\n  - name: fake-provider\n    driver: fake\n    cloud: fake\n    diskimages:\n      - name: built-image\n    pools:\n      - name: main\n        labels:\n          - name: small\n            diskimage: built-image\n            min-ram: 1024\n",
        images = images.display(),
        logs = logs.display(),
        dib = fake_dib.display(),
    )
}

/// `(key, type)` with the builder's host name replaced by `<host>`
/// (Python's is `socket.getfqdn()`, ours the kernel's host name).
fn host_masked((key, kind): (String, String)) -> (String, String) {
    match key.strip_prefix("nodepool.builder.") {
        Some(rest) => match rest.split_once(".image.") {
            Some((_, tail)) => (format!("nodepool.builder.<host>.image.{tail}"), kind),
            None => (key, kind),
        },
        None => (key, kind),
    }
}

/// Python Nodepool 11's builder and ours, each on its own ZooKeeper chroot
/// and statsd recorder, build, fail and upload the same images: every key
/// (and type) Python sends, ours sends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_keys_are_a_superset_of_python_builders() {
    let dir = common::scratch_dir("np-builder-statsd");
    let (py_zk, rs_zk) = (TestZk::new_tls().await, TestZk::new_tls().await);
    let (py_rec, rs_rec) = (StatsdRecorder::start(), StatsdRecorder::start());
    let (py_dir, rs_dir) = (dir.join("python"), dir.join("rust"));
    for d in [&py_dir, &rs_dir] {
        std::fs::create_dir_all(d.join("images")).unwrap();
        std::fs::create_dir_all(d.join("logs")).unwrap();
    }
    let py_config = py_dir.join("nodepool.yaml");
    std::fs::write(
        &py_config,
        format!(
            "{}{}",
            np_testing::zk_yaml_tls(&py_zk.chroot),
            side_by_side_yaml(&py_dir.join("images"), &py_dir.join("logs"))
        ),
    )
    .unwrap();
    std::fs::write(
        py_dir.join("clouds.yaml"),
        "clouds:\n  fake:\n    auth:\n      username: fake\n      password: fake\n      project_id: fake\n      auth_url: fake\n",
    )
    .unwrap();
    let python = std::path::PathBuf::from(np_testing::env("NP_PYTHON"));
    let log = std::fs::File::create(py_dir.join("builder.out")).unwrap();
    let _py = np_testing::ChildGuard(
        std::process::Command::new(python.parent().unwrap().join("nodepool-builder"))
            .args(["-f", "-c"])
            .arg(&py_config)
            .env("OS_CLIENT_CONFIG_FILE", py_dir.join("clouds.yaml"))
            .env("STATSD_HOST", "127.0.0.1")
            .env("STATSD_PORT", py_rec.port().to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let py_log = || std::fs::read_to_string(py_dir.join("builder.out")).unwrap_or_default();
    let rs_yaml = format!(
        "{}{}",
        np_testing::zk_yaml_tls(&rs_zk.chroot),
        side_by_side_yaml(&rs_dir.join("images"), &rs_dir.join("logs"))
    );
    let config = np_config::load_str(&rs_yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("{e}"));
    let settings = np_builder::BuilderSettings {
        statsd: Some(np_metrics::Statsd::to("127.0.0.1", rs_rec.port()).unwrap()),
        ..common::quick_settings()
    };
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let providers = np_drivers::build_providers(
        &config,
        &std::collections::HashMap::from([("fake-provider".to_owned(), cloud)]),
    )
    .unwrap();
    let builder = np_builder::Builder::start(&config, rs_zk.zk.clone(), providers, settings).await.unwrap();

    // Python's status gauges come from its cleanup worker, every 60 s: wait
    // for the per-image ones after the upload.
    let python_done = eventually(Duration::from_secs(150), || async {
        let keys = py_rec.keys();
        let has = |k: &str| keys.iter().any(|(key, _)| key.as_str() == k);
        has("nodepool.image_update.built-image.fake-provider")
            && has("nodepool.dib_image_build.broken.status.rc")
            && keys.iter().any(|(k, _)| k.ends_with(".image.built-image.provider.fake-provider.upload.state"))
    })
    .await;
    assert!(python_done, "python's keys so far: {:?}\nlog:\n{}", py_rec.keys(), py_log());
    let ours_done = eventually(Duration::from_secs(30), || async {
        rs_rec
            .keys()
            .iter()
            .any(|(k, _)| k.ends_with(".image.built-image.provider.fake-provider.upload.state"))
    })
    .await;
    assert!(ours_done, "our keys: {:?}", rs_rec.keys());

    let python: std::collections::BTreeSet<_> = py_rec.keys().into_iter().map(host_masked).collect();
    let rust: std::collections::BTreeSet<_> = rs_rec.keys().into_iter().map(host_masked).collect();
    let missing: Vec<_> = python.difference(&rust).collect();
    assert!(missing.is_empty(), "keys Python's builder sends and ours does not: {missing:?}\nours: {rust:?}");
    eprintln!(
        "python builder: {} lines in {} datagrams, {} keys; ours: {} lines in {} datagrams, {} keys",
        py_rec.metrics().len(),
        py_rec.datagrams(),
        python.len(),
        rs_rec.metrics().len(),
        rs_rec.datagrams(),
        rust.len()
    );
    builder.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
