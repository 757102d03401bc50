//! Rollout planner scenarios: each test walks a fleet through plans the way the controller
//! would, feeding each plan's status and assignments back in as the next input.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::*;
use crate::api::{AckState, FailureAction, Outcome, Phase, PluginReleaseSpec, PluginReleaseStatus};

const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn spec(digest: &str, strategy: serde_json::Value) -> PluginReleaseSpec {
    serde_json::from_value(json!({
        "plugin": "auth",
        "selector": {"matchLabels": {"app": "shop"}},
        "artifact": {"url": "oci://127.0.0.1:5000/auth:1", "digest": digest},
        "strategy": strategy,
    }))
    .unwrap()
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_800_000_000 + seconds)
}

/// A fleet and the clock, advanced by applying plans and sidecar reports.
struct Fleet {
    spec: PluginReleaseSpec,
    status: PluginReleaseStatus,
    pods: Vec<PodView>,
    annotations: BTreeMap<String, String>,
    now: i64,
    generation: i64,
}

impl Fleet {
    /// `n` pods that all run `spec`'s revision as the stable one.
    fn stable(n: usize, spec: PluginReleaseSpec) -> Self {
        let mut fleet = Fleet {
            spec,
            status: PluginReleaseStatus::default(),
            pods: (0..n).map(|i| pod(&format!("pod-{i}"))).collect(),
            annotations: BTreeMap::new(),
            now: 0,
            generation: 1,
        };
        fleet.converge(100);
        assert_eq!(fleet.status.phase, Some(Phase::Completed));
        fleet
    }

    fn plan(&mut self) -> Plan {
        self.plan_with(None)
    }

    /// Plans with a measured analysis window, as the controller does when one is due.
    fn plan_with(&mut self, measured: Option<&crate::analysis::Measured>) -> Plan {
        let input = Input {
            spec: &self.spec,
            generation: self.generation,
            annotations: &self.annotations,
            status: &self.status,
            pods: &self.pods,
            measured,
            now: t(self.now),
        };
        let plan = plan(&input);
        self.status = plan.status.clone();
        for (name, revision) in &plan.assign {
            let now = t(self.now);
            let pod = self.pods.iter_mut().find(|p| &p.name == name).unwrap();
            pod.assigned = revision.clone();
            pod.state = AckState::Pending;
            pod.reason = None;
            pod.since = now;
        }
        plan
    }

    /// Every pod with a pending assignment loads it.
    fn load_all(&mut self) {
        let now = t(self.now);
        for pod in self
            .pods
            .iter_mut()
            .filter(|p| p.state == AckState::Pending && p.connected)
        {
            pod.serving = pod.assigned.clone();
            pod.state = AckState::Loaded;
            pod.since = now;
        }
    }

    fn fail(&mut self, name: &str, reason: &str) {
        let now = t(self.now);
        let pod = self.pods.iter_mut().find(|p| p.name == name).unwrap();
        pod.state = AckState::Failed;
        pod.reason = Some(reason.into());
        pod.since = now;
    }

    /// Plans and loads until nothing changes (at most `rounds` times).
    fn converge(&mut self, rounds: usize) -> Vec<Note> {
        let mut notes = Vec::new();
        for _ in 0..rounds {
            let plan = self.plan();
            notes.extend(plan.notes);
            if plan.assign.is_empty() && !self.pods.iter().any(|p| p.state == AckState::Pending) {
                break;
            }
            self.load_all();
            self.now += 1;
        }
        notes
    }

    fn apply(&mut self, spec: PluginReleaseSpec) {
        self.spec = spec;
        self.generation += 1;
    }

    fn on(&self, revision: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| p.serving.as_deref() == Some(revision))
            .count()
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let c = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }
}

fn pod(name: &str) -> PodView {
    PodView {
        name: name.into(),
        connected: true,
        assigned: None,
        serving: None,
        state: AckState::Pending,
        reason: None,
        since: t(0),
        conflict: None,
        workers: 0,
        workers_loaded: 0,
    }
}

fn rev(digest: &str) -> String {
    revision_of(&spec(digest, json!({})))
}

#[path = "planner_analysis_tests.rs"]
mod analysis;

