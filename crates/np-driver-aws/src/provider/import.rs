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

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::error::{classify, code_of, is_throttling};

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
        if method == "image" {
            let ami = finished
                .image
                .ok_or_else(|| ProviderError::Fatal("the completed import task names no image".into()))?;
            // The AMI and its snapshot in one call.
            let mut req = self.ec2().create_tags().resources(&ami).set_tags(Some(tag_list(tags)));
            match &finished.snapshot {
                Some(snapshot) => req = req.resources(snapshot),
                None => warn!(image = %ami, "the import task names no snapshot; tagging the image only"),
            }
            if let Err(e) = self.call(&self.mutating, "CreateTags", || req.send()).await {
                warn!(image = %ami, error = %e, "cannot tag the imported image yet; leak cleanup will");
            }
            return Ok(Imported::Image(ami));
        }
        let snapshot = finished
            .snapshot
            .ok_or_else(|| ProviderError::Fatal("the completed import task names no snapshot".into()))?;
        let size_gib = match di.volume_size.and_then(|v| i32::try_from(v).ok()) {
            Some(size) => Ok(size),
            None => self
                .call(&self.non_mutating, "DescribeSnapshots", || {
                    self.ec2().describe_snapshots().snapshot_ids(&snapshot).send()
                })
                .await
                .and_then(|r| {
                    r.snapshots().first().and_then(|s| s.volume_size()).ok_or_else(|| {
                        ProviderError::Fatal(format!("imported snapshot {snapshot} has no size"))
                    })
                }),
        };
        match size_gib {
            // RegisterImage tags the snapshot with the AMI.
            Ok(size_gib) => Ok(Imported::Snapshot { snapshot, size_gib }),
            Err(e) => {
                warn!(snapshot = %snapshot, error = %e, "cannot size the imported snapshot; deleting it");
                let _ = self.delete_snapshot(&snapshot).await;
                Err(e)
            }
        }
    }

    /// Starts an import, retrying `ResourceCountLimitExceeded` (too many
    /// import tasks in the account) until `image-import-timeout`; without a
    /// timeout that error fails the upload, as upstream.
    async fn start_import<T, F, Fut, E, R>(&self, operation: &str, mut f: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E, R>>>,
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let deadline = self.config.image_import_timeout.map(|t| Instant::now() + t);
        loop {
            self.mutating.acquire().await;
            match f().await {
                Ok(v) => {
                    self.mutating.succeeded();
                    return Ok(v);
                }
                Err(e) if code_of(&e) == Some("ResourceCountLimitExceeded") => {
                    let e = classify(operation, &e);
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        return Err(e);
                    }
                    warn!(operation, error = %e, "too many imports at once; trying again");
                    tokio::time::sleep(self.settings.import_poll_interval).await;
                }
                Err(e) => {
                    if code_of(&e).is_some_and(is_throttling) {
                        self.mutating.throttled();
                    }
                    return Err(classify(operation, &e));
                }
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
        // One token per upload: an SDK retry of a call whose answer was lost
        // does not start a second import.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let task_id = self
            .start_import("ImportSnapshot", || {
                self.ec2()
                    .import_snapshot()
                    .client_token(&token)
                    .disk_container(container.clone())
                    .tag_specifications(spec.clone())
                    .send()
            })
            .await?
            .import_task_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Fatal("ImportSnapshot returned no task id".into()))?;
        info!(task = %task_id, "snapshot import started");
        self.wait_for_task(&task_id, || async {
            let answer = self
                .call(&self.non_mutating, "DescribeImportSnapshotTasks", || {
                    self.ec2().describe_import_snapshot_tasks().import_task_ids(&task_id).send()
                })
                .await?;
            Ok(answer.import_snapshot_tasks().first().map(|task| {
                let detail = task.snapshot_task_detail();
                Finished {
                    status: detail.and_then(|d| d.status()).unwrap_or_default().to_ascii_lowercase(),
                    message: detail.and_then(|d| d.status_message()).unwrap_or_default().to_owned(),
                    snapshot: detail.and_then(|d| d.snapshot_id()).map(str::to_owned),
                    image: None,
                }
            }))
        })
        .await
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
        // One token per upload: an SDK retry of a call whose answer was lost
        // does not start a second import.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let task_id = self
            .start_import("ImportImage", || {
                self.ec2()
                    .import_image()
                    .client_token(&token)
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
        self.wait_for_task(&task_id, || async {
            Ok(self.import_image_task(&task_id).await?.map(|task| Finished {
                status: task.status().unwrap_or_default().to_ascii_lowercase(),
                message: task.status_message().unwrap_or_default().to_owned(),
                snapshot: task.snapshot_details().first().and_then(|d| d.snapshot_id()).map(str::to_owned),
                image: task.image_id().map(str::to_owned),
            }))
        })
        .await
    }

    /// Looks at an import task every `import_poll_interval` (`look` gives
    /// its state, `None` once EC2 no longer knows it) until it has ended.
    /// Transient errors are logged and the task looked at again.
    async fn wait_for_task<F, Fut>(&self, task_id: &str, mut look: F) -> Result<Finished, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Finished>, ProviderError>>,
    {
        loop {
            tokio::time::sleep(self.settings.import_poll_interval).await;
            match look().await {
                Ok(Some(task)) if matches!(task.status.as_str(), "completed" | "deleted" | "deleting") => {
                    return Ok(task);
                }
                Ok(Some(task)) => debug!(task = %task_id, status = %task.status, "import task"),
                Ok(None) => return Err(ProviderError::Fatal(format!("import task {task_id} disappeared"))),
                Err(ProviderError::Transient(e)) => {
                    warn!(task = %task_id, error = %e, "cannot look at the import task; trying again");
                }
                Err(e) => return Err(e),
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
    /// with their import task's tags, and returns what it tagged (id ->
    /// tags) so the caller's listing can count them at once. Untagged ones
    /// found to be someone else's are remembered and not looked at again.
    /// An error on one resource is logged and skips only that one (the next
    /// listing tries again).
    pub(super) async fn tag_imports(
        &self,
        images: &[Image],
        snapshots: &[Snapshot],
    ) -> HashMap<String, Vec<Tag>> {
        let mut tagged = HashMap::new();
        // Image import tasks asked about in this pass (an AMI and its
        // snapshot name the same task).
        let mut image_tasks: HashMap<String, Option<Vec<Tag>>> = HashMap::new();
        let mut by_snapshot: Option<HashMap<String, Vec<Tag>>> = None;
        for ami in images {
            let Some(id) = ami.image_id() else { continue };
            if !ami.tags().is_empty() || self.known_not_ours(&self.not_our_images, id) {
                continue;
            }
            let root =
                ami.block_device_mappings().first().and_then(|b| b.ebs()).and_then(|e| e.snapshot_id());
            // An image import names the AMI after its task; a snapshot
            // import is found by the AMI's root snapshot.
            let task = ami.name().filter(|n| n.starts_with("import-ami-"));
            match self.import_tags(task, root, &mut image_tasks, &mut by_snapshot).await {
                Ok(Some(tags)) => match self.copy_tags(id, &tags).await {
                    Ok(()) => {
                        tagged.insert(id.to_owned(), tags);
                    }
                    Err(e) => warn!(image = id, error = %e, "cannot tag an imported image yet"),
                },
                Ok(None) => self.mark_not_ours(&self.not_our_images, id),
                Err(e) => warn!(image = id, error = %e, "cannot find the import task of an image yet"),
            }
        }
        for snap in snapshots {
            let Some(id) = snap.snapshot_id() else { continue };
            if !snap.tags().is_empty() || self.known_not_ours(&self.not_our_snapshots, id) {
                continue;
            }
            // An image import names its task in the snapshot's description.
            let task = snap.description().and_then(import_ami_task_in);
            match self.import_tags(task, Some(id), &mut image_tasks, &mut by_snapshot).await {
                Ok(Some(tags)) => match self.copy_tags(id, &tags).await {
                    Ok(()) => {
                        tagged.insert(id.to_owned(), tags);
                    }
                    Err(e) => warn!(snapshot = id, error = %e, "cannot tag an imported snapshot yet"),
                },
                Ok(None) => self.mark_not_ours(&self.not_our_snapshots, id),
                Err(e) => warn!(snapshot = id, error = %e, "cannot find the import task of a snapshot yet"),
            }
        }
        tagged
    }

    /// The tags of this provider's import task behind a resource: the image
    /// import task `image_task`, else the snapshot import task that made
    /// `snapshot`. `None`: not made by an import of this provider.
    async fn import_tags(
        &self,
        image_task: Option<&str>,
        snapshot: Option<&str>,
        image_tasks: &mut HashMap<String, Option<Vec<Tag>>>,
        by_snapshot: &mut Option<HashMap<String, Vec<Tag>>>,
    ) -> Result<Option<Vec<Tag>>, ProviderError> {
        if let Some(task_id) = image_task {
            if !image_tasks.contains_key(task_id) {
                let tags = self.import_image_task(task_id).await?.map(|t| t.tags().to_vec());
                image_tasks.insert(task_id.to_owned(), tags);
            }
            if let Some(Some(tags)) = image_tasks.get(task_id) {
                if self.is_ours(tags) {
                    return Ok(Some(tags.clone()));
                }
            }
        }
        let Some(snapshot) = snapshot else { return Ok(None) };
        if by_snapshot.is_none() {
            *by_snapshot = Some(self.snapshot_import_tags().await?);
        }
        // QUIRK (upstream, not copied): _tagAmis tags such an AMI with the
        // tags of the *last* task listed rather than those of its own task.
        Ok(by_snapshot.as_ref().and_then(|m| m.get(snapshot)).filter(|tags| self.is_ours(tags)).cloned())
    }

    fn known_not_ours(&self, set: &std::sync::Mutex<HashSet<String>>, id: &str) -> bool {
        set.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    fn mark_not_ours(&self, set: &std::sync::Mutex<HashSet<String>>, id: &str) {
        set.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned());
    }

    /// Deletes `key` from the `object-storage` bucket.
    pub(super) async fn delete_object(&self, key: &str) -> Result<(), ProviderError> {
        let Some(bucket) = self.config.object_storage_bucket.as_deref() else {
            return Err(ProviderError::Fatal("the provider has no object-storage bucket".into()));
        };
        crate::s3::delete_object(&self.clients.s3, &self.mutating, bucket, key).await?;
        self.object_tags.lock().await.retain(|(k, _), _| k != key);
        info!(provider = %self.name, bucket, key, "object deleted");
        Ok(())
    }

    /// The objects in the `object-storage` bucket with their tags. Tags are
    /// read once per object (`GetObjectTagging`) and remembered by key and
    /// ETag (an object staged again under the same key is read again). An
    /// object whose tags cannot be read is skipped this time.
    pub(super) async fn objects(&self) -> Result<Vec<(String, BTreeMap<String, String>)>, ProviderError> {
        let Some(bucket) = self.config.object_storage_bucket.as_deref() else { return Ok(Vec::new()) };
        let listed = crate::s3::list_keys(&self.clients.s3, &self.non_mutating, bucket).await?;
        let mut known = self.object_tags.lock().await;
        let present: HashSet<&(String, String)> = listed.iter().collect();
        known.retain(|k, _| present.contains(k));
        let mut out = Vec::with_capacity(listed.len());
        for object in &listed {
            let tags = match known.get(object) {
                Some(tags) => tags.clone(),
                None => match crate::s3::object_tags(&self.clients.s3, &self.non_mutating, bucket, &object.0)
                    .await
                {
                    Ok(Some(tags)) => {
                        known.insert(object.clone(), tags.clone());
                        tags
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(bucket, key = %object.0, error = %e, "cannot read the object's tags; skipping it");
                        continue;
                    }
                },
            };
            out.push((object.0.clone(), tags));
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
