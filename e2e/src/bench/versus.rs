//! `bench versus-restart --pods N`: Hotload against what a team does without it, on the same
//! pods of the local cluster.
//!
//! - Way A, Hotload: a Deployment of N demo-app pods with the injected sidecar (real
//!   processes, the chart-installed operator), PluginRelease v1 → v2 with maxUnavailable 25%,
//!   then (after an untimed return to v1) v1 → v2 with 100%. Every timed change fetches an
//!   artifact the pods have never seen (the second pair differs from the first only by a
//!   custom section, so its digest is new).
//! - Way B, restart: the same app with the plugin baked in (`--plugin-file`, here the env
//!   var `DEMO_PLUGIN_FILE` naming a file on a read-only hostPath volume, as an image would
//!   hold it), no sidecar, rolled by the Deployment controller when the env var changes to
//!   the v2 file, with the same maxUnavailable (maxSurge left at Kubernetes' default, 25%)
//!   and a readiness probe on `/healthz` every second (the app loads its plugin before it
//!   opens its port).
//!
//! In both ways the same traffic runs: [`CLIENTS`] loops posting through the namespace's
//! ClusterIP Service (a new connection per request, so kube-proxy spreads them over every
//! Ready pod), plus one `/stream` per pod opened on the pod's IP before the change. Each
//! change is measured from the apply (or patch) until every Ready pod answers v2 to a
//! request sent to its own IP and exactly N pods are Ready; a sweep asks the pods not yet
//! seen on v2 every [`SWEEP`], so the figure is late by at most one sweep.
//!
//! Resources come from the node, not from the processes' own reports: CPU from each pod's
//! cgroup (`hotload-e2e/pods/<uid>`, cgroup v2 `cpu.stat`, sampled every [`SAMPLE`], so a
//! pod deleted during the change loses at most one sample's CPU) and from the control
//! plane's cgroups; memory as the sum of the resident set (`/proc/<pid>/statm`) of every
//! process in the namespace's pod cgroups (this host's cgroup v2 has no memory controller),
//! sampled likewise. Every loop is bounded in time; both namespaces are deleted at the end,
//! also when a step fails.
//!
//! Where the time goes in way A (the 25% change): the operator's `assigned` log lines and
//! the sidecars' `assigned by the operator`, `artifact verified` and `app worker loaded
//! plugin` lines (with the app's own load and swap times in its health string), and the
//! release status as a watch sees it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::Api;
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::artifacts::{ArtifactServer, digest_of};
use crate::chart::{Chart, is_ready};
use crate::cluster::{self, UpOptions};
use crate::layout::Layout;
use crate::testing::{TestNamespace, delete_namespace_and_wait, fresh_namespace, plugin_releases};
use crate::workload::{deployment, tag_of, tagger};

/// Concurrent traffic loops (each: a request, then [`PAUSE`]).
pub const CLIENTS: usize = 4;
/// Pause between two requests of one loop.
const PAUSE: Duration = Duration::from_millis(20);
/// How often the sweep asks the pods not yet on v2.
pub const SWEEP: Duration = Duration::from_millis(100);
/// How often CPU and memory are sampled.
pub const SAMPLE: Duration = Duration::from_millis(250);
/// Seconds of steady traffic before each change (the "steady" latency).
const STEADY: Duration = Duration::from_secs(8);
/// Traffic keeps running this long after every pod serves v2 (late failures count).
const TAIL: Duration = Duration::from_secs(2);
/// The longest any one wait (pods Ready, a change, a status) may take.
const LIMIT: Duration = Duration::from_secs(600);
/// The longest traffic, streams or sampling run (a forgotten stop ends here).
const MAX_RUN: Duration = Duration::from_secs(900);
/// The control plane's cgroups (under `hotload-e2e/`).
const CONTROL_PLANE: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "node-agent",
];

/// p50 and p99 of request latency in one window.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One change, measured.
#[derive(Debug, Default, Serialize, Clone)]
pub struct WayFigures {
    /// `hotload` (way A) or `restart` (way B).
    pub way: String,
    pub max_unavailable: String,
    /// The change (apply / patch) → every Ready pod answers v2 on its own IP and exactly N
    /// pods are Ready. Late by at most one sweep ([`SWEEP`]).
    pub seconds_to_all_v2: f64,
    /// The change → the owner says it is done: the release's status Completed with every
    /// pod counted (A), the Deployment complete and every old pod gone (B).
    pub settled_seconds: f64,
    /// Requests through the Service from the change to the end of the tail.
    pub requests: usize,
    pub failed_requests: usize,
    /// The first few failures, as the client saw them.
    pub failures: Vec<String>,
    /// Answers by plugin version (v01, v02), same window.
    pub requests_by_version: BTreeMap<String, usize>,
    /// `/stream`s open at the change (one per pod).
    pub streams: usize,
    /// Of those, cut (closed, reset or silent 5 s) before the end of the tail.
    pub streams_dropped: usize,
    /// Of those still open, how many switched to v2 mid-stream.
    pub streams_switched_to_v2: usize,
    /// Latency of the [`STEADY`] seconds before the change.
    pub latency_steady: Latency,
    /// Latency from the change until every pod serves v2.
    pub latency_change: Latency,
    /// `latency_change.p99_ms / latency_steady.p99_ms`.
    pub p99_ratio: f64,
    /// CPU of every process in the namespace's pods (apps, sidecars, operator), from the
    /// change until settled.
    pub pods_cpu_seconds: f64,
    /// CPU of the control plane and node agent in the same window (shared with anything
    /// else the cluster runs meanwhile).
    pub control_plane_cpu_seconds: f64,
    /// Sum of the namespace's pod processes' resident memory before the change, MiB.
    pub pods_rss_steady_mib: f64,
    /// Its peak from the change until settled, MiB.
    pub pods_rss_peak_mib: f64,
    /// Pods created by the change (B: the new ReplicaSet's pods).
    pub pods_created: usize,
    /// When the change was made (wall clock, to match the components' log lines).
    #[serde(skip)]
    pub changed_wall: Option<jiff::Timestamp>,
}

