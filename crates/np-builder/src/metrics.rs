//! The builder's measurements: builds and uploads by image and provider,
//! their durations and results, and what each image is doing now.
//!
//! Each event is recorded once ([`BuilderMetrics::record_build`],
//! [`BuilderMetrics::record_upload`], the status setters) and goes to the
//! Prometheus registry (served on `/metrics` with `--metrics-listen`) and,
//! with `STATSD_HOST` set, to statsd under upstream's keys
//! (`nodepool.dib_image_build.*`, `nodepool.image_update.*`,
//! `nodepool.builder.<host>.image.*`, `nodepool.image_build_requests`).
//! `doc/metrics.md` lists both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use np_metrics::Statsd;
use np_zk::{paths, Zk, ZkError};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Buckets of the build and upload duration histograms, in seconds.
const BUCKETS: &[f64] =
    &[1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0];

/// What an image (or an image's upload to a provider) is doing: upstream's
/// `STATUS_*` values, the gauges' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing (0).
    Idle = 0,
    /// A build runs (1).
    Building = 1,
    /// An upload runs (2).
    Uploading = 2,
    /// Paused in the configuration or in ZooKeeper (3).
    Paused = 3,
}

/// How a build ended, for the metrics.
#[derive(Debug, Clone)]
pub struct BuildRecord<'a> {
    /// The diskimage.
    pub image: &'a str,
    /// Whether the build is `ready`.
    pub ready: bool,
    /// diskimage-builder's exit code (1 after a timeout, as upstream).
    pub rc: i32,
    /// How long diskimage-builder ran.
    pub duration: Duration,
    /// For a ready build: each format's allocated size in bytes.
    pub sizes: Vec<(String, u64)>,
}

/// The builder's metrics; cloning shares them.
#[derive(Clone)]
pub struct BuilderMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BuilderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderMetrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    hostname: String,
    statsd: Option<Statsd>,
    builds: IntCounterVec,
    build_seconds: HistogramVec,
    build_rc: IntGaugeVec,
    last_build: GaugeVec,
    image_size: IntGaugeVec,
    uploads: IntCounterVec,
    upload_seconds: HistogramVec,
    build_state: IntGaugeVec,
    upload_state: IntGaugeVec,
    build_requests: IntGaugeVec,
    status: Mutex<Statuses>,
    changed: Notify,
}

#[derive(Default)]
struct Statuses {
    builds: BTreeMap<String, Status>,
    uploads: BTreeMap<(String, String), Status>,
}

