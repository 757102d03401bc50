//! The sidecar channel on the real cluster: a stream is accepted only with the pod's own
//! audience-bound projected token, and once accepted it carries the operator's assignments
//! out and the pod's acknowledgements in, which land in the release's status.
//!
//! The test itself speaks the sidecar side of the protocol (hotload-channel's generated
//! client), so it can present tokens a real sidecar never would; the sidecar's own use of
//! the channel is covered with the data plane's e2e tests.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use hotload_channel::proto::plugin_channel_client::PluginChannelClient;
use hotload_channel::proto::{
    PluginState, SidecarMessage, State, operator_message, sidecar_message,
};
use hotload_e2e::bench::sim::{attach, pod_token_for};
use hotload_e2e::chart::Chart;
use hotload_e2e::images::TESTSERVER_IMAGE;
use hotload_e2e::testing::{self, TestNamespace, eventually, http_get};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
const WAIT: Duration = Duration::from_secs(60);
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Two pods with a projected token for the channel's audience at /var/run/hotload/token.
async fn shop(ns: &TestNamespace) -> Result<Vec<(String, String)>> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {
                    "volumes": [{"name": "hotload-token", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": hotload_channel::TOKEN_AUDIENCE,
                                                 "expirationSeconds": 3600, "path": "token"}},
                    ]}}],
                    "containers": [{
                        "name": "app", "image": TESTSERVER_IMAGE, "args": ["testserver"],
                        "volumeMounts": [{"name": "hotload-token", "mountPath": "/var/run/hotload"}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await?;
    let pods: Api<Pod> = ns.api();
    eventually("two running pods", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=shop")).await?;
        let mut out = Vec::new();
        for pod in list.items {
            let ip = pod.status.and_then(|s| s.pod_ip).context("no IP yet")?;
            let token = http_get(&format!(
                "http://{ip}:8080/file?path=/var/run/hotload/token"
            ))
            .await?;
            out.push((pod.metadata.name.unwrap_or_default(), token));
        }
        ensure!(out.len() == 2, "{} pods", out.len());
        out.sort();
        Ok(out)
    })
    .await
}

/// A channel client to the chart-installed operator, as a sidecar would dial it (the leader
/// pod's address, the Service's name in the certificate).
async fn client(ns: &TestNamespace) -> Result<PluginChannelClient<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(Chart::ca_pem(ns).await?))
        .domain_name(format!("hotload.{}.svc", ns.name));
    let leader = Chart::leader_ip(ns).await?;
    let channel = eventually("the operator's channel to listen", WAIT, || async {
        Ok(Channel::from_shared(format!("https://{leader}:8443"))?
            .tls_config(tls.clone())?
            .connect()
            .await?)
    })
    .await?;
    Ok(PluginChannelClient::new(channel))
}

