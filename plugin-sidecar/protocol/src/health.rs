//! How a plugin revision runs: calls, errors by kind, and latency in a histogram with fixed
//! bucket bounds. Every host (hotload-host and each app SDK) counts the same way, and every
//! hop (worker → sidecar → operator) only adds counts together, so workers, pods and windows
//! merge exactly: the sum of two reports is the report of both.
//!
//! ```text
//!  bucket:  0      1      2      3       4       5      …   17     18      19
//!  calls ≤  10µs   20µs   50µs   100µs   200µs   500µs  …   5s     10s     (more)
//! ```
//! The bounds follow 1-2-5 steps from 10 µs to 10 s ([`LATENCY_BOUNDS_US`]); a call that
//! takes longer lands in the last bucket. A percentile is read off the merged histogram by
//! linear interpolation inside its bucket, as Prometheus's `histogram_quantile` does, so it
//! is exact to the bucket and about right inside it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The upper bound, in microseconds, of each latency bucket but the last (which holds every
/// slower call). Documented in docs/protocol.md; never change them: hosts of different
/// versions must merge.
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// How many latency buckets a report has: one per bound, and one for slower calls.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The bucket a call of `elapsed` falls in.
pub fn bucket_of(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    LATENCY_BOUNDS_US.partition_point(|&bound| bound < micros)
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The plugin trapped (unreachable, out-of-bounds access, a bad result pointer, …).
    Trap,
    /// The call ran out of its CPU-time budget.
    Timeout,
    /// The plugin hit its memory limit.
    Memory,
    /// The call returned, and the app marked it failed (the plugin's answer was unusable,
    /// no instance was free in time, …).
    Failed,
}

impl ErrorKind {
    /// Every kind, in the order reports and metrics list them.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::Failed,
    ];

    /// The kind's name in reports, status and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Failed => "failed",
        }
    }
}

/// Failed calls by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Calls that trapped.
    #[serde(default)]
    pub trap: u64,
    /// Calls that ran out of CPU time.
    #[serde(default)]
    pub timeout: u64,
    /// Calls that hit the memory limit.
    #[serde(default)]
    pub memory: u64,
    /// Calls the app marked as failed.
    #[serde(default)]
    pub failed: u64,
}

impl Errors {
    /// The count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        match kind {
            ErrorKind::Trap => self.trap,
            ErrorKind::Timeout => self.timeout,
            ErrorKind::Memory => self.memory,
            ErrorKind::Failed => self.failed,
        }
    }

    fn get_mut(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Trap => &mut self.trap,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Memory => &mut self.memory,
            ErrorKind::Failed => &mut self.failed,
        }
    }

    /// Every failed call, whatever the kind.
    pub fn total(&self) -> u64 {
        ErrorKind::ALL
            .iter()
            .fold(0u64, |sum, &k| sum.saturating_add(self.get(k)))
    }
}

/// What one revision did over some span: the unit every host reports and every hop adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Calls made (failed ones included).
    #[serde(default)]
    pub calls: u64,
    /// Failed calls by kind.
    #[serde(default)]
    pub errors: Errors,
    /// Calls per latency bucket ([`LATENCY_BOUNDS_US`]); a shorter list means zeros for the
    /// buckets it leaves out, and a longer one is refused ([`Counts::check`]).
    #[serde(default)]
    pub latency_us: Vec<u64>,
}

impl Counts {
    /// Counts one call that took `elapsed` and failed with `error`, if it did.
    pub fn record(&mut self, elapsed: Duration, error: Option<ErrorKind>) {
        self.calls = self.calls.saturating_add(1);
        if let Some(kind) = error {
            let n = self.errors.get_mut(kind);
            *n = n.saturating_add(1);
        }
        if self.latency_us.len() < LATENCY_BUCKETS {
            self.latency_us.resize(LATENCY_BUCKETS, 0);
        }
        let bucket = &mut self.latency_us[bucket_of(elapsed)];
        *bucket = bucket.saturating_add(1);
    }

