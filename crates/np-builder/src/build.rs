//! The build worker: decides which diskimages need a build and runs
//! diskimage-builder for them, recording each build in ZooKeeper.
//!
//! An image is built when it is not paused (`pause: true` in the config or
//! the ZooKeeper pause flag), has formats to build, and
//! * someone asked for it (`/nodepool/images/<image>/request-build`, made by
//!   `nodepool image-build`; removed once a build ends ready, so a failed
//!   manual build is tried again), or
//! * it has no ready build, or its newest ready build is `rebuild-age` old,
//!   or lacks a format a provider now needs.
//!
//! Only one builder builds an image at a time: the image build lock is
//! taken without waiting, and the decision is re-checked under it. The
//! build record goes `building` -> `ready` or `failed`; a build during which
//! the ZooKeeper session was lost is `failed` (its record may have been
//! written by a session that no longer holds the lock), and if the final
//! record cannot be stored the build's files are removed.
//!
//! Nothing here polls: the worker wakes on ZooKeeper changes under
//! `/nodepool/images` (a persistent recursive watch), configuration changes,
//! a finished build, and the next rebuild-age deadline. A failed build is
//! tried again after [`BuildSettings::retry_delay`] (upstream: its 10 s
//! cycle).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use np_config::{Config, DiskImage};

use crate::attempts::{outcome, Attempts, Outcome};
use crate::Setup;
use np_core::{BuildState, ImageBuild};
use np_zk::{paths, LockOptions, Zk, ZkError};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::dib::{self, DibJob};
use crate::metrics::{BuildRecord, Status};

/// Where build logs go without `build-log-dir`.
pub const DEFAULT_BUILD_LOG_DIR: &str = "/var/log/nodepool/builds";

/// Build worker settings.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Builds at once (`--build-workers`, default 1).
    pub workers: usize,
    /// This host's name (recorded as `builder`).
    pub hostname: String,
    /// This builder's id (`builder_id.txt`).
    pub builder_id: String,
    /// Wait before trying a failed build again.
    pub retry_delay: Duration,
    /// Where builds are recorded.
    pub metrics: crate::metrics::BuilderMetrics,
}

/// What to do about one image now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Paused in the config or in ZooKeeper.
    Paused,
    /// Nothing to build: no formats (no `formats` and no provider uses it).
    NoFormats,
    /// Build it.
    Build {
        /// Asked for with `request-build`.
        manual: bool,
        /// Why, for the log.
        reason: String,
    },
    /// Up to date until this time (epoch seconds).
    UpToDate {
        /// When the newest ready build reaches `rebuild-age`.
        rebuild_at: f64,
    },
}

/// The newest ready build of an image: (state_time, formats).
pub type NewestReady = Option<(f64, BTreeSet<String>)>;

/// The decision for an image from what ZooKeeper says (upstream's
/// scheduled and manual checks, in one).
pub fn decide(
    image: &DiskImage,
    formats: &BTreeSet<String>,
    paused_in_zk: bool,
    requested: bool,
    newest_ready: &NewestReady,
    now: f64,
) -> Decision {
    if image.pause || paused_in_zk {
        return Decision::Paused;
    }
    if formats.is_empty() {
        return Decision::NoFormats;
    }
    if requested {
        return Decision::Build { manual: true, reason: "a build was requested".into() };
    }
    let Some((built_at, built_formats)) = newest_ready else {
        return Decision::Build { manual: false, reason: "there is no ready build".into() };
    };
    let rebuild_at = built_at + image.rebuild_age.as_secs_f64();
    if now >= rebuild_at {
        return Decision::Build {
            manual: false,
            reason: "the newest build is older than rebuild-age".into(),
        };
    }
    if !formats.is_subset(built_formats) {
        let missing: Vec<&str> = formats.difference(built_formats).map(String::as_str).collect();
        return Decision::Build {
            manual: false,
            reason: format!("the newest build lacks the format(s) {}", missing.join(", ")),
        };
    }
    Decision::UpToDate { rebuild_at }
}

/// Reads what [`decide`] needs for `image` from ZooKeeper.
async fn state_of(zk: &Zk, image: &str) -> Result<(bool, bool, NewestReady), ZkError> {
    let paused = zk.is_image_paused(image).await?;
    let requested = zk.exists(&paths::image_build_request(image)).await?.is_some();
    let newest = crate::upload::newest_ready_build(zk, image)
        .await?
        .map(|(_, b)| (b.state_time, b.formats.into_iter().collect()));
    Ok((paused, requested, newest))
}

/// The build worker.
pub struct BuildWorker {
    zk: Zk,
    setup: watch::Receiver<Arc<Setup>>,
    settings: BuildSettings,
    changes: Arc<Notify>,
    cancel: CancellationToken,
}

impl BuildWorker {
    /// A worker that wakes on `changes` (signalled on ZooKeeper changes
    /// under `/nodepool/images`).
    pub fn new(
        zk: Zk,
        setup: watch::Receiver<Arc<Setup>>,
        settings: BuildSettings,
        changes: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        BuildWorker { zk, setup, settings, changes, cancel }
    }

