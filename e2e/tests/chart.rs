//! The Helm chart on the local cluster: `helm install`, `upgrade` and `uninstall` with the
//! operator running in-cluster as a pod, sidecar injection by its webhook (opt-in, opt-out,
//! failure policy), and the serving certificate's rotation.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hotload_e2e::chart::{self, Chart, is_ready};
use hotload_e2e::testing::{self, TestNamespace, eventually};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
const WAIT: Duration = Duration::from_secs(90);

fn pod(name: &str, labels: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "hotload/demo-app:dev",
                            "args": ["--listen=0.0.0.0:8080"],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                               "periodSeconds": 1}}],
        },
    }))?)
}

fn sidecar(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == "hotload-sidecar")
}

fn label_namespace(ns: &TestNamespace, value: &str) -> Result<()> {
    ns.kubectl(&[
        "label",
        "namespace",
        &ns.name,
        &format!("hotload.dev/inject={value}"),
        "--overwrite",
    ])?;
    Ok(())
}

async fn tls_secret(ns: &TestNamespace) -> Result<Secret> {
    Ok(ns.api::<Secret>().get("hotload-tls").await?)
}

fn secret_text(secret: &Secret, key: &str) -> Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("Secret hotload-tls has no {key}"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_injects_upgrades_and_uninstalls() {
    testing::run(E2E, "chart", |ns| async move {
        let chart = Chart::install(&ns, &[])?;
        Chart::wait_ready(&ns).await?;
        let operator = Chart::operator_pods(&ns).await?;
        ensure!(operator.len() == 1, "one operator pod: {}", operator.len());
        let op = &operator[0];
        ensure!(
            op.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("hotload.dev/leader"))
                .map(String::as_str)
                == Some("true"),
            "the sole replica labels itself leader: {:?}",
            op.metadata.labels
        );
        ensure!(
            sidecar(op).is_none(),
            "the operator's own pod is not injected"
        );

        // Opt in by namespace label; a pod can still opt out.
        label_namespace(&ns, "enabled")?;
        let pods: Api<Pod> = ns.api();
        let injected = pods
            .create(&PostParams::default(), &pod("in", json!({"app": "in"}))?)
            .await?;
        let out = pods
            .create(
                &PostParams::default(),
                &pod("out", json!({"hotload.dev/inject": "false"}))?,
            )
            .await?;
        ensure!(
            sidecar(&out).is_none(),
            "an opted-out pod is untouched: {:?}",
            out.spec
        );
        let container = sidecar(&injected).context("the opted-in pod has no sidecar")?;
        ensure!(
            container.restart_policy.as_deref() == Some("Always"),
            "native sidecar"
        );
        let ca = secret_text(&tls_secret(&ns).await?, "ca.crt")?;
        let env = container.env.as_deref().unwrap_or_default();
        ensure!(
            env.iter()
                .any(|e| e.name == "HOTLOAD_OPERATOR_CA_PEM"
                    && e.value.as_deref() == Some(ca.as_str())),
            "the sidecar trusts the operator's CA from hotload-tls"
        );
        let args = container.args.clone().unwrap_or_default();
        ensure!(
            args.contains(&format!("--operator-addr={}", chart.channel_url())),
            "operator address: {args:?}"
        );
        let volumes = injected
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let token = volumes
            .iter()
            .find(|v| v.name == "hotload-token")
            .and_then(|v| v.projected.as_ref())
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s.iter().find_map(|s| s.service_account_token.as_ref()))
            .context("no projected token volume")?;
        ensure!(
            token.audience.as_deref() == Some("hotload.dev/channel"),
            "token audience"
        );
        // The injected pod turns Ready: its sidecar reached the operator through the Service.
        eventually("the injected pod to be Ready", WAIT, || async {
            ensure!(is_ready(&pods.get("in").await?), "pod in is not Ready");
            Ok(())
        })
        .await?;
        let log = ns.kubectl(&["logs", "in", "-c", "hotload-sidecar"])?;
        ensure!(log.contains("operator channel open"), "sidecar log:\n{log}");

        // Upgrade to two replicas: one leads and takes the sidecars, both serve the webhook.
        chart.upgrade(&["replicaCount=2"])?;
        eventually(
            "two Ready operator replicas, one labelled leader",
            WAIT,
            || async {
                let pods = Chart::operator_pods(&ns).await?;
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                let leaders = pods
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("hotload.dev/leader"))
                            .is_some()
                    })
                    .count();
                ensure!(
                    ready == 2 && leaders == 1,
                    "{ready} ready, {leaders} leaders"
                );
                Ok(())
            },
        )
        .await?;
        let endpoints = ns.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hotload",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ])?;
        ensure!(
            endpoints.split_whitespace().count() == 1,
            "the channel Service has only the leader: {endpoints}"
        );

        // No operator answering: failurePolicy Fail refuses opted-in pods, Ignore lets them
        // start without a sidecar.
        chart.upgrade(&["replicaCount=0", "webhook.failurePolicy=Fail"])?;
        eventually("the operator pods to be gone", WAIT, || async {
            ensure!(
                Chart::operator_pods(&ns).await?.is_empty(),
                "operator pods remain"
            );
            Ok(())
        })
        .await?;
        let refused = pods
            .create(&PostParams::default(), &pod("refused", json!({}))?)
            .await;
        let message = match refused {
            Ok(_) => anyhow::bail!("a pod was admitted with no webhook answering under Fail"),
            Err(e) => e.to_string(),
        };
        ensure!(
            message.contains("inject.hotload.dev"),
            "the refusal names the webhook: {message}"
        );
        chart.upgrade(&["replicaCount=0", "webhook.failurePolicy=Ignore"])?;
        let bare = pods
            .create(&PostParams::default(), &pod("bare", json!({}))?)
            .await?;
        ensure!(
            sidecar(&bare).is_none(),
            "under Ignore the pod starts without a sidecar"
        );

        // Uninstall removes every cluster-scoped object and keeps the CRD (and releases).
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
        let hook_name = format!("hotload-{}", ns.name);
        ensure!(
            hooks.get_opt(&hook_name).await?.is_some(),
            "webhook configuration installed"
        );
        chart.uninstall()?;
        ensure!(
            hooks.get_opt(&hook_name).await?.is_none(),
            "webhook configuration left behind"
        );
        let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(ns.client.clone());
        ensure!(
            roles
                .get_opt(&format!("hotload-{}-cluster", ns.name))
                .await?
                .is_none(),
            "ClusterRole left behind"
        );
        let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
        ensure!(
            crds.get_opt("pluginreleases.hotload.dev").await?.is_some(),
            "the CRD stays"
        );
        let after = pods
            .create(&PostParams::default(), &pod("after", json!({}))?)
            .await?;
        ensure!(sidecar(&after).is_none(), "nothing injects after uninstall");
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_rotates_without_a_restart() {
    testing::run(E2E, "certs", |ns| async move {
        // A 60 s certificate is renewed after 40 s.
        let _chart = Chart::install(&ns, &["tls.validitySeconds=60"])?;
        Chart::wait_ready(&ns).await?;
        let first = tls_secret(&ns).await?;
        let (ca, cert) = (
            secret_text(&first, "ca.crt")?,
            secret_text(&first, "tls.crt")?,
        );
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
        let config = hooks.get(&format!("hotload-{}", ns.name)).await?;
        for hook in config.webhooks.iter().flatten() {
            ensure!(
                hook.client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| b.0.as_slice())
                    == Some(ca.as_bytes()),
                "webhook {} carries the CA",
                hook.name
            );
        }
        let renewed = eventually("the serving certificate to be renewed", WAIT, || async {
            let now = tls_secret(&ns).await?;
            let text = secret_text(&now, "tls.crt")?;
            ensure!(text != cert, "tls.crt unchanged");
            Ok(now)
        })
        .await?;
        ensure!(
            secret_text(&renewed, "ca.crt")? == ca,
            "the CA stays: injected pods keep trusting it"
        );
        let restarts = Chart::restarts(&ns).await?;
        ensure!(restarts == 0, "the operator restarted {restarts} times");
        // The API server still trusts the webhook after the swap, and the new pod's sidecar
        // still trusts the channel.
        label_namespace(&ns, "enabled")?;
        let pods: Api<Pod> = ns.api();
        let created = pods
            .create(&PostParams::default(), &pod("late", json!({}))?)
            .await?;
        ensure!(sidecar(&created).is_some(), "injected after rotation");
        eventually(
            "the late pod's sidecar to open the channel",
            WAIT,
            || async {
                let log = ns.kubectl(&["logs", "late", "-c", "hotload-sidecar"])?;
                ensure!(log.contains("operator channel open"), "sidecar log:\n{log}");
                Ok(())
            },
        )
        .await?;
        let log = Chart::log(&ns, 200);
        ensure!(
            log.contains("wrote the serving certificate") && log.contains("expires in"),
            "the operator says it renewed the certificate; operator log:\n{log}"
        );
        Ok(())
    })
    .await;
}

