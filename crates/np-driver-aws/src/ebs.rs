//! Image upload through the EBS direct APIs (upstream's
//! `EBSSnapshotUploader`): a raw disk image becomes an EBS snapshot without
//! S3 or an import task. The image is sent in 512 KiB blocks (the last one
//! padded with zeros), each with its SHA-256 checksum, a few at a time; the
//! snapshot is then completed and waited for.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_ebs as ebs;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAlgorithm, Status, Tag};
use futures::stream::{StreamExt, TryStreamExt};
use np_provider::{ProviderError, RateLimiter};

use crate::error::classify;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The EBS block size.
pub const BLOCK_SIZE: usize = 512 * 1024;
/// Blocks in flight at once (upstream uses 10 threads).
const CONCURRENCY: usize = 8;
/// Tries per call for retryable errors (upstream: 3).
const TRIES: u32 = 3;
const GIB: u64 = 1024 * 1024 * 1024;

/// Whether an EBS direct error is worth another try (throttling, server
/// errors, and the validation error EBS uses for "try again").
fn retryable(e: &ProviderError) -> bool {
    let text = e.to_string();
    matches!(e, ProviderError::Transient(_))
        || ["RequestThrottledException", "InternalServerException", "ValidationException"]
            .iter()
            .any(|c| text.contains(c))
}

async fn with_retries<T, F, Fut>(operation: &str, mut f: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < TRIES && retryable(&e) => {
                warn!(operation, attempt, error = %e, "retrying");
                tokio::time::sleep(Duration::from_secs(2 * u64::from(attempt - 1))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts a snapshot for the file at `path`, tagged with `tags`; returns
/// (file size, size in GiB, snapshot id). [`fill`] sends the data.
pub(crate) async fn start_snapshot(
    client: &ebs::Client,
    limiter: &RateLimiter,
    path: &Path,
    tags: &BTreeMap<String, String>,
) -> Result<(u64, i32, String), ProviderError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| ProviderError::Fatal(format!("cannot read {}: {e}", path.display())))?
        .len();
    let size_gib = i32::try_from(size.div_ceil(GIB).max(1))
        .map_err(|_| ProviderError::Fatal(format!("{} is too large", path.display())))?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let tag_list: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    let snapshot = with_retries("StartSnapshot", || async {
        limiter.acquire().await;
        client
            .start_snapshot()
            .volume_size(i64::from(size_gib))
            .client_token(&token)
            .set_tags(Some(tag_list.clone()))
            .send()
            .await
            .map_err(|e| classify("StartSnapshot", &e))
    })
    .await?
    .snapshot_id()
    .map(str::to_owned)
    .ok_or_else(|| ProviderError::Fatal("StartSnapshot returned no snapshot id".into()))?;
    debug!(snapshot = %snapshot, size_gib, "snapshot started");
    Ok((size, size_gib, snapshot))
}

/// Sends the file's blocks into the started snapshot and completes it.
pub(crate) async fn fill(
    client: &ebs::Client,
    limiter: &RateLimiter,
    path: &Path,
    size: u64,
    snapshot: &str,
    deadline: Option<Instant>,
) -> Result<(), ProviderError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ProviderError::Fatal(format!("cannot open {}: {e}", path.display())))?;
    let blocks = size.div_ceil(BLOCK_SIZE as u64);
    let mut sent: u64 = 0;
    let mut index: i32 = 0;
    loop {
        // One batch of up to CONCURRENCY blocks, read sequentially.
        let mut batch = Vec::with_capacity(CONCURRENCY);
        while batch.len() < CONCURRENCY {
            let mut data = vec![0u8; BLOCK_SIZE];
            let mut filled = 0;
            while filled < BLOCK_SIZE {
                let n = file
                    .read(&mut data[filled..])
                    .await
                    .map_err(|e| ProviderError::Fatal(format!("cannot read {}: {e}", path.display())))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            // The last block is padded with zeros: EBS blocks have one size.
            batch.push((index, data));
            index += 1;
        }
        if batch.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(ProviderError::Fatal("timed out uploading image".into()));
        }
        let count = batch.len() as u64;
        futures::stream::iter(batch)
            .map(|(i, data)| put_block(client, snapshot, i, data))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        sent += count;
    }
    debug!(snapshot, blocks = sent, expected = blocks, "blocks sent");
    loop {
        let status = with_retries("CompleteSnapshot", || async {
            limiter.acquire().await;
            client
                .complete_snapshot()
                .snapshot_id(snapshot)
                .changed_blocks_count(i32::try_from(sent).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| classify("CompleteSnapshot", &e))
        })
        .await?
        .status()
        .cloned();
        match status {
            Some(Status::Completed) => return Ok(()),
            Some(Status::Error) => return Err(ProviderError::Fatal("snapshot in error state".into())),
            _ => {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Err(ProviderError::Fatal("timed out completing the snapshot".into()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn put_block(
    client: &ebs::Client,
    snapshot: &str,
    index: i32,
    data: Vec<u8>,
) -> Result<(), ProviderError> {
    let checksum = aws_smithy_types::base64::encode(Sha256::digest(&data));
    let length = i32::try_from(data.len()).unwrap_or(i32::MAX);
    let answer = with_retries("PutSnapshotBlock", || async {
        client
            .put_snapshot_block()
            .snapshot_id(snapshot)
            .block_index(index)
            .block_data(ByteStream::from(data.clone()))
            .data_length(length)
            .checksum(&checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .map_err(|e| classify("PutSnapshotBlock", &e))
    })
    .await?;
    if answer.checksum().is_some_and(|c| c != checksum) {
        return Err(ProviderError::Fatal(format!("block {index}: checksum mismatch")));
    }
    Ok(())
}
