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

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    AckState, FailureAction, Outcome, Phase, PluginReleaseSpec, PluginReleaseStatus, PodAck,
    RevisionRecord,
};
use crate::revision::revision_of;

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

fn percent(value: &str) -> Option<usize> {
    value.strip_suffix('%')?.parse().ok()
}

/// `30s`, `5m`, `1h` → a duration.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let n: u64 = value[..value.len() - unit.len_utf8()].parse().ok()?;
    match unit {
        's' => Some(Duration::from_secs(n)),
        'm' => Some(Duration::from_secs(n * 60)),
        'h' => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
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

/// Plans the next move of one release.
pub fn plan(input: &Input<'_>) -> Plan {
    let Input {
        spec,
        status: prev,
        pods,
        now,
        ..
    } = input;
    let now = *now;
    let target = revision_of(spec);
    let min_ready =
        Duration::from_secs(u64::try_from(spec.strategy.min_ready_seconds).unwrap_or(0));
    let mut status = PluginReleaseStatus::clone(prev);
    let mut notes = Vec::new();
    status.observed_generation = Some(input.generation);

    // A new target starts a new rollout; going back to the stable revision is one too.
    let fresh = prev.target_revision.as_deref() != Some(target.as_str());
    if fresh {
        for record in status
            .history
            .iter_mut()
            .filter(|r| r.outcome == Outcome::Progressing)
        {
            record.outcome = Outcome::Superseded;
        }
        status.target_revision = Some(target.clone());
        status.current_step = (!spec.strategy.steps.is_empty()).then_some(0);
        status.step_started_at = Some(Time(now));
        status.last_progress_at = Some(Time(now));
        status.phase = Some(Phase::Progressing);
        status.message = None;
        start_history(&mut status, spec, &target, now);
        notes.push(Note {
            warning: false,
            reason: "RolloutStarted",
            message: format!("rolling out revision {target} ({})", spec.artifact.url),
        });
    }
    let retry = input.annotations.get(RETRY_ANNOTATION);
    if !fresh && retry.is_some() && retry != prev.retry_token.as_ref() {
        status.retry_token = retry.cloned();
        if matches!(prev.phase, Some(Phase::RolledBack | Phase::Degraded)) {
            status.phase = Some(Phase::Progressing);
            status.current_step = (!spec.strategy.steps.is_empty()).then_some(0);
            status.step_started_at = Some(Time(now));
            status.last_progress_at = Some(Time(now));
            status.message = None;
            start_history(&mut status, spec, &target, now);
            notes.push(Note {
                warning: false,
                reason: "RolloutRetried",
                message: format!("retrying revision {target}"),
            });
        }
    }

    let stable = status.stable_revision.clone();
    let abort = input.annotations.get(ABORT_ANNOTATION);
    if abort.is_some() && abort != prev.abort_token.as_ref() {
        status.abort_token = abort.cloned();
        // Only a rollout under way can be aborted (paused on failure included); a finished
        // or rolled-back one has nothing to undo.
        let under_way = matches!(
            status.phase,
            Some(Phase::Progressing | Phase::Paused | Phase::Degraded)
        );
        if under_way {
            let message = format!(
                "rollout of revision {target} aborted by the user; rolling back to {}",
                stable.as_deref().unwrap_or("no plugin")
            );
            status.phase = Some(Phase::RolledBack);
            status.message = Some(message.clone());
            set_outcome(
                &mut status,
                &target,
                Outcome::RolledBack,
                Some("aborted".into()),
            );
            notes.push(Note {
                warning: true,
                reason: "RolloutAborted",
                message,
            });
        }
    }
    let eligible: Vec<&PodView> = pods.iter().filter(|p| p.conflict.is_none()).collect();
    let count = |f: &dyn Fn(&PodView) -> bool| eligible.iter().filter(|p| f(p)).count();
    let n_updated = count(&|p| updated(p, &target, min_ready, now));
    let n_flight = count(&|p| in_flight(p, &target, min_ready, now));
    let attempt = status
        .history
        .iter()
        .find(|r| r.revision == target)
        .map(|r| r.started_at.0);
    let failures: Vec<&&PodView> = eligible
        .iter()
        .filter(|p| failed(p, &target, attempt))
        .collect();
    if n_updated > usize::try_from(prev.updated).unwrap_or(0) || fresh {
        status.last_progress_at = Some(Time(now));
    }

    let mut desired: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let limit = max_failures(&spec.failure_policy.max_failures, eligible.len());
    let mut requeue: Option<Duration> = None;

    // The failure policy guards a rollout. Once the target is the stable revision there is
    // nothing to roll back to: a pod failing it (say, a new pod) is reported in the pod list.
    let rolling_out = stable.as_deref() != Some(target.as_str());
    if rolling_out && !given_up(&status, &target) && !failures.is_empty() && failures.len() > limit
    {
        let first = failures[0];
        let cause = format!(
            "pod {} failed to load revision {target}: {}",
            first.name,
            first.reason.as_deref().unwrap_or("no reason given")
        );
        let (phase, outcome, reason) = match spec.failure_policy.action {
            FailureAction::Rollback => (Phase::RolledBack, Outcome::RolledBack, "RolledBack"),
            FailureAction::Pause => (Phase::Degraded, Outcome::Failed, "RolloutFailed"),
        };
        status.phase = Some(phase);
        status.message = Some(match spec.failure_policy.action {
            FailureAction::Rollback => format!(
                "{cause}; {} of {} pods failed (maxFailures {limit}); rolling back to {}",
                failures.len(),
                eligible.len(),
                stable.as_deref().unwrap_or("no plugin")
            ),
            FailureAction::Pause => format!(
                "{cause}; {} of {} pods failed (maxFailures {limit}); paused",
                failures.len(),
                eligible.len()
            ),
        });
        set_outcome(&mut status, &target, outcome, Some(cause.clone()));
        notes.push(Note {
            warning: true,
            reason,
            message: status.message.clone().unwrap_or_default(),
        });
    }
    if given_up(&status, &target) {
        let rolled_back = status.phase == Some(Phase::RolledBack);
        for pod in &eligible {
            // Rolled back: every pod the rollout touched goes back to the stable revision
            // (cached on disk). Held on failure: touched pods stay for a person to look at.
            // Either way a pod that appears meanwhile starts on the stable revision, so it
            // does not turn Ready with nothing loaded.
            let touched = pod.assigned.as_deref() == Some(target.as_str())
                || pod.serving.as_deref() == Some(target.as_str());
            if (rolled_back && touched) || (pod.assigned.is_none() && stable.is_some()) {
                desired.insert(&pod.name, stable.clone());
            }
        }
    } else {
        let Steps {
            step,
            holding,
            requeue: wait,
        } = advance_steps(
            input,
            &mut status,
            &target,
            eligible.len(),
            n_updated,
            &mut notes,
        );
        requeue = wait;
        let goal = step_goal(spec, step, eligible.len());
        let budget = max_unavailable(&spec.strategy.max_unavailable, eligible.len());
        let paused = spec.paused || holding;
        let mut room = if paused {
            0
        } else {
            goal.saturating_sub(n_updated + n_flight)
                .min(budget.saturating_sub(n_flight))
        };
        for pod in &eligible {
            let on_target = pod.assigned.as_deref() == Some(target.as_str());
            if on_target && !stale_failure(pod, &target, attempt) {
                continue;
            }
            if room > 0 && pod.connected {
                desired.insert(&pod.name, Some(target.clone()));
                room -= 1;
            } else if pod.assigned.is_none() && stable.is_some() {
                // A pod that appeared mid-rollout starts on the stable revision.
                desired.insert(&pod.name, stable.clone());
            }
        }
        if !paused && n_updated == eligible.len() && step >= spec.strategy.steps.len() {
            if status.phase != Some(Phase::Completed) {
                notes.push(Note {
                    warning: false,
                    reason: "RolloutCompleted",
                    message: format!("revision {target} runs on all {} pods", eligible.len()),
                });
            }
            status.phase = Some(Phase::Completed);
            status.stable_revision = Some(target.clone());
            status.message = None;
            set_outcome(&mut status, &target, Outcome::Stable, None);
        } else if paused {
            status.phase = Some(Phase::Paused);
        } else {
            if prev.phase == Some(Phase::Paused) {
                // Time spent paused is not time without progress (as in Argo Rollouts).
                status.last_progress_at = Some(Time(now));
            }
            status.phase = Some(Phase::Progressing);
        }
    }

    // Deadline: Degraded (like a Deployment), the rollout itself goes on.
    let deadline =
        Duration::from_secs(u64::try_from(spec.progress_deadline_seconds).unwrap_or(600));
    let stalled_for = status
        .last_progress_at
        .as_ref()
        .map_or(Duration::ZERO, |t| elapsed(t.0, now));
    let exceeded = status.phase == Some(Phase::Progressing) && stalled_for > deadline;
    if exceeded {
        status.phase = Some(Phase::Degraded);
        let message = format!(
            "revision {target} made no progress for {}s (progressDeadlineSeconds {}): {n_updated} of {} pods updated",
            stalled_for.as_secs(),
            spec.progress_deadline_seconds,
            eligible.len()
        );
        if prev.message.as_deref() != Some(message.as_str()) && prev.phase != Some(Phase::Degraded)
        {
            notes.push(Note {
                warning: true,
                reason: "ProgressDeadlineExceeded",
                message: message.clone(),
            });
        }
        status.message = Some(message);
    } else if status.phase == Some(Phase::Progressing) {
        requeue = min_some(requeue, Some(deadline.saturating_sub(stalled_for)));
    }
    if min_ready > Duration::ZERO && n_flight > 0 {
        requeue = min_some(requeue, Some(Duration::from_secs(1)));
    }

    let assign = desired
        .into_iter()
        .filter(|(name, revision)| {
            let pod = eligible.iter().find(|p| p.name == *name);
            // Sent when it changes what the pod runs, or to try a stale failure again; and only
            // to a connected sidecar. What is known of a disconnected pod may be nothing at all
            // (an operator that just started), and its sidecar's Hello says what it runs before
            // anything is planned for it.
            pod.is_some_and(|p| {
                p.connected && (p.assigned != *revision || stale_failure(p, &target, attempt))
            })
        })
        .map(|(name, revision)| (name.to_string(), revision))
        .collect();

    fill_counts(&mut status, pods, &eligible, &target, min_ready, now);
    status.conditions = conditions(&status, prev, pods, input.generation, exceeded, now);
    trim_history(&mut status, spec.revision_history_limit);
    Plan {
        assign,
        status,
        notes,
        requeue_after: requeue,
    }
}

/// Where a rollout's steps stand after [`advance_steps`].
struct Steps {
    /// The current step (`steps.len()` once past the last).
    step: usize,
    /// Held by the current step's pause.
    holding: bool,
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
    let now = input.now;
    let resume = input.annotations.get(RESUME_ANNOTATION);
    let moving = |step| Steps {
        step,
        holding: false,
        requeue: None,
    };
    while step < steps.len() {
        if n_updated < step_goal(spec, step, eligible) {
            return moving(step);
        }
        let Some(pause) = &steps[step].pause else {
            step += 1;
            enter_step(status, step, now, notes, target);
            continue;
        };
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
        let released = match pause.duration.as_deref().and_then(parse_duration) {
            Some(duration) if held >= duration => true,
            Some(duration) => {
                return Steps {
                    step,
                    holding: true,
                    requeue: Some(duration - held),
                };
            }
            None => {
                if spec.paused {
                    status.resume_token = Some(PAUSED_DURING_HOLD.into());
                    false
                } else {
                    // Released by spec.paused going true → false during the hold, or by a new
                    // value of the resume annotation.
                    let toggled = status.resume_token.as_deref() == Some(PAUSED_DURING_HOLD);
                    let requested = resume.is_some() && resume != status.resume_token.as_ref();
                    if toggled || requested {
                        status.resume_token = resume.cloned();
                    }
                    toggled || requested
                }
            }
        };
        if !released {
            return Steps {
                step,
                holding: true,
                requeue: None,
            };
        }
        status.phase = Some(Phase::Progressing);
        step += 1;
        enter_step(status, step, now, notes, target);
    }
    moving(step)
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

/// Keeps the newest `limit` records, and always the stable revision's: a rollback needs its
/// artifact.
fn trim_history(status: &mut PluginReleaseStatus, limit: i32) {
    let keep = usize::try_from(limit).unwrap_or(0).max(1);
    let stable = status.stable_revision.as_deref();
    let mut kept = 0;
    status.history.retain(|r| {
        kept += 1;
        kept <= keep || Some(r.revision.as_str()) == stable
    });
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn fill_counts(
    status: &mut PluginReleaseStatus,
    pods: &[PodView],
    eligible: &[&PodView],
    target: &str,
    min_ready: Duration,
    now: Timestamp,
) {
    // Every count is of the pods this release manages: a pod whose plugin another release
    // owns is in the Conflict condition, not in these.
    let count = |f: &dyn Fn(&PodView) -> bool| {
        i32::try_from(eligible.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    status.matched = count(&|_| true);
    status.updated = count(&|p| updated(p, target, min_ready, now));
    status.ready = count(&|p| p.serving.is_some() && p.state != AckState::Failed);
    status.failed = count(&|p| p.state == AckState::Failed);
    status.unreachable = count(&|p| !p.connected);
    status.progress = Some(format!("{}/{}", status.updated, eligible.len()));

    let ack = |p: &PodView| PodAck {
        pod: p.name.clone(),
        revision: p.assigned.clone().unwrap_or_default(),
        state: if p.connected {
            p.state
        } else {
            AckState::Unreachable
        },
        reason: if p.connected {
            p.reason.clone().or_else(|| {
                p.conflict
                    .as_ref()
                    .map(|c| format!("plugin is owned by release {c}"))
            })
        } else {
            Some("sidecar not connected".into())
        },
        since: Time(p.since),
        workers: (p.connected && p.workers > 0).then(|| count_of(p.workers)),
        workers_loaded: (p.connected && p.workers > 0).then(|| count_of(p.workers_loaded)),
    };
    let mut listed: Vec<&PodView> = if pods.len() <= POD_LIST_CAP {
        pods.iter().collect()
    } else {
        pods.iter()
            .filter(|p| !updated(p, target, min_ready, now))
            .collect()
    };
    // Failures first: they are what a person opens the status for.
    listed.sort_by_key(|p| (p.state != AckState::Failed, p.name.clone()));
    listed.truncate(POD_LIST_CAP);
    status.pods = listed.into_iter().map(ack).collect();
}

fn count_of(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// kstatus conditions: Ready, Progressing, Degraded (and Conflict when pods are contested).
fn conditions(
    status: &PluginReleaseStatus,
    prev: &PluginReleaseStatus,
    pods: &[PodView],
    generation: i64,
    deadline_exceeded: bool,
    now: Timestamp,
) -> Vec<Condition> {
    let phase = status.phase;
    let message = status.message.clone().unwrap_or_default();
    let progress = format!(
        "{} of {} pods run revision {}",
        status.updated,
        status.matched,
        status.target_revision.as_deref().unwrap_or("-")
    );
    // Why a Degraded release is degraded.
    let degraded = if deadline_exceeded {
        "ProgressDeadlineExceeded"
    } else {
        "RolloutFailed"
    };
    let mut out = vec![
        match phase {
            Some(Phase::Completed) => cond("Ready", true, "RolloutCompleted", &progress),
            Some(Phase::RolledBack) => cond("Ready", false, "RolledBack", &message),
            Some(Phase::Degraded) => cond("Ready", false, degraded, &message),
            Some(Phase::Paused) => cond("Ready", false, "RolloutPaused", &progress),
            _ => cond("Ready", false, "RolloutInProgress", &progress),
        },
        match phase {
            Some(Phase::Progressing) => cond("Progressing", true, "RolloutInProgress", &progress),
            Some(Phase::Paused) => cond("Progressing", false, "RolloutPaused", &progress),
            Some(Phase::Degraded) => cond("Progressing", false, degraded, &message),
            Some(Phase::RolledBack) => cond("Progressing", false, "RolledBack", &message),
            _ => cond("Progressing", false, "RolloutCompleted", &progress),
        },
        match phase {
            Some(Phase::Degraded) => cond("Degraded", true, degraded, &message),
            Some(Phase::RolledBack) => cond("Degraded", true, "RolledBack", &message),
            _ => cond("Degraded", false, "AsExpected", ""),
        },
        // kstatus's own pair (what Flux and `kpt live status` read): Reconciling while the
        // fleet is on its way, Stalled when it will not get there without a person.
        match phase {
            Some(Phase::Progressing) => cond("Reconciling", true, "RolloutInProgress", &progress),
            Some(Phase::Paused) => cond("Reconciling", true, "RolloutPaused", &progress),
            _ => cond("Reconciling", false, "AsExpected", ""),
        },
        match phase {
            Some(Phase::Degraded) => cond("Stalled", true, degraded, &message),
            Some(Phase::RolledBack) => cond("Stalled", true, "RolledBack", &message),
            _ => cond("Stalled", false, "AsExpected", ""),
        },
    ];
    let contested: Vec<&str> = pods.iter().filter_map(|p| p.conflict.as_deref()).collect();
    if let Some(other) = contested.first() {
        out.push(cond(
            "Conflict",
            true,
            "PluginOwnedElsewhere",
            &format!(
                "{} pods are skipped: release {other} already owns this plugin on them",
                contested.len()
            ),
        ));
    }
    for c in &mut out {
        c.observed_generation = Some(generation);
        let same = prev
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status);
        c.last_transition_time = same.map_or(Time(now), |p| p.last_transition_time.clone());
    }
    out
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