/// restart ÷ Hotload for one maxUnavailable.
#[derive(Debug, Serialize, Clone)]
pub struct Ratios {
    pub max_unavailable: String,
    pub seconds_to_all_v2: f64,
    pub settled_seconds: f64,
    pub pods_cpu_seconds: f64,
    pub cpu_seconds_with_control_plane: f64,
    pub pods_rss_peak: f64,
    pub p99_during_change: f64,
    /// Failed requests, restart and Hotload (a ratio of counts that may be 0 says nothing).
    pub failed_requests: (usize, usize),
    /// Dropped streams, restart and Hotload.
    pub streams_dropped: (usize, usize),
}

/// Summary of one stage over the pods: median and max, milliseconds.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Stage {
    pub pods: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// Where the time of way A's 25% change went, from the components' own log lines.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Breakdown {
    /// Pods the operator assigned at once at the start (its maxUnavailable window).
    pub first_window: usize,
    /// Apply → the operator's first `assigned` line (watch, reconcile, plan, send).
    pub apply_to_first_assign_ms: f64,
    /// Operator `assigned` → the sidecar's `assigned by the operator` (the channel).
    pub operator_to_sidecar: Stage,
    /// Sidecar `assigned by the operator` → `artifact verified` (HTTPS fetch and digest).
    pub fetch: Stage,
    /// `artifact verified` → `app worker loaded plugin` (socket hand-over and the app's load).
    pub handover_and_load: Stage,
    /// The app's own load time from its health string: read, digest, compile, instances,
    /// self-check, swap (the demo's health string does not split out compile).
    pub app_load: Stage,
    /// The atomic swap alone, from the same string (µs reported as ms here).
    pub app_swap: Stage,
    /// Cache outcomes the app reported.
    pub app_cache: BTreeMap<String, usize>,
    /// For each assignment after the first window: the latest `loaded` line before it → it
    /// (the ack over the channel, reconcile, plan, send: what freeing a slot costs).
    pub loaded_to_next_assign: Stage,
    /// Apply → the last pod's `app worker loaded plugin`.
    pub apply_to_last_loaded_ms: f64,
    /// The last `loaded` → the release status Completed as a watch sees it (ack, status
    /// write coalescing at one write a second).
    pub last_loaded_to_status_ms: f64,
    /// Apply → every pod answering v2 (the sweep), for comparison.
    pub apply_to_all_v2_ms: f64,
    /// Stages with no timing of their own in any component.
    pub not_measured: Vec<String>,
    /// Each pod's line times, ms after the apply: operator `assigned`, sidecar `assigned by
    /// the operator`, `artifact verified`, `app worker loaded plugin` (-1: no such line).
    pub timeline: Vec<(String, [f64; 4])>,
}

/// What `bench versus-restart` prints.
#[derive(Debug, Serialize)]
pub struct VersusReport {
    pub pods: usize,
    /// Which build the cluster's images run (`debug` unless the cluster maps release).
    pub build: String,
    /// The app binary both fleets ran instead of the image's (`--app-binary`), if any.
    pub app_binary: Option<String>,
    /// Way A then way B, each 25% then 100%.
    pub runs: Vec<WayFigures>,
    /// restart ÷ Hotload, per maxUnavailable.
    pub ratios: Vec<Ratios>,
    /// Way A at 25%, from the components' own timings.
    pub hotload_breakdown: Breakdown,
    pub clients: usize,
    pub sweep_ms: u64,
    pub sample_ms: u64,
    pub steady_seconds: u64,
    /// Seconds to set up and tear down both fleets (not measured above).
    pub setup_seconds: f64,
}

/// Runs the comparison with `pods` pods per fleet; both fleets' app containers run
/// `app_binary` instead of the image's binary when given (say, a release build).
pub async fn run(
    layout: &Layout,
    pods: usize,
    app_binary: Option<PathBuf>,
) -> Result<VersusReport> {
    ensure!(pods >= 1, "--pods must be at least 1");
    // The node agent runs a container's command as given when its file name is not the
    // image's binary: a copy under another name, so a rebuild cannot change it mid-run.
    let app_command = match &app_binary {
        Some(binary) => {
            let dir = layout.cache().join("versus-bin");
            std::fs::create_dir_all(&dir)?;
            let copy = dir.join("versus-demo-app");
            let _ = std::fs::remove_file(&copy);
            std::fs::copy(binary, &copy)
                .with_context(|| format!("copying {}", binary.display()))?;
            Some(copy.display().to_string())
        }
        None => None,
    };
    let started = Instant::now();
    let kubeconfig = cluster::up(layout, &UpOptions::default()).await?;
    let client = cluster::client_for(&kubeconfig).await?;
    let images = crate::images::ImageMap::load(&layout.images())?;
    let build = images
        .images
        .get("hotload/demo-app:dev")
        .map(|i| {
            let p = i.entrypoint.display().to_string();
            if p.contains("/release/") {
                "release".to_string()
            } else if p.contains("/debug/") {
                "debug".to_string()
            } else {
                p
            }
        })
        .unwrap_or_default();

    let mut measured = Duration::ZERO;
    let ns_a = fresh_namespace(
        &client,
        &kubeconfig,
        &format!("versus-{pods}"),
        json!({"hotload.dev/inject": "enabled"}),
    )
    .await?;
    let way_a = hotload_way(&ns_a, pods, app_command.as_deref(), &mut measured).await;
    progress("deleting the Hotload fleet's namespace");
    let deleted = delete_namespace_and_wait(&client, &ns_a.name, LIMIT).await;
    let (hotload, breakdown) = way_a?;
    deleted?;

    let ns_b = fresh_namespace(
        &client,
        &kubeconfig,
        &format!("versus-{pods}-restart"),
        json!({"hotload.dev/inject": "disabled"}),
    )
    .await?;
    let plugins = layout.cache().join(format!("versus-{pods}-plugins"));
    let way_b = restart_way(&ns_b, pods, &plugins, app_command.as_deref(), &mut measured).await;
    progress("deleting the restart fleet's namespace");
    let deleted = delete_namespace_and_wait(&client, &ns_b.name, LIMIT).await;
    let _ = std::fs::remove_dir_all(&plugins);
    let restart = way_b?;
    deleted?;

    let ratios = hotload
        .iter()
        .zip(&restart)
        .map(|(a, b)| Ratios {
            max_unavailable: a.max_unavailable.clone(),
            seconds_to_all_v2: b.seconds_to_all_v2 / a.seconds_to_all_v2,
            settled_seconds: b.settled_seconds / a.settled_seconds,
            pods_cpu_seconds: b.pods_cpu_seconds / a.pods_cpu_seconds,
            cpu_seconds_with_control_plane: (b.pods_cpu_seconds + b.control_plane_cpu_seconds)
                / (a.pods_cpu_seconds + a.control_plane_cpu_seconds),
            pods_rss_peak: b.pods_rss_peak_mib / a.pods_rss_peak_mib,
            p99_during_change: b.latency_change.p99_ms / a.latency_change.p99_ms,
            failed_requests: (b.failed_requests, a.failed_requests),
            streams_dropped: (b.streams_dropped, a.streams_dropped),
        })
        .collect();
    Ok(VersusReport {
        pods,
        build,
        app_binary: app_binary.map(|p| p.display().to_string()),
        runs: hotload.into_iter().chain(restart).collect(),
        ratios,
        hotload_breakdown: breakdown,
        clients: CLIENTS,
        sweep_ms: SWEEP.as_millis() as u64,
        sample_ms: SAMPLE.as_millis() as u64,
        steady_seconds: STEADY.as_secs(),
        setup_seconds: (started.elapsed() - measured).as_secs_f64(),
    })
}

