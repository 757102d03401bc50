//! `kubectl hotload`: what it shows and what it asks for, decided without I/O. The binary
//! (`src/bin/kubectl-hotload.rs`) reads and writes only through the API server.
//!
//! - views: [`status_view`] (header, progress bars, first failure, the analysis, per-pod
//!   table), [`analysis_view`], [`pods_view`], [`history_view`];
//! - requests: [`Request`] → the merge patch that carries it ([`Request::patch`]). Pause and
//!   resume flip `spec.paused` (as `kubectl argo rollouts pause` does); resume also
//!   releases a canary pause step; retry and abort are annotations the planner acts on once
//!   per new value.

use std::borrow::Cow;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::{AckState, AnalysisPhase, Phase, PluginRelease, PodAck};
use crate::planner::{ABORT_ANNOTATION, RESUME_ANNOTATION, RETRY_ANNOTATION, step_goal};

/// A change asked of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop giving the target to more pods.
    Pause,
    /// Undo a pause, or release a canary pause step.
    Resume,
    /// Try a rolled-back or failed revision again.
    Retry,
    /// Stop the rollout and send every touched pod back to the stable revision.
    Abort,
}

impl Request {
    /// The merge patch for `release`; `token` makes annotation requests new (a timestamp).
    pub fn patch(self, release: &PluginRelease, token: &str) -> Result<Value, String> {
        let name = crate::api::describe(release);
        let phase = release.status.as_ref().and_then(|s| s.phase);
        match self {
            Request::Pause => Ok(json!({"spec": {"paused": true}})),
            Request::Resume if release.spec.paused => Ok(json!({"spec": {"paused": false}})),
            Request::Resume if phase == Some(Phase::Paused) => {
                Ok(json!({"metadata": {"annotations": {RESUME_ANNOTATION: token}}}))
            }
            Request::Resume => Err(format!(
                "{name} is not paused (phase {})",
                phase_name(phase)
            )),
            Request::Retry => match phase {
                Some(Phase::RolledBack | Phase::Degraded) => {
                    Ok(json!({"metadata": {"annotations": {RETRY_ANNOTATION: token}}}))
                }
                _ => Err(format!(
                    "{name} has nothing to retry (phase {}); retry follows a rollback or a failure",
                    phase_name(phase)
                )),
            },
            Request::Abort => match phase {
                Some(Phase::Progressing | Phase::Paused | Phase::Degraded) => {
                    Ok(json!({"metadata": {"annotations": {ABORT_ANNOTATION: token}}}))
                }
                _ => Err(format!(
                    "{name} has no rollout under way (phase {}); to go back to an older \
                     revision, apply its artifact again",
                    phase_name(phase)
                )),
            },
        }
    }
}

fn phase_name(phase: Option<Phase>) -> String {
    phase.map_or_else(|| "none yet".into(), |p| format!("{p:?}"))
}

/// Whether a watch can stop: the operator has seen the spec and the rollout has ended (or
/// waits for a person). A rollback has ended only once no pod is still on its way back
/// (kstatus `Reconciling` is no longer True).
pub fn settled(release: &PluginRelease) -> bool {
    let Some(status) = &release.status else {
        return false;
    };
    let reconciling = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Reconciling" && c.status == "True");
    status.observed_generation == release.metadata.generation
        && match status.phase {
            Some(Phase::RolledBack) => !reconciling,
            Some(Phase::Completed | Phase::Degraded | Phase::Paused) => true,
            _ => false,
        }
}

/// `[#####.....]` for `done` of `total`, `width` cells wide.
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done.min(total) * width).div_ceil(total).min(width)
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn short(revision: &str) -> Cow<'_, str> {
    safe(revision.get(..12).unwrap_or(revision))
}

/// Text from the release (written by people, sidecars, the operator) as it may reach a
/// terminal: control characters and direction overrides escaped, so a reason cannot move
/// the cursor, retitle the window or fake a line.
fn safe(text: &str) -> Cow<'_, str> {
    crate::api::escape_controls(text)
}

