//! Analysis end to end on the local cluster, under traffic: the hosts in the demo pods count
//! every plugin call, the sidecars forward the counts, and the operator judges the target
//! revision window by window. A plugin that loads cleanly but traps on one call in five, or
//! answers far slower than the stable one, is rolled back during its canary step; a release
//! without traffic holds as inconclusive and completes once traffic comes; a healthy one
//! completes, with analysis adding no more than its passing windows.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hotload_e2e::fleet::Demo;
use hotload_e2e::gate::{Gate, GateVerdict};
use hotload_e2e::prometheus::{Prometheus, Target};
use hotload_e2e::testing::{self, condition};
use hotload_e2e::workload::{Traffic, example_plugin, tagger};
use serde_json::{Value, json};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// Analysis with one built-in check, in 5 s windows.
fn analysis(check: Value) -> Value {
    json!({"interval": "5s", "minCalls": 20, "passingWindows": 1, "checks": [check]})
}

/// A 20% canary step, then everyone.
fn canary() -> Value {
    json!({"maxUnavailable": "100%", "steps": [{"percent": 20}, {"percent": 100}]})
}

/// The IPs that failed requests went to.
fn failed_ips(failed: &[String]) -> BTreeSet<String> {
    failed
        .iter()
        .filter_map(|f| f.split(':').next().map(str::to_string))
        .collect()
}

