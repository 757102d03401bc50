//! The health store: what every pod's sidecar reported of how each plugin revision runs
//! (calls, errors, latency: [`hotload_protocol::Counts`]), merged per second, so analysis can
//! ask "what did revision r of plugin p in namespace n do from t0 to t1, and on which pods".
//!
//! ```text
//!  sidecar Health (deltas, ~1/s per pod) ─▶ record(ns, pod, plugin, revision, counts, now)
//!                                                │
//!      series (ns, plugin, revision) ◀───────────┘
//!        ├─ seconds: [(second, counts merged over pods)]   sparse, oldest first
//!        └─ pods:    pod ─▶ the seconds it reported calls   (a bitmap ring per pod)
//!                                                │
//!  analysis ─▶ sample(ns, plugin, revision, from, to) ─▶ Sample { counts, pods }
//! ```
//!
//! Memory is bounded whatever the sidecars send: everything older than [`RETENTION`] is
//! dropped (each series as it is reported to, every series every [`SWEEP_EVERY_SECONDS`]),
//! a second costs a slot only when some pod reported in it, and at most [`MAX_SERIES`]
//! series are kept (a sidecar names its revisions: a hostile one could name endless ones),
//! the least recently reported going first. Namespaces and pods come from the sidecars'
//! verified tokens, never from what they say.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hotload_protocol::Counts;
use hotload_protocol::health::{Errors, LATENCY_BUCKETS};
use jiff::Timestamp;

/// How long reports are kept: the longest analysis interval (10m) plus slack for a window
/// that is measured a little after it ends.
pub const RETENTION: Duration = Duration::from_secs(11 * 60);

/// The most series (namespace, plugin, revision) kept at once.
pub const MAX_SERIES: usize = 4096;

/// How often (in seconds of the clock reports arrive by) every series is swept of what is
/// older than [`RETENTION`].
pub const SWEEP_EVERY_SECONDS: i64 = 10;

const RETENTION_SECONDS: i64 = RETENTION.as_secs() as i64;

/// The seconds a pod's bitmap covers: [`RETENTION`] rounded up to whole words.
const POD_RING_WORDS: usize = (RETENTION.as_secs() as usize).div_ceil(64);
const POD_RING_SECONDS: i64 = (POD_RING_WORDS * 64) as i64;

/// What was recorded for one revision over a span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Every report in the span, merged. `latency_us` has all [`LATENCY_BUCKETS`] entries
    /// when anything was recorded in the span, none otherwise.
    pub counts: Counts,
    /// Pods that reported calls in the span, sorted.
    pub pods: Vec<String>,
}

/// Per-second health reports, per (namespace, plugin, revision). Send + Sync; share it in an
/// `Arc` between the channel server (which records) and the controller (which samples).
#[derive(Debug, Default)]
pub struct HealthStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// namespace → plugin → revision → series: looked up without allocating.
    series: HashMap<String, HashMap<String, HashMap<String, Series>>>,
    /// How many series `series` holds.
    len: usize,
    /// The newest second recorded: what [`RETENTION`] is measured back from.
    newest: Option<i64>,
    /// The second of the last sweep.
    swept: i64,
    /// Bumped on every record: orders series by how recently they were reported to.
    clock: u64,
}

/// One revision's reports.
#[derive(Debug, Default)]
struct Series {
    /// Seconds in which some pod reported, oldest first, each with its merged counts.
    seconds: VecDeque<(i64, Tally)>,
    /// The seconds each pod reported calls in.
    pods: HashMap<String, PodSeconds>,
    /// [`Inner::clock`] when last reported to.
    touched: u64,
}

/// Counts with a fixed-size histogram: one allocation-free slot per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    calls: u64,
    errors: Errors,
    latency: [u64; LATENCY_BUCKETS],
}

