//! Shared, time-limited caches of bulk listings.
//!
//! Create and delete state machines never describe one instance: they look
//! for it in one paginated `DescribeInstances` listing shared by every machine
//! of the provider, refreshed at most once per TTL (upstream's
//! `LazyExecutorTTLCache`, 10 s). Concurrent callers of a stale cache wait for
//! one refresh instead of issuing their own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use np_provider::ProviderError;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A listing refreshed at most once per TTL.
#[derive(Debug)]
pub struct Listing<T> {
    ttl: Duration,
    state: Mutex<Option<(Instant, Arc<Vec<T>>)>>,
    refreshes: AtomicU64,
}

impl<T> Listing<T> {
    /// An empty cache with time-to-live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Listing { ttl, state: Mutex::new(None), refreshes: AtomicU64::new(0) }
    }

    /// The cached listing, refreshed with `fetch` when older than the TTL.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<Vec<T>>, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<T>, ProviderError>>,
    {
        let mut state = self.state.lock().await;
        if let Some((at, items)) = state.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(items.clone());
            }
        }
        let items = Arc::new(fetch().await?);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        *state = Some((Instant::now(), items.clone()));
        Ok(items)
    }

    /// Forgets the cached listing: the next `get` refreshes.
    pub async fn invalidate(&self) {
        *self.state.lock().await = None;
    }

    /// Refreshes so far (one per listing call against the cloud).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_refresh_per_ttl_even_when_concurrent() {
        let l: Arc<Listing<u32>> = Arc::new(Listing::new(Duration::from_secs(60)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.get(|| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(vec![1, 2])
                })
                .await
                .unwrap()
                .len()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 2);
        }
        assert_eq!(l.refreshes(), 1);
        l.invalidate().await;
        let err = l.get(|| async { Err(ProviderError::Transient("x".into())) }).await;
        assert!(err.is_err());
        assert_eq!(l.refreshes(), 1);
    }
}
