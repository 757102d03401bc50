//! The rollout planner: a pure function from what the operator knows (the spec, the last
//! status, every selected pod's sidecar report, the clock) to what must happen next (which
//! pods run which revision), the new status, and the events to record. The controller
//! performs the plan; nothing here does I/O, so every rule is unit-tested below.
//!
//! ```text
//!  new spec ─▶ Progressing ─(step % reached)─▶ Paused (step pause) ─▶ … ─▶ Completed
//!                   │                                                     (stable := target)
//!                   └─(failures > maxFailures)─▶ RolledBack (action Rollback: touched pods → stable)
//!                                               Degraded   (action Pause: hold where it is)
//! ```
//!
//! A rollback is finished only once every touched pod runs the stable revision again: until
//! then the release stays RolledBack with `Reconciling=True` (reason `RollingBack`) and its
//! message counts the pods still on their way; a pod that fails to load the stable revision
//! is sent it again after [`ROLLBACK_RESEND_AFTER`].

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::analysis::Measured;
use crate::api::{
    AckState, FailureAction, Outcome, Pause, Phase, PluginReleaseSpec, PluginReleaseStatus,
    RevisionRecord,
};
use crate::revision::revision_of;

#[path = "planner_analysis.rs"]
mod gates;
use gates::{
    analysis_holds, analysis_requeue, completion_gate, gate, hold_at_gate, mark_passed,
    record_window, sync_analysis,
};
#[path = "planner_report.rs"]
mod report;
#[cfg(test)]
use report::decision_message;
use report::{Judgement, conditions, fill_counts, report_rollback};

/// Annotation whose change retries a failed revision (`kubectl hotload retry`).
pub const RETRY_ANNOTATION: &str = "hotload.dev/retry";
/// Annotation whose change releases a pause step (`kubectl hotload resume`).
pub const RESUME_ANNOTATION: &str = "hotload.dev/resume";
/// Annotation whose change aborts the rollout under way: every touched pod goes back to
/// the stable revision, as after a failure (`kubectl hotload abort`).
pub const ABORT_ANNOTATION: &str = "hotload.dev/abort";
/// How many pods `status.pods` lists at most.
pub const POD_LIST_CAP: usize = 256;
/// The resume token that records "spec.paused was set while holding at a pause step".
const PAUSED_DURING_HOLD: &str = "spec.paused";
/// A touched pod that failed to load the stable revision during a rollback is sent it again
/// once its failure is this old: a rollback finishes once the fault passes, and a lasting
/// fault is not hammered.
pub const ROLLBACK_RESEND_AFTER: Duration = Duration::from_secs(30);

/// What the operator knows about one selected pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// The pod's name.
    pub name: String,
    /// Its sidecar's stream to the operator is open.
    pub connected: bool,
    /// The revision the sidecar was last told to run (from its own report).
    pub assigned: Option<String>,
    /// The revision the app is running.
    pub serving: Option<String>,
    /// How the assigned revision is doing.
    pub state: AckState,
    /// Why the assigned revision failed.
    pub reason: Option<String>,
    /// Since when `state` holds.
    pub since: Timestamp,
    /// Another release owns this plugin on this pod (its `namespace/name`).
    pub conflict: Option<String>,
    /// The app's worker processes connected to the sidecar (0: not counted).
    pub workers: u32,
    /// How many of them confirmed `assigned`.
    pub workers_loaded: u32,
}

/// Everything the planner decides from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The release's spec.
    pub spec: &'a PluginReleaseSpec,
    /// `metadata.generation`.
    pub generation: i64,
    /// The release's annotations (retry and resume requests).
    pub annotations: &'a BTreeMap<String, String>,
    /// The status as last written.
    pub status: &'a PluginReleaseStatus,
    /// Every pod the selector matches.
    pub pods: &'a [PodView],
    /// The analysis window that was due, measured (see [`crate::analysis::due`]).
    pub measured: Option<&'a Measured>,
    /// Now.
    pub now: Timestamp,
}