/// The kinds a rendered chart holds, in order.
fn kinds(rendered: &str) -> Vec<&str> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

#[test]
fn chart_renders_each_mode_and_refuses_bad_values() -> Result<()> {
    let default = chart::template("hotload-system", &[])?;
    let kinds_default = kinds(&default);
    for kind in [
        "ClusterRole",
        "Deployment",
        "MutatingWebhookConfiguration",
        "ConfigMap",
    ] {
        ensure!(
            kinds_default.contains(&kind),
            "default lacks {kind}: {kinds_default:?}"
        );
    }
    ensure!(!kinds_default.contains(&"ServiceMonitor") && !kinds_default.contains(&"Certificate"));
    ensure!(
        default.contains("--webhook-config=hotload-hotload-system"),
        "the operator keeps the caBundle"
    );
    ensure!(
        default.contains("readOnlyRootFilesystem: true") && default.contains("runAsNonRoot: true")
    );

    let extras = chart::template(
        "ops",
        &[
            "tls.certManager.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "watchNamespace=shop",
        ],
    )?;
    let kinds_extras = kinds(&extras);
    for kind in ["Certificate", "Issuer", "ServiceMonitor", "Role"] {
        ensure!(
            kinds_extras.contains(&kind),
            "extras lack {kind}: {kinds_extras:?}"
        );
    }
    ensure!(
        extras.contains("--tls-secret-external") && !extras.contains("--webhook-config="),
        "with cert-manager the operator only reads the Secret"
    );
    ensure!(
        extras.contains("cert-manager.io/inject-ca-from: ops/hotload"),
        "cainjector annotation"
    );
    ensure!(
        extras.contains("--namespace=shop"),
        "watchNamespace reaches the operator"
    );
    ensure!(
        default.contains("--channel-max-per-peer=256")
            && default.contains("--channel-max-connections=20000"),
        "the channel's connection bounds reach the operator"
    );
    let per_peer = chart::template("ops", &["channel.maxPerPeer=5000"])?;
    ensure!(
        per_peer.contains("--channel-max-per-peer=5000"),
        "channel.maxPerPeer reaches the operator"
    );
    ensure!(
        !extras.contains("mutatingwebhookconfigurations"),
        "no webhook-patching permission when cert-manager injects the CA"
    );

    let digest = format!("sha256:{}", "a".repeat(64));
    let ha = chart::template(
        "ops",
        &[
            "replicaCount=2",
            &format!("image.digest={digest}"),
            &format!("sidecar.image.digest={digest}"),
        ],
    )?;
    ensure!(
        kinds(&ha).contains(&"PodDisruptionBudget"),
        "two replicas get a budget"
    );
    ensure!(
        !kinds(&default).contains(&"PodDisruptionBudget"),
        "one replica gets none: it would block every drain"
    );
    ensure!(
        ha.contains(&format!("ghcr.io/hotload-dev/operator@{digest}"))
            && ha.contains(&format!("ghcr.io/hotload-dev/sidecar@{digest}")),
        "images pinned by digest"
    );

    for (values, says) in [
        (vec!["webhook.failurePolicy=Sometimes"], "failurePolicy"),
        (vec!["serviceAccount.create=false"], "serviceAccount.name"),
        (vec!["image.digest=sha256:abc"], "/image/digest"),
        (vec!["channel.maxPerPeer=0"], "maxPerPeer"),
    ] {
        let bad = chart::template("ops", &values);
        let message = format!(
            "{:#}",
            bad.err().with_context(|| format!("{values:?} renders"))?
        );
        ensure!(message.contains(says), "{values:?}: {message}");
    }
    Ok(())
}
