//! The sidecar's telemetry: the workers' health reports ([`crate::health`]) and what the
//! sidecar itself did (fetches, cache hits, loads, failures by cause), exposed on `/metrics`
//! in the Prometheus (OpenMetrics) text format with prometheus-client. docs/protocol.md,
//! "Sidecar metrics", lists every series.
//!
//! Every label set is bounded: `plugin` by [`health::MAX_PLUGINS`] (a sidecar counter for a
//! plugin beyond it is counted under `plugin="_other"`), `revision` by
//! [`health::KEPT_REVISIONS`] per plugin, `kind`, `result` and `cause` by fixed sets.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fetch::{FetchError, Fetched};
use crate::health::{self, HealthBook, RevisionKey};
use crate::protocol::health::LATENCY_BOUNDS_US;
use crate::protocol::{Counts, ErrorKind, PluginHealth};

/// The content type of [`Telemetry::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `plugin` label of sidecar counters for plugins beyond [`health::MAX_PLUGINS`].
pub const OTHER_PLUGIN: &str = "_other";

/// Bucket bounds of `hotload_sidecar_fetch_duration_seconds`: a fetch is a download (tens of
/// milliseconds to minutes for a large artifact on a slow registry) and its checks.
pub const FETCH_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Why a load of a revision failed: the `cause` label of
/// `hotload_sidecar_failures_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The artifact could not be downloaded (HTTP or registry error, timeout, too large…).
    Fetch,
    /// The artifact's bytes do not match the pinned digest.
    Digest,
    /// The release asks for a cosign signature and none verifies.
    Signature,
    /// The assignment itself cannot be used (malformed digest or artifact reference, a
    /// config that is not JSON).
    Invalid,
    /// A worker answered `failed` (self-check, invalid Wasm, …).
    AppRefused,
    /// A worker disconnected before answering the load (it crashed loading).
    AppDisconnected,
    /// Connected workers did not answer within the ack timeout.
    AppTimeout,
    /// Anything else (the local store failed, the sidecar is shutting down).
    Other,
}

impl FailureCause {
    /// Every cause, in the order docs/protocol.md lists them.
    pub const ALL: [FailureCause; 8] = [
        FailureCause::Fetch,
        FailureCause::Digest,
        FailureCause::Signature,
        FailureCause::Invalid,
        FailureCause::AppRefused,
        FailureCause::AppDisconnected,
        FailureCause::AppTimeout,
        FailureCause::Other,
    ];

    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            FailureCause::Fetch => "fetch",
            FailureCause::Digest => "digest",
            FailureCause::Signature => "signature",
            FailureCause::Invalid => "invalid",
            FailureCause::AppRefused => "app_refused",
            FailureCause::AppDisconnected => "app_disconnected",
            FailureCause::AppTimeout => "app_timeout",
            FailureCause::Other => "other",
        }
    }

    /// The cause of a failed fetch. Pure.
    pub fn of_fetch(error: &FetchError) -> Self {
        match error {
            FetchError::DigestMismatch { .. } => FailureCause::Digest,
            FetchError::Signature { .. } => FailureCause::Signature,
            FetchError::BadReference { .. } => FailureCause::Invalid,
            FetchError::Store { .. } => FailureCause::Other,
            _ => FailureCause::Fetch,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginResult {
    plugin: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCause {
    plugin: String,
    cause: &'static str,
}

/// Renders the workers' health totals at scrape time.
#[derive(Debug)]
struct HealthSeries(Arc<Mutex<HealthBook>>);

/// A histogram's `_sum` estimated from its buckets, in seconds: each call counts as its
/// bucket's midpoint; a call slower than the last bound counts as that bound (10 s). Pure.
pub fn approximate_sum_seconds(latency_us: &[u64]) -> f64 {
    latency_us
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let point = LATENCY_BOUNDS_US
                .get(i)
                .map_or(lower as f64, |&upper| (lower + upper) as f64 / 2.0);
            n as f64 * point / 1e6
        })
        .sum()
}

/// The cumulative-ready buckets of one revision: `(upper bound in seconds, calls)`, the
/// last one `+Inf`. Pure.
pub fn latency_buckets(counts: &Counts) -> Vec<(f64, u64)> {
    let at = |i: usize| counts.latency_us.get(i).copied().unwrap_or(0);
    LATENCY_BOUNDS_US
        .iter()
        .enumerate()
        .map(|(i, &bound)| (bound as f64 / 1e6, at(i)))
        .chain(std::iter::once((
            f64::INFINITY,
            at(LATENCY_BOUNDS_US.len()),
        )))
        .collect()
}

impl Collector for HealthSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let book = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut calls = encoder.encode_descriptor(
            "plugin_calls",
            "Plugin calls the app's workers reported, failed ones included.",
            None,
            MetricType::Counter,
        )?;
        for (plugin, revision, counts) in book.totals() {
            let labels = [("plugin", plugin), ("revision", revision)];
            ConstCounter::new(counts.calls).encode(calls.encode_family(&labels)?)?;
        }
        let mut errors = encoder.encode_descriptor(
            "plugin_errors",
            "Failed plugin calls the app's workers reported, by kind (trap, timeout, memory, failed).",
            None,
            MetricType::Counter,
        )?;
        for (plugin, revision, counts) in book.totals() {
            for kind in ErrorKind::ALL {
                let labels = [
                    ("plugin", plugin),
                    ("revision", revision),
                    ("kind", kind.name()),
                ];
                let n = counts.errors.get(kind);
                ConstCounter::new(n).encode(errors.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "plugin_call_duration_seconds",
            "Plugin call latency the app's workers reported, in the protocol's fixed buckets; \
             _sum is estimated from bucket midpoints (calls over 10s count as 10s).",
            None,
            MetricType::Histogram,
        )?;
        for (plugin, revision, counts) in book.totals() {
            let labels = [("plugin", plugin), ("revision", revision)];
            let timed = counts
                .latency_us
                .iter()
                .fold(0u64, |sum, &n| sum.saturating_add(n));
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    approximate_sum_seconds(&counts.latency_us),
                    timed,
                    &latency_buckets(counts),
                    None,
                )?;
        }
        Ok(())
    }
}