/// An event to record on the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// For a person.
    pub message: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The revision each pod must run (`None`: no plugin), for every pod whose assignment
    /// must change.
    pub assign: Vec<(String, Option<String>)>,
    /// The status to write.
    pub status: PluginReleaseStatus,
    /// Events to record.
    pub notes: Vec<Note>,
    /// Plan again after this long even if nothing changes (pauses, minReadySeconds, deadline).
    pub requeue_after: Option<Duration>,
}

/// A pod counts as updated once it ran the target for `minReadySeconds`.
fn updated(pod: &PodView, target: &str, min_ready: Duration, now: Timestamp) -> bool {
    pod.serving.as_deref() == Some(target)
        && pod.assigned.as_deref() == Some(target)
        && pod.state == AckState::Loaded
        && elapsed(pod.since, now) >= min_ready
}

/// Assigned the target and not yet updated nor failed: it counts against maxUnavailable.
fn in_flight(pod: &PodView, target: &str, min_ready: Duration, now: Timestamp) -> bool {
    pod.assigned.as_deref() == Some(target)
        && pod.state != AckState::Failed
        && !updated(pod, target, min_ready, now)
}

/// Failed the target during the current attempt at it. A failure from before the attempt
/// began (a retry after a fix) is not held against it: that pod is assigned again.
fn failed(pod: &PodView, target: &str, attempt: Option<Timestamp>) -> bool {
    pod.assigned.as_deref() == Some(target)
        && pod.state == AckState::Failed
        && attempt.is_none_or(|started| pod.since >= started)
}

/// Failed the target before the current attempt at it began: to be assigned again.
fn stale_failure(pod: &PodView, target: &str, attempt: Option<Timestamp>) -> bool {
    pod.assigned.as_deref() == Some(target)
        && pod.state == AckState::Failed
        && !failed(pod, target, attempt)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let nanos = now.as_nanosecond() - since.as_nanosecond();
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// maxUnavailable for `matched` pods: a percentage rounds up and is never below one pod, so
/// a small fleet cannot silently stall.
pub fn max_unavailable(value: &IntOrString, matched: usize) -> usize {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0).max(1),
        IntOrString::String(s) => percent(s).map_or(1, |p| (p * matched).div_ceil(100).max(1)),
    }
}

/// maxFailures for `matched` pods: a percentage rounds down (the safe side).
pub fn max_failures(value: &IntOrString, matched: usize) -> usize {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0),
        IntOrString::String(s) => percent(s).map_or(0, |p| p * matched / 100),
    }
}

/// `25%` → 25; above 100 (the CRD refuses it) counts as 100, so no product overflows.
fn percent(value: &str) -> Option<usize> {
    value
        .strip_suffix('%')?
        .parse::<usize>()
        .ok()
        .map(|p| p.min(100))
}

/// `30s`, `5m`, `1h` → a duration.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let n: u64 = value[..value.len() - unit.len_utf8()].parse().ok()?;
    let seconds = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        _ => None,
    };
    seconds.map(Duration::from_secs)
}

/// The pods one step wants on the target: its percentage (the last percentage given at or
/// before the step) of the eligible pods, rounded up; past the last step, all of them.
pub fn step_goal(spec: &PluginReleaseSpec, step: usize, eligible: usize) -> usize {
    let steps = &spec.strategy.steps;
    if step >= steps.len() {
        return eligible;
    }
    let percent = steps[..=step]
        .iter()
        .rev()
        .find_map(|s| s.percent)
        .unwrap_or(0);
    let percent = usize::try_from(percent).unwrap_or(0).min(100);
    (percent * eligible).div_ceil(100).min(eligible)
}

/// Which of several releases that claim the same plugin on a pod owns it: the oldest, then
/// the first by name. `claims` holds `(created, namespace/name)`.
pub fn owner<'a>(claims: &[(Timestamp, &'a str)]) -> Option<&'a str> {
    claims.iter().min().map(|(_, name)| *name)
}

