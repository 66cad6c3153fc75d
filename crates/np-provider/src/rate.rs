//! Spacing of a provider's cloud API calls, with throttling back-off: the
//! rate limiter every driver shares.
//!
//! Like upstream's `RateLimiter`: one lock and a minimum spacing between
//! calls. Drivers build it from their `rate` setting, whose unit depends on
//! the driver upstream: AWS gives calls per second ([`RateLimiter::new`]),
//! OpenStack and the fake driver seconds between calls
//! ([`RateLimiter::every`]). When the cloud answers that it is throttling
//! the caller, [`RateLimiter::throttled`] adds an exponentially growing pause
//! (up to [`MAX_PENALTY`]) until a call succeeds again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The longest extra pause after repeated throttling.
pub const MAX_PENALTY: Duration = Duration::from_secs(30);
/// The first extra pause after throttling.
pub const BASE_PENALTY: Duration = Duration::from_millis(500);

/// Minimum spacing between calls, plus back-off after throttling.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    throttled: AtomicU32,
    calls: AtomicU64,
}

impl RateLimiter {
    /// A limiter allowing `rate` calls per second (`rate <= 0` or not finite:
    /// no spacing).
    pub fn new(rate: f64) -> Self {
        let interval =
            if rate.is_finite() && rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
        RateLimiter {
            interval,
            last: Mutex::new(None),
            throttled: AtomicU32::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// A limiter spacing calls `seconds` apart (`seconds <= 0` or not
    /// finite: no spacing).
    pub fn every(seconds: f64) -> Self {
        if seconds.is_finite() && seconds > 0.0 {
            Self::new(1.0 / seconds)
        } else {
            Self::new(0.0)
        }
    }

    /// The spacing between calls.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The current extra pause from throttling.
    pub fn penalty(&self) -> Duration {
        match self.throttled.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => BASE_PENALTY.saturating_mul(1 << (n - 1).min(16)).min(MAX_PENALTY),
        }
    }

    /// Waits for this caller's turn.
    pub async fn acquire(&self) {
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            // The penalty is read now, so a throttling answer to the
            // previous call already counts.
            let at = at + self.interval + self.penalty();
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
        *last = Some(Instant::now());
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a throttling answer: the next calls wait longer.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a successful call: the throttling pause ends.
    pub fn succeeded(&self) {
        self.throttled.store(0, Ordering::Relaxed);
    }

    /// Calls let through so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spacing_and_backoff() {
        let r = RateLimiter::new(20.0);
        let start = Instant::now();
        for _ in 0..3 {
            r.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(100));
        r.throttled();
        r.throttled();
        assert_eq!(r.penalty(), Duration::from_secs(1));
        r.succeeded();
        assert_eq!(r.penalty(), Duration::ZERO);
        for _ in 0..20 {
            r.throttled();
        }
        assert_eq!(r.penalty(), MAX_PENALTY);
        assert_eq!(r.calls(), 3);
        assert_eq!(RateLimiter::new(0.0).interval(), Duration::ZERO);
        assert_eq!(RateLimiter::every(0.5).interval(), Duration::from_millis(500));
        assert_eq!(RateLimiter::every(0.0).interval(), Duration::ZERO);
        assert_eq!(RateLimiter::every(f64::NAN).interval(), Duration::ZERO);
    }
}