impl Tally {
    fn add(&mut self, counts: &Counts) {
        self.calls = self.calls.saturating_add(counts.calls);
        let e = &mut self.errors;
        e.trap = e.trap.saturating_add(counts.errors.trap);
        e.timeout = e.timeout.saturating_add(counts.errors.timeout);
        e.memory = e.memory.saturating_add(counts.errors.memory);
        e.failed = e.failed.saturating_add(counts.errors.failed);
        for (mine, theirs) in self.latency.iter_mut().zip(&counts.latency_us) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.calls = self.calls.saturating_add(other.calls);
        let (e, o) = (&mut self.errors, &other.errors);
        e.trap = e.trap.saturating_add(o.trap);
        e.timeout = e.timeout.saturating_add(o.timeout);
        e.memory = e.memory.saturating_add(o.memory);
        e.failed = e.failed.saturating_add(o.failed);
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    fn into_counts(self) -> Counts {
        Counts {
            calls: self.calls,
            errors: self.errors,
            latency_us: self.latency.to_vec(),
        }
    }
}

/// The seconds one pod reported calls in: a ring of bits over the [`POD_RING_SECONDS`] up
/// to `last` (bit `s mod POD_RING_SECONDS` is second `s`).
#[derive(Clone, Debug)]
struct PodSeconds {
    last: i64,
    bits: [u64; POD_RING_WORDS],
}

impl PodSeconds {
    fn new(second: i64) -> Self {
        let mut pod = Self {
            last: second,
            bits: [0; POD_RING_WORDS],
        };
        pod.set(second);
        pod
    }

    fn slot(second: i64) -> (usize, u64) {
        let bit = second.rem_euclid(POD_RING_SECONDS) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    fn set(&mut self, second: i64) {
        let (word, mask) = Self::slot(second);
        self.bits[word] |= mask;
    }

    fn clear(&mut self, second: i64) {
        let (word, mask) = Self::slot(second);
        self.bits[word] &= !mask;
    }

    fn is_set(&self, second: i64) -> bool {
        let (word, mask) = Self::slot(second);
        self.bits[word] & mask != 0
    }

    /// Marks `second`; one older than the ring reaches back is forgotten.
    fn mark(&mut self, second: i64) {
        if second > self.last {
            if second - self.last >= POD_RING_SECONDS {
                self.bits = [0; POD_RING_WORDS];
            } else {
                // The slots of the seconds skipped held seconds a ring ago.
                for s in self.last + 1..second {
                    self.clear(s);
                }
            }
            self.last = second;
            self.set(second);
        } else if self.last - second < POD_RING_SECONDS {
            self.set(second);
        }
    }

    /// Whether the pod reported in any second of `from..to`.
    fn any_in(&self, from: i64, to: i64) -> bool {
        let from = from.max(self.last - POD_RING_SECONDS + 1);
        let to = to.min(self.last + 1);
        (from..to).any(|s| self.is_set(s))
    }
}

/// The second `at` falls in.
fn second_of(at: Timestamp) -> i64 {
    at.as_millisecond().div_euclid(1000)
}

impl Series {
    fn add(&mut self, second: i64, counts: &Counts) {
        match self.seconds.back_mut() {
            Some((last, tally)) if *last == second => tally.add(counts),
            Some((last, _)) if *last > second => {
                // Reported a moment before another stream's later report took the lock.
                let at = self.seconds.partition_point(|(s, _)| *s < second);
                match self.seconds.get_mut(at) {
                    Some((s, tally)) if *s == second => tally.add(counts),
                    _ => {
                        let mut tally = Tally::default();
                        tally.add(counts);
                        self.seconds.insert(at, (second, tally));
                    }
                }
            }
            _ => {
                let mut tally = Tally::default();
                tally.add(counts);
                self.seconds.push_back((second, tally));
            }
        }
    }

