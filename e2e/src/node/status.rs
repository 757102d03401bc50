//! What the node agent knows about a pod's containers, and the pure translation of that into
//! the Pod and Node status the API shows (`kubectl get pods`, endpoint controllers, probes).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Node, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::netplan::NODE_IP;

/// How a container run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by a signal, as the kubelet reports).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled`-style reason.
    pub reason: String,
    /// When the run started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The process id it ran as.
    pub pid: u32,
}

/// The state of one container now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Not running: being created, backing off, or unable to start.
    Waiting {
        /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, …
        reason: String,
        /// Details for a person.
        message: Option<String>,
    },
    /// Running as a process.
    Running {
        /// When the process started.
        started_at: Timestamp,
        /// Its pid (and process group).
        pid: u32,
    },
    /// Ended and not (yet) restarted.
    Terminated(Exit),
}

/// One container as the node agent tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Restarts so far.
    pub restart_count: i32,
    /// Current state.
    pub state: RunState,
    /// The previous run's end.
    pub last: Option<Exit>,
    /// Readiness probe verdict (or running, without a probe).
    pub ready: bool,
    /// Startup probe passed (or running, without a probe).
    pub started: bool,
    /// An init container that keeps running beside the app (restartPolicy: Always).
    pub sidecar: bool,
}

impl ContainerRecord {
    /// A container that has not started yet.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            restart_count: 0,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            ready: false,
            started: false,
            sidecar: false,
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        match self.state {
            RunState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// Pod lifecycle phase (`status.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not all containers have started.
    Pending,
    /// Bound, initialised, containers started.
    Running,
    /// Every container exited 0 and none will restart.
    Succeeded,
    /// Every container stopped and at least one failed for good.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// Everything the pod's status is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// The sandbox (network namespace) exists.
    pub sandbox_ready: bool,
    /// The pod's IP.
    pub pod_ip: Option<String>,
    /// When the agent accepted the pod.
    pub start_time: Option<Timestamp>,
    /// Init containers, in spec order.
    pub init: Vec<ContainerRecord>,
    /// App containers, in spec order.
    pub main: Vec<ContainerRecord>,
    /// Every init container finished (and every sidecar started).
    pub initialized: bool,
    /// A terminal phase the worker decided, with its reason.
    pub terminal: Option<(Phase, String)>,
}

/// The Pod status for `record`; condition transition times are kept from `previous` when a
/// condition did not change, so they mean what they say.
pub fn pod_status(record: &PodRecord, previous: &[PodCondition], now: Timestamp) -> PodStatus {
    let main_started = !record.main.is_empty()
        && record
            .main
            .iter()
            .all(|c| !matches!(c.state, RunState::Waiting { .. }) || c.restart_count > 0);
    let phase = match &record.terminal {
        Some((phase, _)) => *phase,
        None if record.initialized && main_started => Phase::Running,
        None => Phase::Pending,
    };
    let sidecars_ready = record.init.iter().filter(|c| c.sidecar).all(|c| c.ready);
    let containers_ready = !phase.is_terminal()
        && record.initialized
        && sidecars_ready
        && !record.main.is_empty()
        && record.main.iter().all(|c| c.ready);
    let condition = |type_: &str, status: bool, reason: Option<&str>| {
        let status = if status { "True" } else { "False" };
        let kept = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone());
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.map(str::to_string),
            last_transition_time: Some(kept.unwrap_or(Time(now))),
            ..Default::default()
        }
    };
    let mut conditions = vec![
        condition("PodReadyToStartContainers", record.sandbox_ready, None),
        condition("Initialized", record.initialized, None),
        condition(
            "ContainersReady",
            containers_ready,
            (!containers_ready).then_some("ContainersNotReady"),
        ),
        condition(
            "Ready",
            containers_ready,
            (!containers_ready).then_some("ContainersNotReady"),
        ),
    ];
    if let Some(scheduled) = previous.iter().find(|c| c.type_ == "PodScheduled") {
        conditions.insert(0, scheduled.clone());
    }
    let host_ip = NODE_IP.to_string();
    PodStatus {
        phase: Some(phase.as_str().to_string()),
        reason: record.terminal.as_ref().map(|(_, reason)| reason.clone()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: host_ip }]),
        pod_ip: record.pod_ip.clone(),
        pod_ips: record.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: record.start_time.map(Time),
        init_container_statuses: Some(record.init.iter().map(container_status).collect()),
        container_statuses: Some(record.main.iter().map(container_status).collect()),
        // qosClass is set by the API server at creation and immutable after; not reported.
        ..Default::default()
    }
}

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    let pid = match &c.state {
        RunState::Running { pid, .. } => Some(*pid),
        RunState::Terminated(exit) => Some(exit.pid),
        RunState::Waiting { .. } => c.last.as_ref().map(|e| e.pid),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("hotload://image/{}", c.image),
        container_id: pid.map(|pid| format!("hotload://{pid}")),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(container_state(&c.state)),
        last_state: c
            .last
            .as_ref()
            .map(|exit| container_state(&RunState::Terminated(exit.clone()))),
        ..Default::default()
    }
}

