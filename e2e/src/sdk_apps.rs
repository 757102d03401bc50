//! The app SDKs' example servers as cluster workloads: the Go example
//! (`sdk/go/examples/server`, built here with `go build`) and the Python example
//! (`sdk/python/examples/server`, gunicorn with several workers from the SDK's venv), each
//! in a Deployment the webhook injects, and a probe of what every worker process of a pod
//! answers.
//!
//! Both apps keep the demo app's contract: `POST /` answers the `handler` plugin's output,
//! every response names its worker (`x-hotload-worker`) and `POST /` the plugin revision
//! (`x-hotload-revision`), `GET /healthz` answers once the app serves HTTP.
//!
//! There is no container engine: a container's `command[0]` runs from the host (see
//! [`crate::images`]), so the pods name the built binary and the venv's gunicorn by their
//! host paths; the image only has to be one the node knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use crate::layout::Layout;
use crate::workload::tag_of;

/// Response header naming the worker process that answered.
pub const WORKER_HEADER: &str = "x-hotload-worker";
/// Response header of `POST /` naming the plugin revision that produced the body.
pub const REVISION_HEADER: &str = "x-hotload-revision";

/// An image the node maps; the SDK apps' pods override its command with host paths.
const IMAGE: &str = "hotload/demo-app:dev";

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the Go example server with the Go SDK of this checkout; its path under
/// `$HOTLOAD_CACHE/sdk-apps`. Built to a temporary name and renamed into place, so a pod
/// still running an earlier build keeps its binary.
pub fn build_go_server() -> Result<PathBuf> {
    let dir = Layout::from_env().cache().join("sdk-apps");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("go-example-server");
    let partial = dir.join(format!("go-example-server.{}.partial", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg("./examples/server")
        .current_dir(repo().join("sdk/go"))
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running `go build` (is Go installed? `make deps` installs it)")?;
    ensure!(
        out.status.success(),
        "go build ./examples/server in sdk/go failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &binary)
        .with_context(|| format!("moving the build to {}", binary.display()))?;
    Ok(binary)
}

/// The venv `make sdk-python` makes (`$HOTLOAD_CACHE/venv`): its gunicorn, once checked to
/// import this checkout's SDK.
pub fn python_gunicorn() -> Result<PathBuf> {
    let venv = Layout::from_env().cache().join("venv");
    let gunicorn = venv.join("bin/gunicorn");
    ensure!(
        gunicorn.is_file(),
        "{} is missing: run `make sdk-python` (it makes the venv with the SDK and gunicorn)",
        gunicorn.display()
    );
    // The node finds command[0] by file name on its PATH first (see crate::images).
    let shadow = crate::node::container_path()
        .split(':')
        .map(|dir| Path::new(dir).join("gunicorn"))
        .find(|p| p.is_file());
    ensure!(
        shadow.is_none(),
        "{} would run instead of the venv's gunicorn in the pods",
        shadow.unwrap_or_default().display()
    );
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import gunicorn, hotload"])
        .env("PYTHONPATH", python_sdk_source())
        .output()
        .context("running the venv's python")?;
    ensure!(
        out.status.success(),
        "the venv at {} cannot import gunicorn and the SDK's dependencies; run `make \
         sdk-python`: {}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(gunicorn)
}

/// This checkout's Python SDK, put first on the pods' `PYTHONPATH`.
fn python_sdk_source() -> PathBuf {
    repo().join("sdk/python/src")
}

/// A Deployment of `replicas` Go example servers (one worker each).
pub fn go_deployment(name: &str, replicas: i32, binary: &Path) -> Result<Deployment> {
    let container = json!({
        "name": "app",
        "image": IMAGE,
        "command": [binary],
        "args": ["-listen=0.0.0.0:8080"],
    });
    app_deployment(name, replicas, container)
}

/// A Deployment of `replicas` Python example servers, gunicorn with `workers` workers each.
pub fn python_deployment(
    name: &str,
    replicas: i32,
    workers: usize,
    gunicorn: &Path,
) -> Result<Deployment> {
    let app = repo().join("sdk/python/examples/server");
    let container = json!({
        "name": "app",
        "image": IMAGE,
        "command": [gunicorn],
        "args": [
            "--config", app.join("gunicorn.conf.py"),
            "--chdir", app,
            "--bind", "0.0.0.0:8080",
            "--workers", workers.to_string(),
            "wsgi:app",
        ],
        // The checkout is the pods' source tree: they read it, never write bytecode into it.
        "env": [
            {"name": "PYTHONPATH", "value": python_sdk_source()},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ],
    });
    app_deployment(name, replicas, container)
}

/// The app as a user writes it (pods labelled `app=demo`, as [`crate::fleet::Demo`]
/// selects): no sidecar, only the annotation naming the artifact server's CA. The webhook
/// adds the rest.
fn app_deployment(name: &str, replicas: i32, mut container: Value) -> Result<Deployment> {
    container["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {
                "metadata": {
                    "labels": {"app": "demo"},
                    "annotations": {"hotload.dev/ca-bundle": "artifact-ca"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            },
        },
    }))?)
}

/// What one worker process answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerAnswers {
    /// The plugin version tags of its bodies (`v02`).
    pub tags: BTreeSet<String>,
    /// The revisions its `x-hotload-revision` headers named.
    pub revisions: BTreeSet<String>,
}

/// What each worker process of the pod at `ip` answers, by worker id: requests on a new
/// connection each (so the kernel spreads them over the workers sharing the port) until
/// `workers` workers have answered, sending at least 3 and at most 60 requests per expected
/// worker. Any request that fails, or a body mixed from two versions, is an error.
pub async fn answers_by_worker(
    ip: &str,
    workers: usize,
) -> Result<BTreeMap<String, WorkerAnswers>> {
    let mut seen: BTreeMap<String, WorkerAnswers> = BTreeMap::new();
    let mut sent = 0;
    while sent < 60 * workers && (seen.len() < workers || sent < 3 * workers) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()?;
        let response = client
            .post(format!("http://{ip}:8080/"))
            .body(format!("probe-{sent}"))
            .send()
            .await
            .with_context(|| format!("{ip}: probe {sent}"))?;
        sent += 1;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .with_context(|| format!("{ip}: no {name} header"))
        };
        let worker = header(WORKER_HEADER)?;
        let revision = header(REVISION_HEADER);
        let status = response.status();
        let body = response.text().await?;
        ensure!(
            status.is_success(),
            "{ip} worker {worker}: {status}: {body}"
        );
        let tag = tag_of(&body).with_context(|| format!("{ip} worker {worker}: {body:?}"))?;
        let answers = seen.entry(worker).or_default();
        answers.tags.insert(tag);
        answers.revisions.insert(revision?);
    }
    Ok(seen)
}
