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
