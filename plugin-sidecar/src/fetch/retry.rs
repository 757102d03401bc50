//! Bounded retries with full-jitter exponential back-off.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (the first one included); at least 1.
    pub attempts: u32,
    /// Back-off ceiling of the first retry.
    pub base: Duration,
    /// Back-off ceiling of any retry.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based) given a uniform `jitter` in [0, 1).
    /// Full jitter (AWS architecture blog): a fleet of sidecars hitting one registry after
    /// a rollout spreads out instead of retrying in lock-step. Pure.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        exp.min(self.cap).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_then_caps() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.backoff(5, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
    }
}