/// Everything `/metrics` shows, and the health reports waiting for the operator.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    book: Arc<Mutex<HealthBook>>,
    /// Plugins with a label of their own (at most [`health::MAX_PLUGINS`]).
    plugins: Mutex<BTreeSet<String>>,
    fetches: Family<PluginResult, Counter>,
    fetch_seconds: Histogram,
    cache_hits: Family<PluginLabel, Counter>,
    loads: Family<PluginResult, Counter>,
    failures: Family<PluginCause, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hotload");
        let book = Arc::new(Mutex::new(HealthBook::default()));
        let fetches = Family::<PluginResult, Counter>::default();
        let fetch_seconds = Histogram::new(FETCH_BUCKETS);
        let cache_hits = Family::<PluginLabel, Counter>::default();
        let loads = Family::<PluginResult, Counter>::default();
        let failures = Family::<PluginCause, Counter>::default();
        registry.register(
            "sidecar_fetches",
            "Artifact fetches of assignments, by result (ok, error); cache hits included",
            fetches.clone(),
        );
        registry.register(
            "sidecar_fetch_duration_seconds",
            "Time of each fetch not served from the cache: download, digest and signature checks",
            fetch_seconds.clone(),
        );
        registry.register(
            "sidecar_cache_hits",
            "Fetches the on-disk store served without a download",
            cache_hits.clone(),
        );
        registry.register(
            "sidecar_loads",
            "Assignments that ended loaded by every worker or failed, by result (loaded, failed)",
            loads.clone(),
        );
        registry.register(
            "sidecar_failures",
            "Failed assignments, by cause (fetch, digest, signature, invalid, app_refused, \
             app_disconnected, app_timeout, other)",
            failures.clone(),
        );
        registry.register_collector(Box::new(HealthSeries(book.clone())));
        Telemetry {
            registry,
            book,
            plugins: Mutex::default(),
            fetches,
            fetch_seconds,
            cache_hits,
            loads,
            failures,
        }
    }
}

impl Telemetry {
    fn book(&self) -> MutexGuard<'_, HealthBook> {
        // The book is only changed by whole operations: a poisoned lock is consistent.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps health reports for the operator channel from now on.
    pub fn forward_to_operator(&self) {
        self.book().set_forwarding(true);
    }

    /// Takes a worker's `health` report: `Err` names why it cannot be used (nothing of it is
    /// counted). What the bounds dropped is logged.
    pub fn report(&self, report: &[PluginHealth]) -> Result<(), String> {
        health::check(report)?;
        let dropped = self.book().add(report);
        for (plugin, revision) in &dropped.pending {
            tracing::warn!(
                plugin,
                revision,
                kept = health::MAX_PENDING,
                "health counts not yet sent to the operator dropped: too many revisions waiting"
            );
        }
        for (plugin, revision) in &dropped.series {
            tracing::info!(
                plugin,
                revision,
                "metrics of a revision dropped: newer revisions were reported"
            );
        }
        for plugin in &dropped.plugins {
            tracing::warn!(
                plugin,
                kept = health::MAX_PLUGINS,
                "health of a plugin not shown on /metrics: too many plugins"
            );
        }
        Ok(())
    }