#[test]
fn rollout_goes_in_batches_of_max_unavailable_then_completes() {
    let mut fleet = Fleet::stable(5, spec(OLD, json!({"maxUnavailable": 2})));
    fleet.apply(spec(NEW, json!({"maxUnavailable": 2})));
    let new = rev(NEW);

    let first = fleet.plan();
    assert_eq!(first.assign.len(), 2, "first batch: {:?}", first.assign);
    assert!(
        first
            .assign
            .iter()
            .all(|(_, r)| r.as_deref() == Some(new.as_str()))
    );
    assert_eq!(fleet.status.phase, Some(Phase::Progressing));
    assert_eq!(fleet.status.target_revision.as_deref(), Some(new.as_str()));
    assert_eq!(fleet.status.history[0].outcome, Outcome::Progressing);
    assert!(first.notes.iter().any(|n| n.reason == "RolloutStarted"));
    // Nothing more until the batch acknowledges.
    assert!(fleet.plan().assign.is_empty());

    fleet.load_all();
    assert_eq!(fleet.plan().assign.len(), 2, "second batch");
    fleet.load_all();
    assert_eq!(fleet.plan().assign.len(), 1, "last pod");
    fleet.load_all();
    let done = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.status.stable_revision.as_deref(), Some(new.as_str()));
    assert_eq!(fleet.status.progress.as_deref(), Some("5/5"));
    assert_eq!(fleet.status.history[0].outcome, Outcome::Stable);
    assert_eq!(
        fleet.status.history[1].outcome,
        Outcome::Stable,
        "the old revision stays in history"
    );
    assert_eq!(
        fleet.condition("Ready"),
        ("True".into(), "RolloutCompleted".into())
    );
    assert_eq!(fleet.condition("Progressing").0, "False");
    assert_eq!(fleet.condition("Reconciling").0, "False");
    assert_eq!(fleet.condition("Stalled").0, "False");
    assert!(done.notes.iter().any(|n| n.reason == "RolloutCompleted"));
    assert_eq!(fleet.on(&new), 5);
}

#[test]
fn percentages_round_up_to_at_least_one_pod_and_failures_round_down() {
    let pct = |s: &str| IntOrString::String(s.into());
    assert_eq!(max_unavailable(&pct("10%"), 5), 1);
    assert_eq!(
        max_unavailable(&pct("0%"), 5),
        1,
        "a percentage never blocks the rollout"
    );
    assert_eq!(max_unavailable(&pct("25%"), 10), 3);
    assert_eq!(max_unavailable(&pct("100%"), 7), 7);
    assert_eq!(max_unavailable(&IntOrString::Int(3), 2), 3);
    assert_eq!(max_failures(&pct("10%"), 5), 0);
    assert_eq!(max_failures(&pct("50%"), 5), 2);
    assert_eq!(max_failures(&IntOrString::Int(1), 5), 1);
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("soon"), None);
}

#[test]
fn min_ready_seconds_holds_the_next_batch() {
    let strategy = json!({"maxUnavailable": 1, "minReadySeconds": 10});
    let mut fleet = Fleet::stable(2, spec(OLD, json!({"maxUnavailable": 1})));
    fleet.apply(spec(NEW, strategy));
    assert_eq!(fleet.plan().assign.len(), 1);
    fleet.load_all();
    fleet.now += 5;
    let waiting = fleet.plan();
    assert!(
        waiting.assign.is_empty(),
        "loaded 5s ago, minReadySeconds is 10"
    );
    assert!(waiting.requeue_after.is_some());
    assert_eq!(fleet.status.updated, 0);
    fleet.now += 6;
    assert_eq!(
        fleet.plan().assign.len(),
        1,
        "after minReadySeconds the next pod goes"
    );
}

#[test]
fn canary_step_pauses_until_resumed_by_annotation() {
    let strategy = json!({"maxUnavailable": "100%", "steps": [{"percent": 20, "pause": {}}, {"percent": 100}]});
    let mut fleet = Fleet::stable(10, spec(OLD, json!({})));
    fleet.apply(spec(NEW, strategy));
    let new = rev(NEW);
    assert_eq!(fleet.plan().assign.len(), 2, "20% of 10");
    fleet.load_all();
    let paused = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
    assert!(paused.notes.iter().any(|n| n.reason == "RolloutPaused"));
    assert_eq!(
        fleet.condition("Progressing"),
        ("False".into(), "RolloutPaused".into())
    );
    assert_eq!(
        fleet.condition("Reconciling"),
        ("True".into(), "RolloutPaused".into()),
        "kstatus: a paused rollout is still in progress"
    );
    fleet.now += 3600;
    assert!(fleet.plan().assign.is_empty(), "an open-ended pause holds");
    assert_eq!(fleet.on(&new), 2);

    fleet
        .annotations
        .insert(RESUME_ANNOTATION.into(), "1".into());
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&new), 10);
}

#[test]
fn canary_pause_is_released_by_toggling_spec_paused() {
    let strategy = json!({"steps": [{"percent": 20, "pause": {}}]});
    let mut fleet = Fleet::stable(5, spec(OLD, json!({})));
    fleet.apply(spec(NEW, strategy.clone()));
    fleet.converge(5);
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
    assert_eq!(fleet.on(&rev(NEW)), 1);
    let mut paused = spec(NEW, strategy.clone());
    paused.paused = true;
    fleet.apply(paused);
    fleet.converge(3);
    assert_eq!(fleet.on(&rev(NEW)), 1, "still held");
    fleet.apply(spec(NEW, strategy));
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(NEW)), 5);
}

#[test]
fn timed_pause_ends_by_itself() {
    let strategy =
        json!({"maxUnavailable": "100%", "steps": [{"percent": 50, "pause": {"duration": "30s"}}]});
    let mut fleet = Fleet::stable(4, spec(OLD, json!({})));
    fleet.apply(spec(NEW, strategy));
    fleet.plan();
    fleet.load_all();
    let held = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
    assert_eq!(held.requeue_after, Some(Duration::from_secs(30)));
    fleet.now += 10;
    assert_eq!(fleet.plan().requeue_after, Some(Duration::from_secs(20)));
    fleet.now += 21;
    let go = fleet.plan();
    assert_eq!(go.assign.len(), 2, "the rest after the pause");
    assert!(go.notes.iter().any(|n| n.reason == "RolloutStep"));
}

