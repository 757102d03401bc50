//! How each revision runs, counted on the call path without a lock: a [`Meter`] per revision
//! (calls, errors by kind, latency in the protocol's fixed buckets, all `AtomicU64`), and the
//! host's list of meters that [`PluginHost::take_health`](crate::PluginHost::take_health)
//! drains into `health` reports (docs/protocol.md, "health").
//!
//! ```text
//!  Revision ──Arc──► Meter ◄──Arc── Meters (the host's list)
//!  call: err[kind] += 1, latency[bucket] += 1, calls += 1     (relaxed, relaxed, release)
//!  take: calls.swap(0), err.swap(0), latency.swap(0)          (acquire, then the rest)
//! ```
//! A meter lives beside its revision, not inside it: when a swap or an unload drops the
//! revision (its last in-flight call or [`Pinned`](crate::Pinned) gone), the list still holds
//! the meter, so the calls that finished after the swap are drained once more and only then
//! is the meter forgotten. No count is lost to a swap, and no instance pool is kept alive
//! for its counts.
//!
//! A drain is not a snapshot of all fields at one instant: a call can be half-counted while
//! it runs. The order above makes the half always the same one: whatever call a drain counts
//! in `calls` has its error and bucket counted in the same drain or an earlier one, never a
//! later one. So a report can hold an error whose call comes in the next report; reports must
//! never say more failed calls than calls (the sidecar refuses those), so such errors are held
//! back to the next report ([`settle`]). Every count is reported exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotload_protocol::PluginHealth;
use hotload_protocol::health::{Counts, ErrorKind, Errors, LATENCY_BUCKETS, bucket_of};

/// The counters of one revision.
pub(crate) struct Meter {
    plugin: String,
    revision: String,
    calls: AtomicU64,
    /// By [`ErrorKind::ALL`] order.
    errors: [AtomicU64; 4],
    latency: [AtomicU64; LATENCY_BUCKETS],
}

fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Trap => 0,
        ErrorKind::Timeout => 1,
        ErrorKind::Memory => 2,
        ErrorKind::Failed => 3,
    }
}