/// Plans the next move of one release: each step below is one decision, taken in this order.
pub fn plan(input: &Input<'_>) -> Plan {
    let target = revision_of(input.spec);
    let min_ready =
        Duration::from_secs(u64::try_from(input.spec.strategy.min_ready_seconds).unwrap_or(0));
    let mut status = PluginReleaseStatus::clone(input.status);
    let mut notes = Vec::new();
    status.observed_generation = Some(input.generation);

    let fresh = start_if_new_target(input, &mut status, &target, &mut notes);
    if !fresh {
        retry_if_asked(input, &mut status, &target, &mut notes);
    }
    abort_if_asked(input, &mut status, &target, &mut notes);
    sync_analysis(input, &mut status, &target);

    let tally = Tally::of(input.pods, &status, &target, min_ready, input.now);
    if fresh || tally.updated > usize::try_from(input.status.updated).unwrap_or(0) {
        status.last_progress_at = Some(Time(input.now));
    }
    let analysis_failure = record_window(input, &mut status, &target, &tally, &mut notes);
    apply_failure_policy(input, &mut status, &target, &tally, &mut notes);
    if let Some(cause) = analysis_failure {
        let failed = format!("revision {target} failed analysis: {cause}");
        act_on_failure(input, &mut status, &target, cause, failed, &mut notes);
    }
    let wanted = if given_up(&status, &target) {
        roll_back_or_hold(input, &status, &target, &tally)
    } else {
        roll_forward(input, &mut status, &target, &tally, &mut notes)
    };
    let (exceeded, deadline_requeue) =
        check_deadline(input, &mut status, &target, &tally, &mut notes);
    let mut requeue = min_some(wanted.requeue, deadline_requeue);
    if min_ready > Duration::ZERO && tally.in_flight > 0 {
        requeue = min_some(requeue, Some(Duration::from_secs(1)));
    }
    requeue = min_some(requeue, analysis_requeue(input, &status));
    let rolling_back = report_rollback(input, &mut status, &target, &tally, &mut notes);
    let assign = wanted.assignments();

    fill_counts(
        &mut status,
        input.pods,
        &tally.eligible,
        &target,
        min_ready,
        input.now,
    );
    status.conditions = conditions(
        &status,
        input.status,
        input.pods,
        input.generation,
        Judgement {
            deadline_exceeded: exceeded,
            rolling_back,
            analysis_hold: analysis_holds(&status),
        },
        input.now,
    );
    trim_history(&mut status, input.spec.revision_history_limit);
    Plan {
        assign,
        status,
        notes,
        requeue_after: requeue,
    }
}

/// A new target starts a new rollout (going back to the stable revision is one too): the
/// rollout under way is superseded. Returns whether the target is new.
fn start_if_new_target(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    notes: &mut Vec<Note>,
) -> bool {
    if input.status.target_revision.as_deref() == Some(target) {
        return false;
    }
    let (spec, now) = (input.spec, input.now);
    for record in status
        .history
        .iter_mut()
        .filter(|r| r.outcome == Outcome::Progressing)
    {
        record.outcome = Outcome::Superseded;
    }
    status.target_revision = Some(target.to_string());
    status.current_step = (!spec.strategy.steps.is_empty()).then_some(0);
    status.step_started_at = Some(Time(now));
    status.last_progress_at = Some(Time(now));
    status.phase = Some(Phase::Progressing);
    status.message = None;
    status.analysis = None;
    start_history(status, spec, target, now);
    notes.push(Note {
        warning: false,
        reason: "RolloutStarted",
        message: format!("rolling out revision {target} ({})", spec.artifact.url),
    });
    true
}

