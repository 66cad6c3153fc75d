//! The cleanup worker: retention of builds and uploads, removal of images
//! and providers from the configuration, and the local files, as upstream's
//! `CleanupWorker`.
//!
//! One pass:
//! 1. For every image and provider, the two newest `ready` uploads across
//!    the image's `ready` builds are kept whatever else happens.
//! 2. For every image in ZooKeeper: the builds to keep are its two newest
//!    `ready` builds, or none if the image is no longer configured (every
//!    builder must carry the full `diskimages` list, as upstream says). For
//!    every build and every provider that manages images:
//!    * if the provider no longer lists the image, its uploads of the build
//!      are deleted;
//!    * for a kept build, leftovers are removed: `uploading` records whose
//!      upload lock is free (an upload that died), and `failed` or
//!      `deleting` uploads (the cloud image first).
//!
//!    A build that is not kept (failed, old, or marked `deleting` by
//!    `nodepool dib-image-delete`) loses every upload that is not among the
//!    kept ones; once all its uploads are `deleting` (or it has none) it is
//!    marked `deleting`, which lets its local files go, and once no upload
//!    record remains its znode is deleted. A `building` build whose image
//!    build lock is held is still being built and is left alone.
//! 3. Deleting an upload: it is marked `deleting` under its upload-number
//!    lock (skipped while the upload runs), its cloud image is deleted, and
//!    then its record. A cloud error leaves it `deleting` for the next pass.
//! 4. Local files: the files of builds that ZooKeeper no longer knows, or
//!    that are `deleting`, are removed; with `delete-after-upload`, the
//!    format files of a ready build that every provider has uploaded are
//!    removed too, except `keep-formats`.
//!
//! The worker runs a pass after ZooKeeper changes under `/nodepool/images`
//! (settled for a moment, since one change brings others), after a
//! configuration change, and every [`CleanupSettings::interval`] (upstream:
//! 60 s), which retries failed cloud deletions and catches a builder that
//! died while building.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use np_core::{BuildState, ImageBuild, ImageUpload, UploadState};
use np_zk::{paths, LockOptions, Zk, ZkError};
use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::upload::{builds_of, uploads_of};
use crate::Setup;

/// Ready builds (and per provider, ready uploads) kept.
pub const KEEP: usize = 2;

/// Cleanup worker settings.
#[derive(Debug, Clone)]
pub struct CleanupSettings {
    /// The longest time between passes (upstream: 60 s).
    pub interval: Duration,
    /// How long changes settle before a pass.
    pub settle: Duration,
}

impl Default for CleanupSettings {
    fn default() -> Self {
        CleanupSettings { interval: Duration::from_secs(60), settle: Duration::from_secs(1) }
    }
}

/// The cleanup worker.
pub struct CleanupWorker {
    zk: Zk,
    setup: watch::Receiver<Arc<Setup>>,
    settings: CleanupSettings,
    changes: Arc<Notify>,
    cancel: CancellationToken,
    /// Uploads whose cloud deletion failed: not tried again before then.
    backoff: Mutex<HashMap<String, Instant>>,
}

/// All builds of an image with their uploads per provider.
struct ImageState {
    builds: Vec<(String, ImageBuild)>,
    uploads: HashMap<(String, String), Vec<(String, ImageUpload)>>,
}

impl CleanupWorker {
    /// A worker that runs a pass after `changes`.
    pub fn new(
        zk: Zk,
        setup: watch::Receiver<Arc<Setup>>,
        settings: CleanupSettings,
        changes: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        CleanupWorker { zk, setup, settings, changes, cancel, backoff: Mutex::new(HashMap::new()) }
    }

