//! The operator's control loop on the real API server (the chart-installed operator, in a
//! pod), before any sidecar connects: it finds the selected pods, reports them unreachable,
//! writes kstatus conditions with server-side apply, records events, turns Degraded after
//! the progress deadline, and refuses to fight another release over the same plugin.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hotload_e2e::bench::apiserver::gauge;
use hotload_e2e::chart::Chart;
use hotload_e2e::images::TESTSERVER_IMAGE;
use hotload_e2e::testing::{self, TestNamespace, condition, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use serde_json::json;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
const WAIT: Duration = Duration::from_secs(60);
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn release(name: &str, deadline: i32) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "hotload.dev/v1alpha1",
        "kind": "PluginRelease",
        "metadata": {"name": name},
        "spec": {
            "plugin": "greeter",
            "selector": {"matchLabels": {"app": "shop"}},
            "artifact": {"url": "oci://127.0.0.1:5000/plugins/greeter:1", "digest": DIGEST},
            "progressDeadlineSeconds": deadline,
        },
    }))?)
}

async fn shop(ns: &TestNamespace, replicas: i32) -> Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "app", "image": TESTSERVER_IMAGE, "args": ["testserver"]}]},
            },
        },
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(())
}

#[tokio::test]
async fn release_without_sidecars_reports_unreachable_pods_then_degrades() {
    testing::run(E2E, "operator", |ns| async move {
        let _chart = Chart::install(&ns, &[])?;
        Chart::wait_ready(&ns).await?;
        shop(&ns, 3).await?;
        let api = testing::plugin_releases(&ns);
        api.create(&PostParams::default(), &release("greeter", 8)?)
            .await?;

        let status = eventually(
            "the operator to report 3 unreachable pods",
            WAIT,
            || async {
                let status = api.get("greeter").await?.data["status"].clone();
                ensure!(
                    status["matched"] == 3 && status["unreachable"] == 3,
                    "status so far: {status}"
                );
                Ok(status)
            },
        )
        .await
        .with_context(|| format!("operator log:\n{}", Chart::log(&ns, 60)))?;
        ensure!(
            status["phase"] == "Progressing",
            "phase: {}",
            status["phase"]
        );
        ensure!(
            status["progress"] == "0/3",
            "progress: {}",
            status["progress"]
        );
        ensure!(
            status["targetRevision"]
                .as_str()
                .is_some_and(|r| r.len() == 10),
            "target: {status}"
        );
        ensure!(
            condition(&status, "Ready") == Some(("False", "RolloutInProgress")),
            "Ready: {status}"
        );
        ensure!(
            condition(&status, "Progressing") == Some(("True", "RolloutInProgress")),
            "{status}"
        );
        let acks = status["pods"].as_array().context("pods")?;
        ensure!(
            acks.len() == 3 && acks.iter().all(|a| a["state"] == "Unreachable"),
            "pods: {acks:?}"
        );

        // No sidecar ever answers: after the deadline the release is Degraded, and says why.
        let status = eventually("ProgressDeadlineExceeded", WAIT, || async {
            let status = api.get("greeter").await?.data["status"].clone();
            ensure!(status["phase"] == "Degraded", "phase {}", status["phase"]);
            Ok(status)
        })
        .await?;
        ensure!(
            condition(&status, "Degraded") == Some(("True", "ProgressDeadlineExceeded")),
            "{status}"
        );
        ensure!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains("made no progress")),
            "{status}"
        );
        let events: Api<Event> = ns.api();
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.involved_object.kind.as_deref() == Some("PluginRelease"))
            .filter_map(|e| e.reason)
            .collect();
        for want in ["RolloutStarted", "ProgressDeadlineExceeded"] {
            ensure!(
                reasons.iter().any(|r| r == want),
                "no {want} event among {reasons:?}"
            );
        }
        let table = ns.kubectl(&["get", "plr"])?;
        ensure!(
            table.contains("greeter") && table.contains("0/3") && table.contains("Degraded"),
            "kubectl get plr:\n{table}"
        );
        // kstatus: `kubectl wait` sees the condition the operator wrote.
        ns.kubectl(&[
            "wait",
            "--for=condition=Degraded",
            "plr/greeter",
            "--timeout=5s",
        ])?;
        let restarts = Chart::restarts(&ns).await?;
        ensure!(
            restarts == 0,
            "the operator restarted:\n{}",
            Chart::log(&ns, 60)
        );
        // The sole replica leads; its metrics count what it did.
        let admin = format!("http://{}:9090", Chart::leader_ip(&ns).await?);
        let ready = testing::http_get(&format!("{admin}/ready")).await?;
        ensure!(ready == "ready: leading\n", "/ready: {ready:?}");
        let metrics = testing::http_get(&format!("{admin}/metrics")).await?;
        for (series, at_least) in [
            ("hotload_reconciles_total{result=\"ok\"}", 1.0),
            ("hotload_status_writes_total", 1.0),
            (
                "hotload_rollout_events_total{reason=\"RolloutStarted\"}",
                1.0,
            ),
        ] {
            ensure!(
                gauge(&metrics, series).is_some_and(|v| v >= at_least),
                "/metrics: {series} below {at_least}:\n{metrics}"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_second_release_for_the_same_plugin_is_refused_with_a_condition() {
    testing::run(E2E, "conflict", |ns| async move {
        let _chart = Chart::install(&ns, &[])?;
        Chart::wait_ready(&ns).await?;
        shop(&ns, 2).await?;
        let api = testing::plugin_releases(&ns);
        // The older release owns the plugin whatever the names: the older one is named to
        // sort last, so "first by name" would pick the other.
        api.create(&PostParams::default(), &release("zeta", 600)?)
            .await?;
        // creationTimestamp has whole seconds: the second release must be a second younger.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        api.create(&PostParams::default(), &release("alpha", 600)?)
            .await?;
        eventually(
            "a Conflict condition on the newer release",
            WAIT,
            || async {
                let newer = api.get("alpha").await?.data["status"].clone();
                ensure!(
                    condition(&newer, "Conflict") == Some(("True", "PluginOwnedElsewhere")),
                    "{newer}"
                );
                let message = newer["conditions"].to_string();
                ensure!(
                    message.contains(&format!("{}/zeta", ns.name)),
                    "names the owner: {message}"
                );
                ensure!(newer["matched"] == 0, "manages no pod: {newer}");
                let older = api.get("zeta").await?.data["status"].clone();
                ensure!(
                    older["matched"] == 2 && condition(&older, "Conflict").is_none(),
                    "{older}"
                );
                Ok(())
            },
        )
        .await
    })
    .await;
}
