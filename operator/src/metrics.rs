//! Prometheus metrics (prometheus-client): what the operator did and how the fleet answers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::AckState;

/// `result`: how a reconcile ended (`ok`, or the error's kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    result: String,
}

/// `reason`: a rollout event's reason, or a failed load's class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    reason: String,
}

/// `state`: a sidecar report's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    state: String,
}

/// `outcome`: what became of an attach or of a pod the webhook saw.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    outcome: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (ok, or the error's metric label).
    pub reconciles: Family<ResultLabel, Counter>,
    /// Reconcile duration.
    pub reconcile_seconds: Histogram,
    /// Rollout events by reason (RolloutStarted, RolloutCompleted, RolledBack, …).
    pub rollout_events: Family<ReasonLabel, Counter>,
    /// Sidecar acknowledgements by state.
    pub acks: Family<StateLabel, Counter>,
    /// Failed loads by the step that failed ([`reason_class`]).
    pub load_failures: Family<ReasonLabel, Counter>,
    /// Status writes.
    pub status_writes: Counter,
    /// Sidecars connected now.
    pub connected_sidecars: Gauge,
    /// Channel attaches by outcome (accepted, busy, refused).
    pub attaches: Family<OutcomeLabel, Counter>,
    /// Pods seen by the injection webhook, by outcome (injected, skipped, refused, error).
    pub injections: Family<OutcomeLabel, Counter>,
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
        let result = result.to_string();
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Counts a rollout event (a Kubernetes Event's reason).
    pub fn rollout_event(&self, reason: &str) {
        let reason = reason.to_string();
        self.rollout_events
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a sidecar's report, and a failed load under its reason class.
    pub fn acked(&self, state: AckState, reason: Option<&str>) {
        let label = StateLabel {
            state: format!("{state:?}"),
        };
        self.acks.get_or_create(&label).inc();
        if state == AckState::Failed {
            let reason = reason_class(reason.unwrap_or_default()).to_string();
            self.load_failures
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// Counts a channel attach: `accepted`, `busy` or `refused`.
    pub fn attached(&self, outcome: &str) {
        let outcome = outcome.to_string();
        self.attaches.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Sets the number of sidecars with an open channel.
    pub fn set_connected(&self, connected: usize) {
        self.connected_sidecars
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
    }

    /// Counts one pod seen by the injection webhook.
    pub fn injected(&self, outcome: &str) {
        let outcome = outcome.to_string();
        self.injections
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
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

/// The step at which a load failed, from the sidecar's reason (`fetch: …`, `app: …`,
/// `ack: …`, `assignment: …`); anything else is `other`, so what a sidecar sends cannot
/// grow the label set.
pub fn reason_class(reason: &str) -> &'static str {
    const CLASSES: [&str; 4] = ["fetch", "app", "ack", "assignment"];
    let head = reason.split(':').next().unwrap_or_default().trim();
    CLASSES
        .into_iter()
        .find(|class| head.eq_ignore_ascii_case(class))
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_collapse_to_the_step_that_failed() {
        assert_eq!(
            reason_class("fetch: https://files.shop/a.wasm: digest mismatch: expected sha256:ab"),
            "fetch"
        );
        assert_eq!(reason_class("app: self-check trapped: unreachable"), "app");
        assert_eq!(reason_class("ack: app did not answer within 60s"), "ack");
        assert_eq!(reason_class("anything a sidecar might say"), "other");
        assert_eq!(reason_class(""), "other");
    }

    #[test]
    fn exposition_has_the_families() {
        let metrics = Metrics::default();
        metrics.reconciled("ok", Duration::from_millis(3));
        metrics.acked(AckState::Failed, Some("app: invalid wasm: bad magic"));
        metrics.attached("busy");
        let text = metrics.encode();
        for line in [
            "hotload_reconciles_total{result=\"ok\"} 1",
            "hotload_acks_total{state=\"Failed\"} 1",
            "hotload_load_failures_total{reason=\"app\"} 1",
            "hotload_channel_attaches_total{outcome=\"busy\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("hotload_connected_sidecars"), "{text}");
    }
}
