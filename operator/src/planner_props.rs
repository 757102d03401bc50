//! Properties of the planner over random fleets, specs, statuses and clocks (proptest).
//!
//! Two generators: one plan from a random (possibly inconsistent) status, as an operator
//! may read it after an upgrade or a hand edit; and random walks of a rollout, each plan's
//! status and assignments fed back as the controller would, with acks, failures, time,
//! disconnects, scale changes and the retry/resume/abort annotations between plans. Every
//! plan must keep:
//! - at most maxUnavailable pods in flight (or no more than were already), and no more pods
//!   on the target than the current step's goal (or no more than were already), counting
//!   the pods that were assigned something: a new pod starts on the stable revision at once;
//! - a rollback sends the stable revision to exactly the touched pods (and new pods), and
//!   nothing else;
//! - the same input plans the same plan;
//! - every revision sent can be sourced from the spec or the history, and anything the last
//!   status did not allow comes with a decision (which the controller writes first).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::api::{
    AckState, FailureAction, Outcome, Pause, Phase, PluginReleaseSpec, PluginReleaseStatus,
    RevisionRecord, Step,
};
use crate::controller::durable::decides;

const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const GONE: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn t(seconds: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_800_000_000 + seconds)
}

fn base_spec(digest: &str) -> PluginReleaseSpec {
    serde_json::from_value(json!({
        "plugin": "auth",
        "selector": {"matchLabels": {"app": "shop"}},
        "artifact": {"url": format!("oci://127.0.0.1:5000/auth@{digest}"), "digest": digest},
    }))
    .unwrap()
}

fn rev(digest: &str) -> String {
    revision_of(&base_spec(digest))
}

fn int_or_percent(ints: std::ops::RangeInclusive<i32>) -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        ints.prop_map(IntOrString::Int),
        (0u32..=100).prop_map(|p| IntOrString::String(format!("{p}%"))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let pause = prop_oneof![
        Just(None),
        Just(Some(Pause { duration: None })),
        (0u32..=90).prop_map(|s| Some(Pause {
            duration: Some(format!("{s}s"))
        })),
    ];
    (proptest::option::of(1i32..=100), pause).prop_map(|(percent, pause)| match (percent, pause) {
        // The CRD refuses a step with neither.
        (None, None) => Step {
            percent: Some(50),
            pause: None,
        },
        (percent, pause) => Step { percent, pause },
    })
}

/// A spec that rolls NEW out, with any strategy and failure policy the CRD accepts.
fn spec() -> impl Strategy<Value = PluginReleaseSpec> {
    (
        int_or_percent(1..=6),
        proptest::collection::vec(step(), 0..=4),
        0i32..=20,
        prop_oneof![Just(FailureAction::Rollback), Just(FailureAction::Pause)],
        int_or_percent(0..=3),
        proptest::bool::weighted(0.1),
        1i32..=900,
        0i32..=4,
    )
        .prop_map(
            |(max_unavailable, steps, min_ready, action, max_failures, paused, deadline, keep)| {
                let mut spec = base_spec(NEW);
                spec.strategy.max_unavailable = max_unavailable;
                spec.strategy.steps = steps;
                spec.strategy.min_ready_seconds = min_ready;
                spec.failure_policy.action = action;
                spec.failure_policy.max_failures = max_failures;
                spec.paused = paused;
                spec.progress_deadline_seconds = deadline;
                spec.revision_history_limit = keep;
                spec
            },
        )
}

fn revision() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(rev(OLD))),
        Just(Some(rev(NEW))),
        Just(Some(rev(GONE))),
    ]
}

fn state() -> impl Strategy<Value = AckState> {
    prop_oneof![
        Just(AckState::Pending),
        Just(AckState::Loading),
        Just(AckState::Loaded),
        Just(AckState::Failed),
    ]
}

/// Any pod, as its sidecar may report it, at most 200 s into its state at `now` = t(1000).
fn pod(i: usize) -> impl Strategy<Value = PodView> {
    (
        revision(),
        revision(),
        state(),
        proptest::bool::weighted(0.85),
        0i64..=200,
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            move |(assigned, serving, state, connected, age, contested)| PodView {
                name: format!("pod-{i:02}"),
                connected,
                assigned,
                serving,
                state,
                reason: (state == AckState::Failed).then(|| "trap".into()),
                since: t(1000 - age),
                conflict: contested.then(|| "shop/other".into()),
                workers: 0,
                workers_loaded: 0,
            },
        )
}

fn fleet() -> impl Strategy<Value = Vec<PodView>> {
    (0usize..=12).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>())
}

fn record(revision: String, outcome: Outcome, age: i64) -> RevisionRecord {
    RevisionRecord {
        url: format!("oci://127.0.0.1:5000/auth#{revision}"),
        digest: OLD.into(),
        revision,
        config: None,
        signature: None,
        pull_secret: None,
        started_at: Time(t(1000 - age)),
        outcome,
        reason: None,
    }
}