    /// Runs until cancelled.
    pub async fn run(mut self) {
        loop {
            let setup = self.setup.borrow_and_update().clone();
            if let Err(e) = self.pass(&setup).await {
                warn!(error = %e, "cleanup pass failed");
            }
            // The pass's own writes (states, lock contenders) woke it: that
            // is no reason for another pass. (A change by someone else during
            // the pass is seen at their next change or the next interval.)
            let _ = tokio::time::timeout(Duration::ZERO, self.changes.notified()).await;
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.changes.notified() => {
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(self.settings.settle) => {}
                    }
                }
                changed = self.setup.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// One cleanup pass.
    pub async fn pass(&self, setup: &Setup) -> Result<(), ZkError> {
        let config = &setup.config;
        // The providers that manage images, with the images they list.
        let managing: Vec<(&str, HashSet<String>)> = config
            .providers
            .iter()
            .filter(|p| setup.providers.contains_key(&p.name) && p.image_format().is_some())
            .map(|p| (p.name.as_str(), p.diskimage_names().into_iter().collect()))
            .collect();
        for image in self.zk.image_names().await? {
            let state = self.image_state(&image, managing.iter().map(|(p, _)| *p)).await?;
            self.clean_image(setup, &image, &state, &managing).await?;
        }
        if let Some(images_dir) = config.images_dir.as_deref() {
            self.clean_files(setup, images_dir).await?;
        }
        Ok(())
    }

    async fn image_state(
        &self,
        image: &str,
        providers: impl Iterator<Item = &str>,
    ) -> Result<ImageState, ZkError> {
        let providers: Vec<&str> = providers.collect();
        let mut builds = Vec::new();
        let mut uploads = HashMap::new();
        for (id, build) in builds_of(&self.zk, image).await? {
            for provider in &providers {
                let list = uploads_of(&self.zk, image, &id, provider).await?;
                if !list.is_empty() {
                    uploads.insert((id.clone(), (*provider).to_owned()), list);
                }
            }
            builds.push((id, build));
        }
        builds.sort_by(|a, b| b.1.state_time.total_cmp(&a.1.state_time));
        Ok(ImageState { builds, uploads })
    }

    async fn clean_image(
        &self,
        setup: &Setup,
        image: &str,
        state: &ImageState,
        managing: &[(&str, HashSet<String>)],
    ) -> Result<(), ZkError> {
        let configured = setup.config.diskimage(image).is_some();
        let ready_builds: Vec<&str> = state
            .builds
            .iter()
            .filter(|(_, b)| b.state == BuildState::Ready)
            .map(|(id, _)| id.as_str())
            .collect();
        let keep: HashSet<&str> =
            if configured { ready_builds.iter().take(KEEP).copied().collect() } else { HashSet::new() };
        // Per provider, the newest ready uploads across the ready builds.
        let mut recent: HashSet<(String, String, String)> = HashSet::new();
        for (provider, _) in managing {
            let mut ready: Vec<(f64, &str, &str)> = Vec::new();
            for build in &ready_builds {
                for (id, u) in
                    state.uploads.get(&((*build).to_owned(), (*provider).to_owned())).into_iter().flatten()
                {
                    if u.state == UploadState::Ready {
                        ready.push((u.state_time, build, id));
                    }
                }
            }
            ready.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, build, id) in ready.into_iter().take(KEEP) {
                recent.insert((build.to_owned(), (*provider).to_owned(), id.to_owned()));
            }
        }
        for (build_id, build) in &state.builds {
            let kept = keep.contains(build_id.as_str()) && build.state != BuildState::Deleting;
            for (provider, images) in managing {
                let Some(uploads) = state.uploads.get(&(build_id.clone(), (*provider).to_owned())) else {
                    continue;
                };
                for (upload_id, upload) in uploads {
                    let is_recent =
                        recent.contains(&(build_id.clone(), (*provider).to_owned(), upload_id.clone()));
                    let delete = if !images.contains(image) {
                        // The provider no longer takes this image.
                        true
                    } else if kept {
                        match upload.state {
                            UploadState::Failed | UploadState::Deleting => true,
                            UploadState::Uploading => {
                                let lock = paths::upload_lock(image, build_id, provider);
                                !self.zk.is_locked(&lock).await?
                            }
                            UploadState::Ready => false,
                        }
                    } else {
                        !is_recent
                    };
                    if delete {
                        self.delete_upload(setup, image, build_id, provider, upload_id, upload.state).await?;
                    }
                }
            }
            if kept {
                continue;
            }
            if build.state == BuildState::Building
                && self.zk.is_locked(&paths::image_build_lock(image)).await?
            {
                continue; // being built
            }
            self.retire_build(image, build_id, build.state, setup.config.images_dir.as_deref()).await?;
        }
        Ok(())
    }

