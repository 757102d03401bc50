//! The demo fleet the rollout tests and their kin drive: the chart-installed operator, an
//! HTTPS artifact server, and a Deployment of demo-app pods in a namespace opted in to
//! injection, with helpers that read what a user would (the release's status and events,
//! `kubectl wait`, `kubectl hotload`, and what the pods answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::artifacts::{ArtifactServer, digest_of};
use crate::chart::{Chart, is_ready};
use crate::testing::{self, TestNamespace, eventually};
use crate::workload::{deployment, post, tag_of};

/// How long a fleet helper waits for what it waits for.
pub const WAIT: Duration = Duration::from_secs(120);
/// The release every fleet test applies.
pub const RELEASE: &str = "handler";

/// One plugin artifact on the artifact server.
#[derive(Clone)]
pub struct Artifact {
    pub file: String,
    pub url: String,
    pub digest: String,
    /// The release requires a cosign signature made with this key (PEM).
    pub signature_key: Option<String>,
}

/// The namespace's fleet: the chart (operator and webhook), an artifact server, and a
/// Deployment of demo pods in a namespace opted in to injection.
pub struct Demo {
    /// The test's namespace.
    pub ns: TestNamespace,
    /// The chart (operator and webhook) installed in it.
    pub chart: Chart,
    /// The artifact server the releases point at.
    pub artifacts: ArtifactServer,
    e2e_bin: String,
}

impl Demo {
    /// Installs the chart, opts the namespace in, and starts `replicas` demo pods.
    pub async fn start(e2e_bin: &str, ns: &TestNamespace, replicas: i32) -> Result<Self> {
        Self::start_with(e2e_bin, ns, deployment(replicas)?).await
    }

    /// As [`Demo::start`], with a Deployment of the test's own (its pods labelled
    /// `app=demo`).
    pub async fn start_with(e2e_bin: &str, ns: &TestNamespace, app: Deployment) -> Result<Self> {
        Self::start_with_chart(e2e_bin, ns, app, &[]).await
    }

    /// As [`Demo::start_with`], with chart values of the test's own (`--set`, say
    /// `replicaCount=2`).
    pub async fn start_with_chart(
        e2e_bin: &str,
        ns: &TestNamespace,
        app: Deployment,
        values: &[&str],
    ) -> Result<Self> {
        Self::start_trusting(e2e_bin, ns, app, values, None).await
    }