    /// Takes up to `max` revisions of the pending delta for the operator.
    pub fn take_pending(&self, max: usize) -> Vec<(RevisionKey, Counts)> {
        self.book().take(max)
    }

    /// `plugin` as a label: itself, unless [`health::MAX_PLUGINS`] others have labels.
    fn plugin_label(&self, plugin: &str) -> String {
        let mut plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
        if plugins.contains(plugin) {
            return plugin.to_string();
        }
        if plugins.len() >= health::MAX_PLUGINS {
            return OTHER_PLUGIN.to_string();
        }
        plugins.insert(plugin.to_string());
        plugin.to_string()
    }

    /// Counts the fetch an assignment of `plugin` made, which took `took`.
    pub fn fetched(&self, plugin: &str, outcome: Result<&Fetched, &FetchError>, took: Duration) {
        let plugin = self.plugin_label(plugin);
        let result = if outcome.is_ok() { "ok" } else { "error" };
        let cached = outcome.is_ok_and(|f| !f.downloaded);
        let labels = PluginResult {
            plugin: plugin.clone(),
            result,
        };
        self.fetches.get_or_create(&labels).inc();
        if cached {
            self.cache_hits.get_or_create(&PluginLabel { plugin }).inc();
        } else {
            self.fetch_seconds.observe(took.as_secs_f64());
        }
    }

    /// Counts an assignment of `plugin` that every worker loaded.
    pub fn loaded(&self, plugin: &str) {
        let plugin = self.plugin_label(plugin);
        let labels = PluginResult {
            plugin,
            result: "loaded",
        };
        self.loads.get_or_create(&labels).inc();
    }

    /// Counts an assignment of `plugin` that failed for `cause`.
    pub fn failed(&self, plugin: &str, cause: FailureCause) {
        let plugin = self.plugin_label(plugin);
        let labels = PluginResult {
            plugin: plugin.clone(),
            result: "failed",
        };
        self.loads.get_or_create(&labels).inc();
        let cause = cause.label();
        self.failures
            .get_or_create(&PluginCause { plugin, cause })
            .inc();
    }

    /// The text exposition ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;

    #[test]
    fn fetch_errors_map_to_a_fixed_set_of_causes() {
        let artifact = "https://files.example/a.wasm".to_string();
        let mismatch = FetchError::DigestMismatch {
            artifact: artifact.clone(),
            expected: Sha256Digest::of(b"a"),
            actual: Sha256Digest::of(b"b"),
        };
        assert_eq!(FailureCause::of_fetch(&mismatch), FailureCause::Digest);
        let unsigned = FetchError::Signature {
            artifact: artifact.clone(),
            reason: "no signature".into(),
        };
        assert_eq!(FailureCause::of_fetch(&unsigned), FailureCause::Signature);
        let bad = FetchError::BadReference {
            artifact: artifact.clone(),
            reason: "plain http".into(),
        };
        assert_eq!(FailureCause::of_fetch(&bad), FailureCause::Invalid);
        let missing = FetchError::NotFound { artifact };
        assert_eq!(FailureCause::of_fetch(&missing), FailureCause::Fetch);
        let labels: BTreeSet<_> = FailureCause::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), FailureCause::ALL.len());
    }

    #[test]
    fn the_histogram_sum_is_estimated_from_bucket_midpoints() {
        // 2 calls in 20-50 µs (35 µs each), 1 over 10 s (counted as 10 s).
        let mut latency = vec![0, 0, 2];
        latency.resize(20, 0);
        latency[19] = 1;
        let sum = approximate_sum_seconds(&latency);
        assert!((sum - (2.0 * 35e-6 + 10.0)).abs() < 1e-9, "{sum}");
        let buckets = latency_buckets(&Counts {
            calls: 3,
            latency_us: latency,
            ..Counts::default()
        });
        assert_eq!(buckets.len(), 20);
        assert_eq!(buckets[2], (50e-6, 2));
        assert_eq!(buckets[19], (f64::INFINITY, 1));
    }

    #[test]
    fn sidecar_counters_beyond_the_plugin_cap_share_one_label() {
        let telemetry = Telemetry::default();
        for i in 0..health::MAX_PLUGINS {
            telemetry.loaded(&format!("p{i}"));
        }
        telemetry.loaded("one-too-many");
        telemetry.failed("another", FailureCause::Fetch);
        let text = telemetry.encode();
        assert!(
            text.contains("hotload_sidecar_loads_total{plugin=\"_other\",result=\"loaded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hotload_sidecar_failures_total{plugin=\"_other\",cause=\"fetch\"} 1"),
            "{text}"
        );
        assert!(!text.contains("one-too-many"), "{text}");
    }
}
