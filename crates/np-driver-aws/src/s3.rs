//! The S3 side of image import: staging a disk image in the provider's
//! `object-storage` bucket for `ImportSnapshot` / `ImportImage`, and finding
//! and deleting staged objects (leak cleanup).
//!
//! An object carries the upload's metadata as its S3 tags (upstream sends
//! them as the urlencoded `Tagging` of the upload), so leak cleanup can tell
//! which upload it belongs to. Files larger than the part size go up as a
//! multipart upload (a single `PutObject` stops at 5 GB, and disk images are
//! often larger), which is aborted if it cannot be completed. (One that a
//! crash leaves unfinished is not listed with the objects: a bucket lifecycle
//! rule `AbortIncompleteMultipartUpload` removes those.)

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_s3 as s3;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use np_provider::{ProviderError, RateLimiter};
use tracing::{debug, warn};

use crate::error::classify;

/// S3's smallest part size (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// The `Tagging` header form of `tags` (`k=v&k2=v2`, urlencoded).
pub fn tagging(tags: &BTreeMap<String, String>) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(tags.iter()).finish()
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Fatal(format!("cannot read {}: {e}", path.display()))
}

async fn part_body(path: &Path, offset: u64, length: u64) -> Result<ByteStream, ProviderError> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(aws_sdk_s3::primitives::Length::Exact(length))
        .build()
        .await
        .map_err(|e| file_error(path, e))
}

/// Uploads the file at `path` to `bucket`/`key` with `tags`; in parts of
/// `part_size` bytes when it is larger than that.
pub async fn put_file(
    client: &s3::Client,
    limiter: &RateLimiter,
    bucket: &str,
    key: &str,
    path: &Path,
    tags: &BTreeMap<String, String>,
    part_size: u64,
) -> Result<(), ProviderError> {
    let size = tokio::fs::metadata(path).await.map_err(|e| file_error(path, e))?.len();
    let part_size = part_size.max(MIN_PART_SIZE);
    if size <= part_size {
        let body = part_body(path, 0, size).await?;
        limiter.acquire().await;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .tagging(tagging(tags))
            .body(body)
            .send()
            .await
            .map_err(|e| classify("PutObject", &e))?;
        debug!(bucket, key, size, "object uploaded");
        return Ok(());
    }
    limiter.acquire().await;
    let upload_id = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .tagging(tagging(tags))
        .send()
        .await
        .map_err(|e| classify("CreateMultipartUpload", &e))?
        .upload_id()
        .map(str::to_owned)
        .ok_or_else(|| ProviderError::Fatal("CreateMultipartUpload returned no upload id".into()))?;
    let completed = match put_parts(client, limiter, bucket, key, path, size, part_size, &upload_id).await {
        Ok(parts) => {
            limiter.acquire().await;
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("CompleteMultipartUpload", &e))
        }
        Err(e) => Err(e),
    };
    match completed {
        Ok(()) => {
            debug!(bucket, key, size, "object uploaded in parts");
            Ok(())
        }
        Err(e) => {
            // An unfinished multipart upload keeps its parts (and costs)
            // until aborted, and no object listing shows it.
            limiter.acquire().await;
            if let Err(abort) =
                client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await
            {
                warn!(bucket, key, error = %classify("AbortMultipartUpload", &abort), "cannot abort the upload");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn put_parts(
    client: &s3::Client,
    limiter: &RateLimiter,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    part_size: u64,
    upload_id: &str,
) -> Result<Vec<CompletedPart>, ProviderError> {
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    while offset < size {
        let length = part_size.min(size - offset);
        let body = part_body(path, offset, length).await?;
        limiter.acquire().await;
        let etag = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(|e| classify("UploadPart", &e))?
            .e_tag()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Fatal(format!("UploadPart {number} returned no ETag")))?;
        parts.push(CompletedPart::builder().part_number(number).e_tag(etag).build());
        offset += length;
        number += 1;
    }
    Ok(parts)
}

/// Deletes `bucket`/`key` (S3 answers success for a missing key).
pub async fn delete_object(
    client: &s3::Client,
    limiter: &RateLimiter,
    bucket: &str,
    key: &str,
) -> Result<(), ProviderError> {
    limiter.acquire().await;
    client.delete_object().bucket(bucket).key(key).send().await.map_err(|e| classify("DeleteObject", &e))?;
    debug!(bucket, key, "object deleted");
    Ok(())
}

/// Every object in `bucket` as (key, ETag) (paginated `ListObjectsV2`).
pub async fn list_keys(
    client: &s3::Client,
    limiter: &RateLimiter,
    bucket: &str,
) -> Result<Vec<(String, String)>, ProviderError> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        limiter.acquire().await;
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| classify("ListObjectsV2", &e))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| Some((o.key()?.to_owned(), o.e_tag().unwrap_or_default().to_owned()))),
        );
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return Ok(keys),
        }
    }
}

/// The tags of `bucket`/`key`; `None` if the object is gone.
pub async fn object_tags(
    client: &s3::Client,
    limiter: &RateLimiter,
    bucket: &str,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>, ProviderError> {
    limiter.acquire().await;
    match client.get_object_tagging().bucket(bucket).key(key).send().await {
        Ok(r) => Ok(Some(r.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect())),
        Err(e) => match classify("GetObjectTagging", &e) {
            ProviderError::NotFound(_) => Ok(None),
            other => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_is_urlencoded_like_pythons_urlencode() {
        let tags: BTreeMap<String, String> = [
            ("nodepool_build_id", "0000000001"),
            ("nodepool_provider_name", "ec2 us&west"),
            ("team", "a=b/c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // urllib.parse.urlencode({...}) gives the same text.
        assert_eq!(
            tagging(&tags),
            "nodepool_build_id=0000000001&nodepool_provider_name=ec2+us%26west&team=a%3Db%2Fc"
        );
    }
}