    /// Marks a build that is not kept `deleting` once its uploads are going,
    /// and deletes it once they are gone. `seen` is the state the decision
    /// was made on: if the build changed since (a `building` one that just
    /// became `ready`), it is left for the next pass, as upstream re-checks.
    /// As upstream, the build's local files go before its record, so a build
    /// that is gone from ZooKeeper has no files left here.
    async fn retire_build(
        &self,
        image: &str,
        build_id: &str,
        seen: BuildState,
        images_dir: Option<&Path>,
    ) -> Result<(), ZkError> {
        let mut remaining = 0;
        let mut all_deleting = true;
        for provider in self.zk.build_providers(image, build_id).await? {
            for (_, u) in uploads_of(&self.zk, image, build_id, &provider).await? {
                remaining += 1;
                all_deleting &= u.state == UploadState::Deleting;
            }
        }
        if !all_deleting && seen != BuildState::Deleting {
            return Ok(());
        }
        // The build-id lock, without recreating a build another builder has
        // just deleted.
        let options = LockOptions::try_once().no_parents();
        let lock = match self.zk.lock(&paths::build_lock(image, build_id), &options).await {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(()),
            Err(e) if e.is_no_node() => return Ok(()),
            Err(e) => return Err(e),
        };
        let current = match self.zk.get_build(image, build_id).await {
            Ok(Some((b, _))) => b,
            Ok(None) => return lock.release().await,
            Err(e) if e.is_malformed() => {
                warn!(image, build = build_id, error = %e, "leaving a malformed build record alone");
                return lock.release().await;
            }
            Err(e) => {
                let _ = lock.release().await;
                return Err(e);
            }
        };
        if current.state != seen && current.state != BuildState::Deleting {
            debug!(image, build = build_id, "the build changed during the pass; looking again later");
            return lock.release().await;
        }
        if current.state != BuildState::Deleting && all_deleting {
            let mut current = current;
            current.state = BuildState::Deleting;
            current.state_time = np_core::now();
            self.zk.store_build(image, Some(build_id), &current).await?;
            info!(image, build = build_id, "build marked deleting");
        }
        if remaining > 0 {
            debug!(image, build = build_id, remaining, "build keeps uploads that are still being deleted");
            return lock.release().await;
        }
        if let Some(dir) = images_dir {
            crate::dib::remove_build_files(dir, image, build_id);
        }
        // The record goes with its lock directory (our contender included).
        match self.zk.delete_build(image, build_id).await {
            Ok(()) => {
                lock.disarm();
                info!(image, build = build_id, "build deleted");
                Ok(())
            }
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Deletes one upload: `deleting` under its lock, the cloud image, the
    /// record. `seen` is the state the decision was made on; an upload that
    /// changed since (an `uploading` one that became `ready`) is left for the
    /// next pass. A cloud error leaves it `deleting`, and it is not tried
    /// again before [`CleanupSettings::interval`].
    async fn delete_upload(
        &self,
        setup: &Setup,
        image: &str,
        build: &str,
        provider: &str,
        upload: &str,
        seen: UploadState,
    ) -> Result<(), ZkError> {
        let key = format!("{image}/{build}/{provider}/{upload}");
        if self.backoff.lock().await.get(&key).is_some_and(|at| *at > Instant::now()) {
            return Ok(());
        }
        let lock_path = paths::upload_number_lock(image, build, provider, upload);
        let options = LockOptions::try_once().no_parents();
        let lock = match self.zk.lock(&lock_path, &options).await {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(()), // being uploaded or deleted elsewhere
            Err(e) if e.is_no_node() => return Ok(()), // deleted meanwhile
            Err(e) => return Err(e),
        };
        let mut record = match self.zk.get_upload(image, build, provider, upload).await {
            Ok(Some((u, _))) => u,
            Ok(None) => return lock.release().await,
            Err(e) if e.is_malformed() => {
                warn!(image, build, provider, upload, error = %e, "leaving a malformed upload record alone");
                return lock.release().await;
            }
            Err(e) => {
                let _ = lock.release().await;
                return Err(e);
            }
        };
        if record.state != seen && record.state != UploadState::Deleting {
            return lock.release().await;
        }
        if record.state == UploadState::Uploading
            && self.zk.is_locked(&paths::upload_lock(image, build, provider)).await?
        {
            return lock.release().await; // an upload in progress after all
        }
        if record.state != UploadState::Deleting {
            record.state = UploadState::Deleting;
            record.state_time = np_core::now();
            self.zk.store_upload(image, build, provider, Some(upload), &record).await?;
        }
        if let Some(external_id) = record.external_id.as_deref() {
            let Some(cloud) = setup.providers.get(provider) else {
                return lock.release().await;
            };
            if let Err(e) = cloud.delete_image(external_id).await {
                warn!(image, build, provider, upload, external_id, error = %e, "cannot delete the cloud image yet");
                self.backoff.lock().await.insert(key, Instant::now() + self.settings.interval);
                return lock.release().await;
            }
            info!(image, build, provider, upload, external_id, "cloud image deleted");
        }
        self.backoff.lock().await.remove(&key);
        // The record goes with its lock directory (our contender included).
        match self.zk.delete_upload(image, build, provider, upload).await {
            Ok(()) => {
                lock.disarm();
                Ok(())
            }
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Removes the files of builds ZooKeeper no longer has (or has as
    /// `deleting`), and with `delete-after-upload` the uploaded formats.
    async fn clean_files(&self, setup: &Setup, images_dir: &Path) -> Result<(), ZkError> {
        let mut local: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(images_dir) else { return Ok(()) };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((image, build, ext)) = parse_build_file(&name) {
                local.entry((image.to_owned(), build.to_owned())).or_default().push(ext.to_owned());
            }
        }
        for ((image, build), exts) in local {
            let record = match self.zk.get_build(&image, &build).await {
                Ok(r) => r.map(|(b, _)| b),
                Err(e) if e.is_malformed() => continue,
                Err(e) => return Err(e),
            };
            match record {
                None => {
                    info!(image, build, "removing the files of a build ZooKeeper no longer has");
                    crate::dib::remove_build_files(images_dir, &image, &build);
                }
                Some(b) if b.state == BuildState::Deleting => {
                    info!(image, build, "removing the files of a deleted build");
                    crate::dib::remove_build_files(images_dir, &image, &build);
                }
                Some(b) if b.state == BuildState::Ready => {
                    self.delete_after_upload(setup, images_dir, &image, &build, &exts).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn delete_after_upload(
        &self,
        setup: &Setup,
        images_dir: &Path,
        image: &str,
        build: &str,
        exts: &[String],
    ) -> Result<(), ZkError> {
        let Some(di) = setup.config.diskimage(image) else { return Ok(()) };
        if !di.delete_after_upload {
            return Ok(());
        }
        // Formats some provider still has to upload are kept.
        let mut needed: HashSet<String> = di.keep_formats.iter().cloned().collect();
        for p in &setup.config.providers {
            let Some(format) = p.image_format() else { continue };
            if !p.diskimage_names().iter().any(|n| n == image) {
                continue;
            }
            let uploaded = uploads_of(&self.zk, image, build, &p.name)
                .await?
                .iter()
                .any(|(_, u)| u.state == UploadState::Ready);
            if !uploaded {
                needed.insert(format.to_owned());
            }
        }
        for format in exts.iter().filter(|e| !e.contains('.') && *e != "d") {
            if needed.contains(format) {
                continue;
            }
            let path = crate::upload::image_file(images_dir, image, build, format);
            match std::fs::remove_file(&path) {
                Ok(()) => info!(file = %path.display(), "uploaded everywhere; deleted (delete-after-upload)"),
                Err(e) => error!(file = %path.display(), error = %e, "cannot delete an uploaded image file"),
            }
            for suffix in [".md5", ".sha256"] {
                let mut checksum = path.clone().into_os_string();
                checksum.push(suffix);
                let _ = std::fs::remove_file(checksum);
            }
        }
        Ok(())
    }
}

/// `<image>-<build>.<ext>` (a build id is 32 hex digits, or 10 digits in
/// old records) -> (image, build, ext); `ext` may be `qcow2.md5` or `d`.
pub fn parse_build_file(name: &str) -> Option<(&str, &str, &str)> {
    // Image names may contain dashes and dots; a build id has neither.
    for (i, _) in name.rmatch_indices('-') {
        let Some((build, ext)) = name[i + 1..].split_once('.') else { continue };
        if np_core::is_build_id(build) && !ext.is_empty() {
            return Some((&name[..i], build, ext));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_files_are_recognised() {
        let id = "0123456789abcdef0123456789abcdef";
        let name = format!("ubuntu-jammy-{id}.qcow2");
        assert_eq!(parse_build_file(&name), Some(("ubuntu-jammy", id, "qcow2")));
        let md5 = format!("ubuntu-{id}.qcow2.md5");
        assert_eq!(parse_build_file(&md5), Some(("ubuntu", id, "qcow2.md5")));
        let dir = format!("ubuntu-{id}.d");
        assert_eq!(parse_build_file(&dir), Some(("ubuntu", id, "d")));
        assert_eq!(parse_build_file("ubuntu-0000000001.raw"), Some(("ubuntu", "0000000001", "raw")));
        assert_eq!(parse_build_file("builder_id.txt"), None);
        assert_eq!(parse_build_file("ubuntu-notanid.qcow2"), None);
    }
}
