//! Which plans may go out before their status is written, and the order in which
//! [`carry_out`] performs them, including when the write fails.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use futures::executor::block_on;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::api::{AckState, Phase, PluginReleaseSpec};
use crate::planner::{ABORT_ANNOTATION, Input, PodView, plan};
use crate::revision::revision_of;

const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn spec(digest: &str) -> PluginReleaseSpec {
    serde_json::from_value(json!({
        "plugin": "auth",
        "selector": {"matchLabels": {"app": "shop"}},
        "artifact": {"url": "oci://127.0.0.1:5000/auth:1", "digest": digest},
        "strategy": {"maxUnavailable": 1},
    }))
    .unwrap()
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_800_000_000 + seconds)
}

fn on(name: &str, digest: &str) -> PodView {
    let revision = revision_of(&spec(digest));
    PodView {
        name: name.into(),
        connected: true,
        assigned: Some(revision.clone()),
        serving: Some(revision),
        state: AckState::Loaded,
        reason: None,
        since: t(0),
        conflict: None,
        workers: 0,
        workers_loaded: 0,
    }
}

/// A release that runs OLD on three pods, about to roll NEW out one pod at a time.
struct Release {
    spec: PluginReleaseSpec,
    annotations: BTreeMap<String, String>,
    status: PluginReleaseStatus,
    pods: Vec<PodView>,
    now: i64,
}

impl Release {
    fn stable() -> Self {
        let mut release = Release {
            spec: spec(OLD),
            annotations: BTreeMap::new(),
            status: PluginReleaseStatus::default(),
            pods: (0..3).map(|i| on(&format!("pod-{i}"), OLD)).collect(),
            now: 0,
        };
        release.status = release.plan().status;
        assert_eq!(release.status.phase, Some(Phase::Completed));
        release
    }

    fn plan(&self) -> Plan {
        plan(&Input {
            spec: &self.spec,
            generation: 1,
            annotations: &self.annotations,
            status: &self.status,
            pods: &self.pods,
            measured: None,
            now: t(self.now),
        })
    }

    /// The sidecars take what was sent.
    fn receive(&mut self, sent: &[(String, Option<String>)]) {
        for (name, revision) in sent {
            let pod = self.pods.iter_mut().find(|p| &p.name == name).unwrap();
            pod.assigned = revision.clone();
            pod.state = AckState::Pending;
            pod.since = t(self.now);
        }
    }

    fn load_all(&mut self) {
        for pod in &mut self.pods {
            if pod.state == AckState::Pending {
                pod.serving = pod.assigned.clone();
                pod.state = AckState::Loaded;
            }
        }
    }

    fn fail(&mut self, name: &str) {
        let pod = self.pods.iter_mut().find(|p| p.name == name).unwrap();
        pod.state = AckState::Failed;
        pod.reason = Some("self-check trapped".into());
        pod.since = t(self.now);
    }
}

/// Memory whose status is durable as it stands, written long ago.
fn durable(status: &PluginReleaseStatus, clock: Instant) -> Memory {
    Memory {
        status: status.clone(),
        written: Some(clock - Duration::from_secs(30)),
        ..Memory::default()
    }
}

#[test]
fn a_new_target_and_a_rollback_are_written_before_they_are_sent() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    assert_eq!(start.assign.len(), 1, "the first pod gets the new target");
    let memory = durable(&release.status, clock);
    assert_eq!(
        publication(&memory, Some(&release.status), &start.status, clock),
        Publication::WriteThenSend,
        "a new target leaves the stable revision behind: durable first"
    );

    release.status = start.status.clone();
    release.receive(&start.assign);
    release.fail(&start.assign[0].0);
    let rollback = release.plan();
    assert_eq!(rollback.status.phase, Some(Phase::RolledBack));
    assert!(!rollback.assign.is_empty());
    let memory = durable(&release.status, clock);
    assert_eq!(
        publication(&memory, Some(&release.status), &rollback.status, clock),
        Publication::WriteThenSend,
        "a rollback is written before any pod is sent back"
    );
    assert_eq!(
        publication(&memory, Some(&rollback.status), &rollback.status, clock),
        Publication::Send,
        "once the API server has it, it goes out"
    );
}

#[test]
fn acks_that_decide_nothing_go_out_at_once_and_their_writes_are_coalesced() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    release.status = start.status.clone();
    release.receive(&start.assign);
    release.load_all();
    release.now += 1;
    let next = release.plan();
    assert!(!next.assign.is_empty(), "the next batch: {:?}", next.assign);
    assert!(!decides(&release.status, &next.status));

    let written_long_ago = durable(&release.status, clock);
    assert_eq!(
        publication(&written_long_ago, None, &next.status, clock),
        Publication::SendThenWrite
    );
    let just_written = Memory {
        written: Some(clock - Duration::from_millis(300)),
        ..written_long_ago
    };
    assert_eq!(
        publication(&just_written, None, &next.status, clock),
        Publication::SendThenWriteAfter(Duration::from_millis(700))
    );
}

