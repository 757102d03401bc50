//! Benchmarks: `bench rollout --pods N` (the operator at fleet scale, on the real control
//! plane, with simulated sidecars: [`sim`]) and `bench swap` (the data plane, with real
//! processes), and `bench versus-restart --pods N` (Hotload against a rolling restart on the
//! same real pods: [`versus`]), and `bench health --pods N` (what sidecars' health reports
//! cost the operator's channel server, with no cluster: [`health`]). Each prints one JSON
//! object with `--json`; docs/benchmarks.md has the numbers.
//!
//! A rollout run: N pods bound to a virtual Node (registered by the node agent, see
//! [`crate::node::virtual_node`]), the chart-installed operator, one simulated sidecar
//! stream per pod, then three releases: v1 with maxUnavailable 100%, v2 with 25%, and a
//! broken v3 (100%) that every pod fails, so the whole fleet rolls back to v2. For each:
//! seconds from apply to the last pod's answer, API server requests and writes (from the
//! apiserver's own `apiserver_request_total`), status writes, operator CPU seconds.

pub mod apiserver;
pub mod health;
pub mod sim;
pub mod swap;
pub mod versus;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::bench::sim::Answer;
use crate::chart::Chart;
use crate::cluster::{self, UpOptions};
use crate::layout::Layout;
use crate::node::virtual_node::{VIRTUAL_TAINT, virtual_node_name};
use crate::testing::{
    TestNamespace, delete_namespace_and_wait, eventually, fresh_namespace, plugin_releases,
};

/// One release's rollout, measured.
#[derive(Debug, Serialize)]
pub struct RolloutFigures {
    /// What was rolled out.
    pub name: String,
    /// Apply → the last pod's answer (Loaded, or for the rollback: back on the stable).
    pub acked_seconds: f64,
    /// Apply → the status says Completed (or RolledBack) with every pod counted.
    pub status_seconds: f64,
    /// API server requests during the rollout (every client; the harness's watch included).
    pub api_requests: u64,
    /// Of which writes (POST, PUT, PATCH, APPLY, DELETE).
    pub api_writes: u64,
    /// Status writes of the release.
    pub status_writes: u64,
    /// Status writes per second of rollout (target ≤ 1).
    pub status_writes_per_second: f64,
    /// Operator CPU seconds (user + system) during the rollout.
    pub operator_cpu_seconds: f64,
}

/// What `bench rollout` prints.
#[derive(Debug, Serialize)]
pub struct RolloutReport {
    /// Pods in the fleet.
    pub pods: usize,
    /// Streams per TLS connection (1: one connection per sidecar, as in a real fleet).
    pub streams_per_connection: usize,
    /// Every simulated sidecar sent a health report once a second, as a real one does
    /// while its app reports (false: `--silent`).
    pub health_reports: bool,
    /// Apply → every pod acked, maxUnavailable 100%.
    pub acked_seconds_100: f64,
    /// Apply → every pod acked, maxUnavailable 25%.
    pub acked_seconds_25: f64,
    /// First failure (the threshold, maxFailures 0) → every pod back on the stable revision.
    pub rollback_seconds: f64,
    /// Pods the rollback sent back.
    pub rolled_back_pods: usize,
    /// Each release in detail.
    pub rollouts: Vec<RolloutFigures>,
    /// The operator's peak resident memory (VmHWM), MiB.
    pub operator_peak_rss_mib: f64,
    /// Its peak once every stream was open, before the first rollout, MiB.
    pub operator_peak_rss_after_connect_mib: f64,
    /// Its resident memory at the end, MiB.
    pub operator_rss_mib: f64,
    /// Its resident memory once ready, before any pod of the bench existed, MiB: its base.
    pub operator_base_rss_mib: f64,
    /// The operator's memory per connected pod, KiB: its peak above its base, divided by
    /// the pods (pod cache, registry, health store and connection included).
    pub operator_kib_per_connected_pod: f64,
    /// Operator CPU seconds from the first apply to the end.
    pub operator_cpu_seconds: f64,
    /// The operator's memory allocator (`jemalloc` or `system`; this build's images).
    pub operator_allocator: &'static str,
    /// Seconds to create the pods, issue tokens and connect every stream (not measured
    /// above).
    pub setup_seconds: f64,
    /// Seconds waited after that, before the first rollout (`--settle`).
    pub settle_seconds: u64,
}

