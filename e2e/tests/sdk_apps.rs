//! The app SDKs on the local cluster, driven by the operator as a user's fleet is: a Go app
//! (`sdk/go/examples/server`) and a gunicorn app with 3 workers per pod
//! (`sdk/python/examples/server`), injected by the webhook and rolled v1 → v2 → a v3 whose
//! self-check fails, while requests flow to every pod. No request fails, every worker of
//! every pod acknowledges v2 and serves it, and v3 rolls back with the reason of the worker
//! that refused it, every worker still serving v2.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hotload_e2e::fleet::Demo;
use hotload_e2e::sdk_apps::{
    answers_by_worker, build_go_server, go_deployment, python_deployment, python_gunicorn,
};
use hotload_e2e::testing;
use hotload_e2e::workload::{Traffic, tagger, tagger_failing_self_check};
use serde_json::{Value, json};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
/// Pods of each app.
const PODS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_app_takes_v2_and_refuses_a_broken_v3_under_traffic() {
    testing::run(E2E, "sdk-go", |ns| async move {
        let started = Instant::now();
        let binary = build_go_server()?;
        let app = go_deployment("go-app", PODS.try_into()?, &binary)?;
        let demo = Demo::start_with(E2E, &ns, app).await?;
        roll_out_under_traffic(&demo, 1).await?;
        eprintln!("sdk-go: done in {:.1?}", started.elapsed());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gunicorn_worker_takes_v2_and_refuses_a_broken_v3_under_traffic() {
    testing::run(E2E, "sdk-python", |ns| async move {
        let started = Instant::now();
        let gunicorn = python_gunicorn()?;
        let app = python_deployment("py-app", PODS.try_into()?, 3, &gunicorn)?;
        let demo = Demo::start_with(E2E, &ns, app).await?;
        roll_out_under_traffic(&demo, 3).await?;
        eprintln!("sdk-python: done in {:.1?}", started.elapsed());
        Ok(())
    })
    .await;
}

/// v1, then v2 and the broken v3 under traffic to every pod, each of `workers` processes.
async fn roll_out_under_traffic(demo: &Demo, workers: usize) -> Result<()> {
    let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
    let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
    let broken = demo.publish("tagger-v3-broken.wasm", &tagger_failing_self_check()?);
    let generation = demo.apply(&v1, json!({})).await?;
    demo.wait_ready(generation).await?;
    let pods = demo.ready_pods(PODS).await?;
    // Requests to every pod at once, each pod its own stream, so each is seen across its swap.
    let traffic: Vec<Traffic> = pods
        .iter()
        .map(|(_, ip)| Traffic::start(vec![ip.clone()]))
        .collect();
    // Let requests reach v1 first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let generation = demo
        .apply(&v2, json!({"strategy": {"maxUnavailable": 1}}))
        .await?;
    let status = demo.wait_ready(generation).await?;
    let v2_revision = status["targetRevision"]
        .as_str()
        .context("status names no target revision")?
        .to_string();
    every_worker_acknowledged(&status, &v2_revision, workers)?;
    let mut workers_of = Vec::new();
    for (pod, ip) in &pods {
        let ids = every_worker_serves(pod, ip, workers, &v2_revision).await?;
        workers_of.push((pod.clone(), ids));
    }
    let shown = demo.cli("pods", &[])?;
    ensure!(
        shown.contains(&format!("{workers}/{workers}")),
        "kubectl hotload pods shows every worker loaded:\n{shown}"
    );

    let generation = demo.apply(&broken, json!({})).await?;
    let status = demo
        .wait_status("the broken v3 rolled back", generation, |s| {
            s["phase"] == "RolledBack"
        })
        .await?;
    let versions: BTreeSet<String> = ["v01", "v02"].map(String::from).into();
    let mut answered = 0;
    for ((pod, _), traffic) in pods.iter().zip(traffic) {
        let report = traffic.finish().await?;
        ensure!(
            report.failed.is_empty(),
            "{pod}: {} of {} requests failed: {:?}",
            report.failed.len(),
            report.ok + report.failed.len(),
            report.failed.iter().take(5).collect::<Vec<_>>()
        );
        ensure!(
            report.tags == versions && report.ok >= 5,
            "{pod} answered {:?} in {} answers; expected v01, then v02",
            report.tags,
            report.ok
        );
        answered += report.ok;
    }

    // The reason names one of the pods and a worker that runs there.
    let message = status["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("self-check failed"),
        "the reason says what failed: {message}"
    );
    ensure!(
        workers_of.iter().any(|(pod, ids)| {
            message.contains(&format!("pod {pod} "))
                && ids
                    .iter()
                    .any(|id| message.contains(&format!("worker {id}: ")))
        }),
        "the reason names a pod and one of its workers ({workers_of:?}): {message}"
    );
    for (pod, ip) in &pods {
        every_worker_serves(pod, ip, workers, &v2_revision)
            .await
            .context("after the rollback")?;
    }
    demo.wait_status("every pod back on v2", generation, |s| {
        every_worker_acknowledged(s, &v2_revision, workers).is_ok()
    })
    .await?;
    eprintln!("{answered} requests, 0 failed, v01 then v02 from every pod; v3: {message}");
    Ok(())
}

/// Status lists every pod Loaded at `revision` by all its `workers` workers.
fn every_worker_acknowledged(status: &Value, revision: &str, workers: usize) -> Result<()> {
    let acks = status["pods"].as_array().cloned().unwrap_or_default();
    ensure!(acks.len() == PODS, "status lists {PODS} pods: {status:#}");
    for ack in &acks {
        ensure!(
            ack["state"] == "Loaded"
                && ack["revision"] == revision
                && ack["workers"] == workers
                && ack["workersLoaded"] == workers,
            "{revision} loaded by {workers}/{workers} workers: {ack}"
        );
    }
    Ok(())
}

/// Every one of the pod's `workers` worker processes answers v02 from `revision`; their ids.
async fn every_worker_serves(
    pod: &str,
    ip: &str,
    workers: usize,
    revision: &str,
) -> Result<BTreeSet<String>> {
    let answers = answers_by_worker(ip, workers).await?;
    ensure!(
        answers.len() == workers,
        "{pod}: requests reached {} of {workers} workers: {answers:?}",
        answers.len()
    );
    for (worker, seen) in &answers {
        ensure!(
            seen.tags.iter().eq(["v02"]) && seen.revisions.iter().eq([revision]),
            "{pod} worker {worker} answers {seen:?}, not v02 from {revision}"
        );
    }
    Ok(answers.into_keys().collect())
}