fn progress(what: &str) {
    eprintln!("bench versus-restart: {what}");
}

/// `bytes` with a custom section appended: the same plugin under a new digest.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"hotload-bench";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(u8::try_from(content.len()).unwrap_or(127) & 0x7f);
    out.extend(content);
    out
}

/// Way A: the injected fleet, two releases changes. Returns the figures and the breakdown.
async fn hotload_way(
    ns: &TestNamespace,
    pods: usize,
    app_command: Option<&str>,
    measured: &mut Duration,
) -> Result<(Vec<WayFigures>, Breakdown)> {
    progress(&format!(
        "way A: installing the chart and {pods} injected pods"
    ));
    let chart = Chart::install(ns, &[])?;
    let artifacts = ArtifactServer::start().await?;
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "artifact-ca"},
        "data": {"ca.crt": artifacts.ca_pem},
    }))?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &ca)
        .await?;
    Chart::wait_ready(ns).await?;
    let service = create_service(ns).await?;
    let app = with_command(deployment(i32::try_from(pods)?)?, app_command)?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &app)
        .await?;
    wait_ready_pods(ns, pods).await?;

    let v1 = tagger(1)?;
    let v2 = tagger(2)?;
    let files = [
        ("tagger-v1.wasm", v1.clone()),
        ("tagger-v2.wasm", v2.clone()),
        ("tagger-v1b.wasm", with_custom_section(&v1, "b")),
        ("tagger-v2b.wasm", with_custom_section(&v2, "b")),
    ];
    let mut artifact = HashMap::new();
    for (name, bytes) in &files {
        artifact.insert(*name, (artifacts.put(name, bytes), digest_of(bytes)));
    }
    let apply = |file: &'static str, max_unavailable: &'static str| {
        let (url, digest) = artifact[file].clone();
        let ns = ns.clone();
        async move { apply_release(&ns, &url, &digest, max_unavailable).await }
    };

    progress("way A: v1 on every pod (untimed)");
    let generation = apply("tagger-v1.wasm", "100%").await?;
    wait_release(ns, generation, pods).await?;
    wait_all_serve(ns, pods, "v01").await?;

    let mut runs = Vec::new();
    let mut breakdown = Breakdown::default();
    for (max_unavailable, target) in [("25%", "tagger-v2.wasm"), ("100%", "tagger-v2b.wasm")] {
        if max_unavailable == "100%" {
            progress("way A: back to v1 (untimed)");
            let generation = apply("tagger-v1b.wasm", "100%").await?;
            wait_release(ns, generation, pods).await?;
            wait_all_serve(ns, pods, "v01").await?;
        }
        progress(&format!("way A: v1 → v2, maxUnavailable {max_unavailable}"));
        let window = Instant::now();
        let generation = std::cell::Cell::new(0);
        let figures = measure(
            ns,
            &service,
            pods,
            "hotload",
            max_unavailable,
            || async {
                generation.set(apply(target, max_unavailable).await?);
                Ok(())
            },
            || async { wait_release(ns, generation.get(), pods).await },
        )
        .await?;
        *measured += window.elapsed();
        if max_unavailable == "25%" {
            breakdown = hotload_breakdown(ns, &figures)
                .await
                .unwrap_or_else(|e| Breakdown {
                    not_measured: vec![format!("the logs could not be read: {e:#}")],
                    ..Breakdown::default()
                });
        }
        progress(&format!(
            "way A {max_unavailable}: every pod on v2 after {:.3}s, {} failed of {}",
            figures.seconds_to_all_v2, figures.failed_requests, figures.requests
        ));
        runs.push(figures);
    }
    drop(chart);
    Ok((runs, breakdown))
}