#[test]
fn the_decisions_are_the_fields_that_say_what_pods_run_or_which_requests_were_acted_on() {
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let base = release.plan().status;
    let with = |change: &dyn Fn(&mut PluginReleaseStatus)| {
        let mut status = base.clone();
        change(&mut status);
        decides(&base, &status)
    };
    assert!(with(&|s| s.phase = Some(Phase::RolledBack)));
    assert!(with(&|s| s.target_revision = Some("other".into())));
    assert!(with(&|s| s.stable_revision = None));
    assert!(with(&|s| s.current_step = Some(2)));
    assert!(with(&|s| s.step_started_at = None));
    assert!(with(&|s| s.history.clear()));
    assert!(with(&|s| s.abort_token = Some("now".into())));
    assert!(with(&|s| s.retry_token = Some("now".into())));
    assert!(with(&|s| s.resume_token = Some("now".into())));
    // Progress: counts, pods, conditions, the message, the deadline's clock.
    assert!(!with(&|s| s.updated = 3));
    assert!(!with(&|s| s.pods.clear()));
    assert!(!with(&|s| s.conditions.clear()));
    assert!(!with(
        &|s| s.message = Some("made no progress for 601s".into())
    ));
    assert!(!with(&|s| s.last_progress_at = None));
    assert!(!with(&|s| s.observed_generation = Some(7)));
}

#[test]
fn an_abort_is_a_decision() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    release.status = start.status.clone();
    release.receive(&start.assign);
    release
        .annotations
        .insert(ABORT_ANNOTATION.into(), "stop".into());
    let abort = release.plan();
    assert_eq!(abort.status.phase, Some(Phase::RolledBack));
    assert_eq!(
        publication(&durable(&release.status, clock), None, &abort.status, clock),
        Publication::WriteThenSend
    );
}

#[test]
fn after_failed_writes_a_decision_waits_out_the_back_off_and_progress_is_not_written() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    let failing = Memory {
        failures: 3,
        failed_at: Some(clock - Duration::from_secs(1)),
        ..durable(&release.status, clock)
    };
    assert_eq!(write_backoff(3), Duration::from_secs(4));
    assert_eq!(
        publication(&failing, None, &start.status, clock),
        Publication::Wait(Duration::from_secs(3))
    );
    let progress = PluginReleaseStatus {
        updated: 2,
        ..release.status.clone()
    };
    assert_eq!(
        publication(&failing, None, &progress, clock),
        Publication::SendThenWriteAfter(Duration::from_secs(3))
    );
    let later = clock + Duration::from_secs(3);
    assert_eq!(
        publication(&failing, None, &start.status, later),
        Publication::WriteThenSend
    );
    assert_eq!(
        (1..=9)
            .map(|n| write_backoff(n).as_secs())
            .collect::<Vec<_>>(),
        [1, 2, 4, 8, 16, 32, 60, 60, 60]
    );
}

/// What a reconcile did, in order.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Write(Option<Phase>),
    Send(Vec<(String, Option<String>)>),
    Record(&'static str),
}

/// Stands in for the API server and the sidecar registry, which a unit test cannot run: it
/// records each effect, and its status writes fail while `refuse` is set.
#[derive(Default)]
struct Witness {
    calls: RefCell<Vec<Call>>,
    refuse: Cell<bool>,
}

impl Witness {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

impl Effects for Witness {
    async fn write(&self, status: &PluginReleaseStatus) -> Result<(), kube::Error> {
        self.calls.borrow_mut().push(Call::Write(status.phase));
        if self.refuse.get() {
            let refusal = kube::core::Status::failure("etcdserver: request timed out", "Timeout");
            return Err(kube::Error::Api(refusal.with_code(504).boxed()));
        }
        Ok(())
    }

    async fn send(&self, plan: &Plan) {
        self.calls
            .borrow_mut()
            .push(Call::Send(plan.assign.clone()));
    }

    async fn record(&self, note: &Note, _revision: Option<&str>) {
        self.calls.borrow_mut().push(Call::Record(note.reason));
    }
}

#[test]
fn a_rollback_whose_write_fails_sends_nothing_and_is_sent_once_written() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    release.status = start.status.clone();
    release.receive(&start.assign);
    release.fail(&start.assign[0].0);
    let memory = durable(&release.status, clock);

    let witness = Witness::default();
    witness.refuse.set(true);
    let carried = block_on(carry_out(
        &witness,
        memory,
        release.plan(),
        Some(&release.status),
        clock,
    ));
    assert_eq!(
        witness.take(),
        [Call::Write(Some(Phase::RolledBack))],
        "the write failed: no pod is sent anything, no event is recorded"
    );
    assert!(carried.error.is_some());
    assert_eq!(
        carried.memory.status.phase,
        Some(Phase::Progressing),
        "the next plan starts from the durable status and decides again"
    );
    assert_eq!(carried.memory.failures, 1);