    /// Adds `other` to these counts (saturating: a hostile report cannot wrap a total).
    pub fn merge(&mut self, other: &Counts) {
        self.calls = self.calls.saturating_add(other.calls);
        for kind in ErrorKind::ALL {
            let n = self.errors.get_mut(kind);
            *n = n.saturating_add(other.errors.get(kind));
        }
        if self.latency_us.len() < other.latency_us.len() {
            self.latency_us.resize(other.latency_us.len(), 0);
        }
        for (mine, theirs) in self.latency_us.iter_mut().zip(&other.latency_us) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// No call was counted.
    pub fn is_empty(&self) -> bool {
        self.calls == 0 && self.latency_us.iter().all(|&n| n == 0)
    }

    /// Why a report cannot be used, if it cannot: more latency buckets than the protocol
    /// has, or more failed calls than calls.
    pub fn check(&self) -> Result<(), String> {
        if self.latency_us.len() > LATENCY_BUCKETS {
            return Err(format!(
                "latency_us has {} buckets, the protocol has {LATENCY_BUCKETS}",
                self.latency_us.len()
            ));
        }
        if self.errors.total() > self.calls {
            return Err(format!(
                "{} failed calls of {} calls",
                self.errors.total(),
                self.calls
            ));
        }
        Ok(())
    }

    /// Failed calls over calls, from 0 to 1; `None` without calls.
    pub fn error_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.errors.total() as f64 / self.calls as f64)
    }

    /// The latency below which a `quantile` (0 to 1) of the timed calls fall, interpolated
    /// inside its bucket; `None` without timed calls. The last bucket has no upper bound:
    /// a quantile that falls in it reads as its lower bound, 10 s.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let total: u64 = self
            .latency_us
            .iter()
            .fold(0u64, |s, &n| s.saturating_add(n));
        if total == 0 || quantile.is_nan() {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.latency_us.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let upto = below.saturating_add(n);
            if (upto as f64) >= rank {
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
                let Some(&upper) = LATENCY_BOUNDS_US.get(i) else {
                    return Some(Duration::from_micros(lower));
                };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let micros = lower as f64 + within * (upper - lower) as f64;
                return Some(Duration::from_nanos((micros * 1000.0) as u64));
            }
            below = upto;
        }
        Some(Duration::from_micros(
            LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1],
        ))
    }
}

