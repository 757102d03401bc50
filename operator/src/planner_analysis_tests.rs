//! Rollouts judged by analysis: each test walks a fleet second by second, measuring every
//! window that falls due from what each pod serves, the way the controller does.

use std::time::Duration;

use hotload_protocol::{Counts, ErrorKind};
use serde_json::json;

use super::*;
use crate::analysis::{self, Measured, Measurement, REPORT_DELAY};
use crate::api::{AnalysisPhase, Verdict};

/// What one pod's calls in one window look like, per revision.
type Traffic = dyn Fn(&str) -> Counts;

fn calls(n: u64, fail_every: u64) -> Counts {
    let mut c = Counts::default();
    for i in 1..=n {
        let error = (fail_every > 0 && i % fail_every == 0).then_some(ErrorKind::Trap);
        c.record(Duration::from_millis(1), error);
    }
    c
}

fn analyzed(mut spec: PluginReleaseSpec, analysis: serde_json::Value) -> PluginReleaseSpec {
    spec.analysis = Some(serde_json::from_value(analysis).unwrap());
    spec
}

fn error_rate() -> serde_json::Value {
    json!({"interval": "10s", "minCalls": 50, "checks": [{"name": "errors", "errorRate": {"max": "1%"}}]})
}

/// The window that is due now, measured from what each pod serves.
fn measure(fleet: &Fleet, traffic: &Traffic) -> Option<Measured> {
    let spec = fleet.spec.analysis.as_ref()?;
    let span = analysis::due(spec, fleet.status.analysis.as_ref()?, t(fleet.now))?;
    let target = fleet.status.target_revision.clone()?;
    let stable = fleet.status.stable_revision.clone();
    let (mut on_target, mut pods, mut on_stable) = (Counts::default(), 0, Counts::default());
    for serving in fleet.pods.iter().filter_map(|p| p.serving.as_deref()) {
        if serving == target {
            on_target.merge(&traffic(serving));
            pods += 1;
        } else if Some(serving) == stable.as_deref() {
            on_stable.merge(&traffic(serving));
        }
    }
    let health = Measurement::Health {
        target: on_target,
        target_pods: pods,
        stable: on_stable,
    };
    Some(Measured {
        revision: target,
        start: span.start,
        end: span.end,
        checks: spec.checks.iter().map(|_| health.clone()).collect(),
    })
}

/// Runs `seconds` seconds: plan (with the window due, if any), pods load, the clock ticks.
/// Returns the notes, and the most pods that served `watch` at once.
fn run(fleet: &mut Fleet, seconds: i64, traffic: &Traffic, watch: &str) -> (Vec<Note>, usize) {
    let (mut notes, mut most) = (Vec::new(), 0);
    for _ in 0..seconds {
        let measured = measure(fleet, traffic);
        notes.extend(fleet.plan_with(measured.as_ref()).notes);
        fleet.load_all();
        most = most.max(fleet.on(watch));
        fleet.now += 1;
    }
    (notes, most)
}

fn canary(digest: &str) -> PluginReleaseSpec {
    let strategy = json!({"maxUnavailable": "100%", "steps": [{"percent": 20}, {"percent": 100}]});
    spec(digest, strategy)
}