fn ago(since: Timestamp, now: Timestamp) -> String {
    let seconds = (now - since).get_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The full status view: what `kubectl hotload status` prints (and redraws with --watch).
pub fn status_view(release: &PluginRelease, now: Timestamp) -> String {
    let mut out = String::new();
    let name = crate::api::describe(release);
    let generation = release.metadata.generation.unwrap_or_default();
    let Some(status) = &release.status else {
        return format!("PluginRelease {name}: no status yet (is the operator running?)\n");
    };
    let spec = &release.spec;
    let observed = status.observed_generation.unwrap_or_default();
    out.push_str(&format!(
        "PluginRelease {name}  plugin {}\n",
        safe(&spec.plugin)
    ));
    out.push_str(&format!(
        "Phase:     {}{}\n",
        phase_name(status.phase),
        if observed < generation {
            format!(
                "  (operator has not seen generation {generation} yet; status is for {observed})"
            )
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "Revision:  {} (stable {})\n",
        status.target_revision.as_deref().map_or("-".into(), short),
        status
            .stable_revision
            .as_deref()
            .map_or("none".into(), short)
    ));
    out.push_str(&format!(
        "Artifact:  {} {}\n",
        safe(&spec.artifact.url),
        safe(&spec.artifact.digest)
    ));
    let matched = usize::try_from(status.matched).unwrap_or(0);
    let updated = usize::try_from(status.updated).unwrap_or(0);
    if let Some(step) = status.current_step {
        let step = usize::try_from(step).unwrap_or(0);
        let steps = spec.strategy.steps.len();
        let goal = step_goal(spec, step, matched);
        out.push_str(&format!(
            "Step:      {} {}/{} pods  (step {} of {})\n",
            bar(updated.min(goal), goal, 20),
            updated.min(goal),
            goal,
            (step + 1).min(steps),
            steps
        ));
    }
    out.push_str(&format!(
        "Rollout:   {} {updated}/{matched} updated  {} ready  {} failed  {} unreachable\n",
        bar(updated, matched, 20),
        status.ready,
        status.failed,
        status.unreachable
    ));
    if spec.paused {
        out.push_str("Paused:    spec.paused is true (kubectl hotload resume)\n");
    }
    if let Some(first) = status
        .pods
        .iter()
        .find(|p| p.state == AckState::Failed && p.reason.is_some())
    {
        out.push_str(&format!(
            "Failure:   pod {}: {}\n",
            safe(&first.pod),
            safe(first.reason.as_deref().unwrap_or_default())
        ));
    }
    if let Some(message) = &status.message {
        out.push_str(&format!("Message:   {}\n", safe(message)));
    }
    out.push_str(&analysis_view(release, now));
    out.push('\n');
    out.push_str(&pods_view(release, now));
    out
}

/// How the analysis stands: its phase, passing and failing windows against what the spec
/// asks, and the last windows judged, one row per check (newest first). Empty when the
/// release has no analysis.
pub fn analysis_view(release: &PluginRelease, now: Timestamp) -> String {
    let spec = release.spec.analysis.as_ref();
    let Some(status) = release.status.as_ref().and_then(|s| s.analysis.as_ref()) else {
        return match spec {
            Some(_) => "Analysis:  not started (no pod runs the target yet)\n".into(),
            None => String::new(),
        };
    };
    let phase = match status.phase {
        AnalysisPhase::Running => "Running",
        AnalysisPhase::Inconclusive => "Inconclusive",
        AnalysisPhase::Failed => "Failed",
        AnalysisPhase::Passed => "Passed",
    };
    let needed = spec.map_or(String::new(), |a| format!("/{}", a.passing_windows));
    let limit = spec.map_or(String::new(), |a| {
        format!(" (failureLimit {})", a.failure_limit)
    });
    let mut out = format!(
        "Analysis:  {phase}  revision {}  passing {}{needed}  failing {}{limit}{}\n",
        short(&status.revision),
        status.passing,
        status.failing,
        status.step.map_or(String::new(), |step| format!(
            "  step {}",
            i64::from(step) + 1
        )),
    );
    let rows: Vec<[String; 8]> = status
        .windows
        .iter()
        .flat_map(|window| {
            let ended = ago(window.end.0, now);
            window.checks.iter().map(move |check| {
                [
                    ended.clone(),
                    safe(&check.name).into_owned(),
                    format!("{:?}", check.verdict),
                    safe(check.value.as_deref().unwrap_or("-")).into_owned(),
                    safe(check.limit.as_deref().unwrap_or("-")).into_owned(),
                    check.calls.map_or("-".into(), |c| c.to_string()),
                    check.pods.map_or("-".into(), |p| p.to_string()),
                    safe(&check.message).into_owned(),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        out.push_str("           no window judged yet\n");
        return out;
    }
    const HEADER: [&str; 8] = [
        "ENDED", "CHECK", "VERDICT", "VALUE", "LIMIT", "CALLS", "PODS", "MESSAGE",
    ];
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut text = String::from("  ");
        for (i, cell) in cells.iter().enumerate() {
            let width = widths[i];
            // Numbers and times right-aligned, words left; the message runs to the end.
            match i {
                7 => text.push_str(cell),
                0 | 5 | 6 => text.push_str(&format!("{cell:>width$}  ")),
                _ => text.push_str(&format!("{cell:<width$}  ")),
            }
        }
        format!("{}\n", text.trim_end())
    };
    out.push_str(&line(HEADER));
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// A pod's workers as `loaded/connected` (`4/4`), or `-` when its sidecar counts none.
fn workers(pod: &PodAck) -> String {
    match (pod.workers, pod.workers_loaded) {
        (Some(workers), loaded) if workers > 0 => format!("{}/{workers}", loaded.unwrap_or(0)),
        _ => "-".into(),
    }
}

/// The per-pod table.
pub fn pods_view(release: &PluginRelease, now: Timestamp) -> String {
    let pods = release
        .status
        .as_ref()
        .map(|s| s.pods.as_slice())
        .unwrap_or_default();
    if pods.is_empty() {
        return "No pods reported.\n".into();
    }
    let width = pods
        .iter()
        .map(|p| safe(&p.pod).len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!(
        "{:<width$}  {:<12}  {:<11}  {:>7}  {:>5}  REASON\n",
        "POD", "REVISION", "STATE", "WORKERS", "SINCE"
    );
    for pod in pods {
        out.push_str(
            format!(
                "{:<width$}  {:<12}  {:<11}  {:>7}  {:>5}  {}",
                safe(&pod.pod),
                if pod.revision.is_empty() {
                    "(none)".into()
                } else {
                    short(&pod.revision)
                },
                format!("{:?}", pod.state),
                workers(pod),
                ago(pod.since.0, now),
                safe(pod.reason.as_deref().unwrap_or_default())
            )
            .trim_end(),
        );
        out.push('\n');
    }
    out
}

/// The revision history, newest first.
pub fn history_view(release: &PluginRelease) -> String {
    let history = release
        .status
        .as_ref()
        .map(|s| s.history.as_slice())
        .unwrap_or_default();
    if history.is_empty() {
        return "No revisions yet.\n".into();
    }
    let mut out = format!(
        "{:<12}  {:<20}  {:<11}  {}\n",
        "REVISION", "STARTED", "OUTCOME", "ARTIFACT / REASON"
    );
    for record in history {
        let started = record
            .started_at
            .0
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        out.push_str(&format!(
            "{:<12}  {:<20}  {:<11}  {}@{}",
            short(&record.revision),
            started,
            format!("{:?}", record.outcome),
            safe(&record.url),
            safe(record.digest.get(..19).unwrap_or(&record.digest))
        ));
        if let Some(reason) = &record.reason {
            out.push_str(&format!("  {}", safe(reason)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(status: Value, paused: bool) -> PluginRelease {
        serde_json::from_value(json!({
            "apiVersion": "hotload.dev/v1alpha1", "kind": "PluginRelease",
            "metadata": {"name": "auth", "namespace": "shop", "generation": 3},
            "spec": {"plugin": "auth-filter", "selector": {"matchLabels": {"app": "web"}},
                     "paused": paused,
                     "artifact": {"url": "https://plugins/auth.wasm",
                                  "digest": format!("sha256:{}", "a".repeat(64))},
                     "strategy": {"maxUnavailable": 1, "steps": [{"percent": 40, "pause": {}}]}},
            "status": status,
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-23T12:01:00Z".parse().unwrap()
    }

    fn progressing() -> Value {
        json!({
            "observedGeneration": 3, "phase": "Progressing", "currentStep": 0,
            "targetRevision": "1234567890abcdef", "stableRevision": "fedcba0987654321",
            "matched": 5, "updated": 1, "ready": 4, "failed": 1, "unreachable": 0,
            "message": "pod web-2 failed to load revision 1234567890abcdef: digest mismatch",
            "pods": [
                {"pod": "web-2", "revision": "1234567890abcdef", "state": "Failed",
                 "reason": "digest mismatch: expected sha256:aa…", "since": "2026-11-23T12:00:30Z"},
                {"pod": "web-1", "revision": "1234567890abcdef", "state": "Loaded",
                 "since": "2026-11-23T12:00:00Z", "workers": 4, "workersLoaded": 4},
            ],
            "history": [{"revision": "1234567890abcdef", "url": "https://plugins/auth.wasm",
                         "digest": format!("sha256:{}", "a".repeat(64)),
                         "startedAt": "2026-11-23T12:00:00Z", "outcome": "Progressing"}],
        })
    }

    #[test]
    fn status_view_shows_bars_first_failure_and_pods() {
        let view = status_view(&release(progressing(), false), now());
        assert!(
            view.contains("PluginRelease shop/auth  plugin auth-filter"),
            "{view}"
        );
        assert!(view.contains("Phase:     Progressing\n"), "{view}");
        assert!(
            view.contains("Revision:  1234567890ab (stable fedcba098765)"),
            "{view}"
        );
        // 40% of 5 pods is a step goal of 2; one is there.
        assert!(
            view.contains("Step:      [##########..........] 1/2 pods  (step 1 of 1)"),
            "{view}"
        );
        assert!(
            view.contains("Rollout:   [####................] 1/5 updated  4 ready  1 failed"),
            "{view}"
        );
        assert!(
            view.contains("Failure:   pod web-2: digest mismatch"),
            "{view}"
        );
        assert!(
            view.contains("POD    REVISION      STATE        WORKERS  SINCE  REASON\n"),
            "{view}"
        );
        assert!(
            view.contains("web-2  1234567890ab  Failed             -    30s  digest mismatch"),
            "{view}"
        );
        assert!(
            view.contains("web-1  1234567890ab  Loaded           4/4    60s\n"),
            "{view}"
        );
    }

    #[test]
    fn pods_view_shows_workers_loaded_of_connected() {
        let mut status = progressing();
        status["pods"] = json!([
            {"pod": "web-1", "revision": "1234567890abcdef", "state": "Loading",
             "since": "2026-11-23T12:00:50Z", "workers": 4, "workersLoaded": 3},
            {"pod": "web-2", "revision": "1234567890abcdef", "state": "Pending",
             "since": "2026-11-23T12:00:50Z", "workers": 0, "workersLoaded": 0},
        ]);
        let view = pods_view(&release(status, false), now());
        assert!(
            view.contains("web-1  1234567890ab  Loading          3/4    10s"),
            "{view}"
        );
        assert!(
            view.contains("web-2  1234567890ab  Pending            -    10s"),
            "{view}"
        );
    }

    #[test]
    fn status_view_says_when_the_operator_lags_or_is_absent() {
        let mut lagging = progressing();
        lagging["observedGeneration"] = json!(2);
        let view = status_view(&release(lagging, false), now());
        assert!(view.contains("has not seen generation 3 yet"), "{view}");
        let mut none = release(json!(null), false);
        none.status = None;
        assert!(status_view(&none, now()).contains("no status yet"));
    }

    #[test]
    fn history_lists_revisions_with_outcome() {
        let view = history_view(&release(progressing(), false));
        assert!(view.starts_with("REVISION"), "{view}");
        assert!(view.contains("1234567890ab  2026-11-23T12:00:00Z  Progressing  https://plugins/auth.wasm@sha256:aaaaaaaaaaaa"), "{view}");
    }

    #[test]
    fn requests_become_patches_or_say_why_not() {
        let running = release(progressing(), false);
        assert_eq!(
            Request::Pause.patch(&running, "t").unwrap(),
            json!({"spec": {"paused": true}})
        );
        assert_eq!(
            Request::Abort.patch(&running, "t1").unwrap(),
            json!({"metadata": {"annotations": {"hotload.dev/abort": "t1"}}})
        );
        let err = Request::Retry.patch(&running, "t").unwrap_err();
        assert!(
            err.contains("shop/auth has nothing to retry (phase Progressing)"),
            "{err}"
        );
        let err = Request::Resume.patch(&running, "t").unwrap_err();
        assert_eq!(err, "shop/auth is not paused (phase Progressing)");

        let paused = release(progressing(), true);
        assert_eq!(
            Request::Resume.patch(&paused, "t").unwrap(),
            json!({"spec": {"paused": false}})
        );
        let mut held = progressing();
        held["phase"] = json!("Paused");
        assert_eq!(
            Request::Resume.patch(&release(held, false), "t2").unwrap(),
            json!({"metadata": {"annotations": {"hotload.dev/resume": "t2"}}})
        );
        let mut rolled = progressing();
        rolled["phase"] = json!("RolledBack");
        let rolled = release(rolled, false);
        assert!(Request::Retry.patch(&rolled, "t").is_ok());
        assert!(
            Request::Abort
                .patch(&rolled, "t")
                .unwrap_err()
                .contains("no rollout under way")
        );
    }

    #[test]
    fn settled_means_observed_and_finished_or_waiting() {
        let mut done = progressing();
        done["phase"] = json!("Completed");
        assert!(settled(&release(done.clone(), false)));
        done["observedGeneration"] = json!(2);
        assert!(!settled(&release(done, false)));
        assert!(!settled(&release(progressing(), false)));
        let mut rolling_back = progressing();
        rolling_back["phase"] = json!("RolledBack");
        let condition = |status: &str| {
            json!([{"type": "Reconciling", "status": status, "reason": "RollingBack",
                    "message": "", "lastTransitionTime": "2026-11-23T12:00:00Z"}])
        };
        rolling_back["conditions"] = condition("True");
        assert!(
            !settled(&release(rolling_back.clone(), false)),
            "pods still on their way back"
        );
        rolling_back["conditions"] = condition("False");
        assert!(settled(&release(rolling_back, false)));
    }

    #[test]
    fn control_characters_from_the_status_never_reach_the_terminal() {
        let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}\rok\nFailure:   none\u{202e}";
        let mut status = progressing();
        status["message"] = json!(evil);
        status["pods"][0]["reason"] = json!(evil);
        status["pods"][0]["pod"] = json!(format!("web-2{evil}"));
        status["history"][0]["reason"] = json!(evil);
        status["history"][0]["url"] = json!(format!("https://x/{evil}"));
        let release = release(status, false);
        for view in [
            status_view(&release, now()),
            pods_view(&release, now()),
            history_view(&release),
        ] {
            assert!(
                !view
                    .chars()
                    .any(|c| c != '\n' && c.is_control() || c == '\u{202e}'),
                "{view:?}"
            );
            assert!(
                view.contains(r"\u{1b}[2J\u{1b}]0;pwned\u{7}\rok\nFailure:"),
                "{view}"
            );
            assert_eq!(
                view.lines()
                    .filter(|l| l.starts_with("Failure:   none"))
                    .count(),
                0,
                "no line can be faked"
            );
        }
    }

    #[test]
    fn bars_fill_proportionally() {
        assert_eq!(bar(0, 5, 10), "[..........]");
        assert_eq!(bar(5, 5, 10), "[##########]");
        assert_eq!(bar(1, 3, 6), "[##....]");
        assert_eq!(bar(0, 0, 4), "[....]");
    }

    fn analysed() -> PluginRelease {
        let mut status = progressing();
        status["phase"] = json!("Paused");
        status["message"] = json!("analysis inconclusive: 3 calls < minCalls 20");
        let check = |name: &str,
                     verdict: &str,
                     value: &str,
                     limit: &str,
                     calls: i64,
                     pods: i32,
                     message: &str| {
            json!({"name": name, "verdict": verdict, "value": value, "limit": limit,
                   "calls": calls, "pods": pods, "message": message})
        };
        status["analysis"] = json!({
            "revision": "1234567890abcdef", "phase": "Failed", "step": 0,
            "passing": 0, "failing": 1,
            "windows": [
                {"start": "2026-11-23T12:00:40Z", "end": "2026-11-23T12:00:50Z", "verdict": "Fail",
                 "checks": [
                    check("errors", "Fail", "19.8%", "<= 1%", 412, 1,
                          "error rate 19.8% > 1% over 412 calls on 1 canary pod in 10s"),
                    check("p99", "Pass", "4.1ms", "<= 2x stable (3.9ms)", 412, 1, "p99 4.1ms"),
                 ]},
                {"start": "2026-11-23T12:00:30Z", "end": "2026-11-23T12:00:40Z", "verdict": "Inconclusive",
                 "checks": [
                    {"name": "gate", "verdict": "Inconclusive", "message": "no answer in 10s"},
                 ]},
            ],
        });
        let mut release = release(status, false);
        release.spec.analysis = serde_json::from_value(json!({
            "interval": "10s", "minCalls": 20, "failureLimit": 0, "passingWindows": 2,
            "checks": [{"name": "errors", "errorRate": {"max": "1%"}}],
        }))
        .unwrap();
        release
    }

    #[test]
    fn status_view_shows_the_analysis_and_its_last_windows() {
        let view = status_view(&analysed(), now());
        let want = "\
Analysis:  Failed  revision 1234567890ab  passing 0/2  failing 1 (failureLimit 0)  step 1
  ENDED  CHECK   VERDICT       VALUE  LIMIT                 CALLS  PODS  MESSAGE
    10s  errors  Fail          19.8%  <= 1%                   412     1  error rate 19.8% > 1% over 412 calls on 1 canary pod in 10s
    10s  p99     Pass          4.1ms  <= 2x stable (3.9ms)    412     1  p99 4.1ms
    20s  gate    Inconclusive  -      -                         -     -  no answer in 10s
";
        assert!(view.contains(want), "{view}");
        // Between the message and the pod table.
        let (analysis, pods) = (view.find("Analysis:").unwrap(), view.find("POD ").unwrap());
        assert!(
            view.find("Message:").unwrap() < analysis && analysis < pods,
            "{view}"
        );
    }

    #[test]
    fn analysis_view_says_when_nothing_is_judged_yet() {
        let mut release = analysed();
        release
            .status
            .as_mut()
            .unwrap()
            .analysis
            .as_mut()
            .unwrap()
            .windows
            .clear();
        assert!(analysis_view(&release, now()).ends_with("no window judged yet\n"));
        release.status.as_mut().unwrap().analysis = None;
        assert_eq!(
            analysis_view(&release, now()),
            "Analysis:  not started (no pod runs the target yet)\n"
        );
        release.spec.analysis = None;
        assert_eq!(analysis_view(&release, now()), "");
        assert!(!status_view(&release, now()).contains("Analysis:"));
    }

    #[test]
    fn analysis_text_from_the_status_is_escaped() {
        let mut release = analysed();
        let evil = "\u{1b}[2Jgone\nFailure:   none";
        let analysis = release.status.as_mut().unwrap().analysis.as_mut().unwrap();
        analysis.windows[0].checks[0].message = evil.into();
        analysis.windows[0].checks[0].name = evil.into();
        analysis.windows[0].checks[0].value = Some(evil.into());
        let view = analysis_view(&release, now());
        assert!(
            !view.chars().any(|c| c != '\n' && c.is_control()),
            "{view:?}"
        );
        assert!(view.contains(r"\u{1b}[2Jgone\nFailure:"), "{view}");
        assert!(!view.lines().any(|l| l.starts_with("Failure:")), "{view}");
    }
}