    /// Drops what is older than `horizon`; true when nothing is left.
    fn prune(&mut self, horizon: i64, pods: bool) -> bool {
        while self.seconds.front().is_some_and(|(s, _)| *s < horizon) {
            self.seconds.pop_front();
        }
        if pods {
            self.pods.retain(|_, p| p.last >= horizon);
        }
        self.seconds.is_empty() && self.pods.is_empty()
    }
}

impl HealthStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pod's report, received at `now` (the operator's clock). The caller has
    /// checked it ([`Counts::check`]); latency buckets beyond the protocol's are ignored.
    pub fn record(
        &self,
        namespace: &str,
        pod: &str,
        plugin: &str,
        revision: &str,
        counts: &Counts,
        now: Timestamp,
    ) {
        if counts.is_empty() && counts.errors.total() == 0 {
            return;
        }
        let second = second_of(now);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        match inner.newest {
            // A clock that went back further than everything kept: start afresh rather than
            // refuse every report until it catches up.
            Some(newest) if second + RETENTION_SECONDS < newest => {
                *inner = Inner::default();
                inner.newest = Some(second);
                inner.swept = second;
            }
            Some(newest) if second <= newest => {}
            _ => inner.newest = Some(second),
        }
        let horizon = inner.horizon();
        if second < horizon {
            return;
        }
        if second - inner.swept >= SWEEP_EVERY_SECONDS {
            inner.sweep(horizon);
            inner.swept = second;
        }
        inner.clock += 1;
        let touched = inner.clock;
        let series = match inner.get_mut(namespace, plugin, revision) {
            Some(series) => series,
            None => {
                if inner.len >= MAX_SERIES {
                    inner.evict(MAX_SERIES - MAX_SERIES / 8);
                }
                inner.len += 1;
                inner
                    .series
                    .entry(namespace.to_string())
                    .or_default()
                    .entry(plugin.to_string())
                    .or_default()
                    .entry(revision.to_string())
                    .or_default()
            }
        };
        series.touched = touched;
        series.add(second, counts);
        if counts.calls > 0 {
            match series.pods.get_mut(pod) {
                Some(seconds) => seconds.mark(second),
                None => {
                    series.pods.insert(pod.to_string(), PodSeconds::new(second));
                }
            }
        }
        series.prune(horizon, false);
    }

    /// Everything recorded for `revision` of `plugin` in `namespace` from `from` (inclusive)
    /// to `to` (exclusive), at one-second resolution: both bounds are taken down to their
    /// whole second, so back-to-back spans share no report. What is older than
    /// [`RETENTION`] before the newest report is gone.
    pub fn sample(
        &self,
        namespace: &str,
        plugin: &str,
        revision: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Sample {
        let Ok(inner) = self.inner.lock() else {
            return Sample::default();
        };
        let from = second_of(from).max(inner.horizon());
        let to = second_of(to);
        let Some(series) = inner
            .series
            .get(namespace)
            .and_then(|plugins| plugins.get(plugin))
            .and_then(|revisions| revisions.get(revision))
        else {
            return Sample::default();
        };
        if from >= to {
            return Sample::default();
        }
        let start = series.seconds.partition_point(|(s, _)| *s < from);
        let mut tally = None::<Tally>;
        for (_, slot) in series.seconds.range(start..).take_while(|(s, _)| *s < to) {
            tally.get_or_insert_default().merge(slot);
        }
        let mut pods: Vec<String> = series
            .pods
            .iter()
            .filter(|(_, seconds)| seconds.any_in(from, to))
            .map(|(pod, _)| pod.clone())
            .collect();
        pods.sort_unstable();
        Sample {
            counts: tally.map(Tally::into_counts).unwrap_or_default(),
            pods,
        }
    }

    /// How many series the store holds.
    pub fn series(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.len)
    }
}

impl Inner {
    /// The oldest second kept.
    fn horizon(&self) -> i64 {
        self.newest.map_or(i64::MIN, |n| n - RETENTION_SECONDS)
    }

    fn get_mut(&mut self, namespace: &str, plugin: &str, revision: &str) -> Option<&mut Series> {
        self.series
            .get_mut(namespace)?
            .get_mut(plugin)?
            .get_mut(revision)
    }

    /// Drops every series and pod older than `horizon`.
    fn sweep(&mut self, horizon: i64) {
        let mut len = 0;
        self.series.retain(|_, plugins| {
            plugins.retain(|_, revisions| {
                revisions.retain(|_, series| !series.prune(horizon, true));
                len += revisions.len();
                !revisions.is_empty()
            });
            !plugins.is_empty()
        });
        self.len = len;
    }

