//! `nodepool-builder`: builds disk images with diskimage-builder and keeps
//! their records in ZooKeeper, where the launchers and the `nodepool` CLI
//! (ours and Python's) read them.
//!
//! * [`build`]: which images need a build, and the build itself;
//! * [`dib`]: the diskimage-builder command line, environment, log and
//!   timeout, and the files of a build in `images-dir`;
//! * [`watch`]: ZooKeeper changes as wake-ups (no polling loop).
//!
//! * [`upload`]: uploads of the newest ready builds to the providers;
//! * [`cleanup`]: retention, removed images and providers, local files.
//! * [`metrics`]: builds and uploads in Prometheus (`/metrics` with
//!   [`BuilderSettings::metrics_listen`]) and, with `STATSD_HOST`, statsd.
//!
//! [`Builder::start`] registers a `builder` component, reads (or creates)
//! `<images-dir>/builder_id.txt` and runs the workers until
//! [`Builder::stop`].

mod attempts;
pub mod build;
pub mod cleanup;
pub mod dib;
pub mod metrics;
pub mod metrics_http;
pub mod upload;
pub mod watch;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use np_config::Config;
use np_provider::ProviderSet;
use np_zk::{paths, ComponentRegistration, Zk};
use tokio::sync::{watch as channel, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// This crate's version, as registered in the component record.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builder settings (command-line options).
#[derive(Debug, Clone)]
pub struct BuilderSettings {
    /// `--build-workers` (default 1).
    pub build_workers: usize,
    /// `--upload-workers` (default 4).
    pub upload_workers: usize,
    /// Wait before a failed build or upload is tried again (upstream: its
    /// 10 s cycle).
    pub retry_delay: Duration,
    /// Cleanup timing.
    pub cleanup: cleanup::CleanupSettings,
    /// Serve Prometheus `/metrics` on this address (`--metrics-listen`);
    /// `None`: no HTTP server (upstream's builder has none).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The statsd client; `None`: from the environment (`STATSD_HOST`,
    /// `STATSD_PORT`), as upstream. Tests pass their own.
    pub statsd: Option<np_metrics::Statsd>,
}

impl Default for BuilderSettings {
    fn default() -> Self {
        BuilderSettings {
            build_workers: 1,
            upload_workers: 4,
            retry_delay: Duration::from_secs(10),
            cleanup: cleanup::CleanupSettings::default(),
            metrics_listen: None,
            statsd: None,
        }
    }
}

/// What the workers work from: the configuration and its providers.
pub struct Setup {
    /// The configuration.
    pub config: Arc<Config>,
    /// A provider for each configured provider the builder can upload to.
    pub providers: ProviderSet,
}

/// A running builder.
pub struct Builder {
    setup: channel::Sender<Arc<Setup>>,
    registration: ComponentRegistration,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    builder_id: String,
    metrics: metrics::BuilderMetrics,
    metrics_server: Option<metrics_http::MetricsServer>,
}

/// Reads `<images-dir>/builder_id.txt`, creating it with a new uuid4 if it is
/// missing (upstream's builder id, kept across restarts).
pub fn builder_id(images_dir: &Path) -> anyhow::Result<String> {
    let path = images_dir.join("builder_id.txt");
    if path.exists() {
        let id = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    std::fs::create_dir_all(images_dir)
        .with_context(|| format!("creating images-dir {}", images_dir.display()))?;
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The host name recorded in builds and the component record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Builder {
    /// Starts the builder on `zk`, uploading through `providers`. Fails
    /// without `images-dir`, as upstream.
    pub async fn start(
        config: &Config,
        zk: Zk,
        providers: ProviderSet,
        settings: BuilderSettings,
    ) -> anyhow::Result<Builder> {
        let images_dir = config.images_dir.as_deref().context("the configuration has no images-dir")?;
        let builder_id = builder_id(images_dir)?;
        let hostname = hostname();
        let statsd = match settings.statsd.clone() {
            Some(statsd) => Some(statsd),
            None => np_metrics::Statsd::from_env().context("statsd (STATSD_HOST, STATSD_PORT)")?,
        };
        let metrics = metrics::BuilderMetrics::new(&hostname, statsd).context("registering metrics")?;
        let metrics_server = match settings.metrics_listen {
            Some(addr) => {
                let m = metrics.clone();
                Some(
                    metrics_http::MetricsServer::start(addr, move || m.render())
                        .await
                        .with_context(|| format!("metrics: cannot listen on {addr}"))?,
                )
            }
            None => None,
        };
        let record = np_core::ComponentRecord::new(
            np_core::ComponentKind::Builder,
            &hostname,
            VERSION,
            np_core::ComponentState::Running,
        );
        let registration = ComponentRegistration::register(&zk, record)
            .await
            .context("registering the builder component")?;
        let cancel = CancellationToken::new();
        let setup = Setup { config: Arc::new(config.clone()), providers };
        let (setup_tx, setup_rx) = channel::channel(Arc::new(setup));
        let build_changes = Arc::new(Notify::new());
        let upload_changes = Arc::new(Notify::new());
        let cleanup_changes = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let status_changes = Arc::new(Notify::new());
        let all = vec![
            build_changes.clone(),
            upload_changes.clone(),
            cleanup_changes.clone(),
            status_changes.clone(),
        ];
        tasks.push(tokio::spawn(watch::watch_tree(zk.clone(), paths::IMAGES, all, cancel.clone())));
        let uploader = upload::UploadWorker::new(
            zk.clone(),
            setup_rx.clone(),
            upload::UploadSettings {
                workers: settings.upload_workers,
                retry_delay: settings.retry_delay,
                metrics: metrics.clone(),
            },
            upload_changes,
            cancel.clone(),
        );
        tasks.push(tokio::spawn(uploader.run()));
        let cleaner = cleanup::CleanupWorker::new(
            zk.clone(),
            setup_rx.clone(),
            settings.cleanup.clone(),
            cleanup_changes,
            cancel.clone(),
        );
        tasks.push(tokio::spawn(cleaner.run()));
        let worker = build::BuildWorker::new(
            zk.clone(),
            setup_rx,
            build::BuildSettings {
                workers: settings.build_workers,
                hostname,
                builder_id: builder_id.clone(),
                retry_delay: settings.retry_delay,
                metrics: metrics.clone(),
            },
            build_changes,
            cancel.clone(),
        );
        tasks.push(tokio::spawn(worker.run()));
        tasks.push(tokio::spawn(metrics::run_status_reporter(
            zk.clone(),
            metrics.clone(),
            status_changes,
            settings.cleanup.interval,
            cancel.clone(),
        )));
        info!(builder_id = %builder_id, "builder started");
        Ok(Builder { setup: setup_tx, registration, cancel, tasks, builder_id, metrics, metrics_server })
    }

    /// The builder's metrics.
    pub fn metrics(&self) -> &metrics::BuilderMetrics {
        &self.metrics
    }

    /// The `/metrics` server's bound address, when it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(metrics_http::MetricsServer::local_addr)
    }

    /// This builder's id.
    pub fn builder_id(&self) -> &str {
        &self.builder_id
    }

    /// Applies a new configuration and its providers.
    pub fn reconfigure(&self, config: &Config, providers: ProviderSet) {
        let _ = self.setup.send(Arc::new(Setup { config: Arc::new(config.clone()), providers }));
    }

    /// Stops the workers (running builds are killed and recorded as failed)
    /// and unregisters.
    pub async fn stop(self) {
        if let Some(server) = self.metrics_server {
            server.stop().await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.registration.unregister().await;
        info!("builder stopped");
    }
}
