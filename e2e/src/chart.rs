//! The Helm chart, installed with the real `helm` into a test's namespace: the operator runs
//! in-cluster as a pod (image `hotload/operator:dev`, mapped to the workspace binary) and
//! injects sidecars (`hotload/sidecar:dev`) through its webhook.
//!
//! Each install manages only its own namespace (`watchNamespace`), so tests running side by
//! side never see each other's pods, releases or webhooks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::ListParams;

use crate::cluster::stdout_of;
use crate::layout::Layout;
use crate::testing::{TestNamespace, container_pid, eventually};

/// The Helm release name every test uses.
pub const RELEASE: &str = "hotload";
/// Label selecting the operator's pods.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/instance=hotload";

/// The chart's directory in this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/hotload")
}

/// The cluster's own helm build.
pub fn helm_binary() -> PathBuf {
    Layout::from_env().cache().join("bin/current/helm")
}

/// `--set` values for the dev images (mapped to the workspace binaries).
pub fn dev_values() -> Vec<String> {
    vec![
        "image.repository=hotload/operator".into(),
        "image.tag=dev".into(),
        "sidecar.image.repository=hotload/sidecar".into(),
        "sidecar.image.tag=dev".into(),
        "logJson=false".into(),
    ]
}

/// `helm template` of the chart into `namespace` with `values` (`--set`), for checks of
/// what each mode renders.
pub fn template(namespace: &str, values: &[&str]) -> Result<String> {
    let mut command = Command::new(helm_binary());
    command.args(["template", RELEASE]).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--kube-version",
        "1.37.0",
    ]);
    for value in values {
        command.args(["--set", value]);
    }
    stdout_of(&mut command)
}

/// A chart install; a test's is uninstalled when dropped (its cluster-scoped objects
/// outlive the namespace otherwise).
pub struct Chart {
    namespace: String,
    kubeconfig: PathBuf,
    scoped: bool,
    installed: bool,
}

impl Chart {
    /// `helm install --wait` with [`dev_values`] plus `values`, managing only the test's
    /// namespace.
    pub fn install(ns: &TestNamespace, values: &[&str]) -> Result<Self> {
        let mut chart = Self {
            namespace: ns.name.clone(),
            kubeconfig: ns.kubeconfig.clone(),
            scoped: true,
            installed: false,
        };
        chart.helm(&["install"], values)?;
        chart.installed = true;
        Ok(chart)
    }

    /// `helm upgrade --install --wait` of a cluster-wide operator into `namespace` (created
    /// if missing), kept after the process ends: what `make demo` installs.
    pub fn install_cluster_wide(
        kubeconfig: &Path,
        namespace: &str,
        values: &[&str],
    ) -> Result<Self> {
        let chart = Self {
            namespace: namespace.into(),
            kubeconfig: kubeconfig.into(),
            scoped: false,
            installed: false,
        };
        chart.helm(&["upgrade", "--install", "--create-namespace"], values)?;
        Ok(chart)
    }