#[test]
fn a_failed_load_rolls_every_touched_pod_back_and_names_the_cause() {
    let mut fleet = Fleet::stable(5, spec(OLD, json!({"maxUnavailable": 2})));
    let old = rev(OLD);
    fleet.apply(spec(NEW, json!({"maxUnavailable": 2})));
    let batch = fleet.plan().assign;
    fleet.load_all();
    fleet.fail(&batch[1].0, "self-check trapped: unreachable");
    let plan = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    let message = fleet.status.message.clone().unwrap();
    assert!(
        message.contains(&batch[1].0) && message.contains("self-check trapped"),
        "{message}"
    );
    let decision = message
        .strip_suffix("; 2 pods still rolling back")
        .expect("the message counts the pods still rolling back");
    assert_eq!(
        plan.assign.len(),
        2,
        "both touched pods go back: {:?}",
        plan.assign
    );
    assert!(
        plan.assign
            .iter()
            .all(|(_, r)| r.as_deref() == Some(old.as_str()))
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.warning && n.reason == "RolledBack")
    );
    assert_eq!(
        fleet.condition("Degraded"),
        ("True".into(), "RolledBack".into())
    );
    assert_eq!(fleet.condition("Ready").0, "False");
    assert_eq!(
        fleet.condition("Stalled"),
        ("False".into(), "RollingBack".into()),
        "not finished while the touched pods are on their way back"
    );
    assert_eq!(
        fleet.condition("Reconciling"),
        ("True".into(), "RollingBack".into())
    );
    assert_eq!(fleet.status.history[0].outcome, Outcome::RolledBack);

    fleet.load_all();
    let notes = fleet.converge(5);
    assert_eq!(
        fleet.status.phase,
        Some(Phase::RolledBack),
        "stays rolled back"
    );
    assert_eq!(fleet.on(&old), 5);
    assert_eq!(fleet.status.stable_revision.as_deref(), Some(old.as_str()));
    assert_eq!(
        fleet.condition("Stalled"),
        ("True".into(), "RolledBack".into()),
        "finished: it waits for a person"
    );
    assert_eq!(fleet.condition("Reconciling").0, "False");
    assert_eq!(fleet.status.message.as_deref(), Some(decision));
    assert!(notes.iter().any(|n| n.reason == "RollbackCompleted"));
}

#[test]
fn pause_policy_holds_where_it_failed() {
    let policy = json!({"maxUnavailable": 1});
    let mut failing = spec(NEW, policy.clone());
    failing.failure_policy.action = FailureAction::Pause;
    let mut fleet = Fleet::stable(3, spec(OLD, policy));
    fleet.apply(failing);
    let batch = fleet.plan().assign;
    fleet.fail(&batch[0].0, "invalid wasm");
    let plan = fleet.plan();
    assert!(plan.assign.is_empty());
    assert_eq!(fleet.status.phase, Some(Phase::Degraded));
    assert_eq!(fleet.status.history[0].outcome, Outcome::Failed);
    fleet.now += 60;
    assert!(
        fleet.plan().assign.is_empty(),
        "no further pods after a paused failure"
    );
}

#[test]
fn max_failures_tolerates_that_many() {
    let mut tolerant = spec(NEW, json!({"maxUnavailable": "100%"}));
    tolerant.failure_policy.max_failures = IntOrString::Int(1);
    let mut fleet = Fleet::stable(4, spec(OLD, json!({})));
    fleet.apply(tolerant);
    fleet.plan();
    fleet.load_all();
    fleet.fail("pod-2", "flaky");
    fleet.plan();
    assert_ne!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(fleet.status.failed, 1);
    assert_eq!(
        fleet.status.pods[0].pod, "pod-2",
        "failures are listed first"
    );
}

#[test]
fn retry_annotation_tries_a_rolled_back_revision_again() {
    let mut fleet = Fleet::stable(2, spec(OLD, json!({"maxUnavailable": 1})));
    fleet.apply(spec(NEW, json!({"maxUnavailable": 1})));
    let batch = fleet.plan().assign;
    fleet.fail(&batch[0].0, "missing host function");
    fleet.plan();
    fleet.load_all();
    fleet.converge(3);
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));

    fleet
        .annotations
        .insert(RETRY_ANNOTATION.into(), "after-fix".into());
    let retry = fleet.plan();
    assert!(retry.notes.iter().any(|n| n.reason == "RolloutRetried"));
    assert_eq!(retry.assign.len(), 1);
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(NEW)), 2);
}

