//! The upload worker: uploads the newest ready build of every diskimage to
//! every provider that lists it, recording each upload in ZooKeeper.
//!
//! For each provider and each of its `diskimages` entries, an upload starts
//! when the entry is not paused, the image has a ready build, this builder
//! holds that build's file in the provider's format (only the builder that
//! built an image uploads it), and the provider has no ready upload of that
//! build. The upload lock of (image, build, provider) is taken without
//! waiting and the state re-checked under it. The record goes `uploading`
//! -> `ready` (with the cloud's id and name) or `failed`; a failed upload is
//! tried again after [`UploadSettings::retry_delay`], and the cleanup removes
//! the failed record.
//!
//! The cloud name is the provider's `image-name-format` (default
//! `{image_name}-{timestamp}`); the image carries the diskimage's
//! `metadata`, the provider entry's `meta`/`tags`, and the builder's
//! `nodepool_build_id`, `nodepool_upload_id` and `nodepool_provider_name`.
//! With `post-upload-hook`, the hook runs as `<hook> <provider> <external id>
//! <file>` after the upload; if it fails, the cloud image is deleted and the
//! upload is `failed`.
//!
//! Like the build worker, it wakes on ZooKeeper changes, configuration
//! changes, finished uploads and retry deadlines; nothing polls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use np_config::Config;
use np_core::{BuildState, ImageBuild, ImageUpload, UploadState};
use np_provider::{ImageUploadRequest, Provider, META_BUILD_ID, META_PROVIDER, META_UPLOAD_ID};
use np_zk::{paths, LockOptions, Zk, ZkError};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::attempts::{outcome, Attempts, Outcome};
use crate::metrics::Status;
use crate::Setup;

/// Upload worker settings.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// Uploads at once (`--upload-workers`, default 4).
    pub workers: usize,
    /// Wait before trying a failed upload again.
    pub retry_delay: Duration,
    /// Where uploads are recorded.
    pub metrics: crate::metrics::BuilderMetrics,
}