    /// Runs until cancelled; running builds are killed then.
    pub async fn run(mut self) {
        let mut attempts: Attempts<String> = Attempts::new(self.settings.workers, self.settings.retry_delay);
        loop {
            let setup = self.setup.borrow_and_update().clone();
            let config = setup.config.clone();
            let mut wake = Instant::now() + Duration::from_secs(3600);
            let now = np_core::now();
            for image in &config.diskimages {
                if !attempts.idle(&image.name, &mut wake) {
                    continue;
                }
                let formats = config.build_formats(&image.name);
                let decision = match state_of(&self.zk, &image.name).await {
                    Ok((paused, requested, newest)) => {
                        decide(image, &formats, paused, requested, &newest, now)
                    }
                    Err(e) => {
                        warn!(image = %image.name, error = %e, "cannot read the image's builds");
                        wake = wake.min(Instant::now() + self.settings.retry_delay);
                        continue;
                    }
                };
                let status = match decision {
                    Decision::Paused => Status::Paused,
                    _ => Status::Idle,
                };
                self.settings.metrics.set_build_status(&image.name, status);
                match decision {
                    Decision::Build { reason, .. } if attempts.has_room() => {
                        // Another builder is building it: look, without
                        // contending (a contender's znodes would wake every
                        // builder, this one included, and it would try again).
                        match self.zk.is_locked(&paths::image_build_lock(&image.name)).await {
                            Ok(false) => {}
                            Ok(true) => {
                                debug!(image = %image.name, "another builder is building it");
                                continue;
                            }
                            Err(e) => {
                                warn!(image = %image.name, error = %e, "cannot look at the build lock");
                                continue;
                            }
                        }
                        info!(image = %image.name, "building: {reason}");
                        let job = BuildJob {
                            zk: self.zk.clone(),
                            config: config.clone(),
                            settings: self.settings.clone(),
                            image: image.name.clone(),
                            formats,
                            cancel: self.cancel.clone(),
                        };
                        let span = info_span!("build", image = %image.name);
                        attempts.start(image.name.clone(), job.run().instrument(span));
                    }
                    Decision::Build { .. } => {} // all workers busy: a finished build wakes us
                    Decision::UpToDate { rebuild_at } => {
                        let secs = (rebuild_at - now).max(0.0);
                        wake = wake.min(Instant::now() + Duration::from_secs_f64(secs));
                    }
                    Decision::Paused | Decision::NoFormats => {
                        debug!(image = %image.name, decision = ?decision, "not building");
                    }
                }
            }
            if !attempts.next_turn(&self.cancel, &self.changes, &mut self.setup, wake).await {
                break;
            }
        }
        // Shutdown: the builds see the cancellation and kill diskimage-builder.
        attempts.shutdown(false).await;
    }
}

/// One build attempt.
struct BuildJob {
    zk: Zk,
    config: Arc<Config>,
    settings: BuildSettings,
    image: String,
    formats: BTreeSet<String>,
    cancel: CancellationToken,
}

impl BuildJob {
    async fn run(self) -> Outcome {
        outcome(self.try_run().await, "build")
    }