/// One revision's counts, as a worker reports them in a `health` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginHealth {
    /// Plugin slot name.
    pub plugin: String,
    /// The revision that made these calls.
    pub revision: String,
    /// What it did since the worker's previous report.
    #[serde(flatten)]
    pub counts: Counts,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_follow_the_documented_bounds() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(10)), 0);
        assert_eq!(bucket_of(Duration::from_micros(11)), 1);
        assert_eq!(bucket_of(ms(1)), 6);
        assert_eq!(bucket_of(Duration::from_secs(10)), 18);
        assert_eq!(bucket_of(Duration::from_secs(11)), 19);
        assert_eq!(bucket_of(Duration::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn a_report_counts_calls_errors_and_latency() {
        let mut c = Counts::default();
        for i in 0..100 {
            let error = (i % 5 == 0).then_some(ErrorKind::Trap);
            c.record(ms(3), error);
        }
        c.record(ms(40), Some(ErrorKind::Timeout));
        assert_eq!(c.calls, 101);
        assert_eq!(c.errors.trap, 20);
        assert_eq!(c.errors.total(), 21);
        assert_eq!(c.latency_us[8], 100, "3 ms is in the 2-5 ms bucket");
        assert_eq!(c.latency_us[11], 1, "40 ms is in the 20-50 ms bucket");
        let rate = c.error_rate().unwrap();
        assert!((rate - 21.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let mut c = Counts::default();
        for _ in 0..99 {
            c.record(ms(1), None);
        }
        c.record(ms(400), None);
        // 99 of 100 calls are in the 500µs-1ms bucket: the median is inside it.
        let p50 = c.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_micros(500) && p50 <= ms(1), "{p50:?}");
        // p99 is the last of those; p99.5 is halfway through the 200-500 ms bucket.
        assert_eq!(c.quantile(0.99).unwrap(), ms(1));
        assert_eq!(c.quantile(0.995).unwrap(), ms(350));
        assert_eq!(Counts::default().quantile(0.99), None);
        let mut slow = Counts::default();
        slow.record(Duration::from_secs(60), None);
        assert_eq!(slow.quantile(0.99), Some(Duration::from_secs(10)));
    }

    #[test]
    fn hostile_reports_are_refused_or_saturate() {
        let long = Counts {
            latency_us: vec![0; LATENCY_BUCKETS + 1],
            ..Counts::default()
        };
        assert!(long.check().unwrap_err().contains("21 buckets"));
        let lying = Counts {
            calls: 1,
            errors: Errors {
                trap: 2,
                ..Errors::default()
            },
            latency_us: vec![],
        };
        assert!(lying.check().unwrap_err().contains("2 failed calls of 1"));
        let mut big = Counts {
            calls: u64::MAX,
            latency_us: vec![u64::MAX],
            ..Counts::default()
        };
        big.merge(&big.clone());
        assert_eq!(big.calls, u64::MAX);
        assert_eq!(big.latency_us[0], u64::MAX);
    }

    #[test]
    fn a_report_is_json_with_flattened_counts() {
        let mut counts = Counts::default();
        counts.record(ms(3), Some(ErrorKind::Failed));
        let report = PluginHealth {
            plugin: "auth".into(),
            revision: "r2".into(),
            counts,
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"plugin":"auth","revision":"r2","calls":1,"errors":{"trap":0,"timeout":0,"memory":0,"failed":1},"latency_us":[0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0]}"#
        );
        let short: PluginHealth =
            serde_json::from_str(r#"{"plugin":"a","revision":"r","calls":2,"latency_us":[2]}"#)
                .unwrap();
        assert_eq!(short.counts.errors, Errors::default());
        assert_eq!(short.counts.latency_us, vec![2]);
    }

    fn counts() -> impl Strategy<Value = Counts> {
        proptest::collection::vec((0u64..20_000_000, 0usize..5), 0..60).prop_map(|calls| {
            let mut c = Counts::default();
            for (micros, kind) in calls {
                c.record(
                    Duration::from_micros(micros),
                    ErrorKind::ALL.get(kind).copied(),
                );
            }
            c
        })
    }

    proptest! {
        /// Merging is what lets workers, pods and windows add up: it is associative and
        /// commutative, and the merged report is the report of all the calls.
        #[test]
        fn merging_adds_up_in_any_order(a in counts(), b in counts(), c in counts()) {
            let mut ab_c = a.clone();
            ab_c.merge(&b);
            ab_c.merge(&c);
            let mut c_ba = c.clone();
            c_ba.merge(&b);
            c_ba.merge(&a);
            prop_assert_eq!(&ab_c, &c_ba);
            prop_assert_eq!(ab_c.calls, a.calls + b.calls + c.calls);
            prop_assert_eq!(ab_c.errors.total(), a.errors.total() + b.errors.total() + c.errors.total());
            let timed: u64 = ab_c.latency_us.iter().sum();
            prop_assert_eq!(timed, ab_c.calls);
            prop_assert!(ab_c.check().is_ok());
        }

        /// A higher quantile is never a lower latency.
        #[test]
        fn quantiles_are_monotonic(c in counts(), q in 0.0f64..1.0) {
            if let (Some(low), Some(high)) = (c.quantile(q), c.quantile((q + 0.01).min(1.0))) {
                prop_assert!(low <= high, "{:?} > {:?}", low, high);
            }
        }
    }
}