#[test]
fn a_plugin_that_fails_one_call_in_five_is_rolled_back_during_the_canary_step() {
    let mut fleet = Fleet::stable(10, canary(OLD));
    fleet.apply(analyzed(canary(NEW), error_rate()));
    let (old, new) = (rev(OLD), rev(NEW));
    let flaky = |r: &str| calls(100, if r == rev(NEW) { 5 } else { 0 });

    let (notes, most) = run(&mut fleet, 40, &flaky, &new);

    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(most, 2, "only the 20% canary ever ran the target");
    assert_eq!(
        fleet.on(&old),
        10,
        "every pod serves the stable revision again"
    );
    let message = fleet.status.message.clone().unwrap();
    assert!(
        message.starts_with(&format!(
            "revision {new} failed analysis: check errors: error rate 20.0% > 1% over 200 calls on 2 pods"
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("rolling back to {old}")),
        "{message}"
    );
    let record = &fleet.status.history[0];
    assert_eq!(record.outcome, Outcome::RolledBack);
    assert!(
        record
            .reason
            .as_deref()
            .unwrap()
            .contains("error rate 20.0%")
    );
    let analysis = fleet.status.analysis.as_ref().unwrap();
    assert_eq!(analysis.phase, AnalysisPhase::Failed);
    let window = &analysis.windows[0];
    assert_eq!(window.verdict, Verdict::Fail);
    assert_eq!(window.checks[0].value.as_deref(), Some("20.0%"));
    assert_eq!(
        (window.checks[0].calls, window.checks[0].pods),
        (Some(200), Some(2))
    );
    let rolled_back = notes.iter().find(|n| n.reason == "RolledBack").unwrap();
    assert!(rolled_back.warning && rolled_back.message.contains("over 200 calls on 2 pods"));
}

#[test]
fn a_healthy_revision_completes_and_analysis_adds_at_most_its_passing_windows() {
    let mut fleet = Fleet::stable(10, canary(OLD));
    fleet.apply(analyzed(canary(NEW), error_rate()));
    let new = rev(NEW);
    let healthy = |_: &str| calls(100, 0);

    // Without analysis the same rollout finishes within a few plans; with it, each of the
    // two steps waits one window (10 s) plus the reports' delay once its pods are updated.
    let mut waited = Vec::new();
    let mut updated_since = None;
    for _ in 0..60 {
        let measured = measure(&fleet, &healthy);
        fleet.plan_with(measured.as_ref());
        fleet.load_all();
        let goal = step_goal(
            &fleet.spec,
            usize::try_from(fleet.status.current_step.unwrap_or(0)).unwrap(),
            10,
        );
        if fleet.on(&new) >= goal && updated_since.is_none() {
            updated_since = Some((fleet.status.current_step, fleet.now));
        }
        if let Some((step, since)) = updated_since
            && (fleet.status.current_step != step || fleet.status.phase == Some(Phase::Completed))
        {
            waited.push(fleet.now - since);
            updated_since = None;
        }
        if fleet.status.phase == Some(Phase::Completed) {
            break;
        }
        fleet.now += 1;
    }
    assert_eq!(
        fleet.status.phase,
        Some(Phase::Completed),
        "{:?}",
        fleet.status.message
    );
    assert_eq!(fleet.on(&new), 10);
    let most = i64::try_from((Duration::from_secs(10) + REPORT_DELAY).as_secs()).unwrap() + 1;
    assert_eq!(waited.len(), 2, "{waited:?}");
    assert!(waited.iter().all(|w| *w <= most), "{waited:?}");
    let analysis = fleet.status.analysis.as_ref().unwrap();
    assert_eq!(analysis.phase, AnalysisPhase::Passed);
    assert!(analysis.windows.iter().all(|w| w.verdict == Verdict::Pass));
}

#[test]
fn without_traffic_the_rollout_holds_as_inconclusive_and_completes_once_traffic_comes() {
    let mut fleet = Fleet::stable(4, spec(OLD, json!({"maxUnavailable": "100%"})));
    fleet.apply(analyzed(
        spec(NEW, json!({"maxUnavailable": "100%"})),
        error_rate(),
    ));
    let new = rev(NEW);
    let idle = |_: &str| Counts::default();

    let (notes, _) = run(&mut fleet, 30, &idle, &new);
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
    assert_eq!(
        fleet.on(&new),
        4,
        "every pod runs it; only the verdict is missing"
    );
    let message = fleet.status.message.clone().unwrap();
    assert_eq!(
        message,
        "analysis inconclusive, holding: check errors: too little traffic: 0 calls on 4 pods < minCalls 50"
    );
    assert_eq!(
        fleet.condition("Ready"),
        ("False".into(), "AnalysisInconclusive".into())
    );
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.reason == "AnalysisInconclusive")
            .count(),
        1,
        "one event when the hold begins, not one per window"
    );
    assert_ne!(fleet.status.stable_revision.as_deref(), Some(new.as_str()));

    let busy = |_: &str| calls(100, 0);
    run(&mut fleet, 15, &busy, &new);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.status.stable_revision.as_deref(), Some(new.as_str()));
}

#[test]
fn the_progress_deadline_runs_through_an_inconclusive_hold_and_can_roll_back() {
    let strategy = json!({"maxUnavailable": "100%"});
    let mut fleet = Fleet::stable(3, spec(OLD, strategy.clone()));
    let mut held = analyzed(spec(NEW, strategy), error_rate());
    held.progress_deadline_seconds = 30;
    fleet.apply(held.clone());
    let idle = |_: &str| Counts::default();
    run(&mut fleet, 40, &idle, &rev(NEW));
    assert_eq!(fleet.status.phase, Some(Phase::Degraded));
    let message = fleet.status.message.clone().unwrap();
    assert!(message.contains("made no progress"), "{message}");
    assert!(message.contains("too little traffic"), "{message}");
    assert_eq!(fleet.on(&rev(NEW)), 3, "Degraded alone rolls nothing back");

    let mut fleet = Fleet::stable(3, spec(OLD, json!({"maxUnavailable": "100%"})));
    held.progress_deadline_abort = true;
    fleet.apply(held);
    run(&mut fleet, 40, &idle, &rev(NEW));
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(fleet.on(&rev(OLD)), 3);
    assert!(
        fleet.status.history[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("made no progress")
    );
}

#[test]
fn failing_windows_within_the_failure_limit_only_warn_and_a_retry_starts_afresh() {
    let mut fleet = Fleet::stable(5, spec(OLD, json!({"maxUnavailable": "100%"})));
    let mut lenient = error_rate();
    lenient["failureLimit"] = json!(1);
    lenient["passingWindows"] = json!(2);
    fleet.apply(analyzed(
        spec(NEW, json!({"maxUnavailable": "100%"})),
        lenient,
    ));
    let new = rev(NEW);
    let flaky = |r: &str| calls(100, if r == rev(NEW) { 5 } else { 0 });

    let (notes, _) = run(&mut fleet, 14, &flaky, &new);
    assert!(
        notes
            .iter()
            .any(|n| n.reason == "AnalysisWindowFailed" && n.warning)
    );
    assert_eq!(fleet.status.phase, Some(Phase::Progressing));
    run(&mut fleet, 10, &flaky, &new);
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));

    fleet
        .annotations
        .insert(RETRY_ANNOTATION.into(), "1".into());
    fleet.plan();
    let analysis = fleet.status.analysis.as_ref().unwrap();
    assert_eq!(
        (analysis.phase, analysis.failing, analysis.windows.len()),
        (AnalysisPhase::Running, 0, 0),
        "a retry is judged afresh"
    );
}