#[tokio::test]
async fn only_the_pods_own_token_opens_its_stream_and_acks_reach_status() {
    testing::run(E2E, "channel", |ns| async move {
        let _chart = Chart::install(&ns, &[])?;
        let pods = shop(&ns).await?;
        Chart::wait_ready(&ns).await?;
        let ((pod_a, token_a), (pod_b, _)) = (&pods[0], &pods[1]);
        let mut client = client(&ns).await?;

        match attach(&mut client, &ns.name, pod_a, None).await {
            Err(status) => ensure!(
                status.code() == tonic::Code::Unauthenticated,
                "no token: {status:?}"
            ),
            Ok(_) => bail!("a stream without a token was accepted"),
        }
        // Pod A's own token, bound to it, but for the API server's audience: what every pod
        // can get, and what must not open the channel.
        let pod: Pod = ns.api::<Pod>().get(pod_a).await?;
        let wrong_audience = pod_token_for(&ns.client, &pod, "https://kubernetes.default.svc")
            .await?;
        match attach(&mut client, &ns.name, pod_a, Some(&wrong_audience)).await {
            Err(status) => ensure!(
                status.code() == tonic::Code::Unauthenticated
                    && status.message().contains("audience"),
                "another audience: {status:?}"
            ),
            Ok(_) => bail!("a token for another audience was accepted"),
        }
        match attach(&mut client, &ns.name, pod_b, Some(token_a)).await {
            Err(status) => {
                ensure!(
                    status.code() == tonic::Code::PermissionDenied,
                    "other pod: {status:?}"
                );
                ensure!(
                    status.message().contains(pod_a) && status.message().contains(pod_b),
                    "{}",
                    status.message()
                );
            }
            Ok(_) => bail!("pod {pod_a}'s token was accepted for pod {pod_b}"),
        }
        let (tx, mut replies) = attach(&mut client, &ns.name, pod_a, Some(token_a)).await?;
        // No release selects the pod yet: its set is complete as it is (empty).
        let message = tokio::time::timeout(WAIT, replies.message())
            .await??
            .context("stream ended")?;
        ensure!(
            matches!(message.kind, Some(operator_message::Kind::Synced(_))),
            "expected Synced for a pod no release selects, got {message:?}"
        );

        let pull: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "pull", "annotations": {"hotload.dev/hosts": "127.0.0.1:9"}},
            "stringData": {"username": "robot", "password": "s3cret"},
        }))?;
        ns.api::<k8s_openapi::api::core::v1::Secret>().create(&PostParams::default(), &pull).await?;
        let releases = testing::plugin_releases(&ns);
        let release: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "hotload.dev/v1alpha1", "kind": "PluginRelease",
            "metadata": {"name": "greeter"},
            "spec": {
                "plugin": "greeter",
                "selector": {"matchLabels": {"app": "shop"}},
                "artifact": {"url": "https://127.0.0.1:9/greeter.wasm", "digest": DIGEST, "pullSecret": "pull"},
                "config": {"greeting": "hello"},
                "strategy": {"maxUnavailable": "100%"},
            },
        }))?;
        releases.create(&PostParams::default(), &release).await?;

        // The connected pod is assigned the revision; the other one is unreachable.
        let message = tokio::time::timeout(WAIT, replies.message())
            .await??
            .context("stream ended")?;
        let Some(operator_message::Kind::Assign(assign)) = message.kind else {
            bail!("expected Assign, got {message:?}");
        };
        ensure!(
            assign.plugin == "greeter" && assign.digest == DIGEST,
            "{assign:?}"
        );
        ensure!(
            assign.config_json == r#"{"greeting":"hello"}"#,
            "config: {}",
            assign.config_json
        );
        // The pod needs no RBAC: the operator reads the pull secret and sends its credentials.
        let credentials = assign.credentials.as_ref().context("no credentials in Assign")?;
        ensure!(credentials.username == "robot" && credentials.password == "s3cret", "credentials");
        let now_ms = i64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis(),
        )?;
        let loaded = SidecarMessage {
            kind: Some(sidecar_message::Kind::State(PluginState {
                plugin: "greeter".into(),
                assigned_revision: assign.revision.clone(),
                serving_revision: assign.revision.clone(),
                state: State::Loaded as i32,
                reason: String::new(),
                since_unix_ms: now_ms,
                workers: 1,
                workers_loaded: 1,
            })),
        };
        tx.send(loaded).await.context("sending the ack")?;
        let status = eventually("the ack in status", WAIT, || async {
            let status = releases.get("greeter").await?.data["status"].clone();
            ensure!(
                status["updated"] == 1 && status["unreachable"] == 1,
                "status: {status}"
            );
            Ok(status)
        })
        .await?;
        let acks = status["pods"].as_array().context("pods")?;
        let a = acks
            .iter()
            .find(|a| a["pod"] == pod_a.as_str())
            .context("pod A ack")?;
        ensure!(
            a["state"] == "Loaded" && a["revision"] == assign.revision.as_str(),
            "{a}"
        );
        let b = acks
            .iter()
            .find(|a| a["pod"] == pod_b.as_str())
            .context("pod B ack")?;
        ensure!(b["state"] == "Unreachable", "{b}");
        ensure!(
            status["progress"] == "1/2",
            "progress {}",
            status["progress"]
        );

        // Hanging up makes the pod unreachable again.
        drop((tx, replies));
        eventually("pod A unreachable once it hung up", WAIT, || async {
            let status = releases.get("greeter").await?.data["status"].clone();
            ensure!(status["unreachable"] == 2, "status: {status}");
            Ok(())
        })
        .await?;
        let metrics = http_get(&format!(
            "http://{}:9090/metrics",
            Chart::leader_ip(&ns).await?
        ))
        .await?;
        for line in [
            "hotload_channel_attaches_total{outcome=\"accepted\"} 1",
            "hotload_channel_attaches_total{outcome=\"refused\"} 3",
            "hotload_connected_sidecars 0",
        ] {
            ensure!(metrics.contains(line), "no `{line}` in metrics:\n{metrics}");
        }
        Ok(())
    })
    .await;
}
