//! Retry policy: how failures are classified and how long to wait before the next
//! attempt (exponential backoff with full jitter, capped).

use std::time::Duration;

use rand::Rng;

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, 5xx, timeouts, capacity, broker or database hiccups.
    Retryable,
    /// Invalid parameters, authorization failures, a resource that cannot exist.
    Permanent,
}

/// A handler failure with its class.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub class: ErrorClass,
    pub message: String,
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Retryable, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into() }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the wait after `attempts` failed attempts: base·2^(attempts−1), capped.
    pub fn ceiling(&self, attempts: i32) -> Duration {
        let exp = attempts.saturating_sub(1).clamp(0, 30) as u32;
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// A delay drawn uniformly from [ceiling/2, ceiling]: spreads retries of many
    /// commands that failed together while keeping the growth.
    pub fn delay(&self, attempts: i32) -> Duration {
        let ceiling = self.ceiling(attempts);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_stays_capped_with_jitter_in_range() {
        let b = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) };
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(20), Duration::from_secs(60));
        for attempts in 1..12 {
            for _ in 0..50 {
                let d = b.delay(attempts);
                assert!(d >= b.ceiling(attempts) / 2 && d <= b.ceiling(attempts) + Duration::from_millis(1));
            }
        }
    }
}