/// The builds of `image` (malformed records are logged and skipped: they
/// are left alone, never overwritten).
pub async fn builds_of(zk: &Zk, image: &str) -> Result<Vec<(String, ImageBuild)>, ZkError> {
    let mut out = Vec::new();
    for id in zk.build_ids(image).await? {
        match zk.get_build(image, &id).await {
            Ok(Some((b, _))) => out.push((id, b)),
            Ok(None) => {}
            Err(e) if e.is_malformed() => {
                warn!(image, build = %id, error = %e, "skipping a malformed build record")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The newest ready build of `image`: (build id, record).
pub async fn newest_ready_build(zk: &Zk, image: &str) -> Result<Option<(String, ImageBuild)>, ZkError> {
    Ok(builds_of(zk, image)
        .await?
        .into_iter()
        .filter(|(_, b)| b.state == BuildState::Ready)
        .max_by(|a, b| a.1.state_time.total_cmp(&b.1.state_time)))
}

/// The uploads of a build to a provider, oldest first (malformed ones
/// skipped).
pub async fn uploads_of(
    zk: &Zk,
    image: &str,
    build: &str,
    provider: &str,
) -> Result<Vec<(String, ImageUpload)>, ZkError> {
    let mut out = Vec::new();
    let mut ids = zk.upload_ids(image, build, provider).await?;
    ids.sort();
    for id in ids {
        match zk.get_upload(image, build, provider, &id).await {
            Ok(Some((u, _))) => out.push((id, u)),
            Ok(None) => {}
            Err(e) if e.is_malformed() => {
                warn!(image, build, provider, upload = %id, error = %e, "skipping a malformed upload record")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `<images-dir>/<image>-<build>.<format>`.
pub fn image_file(images_dir: &Path, image: &str, build: &str, format: &str) -> PathBuf {
    images_dir.join(format!("{image}-{build}.{format}"))
}

/// Formats `image-name-format` (a Python format string over `image_name`,
/// `upload_id` and `timestamp`); unknown fields are kept as written.
pub fn image_name(format: &str, image: &str, upload_id: &str, timestamp: i64) -> String {
    let mut out = String::new();
    let mut rest = format;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let (true, Some(end)) = (tail.starts_with('{'), tail.find('}')) {
            let field = &tail[1..end];
            match field {
                "image_name" => out.push_str(image),
                "upload_id" => out.push_str(upload_id),
                "timestamp" => out.push_str(&timestamp.to_string()),
                _ => out.push_str(&tail[..=end]),
            }
            rest = &tail[end + 1..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The first `len` characters of a diskimage-builder checksum file
/// (`<hash>  <file>`), if it exists.
fn checksum(path: &Path, suffix: &str, len: usize) -> Option<String> {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    let text = std::fs::read_to_string(PathBuf::from(name)).ok()?;
    let hash: String = text.chars().take(len).collect();
    (hash.len() == len && hash.chars().all(|c| c.is_ascii_hexdigit())).then_some(hash)
}

/// The upload worker.
pub struct UploadWorker {
    zk: Zk,
    setup: watch::Receiver<Arc<Setup>>,
    settings: UploadSettings,
    changes: Arc<Notify>,
    cancel: CancellationToken,
}

impl UploadWorker {
    /// A worker that wakes on `changes`.
    pub fn new(
        zk: Zk,
        setup: watch::Receiver<Arc<Setup>>,
        settings: UploadSettings,
        changes: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        UploadWorker { zk, setup, settings, changes, cancel }
    }

    /// Runs until cancelled; running uploads are abandoned then.
    pub async fn run(mut self) {
        let mut attempts: Attempts<(String, String)> =
            Attempts::new(self.settings.workers, self.settings.retry_delay);
        loop {
            let setup = self.setup.borrow_and_update().clone();
            let mut wake = Instant::now() + Duration::from_secs(3600);
            if let Err(e) = self.start_uploads(&setup, &mut attempts, &mut wake).await {
                warn!(error = %e, "cannot read the image records");
                wake = wake.min(Instant::now() + self.settings.retry_delay);
            }
            if !attempts.next_turn(&self.cancel, &self.changes, &mut self.setup, wake).await {
                break;
            }
        }
        // Upstream does not wait for uploads either; an interrupted one is
        // left `uploading` and removed by the cleanup once its lock is free.
        attempts.shutdown(true).await;
    }

    async fn start_uploads(
        &self,
        setup: &Arc<Setup>,
        attempts: &mut Attempts<(String, String)>,
        wake: &mut Instant,
    ) -> Result<(), ZkError> {
        let Some(images_dir) = setup.config.images_dir.clone() else { return Ok(()) };
        let mut newest: HashMap<String, Option<(String, ImageBuild)>> = HashMap::new();
        for provider_config in &setup.config.providers {
            let Some(provider) = setup.providers.get(&provider_config.name) else { continue };
            let Some(format) = provider_config.image_format() else { continue };
            for image in provider_config.diskimage_names() {
                let key = (image.clone(), provider_config.name.clone());
                if !attempts.has_room() || !attempts.idle(&key, wake) {
                    continue;
                }
                let metrics = &self.settings.metrics;
                if provider_config.provider_diskimage(&image).is_none_or(|d| d.pause) {
                    metrics.set_upload_status(&image, &provider_config.name, Status::Paused);
                    continue;
                }
                metrics.set_upload_status(&image, &provider_config.name, Status::Idle);
                if !newest.contains_key(&image) {
                    newest.insert(image.clone(), newest_ready_build(&self.zk, &image).await?);
                }
                let Some(Some((build_id, build))) = newest.get(&image) else { continue };
                if !build.formats.iter().any(|f| f == format) {
                    continue;
                }
                let file = image_file(&images_dir, &image, build_id, format);
                if !file.exists() {
                    continue; // built elsewhere: that builder uploads it
                }
                let uploads = uploads_of(&self.zk, &image, build_id, &provider_config.name).await?;
                if uploads.iter().any(|(_, u)| u.state == UploadState::Ready) {
                    continue;
                }
                // Uploading elsewhere: look without contending (see the build worker).
                if self.zk.is_locked(&paths::upload_lock(&image, build_id, &provider_config.name)).await? {
                    continue;
                }
                let job = UploadJob {
                    metrics: self.settings.metrics.clone(),
                    zk: self.zk.clone(),
                    config: setup.config.clone(),
                    provider: provider.clone(),
                    provider_name: provider_config.name.clone(),
                    image: image.clone(),
                    build: build_id.clone(),
                    format: format.to_owned(),
                    file,
                };
                let span =
                    info_span!("upload", image = %image, build = %build_id, provider = %provider_config.name);
                attempts.start(key, job.run().instrument(span));
            }
        }
        Ok(())
    }
}

/// One upload attempt.
struct UploadJob {
    metrics: crate::metrics::BuilderMetrics,
    zk: Zk,
    config: Arc<Config>,
    provider: Arc<dyn Provider>,
    provider_name: String,
    image: String,
    build: String,
    format: String,
    file: PathBuf,
}

impl UploadJob {
    async fn run(self) -> Outcome {
        outcome(self.try_run().await, "upload")
    }

    async fn try_run(&self) -> Result<Outcome, ZkError> {
        let zk = &self.zk;
        let lock_path = paths::upload_lock(&self.image, &self.build, &self.provider_name);
        let Some(lock) = zk.lock(&lock_path, &LockOptions::try_once()).await? else {
            return Ok(Outcome::Skipped);
        };
        // Re-check under the lock.
        let build = match zk.get_build(&self.image, &self.build).await? {
            Some((b, _)) if b.state == BuildState::Ready => b,
            _ => {
                lock.release().await?;
                return Ok(Outcome::Skipped);
            }
        };
        let uploads = uploads_of(zk, &self.image, &self.build, &self.provider_name).await?;
        if uploads.iter().any(|(_, u)| u.state == UploadState::Ready) {
            lock.release().await?;
            return Ok(Outcome::Skipped);
        }
        let provider_config = self.config.provider(&self.provider_name);
        let entry = provider_config.and_then(|p| p.provider_diskimage(&self.image));
        let mut record = ImageUpload::new(UploadState::Uploading);
        record.format = Some(self.format.clone());
        // As upstream: the connection settings come from the build.
        record.username = build.username.clone();
        record.python_path = build.python_path.clone();
        record.shell_type = build.shell_type.clone();
        let upload_id = zk.store_upload(&self.image, &self.build, &self.provider_name, None, &record).await?;
        let name_format = provider_config.map_or("{image_name}-{timestamp}", |p| p.image_name_format());
        let name = image_name(name_format, &self.image, &upload_id, np_core::now() as i64);
        let mut metadata: BTreeMap<String, String> = BTreeMap::new();
        if let Some(di) = self.config.diskimage(&self.image) {
            metadata.extend(di.metadata.iter().map(|(k, v)| (k.clone(), np_core::json::python_str(v))));
        }
        if let Some(entry) = &entry {
            metadata.extend(entry.metadata.iter().map(|(k, v)| (k.clone(), np_core::json::python_str(v))));
        }
        metadata.insert(META_BUILD_ID.to_owned(), self.build.clone());
        metadata.insert(META_UPLOAD_ID.to_owned(), upload_id.clone());
        metadata.insert(META_PROVIDER.to_owned(), self.provider_name.clone());
        let request = ImageUploadRequest {
            diskimage: self.image.clone(),
            path: self.file.clone(),
            format: self.format.clone(),
            name: name.clone(),
            metadata,
            md5: checksum(&self.file, ".md5", 32),
            sha256: checksum(&self.file, ".sha256", 64),
        };
        info!(upload = %upload_id, name = %name, "uploading");
        let started = std::time::Instant::now();
        self.metrics.set_upload_status(&self.image, &self.provider_name, Status::Uploading);
        let uploaded = match self.provider.upload_image(&request).await {
            Ok(external_id) => match provider_config.and_then(|p| p.post_upload_hook()) {
                Some(hook) => match self.post_upload_hook(hook, &external_id).await {
                    Ok(()) => Ok(external_id),
                    Err(e) => {
                        // Keep the id: if deleting the image failed too, the
                        // cleanup deletes it with the failed record.
                        record.external_id = Some(external_id);
                        record.external_name = Some(name.clone());
                        Err(e)
                    }
                },
                None => Ok(external_id),
            },
            Err(e) => Err(e.to_string()),
        };
        record.state_time = np_core::now();
        self.metrics.set_upload_status(&self.image, &self.provider_name, Status::Idle);
        self.metrics.record_upload(&self.image, &self.provider_name, uploaded.is_ok(), started.elapsed());
        let outcome = match uploaded {
            Ok(external_id) => {
                info!(upload = %upload_id, image = %external_id, seconds = started.elapsed().as_secs(), "image uploaded");
                record.state = UploadState::Ready;
                record.external_id = Some(external_id);
                record.external_name = Some(name);
                Outcome::Ready
            }
            Err(e) => {
                warn!(upload = %upload_id, error = %e, "image upload failed");
                record.state = UploadState::Failed;
                Outcome::Failed
            }
        };
        zk.store_upload(&self.image, &self.build, &self.provider_name, Some(&upload_id), &record).await?;
        lock.release().await?;
        Ok(outcome)
    }

    /// Runs `post-upload-hook`; on failure deletes the uploaded image.
    async fn post_upload_hook(&self, hook: &str, external_id: &str) -> Result<(), String> {
        let output = tokio::process::Command::new(hook)
            .arg(&self.provider_name)
            .arg(external_id)
            .arg(&self.file)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let failure = match output {
            Ok(out) if out.status.success() => {
                info!(hook, stdout = %String::from_utf8_lossy(&out.stdout), "post-upload hook ran");
                return Ok(());
            }
            Ok(out) => format!(
                "post-upload hook {hook} failed with {}: stdout {:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("cannot run post-upload hook {hook}: {e}"),
        };
        // QUIRK (upstream, not copied): Python's builder calls deleteImage
        // with the wrong arguments here and leaks the image.
        if let Err(e) = self.provider.delete_image(external_id).await {
            warn!(image = external_id, error = %e, "cannot delete the image after the failed hook");
        }
        debug!("{failure}");
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_the_python_format() {
        assert_eq!(
            image_name("{image_name}-{timestamp}", "ubuntu", "0000000001", 1700000000),
            "ubuntu-1700000000"
        );
        assert_eq!(image_name("np-{image_name}-{upload_id}", "u", "0000000002", 1), "np-u-0000000002");
        assert_eq!(image_name("{{literal}}-{other}", "u", "1", 1), "{literal}-{other}");
    }
}