/// A new value of the retry annotation tries a rolled-back or failed target again, from
/// its first step; a failure from before the retry is not held against it.
fn retry_if_asked(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    notes: &mut Vec<Note>,
) {
    let retry = input.annotations.get(RETRY_ANNOTATION);
    if retry.is_none() || retry == input.status.retry_token.as_ref() {
        return;
    }
    status.retry_token = retry.cloned();
    if !matches!(
        input.status.phase,
        Some(Phase::RolledBack | Phase::Degraded)
    ) {
        return;
    }
    let (spec, now) = (input.spec, input.now);
    status.phase = Some(Phase::Progressing);
    status.current_step = (!spec.strategy.steps.is_empty()).then_some(0);
    status.step_started_at = Some(Time(now));
    status.last_progress_at = Some(Time(now));
    status.message = None;
    status.analysis = None;
    start_history(status, spec, target, now);
    notes.push(Note {
        warning: false,
        reason: "RolloutRetried",
        message: format!("retrying revision {target}"),
    });
}

/// A new value of the abort annotation rolls a rollout under way back, as a failure would.
fn abort_if_asked(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    notes: &mut Vec<Note>,
) {
    let abort = input.annotations.get(ABORT_ANNOTATION);
    if abort.is_none() || abort == input.status.abort_token.as_ref() {
        return;
    }
    status.abort_token = abort.cloned();
    // Only a rollout under way can be aborted (paused on failure included); a finished or
    // rolled-back one has nothing to undo. Once the target is the stable revision there is
    // nothing to go back to either: pods still on their way to it (a scale-up after the
    // rollout completed) are joining the stable revision, not rolling forward.
    let under_way = matches!(
        status.phase,
        Some(Phase::Progressing | Phase::Paused | Phase::Degraded)
    );
    if !under_way || status.stable_revision.as_deref() == Some(target) {
        return;
    }
    let message = format!(
        "rollout of revision {target} aborted by the user; rolling back to {}",
        status.stable_revision.as_deref().unwrap_or("no plugin")
    );
    status.phase = Some(Phase::RolledBack);
    status.message = Some(message.clone());
    set_outcome(status, target, Outcome::RolledBack, Some("aborted".into()));
    notes.push(Note {
        warning: true,
        reason: "RolloutAborted",
        message,
    });
}

/// Where the fleet stands against the target.
struct Tally<'p> {
    /// The pods this release manages (another release owns the plugin on the rest).
    eligible: Vec<&'p PodView>,
    /// How many run the target (for minReadySeconds).
    updated: usize,
    /// How many are on their way to it: they count against maxUnavailable.
    in_flight: usize,
    /// Those that failed it during the current attempt.
    failures: Vec<&'p PodView>,
    /// When the current attempt at the target began.
    attempt: Option<Timestamp>,
}

impl<'p> Tally<'p> {
    fn of(
        pods: &'p [PodView],
        status: &PluginReleaseStatus,
        target: &str,
        min_ready: Duration,
        now: Timestamp,
    ) -> Self {
        let eligible: Vec<&PodView> = pods.iter().filter(|p| p.conflict.is_none()).collect();
        let attempt = status
            .history
            .iter()
            .find(|r| r.revision == target)
            .map(|r| r.started_at.0);
        Tally {
            updated: eligible
                .iter()
                .filter(|p| updated(p, target, min_ready, now))
                .count(),
            in_flight: eligible
                .iter()
                .filter(|p| in_flight(p, target, min_ready, now))
                .count(),
            failures: eligible
                .iter()
                .copied()
                .filter(|p| failed(p, target, attempt))
                .collect(),
            eligible,
            attempt,
        }
    }
}

/// More failures than maxFailures: roll back or hold, as the failure policy says. The
/// failure policy guards a rollout: once the target is the stable revision there is
/// nothing to roll back to, and a pod failing it (say, a new pod) is reported in the pod
/// list.
fn apply_failure_policy(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    tally: &Tally<'_>,
    notes: &mut Vec<Note>,
) {
    let spec = input.spec;
    let stable = status.stable_revision.clone();
    let rolling_out = stable.as_deref() != Some(target);
    let limit = max_failures(&spec.failure_policy.max_failures, tally.eligible.len());
    let Some(first) = tally.failures.first() else {
        return;
    };
    if !rolling_out || given_up(status, target) || tally.failures.len() <= limit {
        return;
    }
    let cause = format!(
        "pod {} failed to load revision {target}: {}",
        first.name,
        first.reason.as_deref().unwrap_or("no reason given")
    );
    let failed = format!(
        "{cause}; {} of {} pods failed (maxFailures {limit})",
        tally.failures.len(),
        tally.eligible.len()
    );
    act_on_failure(input, status, target, cause, failed, notes);
}

