//! `make demo`: the whole story on the local cluster, narrated. The chart goes into
//! `hotload-system`; five demo-app pods in namespace `demo` get their sidecar from the
//! webhook; PluginRelease `handler` takes them to v1, then to v2 while requests flow, then
//! a broken v3 fails its self-check on the first pod and the fleet rolls back to v2; then
//! the Deployment scales to 8 while requests flow through its Service, and the new pods take
//! traffic only once their plugin serves. The summary is what a user would check: per-pod
//! acknowledgements, the history, and the traffic (0 failed requests).
//!
//! The artifact server runs inside this process (HTTPS on the node link, reachable from
//! pods), so it stops when the demo ends; what the pods loaded stays loaded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::artifacts::{ArtifactServer, digest_of};
use crate::chart::{Chart, is_ready};
use crate::layout::Layout;
use crate::testing::{TestNamespace, eventually, fresh_namespace, plugin_releases};
use crate::workload::{Traffic, deployment, tagger, tagger_failing_self_check};

const APP_NAMESPACE: &str = "demo";
const SYSTEM_NAMESPACE: &str = "hotload-system";
const RELEASE: &str = "handler";
const WAIT: Duration = Duration::from_secs(180);

/// Runs the demo on the cluster at `kubeconfig` and prints the summary.
pub async fn run(layout: &Layout, e2e_bin: &str) -> Result<()> {
    let kubeconfig = layout.kubeconfig();
    let client = crate::cluster::client_for(&kubeconfig).await?;
    let system = TestNamespace {
        name: SYSTEM_NAMESPACE.into(),
        client: client.clone(),
        kubeconfig: kubeconfig.clone(),
    };

    step("installing the chart into hotload-system (helm upgrade --install)");
    Chart::install_cluster_wide(&kubeconfig, SYSTEM_NAMESPACE, &[])?;
    Chart::wait_ready(&system).await?;

    step("namespace demo, opted in to injection (hotload.dev/inject=enabled)");
    let app = fresh_namespace(
        &client,
        &kubeconfig,
        APP_NAMESPACE,
        json!({"hotload.dev/inject": "enabled"}),
    )
    .await?;
    let artifacts = ArtifactServer::start().await?;
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "artifact-ca"}, "data": {"ca.crt": artifacts.ca_pem}}))?;
    app.api::<ConfigMap>()
        .create(&PostParams::default(), &ca)
        .await?;

    step("5 demo-app pods; the webhook adds the sidecar");
    app.api::<Deployment>()
        .create(&PostParams::default(), &deployment(5)?)
        .await?;
    let ips = ready_pods(&app, 5).await?;
    let injected = app
        .api::<Pod>()
        .list(&ListParams::default().labels("app=demo"))
        .await?
        .items
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.name == "hotload-sidecar"))
        })
        .count();

    let publish = |file: &str, bytes: &[u8]| (artifacts.put(file, bytes), digest_of(bytes));
    let v1 = publish("tagger-v1.wasm", &tagger(1)?);
    let v2 = publish("tagger-v2.wasm", &tagger(2)?);
    let v3 = publish("tagger-v3-broken.wasm", &tagger_failing_self_check()?);

    step("PluginRelease handler → v1");
    let took_v1 = roll(&app, &v1, "Completed").await?;
    step("v2, two pods at a time, while requests flow");
    let traffic = Traffic::start(ips.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took_v2 = roll(&app, &v2, "Completed").await?;
    step("v3, whose self-check fails: it must roll back");
    let took_v3 = roll(&app, &v3, "RolledBack").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = traffic.finish().await?;
    step("scale to 8 pods while requests flow through Service demo");
    let scaled = scale_under_traffic(&app, 8).await?;

    let status = plugin_releases(&app).get(RELEASE).await?.data["status"].clone();
    let plugin_cli = |verb: &str| -> Result<String> {
        let out = app.kubectl_hotload(e2e_bin, &[verb, RELEASE])?;
        ensure!(
            out.status.success(),
            "kubectl hotload {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let tags: Vec<&str> = report.tags.iter().map(String::as_str).collect();
    println!();
    println!("==== Hotload demo: what happened ====");
    println!("pods:      {injected} of 5 demo pods got the sidecar from the webhook");
    println!("v1:        on 5/5 pods in {:.1}s", took_v1.as_secs_f64());
    println!(
        "v2:        on 5/5 pods in {:.1}s, two at a time, under traffic",
        took_v2.as_secs_f64()
    );
    println!(
        "v3:        rolled back in {:.1}s: {}",
        took_v3.as_secs_f64(),
        status["message"].as_str().unwrap_or_default()
    );
    println!(
        "traffic:   {} requests, failed requests = {}, versions answered: {}",
        report.ok + report.failed.len(),
        report.failed.len(),
        tags.join(", ")
    );
    println!(
        "scale:     5 → 8 pods in {:.1}s (new pods Ready only once they serve v02), {} requests through Service demo, failed requests = {}",
        scaled.took.as_secs_f64(),
        scaled.report.ok + scaled.report.failed.len(),
        scaled.report.failed.len()
    );
    println!();
    println!("$ kubectl hotload pods {RELEASE} -n {APP_NAMESPACE}");
    print!("{}", plugin_cli("pods")?);
    println!();
    println!("$ kubectl hotload history {RELEASE} -n {APP_NAMESPACE}");
    print!("{}", plugin_cli("history")?);
    println!();
    println!("Explore: export KUBECONFIG={}", kubeconfig.display());
    // kubectl and helm, and kubectl-hotload (built next to this binary).
    let plugin_dir = std::path::Path::new(e2e_bin)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    println!(
        "         export PATH={}:{plugin_dir}:$PATH",
        layout.cache().join("bin/current").display()
    );
    println!("         kubectl hotload status {RELEASE} -n {APP_NAMESPACE}");
    println!("Stop:    make cluster-down");
    for failure in report.failed.iter().chain(&scaled.report.failed).take(5) {
        eprintln!("failed request: {failure}");
    }
    ensure!(
        report.failed.is_empty() && scaled.report.failed.is_empty(),
        "{} requests failed",
        report.failed.len() + scaled.report.failed.len()
    );
    ensure!(injected == 5, "only {injected} of 5 pods were injected");
    Ok(())
}

/// How a scale-up under traffic went.
struct Scaled {
    took: Duration,
    report: crate::workload::TrafficReport,
}

/// Puts a Service in front of the demo pods, sends requests through it (kube-proxy routes
/// only to Ready pods) while the Deployment scales to `replicas`, and waits until every pod
/// is Ready and its acknowledgement says it runs the stable revision.
async fn scale_under_traffic(ns: &TestNamespace, replicas: i32) -> Result<Scaled> {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "demo"},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }))?;
    let service = ns
        .api::<Service>()
        .create(&PostParams::default(), &service)
        .await?;
    let address = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service demo has no ClusterIP")?;
    crate::workload::wait_answering(&address).await?;
    let traffic = Traffic::start(vec![address]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    ns.api::<Deployment>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let n = usize::try_from(replicas)?;
    ready_pods(ns, n).await?;
    let api = plugin_releases(ns);
    eventually(
        &format!("{n} pods on the stable revision"),
        WAIT,
        || async {
            let status: Value = api.get(RELEASE).await?.data["status"].clone();
            let pods = status["pods"].as_array().cloned().unwrap_or_default();
            ensure!(
                pods.len() == n
                    && pods.iter().all(|p| {
                        p["state"] == "Loaded" && p["revision"] == status["stableRevision"]
                    }),
                "status: {status}"
            );
            Ok(())
        },
    )
    .await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Scaled {
        took,
        report: traffic.finish().await?,
    })
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Applies the release at `artifact` (server-side apply, as GitOps would) and waits for
/// `phase` at the new generation; returns how long it took.
async fn roll(ns: &TestNamespace, artifact: &(String, String), phase: &str) -> Result<Duration> {
    let started = Instant::now();
    let release = json!({
        "apiVersion": "hotload.dev/v1alpha1", "kind": "PluginRelease",
        "metadata": {"name": RELEASE},
        "spec": {
            "plugin": "handler",
            "selector": {"matchLabels": {"app": "demo"}},
            "artifact": {"url": artifact.0, "digest": artifact.1},
            "strategy": {"maxUnavailable": 2},
        },
    });
    let api = plugin_releases(ns);
    let applied = api
        .patch(
            RELEASE,
            &PatchParams::apply("hotload-demo").force(),
            &Patch::Apply(&release),
        )
        .await?;
    let generation = applied.metadata.generation.unwrap_or_default();
    eventually(&format!("phase {phase}"), WAIT, || async {
        let status: Value = api.get(RELEASE).await?.data["status"].clone();
        ensure!(
            status["observedGeneration"] == generation && status["phase"] == phase,
            "status: {status}"
        );
        Ok(())
    })
    .await
    .context("the rollout did not finish; `kubectl hotload status handler -n demo` says why")?;
    Ok(started.elapsed())
}

async fn ready_pods(ns: &TestNamespace, n: usize) -> Result<Vec<String>> {
    let pods: Api<Pod> = ns.api();
    eventually(&format!("{n} Ready demo pods"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=demo")).await?;
        let ips: Vec<String> = list
            .items
            .iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ensure!(ips.len() == n, "{} of {n} Ready", ips.len());
        Ok(ips)
    })
    .await
}
