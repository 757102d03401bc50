//! Doing the faults a plan names, on the local cluster: signals to the processes the node
//! agent runs for a pod's containers (`hotload://<pid>` container IDs), kube-apiserver
//! restarted through [`cluster::restart_apiserver`], the artifact server and the OCI
//! registry stopped or slowed, the operator leader's packets to the API server dropped by
//! an nftables rule in its pod's network namespace, a pod's emptyDir (a size-limited tmpfs
//! of the node agent) filled to `ENOSPC`, and pods deleted or scaled through the API as a
//! user would. A fault that lasts says how it is undone ([`Restore`]).

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
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
use crate::netplan;
use crate::registry::Registry;
use crate::testing::{container_pid, process_alive};

/// The nftables table a cut-off adds in the operator pod's network namespace.
const CUT_OFF_TABLE: &str = "hotload_chaos_cut_off";
/// The file that fills an emptyDir.
const FILLER: &str = ".hotload-chaos-filler";
/// The emptyDir the webhook injects (the sidecar's store and the app socket).
const STORE_VOLUME: &str = "hotload";
/// The largest emptyDir the harness fills (a bigger one is not the bounded tmpfs it expects).
const MAX_FILL_BYTES: u64 = 1 << 30;

/// How to end a fault that lasts.
#[derive(Debug)]
pub enum Restore {
    /// The artifact server up and fast again.
    Artifacts,
    /// The OCI registry running and fast again.
    Registry,
    /// The cut-off rule removed from a pod's network namespace (held open meanwhile, so it
    /// is the same namespace even if the operator process died).
    Network { pod: String, netns: std::fs::File },
    /// The filler file deleted.
    EmptyDir { pod: String, file: PathBuf },
}

impl Restore {
    /// What it acts on: faults on the same target end together (a host comes back whole).
    pub fn target(&self) -> String {
        match self {
            Restore::Artifacts => "artifacts".into(),
            Restore::Registry => "registry".into(),
            Restore::Network { pod, .. } => format!("network of {pod}"),
            Restore::EmptyDir { file, .. } => format!("emptyDir {}", file.display()),
        }
    }
}

/// What a fault did: which pod it touched (its requests may fail), and until when an outage
/// lasts (the restore is the caller's to schedule).
#[derive(Debug, Default)]
pub struct Injected {
    /// A line for the run's log.
    pub what: String,
    /// The pod the fault touched, if one.
    pub pod: Option<String>,
    /// The fault to end after this long, and how.
    pub restore: Option<(Duration, Restore)>,
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
/// [`Injected::restore`] (with [`restore`]).
pub async fn inject(
    layout: &Layout,
    demo: &Demo,
    registry: &Registry,
    fault: &Fault,
) -> Result<Injected> {
    let lasts = fault.lasts().unwrap_or_default();
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
            demo.artifacts.stop().await?;
            Ok(Injected {
                what: format!("artifact host down for {seconds}s"),
                restore: Some((lasts, Restore::Artifacts)),
                ..Default::default()
            })
        }
        Fault::ArtifactsSlow { seconds, delay_ms } => {
            demo.artifacts
                .set_delay(Duration::from_millis(u64::from(*delay_ms)));
            Ok(Injected {
                what: format!("artifact host {delay_ms} ms slow for {seconds}s"),
                restore: Some((lasts, Restore::Artifacts)),
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
        Fault::RegistryDown { seconds } => {
            registry.stop().await;
            Ok(Injected {
                what: format!("OCI registry killed, down for {seconds}s"),
                restore: Some((lasts, Restore::Registry)),
                ..Default::default()
            })
        }
        Fault::RegistrySlow { seconds, delay_ms } => {
            registry.set_delay(Duration::from_millis(u64::from(*delay_ms)));
            Ok(Injected {
                what: format!("OCI registry {delay_ms} ms slow for {seconds}s"),
                restore: Some((lasts, Restore::Registry)),
                ..Default::default()
            })
        }
        Fault::OperatorCutOff { seconds } => {
            let pods = Chart::operator_pods(&demo.ns).await?;
            let leader = pods.iter().find(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("hotload.dev/leader"))
                    && pid_of(p, "operator", false).is_some()
            });
            let Some(leader) = leader else {
                return Ok(skipped("no running operator leader to cut off".into()));
            };
            let name = name_of(leader);
            let pid = pid_of(leader, "operator", false).context("operator pid")?;
            let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .with_context(|| format!("opening the network namespace of pid {pid}"))?;
            nft(&netns, &cut_off_rules()).await?;
            Ok(Injected {
                what: format!(
                    "cut operator {name} (pid {pid}) off from the API server for {seconds}s \
                     (its packets to {API_SERVICE_IP}:443 and {}:{} dropped)",
                    netplan::NODE_IP,
                    netplan::APISERVER_PORT
                ),
                restore: Some((lasts, Restore::Network { pod: name, netns })),
                ..Default::default()
            })
        }
        Fault::EmptyDirFull { pod, seconds } => {
            let pods = demo_pods(demo).await?;
            let Some(victim) = nth(&pods, *pod) else {
                return Ok(skipped("no pod whose emptyDir to fill".into()));
            };
            let name = name_of(victim);
            let Some(dir) = store_dir(layout, victim) else {
                return Ok(skipped(format!(
                    "no node agent to reach pod {name}'s emptyDir"
                )));
            };
            if let Err(why) = bounded_tmpfs(&dir) {
                return Ok(skipped(format!("emptyDir of pod {name} not filled: {why}")));
            }
            let file = dir.join(FILLER);
            let path = file.clone();
            let written = tokio::task::spawn_blocking(move || fill(&path)).await??;
            Ok(Injected {
                what: format!(
                    "filled the emptyDir of pod {name} ({} KiB written until ENOSPC) for {seconds}s",
                    written >> 10
                ),
                pod: Some(name.clone()),
                restore: Some((lasts, Restore::EmptyDir { pod: name, file })),
                ..Default::default()
            })
        }
    }
}