#[test]
fn abort_rolls_touched_pods_back_and_a_retry_starts_again() {
    let mut fleet = Fleet::stable(4, spec(OLD, json!({"maxUnavailable": 1})));
    fleet.apply(spec(
        NEW,
        json!({"maxUnavailable": 1, "minReadySeconds": 60}),
    ));
    let batch = fleet.plan().assign;
    fleet.load_all();
    fleet.now += 1;
    fleet.plan();
    fleet
        .annotations
        .insert(ABORT_ANNOTATION.into(), "2026-11-23T23:00:00Z".into());
    let abort = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert!(
        abort
            .notes
            .iter()
            .any(|n| n.warning && n.reason == "RolloutAborted"),
        "{:?}",
        abort.notes
    );
    assert_eq!(abort.assign, vec![(batch[0].0.clone(), Some(rev(OLD)))]);
    assert!(
        fleet
            .status
            .message
            .clone()
            .unwrap()
            .contains("aborted by the user")
    );
    fleet.load_all();
    fleet.converge(5);
    assert_eq!(fleet.on(&rev(OLD)), 4, "all back on the stable revision");
    assert_eq!(
        fleet.status.phase,
        Some(Phase::RolledBack),
        "the same token aborts once"
    );

    fleet
        .annotations
        .insert(RETRY_ANNOTATION.into(), "again".into());
    for _ in 0..6 {
        fleet.converge(5);
        fleet.now += 61;
    }
    fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(NEW)), 4);
}

#[test]
fn abort_of_a_finished_rollout_changes_nothing() {
    let mut fleet = Fleet::stable(2, spec(OLD, json!({})));
    fleet
        .annotations
        .insert(ABORT_ANNOTATION.into(), "late".into());
    let plan = fleet.plan();
    assert!(plan.assign.is_empty());
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.status.abort_token.as_deref(), Some("late"));
}

#[test]
fn reverting_the_spec_returns_to_the_stable_revision_from_cache() {
    let mut fleet = Fleet::stable(3, spec(OLD, json!({"maxUnavailable": 1})));
    fleet.apply(spec(NEW, json!({"maxUnavailable": 1})));
    fleet.plan();
    fleet.load_all();
    fleet.plan();
    assert_eq!(fleet.on(&rev(NEW)), 1);
    // GitOps revert: the old artifact again.
    fleet.apply(spec(OLD, json!({"maxUnavailable": 1})));
    fleet.converge(5);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(OLD)), 3);
    let new = fleet
        .status
        .history
        .iter()
        .find(|r| r.revision == rev(NEW))
        .unwrap();
    assert_eq!(new.outcome, Outcome::Superseded);
}

#[test]
fn pods_appearing_mid_rollout_start_stable_and_vanished_pods_do_not_block() {
    let mut fleet = Fleet::stable(3, spec(OLD, json!({"maxUnavailable": 1})));
    fleet.apply(spec(NEW, json!({"maxUnavailable": 1})));
    fleet.plan();
    fleet.pods.push(pod("late"));
    let plan = fleet.plan();
    assert!(
        plan.assign.contains(&("late".into(), Some(rev(OLD)))),
        "{:?}",
        plan.assign
    );
    fleet.load_all();
    fleet.pods.retain(|p| p.name != "pod-2");
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.status.matched, 3);
    assert_eq!(fleet.on(&rev(NEW)), 3);
}

#[test]
fn after_a_restart_pods_are_planned_nothing_until_their_sidecars_say_what_they_run() {
    let strategy = json!({"maxUnavailable": 1});
    let mut fleet = Fleet::stable(3, spec(OLD, strategy.clone()));
    fleet.apply(spec(NEW, strategy));
    let (old, new) = (rev(OLD), rev(NEW));
    fleet.plan();
    fleet.load_all();
    assert_eq!(fleet.on(&new), 1);
    // The operator restarts: it knows no pod until its sidecar connects and says hello.
    fleet.now += 1;
    let known: Vec<PodView> = std::mem::take(&mut fleet.pods);
    fleet.pods = known
        .iter()
        .map(|p| PodView {
            connected: false,
            ..pod(&p.name)
        })
        .collect();
    let plan = fleet.plan();
    assert_eq!(plan.assign, vec![], "nothing can reach an unknown pod");
    // pod-0 says it runs the target: it is not sent back to the stable revision.
    fleet.pods[0] = PodView {
        since: t(fleet.now),
        ..known[0].clone()
    };
    let plan = fleet.plan();
    assert!(
        plan.assign.iter().all(|(pod, _)| pod != "pod-0"),
        "{:?}",
        plan.assign
    );
    assert_eq!(fleet.pods[0].serving.as_deref(), Some(new.as_str()));
    // The others come back on the stable revision, and the rollout goes on from there.
    fleet.pods[1] = known[1].clone();
    fleet.pods[2] = known[2].clone();
    assert_eq!(fleet.on(&old), 2);
    fleet.converge(20);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&new), 3);
}

#[test]
fn a_stalled_rollout_turns_degraded_after_the_deadline_but_goes_on() {
    let mut slow = spec(NEW, json!({"maxUnavailable": 1}));
    slow.progress_deadline_seconds = 60;
    let mut fleet = Fleet::stable(2, spec(OLD, json!({})));
    fleet.apply(slow);
    fleet.plan();
    fleet.now += 30;
    assert_eq!(fleet.plan().status.phase, Some(Phase::Progressing));
    fleet.now += 31;
    let late = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Degraded));
    assert!(
        late.notes
            .iter()
            .any(|n| n.reason == "ProgressDeadlineExceeded")
    );
    assert_eq!(
        fleet.condition("Degraded"),
        ("True".into(), "ProgressDeadlineExceeded".into())
    );
    fleet.load_all();
    fleet.converge(5);
    assert_eq!(
        fleet.status.phase,
        Some(Phase::Completed),
        "progress clears Degraded"
    );
}

