//! Image upload through VM Import (`import-method: snapshot` and `image`),
//! and the "eventual tagging" of what imports create.
//!
//! Both methods stage the file in the provider's `object-storage` bucket
//! (`<image name>.<image-format>`, tagged with the upload's metadata), start
//! an import task tagged the same way, look at the task every
//! [`AwsSettings::import_poll_interval`](super::AwsSettings) until it ends,
//! and delete the staged object. `ResourceCountLimitExceeded` (too many
//! import tasks at once) is retried until `image-import-timeout`; without a
//! timeout it is not retried, as upstream. A successful import may take as
//! long as it takes.
//!
//! An import task cannot tag the snapshot or AMI it creates. The upload tags
//! them as soon as the task completes; if that is missed (a crash, an API
//! error), [`Inner::tag_imports`] does it on a later leak-cleanup listing by
//! matching untagged AMIs and snapshots to the import tasks that made them
//! (upstream's `_tagAmis` / `_tagSnapshots`), so leak cleanup can find them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_sdk_ec2 as ec2;
use ec2::types::{
    Image, ImageDiskContainer, ResourceType, Snapshot, SnapshotDiskContainer, Tag, TagSpecification,
    UserBucket,
};
use np_provider::{ProviderError, META_PROVIDER};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{tag_list, Inner};

/// What an import produced.
pub(super) enum Imported {
    /// A snapshot to register as an AMI, with the root volume size (GiB).
    Snapshot { snapshot: String, size_gib: i32 },
    /// A ready AMI (`import-method: image`).
    Image(String),
}

/// How an import task ended.
struct Finished {
    /// `completed`, or the status it ended in.
    status: String,
    message: String,
    /// The snapshot (and for image imports the AMI) it made.
    snapshot: Option<String>,
    image: Option<String>,
    tags: Vec<Tag>,
}