/// A status as an operator writes it: any phase, step and clock, a target of NEW or an older
/// one, a stable revision (whose record the history keeps) or none, and the target's
/// outcome as the phase implies it (a rollback's is RolledBack; a Degraded release failed,
/// or missed its deadline). Or none at all: a release seen for the first time.
fn status() -> impl Strategy<Value = PluginReleaseStatus> {
    let phase = prop_oneof![
        Just(Phase::Progressing),
        Just(Phase::Paused),
        Just(Phase::Completed),
        Just(Phase::Degraded),
        Just(Phase::RolledBack),
    ];
    let token = || proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string())]);
    let written = (
        (
            phase,
            revision(),
            prop_oneof![Just(None), Just(Some(rev(OLD)))],
        ),
        (proptest::option::of(0i32..=5), 0i64..=300, 0i64..=1200),
        (any::<bool>(), 0i64..=300, 0u32..=10),
        (token(), token(), token()),
    )
        .prop_map(
            |(
                (phase, target, stable),
                (step, step_age, progress_age),
                (failed, age, updated),
                (retry, resume, abort),
            )| {
                let stable = if phase == Phase::Completed {
                    target.clone()
                } else {
                    stable
                };
                let outcome = match phase {
                    Phase::RolledBack => Outcome::RolledBack,
                    Phase::Completed => Outcome::Stable,
                    Phase::Degraded if failed => Outcome::Failed,
                    _ => Outcome::Progressing,
                };
                let mut history = Vec::new();
                if let Some(target) = &target {
                    history.push(record(target.clone(), outcome, age));
                }
                if let Some(stable) = stable.as_ref().filter(|s| Some(*s) != target.as_ref()) {
                    history.push(record(stable.clone(), Outcome::Stable, 900));
                }
                PluginReleaseStatus {
                    phase: target.is_some().then_some(phase),
                    target_revision: target,
                    stable_revision: stable,
                    current_step: step,
                    step_started_at: Some(Time(t(1000 - step_age))),
                    last_progress_at: Some(Time(t(1000 - progress_age))),
                    updated: i32::try_from(updated).unwrap_or(0),
                    history,
                    retry_token: retry,
                    resume_token: resume,
                    abort_token: abort,
                    ..PluginReleaseStatus::default()
                }
            },
        );
    prop_oneof![1 => Just(PluginReleaseStatus::default()), 9 => written]
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let token = || proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string())]);
    (token(), token(), token()).prop_map(|(retry, resume, abort)| {
        [
            (RETRY_ANNOTATION, retry),
            (RESUME_ANNOTATION, resume),
            (ABORT_ANNOTATION, abort),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value?)))
        .collect()
    })
}

/// The pods after the controller sent `plan`'s assignments (the registry marks each one
/// Pending from now).
fn sent(pods: &[PodView], plan: &Plan, now: Timestamp) -> Vec<PodView> {
    let mut after = pods.to_vec();
    for (name, revision) in &plan.assign {
        let pod = after.iter_mut().find(|p| &p.name == name).unwrap();
        pod.assigned = revision.clone();
        pod.state = AckState::Pending;
        pod.reason = None;
        pod.since = now;
    }
    after
}

/// Whether `status`, as written, lets `revision` be sent to `pod`: the target while the
/// rollout has not given up; the stable revision to a new pod, or to any pod once rolled
/// back.
fn allowed(status: &PluginReleaseStatus, pod: &PodView, revision: &Option<String>) -> bool {
    let target = status.target_revision.as_deref();
    let stable = &status.stable_revision;
    let to_target = revision.as_deref() == target
        && revision.is_some()
        && !target.is_some_and(|t| given_up(status, t));
    let to_stable =
        revision == stable && (pod.assigned.is_none() || status.phase == Some(Phase::RolledBack));
    to_target || to_stable
}