#[test]
fn spec_paused_stops_new_assignments() {
    let mut paused = spec(NEW, json!({"maxUnavailable": 1}));
    paused.paused = true;
    let mut fleet = Fleet::stable(3, spec(OLD, json!({})));
    fleet.apply(paused);
    assert!(fleet.plan().assign.is_empty());
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
}

#[test]
fn unpausing_spec_paused_resumes_the_rollout_without_tripping_the_deadline() {
    let strategy = json!({"maxUnavailable": 1});
    let mut fleet = Fleet::stable(3, spec(OLD, strategy.clone()));
    let mut paused = spec(NEW, strategy.clone());
    paused.paused = true;
    fleet.apply(paused);
    fleet.converge(3);
    assert_eq!(fleet.status.phase, Some(Phase::Paused));
    assert_eq!(fleet.on(&rev(NEW)), 0);

    fleet.now += 3600; // paused far longer than progressDeadlineSeconds (600 s)
    fleet.apply(spec(NEW, strategy));
    fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::Progressing), "unpaused");
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(NEW)), 3);
}

#[test]
fn a_pod_failing_the_stable_revision_after_completion_is_no_rollback() {
    let mut fleet = Fleet::stable(3, spec(OLD, json!({})));
    let stable = rev(OLD);
    fleet.pods[1].serving = None;
    fleet.fail("pod-1", "out of memory");
    let plan = fleet.plan();
    assert_ne!(fleet.status.phase, Some(Phase::RolledBack));
    assert!(!plan.notes.iter().any(|n| n.reason == "RolledBack"));
    assert_eq!(fleet.status.stable_revision.as_ref(), Some(&stable));
    let ack = fleet.status.pods.iter().find(|a| a.pod == "pod-1").unwrap();
    assert_eq!(ack.state, AckState::Failed);
    assert_eq!(ack.reason.as_deref(), Some("out of memory"));
    assert_eq!(
        fleet.status.history[0].outcome,
        Outcome::Stable,
        "the stable revision's record stays as it was"
    );
}

/// Two pods, one at a time, failurePolicy Pause: the first pod of NEW fails and the release
/// is Degraded. Returns the fleet and the failed pod.
fn paused_on_failure() -> (Fleet, String) {
    let strategy = json!({"maxUnavailable": 1});
    let mut fleet = Fleet::stable(2, spec(OLD, strategy.clone()));
    let mut new = spec(NEW, strategy);
    new.failure_policy.action = FailureAction::Pause;
    fleet.apply(new);
    let failed = fleet.plan().assign[0].0.clone();
    fleet.now += 1;
    fleet.fail(&failed, "fetch: 404 Not Found");
    fleet.converge(3);
    assert_eq!(fleet.status.phase, Some(Phase::Degraded));
    for type_ in ["Ready", "Progressing", "Degraded", "Stalled"] {
        assert_eq!(
            fleet.condition(type_).1,
            "RolloutFailed",
            "{type_} says why it is degraded"
        );
    }
    (fleet, failed)
}

#[test]
fn abort_after_a_pause_on_failure_rolls_back() {
    let (mut fleet, failed) = paused_on_failure();

    fleet
        .annotations
        .insert(ABORT_ANNOTATION.into(), "give-up".into());
    let abort = fleet.plan();
    assert!(abort.notes.iter().any(|n| n.reason == "RolloutAborted"));
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(
        abort.assign,
        vec![(failed, Some(rev(OLD)))],
        "the failed pod goes back to the stable revision"
    );
}

#[test]
fn a_pod_appearing_while_held_on_failure_starts_on_the_stable_revision() {
    let (mut fleet, failed) = paused_on_failure();
    fleet.pods.push(pod("pod-new"));
    let plan = fleet.plan();
    assert_eq!(
        plan.assign,
        vec![("pod-new".to_string(), Some(rev(OLD)))],
        "only the new pod is assigned; {failed} stays for a person to look at"
    );
    assert_eq!(fleet.status.phase, Some(Phase::Degraded));
}

#[test]
fn a_crash_looping_pod_fails_the_rollout_like_any_failed_load() {
    // The controller turns a pod that crash-loops while loading into a Failed view
    // (crashloop.rs); the failure policy then acts on it and status carries the cause.
    let mut fleet = Fleet::stable(3, spec(OLD, json!({})));
    fleet.apply(spec(NEW, json!({"maxUnavailable": 1})));
    let first = fleet.plan().assign[0].0.clone();
    fleet.now += 1;
    let cause = format!(
        "container app restarted 3 times while loading revision {} (last state: Error, exit code 1)",
        rev(NEW)
    );
    let pod = fleet.pods.iter_mut().find(|p| p.name == first).unwrap();
    pod.state = AckState::Failed;
    pod.reason = Some(cause.clone());
    let plan = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(plan.assign, vec![(first.clone(), Some(rev(OLD)))]);
    let message = fleet.status.message.clone().unwrap();
    assert!(
        message.starts_with(&format!(
            "pod {first} failed to load revision {}: {cause}",
            rev(NEW)
        )),
        "{message}"
    );
}