/// The target failed (`cause` goes into its history record, `failed` into the message):
/// roll back or hold, as the failure policy says. Only a rollout under way can fail.
fn act_on_failure(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    cause: String,
    failed: String,
    notes: &mut Vec<Note>,
) {
    let stable = status.stable_revision.clone();
    if stable.as_deref() == Some(target) || given_up(status, target) {
        return;
    }
    let (phase, outcome, reason, message) = match input.spec.failure_policy.action {
        FailureAction::Rollback => (
            Phase::RolledBack,
            Outcome::RolledBack,
            "RolledBack",
            format!(
                "{failed}; rolling back to {}",
                stable.as_deref().unwrap_or("no plugin")
            ),
        ),
        FailureAction::Pause => (
            Phase::Degraded,
            Outcome::Failed,
            "RolloutFailed",
            format!("{failed}; paused"),
        ),
    };
    status.phase = Some(phase);
    status.message = Some(message.clone());
    set_outcome(status, target, outcome, Some(cause));
    notes.push(Note {
        warning: true,
        reason,
        message,
    });
}

/// A pod the rollout reached: it was assigned the target, or runs it.
pub fn touched(pod: &PodView, target: &str) -> bool {
    pod.assigned.as_deref() == Some(target) || pod.serving.as_deref() == Some(target)
}

/// The revisions pods are to be sent, and when to plan again.
#[derive(Default)]
struct Wanted<'p> {
    /// Per pod (by name): the revision it must run, and whether to send it even though the
    /// pod was assigned it already (a failure to be tried again).
    desired: BTreeMap<&'p str, (&'p PodView, Option<String>, bool)>,
    /// Plan again after this long.
    requeue: Option<Duration>,
}

impl<'p> Wanted<'p> {
    fn want(&mut self, pod: &'p PodView, revision: Option<String>, again: bool) {
        self.desired.insert(&pod.name, (pod, revision, again));
    }

    /// What goes out: an assignment that changes what the pod runs, or one to be tried
    /// again; and only to a connected sidecar. What is known of a disconnected pod may be
    /// nothing at all (an operator that just started), and its sidecar's Hello says what it
    /// runs before anything is planned for it.
    fn assignments(self) -> Vec<(String, Option<String>)> {
        self.desired
            .into_values()
            .filter(|(pod, revision, again)| pod.connected && (pod.assigned != *revision || *again))
            .map(|(pod, revision, _)| (pod.name.clone(), revision))
            .collect()
    }
}

/// The target failed and the policy acted. Rolled back: every touched pod goes back to the
/// stable revision (cached on disk), and one that failed to load it is sent it again once
/// its failure is [`ROLLBACK_RESEND_AFTER`] old, until it runs it. Held on failure: touched
/// pods stay for a person to look at. Either way a pod that appears meanwhile starts on the
/// stable revision, so it does not turn Ready with nothing loaded.
fn roll_back_or_hold<'p>(
    input: &Input<'_>,
    status: &PluginReleaseStatus,
    target: &str,
    tally: &Tally<'p>,
) -> Wanted<'p> {
    let stable = status.stable_revision.clone();
    let rolled_back = status.phase == Some(Phase::RolledBack);
    let mut wanted = Wanted::default();
    for pod in tally.eligible.iter().copied() {
        if rolled_back && touched(pod, target) {
            let failed_rollback = pod.assigned == stable && pod.state == AckState::Failed;
            let wait = ROLLBACK_RESEND_AFTER.saturating_sub(elapsed(pod.since, input.now));
            let again = failed_rollback && wait.is_zero();
            if failed_rollback && !again && pod.connected {
                wanted.requeue = min_some(wanted.requeue, Some(wait));
            }
            wanted.want(pod, stable.clone(), again);
        } else if pod.assigned.is_none() && stable.is_some() {
            wanted.want(pod, stable.clone(), false);
        }
    }
    wanted
}

