//! Startup, readiness and liveness probes (HTTP, TCP, exec), run the kubelet's way: an
//! initial delay, a period, a timeout, and success/failure thresholds. The runner reports
//! verdict changes on a channel; the container supervisor acts on them.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

/// Maps an exec probe's command (image paths) to host programs.
pub type ExecResolver = Arc<dyn Fn(&[String]) -> Vec<String> + Send + Sync>;

/// What a probe targets.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP (default host of HTTP and TCP probes).
    pub pod_ip: String,
    /// The container's declared ports (for named probe ports).
    pub ports: Vec<ContainerPort>,
    /// The container's main process, whose namespaces exec probes enter.
    pub pid: u32,
    /// The container's environment, for exec probes.
    pub env: Vec<(String, String)>,
    /// Maps an exec probe's command to host binaries (image paths → mapped programs).
    pub resolve_exec: ExecResolver,
}

/// A change the supervisor must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The startup probe passed (or there is none).
    Started,
    /// Readiness changed.
    Ready(bool),
    /// A probe failed once (kubelet event `Unhealthy`).
    Unhealthy(String),
    /// The startup or liveness probe failed `failureThreshold` times: restart the container.
    Kill(String),
}

/// Runs all of a container's probes until the task is aborted.
pub async fn run(
    startup: Option<Probe>,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    target: Target,
    tx: mpsc::Sender<Verdict>,
) {
    if let Some(probe) = startup
        && !until_success(&probe, "Startup", &target, &tx).await
    {
        return;
    }
    let _ = tx.send(Verdict::Started).await;
    let readiness_loop = async {
        match &readiness {
            Some(probe) => watch_readiness(probe, &target, &tx).await,
            None => {
                let _ = tx.send(Verdict::Ready(true)).await;
            }
        }
    };
    let liveness_loop = async {
        if let Some(probe) = &liveness {
            until_failure(probe, "Liveness", &target, &tx).await;
        }
    };
    tokio::join!(readiness_loop, liveness_loop);
}

fn timing(probe: &Probe) -> (Duration, Duration, u32, u32) {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    (
        secs(probe.initial_delay_seconds, 0),
        secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        probe.failure_threshold.unwrap_or(3).max(1) as u32,
        probe.success_threshold.unwrap_or(1).max(1) as u32,
    )
}

/// Startup probe: true once it passes, false after it failed `failureThreshold` times.
async fn until_success(
    probe: &Probe,
    kind: &str,
    target: &Target,
    tx: &mpsc::Sender<Verdict>,
) -> bool {
    probe_loop(probe, kind, target, tx, true).await
}

/// Liveness probe: returns after it failed `failureThreshold` times in a row (and said so).
async fn until_failure(probe: &Probe, kind: &str, target: &Target, tx: &mpsc::Sender<Verdict>) {
    probe_loop(probe, kind, target, tx, false).await;
}

/// Probes every period, reporting each failure; after `failureThreshold` failures in a row
/// asks for a kill and returns false. With `stop_on_success`, the first pass returns true.
async fn probe_loop(
    probe: &Probe,
    kind: &str,
    target: &Target,
    tx: &mpsc::Sender<Verdict>,
    stop_on_success: bool,
) -> bool {
    let (delay, period, failures, _) = timing(probe);
    tokio::time::sleep(delay).await;
    let mut failed = 0;
    loop {
        match check(probe, target).await {
            Ok(()) if stop_on_success => return true,
            Ok(()) => failed = 0,
            Err(reason) => {
                failed += 1;
                let _ = tx
                    .send(Verdict::Unhealthy(format!("{kind} probe failed: {reason}")))
                    .await;
                if failed >= failures {
                    let _ = tx
                        .send(Verdict::Kill(format!("{kind} probe failed: {reason}")))
                        .await;
                    return false;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Readiness probe: reports each flip, after `successThreshold`/`failureThreshold` in a row.
async fn watch_readiness(probe: &Probe, target: &Target, tx: &mpsc::Sender<Verdict>) {
    let (delay, period, failures, successes) = timing(probe);
    tokio::time::sleep(delay).await;
    let (mut ready, mut streak_ok, mut streak_bad) = (false, 0, 0);
    loop {
        match check(probe, target).await {
            Ok(()) => {
                streak_ok += 1;
                streak_bad = 0;
                if !ready && streak_ok >= successes {
                    ready = true;
                    let _ = tx.send(Verdict::Ready(true)).await;
                }
            }
            Err(reason) => {
                streak_bad += 1;
                streak_ok = 0;
                let _ = tx
                    .send(Verdict::Unhealthy(format!(
                        "Readiness probe failed: {reason}"
                    )))
                    .await;
                if ready && streak_bad >= failures {
                    ready = false;
                    let _ = tx.send(Verdict::Ready(false)).await;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One probe attempt.
pub async fn check(probe: &Probe, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(http) = &probe.http_get {
        let port = port(&http.port, &target.ports)?;
        let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        if scheme != "http" {
            return Err(format!(
                "{scheme} probes are not supported by this node agent"
            ));
        }
        let path = http.path.as_deref().unwrap_or("/");
        let url = format!("http://{host}:{port}{path}");
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.get(&url).header("User-Agent", "kube-probe/1.37");
        for header in http.http_headers.iter().flatten() {
            request = request.header(&header.name, &header.value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let status = response.status();
        return if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(&tcp.port, &target.ports)?;
        let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("bad address {host}:{port}: {e}"))?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: timeout after {timeout:?}")),
        };
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let argv = (target.resolve_exec)(&command);
        let pid = target.pid.to_string();
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["--target", &pid, "--mount", "--net", "--uts", "--ipc", "--"])
            .args(&argv)
            .env_clear()
            .envs(target.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let run = cmd.output();
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "command {command:?} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Ok(Err(e)) => Err(format!("command {command:?}: {e}")),
            Err(_) => Err(format!("command {command:?} timed out after {timeout:?}")),
        };
    }
    Err("probe has no handler this node agent supports (httpGet, tcpSocket, exec)".into())
}

/// A probe port: a number, or the name of one of the container's ports.
pub fn port(port: &IntOrString, ports: &[ContainerPort]) -> Result<i32, String> {
    match port {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(name) => name.parse().or_else(|_| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("no container port named {name:?}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_resolve_through_the_container_spec() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }];
        assert_eq!(port(&IntOrString::Int(9), &ports), Ok(9));
        assert_eq!(port(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(port(&IntOrString::String("81".into()), &ports), Ok(81));
        assert!(port(&IntOrString::String("grpc".into()), &ports).is_err());
    }

    #[test]
    fn defaults_match_the_kubelet() {
        let (delay, period, failures, successes) = timing(&Probe::default());
        assert_eq!(
            (delay, period, failures, successes),
            (Duration::ZERO, Duration::from_secs(10), 3, 1)
        );
    }
}
