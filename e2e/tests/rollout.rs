//! Rollouts end to end on the local cluster: the chart-installed operator running as a pod,
//! demo-app pods whose sidecar its webhook injected (the pod specs here name only the app),
//! plugin artifacts from a real HTTPS server, and real traffic. Each test runs in its own namespace and checks what a user would: the
//! release's status and events, `kubectl wait`, and what the pods answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hotload_e2e::artifacts::digest_of;
use hotload_e2e::chart::Chart;
use hotload_e2e::fleet::{Artifact, Demo, RELEASE, WAIT, all_loaded, watch_stream};
use hotload_e2e::testing::{self, condition, eventually};
use hotload_e2e::workload::{Traffic, tagger, tagger_failing_self_check};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams};
use serde_json::{Value, json};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// A cosign-compatible signing key: ECDSA P-256 with SHA-256, signatures in ASN.1 DER,
/// base64-encoded the way `cosign sign-blob` writes them.
struct CosignKey {
    pair: ring::signature::EcdsaKeyPair,
    public_pem: String,
}

impl CosignKey {
    fn generate() -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
        Ok(Self {
            pair,
            public_pem: key.public_key_pem(),
        })
    }

    fn sign(&self, bytes: &[u8]) -> Result<String> {
        use base64::Engine as _;
        let signature = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), bytes)
            .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(signature.as_ref()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_reaches_every_pod_without_a_failed_request_and_a_revert_comes_from_cache() {
    testing::run(E2E, "rollout", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);

        let generation = demo
            .apply(&v1, json!({"strategy": {"maxUnavailable": "100%"}}))
            .await?;
        let status = demo.wait_ready(generation).await?;
        let first = status["targetRevision"].clone();
        ensure!(all_loaded(&status, &first, 5), "v1 everywhere: {status:#}");
        demo.all_serve(5, "v01").await?;

        // v2 two pods at a time while requests and a long-lived stream keep flowing.
        let ips: Vec<String> = demo
            .ready_pods(5)
            .await?
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let traffic = Traffic::start(ips.clone());
        let stop_stream = Arc::new(AtomicBool::new(false));
        let stream = watch_stream(ips[0].clone(), stop_stream.clone());
        // Traffic before and after the change, long enough on a busy machine (each request
        // opens a new connection) that the count below means something.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let generation = demo
            .apply(&v2, json!({"strategy": {"maxUnavailable": 2}}))
            .await?;
        let status = demo.wait_ready(generation).await?;
        let second = status["targetRevision"].clone();
        ensure!(second != first, "a new revision: {status:#}");
        ensure!(all_loaded(&status, &second, 5), "v2 everywhere: {status:#}");
        ensure!(
            status["updated"] == 5 && status["matched"] == 5,
            "{status:#}"
        );
        ensure!(status["stableRevision"] == second, "{status:#}");
        ensure!(status["phase"] == "Completed", "{status:#}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let report = traffic.finish().await?;
        stop_stream.store(true, Ordering::Relaxed);
        let seen = stream.await??;
        eprintln!(
            "traffic: {} ok, tags {:?}; stream saw {seen:?}",
            report.ok, report.tags
        );
        ensure!(
            report.failed.is_empty(),
            "failed requests: {:?}",
            report.failed
        );
        ensure!(
            report.ok > 50,
            "too little traffic to mean anything: {}",
            report.ok
        );
        ensure!(
            report.tags == BTreeSet::from(["v01".to_string(), "v02".to_string()]),
            "{report:?}"
        );
        ensure!(
            seen == ["v01", "v02"],
            "the stream stayed open across the swap: {seen:?}"
        );
        demo.all_serve(5, "v02").await?;
        let reasons: Vec<String> = demo.events().await?.into_iter().map(|(r, _)| r).collect();
        for reason in ["RolloutStarted", "RolloutCompleted"] {
            ensure!(
                reasons.iter().any(|r| r == reason),
                "{reason} in {reasons:?}"
            );
        }

        // GitOps revert: the spec goes back to v1, which every sidecar still has on disk.
        let downloads = demo.artifacts.hits(&v1.file);
        let generation = demo
            .apply(&v1, json!({"strategy": {"maxUnavailable": 2}}))
            .await?;
        let status = demo.wait_ready(generation).await?;
        ensure!(status["targetRevision"] == first, "{status:#}");
        ensure!(all_loaded(&status, &first, 5), "{status:#}");
        demo.all_serve(5, "v01").await?;
        ensure!(
            demo.artifacts.hits(&v1.file) == downloads,
            "the revert downloaded v1 again ({} → {})",
            downloads,
            demo.artifacts.hits(&v1.file)
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_loads_roll_back_to_the_stable_revision_and_name_the_pod_and_cause() {
    testing::run(E2E, "rollback", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let broken = demo.publish("tagger-broken.wasm", &tagger_failing_self_check()?);

        // A first release that fails has nothing to roll back to: every pod it touched is
        // told to unload, and the release says so.
        let all_at_once = json!({"strategy": {"maxUnavailable": "100%"}});
        let generation = demo.apply(&broken, all_at_once).await?;
        let status = demo
            .wait_status("a rollback to no plugin", generation, |s| {
                s["phase"] == "RolledBack" && all_loaded(s, &json!(""), 5)
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("self-check") && message.contains("rolling back to no plugin"),
            "{message}"
        );

        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let strategy = json!({"strategy": {"maxUnavailable": 1}});
        let generation = demo.apply(&v1, strategy.clone()).await?;
        let stable = demo.wait_ready(generation).await?["targetRevision"].clone();

        // Each broken artifact fails on the first pod it reaches; the release rolls that pod
        // back, the other four never see it, and all five keep serving v1.
        let mut wrong_digest = demo.publish("tagger-v2.wasm", &tagger(2)?);
        wrong_digest.digest = digest_of(b"something else");
        let unreachable = Artifact {
            file: "nowhere.wasm".into(),
            url: format!("https://{}:1/nowhere.wasm", hotload_e2e::netplan::HOST_IP),
            digest: digest_of(b"nowhere"),
            signature_key: None,
        };
        // A release that requires a cosign signature never loads an unsigned artifact.
        let key = CosignKey::generate()?;
        let mut unsigned = demo.publish("tagger-v2-unsigned.wasm", &tagger(2)?);
        unsigned.signature_key = Some(key.public_pem.clone());
        for (artifact, cause) in [
            (&broken, "self-check"),
            (&wrong_digest, "digest mismatch"),
            (&unreachable, "cannot connect"),
            (&unsigned, "unsigned: no signature at"),
        ] {
            let generation = demo.apply(artifact, strategy.clone()).await?;
            let status = demo
                .wait_status(&format!("a rollback after {cause}"), generation, |s| {
                    s["phase"] == "RolledBack" && all_loaded(s, &stable, 5)
                })
                .await?;
            let message = status["message"].as_str().unwrap_or_default();
            ensure!(
                message.contains(cause) && message.contains("pod demo-"),
                "the message names the pod and the cause ({cause}): {message}"
            );
            ensure!(
                message.contains("1 of 5 pods failed"),
                "one pod at a time: the first failure stops the rollout ({cause}): {message}"
            );
            ensure!(
                condition(&status, "Degraded") == Some(("True", "RolledBack")),
                "{status:#}"
            );
            let (health, why) = demo.argo_health().await?;
            ensure!(
                health == "Degraded" && why.contains(cause),
                "Argo CD health after {cause}: {health} {why}"
            );
            ensure!(
                condition(&status, "Ready").is_some_and(|(s, _)| s == "False"),
                "{status:#}"
            );
            ensure!(status["stableRevision"] == stable, "{status:#}");
            demo.all_serve(5, "v01").await?;
            let events = demo.events().await?;
            ensure!(
                events.iter().any(|(r, m)| r == "RolledBack"
                    && m.contains(cause)
                    && m.contains("pod demo-")),
                "a RolledBack event names the pod and the cause: {events:?}"
            );
        }

        // With the Pause policy a failure stops the rollout where it is: the failed pod keeps
        // serving v1 and nothing else moves. After the fix (the artifact is uploaded), a retry
        // assigns the failed pod again and the rollout completes.
        let later = Artifact {
            file: "tagger-v2-late.wasm".into(),
            url: demo.artifacts.url("tagger-v2-late.wasm"),
            digest: digest_of(&tagger(2)?),
            signature_key: None,
        };
        let pause =
            json!({"strategy": {"maxUnavailable": 1}, "failurePolicy": {"action": "Pause"}});
        let generation = demo.apply(&later, pause).await?;
        let status = demo
            .wait_status("a pause after a 404", generation, |s| {
                s["phase"] == "Degraded" && s["failed"] == 1
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("not found (HTTP 404)") && message.ends_with("paused"),
            "{message}"
        );
        ensure!(
            condition(&status, "Degraded") == Some(("True", "RolloutFailed")),
            "{status:#}"
        );
        demo.all_serve(5, "v01").await?;
        let view = demo.cli("status", &[])?;
        ensure!(
            view.contains("Phase:     Degraded") && view.contains("Failure:   pod demo-"),
            "kubectl hotload status names the failed pod:\n{view}"
        );
        demo.publish(&later.file, &tagger(2)?);
        demo.cli("retry", &[])?;
        let generation = demo.status().await?["observedGeneration"]
            .as_i64()
            .unwrap_or(0);
        let status = demo
            .wait_status("the retried version to roll out", generation, |s| {
                s["phase"] == "Completed" && s["stableRevision"] != stable
            })
            .await?;
        ensure!(
            condition(&status, "Ready").is_some_and(|(s, _)| s == "True"),
            "{status:#}"
        );
        demo.all_serve(5, "v02").await?;

        // Signed with the release's key (`cosign sign-blob` output next to the artifact): loads.
        let v1 = tagger(1)?;
        let mut signed = demo.publish("tagger-v1-signed.wasm", &v1);
        demo.publish("tagger-v1-signed.wasm.sig", key.sign(&v1)?.as_bytes());
        signed.signature_key = Some(key.public_pem.clone());
        let generation = demo.apply(&signed, strategy.clone()).await?;
        let status = demo.wait_ready(generation).await?;
        ensure!(status["phase"] == "Completed", "{status:#}");
        demo.all_serve(5, "v01").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_holds_at_its_step_until_resumed() {
    testing::run(E2E, "canary", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let generation = demo.apply(&v1, json!({})).await?;
        demo.wait_ready(generation).await?;

        let canary = |paused: bool| {
            json!({"paused": paused, "strategy": {"maxUnavailable": "100%",
                   "steps": [{"percent": 20, "pause": {}}]}})
        };
        let generation = demo.apply(&v2, canary(false)).await?;
        let status = demo
            .wait_status("the canary step to hold", generation, |s| {
                s["phase"] == "Paused" && s["updated"] == 1
            })
            .await?;
        ensure!(
            condition(&status, "Ready").is_some_and(|(s, _)| s == "False"),
            "{status:#}"
        );
        let (health, _) = demo.argo_health().await?;
        ensure!(
            health == "Suspended",
            "Argo CD health of a held canary: {health}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tags = demo.tags(5).await?;
        let on_v2 = tags.iter().filter(|(_, t)| t == "v02").count();
        ensure!(on_v2 == 1, "20% of 5 pods is one canary: {tags:?}");
        ensure!(demo.status().await?["updated"] == 1, "still holding");

        let view = demo.cli("status", &[])?;
        ensure!(
            view.contains("Phase:     Paused") && view.contains("1/1 pods  (step 1 of 1)"),
            "kubectl hotload status shows the held step:\n{view}"
        );
        // Resume from the CLI; `status --watch` follows the rest of the rollout and exits 0.
        demo.cli("resume", &[])?;
        demo.wait_status("the resume to be seen", generation, |s| {
            s["phase"] != "Paused"
        })
        .await?;
        let watched = demo.cli("status", &["--watch", "--timeout=120"])?;
        ensure!(watched.contains("Phase:     Completed"), "{watched}");
        let status = demo.wait_ready(generation).await?;
        let (health, _) = demo.argo_health().await?;
        ensure!(
            health == "Healthy",
            "Argo CD health once complete: {health}"
        );
        ensure!(
            status["updated"] == 5 && status["phase"] == "Completed",
            "{status:#}"
        );
        demo.all_serve(5, "v02").await?;
        let reasons: Vec<String> = demo.events().await?.into_iter().map(|(r, _)| r).collect();
        ensure!(reasons.iter().any(|r| r == "RolloutPaused"), "{reasons:?}");

        // Abort a slow rollout from the CLI: the pods it reached go back to v2.
        let v1_again = json!({"strategy": {"maxUnavailable": 1, "minReadySeconds": 30}});
        let generation = demo.apply(&v1, v1_again).await?;
        demo.wait_status("v1 on a first pod", generation, |s| {
            s["phase"] == "Progressing"
                && s["pods"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["state"] == "Loaded" && p["revision"] == s["targetRevision"])
                })
        })
        .await?;
        demo.cli("abort", &[])?;
        let status = demo
            .wait_status("the abort to roll back", generation, |s| {
                s["phase"] == "RolledBack"
            })
            .await?;
        let message = status["message"].as_str().unwrap_or_default();
        ensure!(message.contains("aborted by the user"), "{message}");
        demo.all_serve(5, "v02").await?;
        let out = demo
            .ns
            .kubectl_hotload(E2E, &["status", RELEASE, "--watch", "--timeout=30"])?;
        ensure!(
            out.status.code() == Some(1),
            "status --watch exits 1 after a rollback: {out:?}"
        );
        let history = demo.cli("history", &[])?;
        ensure!(
            history.contains("RolledBack") && history.contains("Stable"),
            "kubectl hotload history:\n{history}"
        );
        let pods = demo.cli("pods", &[])?;
        ensure!(
            pods.lines().filter(|l| l.contains(" Loaded ")).count() == 5,
            "{pods}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_pod_churn_a_killed_sidecar_and_a_killed_operator() {
    testing::run(E2E, "chaos", |ns| async move {
        let demo = Demo::start(E2E, &ns, 5).await?;
        let v1 = demo.publish("tagger-v1.wasm", &tagger(1)?);
        let v2 = demo.publish("tagger-v2.wasm", &tagger(2)?);
        let slow = json!({"strategy": {"maxUnavailable": 1, "minReadySeconds": 3}});
        let generation = demo.apply(&v1, slow.clone()).await?;
        demo.wait_ready(generation).await?;

        let generation = demo.apply(&v2, slow.clone()).await?;
        let status = demo
            .wait_status("the rollout to be under way", generation, |s| {
                s["phase"] == "Progressing"
                    && s["pods"].as_array().is_some_and(|p| {
                        p.iter()
                            .any(|p| p["state"] == "Loaded" && p["revision"] != s["stableRevision"])
                    })
            })
            .await?;
        let target = status["targetRevision"].clone();
        let (health, _) = demo.argo_health().await?;
        ensure!(
            health == "Progressing",
            "Argo CD health mid-rollout: {health}"
        );
        let pods: Api<Pod> = ns.api();
        let list = pods.list(&ListParams::default().labels("app=demo")).await?;
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();

        // kill -9 one pod's sidecar process: the kubelet restarts it, it comes back from its
        // volume and reconnects.
        let victim = list.items.last().context("pods")?;
        let sidecar_id = victim
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "hotload-sidecar"))
            .and_then(|c| c.container_id.clone())
            .context("sidecar container id")?;
        let pid = testing::container_pid(&sidecar_id).context("sidecar pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // Delete one pod (the first on the target) and add one.
        pods.delete(&names[0], &DeleteParams::default()).await?;
        ns.kubectl(&["scale", "deployment/demo", "--replicas=6"])?;
        // The next pod takes the deleted one's place in the rollout.
        let first = names[0].clone();
        let second_on_target = |s: &Value| {
            s["pods"].as_array().and_then(|p| {
                p.iter()
                    .find(|p| p["pod"] != first.as_str() && p["revision"] == target)
                    .and_then(|p| p["pod"].as_str().map(String::from))
            })
        };
        let status = demo
            .wait_status("a second pod on the target", generation, |s| {
                second_on_target(s).is_some()
            })
            .await?;
        let second = second_on_target(&status).context("second pod")?;
        let stable = status["stableRevision"]
            .as_str()
            .context("stable")?
            .to_string();
        // kill -9 the operator's process while that pod is in flight; the kubelet starts it
        // again, and the new process must carry on from what the sidecars say they run.
        let restarts = Chart::restarts(&ns).await?;
        Chart::kill_operator(&ns).await?;
        eventually(
            "the kubelet to restart the killed operator",
            WAIT,
            || async {
                let now = Chart::restarts(&ns).await?;
                ensure!(now > restarts, "restarts: {now}");
                Ok(())
            },
        )
        .await?;
        Chart::wait_ready(&ns).await?;

        let status = demo
            .wait_status("the rollout to converge on 6 pods", generation, |s| {
                s["phase"] == "Completed" && s["matched"] == 6 && all_loaded(s, &target, 6)
            })
            .await?;
        ensure!(
            status["updated"] == 6 && status["failed"] == 0 && status["unreachable"] == 0,
            "{status:#}"
        );
        let listed: BTreeSet<String> = status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["pod"].as_str().map(String::from))
            .collect();
        ensure!(
            !listed.contains(&names[0]),
            "the deleted pod is gone from status: {listed:?}"
        );
        demo.all_serve(6, "v02").await?;
        // The restarted operator carried on from what the sidecars said they run: the pod
        // that was on its way to the target was not sent back to the stable revision.
        let log = pods
            .logs(
                &second,
                &LogParams {
                    container: Some("app".into()),
                    ..Default::default()
                },
            )
            .await?;
        let loads: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("plugin loaded"))
            .collect();
        let revision = |r: &str| format!("revision=\"{r}\"");
        let on_target = target.as_str().map(revision).context("target")?;
        let went_back = loads
            .iter()
            .skip_while(|l| !l.contains(&on_target))
            .any(|l| l.contains(&revision(&stable)));
        ensure!(
            !went_back,
            "pod {second} went back to the stable revision {stable} after loading the target:\n{log}"
        );
        let restarted = pods
            .get(victim.metadata.name.as_deref().unwrap_or_default())
            .await?;
        let restarts = restarted
            .status
            .and_then(|s| s.init_container_statuses)
            .and_then(|c| c.into_iter().find(|c| c.name == "hotload-sidecar"))
            .map_or(0, |c| c.restart_count);
        ensure!(restarts >= 1, "the killed sidecar was restarted");
        Ok(())
    })
    .await;
}