/// Way B: the baked fleet, two Deployment rollouts.
async fn restart_way(
    ns: &TestNamespace,
    pods: usize,
    plugins: &Path,
    app_command: Option<&str>,
    measured: &mut Duration,
) -> Result<Vec<WayFigures>> {
    progress(&format!("way B: {pods} pods with the plugin baked in"));
    std::fs::create_dir_all(plugins)?;
    std::fs::write(plugins.join("tagger-v1.wasm"), tagger(1)?)?;
    std::fs::write(plugins.join("tagger-v2.wasm"), tagger(2)?)?;
    let service = create_service(ns).await?;
    let app = with_command(baked_deployment(pods, plugins, "25%")?, app_command)?;
    let deployments = ns.api::<Deployment>();
    deployments.create(&PostParams::default(), &app).await?;
    wait_ready_pods(ns, pods).await?;
    wait_deployment(ns, pods).await?;
    wait_all_serve(ns, pods, "v01").await?;

    let mut runs = Vec::new();
    for max_unavailable in ["25%", "100%"] {
        if max_unavailable == "100%" {
            progress("way B: back to v1 (untimed)");
            patch_baked(ns, "tagger-v1.wasm", Some("100%")).await?;
            wait_deployment(ns, pods).await?;
            wait_all_serve(ns, pods, "v01").await?;
        }
        progress(&format!("way B: v1 → v2, maxUnavailable {max_unavailable}"));
        let window = Instant::now();
        let before: BTreeSet<String> = pod_names(ns).await?;
        let mut figures = measure(
            ns,
            &service,
            pods,
            "restart",
            max_unavailable,
            || async { patch_baked(ns, "tagger-v2.wasm", None).await },
            || async {
                wait_deployment(ns, pods).await?;
                // Settled: the old pods' processes ended and the pods are gone.
                wait_for("the old pods to go", || async {
                    let now = pod_names(ns).await?;
                    let left = now.intersection(&before).count();
                    ensure!(left == 0, "{left} old pods left");
                    Ok(())
                })
                .await
            },
        )
        .await?;
        let after = pod_names(ns).await?;
        figures.pods_created = after.difference(&before).count();
        *measured += window.elapsed();
        progress(&format!(
            "way B {max_unavailable}: every pod on v2 after {:.3}s, {} failed of {}",
            figures.seconds_to_all_v2, figures.failed_requests, figures.requests
        ));
        runs.push(figures);
    }
    Ok(runs)
}

/// The demo app with the plugin file baked in: no sidecar, the plugin named by
/// `DEMO_PLUGIN_FILE`, the same arguments, probe and grace as the injected fleet's.
fn baked_deployment(pods: usize, plugins: &Path, max_unavailable: &str) -> Result<Deployment> {
    let mut app = serde_json::to_value(deployment(i32::try_from(pods)?)?)?;
    app["spec"]["strategy"] = json!({
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": "25%"},
    });
    let template = &mut app["spec"]["template"];
    template["metadata"]["labels"]["hotload.dev/inject"] = json!("false");
    if let Some(annotations) = template["metadata"]["annotations"].as_object_mut() {
        annotations.remove("hotload.dev/ca-bundle");
    }
    template["spec"]["volumes"] = json!([{
        "name": "plugins",
        "hostPath": {"path": plugins.display().to_string()},
    }]);
    let container = &mut template["spec"]["containers"][0];
    container["env"] = json!([{"name": "DEMO_PLUGIN_FILE", "value": "/plugins/tagger-v1.wasm"}]);
    container["volumeMounts"] =
        json!([{"name": "plugins", "mountPath": "/plugins", "readOnly": true}]);
    Ok(serde_json::from_value(app)?)
}

/// `app` with its app container running `command` (if given) instead of the image's binary.
fn with_command(app: Deployment, command: Option<&str>) -> Result<Deployment> {
    let Some(command) = command else {
        return Ok(app);
    };
    let mut app = serde_json::to_value(app)?;
    app["spec"]["template"]["spec"]["containers"][0]["command"] = json!([command]);
    Ok(serde_json::from_value(app)?)
}

/// Points the baked Deployment at `file` (and, if given, a new maxUnavailable).
async fn patch_baked(ns: &TestNamespace, file: &str, max_unavailable: Option<&str>) -> Result<()> {
    let mut patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "env": [{"name": "DEMO_PLUGIN_FILE", "value": format!("/plugins/{file}")}],
    }]}}}});
    if let Some(m) = max_unavailable {
        patch["spec"]["strategy"] = json!({"rollingUpdate": {"maxUnavailable": m}});
    }
    ns.api::<Deployment>()
        .patch("demo", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    Ok(())
}

async fn create_service(ns: &TestNamespace) -> Result<String> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "demo"},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }))?;
    let svc = ns
        .api::<Service>()
        .create(&PostParams::default(), &svc)
        .await?;
    svc.spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")
}

/// Server-side applies release `handler` (selector app=demo); returns its generation.
async fn apply_release(
    ns: &TestNamespace,
    url: &str,
    digest: &str,
    max_unavailable: &str,
) -> Result<i64> {
    let release = json!({
        "apiVersion": "hotload.dev/v1alpha1",
        "kind": "PluginRelease",
        "metadata": {"name": "handler"},
        "spec": {
            "plugin": "handler",
            "selector": {"matchLabels": {"app": "demo"}},
            "artifact": {"url": url, "digest": digest},
            "strategy": {"maxUnavailable": max_unavailable},
        },
    });
    let applied = plugin_releases(ns)
        .patch(
            "handler",
            &PatchParams::apply("hotload-bench").force(),
            &Patch::Apply(&release),
        )
        .await?;
    Ok(applied.metadata.generation.unwrap_or_default())
}

/// Retries `check` every 250 ms for at most [`LIMIT`].
async fn wait_for<T, F, Fut>(what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    crate::testing::eventually(what, LIMIT, check).await
}

/// Waits until the release at `generation` is Completed with every pod updated.
async fn wait_release(ns: &TestNamespace, generation: i64, pods: usize) -> Result<()> {
    let releases = plugin_releases(ns);
    let config = kube::runtime::watcher::Config::default().fields("metadata.name=handler");
    let mut changes = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(
        kube::runtime::watcher(releases, config)
    ));
    let deadline = tokio::time::sleep(LIMIT);
    tokio::pin!(deadline);
    let mut last = Value::Null;
    loop {
        tokio::select! {
            () = &mut deadline => bail!("the release did not complete in {LIMIT:?}: {last:#}"),
            change = changes.next() => {
                let release = change.context("the watch ended")??;
                let status = release.data["status"].clone();
                if status["observedGeneration"] == generation
                    && status["phase"] == "Completed"
                    && status["updated"].as_u64() == Some(pods as u64)
                {
                    return Ok(());
                }
                if status["phase"] == "RolledBack" || status["phase"] == "Degraded" {
                    bail!("the release failed: {status:#}");
                }
                last = status;
            }
        }
    }
}