/// The `kubernetes` Service's ClusterIP (the first address of [`netplan::SERVICE_CIDR`]).
const API_SERVICE_IP: &str = "198.19.0.1";

/// nftables rules that drop what a pod sends to the API server (its Service address, and
/// the address kube-proxy translates that to); answers to the API server's own calls (the
/// webhook) and every other peer (the sidecars' channels) stay up.
fn cut_off_rules() -> String {
    format!(
        "add table inet {CUT_OFF_TABLE}\n\
         add chain inet {CUT_OFF_TABLE} out {{ type filter hook output priority 0; policy accept; }}\n\
         add rule inet {CUT_OFF_TABLE} out ip daddr {API_SERVICE_IP} tcp dport 443 drop\n\
         add rule inet {CUT_OFF_TABLE} out ip daddr {} tcp dport {} drop\n",
        netplan::NODE_IP,
        netplan::APISERVER_PORT
    )
}

/// Runs `nft -f -` with `script` in the network namespace `netns`.
async fn nft(netns: &std::fs::File, script: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    // Any root process may open another's descriptor through /proc; ours is close-on-exec.
    let path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    let mut child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft in the pod's network namespace")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "nft in {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The path of `pod`'s store emptyDir, seen through the node agent's mount namespace
/// (where its tmpfs is mounted).
fn store_dir(layout: &Layout, pod: &Pod) -> Option<PathBuf> {
    let agent: u32 = std::fs::read_to_string(layout.pids().join("node-agent.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let uid = pod.metadata.uid.as_deref()?;
    let namespace = pod.metadata.namespace.as_deref()?;
    let pods = layout.pods();
    let relative = pods.strip_prefix("/").unwrap_or(&pods);
    Some(
        Path::new(&format!("/proc/{agent}/root"))
            .join(relative)
            .join(format!("{namespace}_{}_{uid}", name_of(pod)))
            .join("volumes")
            .join(STORE_VOLUME),
    )
}

/// Ok if `dir` is a tmpfs of at most [`MAX_FILL_BYTES`]: filling it costs bounded memory,
/// never the machine's disk.
fn bounded_tmpfs(dir: &Path) -> std::result::Result<(), String> {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    let stat = statfs(dir).map_err(|e| format!("statfs {}: {e}", dir.display()))?;
    if stat.filesystem_type() != TMPFS_MAGIC {
        return Err("it is not a tmpfs (a node agent from before size-limited emptyDirs?)".into());
    }
    let size = stat
        .blocks()
        .saturating_mul(u64::try_from(stat.block_size()).unwrap_or(u64::MAX));
    if size > MAX_FILL_BYTES {
        return Err(format!(
            "its tmpfs holds {size} bytes, more than {MAX_FILL_BYTES}"
        ));
    }
    Ok(())
}

/// Writes `file` until its filesystem is full; returns the bytes written.
fn fill(file: &Path) -> Result<u64> {
    use std::io::Write as _;
    let mut out =
        std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match out.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => return Err(e).with_context(|| format!("filling {}", file.display())),
        }
        if written > MAX_FILL_BYTES {
            bail!("{} took more than {MAX_FILL_BYTES} bytes", file.display());
        }
    }
    Ok(written)
}

/// Ends a fault: the artifact host or the registry up and fast, a cut-off rule removed, a
/// filler deleted (a pod gone meanwhile took its emptyDir along). Returns what it did.
pub async fn restore(demo: &Demo, registry: &Registry, what: &Restore) -> Result<String> {
    match what {
        Restore::Artifacts => {
            restore_artifacts(demo).await?;
            Ok("artifact host up and fast".into())
        }
        Restore::Registry => {
            restore_registry(registry).await?;
            Ok("OCI registry up and fast".into())
        }
        Restore::Network { pod, netns } => {
            nft(netns, &format!("delete table inet {CUT_OFF_TABLE}\n")).await?;
            Ok(format!("operator {pod} reaches the API server again"))
        }
        Restore::EmptyDir { pod, file } => match std::fs::remove_file(file) {
            Ok(()) => Ok(format!("emptyDir of pod {pod} has space again")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(format!("pod {pod} and its emptyDir are gone"))
            }
            Err(e) => Err(e).with_context(|| format!("deleting {}", file.display())),
        },
    }
}

/// Ends any outage of the OCI registry: running and answering at once.
pub async fn restore_registry(registry: &Registry) -> Result<()> {
    registry.set_delay(Duration::ZERO);
    registry.resume().await
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
