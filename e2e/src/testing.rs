//! The e2e test library: start or reuse the local cluster, run each test in its own
//! namespace, wait for conditions, and on failure print what a person would look at
//! (pods, events, container logs) before the namespace is deleted.
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_test() {
//!     testing::run(env!("CARGO_BIN_EXE_hotload-e2e"), "my-test", |ns| async move {
//!         let pods: Api<Pod> = ns.api();
//!         Ok(())
//!     })
//!     .await;
//! }
//! ```

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::cluster::stdout_of;
use crate::layout::Layout;

static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Brings the cluster up once per test process (reusing a running one) with the given
/// `hotload-e2e` binary, and returns the admin kubeconfig.
pub fn ensure_cluster(e2e_bin: &str) -> Result<PathBuf> {
    KUBECONFIG
        .get_or_init(|| {
            let out = std::process::Command::new(e2e_bin)
                .args(["cluster", "up"])
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| format!("running {e2e_bin} cluster up: {e}"))?;
            if !out.status.success() {
                return Err(format!("{e2e_bin} cluster up failed ({})", out.status));
            }
            Ok(Layout::from_env().kubeconfig())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A namespace that exists for one test.
#[derive(Clone)]
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    /// An admin client.
    pub client: Client,
    /// The admin kubeconfig (for kubectl).
    pub kubeconfig: PathBuf,
}

impl TestNamespace {
    /// An API of namespaced `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Runs kubectl (the cluster's own build) in this namespace; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let kubectl = Layout::from_env().cache().join("bin/current/kubectl");
        stdout_of(
            std::process::Command::new(&kubectl)
                .env("KUBECONFIG", &self.kubeconfig)
                .arg("--namespace")
                .arg(&self.name)
                .args(args),
        )
    }

    /// Runs `kubectl hotload …` in this namespace: kubectl finds the plugin
    /// (`kubectl-hotload`, built next to `e2e_bin`) on PATH, as a user's kubectl would.
    pub fn kubectl_hotload(&self, e2e_bin: &str, args: &[&str]) -> Result<std::process::Output> {
        let kubectl = Layout::from_env().cache().join("bin/current/kubectl");
        let plugin_dir = workspace_binary(e2e_bin, "kubectl-hotload")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(plugin_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))?;
        std::process::Command::new(&kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path)
            .args(["hotload", "--namespace", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("running {} hotload", kubectl.display()))
    }

    /// Pods, events, releases and every container's log, for a failing test's output.
    pub async fn dump(&self) -> String {
        let mut out = format!("==== namespace {} ====\n", self.name);
        match self.kubectl(&["get", "pods", "-o", "wide"]) {
            Ok(table) => out.push_str(&table),
            Err(e) => {
                let _ = writeln!(out, "(kubectl get pods failed: {e:#})");
            }
        }
        let events: Api<Event> = self.api();
        if let Ok(list) = events.list(&ListParams::default()).await {
            out.push_str("---- events ----\n");
            for e in list {
                let _ = writeln!(
                    out,
                    "{} {}/{} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
        if let Ok(releases) = self.kubectl(&["get", "pluginreleases", "-o", "yaml"]) {
            out.push_str("---- pluginreleases ----\n");
            out.push_str(&releases);
        }
        let pods: Api<Pod> = self.api();
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let spec = pod.spec.unwrap_or_default();
                let containers = spec
                    .init_containers
                    .unwrap_or_default()
                    .into_iter()
                    .chain(spec.containers);
                for container in containers {
                    let params = LogParams {
                        container: Some(container.name.clone()),
                        tail_lines: Some(40),
                        ..Default::default()
                    };
                    let log = pods
                        .logs(&name, &params)
                        .await
                        .unwrap_or_else(|e| format!("(no log: {e})\n"));
                    let _ = write!(out, "---- logs {name}/{} ----\n{log}", container.name);
                }
            }
        }
        out
    }
}

/// Runs `body` in a fresh namespace; on error or panic prints [`TestNamespace::dump`], then
/// deletes the namespace (kept when `HOTLOAD_E2E_KEEP` is set) and fails the test.
pub async fn run<F, Fut>(e2e_bin: &str, prefix: &str, body: F)
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let ns = match namespace(e2e_bin, prefix).await {
        Ok(ns) => ns,
        Err(e) => panic!("{prefix}: setting up: {e:#}"),
    };
    let failure = match AssertUnwindSafe(body(ns.clone())).catch_unwind().await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                .unwrap_or_else(|| "panic".into()),
        ),
    };
    if let Some(message) = &failure {
        // What failed first, then the namespace: a reader (or a CI summary that shows a
        // window of the output) meets the cause before the pods' logs.
        eprintln!(
            "==== {prefix} failed (namespace {}) ====\n{message}",
            ns.name
        );
        eprintln!("{}", ns.dump().await);
    }
    let keep = failure.is_some() && std::env::var_os("HOTLOAD_E2E_KEEP").is_some();
    if !keep {
        let namespaces: Api<Namespace> = Api::all(ns.client.clone());
        let _ = namespaces.delete(&ns.name, &DeleteParams::default()).await;
    }
    if let Some(message) = failure {
        panic!("{prefix} (namespace {}): {message}", ns.name);
    }
}