/// The rollout goes on: through its steps, as many pods at a time as the step's goal and
/// maxUnavailable allow, to Completed (the target becomes the stable revision).
fn roll_forward<'p>(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    tally: &Tally<'p>,
    notes: &mut Vec<Note>,
) -> Wanted<'p> {
    let spec = input.spec;
    let stable = status.stable_revision.clone();
    let eligible = tally.eligible.len();
    let steps = advance_steps(input, status, target, eligible, tally.updated, notes);
    let goal = step_goal(spec, steps.step, eligible);
    let budget = max_unavailable(&spec.strategy.max_unavailable, eligible);
    let paused = spec.paused || steps.holding;
    let mut gated = steps.gated;
    let mut room = if paused {
        0
    } else {
        goal.saturating_sub(tally.updated + tally.in_flight)
            .min(budget.saturating_sub(tally.in_flight))
    };
    let mut wanted = Wanted {
        requeue: steps.requeue,
        ..Wanted::default()
    };
    for pod in tally.eligible.iter().copied() {
        let on_target = pod.assigned.as_deref() == Some(target);
        let again = stale_failure(pod, target, tally.attempt);
        if on_target && !again {
            continue;
        }
        if room > 0 && pod.connected {
            wanted.want(pod, Some(target.to_string()), again);
            room -= 1;
        } else if pod.assigned.is_none() && stable.is_some() {
            // A pod that appeared mid-rollout starts on the stable revision.
            wanted.want(pod, stable.clone(), false);
        }
    }
    let all_there = !paused && tally.updated == eligible && steps.step >= spec.strategy.steps.len();
    if all_there && !completion_gate(input, status, eligible) {
        gated = true;
    }
    let done = all_there && !gated;
    if done {
        if status.phase != Some(Phase::Completed) {
            notes.push(Note {
                warning: false,
                reason: "RolloutCompleted",
                message: format!("revision {target} runs on all {eligible} pods"),
            });
        }
        status.phase = Some(Phase::Completed);
        status.stable_revision = Some(target.to_string());
        status.message = None;
        mark_passed(status);
        set_outcome(status, target, Outcome::Stable, None);
    } else if paused {
        status.phase = Some(Phase::Paused);
    } else if gated {
        hold_at_gate(input, status);
    } else {
        if input.status.phase == Some(Phase::Paused) && !analysis_holds(input.status) {
            // Time spent paused is not time without progress (as in Argo Rollouts).
            status.last_progress_at = Some(Time(input.now));
        }
        status.phase = Some(Phase::Progressing);
    }
    wanted
}

/// progressDeadlineSeconds without progress: Degraded (like a Deployment), while the
/// rollout itself goes on. Returns whether the deadline passed, and otherwise when it will.
fn check_deadline(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    tally: &Tally<'_>,
    notes: &mut Vec<Note>,
) -> (bool, Option<Duration>) {
    let spec = input.spec;
    let deadline =
        Duration::from_secs(u64::try_from(spec.progress_deadline_seconds).unwrap_or(600));
    let stalled_for = status
        .last_progress_at
        .as_ref()
        .map_or(Duration::ZERO, |t| elapsed(t.0, input.now));
    // A hold for analysis without data is no progress either (unlike a pause a person asked
    // for): the deadline runs through it.
    if status.phase != Some(Phase::Progressing) && !analysis_holds(status) {
        return (false, None);
    }
    if stalled_for <= deadline {
        return (false, Some(deadline.saturating_sub(stalled_for)));
    }
    let message = format!(
        "revision {target} made no progress for {}s (progressDeadlineSeconds {}): {} of {} pods updated",
        stalled_for.as_secs(),
        spec.progress_deadline_seconds,
        tally.updated,
        tally.eligible.len()
    );
    let message = match (&status.analysis, status.message.as_deref()) {
        (Some(_), Some(held)) if held.starts_with("analysis") => format!("{message}; {held}"),
        _ => message,
    };
    if spec.progress_deadline_abort {
        let rollback = Input {
            spec: &abort_spec(spec),
            ..input.clone()
        };
        act_on_failure(&rollback, status, target, message.clone(), message, notes);
        return (true, Some(Duration::from_secs(1)));
    }
    status.phase = Some(Phase::Degraded);
    let prev = input.status;
    if prev.message.as_deref() != Some(message.as_str()) && prev.phase != Some(Phase::Degraded) {
        notes.push(Note {
            warning: true,
            reason: "ProgressDeadlineExceeded",
            message: message.clone(),
        });
    }
    status.message = Some(message);
    (true, None)
}