#[test]
fn status_shows_each_connected_pods_workers() {
    let mut fleet = Fleet::stable(3, spec(OLD, json!({})));
    fleet.pods[0].workers = 4;
    fleet.pods[0].workers_loaded = 3;
    fleet.pods[2].workers = 2;
    fleet.pods[2].workers_loaded = 2;
    fleet.pods[2].connected = false;
    fleet.plan();
    let ack = |name: &str| {
        let a = fleet.status.pods.iter().find(|a| a.pod == name).unwrap();
        (a.workers, a.workers_loaded)
    };
    assert_eq!(ack("pod-0"), (Some(4), Some(3)));
    assert_eq!(
        ack("pod-1"),
        (None, None),
        "a sidecar that counts no workers"
    );
    assert_eq!(
        ack("pod-2"),
        (None, None),
        "not connected: its count is stale"
    );
    let json = serde_json::to_value(&fleet.status.pods).unwrap();
    assert_eq!(json[0]["workers"], 4);
    assert_eq!(json[0]["workersLoaded"], 3);
    assert!(json[1].get("workers").is_none());
}

#[test]
fn unreachable_pods_wait_and_are_reported() {
    let mut fleet = Fleet::stable(2, spec(OLD, json!({})));
    fleet.pods[0].connected = false;
    fleet.apply(spec(NEW, json!({"maxUnavailable": "100%"})));
    let plan = fleet.plan();
    assert_eq!(plan.assign, vec![("pod-1".to_string(), Some(rev(NEW)))]);
    assert_eq!(fleet.status.unreachable, 1);
    let ack = fleet.status.pods.iter().find(|a| a.pod == "pod-0").unwrap();
    assert_eq!(ack.state, AckState::Unreachable);
}

#[test]
fn contested_pods_are_skipped_with_a_condition() {
    let mut fleet = Fleet::stable(2, spec(OLD, json!({})));
    fleet.pods[1].conflict = Some("shop/older-auth".into());
    fleet.apply(spec(NEW, json!({"maxUnavailable": "100%"})));
    let plan = fleet.plan();
    assert_eq!(plan.assign, vec![("pod-0".to_string(), Some(rev(NEW)))]);
    let (status, reason) = fleet.condition("Conflict");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PluginOwnedElsewhere")
    );
    fleet.converge(5);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(
        (fleet.status.matched, fleet.status.updated),
        (1, 1),
        "counts are of the pods this release manages"
    );
    assert_eq!(fleet.status.progress.as_deref(), Some("1/1"));
    assert_eq!(
        owner(&[(t(5), "shop/b"), (t(1), "shop/z"), (t(1), "shop/a")]),
        Some("shop/a")
    );
}

#[test]
fn status_lists_every_pod_up_to_the_cap_then_only_unconverged_ones() {
    let mut fleet = Fleet::stable(300, spec(OLD, json!({"maxUnavailable": 10})));
    assert!(
        fleet.status.pods.is_empty(),
        "all converged: nothing to list beyond the cap"
    );
    fleet.apply(spec(NEW, json!({"maxUnavailable": 10})));
    fleet.plan();
    assert_eq!(fleet.status.pods.len(), POD_LIST_CAP);
    let mut small = Fleet::stable(3, spec(OLD, json!({})));
    small.plan();
    assert_eq!(small.status.pods.len(), 3, "small fleets list every pod");
}

#[test]
fn the_first_rollout_has_no_stable_revision_to_fall_back_to() {
    let mut fleet = Fleet {
        spec: spec(NEW, json!({"maxUnavailable": 1})),
        status: PluginReleaseStatus::default(),
        pods: vec![pod("a"), pod("b")],
        annotations: BTreeMap::new(),
        now: 0,
        generation: 1,
    };
    let plan = fleet.plan();
    assert_eq!(plan.assign.len(), 1);
    fleet.fail("a", "trap");
    let rollback = fleet.plan();
    assert_eq!(
        rollback.assign,
        vec![("a".to_string(), None)],
        "unload: nothing was there before"
    );
    assert!(
        fleet
            .status
            .message
            .unwrap()
            .contains("rolling back to no plugin")
    );
}

#[test]
fn the_stable_revision_outlives_a_short_history_so_a_rollback_can_find_its_artifact() {
    let mut old = spec(OLD, json!({}));
    old.revision_history_limit = 1;
    let mut fleet = Fleet::stable(2, old);
    let mut new = spec(NEW, json!({"maxUnavailable": 1}));
    new.revision_history_limit = 1;
    new.config = Some(json!({"mode": "new"}));
    fleet.apply(new);
    fleet.plan();
    let stable = fleet.status.stable_revision.clone().unwrap();
    let revisions: Vec<_> = fleet.status.history.iter().map(|r| &r.revision).collect();
    assert_eq!(revisions.len(), 2, "target plus stable: {revisions:?}");
    assert_eq!(revisions[1], &stable);
    assert_eq!(fleet.status.history[0].config, Some(json!({"mode": "new"})));
    assert_eq!(fleet.status.history[1].digest, OLD);
}

