//! One container's supervisor: resolve its image and environment, start it through
//! `container-init`, run its probes, stop it gracefully, and restart it with back-off when
//! the pod's restart policy says so.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::env::container_env;
use super::pod::PodContext;
use super::probe::{self, Verdict};
use super::restart::{ContainerKind, next_backoff, should_restart};
use super::status::{ContainerRecord, Exit, RunState};
use crate::runtime::BindMount;

/// How a supervised container ended for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited and its policy does not restart it; the exit code.
    Exited(i32),
    /// The pod stopped it.
    Stopped,
}

/// Supervises container `index` of its list until it ends for good or `stop` fires.
pub async fn supervise(
    ctx: Arc<PodContext>,
    kind: ContainerKind,
    index: usize,
    container: Container,
    stop: CancellationToken,
) -> Outcome {
    let mut backoff: Option<Duration> = None;
    loop {
        let started = Instant::now();
        let exit = match start(&ctx, kind, index, &container).await {
            Ok((child, pid)) => run(&ctx, kind, index, &container, child, pid, &stop).await,
            Err(reason) => {
                ctx.update(kind, index, |c| c.state = reason.clone());
                if let RunState::Waiting { reason, message } = &reason {
                    ctx.event_warning(reason, message.as_deref().unwrap_or_default())
                        .await;
                }
                None
            }
        };
        if stop.is_cancelled() {
            return Outcome::Stopped;
        }
        let code = exit.as_ref().map_or(128, |e| e.exit_code);
        let policy = ctx.restart_policy();
        if exit.is_some() && !should_restart(kind, &policy, code) {
            return Outcome::Exited(code);
        }
        let delay = next_backoff(backoff, started.elapsed(), ctx.agent.backoff_base);
        backoff = Some(delay);
        if exit.is_some() {
            let message = format!(
                "back-off {}s restarting failed container={} pod={}",
                delay.as_secs(),
                container.name,
                ctx.name
            );
            ctx.update(kind, index, |c| {
                c.state = RunState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(message.clone()),
                }
            });
            ctx.event_warning("BackOff", &message).await;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return Outcome::Stopped,
        }
        if exit.is_some() {
            ctx.update(kind, index, |c| c.restart_count += 1);
        }
    }
}

/// Starts the process; on failure, the Waiting state that explains why.
async fn start(
    ctx: &PodContext,
    kind: ContainerKind,
    index: usize,
    container: &Container,
) -> Result<(Child, u32), RunState> {
    let waiting = |reason: &str, message: String| RunState::Waiting {
        reason: reason.into(),
        message: Some(message),
    };
    let image = container.image.clone().unwrap_or_default();
    let argv = ctx
        .agent
        .images
        .resolve(
            &container.name,
            &image,
            container.command.as_deref().unwrap_or_default(),
            container.args.as_deref(),
            &super::container_path(),
        )
        .map_err(|e| waiting("ErrImagePull", e.to_string()))?;
    let services = ctx.agent.services();
    let mut env = container_env(
        &ctx.agent.client,
        &ctx.pod,
        container,
        &services,
        &ctx.facts,
    )
    .await
    .map_err(|e| waiting("CreateContainerConfigError", e.to_string()))?;
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), super::container_path()));
    }
    env.push(("HOSTNAME".into(), ctx.name.clone()));
    let argv: Vec<String> = argv.iter().map(|a| super::env::expand(a, &env)).collect();
    let mounts = mounts(ctx, container).map_err(|e| waiting("CreateContainerConfigError", e))?;

    let restart = ctx.record(kind, index).restart_count;
    let log = ctx.log_path(&container.name, restart);
    let open_log = || {
        std::fs::create_dir_all(log.parent().unwrap_or(&log))?;
        OpenOptions::new().create(true).append(true).open(&log)
    };
    let log_file =
        open_log().map_err(|e| waiting("CreateContainerError", format!("log file: {e}")))?;
    let stderr = log_file
        .try_clone()
        .map_err(|e| waiting("CreateContainerError", format!("log file: {e}")))?;

    let mut command = tokio::process::Command::new(&ctx.agent.exe);
    command
        .arg("container-init")
        .arg(format!("--sandbox-pid={}", ctx.sandbox_pid))
        .arg(format!("--cgroup={}", ctx.cgroup.display()));
    for mount in &mounts {
        command.arg(format!("--mount={}", mount.to_arg()));
    }
    if let Some(dir) = &container.working_dir {
        command.arg(format!("--workdir={dir}"));
    }
    command
        .arg("--")
        .args(&argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    let child = command
        .spawn()
        .map_err(|e| waiting("StartError", format!("starting {}: {e}", argv[0])))?;
    let pid = child
        .id()
        .ok_or_else(|| waiting("StartError", "exited at once".into()))?;
    let now = Timestamp::now();
    ctx.update(kind, index, |c| {
        c.state = RunState::Running {
            started_at: now,
            pid,
        };
        c.ready = false;
        c.started = false;
    });
    ctx.event_normal("Started", &format!("Started container {}", container.name))
        .await;
    tracing::info!(pod = %ctx.key, container = %container.name, pid, "container started");
    Ok((child, pid))
}