/// Where a rollout's steps stand after [`advance_steps`].
struct Steps {
    /// The current step (`steps.len()` once past the last).
    step: usize,
    /// Held by the current step's pause.
    holding: bool,
    /// Held at the current step's analysis gate.
    gated: bool,
    /// When a timed pause ends.
    requeue: Option<Duration>,
}

/// Moves through canary steps whose goal is met and whose pause is over; returns the step in
/// force, whether its pause holds, and how long until a timed pause ends.
fn advance_steps(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    eligible: usize,
    n_updated: usize,
    notes: &mut Vec<Note>,
) -> Steps {
    let spec = input.spec;
    let steps = &spec.strategy.steps;
    let mut step = status
        .current_step
        .map_or(0, |s| usize::try_from(s).unwrap_or(0));
    while step < steps.len() {
        if n_updated < step_goal(spec, step, eligible) {
            break;
        }
        // The gate counts windows from here, also while the step's pause holds.
        let open = gate(input, status, step);
        if let Some(pause) = &steps[step].pause {
            match hold(input, status, target, step, pause, notes) {
                Hold::Released => status.phase = Some(Phase::Progressing),
                Hold::Holding { requeue } => {
                    return Steps {
                        step,
                        holding: true,
                        gated: false,
                        requeue,
                    };
                }
            }
        }
        if !open {
            return Steps {
                step,
                holding: false,
                gated: true,
                requeue: None,
            };
        }
        step += 1;
        enter_step(status, step, input.now, notes, target);
    }
    Steps {
        step,
        holding: false,
        gated: false,
        requeue: None,
    }
}

/// Whether a step's pause still holds.
enum Hold {
    /// The pause is over: on to the next step.
    Released,
    /// Still held; a timed pause ends after `requeue`.
    Holding { requeue: Option<Duration> },
}

/// The pause of a step whose goal is met: it begins (phase Paused), and ends when its
/// duration is over, or (without one) when spec.paused goes true → false during the hold or
/// the resume annotation takes a new value.
fn hold(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    step: usize,
    pause: &Pause,
    notes: &mut Vec<Note>,
) -> Hold {
    let now = input.now;
    if status.phase != Some(Phase::Paused) {
        status.phase = Some(Phase::Paused);
        status.step_started_at = Some(Time(now));
        notes.push(Note {
            warning: false,
            reason: "RolloutPaused",
            message: match &pause.duration {
                Some(d) => format!("revision {target} paused at step {} for {d}", step + 1),
                None => format!(
                    "revision {target} paused at step {} until resumed",
                    step + 1
                ),
            },
        });
    }
    let held = status
        .step_started_at
        .as_ref()
        .map_or(Duration::ZERO, |t| elapsed(t.0, now));
    if let Some(duration) = pause.duration.as_deref().and_then(parse_duration) {
        return if held >= duration {
            Hold::Released
        } else {
            Hold::Holding {
                requeue: Some(duration - held),
            }
        };
    }
    if input.spec.paused {
        status.resume_token = Some(PAUSED_DURING_HOLD.into());
        return Hold::Holding { requeue: None };
    }
    let resume = input.annotations.get(RESUME_ANNOTATION);
    let toggled = status.resume_token.as_deref() == Some(PAUSED_DURING_HOLD);
    let requested = resume.is_some() && resume != status.resume_token.as_ref();
    if toggled || requested {
        status.resume_token = resume.cloned();
        Hold::Released
    } else {
        Hold::Holding { requeue: None }
    }
}

