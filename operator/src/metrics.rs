//! Prometheus metrics (prometheus-client): what the operator did and how the fleet answers,
//! and per release what a platform team alerts on: its phase, its pods by the role of the
//! revision they serve, and its analysis verdicts. Every label set is bounded: releases are
//! named by people, revisions by role (never by hash), checks by the release's spec.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{AckState, AnalysisWindow, Phase, PluginReleaseStatus, Verdict};
use crate::planner::PodView;

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

/// `outcome`: what became of one revision's health in a sidecar's report.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthOutcomeLabel {
    outcome: &'static str,
}

/// `namespace`, `release`, `phase`: one of a release's phase series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleasePhaseLabels {
    namespace: String,
    release: String,
    phase: &'static str,
}

/// `namespace`, `release`, `revision`: a release's pods serving its target, its stable or
/// another revision (`target`, `stable`, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleasePodsLabels {
    namespace: String,
    release: String,
    revision: &'static str,
}

/// `namespace`, `release`, `check`, `verdict`: one check's verdicts in analysis windows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalysisWindowLabels {
    namespace: String,
    release: String,
    check: String,
    verdict: &'static str,
}

/// Every phase, in the order the series are listed.
const PHASES: [Phase; 5] = [
    Phase::Progressing,
    Phase::Paused,
    Phase::Completed,
    Phase::Degraded,
    Phase::RolledBack,
];

/// The roles a pod's revision is labelled by.
const ROLES: [&str; 3] = ["target", "stable", "other"];

/// Every verdict.
const VERDICTS: [Verdict; 3] = [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive];

/// Check names kept per release (a spec has at most 8; renames add more); any beyond are
/// counted as `other`.
const CHECKS_PER_RELEASE: usize = 32;

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Completed => "Completed",
        Phase::Degraded => "Degraded",
        Phase::RolledBack => "RolledBack",
    }
}

fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "Pass",
        Verdict::Fail => "Fail",
        Verdict::Inconclusive => "Inconclusive",
    }
}

/// The role of the revision a pod serves, for the `revision` label: `target` when it serves
/// the target (also once the target is the stable revision), `stable` when it serves the
/// stable revision, `other` when it serves another revision or none.
pub fn revision_role(
    serving: Option<&str>,
    target: Option<&str>,
    stable: Option<&str>,
) -> &'static str {
    match serving {
        Some(s) if Some(s) == target => "target",
        Some(s) if Some(s) == stable => "stable",
        _ => "other",
    }
}