fn container_state(state: &RunState) -> ContainerState {
    match state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunState::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(exit) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit.exit_code,
                signal: exit.signal,
                reason: Some(exit.reason.clone()),
                started_at: Some(Time(exit.started_at)),
                finished_at: Some(Time(exit.finished_at)),
                container_id: Some(format!("hotload://{}", exit.pid)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// Whether a Node reports Ready=True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: RunState::Running {
                started_at: Timestamp::UNIX_EPOCH,
                pid: 42,
            },
            ready,
            started: true,
            ..ContainerRecord::new(name, "img")
        }
    }

    fn record(main: Vec<ContainerRecord>) -> PodRecord {
        PodRecord {
            sandbox_ready: true,
            pod_ip: Some("198.18.16.2".into()),
            start_time: Some(Timestamp::UNIX_EPOCH),
            init: Vec::new(),
            main,
            initialized: true,
            terminal: None,
        }
    }

    fn condition<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == type_))
            .unwrap()
    }

    #[test]
    fn ready_only_when_every_container_is_ready() {
        let now = Timestamp::UNIX_EPOCH;
        let status = pod_status(
            &record(vec![running("a", true), running("b", false)]),
            &[],
            now,
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready").status, "False");
        let status = pod_status(
            &record(vec![running("a", true), running("b", true)]),
            &[],
            now,
        );
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(status.pod_ip.as_deref(), Some("198.18.16.2"));
    }

    #[test]
    fn pending_until_initialised_and_started() {
        let mut pending = record(vec![ContainerRecord::new("a", "img")]);
        let status = pod_status(&pending, &[], Timestamp::UNIX_EPOCH);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        pending.main = vec![running("a", true)];
        pending.initialized = false;
        let status = pod_status(&pending, &[], Timestamp::UNIX_EPOCH);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let first = Timestamp::UNIX_EPOCH;
        let later = Timestamp::from_second(1_000).unwrap();
        let rec = record(vec![running("a", true)]);
        let before = pod_status(&rec, &[], first);
        let after = pod_status(&rec, before.conditions.as_deref().unwrap(), later);
        assert_eq!(
            condition(&after, "Ready").last_transition_time,
            Some(Time(first))
        );
        let mut not_ready = rec.clone();
        not_ready.main[0].ready = false;
        let flipped = pod_status(&not_ready, after.conditions.as_deref().unwrap(), later);
        assert_eq!(
            condition(&flipped, "Ready").last_transition_time,
            Some(Time(later))
        );
    }

    #[test]
    fn terminal_phase_is_never_ready() {
        let mut rec = record(vec![running("a", true)]);
        rec.terminal = Some((Phase::Failed, "Error".into()));
        let status = pod_status(&rec, &[], Timestamp::UNIX_EPOCH);
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(condition(&status, "Ready").status, "False");
    }
}