fn enter_step(
    status: &mut PluginReleaseStatus,
    step: usize,
    now: Timestamp,
    notes: &mut Vec<Note>,
    target: &str,
) {
    status.current_step = i32::try_from(step).ok();
    status.step_started_at = Some(Time(now));
    status.last_progress_at = Some(Time(now));
    notes.push(Note {
        warning: false,
        reason: "RolloutStep",
        message: format!("revision {target} moved to step {}", step + 1),
    });
}

fn start_history(
    status: &mut PluginReleaseStatus,
    spec: &PluginReleaseSpec,
    target: &str,
    now: Timestamp,
) {
    status.history.retain(|r| r.revision != target);
    status.history.insert(
        0,
        RevisionRecord {
            revision: target.to_string(),
            url: spec.artifact.url.clone(),
            digest: spec.artifact.digest.clone(),
            config: spec.config.clone(),
            signature: spec.artifact.signature.clone(),
            pull_secret: spec.artifact.pull_secret.clone(),
            started_at: Time(now),
            outcome: Outcome::Progressing,
            reason: None,
        },
    );
}

/// The target failed and the failure policy acted (rolled back, or paused on failure): no
/// more pods get it until the spec changes or a retry is asked for.
fn given_up(status: &PluginReleaseStatus, target: &str) -> bool {
    status.phase == Some(Phase::RolledBack)
        || (status.phase == Some(Phase::Degraded)
            && history_outcome(status, target) == Some(Outcome::Failed))
}

fn history_outcome(status: &PluginReleaseStatus, revision: &str) -> Option<Outcome> {
    status
        .history
        .iter()
        .find(|r| r.revision == revision)
        .map(|r| r.outcome)
}

fn set_outcome(
    status: &mut PluginReleaseStatus,
    revision: &str,
    outcome: Outcome,
    reason: Option<String>,
) {
    if let Some(record) = status.history.iter_mut().find(|r| r.revision == revision) {
        record.outcome = outcome;
        record.reason = reason;
    }
}

/// The most bytes (as JSON) `status.history` may take. Each record carries its revision's
/// config (up to 32 KiB) and public key (up to 8 KiB), and 100 such records would pass the
/// API server's 1.5 MiB object limit: status writes would fail and the rollout would stall.
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// Keeps the newest `limit` records within [`HISTORY_MAX_BYTES`], and always the target's
/// (the newest) and the stable revision's: a rollback needs its artifact.
fn trim_history(status: &mut PluginReleaseStatus, limit: i32) {
    let keep = usize::try_from(limit).unwrap_or(0).max(1);
    let stable = status.stable_revision.clone();
    let mut bytes = 0usize;
    let mut index = 0usize;
    status.history.retain(|r| {
        index += 1;
        let size = serde_json::to_vec(r).map_or(usize::MAX, |b| b.len());
        let needed = index == 1 || Some(&r.revision) == stable.as_ref();
        let fits = index <= keep && bytes.saturating_add(size) <= HISTORY_MAX_BYTES;
        let kept = needed || fits;
        if kept {
            bytes = bytes.saturating_add(size);
        }
        kept
    });
}

/// The spec with failure action Rollback: progressDeadlineAbort rolls back whatever the
/// failure policy says about failed loads.
fn abort_spec(spec: &PluginReleaseSpec) -> PluginReleaseSpec {
    let mut spec = spec.clone();
    spec.failure_policy.action = FailureAction::Rollback;
    spec
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "planner_props.rs"]
mod props;