/// What the metrics remember of a release between plans.
#[derive(Debug, Default)]
struct Observed {
    /// The end of the newest analysis window counted.
    counted_until: Option<jiff::Timestamp>,
    /// Check names with series, to remove them with the release.
    checks: BTreeSet<String>,
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
    /// Revisions in sidecars' health reports, by outcome (recorded, refused, stale).
    pub health_reports: Family<HealthOutcomeLabel, Counter>,
    /// 1 for each release's current phase, 0 for its other phases.
    pub release_phase: Family<ReleasePhaseLabels, Gauge>,
    /// Each release's pods by the role of the revision they serve.
    pub release_pods: Family<ReleasePodsLabels, Gauge>,
    /// Each release's analysis windows, by check and that check's verdict.
    pub analysis_windows: Family<AnalysisWindowLabels, Counter>,
    /// Per release (namespace, name): what was counted already.
    observed: Mutex<HashMap<(String, String), Observed>>,
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
        let health_reports = Family::default();
        let release_phase = Family::default();
        let release_pods = Family::default();
        let analysis_windows = Family::default();
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
        registry.register(
            "health_reports",
            "Plugin revisions in sidecars' health reports, by outcome (recorded; refused: \
             failed its checks; stale: from a stream that no longer owns its pod)",
            health_reports.clone(),
        );
        registry.register(
            "release_phase",
            "1 for the release's current phase, 0 for the others",
            release_phase.clone(),
        );
        registry.register(
            "release_pods",
            "The release's pods by the revision they serve: target, stable or other",
            release_pods.clone(),
        );
        registry.register(
            "analysis_windows",
            "The release's analysis windows, by check and its verdict",
            analysis_windows.clone(),
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
            health_reports,
            release_phase,
            release_pods,
            analysis_windows,
            observed: Mutex::default(),
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

    /// Counts the revisions of one health report: `recorded` of them taken (or, when the
    /// stream no longer owns its pod, `stale`), `refused` failed their checks.
    pub fn health_reported(&self, recorded: usize, refused: usize, owns: bool) {
        let count = |outcome, n: usize| {
            if n > 0 {
                self.health_reports
                    .get_or_create(&HealthOutcomeLabel { outcome })
                    .inc_by(n as u64);
            }
        };
        count(if owns { "recorded" } else { "stale" }, recorded);
        count("refused", refused);
    }

    /// Updates release `namespace/name`'s series after a plan: its phase from `status`, its
    /// pods from `pods` (the planner's view of every pod it selects; pods another release
    /// owns are left out, as in `status.matched`), and the analysis windows in `status` not
    /// counted before. The first time a release is seen (the operator started, or took
    /// over), the windows already in its status are taken as counted: they were counted by
    /// the process that judged them.
    pub fn release_observed(
        &self,
        namespace: &str,
        name: &str,
        status: &PluginReleaseStatus,
        pods: &[PodView],
    ) {
        let labels = |phase| ReleasePhaseLabels {
            namespace: namespace.to_string(),
            release: name.to_string(),
            phase,
        };
        for phase in PHASES {
            let current = status.phase == Some(phase);
            self.release_phase
                .get_or_create(&labels(phase_label(phase)))
                .set(i64::from(current));
        }
        let (target, stable) = (
            status.target_revision.as_deref(),
            status.stable_revision.as_deref(),
        );
        let mut by_role = [0i64; ROLES.len()];
        for pod in pods.iter().filter(|p| p.conflict.is_none()) {
            let role = revision_role(pod.serving.as_deref(), target, stable);
            if let Some(i) = ROLES.iter().position(|r| *r == role) {
                by_role[i] += 1;
            }
        }
        for (role, n) in ROLES.into_iter().zip(by_role) {
            self.release_pods
                .get_or_create(&ReleasePodsLabels {
                    namespace: namespace.to_string(),
                    release: name.to_string(),
                    revision: role,
                })
                .set(n);
        }
        let windows = status
            .analysis
            .as_ref()
            .map(|a| a.windows.as_slice())
            .unwrap_or_default();
        let Ok(mut observed) = self.observed.lock() else {
            return;
        };
        let key = (namespace.to_string(), name.to_string());
        let first_sight = !observed.contains_key(&key);
        let seen = observed.entry(key).or_default();
        let newest = windows.iter().map(|w| w.end.0).max();
        if first_sight {
            seen.counted_until = newest;
            return;
        }
        let fresh: Vec<&AnalysisWindow> = windows
            .iter()
            .filter(|w| seen.counted_until.is_none_or(|until| w.end.0 > until))
            .collect();
        for window in fresh {
            for check in &window.checks {
                let check_name = if seen.checks.contains(&check.name)
                    || seen.checks.len() < CHECKS_PER_RELEASE
                {
                    seen.checks.insert(check.name.clone());
                    check.name.clone()
                } else {
                    seen.checks.insert("other".into());
                    "other".into()
                };
                self.analysis_windows
                    .get_or_create(&AnalysisWindowLabels {
                        namespace: namespace.to_string(),
                        release: name.to_string(),
                        check: check_name,
                        verdict: verdict_label(check.verdict),
                    })
                    .inc();
            }
        }
        if newest > seen.counted_until {
            seen.counted_until = newest;
        }
    }

    /// Removes every series of release `namespace/name` (it was deleted).
    pub fn release_deleted(&self, namespace: &str, name: &str) {
        let (ns, release) = (namespace.to_string(), name.to_string());
        for phase in PHASES {
            self.release_phase.remove(&ReleasePhaseLabels {
                namespace: ns.clone(),
                release: release.clone(),
                phase: phase_label(phase),
            });
        }
        for revision in ROLES {
            self.release_pods.remove(&ReleasePodsLabels {
                namespace: ns.clone(),
                release: release.clone(),
                revision,
            });
        }
        let seen = self
            .observed
            .lock()
            .ok()
            .and_then(|mut observed| observed.remove(&(ns.clone(), release.clone())));
        for check in seen.map(|s| s.checks).unwrap_or_default() {
            for verdict in VERDICTS {
                self.analysis_windows.remove(&AnalysisWindowLabels {
                    namespace: ns.clone(),
                    release: release.clone(),
                    check: check.clone(),
                    verdict: verdict_label(verdict),
                });
            }
        }
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

    fn pod(name: &str, serving: Option<&str>, conflict: bool) -> PodView {
        PodView {
            name: name.into(),
            connected: true,
            assigned: serving.map(Into::into),
            serving: serving.map(Into::into),
            state: AckState::Loaded,
            reason: None,
            since: jiff::Timestamp::UNIX_EPOCH,
            conflict: conflict.then(|| "shop/other".into()),
            workers: 1,
            workers_loaded: 1,
        }
    }

    fn window(end: i64, checks: &[(&str, Verdict)]) -> AnalysisWindow {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |s: i64| Time(jiff::Timestamp::from_second(1_800_000_000 + s).unwrap());
        AnalysisWindow {
            start: at(end - 10),
            end: at(end),
            verdict: Verdict::Pass,
            checks: checks
                .iter()
                .map(|(name, verdict)| crate::api::CheckResult {
                    name: (*name).into(),
                    verdict: *verdict,
                    value: None,
                    limit: None,
                    calls: None,
                    pods: None,
                    message: String::new(),
                })
                .collect(),
        }
    }

    fn status(phase: Phase, windows: Vec<AnalysisWindow>) -> PluginReleaseStatus {
        PluginReleaseStatus {
            phase: Some(phase),
            target_revision: Some("r2".into()),
            stable_revision: Some("r1".into()),
            analysis: Some(crate::api::AnalysisStatus {
                revision: "r2".into(),
                windows,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_are_labelled_by_the_role_of_their_revision() {
        assert_eq!(revision_role(Some("r2"), Some("r2"), Some("r1")), "target");
        assert_eq!(revision_role(Some("r1"), Some("r2"), Some("r1")), "stable");
        assert_eq!(revision_role(Some("r2"), Some("r2"), Some("r2")), "target");
        assert_eq!(revision_role(Some("r0"), Some("r2"), Some("r1")), "other");
        assert_eq!(revision_role(None, Some("r2"), Some("r1")), "other");
        assert_eq!(revision_role(None, None, None), "other");
    }

    #[test]
    fn a_release_exposes_its_phase_pods_and_analysis_verdicts() {
        let metrics = Metrics::default();
        let pods = [
            pod("web-1", Some("r2"), false),
            pod("web-2", Some("r1"), false),
            pod("web-3", Some("r1"), false),
            pod("web-4", None, false),
            pod("web-5", Some("r2"), true),
        ];
        // First sight (an operator that just started): windows already judged stay uncounted.
        let old = window(10, &[("errors", Verdict::Pass)]);
        metrics.release_observed(
            "shop",
            "auth",
            &status(Phase::Progressing, vec![old.clone()]),
            &pods,
        );
        let text = metrics.encode();
        for line in [
            "hotload_release_phase{namespace=\"shop\",release=\"auth\",phase=\"Progressing\"} 1",
            "hotload_release_phase{namespace=\"shop\",release=\"auth\",phase=\"Paused\"} 0",
            "hotload_release_phase{namespace=\"shop\",release=\"auth\",phase=\"RolledBack\"} 0",
            "hotload_release_pods{namespace=\"shop\",release=\"auth\",revision=\"target\"} 1",
            "hotload_release_pods{namespace=\"shop\",release=\"auth\",revision=\"stable\"} 2",
            "hotload_release_pods{namespace=\"shop\",release=\"auth\",revision=\"other\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("hotload_analysis_windows_total{"), "{text}");

        // Each new window counts once per check, however often the same status is seen.
        let fail = window(
            20,
            &[("errors", Verdict::Fail), ("p99", Verdict::Inconclusive)],
        );
        let newer = status(Phase::RolledBack, vec![fail, old]);
        metrics.release_observed("shop", "auth", &newer, &pods);
        metrics.release_observed("shop", "auth", &newer, &pods);
        let text = metrics.encode();
        for line in [
            "hotload_release_phase{namespace=\"shop\",release=\"auth\",phase=\"Progressing\"} 0",
            "hotload_release_phase{namespace=\"shop\",release=\"auth\",phase=\"RolledBack\"} 1",
            "hotload_analysis_windows_total{namespace=\"shop\",release=\"auth\",check=\"errors\",verdict=\"Fail\"} 1",
            "hotload_analysis_windows_total{namespace=\"shop\",release=\"auth\",check=\"p99\",verdict=\"Inconclusive\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("verdict=\"Pass\""),
            "the old window is not counted: {text}"
        );

        // Another release keeps its own series; a deleted one loses all of its.
        metrics.release_observed("shop", "geo", &status(Phase::Completed, Vec::new()), &[]);
        metrics.release_deleted("shop", "auth");
        let text = metrics.encode();
        assert!(!text.contains("release=\"auth\""), "{text}");
        assert!(
            text.contains(
                "hotload_release_phase{namespace=\"shop\",release=\"geo\",phase=\"Completed\"} 1"
            ),
            "{text}"
        );
        // Seen again after deletion (recreated), it starts afresh.
        metrics.release_observed("shop", "auth", &newer, &pods);
        assert!(
            !metrics
                .encode()
                .contains("hotload_analysis_windows_total{namespace=\"shop\",release=\"auth\"")
        );
    }

    #[test]
    fn check_names_per_release_are_bounded() {
        let metrics = Metrics::default();
        metrics.release_observed("shop", "auth", &status(Phase::Progressing, Vec::new()), &[]);
        for i in 0..CHECKS_PER_RELEASE as i64 + 10 {
            let name = format!("check-{i}");
            let w = window(10 + i, &[(name.as_str(), Verdict::Pass)]);
            metrics.release_observed("shop", "auth", &status(Phase::Progressing, vec![w]), &[]);
        }
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("hotload_analysis_windows_total{"))
            .count();
        assert_eq!(series, CHECKS_PER_RELEASE + 1, "{text}");
        assert!(
            text.contains("check=\"other\",verdict=\"Pass\"} 10"),
            "{text}"
        );
    }

    #[test]
    fn health_reports_count_by_outcome() {
        let metrics = Metrics::default();
        metrics.health_reported(2, 1, true);
        metrics.health_reported(3, 0, false);
        let text = metrics.encode();
        for line in [
            "hotload_health_reports_total{outcome=\"recorded\"} 2",
            "hotload_health_reports_total{outcome=\"refused\"} 1",
            "hotload_health_reports_total{outcome=\"stale\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
