//! The acknowledgement tells the truth, end to end on the local cluster: every worker process
//! of a pod serves what status says; a pod takes traffic (is Ready, so its Service sends it
//! requests) only once its plugin serves; a pod whose artifact host is down waits, not Ready,
//! and converges when the host returns; a StatefulSet pod recreated under its own name
//! converges. Traffic goes through a real Service (kube-proxy routes only to Ready pods), so
//! a request that fails is one a user's client would have seen fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hotload_e2e::fleet::{Demo, WAIT};
use hotload_e2e::testing::{self, eventually};
use hotload_e2e::workload::{Traffic, deployment, tag_of, tagger, tagger_failing_self_check};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// A ClusterIP Service in front of the demo pods; its address.
async fn service(demo: &Demo) -> Result<String> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "demo"},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }))?;
    let svc = demo
        .ns
        .api::<Service>()
        .create(&PostParams::default(), &svc)
        .await?;
    let address = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    hotload_e2e::workload::wait_answering(&address).await?;
    Ok(address)
}

/// Scales the demo Deployment to `replicas`.
async fn scale(demo: &Demo, replicas: i32) -> Result<()> {
    demo.ns
        .api::<Deployment>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// Which tag each worker process of the pod at `ip` answers with: `requests` requests, each
/// on a new connection, so the kernel spreads them over the workers sharing the port.
async fn tags_by_worker(ip: &str, requests: usize) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in 0..requests {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()?;
        let response = client
            .post(format!("http://{ip}:8080/"))
            .body(format!("probe-{i}"))
            .send()
            .await?;
        let worker = response
            .headers()
            .get("x-hotload-worker")
            .and_then(|v| v.to_str().ok())
            .context("no x-hotload-worker header")?
            .to_string();
        let status = response.status();
        let body = response.text().await?;
        ensure!(
            status.is_success(),
            "{ip} worker {worker}: {status}: {body}"
        );
        let tag = tag_of(&body).with_context(|| format!("{ip} worker {worker}: {body}"))?;
        seen.entry(worker).or_default().insert(tag);
    }
    Ok(seen)
}