    /// As [`Demo::start_with_chart`], with one more CA (PEM) in the pods' `artifact-ca`
    /// bundle, for another artifact host (an OCI registry of the test's own).
    pub async fn start_trusting(
        e2e_bin: &str,
        ns: &TestNamespace,
        app: Deployment,
        values: &[&str],
        extra_ca_pem: Option<&str>,
    ) -> Result<Self> {
        // Fail fast on unreachable artifact hosts, so rollbacks are quick to test.
        let mut all = vec!["sidecar.args={--attempts=2,--connect-timeout-ms=5000}"];
        all.extend_from_slice(values);
        let chart = Chart::install(ns, &all)?;
        ns.kubectl(&["label", "namespace", &ns.name, "hotload.dev/inject=enabled"])?;
        let artifacts = ArtifactServer::start().await?;
        let ca: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "artifact-ca"},
            "data": {"ca.crt": format!("{}{}", artifacts.ca_pem, extra_ca_pem.unwrap_or_default())},
        }))?;
        ns.api::<ConfigMap>()
            .create(&PostParams::default(), &ca)
            .await?;
        Chart::wait_ready(ns).await?;
        let replicas = app.spec.replicas.unwrap_or(1).try_into()?;
        ns.api::<Deployment>()
            .create(&PostParams::default(), &app)
            .await?;
        let demo = Self {
            ns: ns.clone(),
            chart,
            artifacts,
            e2e_bin: e2e_bin.to_string(),
        };
        demo.ready_pods(replicas).await?;
        Ok(demo)
    }

    pub fn publish(&self, file: &str, bytes: &[u8]) -> Artifact {
        Artifact {
            file: file.into(),
            url: self.artifacts.put(file, bytes),
            digest: digest_of(bytes),
            signature_key: None,
        }
    }

    /// Applies the release as a GitOps tool would: server-side apply of the whole spec.
    pub async fn apply(&self, artifact: &Artifact, extra: Value) -> Result<i64> {
        self.apply_pulling(artifact, None, extra).await
    }

    /// As [`Demo::apply`], the artifact pulled with the credentials of Secret
    /// `pull_secret` (`spec.artifact.pullSecret`) when one is named.
    pub async fn apply_pulling(
        &self,
        artifact: &Artifact,
        pull_secret: Option<&str>,
        extra: Value,
    ) -> Result<i64> {
        let mut spec = json!({
            "plugin": "handler",
            "selector": {"matchLabels": {"app": "demo"}},
            "artifact": {"url": artifact.url, "digest": artifact.digest},
        });
        if let Some(key) = &artifact.signature_key {
            spec["artifact"]["signature"] = json!({"publicKey": key});
        }
        if let Some(secret) = pull_secret {
            spec["artifact"]["pullSecret"] = json!(secret);
        }
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let release = json!({
            "apiVersion": "hotload.dev/v1alpha1",
            "kind": "PluginRelease",
            "metadata": {"name": RELEASE},
            "spec": spec,
        });
        let applied = testing::plugin_releases(&self.ns)
            .patch(
                RELEASE,
                &PatchParams::apply("e2e-gitops").force(),
                &Patch::Apply(release),
            )
            .await?;
        Ok(applied.metadata.generation.unwrap_or_default())
    }

    /// What Argo CD's health check (integrations/argocd) says about the live release.
    pub async fn argo_health(&self) -> Result<(String, String)> {
        let object = testing::plugin_releases(&self.ns).get(RELEASE).await?;
        crate::argocd::health(&serde_json::to_value(&object)?)
    }

    /// `kubectl hotload <verb> handler …`: stdout, failing on a non-zero exit.
    pub fn cli(&self, verb: &str, extra: &[&str]) -> Result<String> {
        let args: Vec<&str> = [verb, RELEASE]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let out = self.ns.kubectl_hotload(&self.e2e_bin, &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            out.status.success(),
            "kubectl hotload {}: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    pub async fn status(&self) -> Result<Value> {
        Ok(testing::plugin_releases(&self.ns).get(RELEASE).await?.data["status"].clone())
    }

    /// Waits until the operator has seen `generation` and `check` holds on the status.
    pub async fn wait_status(
        &self,
        what: &str,
        generation: i64,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let check = &check;
        eventually(what, WAIT, || async move {
            let status = self.status().await?;
            ensure!(
                status["observedGeneration"] == generation && check(&status),
                "status: {status:#}"
            );
            Ok(status)
        })
        .await
        .with_context(|| format!("operator log (tail):\n{}", Chart::log(&self.ns, 40)))
    }

    /// Waits for `kubectl wait --for=condition=Ready` on the release at `generation`.
    pub async fn wait_ready(&self, generation: i64) -> Result<Value> {
        self.wait_status("the release to observe the spec", generation, |_| true)
            .await?;
        let out = self.ns.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("plr/{RELEASE}"),
            "--timeout=120s",
        ]);
        let status = self.status().await?;
        out.with_context(|| format!("kubectl wait; status: {status:#}"))?;
        Ok(status)
    }

    /// The Ready pods' names and IPs, once there are `n`.
    pub async fn ready_pods(&self, n: usize) -> Result<Vec<(String, String)>> {
        eventually(&format!("{n} ready demo pods"), WAIT, || async {
            let ready = self.ready_pods_now().await?;
            ensure!(ready.len() == n, "{} of {n} ready", ready.len());
            Ok(ready)
        })
        .await
    }

    /// The demo pods Ready right now (not being deleted): names and IPs.
    pub async fn ready_pods_now(&self) -> Result<Vec<(String, String)>> {
        let pods: Api<Pod> = self.ns.api();
        let list = pods.list(&ListParams::default().labels("app=demo")).await?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p.metadata.name.clone()?, ip))
            })
            .collect())
    }

    /// What every ready pod answers to a request: `(pod, tag)`.
    pub async fn tags(&self, n: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (pod, ip) in self.ready_pods(n).await? {
            let body = post(&ip, "probe").await?;
            let tag = tag_of(&body).with_context(|| format!("{pod}: {body}"))?;
            out.push((pod, tag));
        }
        Ok(out)
    }

    /// Waits until every one of `n` ready pods answers with `tag`.
    pub async fn all_serve(&self, n: usize, tag: &str) -> Result<()> {
        eventually(&format!("{n} pods to serve {tag}"), WAIT, || async {
            let tags = self.tags(n).await?;
            ensure!(tags.iter().all(|(_, t)| t == tag), "{tags:?}");
            Ok(())
        })
        .await
    }

    pub async fn events(&self) -> Result<Vec<(String, String)>> {
        let list = self
            .ns
            .api::<Event>()
            .list(&ListParams::default().fields(&format!("involvedObject.name={RELEASE}")))
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }
}

/// Every listed pod acknowledged `revision` as loaded.
pub fn all_loaded(status: &Value, revision: &Value, n: usize) -> bool {
    let pods = status["pods"].as_array().cloned().unwrap_or_default();
    pods.len() == n
        && pods
            .iter()
            .all(|p| p["revision"] == *revision && p["state"] == "Loaded")
}

/// Reads the demo's chunked `/stream` until stopped; returns the tags seen in order and
/// whether the connection stayed open the whole time.
pub fn watch_stream(
    ip: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<String>>> {
    tokio::spawn(async move {
        let mut response = reqwest::get(format!("http://{ip}:8080/stream")).await?;
        let mut seen: Vec<String> = Vec::new();
        let mut pending = String::new();
        let started = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            ensure!(
                started.elapsed() < crate::workload::MAX_TRAFFIC,
                "the stream was never told to stop"
            );
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                .await
                .context("the stream went silent")??
                .context("the stream closed during the rollout")?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let tag =
                    tag_of(line.trim_end()).with_context(|| format!("stream line {line:?}"))?;
                if seen.last() != Some(&tag) {
                    seen.push(tag);
                }
            }
        }
        Ok(seen)
    })
}