/// Checks every property of one plan; `Err` names the one broken.
fn check(input: &Input<'_>) -> Result<(), TestCaseError> {
    let plan = plan(input);
    prop_assert_eq!(
        &plan,
        &super::plan(input),
        "the same input plans the same plan"
    );

    let spec = input.spec;
    let status = &plan.status;
    let target = revision_of(spec);
    prop_assert_eq!(status.target_revision.as_deref(), Some(target.as_str()));
    let min_ready =
        Duration::from_secs(u64::try_from(spec.strategy.min_ready_seconds).unwrap_or(0));
    let now = input.now;
    let after = sent(input.pods, &plan, now);
    let eligible = |pods: &[PodView]| -> Vec<PodView> {
        pods.iter()
            .filter(|p| p.conflict.is_none())
            .cloned()
            .collect()
    };
    let (before, after) = (eligible(input.pods), eligible(&after));
    // A pod that was assigned nothing runs nothing (a scale-up): loading it takes nothing out
    // of service, so it starts at once on the stable revision (which may be the target)
    // whatever maxUnavailable and the step say, like a Deployment's new pods.
    let serving: Vec<&str> = before
        .iter()
        .filter(|p| p.assigned.is_some())
        .map(|p| p.name.as_str())
        .collect();
    let count = |pods: &[PodView], f: &dyn Fn(&PodView) -> bool| {
        pods.iter()
            .filter(|p| serving.contains(&p.name.as_str()) && f(p))
            .count()
    };
    let flight = |p: &PodView| in_flight(p, &target, min_ready, now);
    let on_target = |p: &PodView| flight(p) || updated(p, &target, min_ready, now);

    // maxUnavailable.
    let budget = max_unavailable(&spec.strategy.max_unavailable, before.len());
    let (flying_before, flying_after) = (count(&before, &flight), count(&after, &flight));
    prop_assert!(
        flying_after <= flying_before.max(budget),
        "{} pods in flight after the plan, {} before, maxUnavailable {}: {:?}",
        flying_after,
        flying_before,
        budget,
        plan.assign
    );

    // The current step's goal.
    let step = status.current_step.map_or(spec.strategy.steps.len(), |s| {
        usize::try_from(s).unwrap_or(0)
    });
    let goal = step_goal(spec, step, before.len());
    let (reached_before, reached_after) = (count(&before, &on_target), count(&after, &on_target));
    prop_assert!(
        reached_after <= reached_before.max(goal),
        "{} pods on the target after the plan, {} before, step {} wants {}: {:?}",
        reached_after,
        reached_before,
        step,
        goal,
        plan.assign
    );

    // Nothing goes to a pod this release does not manage, nor to a disconnected one; every
    // revision sent can be sourced.
    for (name, revision) in &plan.assign {
        let pod = before.iter().find(|p| &p.name == name);
        prop_assert!(
            pod.is_some_and(|p| p.connected),
            "{} is not reachable or not ours",
            name
        );
        match revision {
            Some(r) => prop_assert!(
                *r == target || status.history.iter().any(|h| h.revision == *r),
                "{} is sent {}, which neither the spec nor the history has",
                name,
                r
            ),
            None => prop_assert!(status.stable_revision.is_none(), "{} is unloaded", name),
        }
    }

    // A rollback sends exactly the touched pods (and new ones) back, only to the stable
    // revision; a pod whose rollback failed long enough ago is sent it again.
    let given_up_here = given_up(status, &target);
    if given_up_here {
        let stable = &status.stable_revision;
        for (name, revision) in &plan.assign {
            let pod = before.iter().find(|p| &p.name == name).unwrap();
            prop_assert_eq!(
                revision,
                stable,
                "given up: only the stable revision goes out"
            );
            prop_assert!(
                (touched(pod, &target) && status.phase == Some(Phase::RolledBack))
                    || pod.assigned.is_none(),
                "{} was not touched by the rollout",
                name
            );
        }
        if status.phase == Some(Phase::RolledBack) {
            for pod in before.iter().filter(|p| p.connected && touched(p, &target)) {
                let sent = plan.assign.iter().any(|(name, _)| *name == pod.name);
                let due = pod.assigned == *stable
                    && pod.state == AckState::Failed
                    && elapsed(pod.since, now) >= ROLLBACK_RESEND_AFTER;
                prop_assert_eq!(
                    sent,
                    pod.assigned != *stable || due,
                    "touched pod {:?} rolled back as it should",
                    pod
                );
            }
        }
    }

    // What the last status did not allow is sent only with a decision the controller
    // writes first.
    for (name, revision) in &plan.assign {
        let pod = before.iter().find(|p| &p.name == name).unwrap();
        prop_assert!(
            allowed(status, pod, revision),
            "{} is sent {:?} against its own plan",
            name,
            revision
        );
        prop_assert!(
            allowed(input.status, pod, revision) || decides(input.status, status),
            "{} is sent {:?}, which the written status does not allow, without a decision",
            name,
            revision
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn every_plan_from_any_status_keeps_the_rules(
        spec in spec(),
        pods in fleet(),
        status in status(),
        annotations in annotations(),
        generation in 1i64..=3,
    ) {
        let input = Input {
            spec: &spec,
            generation,
            annotations: &annotations,
            status: &status,
            pods: &pods,
            measured: None,
            now: t(1000),
        };
        check(&input)?;
    }
}

/// What happens between two plans of a walk.
#[derive(Clone, Debug)]
enum Event {
    /// The controller plans and sends.
    Plan,
    /// The pod at this index (modulo the fleet) finishes its load.
    Load(usize),
    /// Its load fails.
    Fail(usize),
    /// Every pending load finishes.
    LoadAll,
    /// Time passes.
    Tick(u16),
    /// Its sidecar's stream breaks, or comes back.
    Toggle(usize),
    /// A pod appears (scale-up).
    Add,
    /// A pod goes away.
    Remove(usize),
    /// A person asks for a retry, a resume or an abort.
    Ask(&'static str),
    /// spec.paused flips.
    Pause,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Plan),
        3 => (0usize..16).prop_map(Event::Load),
        1 => (0usize..16).prop_map(Event::Fail),
        3 => Just(Event::LoadAll),
        3 => (0u16..=90).prop_map(Event::Tick),
        1 => (0usize..16).prop_map(Event::Toggle),
        1 => Just(Event::Add),
        1 => (0usize..16).prop_map(Event::Remove),
        1 => prop_oneof![Just(RETRY_ANNOTATION), Just(RESUME_ANNOTATION), Just(ABORT_ANNOTATION)]
            .prop_map(Event::Ask),
        1 => Just(Event::Pause),
    ]
}

/// A fleet walked through a rollout.
struct Walk {
    spec: PluginReleaseSpec,
    status: PluginReleaseStatus,
    pods: Vec<PodView>,
    annotations: BTreeMap<String, String>,
    now: i64,
    born: usize,
    asked: usize,
}

impl Walk {
    /// `n` pods that run OLD, rolled out and stable.
    fn stable(n: usize) -> Self {
        let mut walk = Walk {
            spec: base_spec(OLD),
            status: PluginReleaseStatus::default(),
            pods: Vec::new(),
            annotations: BTreeMap::new(),
            now: 0,
            born: 0,
            asked: 0,
        };
        for _ in 0..n {
            walk.add();
        }
        for _ in 0..4 * n + 2 {
            walk.step(false).unwrap();
            walk.load_all();
        }
        assert_eq!(walk.status.phase, Some(Phase::Completed));
        walk
    }

    fn add(&mut self) {
        self.pods.push(PodView {
            name: format!("pod-{:02}", self.born),
            connected: true,
            assigned: None,
            serving: None,
            state: AckState::Pending,
            reason: None,
            since: t(self.now),
            conflict: None,
            workers: 0,
            workers_loaded: 0,
        });
        self.born += 1;
    }

    /// Plans (checking every property when `check` is set) and sends.
    fn step(&mut self, checked: bool) -> Result<(), TestCaseError> {
        let input = Input {
            spec: &self.spec,
            generation: 1,
            annotations: &self.annotations,
            status: &self.status,
            pods: &self.pods,
            measured: None,
            now: t(self.now),
        };
        if checked {
            check(&input)?;
        }
        let plan = plan(&input);
        self.pods = sent(&self.pods, &plan, t(self.now));
        self.status = plan.status;
        Ok(())
    }

    fn load_all(&mut self) {
        for i in 0..self.pods.len() {
            self.load(i);
        }
    }

    fn load(&mut self, i: usize) {
        let now = t(self.now);
        if let Some(pod) = self.pods.get_mut(i)
            && pod.connected
            && matches!(pod.state, AckState::Pending | AckState::Loading)
        {
            pod.serving = pod.assigned.clone();
            pod.state = AckState::Loaded;
            pod.since = now;
        }
    }

    fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
        let n = self.pods.len().max(1);
        match *event {
            Event::Plan => self.step(true)?,
            Event::Load(i) => self.load(i % n),
            Event::LoadAll => self.load_all(),
            Event::Fail(i) => {
                let now = t(self.now);
                if let Some(pod) = self.pods.get_mut(i % n)
                    && pod.connected
                    && matches!(pod.state, AckState::Pending | AckState::Loading)
                {
                    pod.state = AckState::Failed;
                    pod.reason = Some("self-check trapped".into());
                    pod.since = now;
                }
            }
            Event::Tick(seconds) => self.now += i64::from(seconds),
            Event::Toggle(i) => {
                if let Some(pod) = self.pods.get_mut(i % n) {
                    pod.connected = !pod.connected;
                }
            }
            Event::Add => self.add(),
            Event::Remove(i) => {
                if i % n < self.pods.len() {
                    self.pods.remove(i % n);
                }
            }
            Event::Ask(annotation) => {
                self.asked += 1;
                self.annotations
                    .insert(annotation.to_string(), format!("ask-{}", self.asked));
            }
            Event::Pause => self.spec.paused = !self.spec.paused,
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_plan_of_a_rollout_keeps_the_rules(
        n in 1usize..=10,
        spec in spec(),
        events in proptest::collection::vec(event(), 1..=60),
    ) {
        let mut walk = Walk::stable(n);
        walk.spec = spec;
        for event in &events {
            walk.apply(event)?;
        }
        walk.step(true)?;
    }
}