    /// Drops the least recently reported series until `keep` are left.
    fn evict(&mut self, keep: usize) {
        let mut touched: Vec<u64> = self
            .series
            .values()
            .flat_map(|plugins| plugins.values())
            .flat_map(|revisions| revisions.values())
            .map(|series| series.touched)
            .collect();
        let Some(drop) = touched.len().checked_sub(keep).filter(|&n| n > 0) else {
            return;
        };
        // Every series was touched at a distinct tick: the `drop` smallest go.
        let (_, &mut cutoff, _) = touched.select_nth_unstable(drop - 1);
        let mut len = 0;
        self.series.retain(|_, plugins| {
            plugins.retain(|_, revisions| {
                revisions.retain(|_, series| series.touched > cutoff);
                len += revisions.len();
                !revisions.is_empty()
            });
            !plugins.is_empty()
        });
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotload_protocol::health::ErrorKind;
    use proptest::prelude::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn at_ms(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
    }

    /// `calls` calls of 3 ms, `errors` of them trapped.
    fn counts(calls: u64, errors: u64) -> Counts {
        let mut c = Counts::default();
        for i in 0..calls {
            c.record(
                Duration::from_millis(3),
                (i < errors).then_some(ErrorKind::Trap),
            );
        }
        c
    }

    fn full(mut c: Counts) -> Counts {
        c.latency_us.resize(LATENCY_BUCKETS, 0);
        c
    }

    #[test]
    fn a_sample_sums_pods_and_seconds_of_one_revision() {
        let store = HealthStore::new();
        store.record("shop", "web-1", "auth", "r2", &counts(10, 1), at(0));
        store.record("shop", "web-2", "auth", "r2", &counts(5, 0), at(0));
        store.record("shop", "web-1", "auth", "r2", &counts(7, 2), at(1));
        // Other revisions, plugins and namespaces stay apart.
        store.record("shop", "web-3", "auth", "r1", &counts(100, 0), at(1));
        store.record("shop", "web-1", "geo", "r2", &counts(100, 0), at(1));
        store.record("bank", "web-1", "auth", "r2", &counts(100, 0), at(1));
        let sample = store.sample("shop", "auth", "r2", at(0), at(2));
        assert_eq!(sample.counts.calls, 22);
        assert_eq!(sample.counts.errors.trap, 3);
        assert_eq!(sample.counts.latency_us[8], 22, "3 ms calls");
        assert_eq!(sample.counts.latency_us.len(), LATENCY_BUCKETS);
        assert_eq!(sample.pods, ["web-1", "web-2"]);
        let mut expected = counts(10, 1);
        expected.merge(&counts(5, 0));
        expected.merge(&counts(7, 2));
        assert_eq!(sample.counts, full(expected));
        assert_eq!(
            store.sample("shop", "auth", "r3", at(0), at(2)),
            Sample::default()
        );
    }

    #[test]
    fn spans_include_their_start_and_exclude_their_end_by_the_second() {
        let store = HealthStore::new();
        store.record("shop", "web-1", "auth", "r2", &counts(1, 0), at_ms(9_999));
        store.record("shop", "web-2", "auth", "r2", &counts(2, 0), at_ms(10_000));
        store.record("shop", "web-3", "auth", "r2", &counts(4, 0), at_ms(19_999));
        store.record("shop", "web-4", "auth", "r2", &counts(8, 0), at_ms(20_000));
        let span = |from, to| store.sample("shop", "auth", "r2", at_ms(from), at_ms(to));
        let s = span(10_000, 20_000);
        assert_eq!(
            (s.counts.calls, s.pods),
            (6, vec!["web-2".into(), "web-3".into()])
        );
        // Bounds inside a second are taken down to it: back-to-back spans share nothing.
        assert_eq!(span(10_500, 20_500).counts.calls, 6);
        assert_eq!(span(0, 10_000).counts.calls, 1);
        assert_eq!(span(20_000, 30_000).counts.calls, 8);
        assert_eq!(span(10_000, 10_000), Sample::default(), "an empty span");
        assert_eq!(span(20_000, 10_000), Sample::default(), "a backward span");
    }

    #[test]
    fn a_pod_counts_only_if_it_reported_calls_inside_the_span() {
        let store = HealthStore::new();
        store.record("shop", "web-1", "auth", "r2", &counts(3, 0), at(5));
        store.record("shop", "web-2", "auth", "r2", &counts(3, 0), at(100));
        // Latency without calls is merged, but does not make a pod one that served.
        let timed_only = Counts {
            latency_us: vec![1],
            ..Counts::default()
        };
        store.record("shop", "web-3", "auth", "r2", &timed_only, at(50));
        store.record("shop", "web-4", "auth", "r2", &Counts::default(), at(50));
        let pods = |from, to| store.sample("shop", "auth", "r2", at(from), at(to)).pods;
        assert_eq!(pods(0, 10), ["web-1"]);
        assert_eq!(pods(6, 100), Vec::<String>::new());
        assert_eq!(pods(6, 101), ["web-2"]);
        assert_eq!(pods(0, 200), ["web-1", "web-2"]);
        assert_eq!(
            store
                .sample("shop", "auth", "r2", at(50), at(51))
                .counts
                .latency_us[0],
            1
        );
    }

    #[test]
    fn a_pods_seconds_stay_exact_as_its_ring_wraps() {
        let store = HealthStore::new();
        // Reports every 7 s for longer than the ring; each second is its own.
        for s in (0..2_000).step_by(7) {
            store.record("shop", "web-1", "auth", "r2", &counts(1, 0), at(s));
        }
        for s in 1_400..1_999 {
            let sample = store.sample("shop", "auth", "r2", at(s), at(s + 1));
            let reported = s % 7 == 0;
            assert_eq!(sample.pods.len(), usize::from(reported), "second {s}");
            assert_eq!(sample.counts.calls, u64::from(reported), "second {s}");
        }
    }

    #[test]
    fn reports_older_than_the_retention_are_dropped() {
        let store = HealthStore::new();
        let retention = RETENTION_SECONDS;
        store.record("shop", "web-1", "auth", "r1", &counts(5, 0), at(0));
        store.record("shop", "web-1", "auth", "r2", &counts(5, 0), at(0));
        store.record("shop", "web-2", "auth", "r2", &counts(1, 0), at(retention));
        // r2 at second 0 is still within the retention of the newest report.
        assert_eq!(
            store
                .sample("shop", "auth", "r2", at(0), at(1))
                .counts
                .calls,
            5
        );
        store.record(
            "shop",
            "web-2",
            "auth",
            "r2",
            &counts(1, 0),
            at(retention + 1),
        );
        let old = store.sample("shop", "auth", "r2", at(0), at(retention + 2));
        assert_eq!(old.counts.calls, 2, "second 0 is gone");
        assert_eq!(old.pods, ["web-2"], "and web-1 with it");
        // The sweep drops r1, which nobody reports any more, and web-1 from r2.
        store.record(
            "shop",
            "web-2",
            "auth",
            "r2",
            &counts(1, 0),
            at(retention + 20),
        );
        assert_eq!(store.series(), 1);
        let inner = store.inner.lock().unwrap();
        let r2 = &inner.series["shop"]["auth"]["r2"];
        assert_eq!(r2.pods.keys().collect::<Vec<_>>(), ["web-2"]);
        assert_eq!(r2.seconds.len(), 3);
    }

    #[test]
    fn a_clock_that_went_far_back_starts_the_store_afresh() {
        let store = HealthStore::new();
        store.record("shop", "web-1", "auth", "r2", &counts(5, 0), at(10_000));
        store.record("shop", "web-1", "auth", "r2", &counts(3, 0), at(100));
        let sample = store.sample("shop", "auth", "r2", at(0), at(20_000));
        assert_eq!(sample.counts.calls, 3);
        // A report a moment late (taken before another's) is kept in its second.
        store.record("shop", "web-1", "auth", "r2", &counts(1, 0), at(101));
        store.record("shop", "web-2", "auth", "r2", &counts(2, 0), at(100));
        let sample = store.sample("shop", "auth", "r2", at(100), at(101));
        assert_eq!((sample.counts.calls, sample.pods.len()), (5, 2));
    }

    #[test]
    fn series_are_bounded_dropping_the_least_recently_reported() {
        let store = HealthStore::new();
        store.record("shop", "web-1", "auth", "stable", &counts(1, 0), at(0));
        for i in 0..MAX_SERIES + 1_000 {
            store.record(
                "shop",
                "evil",
                "auth",
                &format!("r{i}"),
                &counts(1, 0),
                at(1),
            );
            if i % 100 == 0 {
                // The real revision keeps being reported.
                store.record("shop", "web-1", "auth", "stable", &counts(1, 0), at(1));
            }
        }
        assert!(store.series() <= MAX_SERIES, "{}", store.series());
        assert!(store.series() > MAX_SERIES / 2, "{}", store.series());
        let newest = format!("r{}", MAX_SERIES + 999);
        assert_eq!(
            store
                .sample("shop", "auth", &newest, at(0), at(2))
                .counts
                .calls,
            1
        );
        assert_eq!(
            store.sample("shop", "auth", "r0", at(0), at(2)),
            Sample::default(),
            "the oldest went first"
        );
        let stable = store.sample("shop", "auth", "stable", at(0), at(2));
        assert!(stable.counts.calls > 1, "the one still reported stays");
        let inner = store.inner.lock().unwrap();
        let counted: usize = inner
            .series
            .values()
            .flat_map(|p| p.values())
            .map(HashMap::len)
            .sum();
        assert_eq!(counted, inner.len);
    }

    #[test]
    fn ten_thousand_pods_cost_a_bounded_amount() {
        let store = HealthStore::new();
        for s in 0..3 {
            for pod in 0..10_000 {
                store.record(
                    "shop",
                    &format!("web-{pod}"),
                    "auth",
                    "r2",
                    &counts(1, 0),
                    at(s),
                );
            }
        }
        let sample = store.sample("shop", "auth", "r2", at(0), at(3));
        assert_eq!((sample.counts.calls, sample.pods.len()), (30_000, 10_000));
        let inner = store.inner.lock().unwrap();
        let series = &inner.series["shop"]["auth"]["r2"];
        assert_eq!(
            series.seconds.len(),
            3,
            "one slot per second, not per report"
        );
        assert_eq!(std::mem::size_of::<PodSeconds>(), 8 + 8 * POD_RING_WORDS);
    }

    /// One report: (pod, revision, millisecond, calls, errors, latency bucket).
    fn report() -> impl Strategy<Value = (usize, usize, i64, u64, u64, usize)> {
        (
            0usize..4,
            0usize..2,
            0i64..RETENTION_SECONDS * 1000,
            0u64..50,
            0u64..5,
            0usize..LATENCY_BUCKETS,
        )
    }

    proptest! {
        /// The sample of a span is the merge of exactly the reports recorded in it, and its
        /// pods exactly those that reported calls in it.
        #[test]
        fn a_sample_is_the_merge_of_the_reports_in_its_span(
            reports in proptest::collection::vec(report(), 0..60),
            from in 0i64..RETENTION_SECONDS * 1000,
            length in 0i64..RETENTION_SECONDS * 1000,
        ) {
            let store = HealthStore::new();
            let mut recorded = Vec::new();
            for (pod, revision, ms, calls, errors, bucket) in reports {
                let mut latency_us = vec![0; bucket + 1];
                latency_us[bucket] = calls;
                let c = Counts {
                    calls,
                    errors: Errors { failed: errors.min(calls), ..Errors::default() },
                    latency_us,
                };
                let (pod, revision) = (format!("web-{pod}"), format!("r{revision}"));
                store.record("shop", &pod, "auth", &revision, &c, at_ms(ms));
                recorded.push((pod, revision, ms, c));
            }
            let to = from + length;
            let sample = store.sample("shop", "auth", "r1", at_ms(from), at_ms(to));
            let (lo, hi) = (from.div_euclid(1000), to.div_euclid(1000));
            let inside: Vec<_> = recorded
                .iter()
                .filter(|(_, r, ms, c)| r == "r1" && (lo..hi).contains(&ms.div_euclid(1000)) && !c.is_empty())
                .collect();
            let mut expected = Counts::default();
            for (_, _, _, c) in &inside {
                expected.merge(c);
            }
            if !inside.is_empty() {
                expected.latency_us.resize(LATENCY_BUCKETS, 0);
            }
            let mut pods: Vec<String> = inside
                .iter()
                .filter(|(_, _, _, c)| c.calls > 0)
                .map(|(p, ..)| p.clone())
                .collect();
            pods.sort();
            pods.dedup();
            prop_assert_eq!(sample, Sample { counts: expected, pods });
        }
    }
}
