//! The planner's side of analysis: keeps `status.analysis` on the target revision, records
//! each measured window (and says when one fails the rollout), and gates steps and
//! completion on passing windows. The judging itself is in [`crate::analysis`].

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Input, Note, Tally, given_up};
use crate::analysis::{self, Context, Outcome};
use crate::api::{AnalysisPhase, Phase, PluginReleaseStatus};

/// `status.analysis` follows the spec: none without `spec.analysis`; a fresh analysis for a
/// target it does not describe (a new target or a retry cleared it); kept otherwise.
pub(super) fn sync_analysis(input: &Input<'_>, status: &mut PluginReleaseStatus, target: &str) {
    if input.spec.analysis.is_none() {
        status.analysis = None;
        return;
    }
    let current = status.analysis.as_ref().map(|a| a.revision.as_str());
    let finished = status.stable_revision.as_deref() == Some(target);
    if current != Some(target) && !finished {
        status.analysis = Some(analysis::start(target, None, input.now));
    }
}

/// Records the measured window, if it is the one in progress: events for a failing or
/// newly inconclusive window; a passing one counts as progress. Returns the cause when the
/// window failed beyond failureLimit: the failure policy acts on it.
pub(super) fn record_window(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    tally: &Tally<'_>,
    notes: &mut Vec<Note>,
) -> Option<String> {
    let (Some(spec), Some(measured)) = (&input.spec.analysis, input.measured) else {
        return None;
    };
    if given_up(status, target) {
        return None;
    }
    let stable = status.stable_revision.clone();
    let stable_serving = stable.is_some()
        && tally
            .eligible
            .iter()
            .any(|p| p.serving.is_some() && p.serving == stable);
    let analysis = status.analysis.as_mut()?;
    let was_inconclusive = analysis.phase == AnalysisPhase::Inconclusive;
    let baselines = analysis.baselines.clone();
    let context = Context {
        stable_exists: stable.is_some() && stable.as_deref() != Some(target),
        stable_serving,
        baselines: &baselines,
    };
    match analysis::record(spec, analysis, measured, context) {
        Outcome::Nothing => None,
        Outcome::Passed => {
            status.last_progress_at = Some(Time(input.now));
            None
        }
        Outcome::Inconclusive(why) => {
            if !was_inconclusive {
                notes.push(Note {
                    warning: false,
                    reason: "AnalysisInconclusive",
                    message: format!("revision {target}: {why}"),
                });
            }
            None
        }
        Outcome::Failed(why) => {
            notes.push(Note {
                warning: true,
                reason: "AnalysisWindowFailed",
                message: format!(
                    "revision {target}: {why} ({} of {} failing windows tolerated)",
                    analysis.failing, spec.failure_limit
                ),
            });
            None
        }
        Outcome::Exhausted(why) => Some(why),
    }
}

/// Whether the gate of `gate` (a step index, or the number of steps for completion) is
/// open. Without analysis it always is; with it, the gate starts counting when first asked
/// (the step's pods run the target) and opens after passingWindows passing windows.
pub(super) fn gate(input: &Input<'_>, status: &mut PluginReleaseStatus, gate: usize) -> bool {
    let (Some(spec), Some(analysis)) = (&input.spec.analysis, status.analysis.as_mut()) else {
        return true;
    };
    let step = i32::try_from(gate).unwrap_or(i32::MAX);
    analysis::enter_gate(analysis, step, input.now);
    analysis::gate_open(spec, analysis, step)
}

/// The completion gate. When the last step already wants every pod and its gate is open,
/// that gate stands for completion too: the same pods would be judged again otherwise.
pub(super) fn completion_gate(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    eligible: usize,
) -> bool {
    let steps = input.spec.strategy.steps.len();
    if let (Some(spec), Some(analysis), Some(last)) = (
        &input.spec.analysis,
        status.analysis.as_ref(),
        steps.checked_sub(1),
    ) {
        let last_gate = i32::try_from(last).unwrap_or(i32::MAX);
        if super::step_goal(input.spec, last, eligible) == eligible
            && analysis::gate_open(spec, analysis, last_gate)
        {
            return true;
        }
    }
    gate(input, status, steps)
}

/// Holding at a closed gate: Paused with the reason while the last window was
/// inconclusive, otherwise Progressing with the count of passing windows.
pub(super) fn hold_at_gate(input: &Input<'_>, status: &mut PluginReleaseStatus) {
    let (Some(spec), Some(analysis)) = (&input.spec.analysis, status.analysis.as_ref()) else {
        return;
    };
    let reason = analysis::gate_reason(spec, analysis, input.now);
    status.phase = Some(if analysis.phase == AnalysisPhase::Inconclusive {
        Phase::Paused
    } else {
        Phase::Progressing
    });
    // The countdown is for `kubectl hotload status`; the message keeps to what changes less,
    // so holding does not rewrite status every reconcile.
    let steady = reason
        .split("; this window ends")
        .next()
        .unwrap_or(&reason)
        .to_string();
    status.message = Some(steady);
}

/// The rollout holds for analysis with too little data to judge: Paused, yet the progress
/// deadline still runs.
pub(super) fn analysis_holds(status: &PluginReleaseStatus) -> bool {
    status.phase == Some(Phase::Paused)
        && status
            .analysis
            .as_ref()
            .is_some_and(|a| a.phase == AnalysisPhase::Inconclusive)
}

/// When to plan again so the window in progress is measured as soon as it can be.
pub(super) fn analysis_requeue(
    input: &Input<'_>,
    status: &PluginReleaseStatus,
) -> Option<Duration> {
    let spec = input.spec.analysis.as_ref()?;
    let analysis = status.analysis.as_ref()?;
    if matches!(
        status.phase,
        Some(Phase::Completed | Phase::RolledBack | Phase::Degraded)
    ) {
        return None;
    }
    analysis::until_due(spec, analysis, input.now)
}

/// A completed rollout's analysis has passed.
pub(super) fn mark_passed(status: &mut PluginReleaseStatus) {
    if let Some(analysis) = status.analysis.as_mut() {
        analysis.phase = AnalysisPhase::Passed;
    }
}