/// Waits until the Deployment has rolled out completely: N updated, ready and available.
async fn wait_deployment(ns: &TestNamespace, pods: usize) -> Result<()> {
    let deployments = ns.api::<Deployment>();
    wait_for("the Deployment to complete", || async {
        let d = deployments.get("demo").await?;
        let generation = d.metadata.generation.unwrap_or_default();
        let s = d.status.unwrap_or_default();
        let n = i32::try_from(pods)?;
        ensure!(
            s.observed_generation.unwrap_or_default() >= generation
                && s.updated_replicas == Some(n)
                && s.ready_replicas == Some(n)
                && s.available_replicas == Some(n)
                && s.replicas == Some(n),
            "status: {s:?}"
        );
        Ok(())
    })
    .await
}

/// The demo pods whose processes may still run (terminating ones included), by name.
async fn pod_names(ns: &TestNamespace) -> Result<BTreeSet<String>> {
    let list = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=demo"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(alive)
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Whether a pod's processes may still run: not being deleted, or being deleted with a
/// container not yet terminated. (A deleted pod whose containers all ended is gone for
/// the benchmark, even if its object lingers.)
fn alive(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_none() {
        return true;
    }
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    statuses.is_empty()
        || statuses
            .iter()
            .any(|c| c.state.as_ref().is_none_or(|s| s.terminated.is_none()))
}

/// A demo pod as the benchmark sees it.
#[derive(Clone, Debug)]
struct DemoPod {
    name: String,
    ip: String,
    ready: bool,
    alive: bool,
}

async fn demo_pods(ns: &TestNamespace) -> Result<Vec<DemoPod>> {
    let list = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=demo"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| {
            Some(DemoPod {
                name: p.metadata.name.clone()?,
                ip: p.status.as_ref()?.pod_ip.clone().unwrap_or_default(),
                ready: p.metadata.deletion_timestamp.is_none() && is_ready(p),
                alive: alive(p),
            })
        })
        .collect())
}

/// Waits until exactly `n` demo pods are Ready and no other pod's processes still run.
async fn wait_ready_pods(ns: &TestNamespace, n: usize) -> Result<Vec<DemoPod>> {
    wait_for(&format!("{n} Ready demo pods"), || async {
        let pods: Vec<DemoPod> = demo_pods(ns)
            .await?
            .into_iter()
            .filter(|p| p.alive)
            .collect();
        let ready: Vec<DemoPod> = pods.iter().filter(|p| p.ready).cloned().collect();
        ensure!(
            ready.len() == n && pods.len() == n,
            "{} of {n} Ready ({} pods)",
            ready.len(),
            pods.len()
        );
        Ok(ready)
    })
    .await
}

/// Waits until every one of `n` Ready pods answers `tag` on its own IP.
async fn wait_all_serve(ns: &TestNamespace, n: usize, tag: &str) -> Result<()> {
    let client = direct_client()?;
    wait_for(&format!("{n} pods to serve {tag}"), || async {
        let ready = wait_ready_pods(ns, n).await?;
        for pod in &ready {
            let got = ask(&client, &pod.ip).await?;
            ensure!(got == tag, "{} answers {got}", pod.name);
        }
        Ok(())
    })
    .await
}

fn direct_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// The tag the pod at `ip` answers with.
async fn ask(client: &reqwest::Client, ip: &str) -> Result<String> {
    let response = client
        .post(format!("http://{ip}:8080/"))
        .body("sweep")
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(status.is_success(), "{status}: {body}");
    tag_of(&body).with_context(|| format!("not a whole answer: {body:?}"))
}

/// One request of the traffic.
struct Record {
    at: Instant,
    latency: Duration,
    outcome: Result<String, String>,
}

/// [`CLIENTS`] loops through the Service until stopped (at most [`MAX_RUN`]).
fn start_traffic(
    address: String,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Record>>> {
    (0..CLIENTS)
        .map(|k| {
            let (address, stop) = (address.clone(), stop.clone());
            tokio::spawn(async move {
                let mut records = Vec::new();
                let Ok(client) = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .pool_max_idle_per_host(0)
                    .build()
                else {
                    return records;
                };
                let started = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                    let at = Instant::now();
                    let outcome = async {
                        let response = client
                            .post(format!("http://{address}:8080/"))
                            .body(format!("client-{k}-request-{i}"))
                            .send()
                            .await
                            .map_err(|e| format!("{e:#}"))?;
                        let status = response.status();
                        let body = response.text().await.map_err(|e| format!("{e:#}"))?;
                        if !status.is_success() {
                            return Err(format!("{status}: {body}"));
                        }
                        tag_of(&body).ok_or_else(|| format!("mixed answer {body:?}"))
                    }
                    .await;
                    records.push(Record {
                        at,
                        latency: at.elapsed(),
                        outcome,
                    });
                    i += 1;
                    tokio::time::sleep(PAUSE).await;
                }
                records
            })
        })
        .collect()
}

/// What one `/stream` saw.
struct StreamSeen {
    tags: Vec<String>,
    dropped: Option<(Instant, String)>,
}

/// Reads a pod's `/stream` until stopped (at most [`MAX_RUN`]); notes when and why it was cut.
fn watch_stream(ip: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<StreamSeen> {
    tokio::spawn(async move {
        let mut seen = StreamSeen {
            tags: Vec::new(),
            dropped: None,
        };
        let started = Instant::now();
        let cut = async {
            let mut response = reqwest::get(format!("http://{ip}:8080/stream"))
                .await
                .map_err(|e| format!("{e:#}"))?;
            let mut pending = String::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                    .await
                    .map_err(|_| "silent for 5 s".to_string())?
                    .map_err(|e| format!("{e:#}"))?
                    .ok_or_else(|| "closed by the server".to_string())?;
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let tag = tag_of(line.trim_end()).unwrap_or_else(|| "bad".into());
                    if seen.tags.last() != Some(&tag) {
                        seen.tags.push(tag);
                    }
                }
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(why) = cut {
            seen.dropped = Some((Instant::now(), why));
        }
        seen
    })
}

/// One sample of the namespace's pods and the control plane.
struct Sample {
    at: Instant,
    /// Pod uid → CPU µs of its cgroup.
    cpu: HashMap<String, u64>,
    control_plane_usec: u64,
    rss_kib: u64,
}

fn cgroup_root() -> Result<PathBuf> {
    Ok(crate::cgroup::mount_point()?.join(crate::cgroup::ROOT))
}

/// Resident KiB of every process in cgroup `dir`.
fn cgroup_rss_kib(dir: &Path) -> u64 {
    let page_kib = 4;
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{}/statm", pid.trim())).ok())
        .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page_kib)
        .sum()
}