    async fn try_run(&self) -> Result<Outcome, ZkError> {
        let zk = &self.zk;
        let Some(diskimage) = self.config.diskimage(&self.image) else { return Ok(Outcome::Skipped) };
        let Some(lock) = zk.lock(&paths::image_build_lock(&self.image), &LockOptions::try_once()).await?
        else {
            debug!("another builder is building this image");
            return Ok(Outcome::Skipped);
        };
        // Re-check under the lock: another builder may just have finished.
        let (paused, requested, newest) = state_of(zk, &self.image).await?;
        let decision = decide(diskimage, &self.formats, paused, requested, &newest, np_core::now());
        let Decision::Build { manual, .. } = decision else {
            lock.release().await?;
            return Ok(Outcome::Skipped);
        };
        let Some(images_dir) = self.config.images_dir.clone() else {
            lock.release().await?;
            return Ok(Outcome::Failed);
        };
        let generation = zk.status().generation;
        let mut record = ImageBuild::new(BuildState::Building);
        record.builder = Some(self.settings.hostname.clone());
        record.builder_id = Some(self.settings.builder_id.clone());
        record.formats = self.formats.iter().cloned().collect();
        let build_id = zk.store_build(&self.image, None, &record).await?;
        let log_dir =
            self.config.build_log_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BUILD_LOG_DIR));
        // Upstream prunes the old logs before each build.
        dib::prune_logs(&log_dir, &self.image, self.config.build_log_retention);
        let job = DibJob {
            image: self.image.clone(),
            build_id: build_id.clone(),
            dib_cmd: diskimage.dib_cmd.clone(),
            formats: self.formats.clone(),
            elements: diskimage.elements.clone(),
            release: diskimage.release.clone(),
            env_vars: diskimage.env_vars.clone(),
            elements_dir: self.config.elements_dir.clone(),
            images_dir: images_dir.clone(),
            log_dir,
            timeout: diskimage.build_timeout,
        };
        let started = std::time::Instant::now();
        let metrics = &self.settings.metrics;
        metrics.set_build_status(&self.image, Status::Building);
        let result = dib::run(&job, &self.cancel).await;
        metrics.set_build_status(&self.image, Status::Idle);
        let took = started.elapsed();
        let session_lost = zk.status().generation != generation || !lock.is_valid();
        let ok = match &result {
            Ok(()) if session_lost => {
                warn!(build = %build_id, "the ZooKeeper session was lost during the build; it counts as failed");
                false
            }
            Ok(()) => true,
            Err(e) => {
                info!(build = %build_id, log = %job.log_path().display(), error = %e, "DIB failed creating {}", self.image);
                false
            }
        };
        // As upstream: stats whenever diskimage-builder ran (a timeout
        // counts as rc 1), sizes only for a ready build.
        let rc = match &result {
            Ok(()) => Some(0),
            Err(dib::DibError::Failed(code)) => Some(*code),
            Err(dib::DibError::Timeout(_)) => Some(1),
            Err(_) => None,
        };
        if let Some(rc) = rc {
            let sizes = if ok {
                self.formats
                    .iter()
                    .filter_map(|f| {
                        let file = crate::upload::image_file(&images_dir, &self.image, &build_id, f);
                        std::fs::metadata(file).ok().map(|m| (f.clone(), allocated_size(&m)))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            metrics.record_build(&BuildRecord { image: &self.image, ready: ok, rc, duration: took, sizes });
        }
        record.state = if ok { BuildState::Ready } else { BuildState::Failed };
        if !ok {
            // As upstream's failed record: no formats.
            record.formats.clear();
        }
        record.state_time = np_core::now();
        record.username = Some(diskimage.username.clone());
        record.python_path = Some(diskimage.python_path.clone());
        record.shell_type = diskimage.shell_type.clone();
        if let Err(e) = zk.store_build(&self.image, Some(&build_id), &record).await {
            // Nobody will know these files: do not leave them behind.
            error!(build = %build_id, error = %e, "cannot store the build record; removing the build's files");
            dib::remove_build_files(&images_dir, &self.image, &build_id);
            let _ = lock.release().await;
            return Ok(Outcome::Failed);
        }
        if ok {
            info!(build = %build_id, seconds = started.elapsed().as_secs(), "image build ready");
            if manual {
                match zk.delete(&paths::image_build_request(&self.image)).await {
                    Ok(()) => {}
                    Err(e) if e.is_no_node() => {}
                    Err(e) => warn!(error = %e, "cannot remove the build request"),
                }
            }
        }
        lock.release().await?;
        Ok(if ok { Outcome::Ready } else { Outcome::Failed })
    }
}

/// The space a file takes on disk (`st_blocks` × 512: image files may be
/// sparse; upstream reports this).
fn allocated_size(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks().saturating_mul(512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(yaml_extra: &str) -> DiskImage {
        let yaml = format!(
            "zookeeper-servers:\n  - host: 127.0.0.1\ndiskimages:\n  - name: ubuntu\n    elements: [vm]\n{yaml_extra}"
        );
        let config = np_config::load_str(&yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("{e}"));
        config.diskimages[0].clone()
    }

    fn formats(f: &[&str]) -> BTreeSet<String> {
        f.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn decisions_follow_upstreams_checks() {
        let img = image("    rebuild-age: 100\n");
        let qcow2 = formats(&["qcow2"]);
        let fresh: NewestReady = Some((1000.0, qcow2.clone()));
        assert_eq!(
            decide(&img, &qcow2, false, false, &fresh, 1050.0),
            Decision::UpToDate { rebuild_at: 1100.0 }
        );
        assert!(matches!(
            decide(&img, &qcow2, false, false, &fresh, 1100.0),
            Decision::Build { manual: false, .. }
        ));
        assert!(matches!(
            decide(&img, &qcow2, false, false, &None, 0.0),
            Decision::Build { manual: false, .. }
        ));
        assert!(matches!(
            decide(&img, &qcow2, false, true, &fresh, 1050.0),
            Decision::Build { manual: true, .. }
        ));
        // A provider needing raw now: rebuild.
        let both = formats(&["qcow2", "raw"]);
        assert!(matches!(decide(&img, &both, false, false, &fresh, 1050.0),
            Decision::Build { ref reason, .. } if reason.contains("raw")));
        assert_eq!(decide(&img, &qcow2, true, true, &None, 0.0), Decision::Paused);
        assert_eq!(decide(&image("    pause: true\n"), &qcow2, false, true, &None, 0.0), Decision::Paused);
        assert_eq!(decide(&img, &BTreeSet::new(), false, true, &None, 0.0), Decision::NoFormats);
    }
}
