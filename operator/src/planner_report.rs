//! How a plan reports the fleet in status: the counts, the bounded pod list, the progress of
//! a rollback, and the kstatus conditions. What happens next is decided in the planner
//! ([`super`]); this reads the fleet and the decision and writes them down for people and
//! tools (`kubectl wait`, Argo CD, Flux).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Input, Note, POD_LIST_CAP, PodView, Tally, touched, updated};
use crate::api::{AckState, Phase, PluginReleaseStatus, PodAck};

/// A rolled-back release says how many touched pods are not back on the stable revision
/// yet (`; N pods still rolling back` after the decision's message), and records when the
/// last one is. Returns that count (0 when the release is not rolled back).
pub(super) fn report_rollback(
    input: &Input<'_>,
    status: &mut PluginReleaseStatus,
    target: &str,
    tally: &Tally<'_>,
    notes: &mut Vec<Note>,
) -> usize {
    if status.phase != Some(Phase::RolledBack) {
        return 0;
    }
    let left = tally.eligible.iter().filter(|p| touched(p, target)).count();
    let decision = status
        .message
        .as_deref()
        .map(|m| decision_message(m).to_string());
    status.message = match (decision, left) {
        (Some(decision), 0) => Some(decision),
        (decision, left) => {
            let pods = if left == 1 { "pod" } else { "pods" };
            Some(format!(
                "{}; {left} {pods}{STILL_ROLLING_BACK}",
                decision.unwrap_or_else(|| format!("revision {target} rolled back"))
            ))
        }
    };
    let was_left = input.status.phase == Some(Phase::RolledBack)
        && input
            .status
            .message
            .as_deref()
            .is_some_and(|m| decision_message(m) != m);
    if left == 0 && was_left {
        notes.push(Note {
            warning: false,
            reason: "RollbackCompleted",
            message: format!(
                "every pod revision {target} reached runs {} again",
                status.stable_revision.as_deref().unwrap_or("no plugin")
            ),
        });
    }
    left
}

/// The tail [`report_rollback`] adds to a rolled-back release's message.
const STILL_ROLLING_BACK: &str = " still rolling back";

/// A rolled-back release's message without the count of pods still rolling back: the
/// decision's own words, which must survive every plan after it.
pub(super) fn decision_message(message: &str) -> &str {
    let Some(rest) = message.strip_suffix(STILL_ROLLING_BACK) else {
        return message;
    };
    let Some(rest) = rest
        .strip_suffix(" pods")
        .or_else(|| rest.strip_suffix(" pod"))
    else {
        return message;
    };
    match rest.rsplit_once("; ") {
        Some((decision, count)) if count.parse::<usize>().is_ok() => decision,
        _ => message,
    }
}

/// Fills the counts, progress and pod list of `status` (failures first, at most
/// [`POD_LIST_CAP`] pods).
pub(super) fn fill_counts(
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

/// What the conditions report beyond the phase.
pub(super) struct Judgement {
    /// progressDeadlineSeconds passed without progress.
    pub(super) deadline_exceeded: bool,
    /// Rolled back, with this many touched pods not yet back on the stable revision.
    pub(super) rolling_back: usize,
    /// Held (Paused) because analysis had too little data to judge.
    pub(super) analysis_hold: bool,
}

/// kstatus conditions: Ready, Progressing, Degraded (and Conflict when pods are contested).
///
/// A rollback under way (pods still to go back) is `Reconciling=True`, `Progressing=True`,
/// `Stalled=False`, reason `RollingBack`: the operator is still moving the fleet, so
/// `kubectl wait --for=condition=Stalled`, kstatus (InProgress, then Failed) and Flux see
/// the failure once the fleet is safe, not while pods still run the bad revision. `Degraded`
/// is True from the decision on (and the phase is RolledBack, which Argo CD's health check
/// reads as Degraded): the release failed either way.
pub(super) fn conditions(
    status: &PluginReleaseStatus,
    prev: &PluginReleaseStatus,
    pods: &[PodView],
    generation: i64,
    judgement: Judgement,
    now: Timestamp,
) -> Vec<Condition> {
    let Judgement {
        deadline_exceeded,
        rolling_back,
        analysis_hold,
    } = judgement;
    let phase = status.phase;
    let message = status.message.clone().unwrap_or_default();
    let still_rolling_back = phase == Some(Phase::RolledBack) && rolling_back > 0;
    let progress = format!(
        "{} of {} pods run revision {}",
        status.updated,
        status.matched,
        status.target_revision.as_deref().unwrap_or("-")
    );
    // Why a Paused release holds: a person (a pause step, spec.paused), or analysis that
    // has too little data to judge (its message says which check and why).
    let (paused, held) = if analysis_hold {
        ("AnalysisInconclusive", &message)
    } else {
        ("RolloutPaused", &progress)
    };
    // Why a Degraded release is degraded.
    let degraded = if deadline_exceeded {
        "ProgressDeadlineExceeded"
    } else {
        "RolloutFailed"
    };
    let mut out = vec![
        match phase {
            Some(Phase::Completed) => cond("Ready", true, "RolloutCompleted", &progress),
            Some(Phase::RolledBack) if still_rolling_back => {
                cond("Ready", false, "RollingBack", &message)
            }
            Some(Phase::RolledBack) => cond("Ready", false, "RolledBack", &message),
            Some(Phase::Degraded) => cond("Ready", false, degraded, &message),
            Some(Phase::Paused) => cond("Ready", false, paused, held),
            _ => cond("Ready", false, "RolloutInProgress", &progress),
        },
        match phase {
            Some(Phase::Progressing) => cond("Progressing", true, "RolloutInProgress", &progress),
            Some(Phase::Paused) => cond("Progressing", false, paused, held),
            Some(Phase::Degraded) => cond("Progressing", false, degraded, &message),
            Some(Phase::RolledBack) if still_rolling_back => {
                cond("Progressing", true, "RollingBack", &message)
            }
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
            Some(Phase::Paused) => cond("Reconciling", true, paused, held),
            Some(Phase::RolledBack) if still_rolling_back => {
                cond("Reconciling", true, "RollingBack", &message)
            }
            _ => cond("Reconciling", false, "AsExpected", ""),
        },
        match phase {
            Some(Phase::Degraded) => cond("Stalled", true, degraded, &message),
            Some(Phase::RolledBack) if still_rolling_back => {
                cond("Stalled", false, "RollingBack", &message)
            }
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