async fn namespace(e2e_bin: &str, prefix: &str) -> Result<TestNamespace> {
    crate::tls::install_crypto_provider();
    let kubeconfig = ensure_cluster(e2e_bin)?;
    let client = crate::cluster::client_for(&kubeconfig).await?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .subsec_nanos();
    let name = format!("{prefix}-{:x}", nanos ^ std::process::id());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("hotload.dev/e2e".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    default_service_account(&client, &name).await?;
    Ok(TestNamespace {
        name,
        client,
        kubeconfig,
    })
}

/// Deletes namespace `name` if it exists and waits until it is gone (its pods deleted).
pub async fn delete_namespace_and_wait(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_none() {
        return Ok(());
    }
    let _ = namespaces.delete(name, &DeleteParams::default()).await;
    eventually(&format!("namespace {name} to go"), timeout, || async {
        ensure!(
            namespaces.get_opt(name).await?.is_none(),
            "still terminating"
        );
        Ok(())
    })
    .await
}

/// Namespace `name` made afresh with `labels` (a leftover of a previous run is deleted
/// first), once its default ServiceAccount exists: for the demo and the benchmarks, whose
/// namespaces have fixed names.
pub async fn fresh_namespace(
    client: &Client,
    kubeconfig: &Path,
    name: &str,
    labels: serde_json::Value,
) -> Result<TestNamespace> {
    delete_namespace_and_wait(client, name, Duration::from_secs(900)).await?;
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    default_service_account(client, name).await?;
    Ok(TestNamespace {
        name: name.into(),
        client: client.clone(),
        kubeconfig: kubeconfig.into(),
    })
}

/// Waits for the namespace's default ServiceAccount (a controller creates it; pods need it).
async fn default_service_account(client: &Client, namespace: &str) -> Result<()> {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async {
            accounts
                .get("default")
                .await
                .map(|_| ())
                .map_err(Into::into)
        },
    )
    .await
}

/// The namespace's PluginReleases, as dynamic objects (the e2e crate does not link the
/// operator's types: it checks the API as a user sees it).
pub fn plugin_releases(ns: &TestNamespace) -> Api<kube::api::DynamicObject> {
    use kube::api::{ApiResource, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("hotload.dev", "v1alpha1", "PluginRelease");
    Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk(&gvk))
}

/// A workspace binary built next to `hotload-e2e` (`cargo build --workspace --bins`).
pub fn workspace_binary(e2e_bin: &str, name: &str) -> Result<PathBuf> {
    let path = Path::new(e2e_bin).with_file_name(name);
    ensure!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (make e2e does)",
        path.display()
    );
    Ok(path)
}

/// A CA made for one test and a serving certificate it signed.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A CA and a certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Applies every CRD in the repository's `crds/` (server-side apply) and waits until the
/// API server serves them.
pub async fn apply_crds(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let params = PatchParams::apply("hotload-e2e").force();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying {}", path.display()))?;
        eventually(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                ensure!(established, "not established yet");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Retries `check` every 250 ms until it returns `Ok`, or fails with its last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// An HTTP GET from the test process (root netns, routed into the cluster); returns the body.
pub async fn http_get(url: &str) -> Result<String> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    Ok(body)
}

/// An HTTP POST with an empty body from the test process.
pub async fn http_post(url: &str) -> Result<String> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .post(url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    Ok(response.error_for_status()?.text().await?)
}

/// The pid behind a container status's `hotload://<pid>` container ID.
pub fn container_pid(container_id: &str) -> Option<u32> {
    container_id.strip_prefix("hotload://")?.parse().ok()
}

/// Whether process `pid` is alive on this machine.
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A PluginRelease status's condition `type_` as (status, reason).
pub fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> Option<(&'a str, &'a str)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
            )
        })
}
