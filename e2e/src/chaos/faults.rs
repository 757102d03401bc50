//! Doing the faults a plan names, on the local cluster: signals to the processes the node
//! agent runs for a pod's containers (`hotload://<pid>` container IDs), kube-apiserver
//! restarted through [`cluster::restart_apiserver`], the artifact server stopped or slowed,
//! and pods deleted or scaled through the API as a user would.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::chaos::plan::Fault;
use crate::chart::{Chart, is_ready};
use crate::cluster;
use crate::fleet::Demo;
use crate::layout::Layout;
use crate::testing::{container_pid, process_alive};

/// What a fault did: which pod it touched (its requests may fail), and until when an outage
/// lasts (the restore is the caller's to schedule).
#[derive(Debug, Default)]
pub struct Injected {
    /// A line for the run's log.
    pub what: String,
    /// The pod the fault touched, if one.
    pub pod: Option<String>,
    /// An outage of the artifact host to end after this long.
    pub restore_after: Option<Duration>,
    /// The fault could not apply here (no standby, no pod): logged, not counted.
    pub skipped: bool,
}

/// The demo pods of the moment, not being deleted, sorted by name.
pub async fn demo_pods(demo: &Demo) -> Result<Vec<Pod>> {
    let mut pods: Vec<Pod> = demo
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=demo"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(pods)
}

/// Pod number `index` (modulo their number) of `pods`.
fn nth(pods: &[Pod], index: u8) -> Option<&Pod> {
    pods.get(usize::from(index).checked_rem(pods.len())?)
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The pid of `pod`'s container `name` (an init container when `init`).
fn pid_of(pod: &Pod, name: &str, init: bool) -> Option<u32> {
    let status = pod.status.as_ref()?;
    let containers = if init {
        status.init_container_statuses.as_ref()?
    } else {
        status.container_statuses.as_ref()?
    };
    let id = containers
        .iter()
        .find(|c| c.name == name)?
        .container_id
        .as_deref()?;
    // The status can still name a process that died a moment ago.
    container_pid(id).filter(|pid| process_alive(*pid))
}

/// `kill -9 pid`; false if it had exited already.
fn kill9(pid: u32) -> Result<bool> {
    match kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("kill -9 {pid}")),
    }
}