#[test]
fn retry_after_a_pause_on_failure_assigns_the_failed_pods_again() {
    let (mut fleet, failed) = paused_on_failure();
    assert!(
        fleet.plan().assign.is_empty(),
        "paused on failure: no pod moves"
    );

    fleet.now += 5;
    fleet
        .annotations
        .insert(RETRY_ANNOTATION.into(), "artifact-uploaded".into());
    let retry = fleet.plan();
    assert!(retry.notes.iter().any(|n| n.reason == "RolloutRetried"));
    assert_eq!(
        retry.assign,
        vec![(failed, Some(rev(NEW)))],
        "the pod that failed before the retry is assigned again"
    );
    assert_eq!(fleet.status.phase, Some(Phase::Progressing));
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&rev(NEW)), 2);
}

/// Three pods on OLD, two at a time to NEW: pod-1 loads NEW, pod-0 fails it, and the
/// release rolls both back. Returns the fleet right after the rollback was planned.
fn rolling_back() -> Fleet {
    let strategy = json!({"maxUnavailable": 2});
    let mut fleet = Fleet::stable(3, spec(OLD, strategy.clone()));
    fleet.apply(spec(NEW, strategy));
    let batch = fleet.plan().assign;
    assert_eq!(batch.len(), 2);
    fleet.now += 1;
    let pod = fleet.pods.iter_mut().find(|p| p.name == "pod-1").unwrap();
    pod.serving = pod.assigned.clone();
    pod.state = AckState::Loaded;
    fleet.fail("pod-0", "self-check trapped");
    let rollback = fleet.plan();
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    assert_eq!(
        rollback.assign,
        vec![
            ("pod-0".to_string(), Some(rev(OLD))),
            ("pod-1".to_string(), Some(rev(OLD)))
        ]
    );
    fleet
}

#[test]
fn a_pod_that_fails_to_load_the_stable_revision_is_sent_it_again_until_the_rollback_finishes() {
    let mut fleet = rolling_back();
    let (old, new) = (rev(OLD), rev(NEW));
    fleet.now += 1;
    fleet.fail("pod-1", "fetch: connection refused");
    fleet.load_all();
    let failed_at = fleet.now;
    let plan = fleet.plan();
    assert_eq!(
        plan.assign,
        vec![],
        "not at once: a lasting fault is not hammered"
    );
    assert_eq!(
        plan.requeue_after,
        Some(Duration::from_secs(30)),
        "planned again when the back-off is over"
    );
    assert_eq!(fleet.pods[1].serving.as_deref(), Some(new.as_str()));
    assert_eq!(fleet.status.phase, Some(Phase::RolledBack));
    let message = fleet.status.message.clone().unwrap();
    assert!(
        message.ends_with(&format!("rolling back to {old}; 1 pod still rolling back")),
        "{message}"
    );
    assert_eq!(
        fleet.condition("Reconciling"),
        ("True".into(), "RollingBack".into()),
        "not finished while pod-1 runs the broken revision"
    );
    assert_eq!(fleet.condition("Stalled").0, "False");
    assert_eq!(fleet.condition("Progressing").0, "True");
    assert_eq!(
        fleet.condition("Degraded"),
        ("True".into(), "RolledBack".into())
    );

    fleet.now = failed_at + 29;
    assert_eq!(fleet.plan().assign, vec![]);
    fleet.now = failed_at + 30;
    let again = fleet.plan();
    assert_eq!(again.assign, vec![("pod-1".to_string(), Some(old.clone()))]);
    // Failing again waits again; the fault passes and the rollback finishes.
    fleet.fail("pod-1", "fetch: connection refused");
    assert_eq!(fleet.plan().assign, vec![]);
    fleet.now += 30;
    assert_eq!(fleet.plan().assign.len(), 1);
    fleet.load_all();
    let done = fleet.plan();
    assert_eq!(fleet.on(&old), 3);
    assert!(done.notes.iter().any(|n| n.reason == "RollbackCompleted"));
    assert_eq!(
        fleet.condition("Stalled"),
        ("True".into(), "RolledBack".into())
    );
    assert_eq!(fleet.condition("Reconciling").0, "False");
    assert!(
        !fleet
            .status
            .message
            .clone()
            .unwrap()
            .contains("still rolling back")
    );
    assert_eq!(fleet.plan().assign, vec![], "nothing more to send");
}

#[test]
fn a_rollback_is_not_finished_while_a_touched_pod_is_unreachable() {
    let mut fleet = rolling_back();
    let old = rev(OLD);
    // pod-1's stream broke before the rollback reached it: it still runs NEW.
    let pod = fleet.pods.iter_mut().find(|p| p.name == "pod-1").unwrap();
    pod.assigned = Some(rev(NEW));
    pod.state = AckState::Loaded;
    pod.connected = false;
    fleet.now += 1;
    fleet.load_all();
    let plan = fleet.plan();
    assert_eq!(plan.assign, vec![]);
    assert_eq!(
        fleet.condition("Stalled"),
        ("False".into(), "RollingBack".into())
    );
    assert!(
        fleet
            .status
            .message
            .clone()
            .unwrap()
            .ends_with("; 1 pod still rolling back")
    );

    fleet.pods[1].connected = true;
    let reconnected = fleet.plan();
    assert_eq!(
        reconnected.assign,
        vec![("pod-1".to_string(), Some(old.clone()))]
    );
    fleet.load_all();
    fleet.plan();
    assert_eq!(fleet.on(&old), 3);
    assert_eq!(
        fleet.condition("Stalled"),
        ("True".into(), "RolledBack".into())
    );
}

