//! The demo workload's plugins and traffic: the example tagger plugin (compiled from
//! `examples/plugins/*.wat`), and a load loop that checks every answer is whole from one
//! plugin version. The rollout tests and `make demo` share them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

/// The text of the example plugin `examples/plugins/tagger-v<version>.wat`.
pub fn tagger_source(version: u8) -> Result<String> {
    let path = format!(
        "{}/../examples/plugins/tagger-v{version}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(std::fs::read_to_string(path)?)
}

/// The example plugin tagger v`version`, compiled.
pub fn tagger(version: u8) -> Result<Vec<u8>> {
    Ok(wat::parse_str(tagger_source(version)?)?)
}

/// The example plugin `examples/plugins/<name>.wat`, compiled (`tagger-flaky`: tag v03,
/// traps on one call in five; `tagger-slow`: tag v04, burns milliseconds per call).
pub fn example_plugin(name: &str) -> Result<Vec<u8>> {
    let path = format!(
        "{}/../examples/plugins/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(wat::parse_str(std::fs::read_to_string(path)?)?)
}

/// Tagger v1 with its tag overwritten, so its self-check export fails.
pub fn tagger_failing_self_check() -> Result<Vec<u8>> {
    let text = tagger_source(1)?.replace(r#""v01:""#, r#""x03:""#);
    Ok(wat::parse_str(text)?)
}

/// POSTs `body` to a demo pod; the answer's text.
pub async fn post(ip: &str, body: &str) -> Result<String> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .post(format!("http://{ip}:8080/"))
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{status}: {text}");
    Ok(text)
}

/// Waits until `address` answers a request (a new Service's ClusterIP answers once
/// kube-proxy has programmed it, a moment after the Service is created).
pub async fn wait_answering(address: &str) -> Result<()> {
    crate::testing::eventually(
        &format!("{address} to answer"),
        Duration::from_secs(30),
        || async { post(address, "probe").await.map(drop) },
    )
    .await
}

/// The version tag of a tagger response (`v01:` + body + `v01:`); `None` if the two tags
/// differ (a response mixed from two versions) or are missing.
pub fn tag_of(body: &str) -> Option<String> {
    let (head, tail) = (body.get(..4)?, body.get(body.len().checked_sub(4)?..)?);
    (head == tail && head.ends_with(':')).then(|| head.trim_end_matches(':').to_string())
}

/// Requests round-robin over pods until stopped; every answer must be whole from one version.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<TrafficReport>,
}

/// The longest any [`Traffic`] runs.
pub const MAX_TRAFFIC: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct TrafficReport {
    /// Whole answers.
    pub ok: usize,
    /// What went wrong, per failed request.
    pub failed: Vec<String>,
    /// Plugin versions seen.
    pub tags: BTreeSet<String>,
}

impl Traffic {
    /// Starts requests round-robin over `ips`, until [`Traffic::finish`] or at most
    /// [`MAX_TRAFFIC`] (a test that forgets to finish it does not load the pods forever).
    pub fn start(ips: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = TrafficReport::default();
            let mut i = 0usize;
            let started = std::time::Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < MAX_TRAFFIC {
                let ip = &ips[i % ips.len()];
                match post(ip, &format!("request-{i}")).await {
                    Ok(body) => match tag_of(&body) {
                        Some(tag) => {
                            report.ok += 1;
                            report.tags.insert(tag);
                        }
                        None => report.failed.push(format!("{ip}: mixed answer {body:?}")),
                    },
                    Err(e) => report.failed.push(format!("{ip}: {e:#}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            report
        });
        Self { stop, task }
    }

    /// Stops and reports.
    pub async fn finish(self) -> Result<TrafficReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// The demo app as a user writes it: no sidecar, only the annotation naming the ConfigMap
/// of artifact-server CAs. The webhook adds the rest.
pub fn deployment(replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "demo"},
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
                    "containers": [{
                        "name": "app",
                        "image": "hotload/demo-app:dev",
                        "args": ["--listen=0.0.0.0:8080"],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?)
}