/// The child processes of `pid` (a pre-fork supervisor's workers).
fn children(pid: u32) -> Vec<u32> {
    let listed =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    listed
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Injects `fault`. Outages are started here and ended by the caller after
/// [`Injected::restore_after`] (with [`restore_artifacts`]).
pub async fn inject(layout: &Layout, demo: &Demo, fault: &Fault) -> Result<Injected> {
    let skipped = |what: String| Injected {
        what,
        skipped: true,
        ..Default::default()
    };
    match fault {
        Fault::KillLeader | Fault::KillStandby => {
            let leader = matches!(fault, Fault::KillLeader);
            let pods = Chart::operator_pods(&demo.ns).await?;
            let victim = pods.iter().find(|p| {
                let leads = p
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("hotload.dev/leader"));
                leads == leader && pid_of(p, "operator", false).is_some()
            });
            let Some(victim) = victim else {
                let role = if leader { "leader" } else { "standby" };
                return Ok(skipped(format!("no running operator {role} to kill")));
            };
            let pid = pid_of(victim, "operator", false).context("operator pid")?;
            if !kill9(pid)? {
                return Ok(skipped(format!("operator pid {pid} had exited already")));
            }
            Ok(Injected {
                what: format!("killed operator {} (pid {pid})", name_of(victim)),
                ..Default::default()
            })
        }
        Fault::KillSidecar { pod } | Fault::KillWorker { pod } => {
            let pods = demo_pods(demo).await?;
            let Some(victim) = nth(&pods, *pod) else {
                return Ok(skipped("no pod to kill a process of".into()));
            };
            let name = name_of(victim);
            let (pid, what) = if matches!(fault, Fault::KillSidecar { .. }) {
                let Some(pid) = pid_of(victim, "hotload-sidecar", true) else {
                    return Ok(skipped(format!("pod {name} has no running sidecar")));
                };
                (pid, "sidecar")
            } else {
                let Some(supervisor) = pid_of(victim, "app", false) else {
                    return Ok(skipped(format!("pod {name} has no running app")));
                };
                // Pre-forked: kill a worker, not the supervisor (that would be a container
                // restart); with one worker the app process is the worker.
                let worker = children(supervisor).first().copied().unwrap_or(supervisor);
                (worker, "app worker")
            };
            if !kill9(pid)? {
                return Ok(skipped(format!(
                    "{what} pid {pid} of pod {name} had exited"
                )));
            }
            Ok(Injected {
                what: format!("killed the {what} of pod {name} (pid {pid})"),
                pod: Some(name),
                ..Default::default()
            })
        }
        Fault::RestartApiserver => {
            let away = cluster::restart_apiserver(layout, Duration::from_secs(90)).await?;
            Ok(Injected {
                what: format!(
                    "restarted kube-apiserver, ready again after {:.1}s",
                    away.as_secs_f32()
                ),
                ..Default::default()
            })
        }
        Fault::ArtifactsDown { seconds } => {
            demo.artifacts.stop();
            Ok(Injected {
                what: format!("artifact host down for {seconds}s"),
                restore_after: Some(Duration::from_secs(u64::from(*seconds))),
                ..Default::default()
            })
        }
        Fault::ArtifactsSlow { seconds, delay_ms } => {
            demo.artifacts
                .set_delay(Duration::from_millis(u64::from(*delay_ms)));
            Ok(Injected {
                what: format!("artifact host {delay_ms} ms slow for {seconds}s"),
                restore_after: Some(Duration::from_secs(u64::from(*seconds))),
                ..Default::default()
            })
        }
        Fault::DeletePod { pod } => {
            let pods = demo_pods(demo).await?;
            let Some(victim) = nth(&pods, *pod) else {
                return Ok(skipped("no pod to delete".into()));
            };
            let name = name_of(victim);
            demo.ns
                .api::<Pod>()
                .delete(&name, &DeleteParams::default())
                .await?;
            Ok(Injected {
                what: format!("deleted pod {name}"),
                pod: Some(name),
                ..Default::default()
            })
        }
        Fault::Scale { replicas } => {
            scale(demo, i32::from(*replicas)).await?;
            Ok(Injected {
                what: format!("scaled to {replicas}"),
                ..Default::default()
            })
        }
    }
}

/// Ends any outage of the artifact host: up again and answering at once.
pub async fn restore_artifacts(demo: &Demo) -> Result<()> {
    demo.artifacts.set_delay(Duration::ZERO);
    demo.artifacts.resume().await
}

/// Scales the demo Deployment to `replicas`.
pub async fn scale(demo: &Demo, replicas: i32) -> Result<()> {
    demo.ns
        .api::<Deployment>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// The demo Deployment's desired replicas.
pub async fn desired(demo: &Demo) -> Result<usize> {
    let deployment = demo.ns.api::<Deployment>().get("demo").await?;
    let replicas = deployment.spec.replicas.unwrap_or(1);
    Ok(usize::try_from(replicas)?)
}

/// Waits (bounded) until every operator replica runs and one is Ready, so a run starts
/// with a leader and a standby. A replica killed often in earlier runs sits in the
/// kubelet's crash-loop back-off (up to 5 minutes); after `timeout / 4` such a pod is
/// deleted, and its ReplicaSet makes a fresh one without back-off. Returns the pods
/// deleted.
pub async fn operators_up(demo: &Demo, replicas: usize, timeout: Duration) -> Result<Vec<String>> {
    let started = Instant::now();
    let mut deleted = Vec::new();
    loop {
        let pods = Chart::operator_pods(&demo.ns).await.unwrap_or_default();
        let (running, waiting): (Vec<&Pod>, Vec<&Pod>) = pods
            .iter()
            .partition(|p| pid_of(p, "operator", false).is_some());
        if running.len() >= replicas && pods.iter().any(is_ready) {
            return Ok(deleted);
        }
        if started.elapsed() > timeout / 4 && deleted.is_empty() {
            for pod in waiting {
                let name = name_of(pod);
                demo.ns
                    .api::<Pod>()
                    .delete(&name, &DeleteParams::default())
                    .await?;
                deleted.push(name);
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "{} of {replicas} operator replicas running after {timeout:?} (deleted {deleted:?})",
                running.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