impl BuilderMetrics {
    /// The metrics of a builder on `hostname`; statsd when `statsd` is given.
    pub fn new(hostname: &str, statsd: Option<Statsd>) -> Result<BuilderMetrics, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! register {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let builds = register!(IntCounterVec::new(
            Opts::new(
                "nodepool_builder_builds_total",
                "Image builds by result (ready, failed) (nodepool.dib_image_build.<image>.status.*).",
            ),
            &["image", "result"],
        )?);
        let build_seconds = register!(HistogramVec::new(
            HistogramOpts::new(
                "nodepool_builder_build_duration_seconds",
                "How long diskimage-builder ran (nodepool.dib_image_build.<image>.status.duration).",
            )
            .buckets(BUCKETS.to_vec()),
            &["image", "result"],
        )?);
        let build_rc = register!(IntGaugeVec::new(
            Opts::new(
                "nodepool_builder_build_rc",
                "Exit code of the image's last build (nodepool.dib_image_build.<image>.status.rc).",
            ),
            &["image"],
        )?);
        let last_build = register!(GaugeVec::new(
            Opts::new(
                "nodepool_builder_last_build_timestamp_seconds",
                "When the image's last build ended, Unix time (nodepool.dib_image_build.<image>.status.last_build).",
            ),
            &["image"],
        )?);
        let image_size = register!(IntGaugeVec::new(
            Opts::new(
                "nodepool_builder_image_size_bytes",
                "Allocated size of the last ready build's file per format (nodepool.dib_image_build.<image>.<format>.size).",
            ),
            &["image", "format"],
        )?);
        let uploads = register!(IntCounterVec::new(
            Opts::new(
                "nodepool_builder_uploads_total",
                "Image uploads by provider and result (ready, failed) (nodepool.image_update.<image>.<provider>).",
            ),
            &["image", "provider", "result"],
        )?);
        let upload_seconds = register!(HistogramVec::new(
            HistogramOpts::new(
                "nodepool_builder_upload_duration_seconds",
                "How long an upload took, with the post-upload hook (nodepool.image_update.<image>.<provider>).",
            )
            .buckets(BUCKETS.to_vec()),
            &["image", "provider", "result"],
        )?);
        let build_state = register!(IntGaugeVec::new(
            Opts::new(
                "nodepool_builder_image_build_state",
                "0 idle, 1 building, 3 paused (nodepool.builder.<host>.image.<image>.build.state).",
            ),
            &["image"],
        )?);
        let upload_state = register!(IntGaugeVec::new(
            Opts::new(
                "nodepool_builder_image_upload_state",
                "0 idle, 2 uploading, 3 paused (nodepool.builder.<host>.image.<image>.provider.<provider>.upload.state).",
            ),
            &["image", "provider"],
        )?);
        let build_requests = register!(IntGaugeVec::new(
            Opts::new(
                "nodepool_image_build_requests",
                "1 while the image has a pending build request (nodepool.image.<image>.image_build_requests).",
            ),
            &["image"],
        )?);
        Ok(BuilderMetrics {
            inner: Arc::new(Inner {
                registry,
                hostname: hostname.to_owned(),
                statsd,
                builds,
                build_seconds,
                build_rc,
                last_build,
                image_size,
                uploads,
                upload_seconds,
                build_state,
                upload_state,
                build_requests,
                status: Mutex::new(Statuses::default()),
                changed: Notify::new(),
            }),
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.inner.registry.gather(), &mut out) {
            warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A build ended after diskimage-builder ran (upstream's statsd: sizes
    /// of a ready build's files, the duration timer, the rc and the time of
    /// the last build, whatever the result).
    pub fn record_build(&self, build: &BuildRecord<'_>) {
        let m = &self.inner;
        let result = if build.ready { "ready" } else { "failed" };
        let now = np_core::now();
        m.builds.with_label_values(&[build.image, result]).inc();
        m.build_seconds.with_label_values(&[build.image, result]).observe(build.duration.as_secs_f64());
        m.build_rc.with_label_values(&[build.image]).set(i64::from(build.rc));
        m.last_build.with_label_values(&[build.image]).set(now.floor());
        for (format, size) in &build.sizes {
            m.image_size
                .with_label_values(&[build.image, format])
                .set(i64::try_from(*size).unwrap_or(i64::MAX));
        }
        if let Some(statsd) = &m.statsd {
            let statsd = statsd.batch();
            let image = build.image;
            for (format, size) in &build.sizes {
                statsd.gauge(&format!("nodepool.dib_image_build.{image}.{format}.size"), *size as f64);
            }
            let base = format!("nodepool.dib_image_build.{image}.status");
            statsd.timing(&format!("{base}.duration"), build.duration);
            // A negative rc (killed by a signal) cannot be a statsd gauge
            // value (it would subtract); it is sent as 0 there.
            statsd.gauge(&format!("{base}.rc"), f64::from(build.rc));
            statsd.gauge(&format!("{base}.last_build"), now.floor());
        }
    }

    /// An upload ended. statsd gets upstream's timer and counter
    /// `nodepool.image_update.<image>.<provider>` for a ready upload only.
    pub fn record_upload(&self, image: &str, provider: &str, ready: bool, duration: Duration) {
        let m = &self.inner;
        let result = if ready { "ready" } else { "failed" };
        m.uploads.with_label_values(&[image, provider, result]).inc();
        m.upload_seconds.with_label_values(&[image, provider, result]).observe(duration.as_secs_f64());
        if let (Some(statsd), true) = (&m.statsd, ready) {
            let statsd = statsd.batch();
            let key = format!("nodepool.image_update.{image}.{provider}");
            statsd.timing(&key, duration);
            statsd.incr(&key);
        }
    }

    /// The build worker's status for `image`.
    pub fn set_build_status(&self, image: &str, status: Status) {
        let mut s = self.inner.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.builds.insert(image.to_owned(), status) != Some(status) {
            self.inner.changed.notify_one();
        }
    }

    /// The upload worker's status for `image` on `provider`.
    pub fn set_upload_status(&self, image: &str, provider: &str, status: Status) {
        let mut s = self.inner.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.uploads.insert((image.to_owned(), provider.to_owned()), status) != Some(status) {
            self.inner.changed.notify_one();
        }
    }

    /// Sets and sends the status gauges (upstream's `_emitBuildRequestStats`):
    /// per image in ZooKeeper its build status and pending build request,
    /// per image and provider the upload worker knows its upload status,
    /// and the number of images with a pending request.
    pub fn report_status(&self, requests: &BTreeMap<String, bool>) {
        let m = &self.inner;
        let (builds, uploads) = {
            let s = m.status.lock().unwrap_or_else(|p| p.into_inner());
            (s.builds.clone(), s.uploads.clone())
        };
        m.build_state.reset();
        m.upload_state.reset();
        m.build_requests.reset();
        let host = &m.hostname;
        let mut gauges: Vec<(String, f64)> = Vec::new();
        let mut total = 0;
        for (image, pending) in requests {
            let status = builds.get(image).copied().unwrap_or(Status::Idle) as i64;
            m.build_state.with_label_values(&[image.as_str()]).set(status);
            gauges.push((format!("nodepool.builder.{host}.image.{image}.build.state"), status as f64));
            for ((i, provider), status) in uploads.iter().filter(|((i, _), _)| i == image) {
                m.upload_state.with_label_values(&[i.as_str(), provider.as_str()]).set(*status as i64);
                gauges.push((
                    format!("nodepool.builder.{host}.image.{image}.provider.{provider}.upload.state"),
                    *status as i64 as f64,
                ));
            }
            m.build_requests.with_label_values(&[image.as_str()]).set(i64::from(*pending));
            gauges.push((
                format!("nodepool.image.{image}.image_build_requests"),
                f64::from(u8::from(*pending)),
            ));
            total += u32::from(*pending);
        }
        gauges.push(("nodepool.image_build_requests".to_owned(), f64::from(total)));
        if let Some(statsd) = &m.statsd {
            let statsd = statsd.batch();
            for (key, value) in gauges {
                statsd.gauge(&key, value);
            }
        }
    }
}

/// Whether each image in ZooKeeper has a pending build request: the
/// request znode exists and no build of it is under way (upstream's
/// `getBuildRequest(...).pending`, read as "the build lock is free").
pub async fn build_requests(zk: &Zk) -> Result<BTreeMap<String, bool>, ZkError> {
    let mut out = BTreeMap::new();
    for image in zk.image_names().await? {
        let requested = zk.exists(&paths::image_build_request(&image)).await?.is_some();
        let pending = requested && !zk.is_locked(&paths::image_build_lock(&image)).await?;
        out.insert(image, pending);
    }
    Ok(out)
}

/// Reports the status gauges whenever a status changes or `images`
/// (ZooKeeper changes under `/nodepool/images`) fires, at most once a
/// second, and at least every `interval` (upstream: its cleanup worker's
/// 60 s pass).
pub async fn run_status_reporter(
    zk: Zk,
    metrics: BuilderMetrics,
    images: std::sync::Arc<Notify>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    loop {
        let wait = last + Duration::from_secs(1);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wait) => {}
        }
        match build_requests(&zk).await {
            Ok(requests) => metrics.report_status(&requests),
            Err(e) => warn!(error = %e, "cannot read the image build requests for the status metrics"),
        }
        last = Instant::now();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = metrics.inner.changed.notified() => {}
            _ = images.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
