//! Prometheus metrics (prometheus-client): what the operator did and how the fleet answers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set with one `reason`-like value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// The value.
    pub value: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (ok, or the error's metric label).
    pub reconciles: Family<Label, Counter>,
    /// Reconcile duration.
    pub reconcile_seconds: Histogram,
    /// Rollout events by reason (RolloutStarted, RolloutCompleted, RolledBack, …).
    pub rollout_events: Family<Label, Counter>,
    /// Sidecar acknowledgements by state.
    pub acks: Family<Label, Counter>,
    /// Failed loads by reason (the text before the first colon).
    pub load_failures: Family<Label, Counter>,
    /// Status writes.
    pub status_writes: Counter,
    /// Sidecars connected now.
    pub connected_sidecars: Gauge,
    /// Channel attaches by outcome (accepted, busy, refused).
    pub attaches: Family<Label, Counter>,
    /// Pods seen by the injection webhook, by outcome (injected, skipped, error).
    pub injections: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hotload");
        let reconciles = Family::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let rollout_events = Family::default();
        let acks = Family::default();
        let load_failures = Family::default();
        let status_writes = Counter::default();
        let connected_sidecars = Gauge::default();
        let attaches = Family::default();
        let injections = Family::default();
        registry.register(
            "reconciles",
            "Reconciles of PluginReleases, by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to plan and act on one release",
            reconcile_seconds.clone(),
        );
        registry.register(
            "rollout_events",
            "Rollout events, by reason",
            rollout_events.clone(),
        );
        registry.register("acks", "Sidecar plugin reports, by state", acks.clone());
        registry.register(
            "load_failures",
            "Failed plugin loads, by reason",
            load_failures.clone(),
        );
        registry.register(
            "status_writes",
            "PluginRelease status writes",
            status_writes.clone(),
        );
        registry.register(
            "connected_sidecars",
            "Sidecars with an open channel",
            connected_sidecars.clone(),
        );
        registry.register(
            "channel_attaches",
            "Sidecar channel attaches, by outcome (accepted; busy: shed, the sidecar retries; refused)",
            attaches.clone(),
        );
        registry.register(
            "injections",
            "Pods seen by the injection webhook, by outcome",
            injections.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            rollout_events,
            acks,
            load_failures,
            status_writes,
            connected_sidecars,
            attaches,
            injections,
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles.get_or_create(&label(result)).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Counts a failed load under its reason class.
    pub fn load_failed(&self, reason: &str) {
        self.load_failures
            .get_or_create(&label(&reason_class(reason)))
            .inc();
    }

    /// Sets the number of sidecars with an open channel.
    pub fn set_connected(&self, connected: usize) {
        self.connected_sidecars
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
    }

    /// Counts one pod seen by the injection webhook.
    pub fn injected(&self, outcome: &str) {
        self.injections.get_or_create(&label(outcome)).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A label for a value.
pub fn label(value: &str) -> Label {
    Label {
        value: value.to_string(),
    }
}

/// A bounded-cardinality class of a failure reason: what precedes the first colon, trimmed
/// and cut at 48 characters (`digest mismatch: expected …` → `digest mismatch`).
pub fn reason_class(reason: &str) -> String {
    let head = reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .trim()
        .to_lowercase();
    head.chars().take(48).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_collapse_to_their_class() {
        assert_eq!(
            reason_class("digest mismatch: expected sha256:ab, got sha256:cd"),
            "digest mismatch"
        );
        assert_eq!(reason_class("Timeout"), "timeout");
        assert_eq!(reason_class(&"x".repeat(100)).len(), 48);
    }

    #[test]
    fn exposition_has_the_families() {
        let metrics = Metrics::default();
        metrics.reconciled("ok", Duration::from_millis(3));
        metrics.load_failed("invalid wasm: bad magic");
        let text = metrics.encode();
        assert!(
            text.contains("hotload_reconciles_total{value=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hotload_load_failures_total{value=\"invalid wasm\"} 1"),
            "{text}"
        );
        assert!(text.contains("hotload_connected_sidecars"), "{text}");
    }
}