/// The import task id in a snapshot description such as "Created by
/// AWS-VM-Import service for import-ami-0123abcd" (upstream matches
/// `.*?(import-ami-\w*)`).
pub(crate) fn import_ami_task_in(description: &str) -> Option<&str> {
    let start = description.find("import-ami-")?;
    let rest = &description[start..];
    let end = rest
        .char_indices()
        .skip("import-ami-".len())
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

impl Inner {
    fn is_ours(&self, tags: &[Tag]) -> bool {
        tags.iter().any(|t| t.key() == Some(META_PROVIDER) && t.value() == Some(self.name.as_str()))
    }

    /// Stages `path` in S3, imports it with `method` (`snapshot` or
    /// `image`) and deletes the staged object.
    pub(super) async fn import(
        &self,
        di: &np_config::AwsDiskImage,
        method: &str,
        path: &Path,
        image_name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Imported, ProviderError> {
        let bucket = self.config.object_storage_bucket.as_deref().ok_or_else(|| {
            ProviderError::Fatal(format!(
                "diskimage {}: import-method {method} needs the provider's object-storage bucket-name",
                di.name
            ))
        })?;
        let format = self.config.image_format.as_str();
        let key = format!("{image_name}.{format}");
        crate::s3::put_file(
            &self.clients.s3,
            &self.mutating,
            bucket,
            &key,
            path,
            tags,
            self.settings.s3_part_size,
        )
        .await?;
        debug!(bucket, key = %key, "image staged in S3");
        let user_bucket = UserBucket::builder().s3_bucket(bucket).s3_key(&key).build();
        let finished = if method == "image" {
            self.run_image_import(di, format, user_bucket, tags).await
        } else {
            self.run_snapshot_import(format, user_bucket, tags).await
        };
        // The object was only for the import task; leak cleanup catches it
        // if this fails.
        if let Err(e) = crate::s3::delete_object(&self.clients.s3, &self.mutating, bucket, &key).await {
            warn!(bucket, key = %key, error = %e, "cannot delete the staged image");
        }
        let finished = finished?;
        if finished.status != "completed" {
            return Err(ProviderError::Fatal(format!(
                "image import ended {}: {}",
                finished.status, finished.message
            )));
        }
        let snapshot = finished
            .snapshot
            .ok_or_else(|| ProviderError::Fatal("the completed import task names no snapshot".into()))?;
        if method == "image" {
            let ami = finished
                .image
                .ok_or_else(|| ProviderError::Fatal("the completed import task names no image".into()))?;
            // Both copies of the task's tags in one call.
            let req =
                self.ec2().create_tags().resources(&ami).resources(&snapshot).set_tags(Some(finished.tags));
            if let Err(e) = self.call(&self.mutating, "CreateTags", || req.send()).await {
                warn!(image = %ami, error = %e, "cannot tag the imported image yet; leak cleanup will");
            }
            return Ok(Imported::Image(ami));
        }
        let size_gib = match di.volume_size.and_then(|v| i32::try_from(v).ok()) {
            Some(size) => size,
            None => self
                .call(&self.non_mutating, "DescribeSnapshots", || {
                    self.ec2().describe_snapshots().snapshot_ids(&snapshot).send()
                })
                .await?
                .snapshots()
                .first()
                .and_then(|s| s.volume_size())
                .ok_or_else(|| ProviderError::Fatal(format!("imported snapshot {snapshot} has no size")))?,
        };
        // RegisterImage tags the snapshot with the AMI.
        Ok(Imported::Snapshot { snapshot, size_gib })
    }

    /// Starts an import, retrying `ResourceCountLimitExceeded` (a quota
    /// error) until `image-import-timeout`.
    async fn start_import<T, F, Fut, E, R>(&self, operation: &str, mut f: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E, R>>>,
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let deadline = self.config.image_import_timeout.map(|t| Instant::now() + t);
        loop {
            match self.call(&self.mutating, operation, &mut f).await {
                Err(ProviderError::Quota(e)) if deadline.is_some_and(|d| Instant::now() < d) => {
                    warn!(operation, error = %e, "too many imports at once; trying again");
                    tokio::time::sleep(self.settings.import_poll_interval).await;
                }
                other => return other,
            }
        }
    }

    async fn run_snapshot_import(
        &self,
        format: &str,
        user_bucket: UserBucket,
        tags: &BTreeMap<String, String>,
    ) -> Result<Finished, ProviderError> {
        let container = SnapshotDiskContainer::builder().format(format).user_bucket(user_bucket).build();
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::ImportSnapshotTask)
            .set_tags(Some(tag_list(tags)))
            .build();
        let task_id = self
            .start_import("ImportSnapshot", || {
                self.ec2()
                    .import_snapshot()
                    .disk_container(container.clone())
                    .tag_specifications(spec.clone())
                    .send()
            })
            .await?
            .import_task_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Fatal("ImportSnapshot returned no task id".into()))?;
        info!(task = %task_id, "snapshot import started");
        loop {
            tokio::time::sleep(self.settings.import_poll_interval).await;
            let answer = self
                .call(&self.non_mutating, "DescribeImportSnapshotTasks", || {
                    self.ec2().describe_import_snapshot_tasks().import_task_ids(&task_id).send()
                })
                .await;
            let answer = match answer {
                Ok(a) => a,
                Err(ProviderError::Transient(e)) => {
                    warn!(task = %task_id, error = %e, "cannot look at the import task; trying again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(task) = answer.import_snapshot_tasks().first() else { continue };
            let detail = task.snapshot_task_detail();
            let status = detail.and_then(|d| d.status()).unwrap_or_default().to_ascii_lowercase();
            debug!(task = %task_id, status = %status, progress = ?detail.and_then(|d| d.progress()), "import task");
            if status == "completed" || status == "deleted" || status == "deleting" {
                return Ok(Finished {
                    status,
                    message: detail.and_then(|d| d.status_message()).unwrap_or_default().to_owned(),
                    snapshot: detail.and_then(|d| d.snapshot_id()).map(str::to_owned),
                    image: None,
                    tags: task.tags().to_vec(),
                });
            }
        }
    }

    async fn run_image_import(
        &self,
        di: &np_config::AwsDiskImage,
        format: &str,
        user_bucket: UserBucket,
        tags: &BTreeMap<String, String>,
    ) -> Result<Finished, ProviderError> {
        let container = ImageDiskContainer::builder().format(format).user_bucket(user_bucket).build();
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::ImportImageTask)
            .set_tags(Some(tag_list(tags)))
            .build();
        let task_id = self
            .start_import("ImportImage", || {
                self.ec2()
                    .import_image()
                    .architecture(&di.architecture)
                    .disk_containers(container.clone())
                    .tag_specifications(spec.clone())
                    .send()
            })
            .await?
            .import_task_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Fatal("ImportImage returned no task id".into()))?;
        info!(task = %task_id, "image import started");
        loop {
            tokio::time::sleep(self.settings.import_poll_interval).await;
            let task = match self.import_image_task(&task_id).await {
                Ok(Some(task)) => task,
                Ok(None) => {
                    return Err(ProviderError::Fatal(format!("import task {task_id} disappeared")));
                }
                Err(ProviderError::Transient(e)) => {
                    warn!(task = %task_id, error = %e, "cannot look at the import task; trying again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = task.status().unwrap_or_default().to_ascii_lowercase();
            debug!(task = %task_id, status = %status, progress = ?task.progress(), "import task");
            if status == "completed" || status == "deleted" || status == "deleting" {
                return Ok(Finished {
                    status,
                    message: task.status_message().unwrap_or_default().to_owned(),
                    snapshot: task
                        .snapshot_details()
                        .first()
                        .and_then(|d| d.snapshot_id())
                        .map(str::to_owned),
                    image: task.image_id().map(str::to_owned),
                    tags: task.tags().to_vec(),
                });
            }
        }
    }

    /// One image import task; `None` if EC2 no longer knows it (it answers
    /// `InvalidConversionTaskId.Malformed` for expired tasks).
    async fn import_image_task(
        &self,
        task_id: &str,
    ) -> Result<Option<ec2::types::ImportImageTask>, ProviderError> {
        match self
            .call(&self.non_mutating, "DescribeImportImageTasks", || {
                self.ec2().describe_import_image_tasks().import_task_ids(task_id).send()
            })
            .await
        {
            Ok(answer) => Ok(answer.import_image_tasks().first().cloned()),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Snapshot id -> tags of every snapshot import task EC2 remembers.
    async fn snapshot_import_tags(&self) -> Result<HashMap<String, Vec<Tag>>, ProviderError> {
        let tasks = self
            .describe_all(
                "DescribeImportSnapshotTasks",
                |t| self.ec2().describe_import_snapshot_tasks().set_next_token(t).send(),
                |p| p.import_snapshot_tasks().to_vec(),
                |p| p.next_token(),
            )
            .await?;
        Ok(tasks
            .into_iter()
            .filter_map(|t| {
                let snapshot = t.snapshot_task_detail()?.snapshot_id()?.to_owned();
                Some((snapshot, t.tags().to_vec()))
            })
            .collect())
    }

    async fn copy_tags(&self, resource: &str, tags: &[Tag]) -> Result<(), ProviderError> {
        debug!(resource, "copying the import task's tags");
        let req = self.ec2().create_tags().resources(resource).set_tags(Some(tags.to_vec()));
        self.call(&self.mutating, "CreateTags", || req.send()).await.map(|_| ())
    }

    /// Tags untagged AMIs and snapshots that this provider's imports made
    /// with their import task's tags; remembers the others as not ours so
    /// they are not looked at again. Errors are logged: the next listing
    /// tries again.
    pub(super) async fn tag_imports(&self, images: &[Image], snapshots: &[Snapshot]) {
        if let Err(e) = self.try_tag_imports(images, snapshots).await {
            warn!(provider = %self.name, error = %e, "cannot tag imported images yet");
        }
    }

    async fn try_tag_imports(&self, images: &[Image], snapshots: &[Snapshot]) -> Result<(), ProviderError> {
        let not_ours = |set: &std::sync::Mutex<std::collections::HashSet<String>>, id: &str| {
            set.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned());
        };
        let known_not_ours = |set: &std::sync::Mutex<std::collections::HashSet<String>>, id: &str| {
            set.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
        };
        // (AMI, its root snapshot) pairs to match against snapshot imports.
        let mut amis = Vec::new();
        for ami in images {
            let Some(id) = ami.image_id() else { continue };
            if !ami.tags().is_empty() || known_not_ours(&self.not_our_images, id) {
                continue;
            }
            // An image import names the AMI after its task.
            if let Some(task_id) = ami.name().filter(|n| n.starts_with("import-ami-")) {
                if let Some(task) = self.import_image_task(task_id).await? {
                    if self.is_ours(task.tags()) {
                        self.copy_tags(id, task.tags()).await?;
                        continue;
                    }
                }
            }
            match ami.block_device_mappings().first().and_then(|b| b.ebs()).and_then(|e| e.snapshot_id()) {
                Some(snapshot) => amis.push((id, snapshot)),
                None => not_ours(&self.not_our_images, id),
            }
        }
        let mut snaps = Vec::new();
        for snap in snapshots {
            let Some(id) = snap.snapshot_id() else { continue };
            if !snap.tags().is_empty() || known_not_ours(&self.not_our_snapshots, id) {
                continue;
            }
            // An image import names its task in the snapshot's description.
            if let Some(task_id) = snap.description().and_then(import_ami_task_in) {
                if let Some(task) = self.import_image_task(task_id).await? {
                    if self.is_ours(task.tags()) {
                        self.copy_tags(id, task.tags()).await?;
                        continue;
                    }
                }
            }
            snaps.push(id);
        }
        if amis.is_empty() && snaps.is_empty() {
            return Ok(());
        }
        let by_snapshot = self.snapshot_import_tags().await?;
        // QUIRK (upstream, not copied): _tagAmis tags each AMI with the tags
        // of the *last* task listed rather than those of its own task.
        for (ami, snapshot) in amis {
            match by_snapshot.get(snapshot) {
                Some(tags) if self.is_ours(tags) => self.copy_tags(ami, tags).await?,
                _ => not_ours(&self.not_our_images, ami),
            }
        }
        for snap in snaps {
            match by_snapshot.get(snap) {
                Some(tags) if self.is_ours(tags) => self.copy_tags(snap, tags).await?,
                _ => not_ours(&self.not_our_snapshots, snap),
            }
        }
        Ok(())
    }

    /// Deletes `key` from the `object-storage` bucket.
    pub(super) async fn delete_object(&self, key: &str) -> Result<(), ProviderError> {
        let Some(bucket) = self.config.object_storage_bucket.as_deref() else {
            return Err(ProviderError::Fatal("the provider has no object-storage bucket".into()));
        };
        crate::s3::delete_object(&self.clients.s3, &self.mutating, bucket, key).await?;
        self.object_tags.lock().await.remove(key);
        info!(provider = %self.name, bucket, key, "object deleted");
        Ok(())
    }

    /// The objects in the `object-storage` bucket with their tags. Tags are
    /// read once per object (`GetObjectTagging`) and remembered.
    pub(super) async fn objects(&self) -> Result<Vec<(String, BTreeMap<String, String>)>, ProviderError> {
        let Some(bucket) = self.config.object_storage_bucket.as_deref() else { return Ok(Vec::new()) };
        let keys = crate::s3::list_keys(&self.clients.s3, &self.non_mutating, bucket).await?;
        let mut known = self.object_tags.lock().await;
        known.retain(|k, _| keys.contains(k));
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let tags = match known.get(&key) {
                Some(tags) => tags.clone(),
                None => {
                    match crate::s3::object_tags(&self.clients.s3, &self.non_mutating, bucket, &key).await? {
                        Some(tags) => {
                            known.insert(key.clone(), tags.clone());
                            tags
                        }
                        None => continue,
                    }
                }
            };
            out.push((key, tags));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_task_is_found_in_a_snapshot_description() {
        assert_eq!(
            import_ami_task_in("Created by AWS-VM-Import service for import-ami-0123abcd4567ef89a"),
            Some("import-ami-0123abcd4567ef89a")
        );
        assert_eq!(import_ami_task_in("import-ami-0a1b (copy)"), Some("import-ami-0a1b"));
        assert_eq!(import_ami_task_in("Auto-created snapshot for AMI ami-12c6146b"), None);
    }
}