/// Waits for the process while running its probes; returns how it ended, or `None` when
/// `stop` fired (the process is then already terminated).
async fn run(
    ctx: &Arc<PodContext>,
    kind: ContainerKind,
    index: usize,
    container: &Container,
    mut child: Child,
    pid: u32,
    stop: &CancellationToken,
) -> Option<Exit> {
    let started_at = Timestamp::now();
    let (tx, mut verdicts) = mpsc::channel(16);
    let probes = tokio::spawn(probe::run(
        container.startup_probe.clone(),
        container.readiness_probe.clone(),
        container.liveness_probe.clone(),
        probe_target(ctx, container, pid),
        tx,
    ));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = stop.cancelled() => {
                ctx.event_normal("Killing", &format!("Stopping container {}", container.name)).await;
                let status = terminate(&mut child, pid, ctx.grace()).await;
                record_exit(ctx, kind, index, status, started_at, pid);
                probes.abort();
                return None;
            }
            Some(verdict) = verdicts.recv() => match verdict {
                Verdict::Started => ctx.update(kind, index, |c| c.started = true),
                Verdict::Ready(ready) => ctx.update(kind, index, |c| c.ready = ready),
                Verdict::Unhealthy(message) => ctx.event_warning("Unhealthy", &message).await,
                Verdict::Kill(message) => {
                    let note = format!("Container {} {message}, will be restarted", container.name);
                    ctx.event_normal("Killing", &note).await;
                    break terminate(&mut child, pid, ctx.probe_grace(container)).await;
                }
            },
        }
    };
    probes.abort();
    // Like the kubelet killing the container's cgroup: nothing it started outlives it.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    Some(record_exit(ctx, kind, index, status, started_at, pid))
}

fn record_exit(
    ctx: &PodContext,
    kind: ContainerKind,
    index: usize,
    status: std::io::Result<ExitStatus>,
    started_at: Timestamp,
    pid: u32,
) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, signal) = match &status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(signal)) => (128 + signal, Some(signal)),
            (None, None) => (128, None),
        },
        Err(_) => (128, None),
    };
    let exit = Exit {
        exit_code,
        signal,
        reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
        started_at,
        finished_at: Timestamp::now(),
        pid,
    };
    ctx.update(kind, index, |c| {
        c.state = RunState::Terminated(exit.clone());
        c.last = Some(exit.clone());
        c.ready = false;
    });
    let _ = std::fs::write(
        ctx.log_path(
            &ctx.record(kind, index).name,
            ctx.record(kind, index).restart_count,
        )
        .with_extension("exited"),
        exit_code.to_string(),
    );
    tracing::info!(pod = %ctx.key, pid, exit_code, "container exited");
    exit
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await
        }
    }
}

fn mounts(ctx: &PodContext, container: &Container) -> Result<Vec<BindMount>, String> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let source = ctx
            .volumes
            .paths
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => source.join(sub),
            None => source.clone(),
        };
        mounts.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    for (file, target) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
        mounts.push(BindMount {
            source: ctx.dir.join(file),
            target: target.into(),
            read_only: true,
        });
    }
    Ok(mounts)
}

fn probe_target(ctx: &Arc<PodContext>, container: &Container, pid: u32) -> probe::Target {
    let agent = ctx.agent.clone();
    let image = container.image.clone().unwrap_or_default();
    let name = container.name.clone();
    probe::Target {
        pod_ip: ctx.facts.pod_ip.clone(),
        ports: container.ports.clone().unwrap_or_default(),
        pid,
        env: Vec::new(),
        resolve_exec: Arc::new(move |command: &[String]| {
            agent
                .images
                .resolve(&name, &image, command, Some(&[]), &super::container_path())
                .unwrap_or_else(|_| command.to_vec())
        }),
    }
}

/// A fresh record for a container of the spec.
pub fn record_for(container: &Container, kind: ContainerKind) -> ContainerRecord {
    ContainerRecord {
        sidecar: kind == ContainerKind::Sidecar,
        ..ContainerRecord::new(
            &container.name,
            container.image.as_deref().unwrap_or_default(),
        )
    }
}