    /// `helm upgrade --wait` with [`dev_values`] plus `values` (values not given return to
    /// their defaults, as with a fresh install).
    pub fn upgrade(&self, values: &[&str]) -> Result<String> {
        self.helm(&["upgrade"], values)
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(mut self) -> Result<String> {
        self.installed = false;
        self.run(&["uninstall", RELEASE, "--wait", "--timeout", "120s"])
    }

    /// `helm <verb…> hotload <chart> --wait` with [`dev_values`] plus `values` (`--set`).
    fn helm(&self, verb: &[&str], values: &[&str]) -> Result<String> {
        let chart = chart_dir().display().to_string();
        let mut args: Vec<String> = verb.iter().map(ToString::to_string).collect();
        args.extend([RELEASE, &chart, "--wait", "--timeout", "120s"].map(String::from));
        let mut all = dev_values();
        if self.scoped {
            all.push(format!("watchNamespace={}", self.namespace));
        }
        all.extend(values.iter().map(ToString::to_string));
        for value in all {
            args.push("--set".into());
            args.push(value);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// Runs helm in this namespace; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let helm_home = std::env::temp_dir().join("hotload-helm");
        stdout_of(
            Command::new(helm_binary())
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", helm_home.join("cache"))
                .env("HELM_CONFIG_HOME", helm_home.join("config"))
                .env("HELM_DATA_HOME", helm_home.join("data"))
                .args(["--namespace", &self.namespace])
                .args(args),
        )
    }

    /// The operator's channel as sidecars dial it.
    pub fn channel_url(&self) -> String {
        format!("https://{RELEASE}.{}.svc:8443", self.namespace)
    }

    /// The operator's running pods.
    pub async fn operator_pods(ns: &TestNamespace) -> Result<Vec<Pod>> {
        let pods: kube::Api<Pod> = ns.api();
        let list = pods
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// The statuses of the operator's containers (every pod).
    async fn operator_containers(ns: &TestNamespace) -> Result<Vec<ContainerStatus>> {
        Ok(Self::operator_pods(ns)
            .await?
            .into_iter()
            .filter_map(|p| p.status?.container_statuses)
            .flatten()
            .collect())
    }

    /// The pid of a running operator container on this machine.
    pub async fn operator_pid(ns: &TestNamespace) -> Result<u32> {
        Self::operator_containers(ns)
            .await?
            .iter()
            .find_map(|c| c.container_id.as_deref().and_then(container_pid))
            .context("no running operator container")
    }

    /// Kills the operator's process with SIGKILL (no clean shutdown, no lease release);
    /// the kubelet starts it again. Returns the pid that was killed.
    pub async fn kill_operator(ns: &TestNamespace) -> Result<u32> {
        let pid = Self::operator_pid(ns).await?;
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -9 {pid} failed");
        Ok(pid)
    }

    /// Waits until an operator pod is Ready (leader, caches synced).
    pub async fn wait_ready(ns: &TestNamespace) -> Result<()> {
        eventually(
            "an operator pod to be Ready",
            Duration::from_secs(90),
            || async {
                let pods = Self::operator_pods(ns).await?;
                anyhow::ensure!(pods.iter().any(is_ready), "no operator pod is Ready");
                Ok(())
            },
        )
        .await
    }

    /// The leader's pod IP: its admin port (9090) and channel (8443) are reachable from
    /// this machine.
    pub async fn leader_ip(ns: &TestNamespace) -> Result<String> {
        let pods = Self::operator_pods(ns).await?;
        pods.iter()
            .find(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("hotload.dev/leader"))
                    .is_some()
                    && is_ready(p)
            })
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            .context("no Ready operator pod labelled leader")
    }

    /// The operator's CA (PEM), from its TLS Secret.
    pub async fn ca_pem(ns: &TestNamespace) -> Result<String> {
        let secret = ns
            .api::<k8s_openapi::api::core::v1::Secret>()
            .get(&format!("{RELEASE}-tls"))
            .await?;
        let bytes = secret
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .context("the TLS Secret has no ca.crt")?;
        Ok(String::from_utf8(bytes.0)?)
    }

    /// The total restarts of the operator's containers.
    pub async fn restarts(ns: &TestNamespace) -> Result<i32> {
        Ok(Self::operator_containers(ns)
            .await?
            .iter()
            .map(|c| c.restart_count)
            .sum())
    }

    /// The operator's log (all its pods, the last `lines` lines each).
    pub fn log(ns: &TestNamespace, lines: usize) -> String {
        ns.kubectl(&[
            "logs",
            "-l",
            OPERATOR_SELECTOR,
            "--tail",
            &lines.to_string(),
            "--prefix",
        ])
        .unwrap_or_else(|e| format!("(no operator log: {e:#})"))
    }
}

impl Drop for Chart {
    fn drop(&mut self) {
        if self.installed {
            let _ = self.run(&["uninstall", RELEASE, "--timeout", "60s"]);
        }
    }
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