#[test]
fn the_count_of_pods_still_rolling_back_never_piles_up_in_the_message() {
    let mut fleet = rolling_back();
    let first = fleet.status.message.clone().unwrap();
    let decision = first
        .strip_suffix("; 2 pods still rolling back")
        .unwrap_or_else(|| panic!("{first}"));
    // pod-0 never ran NEW and is on its way back: only pod-1 runs it.
    for _ in 0..3 {
        fleet.plan();
        assert_eq!(
            fleet.status.message,
            Some(format!("{decision}; 1 pod still rolling back"))
        );
    }
    // A failure reason that mimics the tail is kept as the sidecar wrote it.
    assert_eq!(
        decision_message("pod a failed: 3 pods still rolling back"),
        "pod a failed: 3 pods still rolling back"
    );
    assert_eq!(decision_message("x; 1 pod still rolling back"), "x");
}

/// Found by `hotload-e2e chaos` (seed 26): a release that completed and then gained a pod is
/// Progressing with its target already stable; an abort then rolled back "to" the target
/// itself and reported its pods as still rolling back forever.
#[test]
fn an_abort_after_the_rollout_completed_does_not_roll_back_to_the_target_itself() {
    let mut fleet = Fleet::stable(3, spec(OLD, json!({})));
    let old = rev(OLD);
    let mut late = pod("pod-late");
    late.connected = true;
    fleet.pods.push(late);
    fleet.plan();
    assert_eq!(
        fleet.status.phase,
        Some(Phase::Progressing),
        "the new pod is on its way"
    );

    fleet
        .annotations
        .insert(ABORT_ANNOTATION.into(), "1".into());
    let plan = fleet.plan();
    assert!(
        plan.notes.iter().all(|n| n.reason != "RolloutAborted"),
        "{:?}",
        plan.notes
    );
    assert_eq!(
        fleet.status.abort_token.as_deref(),
        Some("1"),
        "the request is used up"
    );
    fleet.converge(10);
    assert_eq!(fleet.status.phase, Some(Phase::Completed));
    assert_eq!(fleet.on(&old), 4);
    assert!(fleet.status.message.is_none(), "{:?}", fleet.status.message);
}

#[test]
fn history_stays_within_its_byte_budget_and_keeps_target_and_stable() {
    // Twelve revisions, each with a config of 30 KiB: twelve records would be 360 KiB.
    let big = |i: usize| {
        let mut s = spec(OLD, json!({}));
        s.revision_history_limit = 100;
        s.config = Some(json!({"blob": format!("{i:02}{}", "x".repeat(30 * 1024))}));
        s
    };
    let mut fleet = Fleet::stable(1, big(0));
    let first_stable = fleet.status.stable_revision.clone();
    for i in 1..12 {
        fleet.apply(big(i));
        fleet.converge(10);
    }
    let size: usize = fleet
        .status
        .history
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap().len())
        .sum();
    assert!(size <= HISTORY_MAX_BYTES, "{size} bytes of history");
    assert!(fleet.status.history.len() < 12 && fleet.status.history.len() >= 8);
    assert_eq!(
        fleet.status.history[0].revision,
        fleet.status.target_revision.clone().unwrap()
    );
    assert_ne!(fleet.status.stable_revision, first_stable);
    let stable = fleet.status.stable_revision.clone().unwrap();
    assert!(fleet.status.history.iter().any(|r| r.revision == stable));
}

#[test]
fn history_keeps_each_revisions_pull_secret_for_its_rollback() {
    let mut private = spec(OLD, json!({"maxUnavailable": 1}));
    private.artifact.pull_secret = Some("registry-creds".into());
    let mut fleet = Fleet::stable(2, private);
    // The next revision comes from a public HTTPS host, with no pull secret.
    let mut public = spec(NEW, json!({"maxUnavailable": 1}));
    public.artifact.url = "https://plugins.example/auth-2.wasm".into();
    fleet.apply(public.clone());
    fleet.plan();
    let record = |revision: &str| {
        fleet
            .status
            .history
            .iter()
            .find(|r| r.revision == revision)
            .cloned()
            .unwrap()
    };
    assert_eq!(record(&rev(NEW)).pull_secret, None);
    let stable = record(&rev(OLD));
    assert_eq!(
        stable.pull_secret.as_deref(),
        Some("registry-creds"),
        "a rollback to the stable revision must fetch it with the secret it was fetched with"
    );
    let back = crate::revision::source_of(&rev(OLD), &public, &fleet.status.history).unwrap();
    assert_eq!(back.pull_secret.as_deref(), Some("registry-creds"));
}