/// Runs the fleet benchmark with `pods` pods, `streams_per_connection` of them sharing a TLS
/// connection, each reporting health once a second unless `silent`, rolling out once
/// `settle` has passed after every stream opened.
pub async fn rollout(
    layout: &Layout,
    pods: usize,
    streams_per_connection: usize,
    silent: bool,
    settle: Duration,
) -> Result<RolloutReport> {
    let setup = Instant::now();
    let client = ensure_virtual_node(layout).await?;
    let ns = fresh_namespace(
        &client,
        &layout.kubeconfig(),
        &format!("bench-{pods}"),
        json!({}),
    )
    .await?;
    // A memory limit well above the target, so the figure is what the operator needs.
    // Every simulated sidecar dials from this process's one address; pods have their own.
    let per_peer = format!("channel.maxPerPeer={}", pods.max(1));
    let chart = Chart::install(&ns, &["resources.limits.memory=1Gi", &per_peer])?;
    Chart::wait_ready(&ns).await?;
    let pid = Chart::operator_pid(&ns).await?;
    let operator_base_rss_mib = apiserver::process_memory_kib(pid, "VmRSS")? as f64 / 1024.0;
    let names = create_pods(&ns, pods).await?;
    progress(&format!("{pods} pods created; issuing tokens"));
    let tokens = issue_tokens(&ns, &names).await?;
    let endpoint = sim::Endpoint {
        url: format!("https://{}:8443", Chart::leader_ip(&ns).await?),
        ca_pem: Chart::ca_pem(&ns).await?,
        server_name: format!("hotload.{}.svc", ns.name),
    };
    let admin = format!("http://{}:9090/metrics", Chart::leader_ip(&ns).await?);
    progress(&format!(
        "{} tokens; connecting the simulated sidecars",
        tokens.len()
    ));
    let (tx, mut answers) = mpsc::unbounded_channel();
    let health = (!silent).then(|| sim::HealthSwitch::new(true.into()));
    sim::attach_all(
        &endpoint,
        &ns.name,
        names.iter().cloned().zip(tokens).collect(),
        streams_per_connection,
        tx,
        health,
    )
    .await?;
    eventually(
        "every simulated sidecar to be connected",
        Duration::from_secs(600),
        || async {
            let metrics = crate::testing::http_get(&admin).await?;
            let connected = apiserver::gauge(&metrics, "hotload_connected_sidecars").unwrap_or(0.0);
            ensure!(
                connected as usize == pods,
                "{connected} of {pods} connected"
            );
            Ok(())
        },
    )
    .await?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    progress(&format!(
        "{pods} streams open after {setup_seconds:.0}s; settling for {}s, then rolling out",
        settle.as_secs()
    ));
    tokio::time::sleep(settle).await;

    ensure!(
        Chart::operator_pid(&ns).await? == pid,
        "the operator restarted while the sidecars connected: its memory cannot be read per pod"
    );
    let cpu_start = apiserver::process_cpu_seconds(pid)?;
    let operator_peak_rss_after_connect_mib =
        apiserver::process_memory_kib(pid, "VmHWM")? as f64 / 1024.0;
    let mut rollouts = Vec::new();
    let v1 = roll(&ns, &admin, pid, &mut answers, pods, "v1", "100%").await?;
    rollouts.push(v1.0);
    let v2 = roll(&ns, &admin, pid, &mut answers, pods, "v2", "25%").await?;
    let stable = v2.1.clone();
    rollouts.push(v2.0);
    let (mut back, rolled_back, rollback_seconds) =
        roll_back(&ns, &admin, pid, &mut answers, pods, &stable).await?;
    back.name = "v3 broken, maxUnavailable 100%: rollback to v2".into();
    rollouts.push(back);
    let operator_cpu_seconds = apiserver::process_cpu_seconds(pid)? - cpu_start;
    let operator_peak_rss_mib = apiserver::process_memory_kib(pid, "VmHWM")? as f64 / 1024.0;
    let operator_rss_mib = apiserver::process_memory_kib(pid, "VmRSS")? as f64 / 1024.0;
    drop(chart);
    // Wait for the namespace to go: deleting thousands of pods is API traffic that would
    // count against the next run.
    delete_namespace_and_wait(&client, &ns.name, Duration::from_secs(900)).await?;
    Ok(RolloutReport {
        pods,
        streams_per_connection,
        health_reports: !silent,
        acked_seconds_100: rollouts[0].acked_seconds,
        acked_seconds_25: rollouts[1].acked_seconds,
        rollback_seconds,
        rolled_back_pods: rolled_back,
        rollouts,
        operator_peak_rss_mib,
        operator_peak_rss_after_connect_mib,
        operator_rss_mib,
        operator_base_rss_mib,
        operator_kib_per_connected_pod: (operator_peak_rss_mib - operator_base_rss_mib) * 1024.0
            / pods.max(1) as f64,
        operator_cpu_seconds,
        operator_allocator: hotload_operator::allocator::NAME,
        setup_seconds,
        settle_seconds: settle.as_secs(),
    })
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// The cluster, with a virtual Node and this build's binaries as its images (restarting it
/// if it runs without the Node, or with another build: a debug operator is not measured).
async fn ensure_virtual_node(layout: &Layout) -> Result<kube::Client> {
    let options = UpOptions {
        virtual_nodes: 1,
        ..UpOptions::default()
    };
    let kubeconfig = cluster::up(layout, &options).await?;
    let client = cluster::client_for(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let operator = std::env::current_exe()?.with_file_name("hotload-operator");
    let images = crate::images::ImageMap::load(&layout.cluster().join("images.json"))?;
    let same_build = images
        .images
        .get("hotload/operator:dev")
        .is_some_and(|image| image.entrypoint == operator);
    if same_build && nodes.get_opt(&virtual_node_name(0)).await?.is_some() {
        return Ok(client);
    }
    progress("restarting the cluster with a virtual node and this build's images");
    cluster::down(layout)?;
    let kubeconfig = cluster::up(layout, &options).await?;
    cluster::client_for(&kubeconfig).await
}

/// Creates `n` pods bound to the virtual Node; returns their names once all are Running.
async fn create_pods(ns: &TestNamespace, n: usize) -> Result<Vec<String>> {
    let pods: Api<Pod> = ns.api();
    let names: Vec<String> = (0..n).map(|i| format!("fleet-{i:05}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "fleet"}},
                    "spec": {
                        "nodeName": virtual_node_name(0),
                        "tolerations": [{"key": VIRTUAL_TAINT, "operator": "Exists"}],
                        "containers": [{"name": "app", "image": "hotload/virtual:dev"}],
                    },
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    eventually("every pod Running", Duration::from_secs(900), || async {
        let list = pods
            .list(&ListParams::default().labels("app=fleet"))
            .await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        ensure!(running == n, "{running} of {n} Running");
        Ok(())
    })
    .await?;
    Ok(names)
}

async fn issue_tokens(ns: &TestNamespace, names: &[String]) -> Result<Vec<String>> {
    let pods: Api<Pod> = ns.api();
    futures::stream::iter(names.to_vec())
        .map(|name| {
            let (pods, client) = (pods.clone(), ns.client.clone());
            async move { sim::pod_token(&client, &pods.get(&name).await?).await }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// Applies release `version` and waits for every pod's answer.
async fn roll(
    ns: &TestNamespace,
    admin: &str,
    pid: u32,
    answers: &mut mpsc::UnboundedReceiver<Answer>,
    pods: usize,
    version: &str,
    max_unavailable: &str,
) -> Result<(RolloutFigures, String)> {
    let before = Snapshot::take(ns, admin, pid).await?;
    let (started, generation) = apply(ns, version, max_unavailable, false).await?;
    let mut loaded: BTreeSet<usize> = BTreeSet::new();
    let mut revision = String::new();
    let mut last = started;
    while loaded.len() < pods {
        let answer = next_answer(answers).await?;
        if answer.at < started || !answer.loaded {
            continue;
        }
        if revision.is_empty() {
            revision.clone_from(&answer.revision);
        }
        if answer.revision == revision && loaded.insert(answer.pod) {
            last = answer.at;
        }
    }
    let status_at = wait_phase(ns, generation, "Completed", pods).await?;
    let after = Snapshot::take(ns, admin, pid).await?;
    let figures = before.figures(
        &after,
        format!("{version}, maxUnavailable {max_unavailable}"),
        last - started,
        status_at - started,
    );
    progress(&format!("{}: {:.3}s", figures.name, figures.acked_seconds));
    Ok((figures, revision))
}

/// Applies the broken v3; returns the figures, how many pods went back and the seconds from
/// the first failure to the last pod back on `stable`.
async fn roll_back(
    ns: &TestNamespace,
    admin: &str,
    pid: u32,
    answers: &mut mpsc::UnboundedReceiver<Answer>,
    pods: usize,
    stable: &str,
) -> Result<(RolloutFigures, usize, f64)> {
    let before = Snapshot::take(ns, admin, pid).await?;
    let (started, generation) = apply(ns, "v3", "100%", true).await?;
    let mut first_failure = None;
    let mut touched: BTreeSet<usize> = BTreeSet::new();
    let mut back: BTreeSet<usize> = BTreeSet::new();
    let mut last = started;
    loop {
        let answer = next_answer(answers).await?;
        if answer.at < started {
            continue;
        }
        if !answer.loaded {
            first_failure.get_or_insert(answer.at);
            touched.insert(answer.pod);
        } else if answer.revision == stable && back.insert(answer.pod) {
            last = answer.at;
        }
        if touched.len() == pods && back.len() == pods {
            break;
        }
    }
    let status_at = wait_phase(ns, generation, "RolledBack", pods).await?;
    let after = Snapshot::take(ns, admin, pid).await?;
    let first = first_failure.context("no failure")?;
    let figures = before.figures(&after, "v3".into(), last - started, status_at - started);
    let seconds = (last - first).as_secs_f64();
    progress(&format!("rollback of {} pods: {seconds:.3}s", back.len()));
    Ok((figures, back.len(), seconds))
}

async fn next_answer(answers: &mut mpsc::UnboundedReceiver<Answer>) -> Result<Answer> {
    match tokio::time::timeout(Duration::from_secs(300), answers.recv()).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => bail!("every simulated sidecar stream ended"),
        Err(_) => bail!("no answer for 300s"),
    }
}

/// Server-side applies release `fleet` at `version`; returns when and the generation.
async fn apply(
    ns: &TestNamespace,
    version: &str,
    max_unavailable: &str,
    broken: bool,
) -> Result<(Instant, i64)> {
    let digest = format!(
        "sha256:{:064x}",
        version.bytes().map(u64::from).sum::<u64>()
    );
    let url = format!(
        "https://artifacts.invalid/{}plugin-{version}.wasm",
        if broken { "broken-" } else { "" }
    );
    let release = json!({
        "apiVersion": "hotload.dev/v1alpha1", "kind": "PluginRelease",
        "metadata": {"name": "fleet"},
        "spec": {
            "plugin": "handler",
            "selector": {"matchLabels": {"app": "fleet"}},
            "artifact": {"url": url, "digest": digest},
            "strategy": {"maxUnavailable": max_unavailable},
        },
    });
    let started = Instant::now();
    let applied = plugin_releases(ns)
        .patch(
            "fleet",
            &PatchParams::apply("hotload-bench").force(),
            &Patch::Apply(&release),
        )
        .await?;
    Ok((started, applied.metadata.generation.unwrap_or_default()))
}

/// Watches the release until `phase` at `generation` with every pod counted.
async fn wait_phase(
    ns: &TestNamespace,
    generation: i64,
    phase: &str,
    pods: usize,
) -> Result<Instant> {
    let api = plugin_releases(ns);
    let config = kube::runtime::watcher::Config::default().fields("metadata.name=fleet");
    let mut changes = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(
        kube::runtime::watcher(api, config)
    ));
    let deadline = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => bail!("the release did not reach {phase} in 600s"),
            change = changes.next() => {
                let release = change.context("the watch ended")??;
                let status = &release.data["status"];
                let counted = status["updated"].as_u64().unwrap_or(0) as usize == pods
                    || (phase == "RolledBack" && status["matched"].as_u64().unwrap_or(0) as usize == pods);
                if status["observedGeneration"] == generation && status["phase"] == phase && counted {
                    return Ok(Instant::now());
                }
            }
        }
    }
}

/// Counters read before and after a rollout.
struct Snapshot {
    requests: apiserver::RequestCounts,
    status_writes: f64,
    cpu_seconds: f64,
}

impl Snapshot {
    async fn take(ns: &TestNamespace, admin: &str, pid: u32) -> Result<Self> {
        let text = ns
            .client
            .request_text(http::Request::get("/metrics").body(Vec::new())?)
            .await
            .context("reading the API server's /metrics")?;
        let operator = crate::testing::http_get(admin).await?;
        Ok(Self {
            requests: apiserver::request_counts(&text),
            status_writes: apiserver::gauge(&operator, "hotload_status_writes_total")
                .unwrap_or(0.0),
            cpu_seconds: apiserver::process_cpu_seconds(pid)?,
        })
    }

    fn figures(
        &self,
        after: &Self,
        name: String,
        acked: Duration,
        status: Duration,
    ) -> RolloutFigures {
        let delta = after.requests.minus(&self.requests);
        let status_writes = (after.status_writes - self.status_writes).max(0.0) as u64;
        RolloutFigures {
            name,
            acked_seconds: acked.as_secs_f64(),
            status_seconds: status.as_secs_f64(),
            api_requests: delta.total,
            api_writes: delta.writes,
            status_writes,
            // Writes per started second: the first write comes at once, later ones at most
            // one a second after the previous (writes at 0 s and 1.0 s are 2 in 2 seconds).
            status_writes_per_second: status_writes as f64 / status.as_secs_f64().ceil().max(1.0),
            operator_cpu_seconds: after.cpu_seconds - self.cpu_seconds,
        }
    }
}