/// The status entry of every pod, by name.
fn acks(status: &Value) -> BTreeMap<String, Value> {
    status["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["pod"].as_str()?.to_string(), p.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_of_a_pre_forked_pod_serves_the_revision_status_reports() {
    testing::run(E2E, "ack-workers", |ns| async move {
        let mut app = deployment(3)?;
        let pod = app.spec.template.spec.as_mut();
        let container = pod
            .context("pod spec")?
            .containers
            .first_mut()
            .context("app")?;
        container.args = Some(vec!["--listen=0.0.0.0:8080".into(), "--workers=3".into()]);
        let demo = Demo::start_with(E2E, &ns, app).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;

        let ips: Vec<String> = demo
            .ready_pods(3)
            .await?
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let traffic = Traffic::start(ips.clone());
        let generation = demo
            .apply(&v2, json!({"strategy": {"maxUnavailable": 1}}))
            .await?;
        let status = demo.wait_ready(generation).await?;
        let report = traffic.finish().await?;
        ensure!(
            report.failed.is_empty(),
            "failed requests: {:?}",
            report.failed
        );

        // Status says every worker loaded v2, and every worker answers v2.
        for (pod, ack) in acks(&status) {
            ensure!(
                ack["state"] == "Loaded" && ack["workers"] == 3 && ack["workersLoaded"] == 3,
                "{pod}: {ack}"
            );
        }
        for ip in &ips {
            let seen = tags_by_worker(ip, 60).await?;
            ensure!(
                seen.len() == 3,
                "{ip}: requests reached {} workers: {seen:?}",
                seen.len()
            );
            ensure!(
                seen.values()
                    .all(|tags| tags.len() == 1 && tags.contains("v02")),
                "{ip}: a worker answers something other than v02: {seen:?}"
            );
        }
        let pods = demo.cli("pods", &[])?;
        ensure!(
            pods.contains("3/3"),
            "kubectl hotload pods shows the workers:\n{pods}"
        );

        // A revision the workers refuse rolls back; the reason names the pod and the worker.
        let broken = demo.publish("tagger-broken.wasm", &tagger_failing_self_check()?);
        let generation = demo.apply(&broken, json!({})).await?;
        let status = demo
            .wait_status("the broken revision rolled back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("pod demo-")
                && message.contains("worker ")
                && message.contains("self-check"),
            "the reason names pod and worker: {message}"
        );
        for ip in &ips {
            let seen = tags_by_worker(ip, 30).await?;
            ensure!(
                seen.values()
                    .all(|tags| tags.len() == 1 && tags.contains("v02")),
                "{ip}: after the rollback: {seen:?}"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_added_during_and_after_a_rollout_take_traffic_only_once_their_plugin_serves() {
    testing::run(E2E, "ack-scale", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;
        let address = service(&demo).await?;
        let traffic = Traffic::start(vec![address]);

        // Scale 5 → 8 while v2 rolls out one pod at a time, then 8 → 10 once it is done.
        let slow = json!({"strategy": {"maxUnavailable": 1, "minReadySeconds": 2}});
        let generation = demo.apply(&v2, slow).await?;
        scale(&demo, 8).await?;
        let status = demo.wait_ready(generation).await?;
        ensure!(status["matched"] == 8, "matched: {}", status["matched"]);
        scale(&demo, 10).await?;
        demo.all_serve(10, "v02").await?;
        let status = demo
            .wait_status("10 pods on v2", generation, |s| s["updated"] == 10)
            .await?;
        let report = traffic.finish().await?;
        ensure!(
            report.failed.is_empty(),
            "{} requests failed through the Service: {:?}",
            report.failed.len(),
            report.failed.iter().take(5).collect::<Vec<_>>()
        );
        ensure!(
            report.ok > 100,
            "too little traffic to prove anything: {}",
            report.ok
        );
        let target = &status["targetRevision"];
        for (pod, ack) in acks(&status) {
            ensure!(
                ack["revision"] == *target && ack["state"] == "Loaded",
                "{pod}: {ack}"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_wait_not_ready_while_the_artifact_host_is_down_and_converge_when_it_returns() {
    testing::run(E2E, "ack-retry", |ns| async move {
        let demo = Demo::start(E2E, &ns, 3).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;
        let broken = demo.publish("tagger-broken.wasm", &tagger_failing_self_check()?);
        let generation = demo.apply(&broken, json!({})).await?;
        demo.wait_status("rolled back", generation, |s| s["phase"] == "RolledBack")
            .await?;

        // The host goes down; two new pods must fetch the stable revision from it.
        demo.artifacts.stop().await?;
        scale(&demo, 5).await?;
        let retrying = eventually("the new pods retrying the fetch", WAIT, || async {
            let status = demo.status().await?;
            let waiting: Vec<Value> = acks(&status)
                .into_values()
                .filter(|a| a["state"] != "Loaded")
                .collect();
            ensure!(
                waiting.len() == 2
                    && waiting.iter().all(|a| {
                        a["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("trying again"))
                    }),
                "status: {status:#}"
            );
            Ok(waiting)
        })
        .await?;
        ensure!(retrying.len() == 2);
        // They stay not Ready while the host is down (checked for a while).
        for _ in 0..5 {
            let ready = demo.ready_pods_now().await?;
            ensure!(ready.len() == 3, "only the 3 old pods are Ready: {ready:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        demo.artifacts.resume().await?;
        let back = Instant::now();
        demo.ready_pods(5).await?;
        let took = back.elapsed();
        ensure!(
            took < Duration::from_secs(30),
            "converged {took:?} after the host returned"
        );
        demo.all_serve(5, "v01").await?;
        // The pods gate their own readiness; the status is the operator's record of their
        // acks and follows within a sweep (later when its leader is replaced meanwhile).
        eventually("the status to record all 5 pods Loaded", WAIT, || async {
            let status = demo.status().await?;
            let acks = acks(&status);
            ensure!(
                acks.len() == 5 && acks.values().all(|a| a["state"] == "Loaded"),
                "status: {status:#}"
            );
            Ok(())
        })
        .await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_pod_recreated_under_its_name_keeps_its_stream_and_converges() {
    testing::run(E2E, "ack-sts", |ns| async move {
        let demo = Demo::start(E2E, &ns, 1).await?;
        let template = deployment(1)?.spec.template;
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "sts"},
            "spec": {
                "serviceName": "sts",
                "replicas": 2,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": template,
            },
        }))?;
        ns.api::<StatefulSet>()
            .create(&PostParams::default(), &sts)
            .await?;
        demo.ready_pods(3).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;

        let pods = ns.api::<Pod>();
        let old_uid = pods.get("sts-0").await?.metadata.uid;
        pods.delete("sts-0", &DeleteParams::default()).await?;
        let recreated = eventually("sts-0 recreated and Ready", WAIT, || async {
            let pod = pods.get("sts-0").await?;
            ensure!(pod.metadata.uid != old_uid, "still the old pod");
            ensure!(hotload_e2e::chart::is_ready(&pod), "not Ready yet");
            Ok(pod)
        })
        .await?;
        let ip = recreated
            .status
            .and_then(|s| s.pod_ip)
            .context("sts-0 has no IP")?;
        let body = hotload_e2e::workload::post(&ip, "probe").await?;
        ensure!(tag_of(&body).as_deref() == Some("v01"), "{body}");
        // The old pod's delete reached the operator after the new pod attached: the new
        // pod's stream stays, and status keeps it Loaded (not Unreachable) from now on.
        for _ in 0..5 {
            let status = demo.status().await?;
            let ack = acks(&status).remove("sts-0").context("sts-0 in status")?;
            ensure!(ack["state"] == "Loaded", "sts-0: {ack}; status: {status:#}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let status = demo.status().await?;
        ensure!(
            status["updated"] == 3 && status["unreachable"] == 0,
            "{status:#}"
        );
        Ok(())
    })
    .await;
}