    // Planned again at once (a pod's report woke it): the back-off holds the decision.
    let soon = clock + Duration::from_millis(200);
    let carried = block_on(carry_out(
        &witness,
        carried.memory,
        release.plan(),
        Some(&release.status),
        soon,
    ));
    assert_eq!(witness.take(), []);
    assert_eq!(carried.requeue, Some(Duration::from_millis(800)));

    // The API server is back: written, then sent, then the event.
    witness.refuse.set(false);
    let later = clock + Duration::from_secs(1);
    let rollback = release.plan();
    let carried = block_on(carry_out(
        &witness,
        carried.memory,
        rollback.clone(),
        Some(&release.status),
        later,
    ));
    assert_eq!(
        witness.take(),
        [
            Call::Write(Some(Phase::RolledBack)),
            Call::Send(rollback.assign.clone()),
            Call::Record("RolledBack"),
        ]
    );
    assert!(carried.error.is_none());
    assert_eq!(carried.memory.status, rollback.status);
    assert_eq!(
        (carried.memory.failures, carried.memory.written),
        (0, Some(later))
    );
}

#[test]
fn repeated_write_failures_never_send_the_broken_target_again() {
    // Before, the rollback went out, its write failed and the plan was dropped: the next
    // plan started from the old status, saw the pods back on the stable revision and no
    // failure, and sent the broken target again; the fleet flapped while writes failed.
    let mut clock = Instant::now();
    let mut release = Release::stable();
    let (old, new) = (revision_of(&spec(OLD)), revision_of(&spec(NEW)));
    release.spec = spec(NEW);
    let witness = Witness::default();
    let mut memory = durable(&release.status, clock);
    let mut cached = release.status.clone();
    let mut rolled_back_at = None;
    for round in 0..20 {
        // The rollback is decided in round 2; its writes fail until round 15.
        witness.refuse.set((2..15).contains(&round));
        let plan = release.plan();
        let carried = block_on(carry_out(&witness, memory, plan, Some(&cached), clock));
        for call in witness.take() {
            match call {
                Call::Write(_) if !witness.refuse.get() => cached = carried.memory.status.clone(),
                Call::Send(sent) => {
                    let sends =
                        |revision: &String| sent.iter().any(|(_, r)| r.as_ref() == Some(revision));
                    assert!(
                        !(rolled_back_at.is_some() && sends(&new)),
                        "round {round}: the broken target went out again after the rollback \
                         (round {rolled_back_at:?}): {sent:?}"
                    );
                    if sends(&old) {
                        assert_eq!(
                            cached.phase,
                            Some(Phase::RolledBack),
                            "round {round}: sent before written"
                        );
                        rolled_back_at.get_or_insert(round);
                    }
                    release.receive(&sent);
                }
                _ => {}
            }
        }
        memory = carried.memory;
        release.status = memory.status.clone();
        if round == 1 {
            let first = release
                .pods
                .iter()
                .find(|p| p.assigned.as_ref() == Some(&new));
            let name = first.expect("the first pod got the target").name.clone();
            release.fail(&name);
        } else {
            release.load_all();
        }
        release.now += 1;
        clock += Duration::from_secs(61);
    }
    assert_eq!(memory.status.phase, Some(Phase::RolledBack));
    assert_eq!(rolled_back_at, Some(15), "sent once written");
    assert!(
        release
            .pods
            .iter()
            .all(|p| p.serving.as_ref() != Some(&new)),
        "every pod is back on the stable revision"
    );
}

#[test]
fn progress_goes_out_first_and_its_write_and_events_follow_within_a_second() {
    let clock = Instant::now();
    let mut release = Release::stable();
    release.spec = spec(NEW);
    let start = release.plan();
    release.status = start.status.clone();
    release.receive(&start.assign);
    release.load_all();
    release.now += 1;
    let next = release.plan();
    let witness = Witness::default();
    let just_written = Memory {
        written: Some(clock - Duration::from_millis(100)),
        ..durable(&release.status, clock)
    };
    let carried = block_on(carry_out(&witness, just_written, next.clone(), None, clock));
    assert_eq!(witness.take(), [Call::Send(next.assign.clone())]);
    assert_eq!(carried.requeue, Some(Duration::from_millis(900)));
    assert_eq!(
        carried.memory.status, next.status,
        "the next plan starts here"
    );

    let later = clock + Duration::from_secs(1);
    let again = release.plan();
    let carried = block_on(carry_out(
        &witness,
        carried.memory,
        again.clone(),
        None,
        later,
    ));
    assert_eq!(
        witness.take(),
        [
            Call::Send(again.assign.clone()),
            Call::Write(Some(Phase::Progressing))
        ]
    );
    assert_eq!(carried.memory.written, Some(later));
}