impl Meter {
    /// Counters at zero for `revision` of `plugin`.
    pub(crate) fn new(plugin: &str, revision: &str) -> Self {
        Meter {
            plugin: plugin.into(),
            revision: revision.into(),
            calls: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one call that took `elapsed` and failed with `error`, if it did.
    #[inline]
    pub(crate) fn record(&self, elapsed: Duration, error: Option<ErrorKind>) {
        if let Some(kind) = error {
            self.errors[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
        // Last, and released: a drain that sees this call sees its error and bucket too.
        self.calls.fetch_add(1, Ordering::Release);
    }

    /// Counts one `failed` error on a call already counted.
    pub(crate) fn mark_failed(&self) {
        self.errors[kind_index(ErrorKind::Failed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts since the previous drain, leaving zeros.
    fn drain(&self) -> Counts {
        let calls = self.calls.swap(0, Ordering::Acquire);
        let error = |kind: ErrorKind| self.errors[kind_index(kind)].swap(0, Ordering::Relaxed);
        Counts {
            calls,
            errors: Errors {
                trap: error(ErrorKind::Trap),
                timeout: error(ErrorKind::Timeout),
                memory: error(ErrorKind::Memory),
                failed: error(ErrorKind::Failed),
            },
            latency_us: self
                .latency
                .iter()
                .map(|n| n.swap(0, Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Makes a drained delta a valid report: adds the errors `held` from before, and holds back
/// (into `held`) the errors beyond the report's calls, `failed` first (an app's mark is the
/// likeliest to run ahead), then `memory`, `timeout`, `trap`. Pure.
pub(crate) fn settle(mut delta: Counts, held: &mut Errors) -> Counts {
    for kind in ErrorKind::ALL {
        let n = count_mut(&mut delta.errors, kind);
        *n = n.saturating_add(std::mem::take(count_mut(held, kind)));
    }
    let mut excess = delta.errors.total().saturating_sub(delta.calls);
    for kind in ErrorKind::ALL.iter().rev().copied() {
        if excess == 0 {
            break;
        }
        let n = count_mut(&mut delta.errors, kind);
        let moved = (*n).min(excess);
        *n -= moved;
        let h = count_mut(held, kind);
        *h = h.saturating_add(moved);
        excess -= moved;
    }
    if delta.latency_us.iter().all(|&n| n == 0) {
        delta.latency_us.clear();
    }
    delta
}

fn count_mut(errors: &mut Errors, kind: ErrorKind) -> &mut u64 {
    match kind {
        ErrorKind::Trap => &mut errors.trap,
        ErrorKind::Timeout => &mut errors.timeout,
        ErrorKind::Memory => &mut errors.memory,
        ErrorKind::Failed => &mut errors.failed,
    }
}

struct Entry {
    meter: Arc<Meter>,
    /// Errors held back from earlier reports (see [`settle`]).
    held: Errors,
}

/// The meters of every revision still referenced, and of those dropped since the last drain.
#[derive(Default)]
pub(crate) struct Meters {
    entries: Mutex<Vec<Entry>>,
}

impl Meters {
    /// Adds the meter of a revision about to serve. Meters of revisions that are gone and
    /// have nothing left to report are forgotten here too, so an app that never drains keeps
    /// only the meters with counts it has not taken.
    pub(crate) fn register(&self, meter: Arc<Meter>) {
        let mut entries = self.lock();
        entries.retain(|e| Arc::strong_count(&e.meter) > 1 || !e.meter.is_idle());
        entries.push(Entry {
            meter,
            held: Errors::default(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // Entries stay consistent across a panic (each update is one push or retain).
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains every meter: one report per (plugin, revision) with calls since the previous
    /// drain, sorted by plugin and revision. Meters whose revision is gone are drained a
    /// last time and forgotten.
    pub(crate) fn take(&self) -> Vec<PluginHealth> {
        let mut reports: BTreeMap<(String, String), Counts> = BTreeMap::new();
        let mut entries = self.lock();
        entries.retain_mut(|e| {
            // Checked before the drain: a meter with no revision left cannot count again.
            let gone = Arc::strong_count(&e.meter) == 1;
            let counts = settle(e.meter.drain(), &mut e.held);
            if !counts.is_empty() {
                reports
                    .entry((e.meter.plugin.clone(), e.meter.revision.clone()))
                    .or_default()
                    .merge(&counts);
            }
            !gone
        });
        drop(entries);
        reports
            .into_iter()
            .map(|((plugin, revision), counts)| PluginHealth {
                plugin,
                revision,
                counts,
            })
            .collect()
    }

    /// Counts one `failed` error on the newest meter of `revision` of `plugin`; `false` when
    /// no such revision is known.
    pub(crate) fn mark_failed(&self, plugin: &str, revision: &str) -> bool {
        let entries = self.lock();
        let found = entries
            .iter()
            .rev()
            .find(|e| e.meter.plugin == plugin && e.meter.revision == revision);
        if let Some(e) = found {
            e.meter.mark_failed();
        }
        found.is_some()
    }
}

impl Meter {
    fn is_idle(&self) -> bool {
        self.calls.load(Ordering::Relaxed) == 0
            && self.errors.iter().all(|n| n.load(Ordering::Relaxed) == 0)
            && self.latency.iter().all(|n| n.load(Ordering::Relaxed) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_meter_counts_like_the_protocol_counts() {
        let meter = Meter::new("p", "r1");
        let mut expected = Counts::default();
        for (elapsed, error) in [
            (us(5), None),
            (us(300), Some(ErrorKind::Trap)),
            (Duration::from_millis(600), Some(ErrorKind::Timeout)),
            (us(40), Some(ErrorKind::Memory)),
            (Duration::from_secs(30), Some(ErrorKind::Failed)),
        ] {
            meter.record(elapsed, error);
            expected.record(elapsed, error);
        }
        assert_eq!(meter.drain(), expected);
        assert!(meter.is_idle(), "a drain leaves zeros");
    }

    #[test]
    fn settle_holds_back_errors_beyond_calls_until_their_calls_come() {
        let mut held = Errors::default();
        // An error whose call is not counted yet: the report holds 1 call, 1 error.
        let delta = Counts {
            calls: 1,
            errors: Errors {
                trap: 1,
                failed: 1,
                ..Errors::default()
            },
            latency_us: vec![2],
        };
        let report = settle(delta, &mut held);
        assert_eq!(
            (report.calls, report.errors.trap, report.errors.failed),
            (1, 1, 0)
        );
        assert_eq!(held.failed, 1);
        assert!(report.check().is_ok());
        // Its call comes next: the held error goes with it.
        let next = settle(
            Counts {
                calls: 1,
                ..Counts::default()
            },
            &mut held,
        );
        assert_eq!((next.calls, next.errors.failed), (1, 1));
        assert_eq!(held, Errors::default());
        assert!(next.latency_us.is_empty(), "all-zero buckets are left out");
    }

    #[test]
    fn a_gone_revision_is_drained_once_more_then_forgotten() {
        let meters = Meters::default();
        let meter = Arc::new(Meter::new("p", "r1"));
        meters.register(meter.clone());
        meter.record(us(3), None);
        assert_eq!(meters.take()[0].counts.calls, 1);
        meter.record(us(3), Some(ErrorKind::Trap));
        drop(meter); // the revision is gone after its last call
        let last = meters.take();
        assert_eq!((last[0].counts.calls, last[0].counts.errors.trap), (1, 1));
        assert!(meters.take().is_empty());
        assert!(meters.lock().is_empty(), "forgotten");
        assert!(!meters.mark_failed("p", "r1"));
    }

    #[test]
    fn two_meters_of_one_revision_name_make_one_report() {
        let meters = Meters::default();
        let (a, b) = (
            Arc::new(Meter::new("p", "r")),
            Arc::new(Meter::new("p", "r")),
        );
        meters.register(a.clone());
        meters.register(b.clone());
        a.record(us(3), None);
        b.record(us(3), None);
        assert!(meters.mark_failed("p", "r"));
        let reports = meters.take();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].counts.calls, reports[0].counts.errors.failed),
            (2, 1)
        );
    }
}