async fn take_sample(ns: &TestNamespace, root: &Path) -> Result<Sample> {
    let pods = demo_or_any_pods(ns).await?;
    let mut cpu = HashMap::new();
    let mut rss_kib = 0;
    for uid in pods {
        let dir = root.join("pods").join(&uid);
        if let Some(usec) = crate::cgroup::cpu_usage_usec(&dir) {
            cpu.insert(uid, usec);
            rss_kib += cgroup_rss_kib(&dir);
        }
    }
    let control_plane_usec = CONTROL_PLANE
        .iter()
        .filter_map(|c| crate::cgroup::cpu_usage_usec(&root.join(c)))
        .sum();
    Ok(Sample {
        at: Instant::now(),
        cpu,
        control_plane_usec,
        rss_kib,
    })
}

/// Every pod of the namespace (the operator's too): their uids.
async fn demo_or_any_pods(ns: &TestNamespace) -> Result<Vec<String>> {
    let list = ns.api::<Pod>().list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect())
}

fn start_sampler(
    ns: TestNamespace,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<Vec<Sample>>> {
    let root = cgroup_root()?;
    Ok(tokio::spawn(async move {
        let mut samples = Vec::new();
        let started = Instant::now();
        loop {
            if let Ok(sample) = take_sample(&ns, &root).await {
                samples.push(sample);
            }
            if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_RUN {
                break;
            }
            tokio::time::sleep(SAMPLE).await;
        }
        samples
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(records: &[&Record]) -> Latency {
    let mut ms: Vec<f64> = records
        .iter()
        .filter(|r| r.outcome.is_ok())
        .map(|r| r.latency.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    Latency {
        requests: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// Runs one change under traffic and measures it: `change` makes it, `settle` waits until
/// its owner says it is done.
async fn measure<C, CF, S, SF>(
    ns: &TestNamespace,
    service: &str,
    n: usize,
    way: &str,
    max_unavailable: &str,
    change: C,
    settle: S,
) -> Result<WayFigures>
where
    C: FnOnce() -> CF,
    CF: Future<Output = Result<()>>,
    S: FnOnce() -> SF,
    SF: Future<Output = Result<()>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let before = wait_ready_pods(ns, n).await?;
    let streams: Vec<_> = before
        .iter()
        .map(|p| watch_stream(p.ip.clone(), stop.clone()))
        .collect();
    let traffic = start_traffic(service.to_string(), stop.clone());
    let sampler = start_sampler(ns.clone(), stop.clone())?;
    let outcome = async {
        tokio::time::sleep(STEADY).await;
        let changed = Instant::now();
        let changed_wall = jiff::Timestamp::now();
        change().await?;
        let all_v2 = sweep_until_all_v2(ns, n).await?;
        settle().await?;
        let settled = Instant::now();
        Ok::<_, anyhow::Error>((changed, changed_wall, all_v2, settled))
    }
    .await;
    if outcome.is_ok() {
        tokio::time::sleep(TAIL).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for t in traffic {
        records.extend(t.await?);
    }
    let mut seen = Vec::new();
    for s in streams {
        seen.push(s.await?);
    }
    let samples = sampler.await?;
    let (changed, changed_wall, all_v2, settled) = outcome?;

    let steady: Vec<&Record> = records
        .iter()
        .filter(|r| r.at < changed && r.at + STEADY >= changed)
        .collect();
    let during: Vec<&Record> = records
        .iter()
        .filter(|r| r.at >= changed && r.at <= all_v2)
        .collect();
    let after: Vec<&Record> = records.iter().filter(|r| r.at >= changed).collect();
    let failures: Vec<&String> = after
        .iter()
        .filter_map(|r| r.outcome.as_ref().err())
        .collect();
    let mut by_version = BTreeMap::new();
    for r in &after {
        if let Ok(tag) = &r.outcome {
            *by_version.entry(tag.clone()).or_default() += 1;
        }
    }
    let latency_steady = latency(&steady);
    let latency_change = latency(&during);

    // CPU: per pod, its last value up to `settled` less its value at the change.
    let base = samples.iter().rev().find(|s| s.at <= changed);
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= changed && s.at <= settled + SAMPLE)
        .collect();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for s in &in_window {
        for (uid, usec) in &s.cpu {
            last.insert(uid, *usec);
        }
    }
    let pods_usec: u64 = last
        .iter()
        .map(|(uid, usec)| {
            usec.saturating_sub(base.and_then(|b| b.cpu.get(*uid)).copied().unwrap_or(0))
        })
        .sum();
    let control_usec = in_window
        .last()
        .map(|s| s.control_plane_usec)
        .unwrap_or(0)
        .saturating_sub(base.map(|b| b.control_plane_usec).unwrap_or(0));
    let rss_steady = samples
        .iter()
        .filter(|s| s.at < changed)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let rss_peak = in_window.iter().map(|s| s.rss_kib).max().unwrap_or(0);

    let streams_dropped = seen.iter().filter(|s| s.dropped.is_some()).count();
    let switched = seen
        .iter()
        .filter(|s| s.dropped.is_none() && s.tags.last().map(String::as_str) == Some("v02"))
        .count();
    let mut failure_list: Vec<String> = failures.iter().take(5).map(|s| (*s).clone()).collect();
    for s in &seen {
        if let Some((_, why)) = &s.dropped
            && failure_list.len() < 8
        {
            failure_list.push(format!("stream: {why}"));
        }
    }
    Ok(WayFigures {
        way: way.into(),
        max_unavailable: max_unavailable.into(),
        seconds_to_all_v2: (all_v2 - changed).as_secs_f64(),
        settled_seconds: (settled - changed).as_secs_f64(),
        requests: after.len(),
        failed_requests: failures.len(),
        failures: failure_list,
        requests_by_version: by_version,
        streams: seen.len(),
        streams_dropped,
        streams_switched_to_v2: switched,
        p99_ratio: if latency_steady.p99_ms > 0.0 {
            latency_change.p99_ms / latency_steady.p99_ms
        } else {
            0.0
        },
        latency_steady,
        latency_change,
        pods_cpu_seconds: pods_usec as f64 / 1e6,
        control_plane_cpu_seconds: control_usec as f64 / 1e6,
        pods_rss_steady_mib: rss_steady as f64 / 1024.0,
        pods_rss_peak_mib: rss_peak as f64 / 1024.0,
        pods_created: 0,
        changed_wall: Some(changed_wall),
    })
}

/// Sweeps the Ready pods not yet seen on v2 every [`SWEEP`] until exactly `n` pods are
/// Ready and every one of them answered v2; returns when (the latest of: the last pod's
/// v2 answer, the list that first showed only v2 pods Ready).
async fn sweep_until_all_v2(ns: &TestNamespace, n: usize) -> Result<Instant> {
    let client = direct_client()?;
    let started = Instant::now();
    let mut done: HashMap<String, Instant> = HashMap::new();
    loop {
        ensure!(
            started.elapsed() < LIMIT,
            "not every pod served v2 within {LIMIT:?} ({} did)",
            done.len()
        );
        let listed = Instant::now();
        let ready: Vec<DemoPod> = demo_pods(ns)
            .await?
            .into_iter()
            .filter(|p| p.ready && !p.ip.is_empty())
            .collect();
        let pending: Vec<DemoPod> = ready
            .iter()
            .filter(|p| !done.contains_key(&p.name))
            .cloned()
            .collect();
        let answers: Vec<(String, Instant, Option<String>)> = futures::stream::iter(pending)
            .map(|p| {
                let client = client.clone();
                async move {
                    let at = Instant::now();
                    (p.name, at, ask(&client, &p.ip).await.ok())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (name, at, tag) in answers {
            if tag.as_deref() == Some("v02") {
                done.insert(name, at);
            }
        }
        if ready.len() == n && ready.iter().all(|p| done.contains_key(&p.name)) {
            let last = ready
                .iter()
                .filter_map(|p| done.get(&p.name))
                .max()
                .copied()
                .unwrap_or(listed);
            return Ok(last.max(listed));
        }
        tokio::time::sleep(SWEEP).await;
    }
}

/// A log line's timestamp (tracing's RFC 3339 prefix, or a JSON line's `timestamp`), as
/// seconds since the epoch.
fn line_time(line: &str) -> Option<f64> {
    let stamp = if line.starts_with('{') {
        serde_json::from_str::<Value>(line).ok()?["timestamp"]
            .as_str()?
            .to_string()
    } else {
        line.split_whitespace().next()?.to_string()
    };
    let ts: jiff::Timestamp = stamp.parse().ok()?;
    Some(ts.as_microsecond() as f64 / 1e6)
}

/// The value of field `key` in a log line (text `key=value` / `key="value"`, or JSON).
fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        let f = v["fields"].get(key).or_else(|| v.get(key))?;
        return Some(
            f.as_str()
                .map_or_else(|| f.to_string(), ToString::to_string),
        );
    }
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(i) = line[from..].find(&needle) {
        let start = from + i;
        if start == 0 || line.as_bytes()[start - 1] == b' ' {
            let rest = &line[start + needle.len()..];
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.find('"').unwrap_or(quoted.len());
                return Some(quoted[..end].to_string());
            }
            return Some(rest.split_whitespace().next().unwrap_or("").to_string());
        }
        from = start + needle.len();
    }
    None
}

/// The number before `unit` after `label ` in `text` ("load 12.3 ms" → 12.3).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let i = text.find(&format!("{label} "))?;
    text[i + label.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn stage(mut ms: Vec<f64>) -> Stage {
    ms.sort_by(f64::total_cmp);
    Stage {
        pods: ms.len(),
        median_ms: percentile(&ms, 50.0),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

async fn logs_of(pods: &Api<Pod>, pod: &str, container: Option<&str>) -> String {
    let params = LogParams {
        container: container.map(String::from),
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(log) => log,
        Err(e) => {
            progress(&format!("the log of {pod}: {e}"));
            String::new()
        }
    }
}

/// Way A's 25% change, from the operator's and the sidecars' log lines.
async fn hotload_breakdown(ns: &TestNamespace, figures: &WayFigures) -> Result<Breakdown> {
    let change = figures.changed_wall.context("no change time")?;
    let t0 = change.as_microsecond() as f64 / 1e6;
    let status = plugin_releases(ns).get("handler").await?.data["status"].clone();
    let revision = status["targetRevision"]
        .as_str()
        .context("no targetRevision")?
        .to_string();
    let pods: Api<Pod> = ns.api();
    // Operator: `assigned` lines of this revision, by pod (the first one).
    let mut op_assigned: BTreeMap<String, f64> = BTreeMap::new();
    let mut problems = Vec::new();
    for op in Chart::operator_pods(ns).await? {
        let name = op.metadata.name.clone().unwrap_or_default();
        let container = op
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let mut log = logs_of(&pods, &name, container.as_deref()).await;
        if log.is_empty() {
            log = ns
                .kubectl(&["logs", &name, "--tail=-1"])
                .unwrap_or_else(|e| {
                    problems.push(format!("operator log of {name}: {e:#}"));
                    String::new()
                });
        }
        for line in log.lines() {
            if !line.contains("assigned") || !line.contains(&revision) {
                continue;
            }
            if let (Some(t), Some(pod)) = (line_time(line), field(line, "pod"))
                && t >= t0
            {
                op_assigned.entry(pod).or_insert(t);
            }
        }
    }
    // Sidecars: received, verified, loaded.
    let mut received = BTreeMap::new();
    let mut verified = BTreeMap::new();
    let mut loaded = BTreeMap::new();
    let mut load_ms = Vec::new();
    let mut swap_ms = Vec::new();
    let mut cache: BTreeMap<String, usize> = BTreeMap::new();
    for pod in demo_pods(ns).await? {
        let log = logs_of(&pods, &pod.name, Some("hotload-sidecar")).await;
        for line in log.lines() {
            let Some(t) = line_time(line) else { continue };
            if t < t0 || field(line, "revision").as_deref() != Some(revision.as_str()) {
                continue;
            }
            if line.contains("assigned by the operator") {
                received.entry(pod.name.clone()).or_insert(t);
            } else if line.contains("artifact verified") {
                verified.entry(pod.name.clone()).or_insert(t);
            } else if line.contains("app worker loaded plugin") && !loaded.contains_key(&pod.name) {
                loaded.insert(pod.name.clone(), t);
                let health = field(line, "health").unwrap_or_default();
                if let Some(ms) = number_after(&health, "load") {
                    load_ms.push(ms);
                }
                if let Some(us) = number_after(&health, "swap") {
                    swap_ms.push(us / 1e3);
                }
                if let Some(c) = health.split("cache ").nth(1) {
                    let c = c.split(';').next().unwrap_or("").trim().to_string();
                    *cache.entry(c).or_default() += 1;
                }
            }
        }
    }
    let diff = |from: &BTreeMap<String, f64>, to: &BTreeMap<String, f64>| -> Vec<f64> {
        from.iter()
            .filter_map(|(pod, a)| Some((to.get(pod)? - a) * 1e3))
            .collect()
    };
    // The operator keeps up to maxUnavailable pods loading and assigns the next pod as one
    // answers (a sliding window, not batches): the first wave is the window, and every
    // later assignment follows the latest `loaded` line before it.
    let mut assigned: Vec<f64> = op_assigned.values().copied().collect();
    assigned.sort_by(f64::total_cmp);
    let first = assigned.first().copied().unwrap_or(0.0);
    let window = assigned.iter().filter(|t| **t - first < 0.05).count();
    let gaps: Vec<f64> = assigned
        .iter()
        .skip(window)
        .filter_map(|t| {
            let before = loaded
                .values()
                .copied()
                .filter(|l| l <= t)
                .fold(f64::MIN, f64::max);
            (before > f64::MIN).then(|| (t - before) * 1e3)
        })
        .collect();
    let ms_after = |m: &BTreeMap<String, f64>, pod: &str| {
        m.get(pod).map_or(-1.0, |t| ((t - t0) * 1e4).round() / 10.0)
    };
    let mut timeline: Vec<(String, [f64; 4])> = op_assigned
        .keys()
        .chain(loaded.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|pod| {
            (
                pod.clone(),
                [
                    ms_after(&op_assigned, pod),
                    ms_after(&received, pod),
                    ms_after(&verified, pod),
                    ms_after(&loaded, pod),
                ],
            )
        })
        .collect();
    timeline.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]));
    let first_assign = op_assigned.values().copied().fold(f64::MAX, f64::min);
    let last_loaded = loaded.values().copied().fold(f64::MIN, f64::max);
    Ok(Breakdown {
        first_window: window,
        apply_to_first_assign_ms: if first_assign < f64::MAX {
            (first_assign - t0) * 1e3
        } else {
            0.0
        },
        operator_to_sidecar: stage(diff(&op_assigned, &received)),
        fetch: stage(diff(&received, &verified)),
        handover_and_load: stage(diff(&verified, &loaded)),
        app_load: stage(load_ms),
        app_swap: stage(swap_ms),
        app_cache: cache,
        loaded_to_next_assign: stage(gaps),
        apply_to_last_loaded_ms: if last_loaded > f64::MIN {
            (last_loaded - t0) * 1e3
        } else {
            0.0
        },
        last_loaded_to_status_ms: if last_loaded > f64::MIN {
            (t0 + figures.settled_seconds - last_loaded) * 1e3
        } else {
            0.0
        },
        apply_to_all_v2_ms: figures.seconds_to_all_v2 * 1e3,
        not_measured: problems
            .into_iter()
            .chain([
                "the operator's plan and send per assignment: it logs `assigned` per pod but no \
             reconcile timing per release (only the hotload_reconcile_duration_seconds \
             histogram over all reconciles); apply_to_first_assign_ms and loaded_to_next_assign cover it \
             from outside"
                    .into(),
                "compile apart from the rest of the load: hotload-host measures it \
             (Loaded::compile) but the demo app's health string reports only the whole \
             load and the swap"
                    .into(),
                "the self-check alone: no component reports it".into(),
                "the ack's arrival at the operator: it does not log acks; \
             last_loaded_to_status_ms spans ack, coalesced status write and the watch"
                    .into(),
            ])
            .collect(),
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_times_parse_from_text_and_json_lines() {
        let text = "2026-12-02T04:36:20.123456Z  INFO hotload_sidecar::agent: app worker loaded plugin plugin=\"handler\" revision=\"abc123\" health=\"self-check passed; state Fresh; cache Miss; load 12.5 ms; swap 4.0 µs\" worker=\"77\"";
        assert_eq!(field(text, "revision").as_deref(), Some("abc123"));
        assert_eq!(field(text, "plugin").as_deref(), Some("handler"));
        let health = field(text, "health").expect("health");
        assert_eq!(number_after(&health, "load"), Some(12.5));
        assert_eq!(number_after(&health, "swap"), Some(4.0));
        let t = line_time(text).expect("time");
        let whole: jiff::Timestamp = "2026-12-02T04:36:20Z".parse().expect("timestamp");
        assert!(
            (t - whole.as_second() as f64 - 0.123_456).abs() < 1e-6,
            "{t}"
        );
        let op = "2026-12-02T04:36:20.5Z  INFO hotload_operator::controller: assigned release=ns/handler pod=demo-1 revision=Some(\"abc123\")";
        assert_eq!(field(op, "pod").as_deref(), Some("demo-1"));
        let json = r#"{"timestamp":"2026-12-02T04:36:21Z","level":"INFO","fields":{"message":"assigned","pod":"demo-2"}}"#;
        assert_eq!(field(json, "pod").as_deref(), Some("demo-2"));
        assert!(line_time(json).is_some());
    }

    #[test]
    fn a_custom_section_changes_the_digest_not_the_module() {
        let v1 = tagger(1).expect("tagger");
        let b = with_custom_section(&v1, "b");
        assert_ne!(digest_of(&v1), digest_of(&b));
        assert_eq!(&b[..v1.len()], &v1[..]);
        // id 0, size, name length, name, payload
        assert_eq!(&b[v1.len()..v1.len() + 3], &[0, 15, 13]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
