//! One pod's life on a node: sandbox and volumes, init containers in order (native sidecars
//! started and left running), app containers, status reports, then graceful termination
//! (apps first, sidecars last in reverse order) and the final delete, as the kubelet does.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Agent;
use super::container::{Outcome, record_for, supervise};
use super::dns::render_resolv_conf;
use super::env::PodFacts;
use super::restart::ContainerKind;
use super::sandbox::Sandbox;
use super::status::{ContainerRecord, Phase, PodRecord, pod_status};
use super::volumes::{self, PodVolumes};
use crate::netplan::NODE_IP;

/// The live record of a pod, and a bell rung on every change. Every waiter hears every
/// ring (a watch channel, not a `Notify`): the container gate and the status writer both
/// wait on it, and a single-permit `notify_one` woke only one of them, so a sidecar's start
/// could be taken by the status writer and its pod's apps never started.
#[derive(Debug)]
pub struct StatusBoard {
    record: Mutex<PodRecord>,
    changed: watch::Sender<()>,
}

impl StatusBoard {
    fn new(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let kind = |c: &Container| {
            if c.restart_policy.as_deref() == Some("Always") {
                ContainerKind::Sidecar
            } else {
                ContainerKind::Init
            }
        };
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| record_for(c, kind(c)))
            .collect();
        let main = spec
            .containers
            .iter()
            .map(|c| record_for(c, ContainerKind::App))
            .collect();
        Self {
            record: Mutex::new(PodRecord {
                sandbox_ready: false,
                pod_ip: None,
                start_time: Some(Timestamp::now()),
                init,
                main,
                initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
                terminal: None,
            }),
            changed: watch::Sender::new(()),
        }
    }

    /// Changes the record and rings the bell.
    pub fn update(&self, change: impl FnOnce(&mut PodRecord)) {
        if let Ok(mut record) = self.record.lock() {
            change(&mut record);
        }
        self.changed.send_replace(());
    }

    /// Hears every change made after this call.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// A copy of the record.
    pub fn snapshot(&self) -> PodRecord {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// Everything a running pod's containers share.
pub struct PodContext {
    /// The node agent.
    pub agent: Arc<Agent>,
    /// The pod as first seen (container specs are immutable).
    pub pod: Pod,
    /// `namespace/name`, for logs.
    pub key: String,
    /// The pod's name.
    pub name: String,
    /// The pod's directory (volumes, hosts, logs).
    pub dir: PathBuf,
    /// The pod's cgroup.
    pub cgroup: PathBuf,
    /// The sandbox process.
    pub sandbox_pid: u32,
    /// Pod IP and host IP for fieldRefs.
    pub facts: PodFacts,
    /// Volume paths.
    pub volumes: PodVolumes,
    /// The live record.
    pub board: Arc<StatusBoard>,
    grace: Mutex<Duration>,
    running: Mutex<Vec<Supervised>>,
}

struct Supervised {
    kind: ContainerKind,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl PodContext {
    /// Changes one container's record.
    pub fn update(
        &self,
        kind: ContainerKind,
        index: usize,
        change: impl FnOnce(&mut ContainerRecord),
    ) {
        self.board.update(|record| {
            let list = match kind {
                ContainerKind::App => &mut record.main,
                _ => &mut record.init,
            };
            if let Some(container) = list.get_mut(index) {
                change(container);
            }
        });
    }

    /// A copy of one container's record.
    pub fn record(&self, kind: ContainerKind, index: usize) -> ContainerRecord {
        let record = self.board.snapshot();
        let list = match kind {
            ContainerKind::App => record.main,
            _ => record.init,
        };
        list.into_iter()
            .nth(index)
            .unwrap_or_else(|| ContainerRecord::new("?", "?"))
    }

    /// The pod's restartPolicy.
    pub fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// The termination grace period in force.
    pub fn grace(&self) -> Duration {
        self.grace
            .lock()
            .map(|g| *g)
            .unwrap_or(Duration::from_secs(30))
    }

    /// The grace period when a probe kills the container.
    pub fn probe_grace(&self, container: &Container) -> Duration {
        [&container.liveness_probe, &container.startup_probe]
            .into_iter()
            .flatten()
            .find_map(|p| p.termination_grace_period_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or_else(|| self.grace())
    }

    /// The log file of a container's `restart`-th run.
    pub fn log_path(&self, container: &str, restart: i32) -> PathBuf {
        self.dir
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Records a Normal event on the pod.
    pub async fn event_normal(&self, reason: &str, note: &str) {
        self.agent
            .event(&self.pod, EventType::Normal, reason, note)
            .await;
    }

    /// Records a Warning event on the pod.
    pub async fn event_warning(&self, reason: &str, note: &str) {
        self.agent
            .event(&self.pod, EventType::Warning, reason, note)
            .await;
    }

    /// Starts a supervisor; the receiver gets its outcome.
    fn spawn(
        self: &Arc<Self>,
        kind: ContainerKind,
        index: usize,
        container: Container,
    ) -> oneshot::Receiver<Outcome> {
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(
            supervise(self.clone(), kind, index, container, stop.clone()).map(|outcome| {
                let _ = tx.send(outcome);
            }),
        );
        if let Ok(mut running) = self.running.lock() {
            running.push(Supervised { kind, stop, handle });
        }
        rx
    }

    /// Stops every container: apps together, then sidecars one by one in reverse order.
    async fn stop_all(&self, grace: Duration) {
        if let Ok(mut g) = self.grace.lock() {
            *g = grace;
        }
        let running: Vec<Supervised> = self
            .running
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default();
        let (sidecars, others): (Vec<_>, Vec<_>) = running
            .into_iter()
            .partition(|s| s.kind == ContainerKind::Sidecar);
        for s in &others {
            s.stop.cancel();
        }
        for s in others {
            let _ = s.handle.await;
        }
        for s in sidecars.into_iter().rev() {
            s.stop.cancel();
            let _ = s.handle.await;
        }
    }
}

/// Why the worker is ending the pod.
#[derive(Clone, Copy, Debug)]
struct Termination {
    grace: Duration,
    /// The API object is gone already (force delete, or the agent shutting down).
    gone: bool,
}

/// Resolves when the pod is being deleted (or gone).
async fn termination(updates: &mut watch::Receiver<Option<Pod>>) -> Termination {
    loop {
        let current = updates.borrow_and_update().clone();
        match current {
            None => {
                return Termination {
                    grace: Duration::ZERO,
                    gone: true,
                };
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let seconds = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                return Termination {
                    grace: Duration::from_secs(seconds.max(0) as u64),
                    gone: false,
                };
            }
            Some(_) => {}
        }
        if updates.changed().await.is_err() {
            return Termination {
                grace: Duration::ZERO,
                gone: true,
            };
        }
    }
}

/// Runs the pod until it is deleted and its containers are gone.
pub async fn run(agent: Arc<Agent>, pod: Pod, node: u8, mut updates: watch::Receiver<Option<Pod>>) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let board = Arc::new(StatusBoard::new(&pod));
    let writer = tokio::spawn(write_status(agent.clone(), pod.clone(), board.clone()));
    let dir = agent.pods_dir.join(format!("{namespace}_{name}_{uid}"));
    agent.register_pod_dir(&namespace, &name, &dir);

    let ip = agent.allocate_ip(node);
    let setup = tokio::select! {
        setup = set_up(&agent, &pod, &dir, ip, &board) => Some(setup),
        _ = termination(&mut updates) => None,
    };
    let Some((sandbox, context)) = setup else {
        finish(&agent, &pod, &dir, ip, None, writer, &board, true).await;
        return;
    };
    let ctx = Arc::new(context);
    let tokens = tokio::spawn(refresh_tokens(ctx.clone()));
    agent.register_hosts(
        &uid,
        &namespace,
        &name,
        &ctx.facts.pod_ip,
        &dir.join("hosts"),
    );

    let end = tokio::select! {
        outcome = run_containers(&ctx) => {
            ctx.stop_all(Duration::from_secs(2)).await;
            board.update(|r| r.terminal = Some(outcome));
            termination(&mut updates).await
        }
        end = termination(&mut updates) => end,
    };
    tracing::info!(pod = %key, grace = ?end.grace, "stopping pod");
    ctx.stop_all(end.grace).await;
    tokens.abort();
    agent.unregister_hosts(&uid);
    finish(
        &agent,
        &pod,
        &dir,
        ip,
        Some(sandbox),
        writer,
        &board,
        end.gone,
    )
    .await;
}

/// Sandbox, volumes, hosts files: retried until they work (the kubelet does the same).
async fn set_up(
    agent: &Arc<Agent>,
    pod: &Pod,
    dir: &std::path::Path,
    ip: Option<std::net::Ipv4Addr>,
    board: &Arc<StatusBoard>,
) -> (Sandbox, PodContext) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let warn = |reason: &'static str, note: String| {
        let agent = agent.clone();
        let pod = pod.clone();
        async move {
            tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")), reason, note);
            agent.event(&pod, EventType::Warning, reason, &note).await;
        }
    };
    let cgroup = loop {
        match crate::cgroup::ensure(&format!("pods/{uid}")) {
            Ok(cgroup) => break cgroup,
            Err(e) => warn("FailedCreatePodSandBox", format!("{e:#}")).await,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let sandbox = loop {
        let Some(ip) = ip else {
            warn(
                "FailedCreatePodSandBox",
                "no pod IP left on this node".into(),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        match Sandbox::create(&agent.exe, &name, &uid, ip, &cgroup).await {
            Ok(sandbox) => break sandbox,
            Err(e) => warn("FailedCreatePodSandBox", format!("{e:#}")).await,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let facts = PodFacts {
        pod_ip: sandbox.ip.to_string(),
        host_ip: NODE_IP.to_string(),
    };
    board.update(|r| {
        r.sandbox_ready = true;
        r.pod_ip = Some(facts.pod_ip.clone());
    });
    let volumes = loop {
        match volumes::prepare(&agent.client, pod, &dir.join("volumes"), &facts).await {
            Ok(volumes) => break volumes,
            Err(e) => warn("FailedMount", format!("MountVolume.SetUp failed for {e}")).await,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // Registered before the first render, so a Service that appears in between is not missed.
    agent.register_hosts(&uid, &namespace, &name, &facts.pod_ip, &dir.join("hosts"));
    agent.refresh_hosts();
    if let Err(e) = std::fs::write(dir.join("resolv.conf"), render_resolv_conf(&namespace)) {
        warn("FailedCreatePodSandBox", format!("writing /etc/hosts: {e}")).await;
    }
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let context = PodContext {
        agent: agent.clone(),
        pod: pod.clone(),
        key: format!("{namespace}/{name}"),
        name,
        dir: dir.to_path_buf(),
        cgroup,
        sandbox_pid: sandbox.pid,
        facts,
        volumes,
        board: board.clone(),
        grace: Mutex::new(Duration::from_secs(grace.max(0) as u64)),
        running: Mutex::new(Vec::new()),
    };
    (sandbox, context)
}

/// Init containers in order, then the app containers; returns the terminal phase once no
/// container will run again.
async fn run_containers(ctx: &Arc<PodContext>) -> (Phase, String) {
    let spec = ctx.pod.spec.clone().unwrap_or_default();
    for (index, container) in spec.init_containers.iter().flatten().enumerate() {
        let sidecar = container.restart_policy.as_deref() == Some("Always");
        let kind = if sidecar {
            ContainerKind::Sidecar
        } else {
            ContainerKind::Init
        };
        let done = ctx.spawn(kind, index, container.clone());
        if sidecar {
            // The next container starts once the sidecar has started (startup probe passed).
            let mut changes = ctx.board.changes();
            while !ctx.record(kind, index).started {
                if changes.changed().await.is_err() {
                    return (Phase::Failed, "stopped".into());
                }
            }
            continue;
        }
        match done.await {
            Ok(Outcome::Exited(0)) => {}
            Ok(Outcome::Exited(code)) => {
                return (
                    Phase::Failed,
                    format!("init container {} exited with {code}", container.name),
                );
            }
            _ => return (Phase::Failed, "stopped".into()),
        }
    }
    ctx.board.update(|r| r.initialized = true);
    let apps: Vec<_> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(index, container)| ctx.spawn(ContainerKind::App, index, container.clone()))
        .collect();
    let mut failed = None;
    for (done, container) in apps.into_iter().zip(&spec.containers) {
        if let Ok(Outcome::Exited(code)) = done.await
            && code != 0
        {
            failed.get_or_insert(format!("container {} exited with {code}", container.name));
        }
    }
    match failed {
        Some(reason) => (Phase::Failed, reason),
        None => (Phase::Succeeded, "Completed".into()),
    }
}

/// Keeps projected service-account tokens fresh (renewed at 80% of their lifetime).
async fn refresh_tokens(ctx: Arc<PodContext>) {
    let Some(shortest) = ctx
        .volumes
        .tokens
        .iter()
        .map(|t| t.expiration_seconds)
        .min()
    else {
        return;
    };
    let period = Duration::from_secs((shortest.max(600) as u64) * 4 / 5);
    loop {
        tokio::time::sleep(period).await;
        for token in &ctx.volumes.tokens {
            if let Err(e) = volumes::refresh_token(&ctx.agent.client, &ctx.pod, token).await {
                ctx.event_warning(
                    "FailedMount",
                    &format!("refreshing token {}: {e}", token.path.display()),
                )
                .await;
            }
        }
    }
}

/// Tears the sandbox down, writes the last status and deletes the pod object (grace 0).
#[allow(clippy::too_many_arguments)]
async fn finish(
    agent: &Arc<Agent>,
    pod: &Pod,
    dir: &std::path::Path,
    ip: Option<std::net::Ipv4Addr>,
    sandbox: Option<Sandbox>,
    writer: JoinHandle<()>,
    board: &Arc<StatusBoard>,
    gone: bool,
) {
    if let Some(sandbox) = sandbox {
        sandbox.destroy().await;
    }
    if let Some(ip) = ip {
        agent.release_ip(ip);
    }
    board.update(|r| r.sandbox_ready = false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.abort();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    agent.unregister_pod_dir(&namespace, &name);
    super::emptydir::unmount_below(dir);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir(agent.pod_cgroup_dir(&uid));
    if !gone {
        let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = pods.delete(&name, &params).await {
            tracing::debug!(pod = %name, error = %e, "final delete");
        }
    }
}

/// Patches the pod's status whenever the record changes (coalescing bursts).
async fn write_status(agent: Arc<Agent>, pod: Pod, board: Arc<StatusBoard>) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut last = None;
    let mut changes = board.changes();
    loop {
        changes.borrow_and_update();
        let record = board.snapshot();
        if last.as_ref() != Some(&record) {
            let status = pod_status(&record, &conditions, Timestamp::now());
            let patch = serde_json::json!({ "status": status });
            match pods
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    conditions = status.conditions.unwrap_or_default();
                    last = Some(record);
                }
                Err(e) => tracing::warn!(pod = %name, error = %e, "status patch failed; retrying"),
            }
            if last.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
        // Coalesce a burst of changes (a container starting and turning ready) into one write.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// The object reference events about `pod` point at.
pub fn reference(pod: &Pod) -> k8s_openapi::api::core::v1::ObjectReference {
    pod.object_ref(&())
}

/// An event of the node agent about a pod.
pub fn event(type_: EventType, reason: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_string(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_hears_a_sidecar_start() {
        // The container gate and the status writer wait on the same board; each must hear
        // the change, or a pod's apps may never start after its sidecar did.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "initContainers": [{"name": "sidecar", "image": "s", "restartPolicy": "Always"}],
                "containers": [{"name": "app", "image": "a"}]
            }
        }))
        .expect("pod");
        let board = StatusBoard::new(&pod);
        let (mut gate, mut writer) = (board.changes(), board.changes());
        board.update(|r| {
            if let Some(sidecar) = r.init.first_mut() {
                sidecar.started = true;
            }
        });
        let heard = tokio::time::timeout(Duration::from_secs(1), async {
            gate.changed().await.is_ok() && writer.changed().await.is_ok()
        })
        .await;
        assert_eq!(heard, Ok(true), "both waiters woke");
        assert!(board.snapshot().init[0].started);
    }
}