/// The newest judged window's first check.
fn last_check(status: &Value) -> Value {
    status["analysis"]["windows"][0]["checks"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_traps_on_one_call_in_five_is_rolled_back_during_its_canary_step() {
    testing::run(E2E, "analysis-errors", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;
        let pods = demo.ready_pods(5).await?;
        let ips: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
        let traffic = Traffic::start(ips.clone());
        let errors = analysis(json!({"name": "errors", "errorRate": {"max": "1%"}}));

        // A healthy revision completes: analysis adds at most one window per step
        // (5 s, plus the 2 s the last reports take to arrive) to each of the two steps.
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let started = Instant::now();
        let generation = demo
            .apply(&v2, json!({"strategy": canary(), "analysis": errors}))
            .await?;
        let status = demo.wait_ready(generation).await?;
        let took = started.elapsed();
        ensure!(
            status["analysis"]["phase"] == "Passed",
            "analysis: {:#}",
            status["analysis"]
        );
        ensure!(
            took < Duration::from_secs(40),
            "a healthy two-step rollout took {took:?}"
        );
        let passed = &status["analysis"]["windows"][0];
        ensure!(passed["verdict"] == "Pass", "{passed:#}");

        // The flaky revision reaches one canary pod, fails there, and rolls back.
        let flaky = demo.publish("tagger-flaky.wasm", &example_plugin("tagger-flaky")?);
        let generation = demo
            .apply(&flaky, json!({"strategy": canary(), "analysis": errors}))
            .await?;
        let status = demo
            .wait_status("the flaky revision rolled back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        demo.all_serve(5, "v02").await?;
        let report = traffic.finish().await?;

        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("failed analysis: check errors: error rate")
                && message.contains("> 1% over")
                && message.contains("calls on 1 pod"),
            "the message gives the measured rate, limit, calls and pod: {message}"
        );
        let check = last_check(&status);
        let rate: f64 = check["value"]
            .as_str()
            .and_then(|v| v.trim_end_matches('%').parse().ok())
            .context("the window's value")?;
        ensure!(
            (15.0..=25.0).contains(&rate) && check["pods"] == 1 && check["limit"] == "<= 1%",
            "one call in five fails on the canary pod: {check:#}"
        );
        let events = demo.events().await?;
        ensure!(
            events
                .iter()
                .any(|(reason, message)| reason == "RolledBack" && message.contains("error rate")),
            "a RolledBack event with the rate: {events:?}"
        );
        // Only the canary pod's calls failed, and only while it ran the flaky revision.
        let failing = failed_ips(&report.failed);
        ensure!(
            failing.len() <= 1,
            "requests failed on more than the canary pod: {:?}",
            report.failed.iter().take(5).collect::<Vec<_>>()
        );
        ensure!(
            !report.failed.is_empty() && report.ok > 200,
            "traffic saw the canary's failures: ok {}, failed {}",
            report.ok,
            report.failed.len()
        );
        let status_text = demo.cli("status", &[])?;
        ensure!(
            status_text.contains("errors") && status_text.contains("Fail"),
            "kubectl hotload status shows the failing window:\n{status_text}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_five_times_slower_than_the_stable_one_is_rolled_back_by_the_latency_check() {
    testing::run(E2E, "analysis-latency", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;
        let ips: Vec<String> = demo
            .ready_pods(5)
            .await?
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let traffic = Traffic::start(ips);

        let slow = demo.publish("tagger-slow.wasm", &example_plugin("tagger-slow")?);
        let latency =
            analysis(json!({"name": "p99", "latency": {"percentile": 99, "maxRatio": "3"}}));
        let generation = demo
            .apply(&slow, json!({"strategy": canary(), "analysis": latency}))
            .await?;
        let status = demo
            .wait_status("the slow revision rolled back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        demo.all_serve(5, "v01").await?;
        let report = traffic.finish().await?;
        ensure!(
            report.failed.is_empty(),
            "a slow plugin fails no request: {:?}",
            report.failed.iter().take(5).collect::<Vec<_>>()
        );
        let check = last_check(&status);
        let ratio: f64 = check["value"]
            .as_str()
            .and_then(|v| v.trim_end_matches('x').parse().ok())
            .context("the window's ratio")?;
        ensure!(
            ratio >= 5.0 && check["verdict"] == "Fail",
            "p99 at least 5× the stable revision's: {check:#}"
        );
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(message.contains("check p99: p99 "), "{message}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_a_release_holds_as_inconclusive_and_completes_once_traffic_comes() {
    testing::run(E2E, "analysis-idle", |ns| async move {
        let demo = Demo::start(E2E, &ns, 3).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;

        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let errors = analysis(json!({"name": "errors", "errorRate": {"max": "1%"}}));
        let generation = demo
            .apply(
                &v2,
                json!({"strategy": {"maxUnavailable": "100%"}, "analysis": errors}),
            )
            .await?;
        let status = demo
            .wait_status("the release holding as inconclusive", generation, |s| {
                s["phase"] == "Paused" && s["analysis"]["phase"] == "Inconclusive"
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("analysis inconclusive") && message.contains("too little traffic"),
            "{message}"
        );
        ensure!(
            condition(&status, "Ready") == Some(("False", "AnalysisInconclusive")),
            "Ready: {:?}",
            condition(&status, "Ready")
        );
        ensure!(
            status["stableRevision"] != status["targetRevision"],
            "no data is never taken for a pass"
        );
        let (health, why) = demo.argo_health().await?;
        ensure!(
            health != "Healthy" && why.contains("inconclusive"),
            "Argo CD: {health}: {why}"
        );

        let ips: Vec<String> = demo
            .ready_pods(3)
            .await?
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let traffic = Traffic::start(ips);
        let status = demo.wait_ready(generation).await?;
        let report = traffic.finish().await?;
        ensure!(report.failed.is_empty(), "{:?}", report.failed);
        ensure!(
            status["phase"] == "Completed" && status["analysis"]["phase"] == "Passed",
            "{status:#}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_check_and_a_webhook_gate_each_fail_one_rollout_and_pass_another() {
    testing::run(E2E, "analysis-providers", |ns| async move {
        let demo = Demo::start(E2E, &ns, 3).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;
        let pods = demo.ready_pods(3).await?;
        let ips: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
        let traffic = Traffic::start(ips);

        // A real Prometheus scrapes every sidecar's /metrics; a gate answers as told.
        let targets: Vec<Target> = pods
            .iter()
            .map(|(name, ip)| Target::new(format!("{ip}:9901")).label("pod", name))
            .collect();
        let prometheus = Prometheus::start_for_cluster(&targets, "/metrics").await?;
        prometheus
            .wait_for_data("hotload_plugin_calls_total", Duration::from_secs(60))
            .await?;
        let gate = Gate::start_for_cluster().await?;
        let error_ratio = json!({"name": "error-ratio", "prometheus": {
            "address": prometheus.address(),
            "query": "sum(rate(hotload_plugin_errors_total{revision=\"{{revision}}\"}[{{interval}}])) / sum(rate(hotload_plugin_calls_total{revision=\"{{revision}}\"}[{{interval}}]))",
            "max": "0.05",
        }});
        let gated = json!({"name": "load-test", "webhook": {"url": gate.url(), "timeoutSeconds": 5}});
        let with = |checks: Value| {
            json!({"strategy": canary(), "analysis":
                {"interval": "5s", "minCalls": 20, "checks": checks}})
        };

        // Both pass: v2 completes.
        gate.answer(GateVerdict::Pass, "load test green");
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let generation = demo
            .apply(&v2, with(json!([error_ratio, gated])))
            .await?;
        let status = demo.wait_ready(generation).await?;
        let checks = &status["analysis"]["windows"][0]["checks"];
        ensure!(
            checks[0]["verdict"] == "Pass" && checks[1]["verdict"] == "Pass",
            "{checks:#}"
        );
        let asked = gate.requests();
        let window = asked.last().context("the gate was asked")?.json()?;
        ensure!(
            window["revision"] == status["targetRevision"]
                && window["release"] == "handler"
                && window["pods"].as_array().is_some_and(|p| !p.is_empty()),
            "the gate is told the release, revision and pods: {window:#}"
        );

        // The query fails the flaky revision on its canary pod.
        let flaky = demo.publish("tagger-flaky.wasm", &example_plugin("tagger-flaky")?);
        let generation = demo.apply(&flaky, with(json!([error_ratio]))).await?;
        let status = demo
            .wait_status("Prometheus rolled the flaky revision back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("check error-ratio: query result") && message.contains("> 0.05"),
            "{message}"
        );

        // The gate fails a revision that runs fine.
        gate.answer(GateVerdict::Fail, "load test red: p99 1.2 s");
        let v1_again = demo.publish("tagger-v1b.wasm", &tagger(1)?);
        let generation = demo
            .apply(
                &v1_again,
                json!({"config": {"build": "b"}, "strategy": canary(),
                       "analysis": {"interval": "5s", "checks": [gated]}}),
            )
            .await?;
        let status = demo
            .wait_status("the gate rolled the revision back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("check load-test: gate answered Fail: load test red: p99 1.2 s"),
            "{message}"
        );
        demo.all_serve(3, "v02").await?;
        let report = traffic.finish().await?;
        ensure!(
            failed_ips(&report.failed).len() <= 1,
            "failures beyond the flaky canary: {:?}",
            report.failed.iter().take(5).collect::<Vec<_>>()
        );
        Ok(())
    })
    .await;
}
