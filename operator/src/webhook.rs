//! The sidecar-injection webhook: `POST /mutate` over TLS, AdmissionReview in, JSON patch
//! out. What to inject is [`crate::inject`]'s decision; this file only speaks HTTP.
//!
//! Every replica serves it (the webhook Service publishes not-ready replicas too), since
//! injecting needs no leadership, only the settings and the CA.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio_stream::StreamExt;

use crate::inject::{InjectConfig, inject};
use crate::metrics::Metrics;
use crate::tls::{CertStore, incoming};

/// What the handler needs.
#[derive(Clone)]
pub struct Webhook {
    /// Injection settings.
    pub config: Arc<InjectConfig>,
    /// The served certificate; its CA goes into every sidecar.
    pub certs: Arc<CertStore>,
    /// Counts injections.
    pub metrics: Arc<Metrics>,
}

/// The admission response for one review.
pub fn review(webhook: &Webhook, review: AdmissionReview<Pod>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = &request.object else {
        return response.into_review();
    };
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
        .unwrap_or_default();
    let object = format!(
        "pod {}/{name}",
        request.namespace.as_deref().unwrap_or_default()
    );
    let Some(ca) = webhook.certs.material().map(|m| m.ca_cert.clone()) else {
        webhook.metrics.injected("error");
        return response
            .deny(format!(
                "hotload: cannot inject the sidecar into {object}: no CA loaded yet"
            ))
            .into_review();
    };
    let injected = match inject(pod, &webhook.config, &ca) {
        Ok(Some(injected)) => injected,
        Ok(None) => {
            webhook.metrics.injected("skipped");
            return response.into_review();
        }
        Err(why) => {
            webhook.metrics.injected("refused");
            return response
                .deny(format!(
                    "hotload: cannot inject the sidecar into {object}: {why}"
                ))
                .into_review();
        }
    };
    let patch = match (serde_json::to_value(pod), serde_json::to_value(&injected)) {
        (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
        (Err(e), _) | (_, Err(e)) => {
            webhook.metrics.injected("error");
            return response
                .deny(format!(
                    "hotload: cannot inject the sidecar into {object}: {e}"
                ))
                .into_review();
        }
    };
    match response.with_patch(patch) {
        Ok(response) => {
            tracing::info!(pod = %object, "injected the sidecar");
            webhook.metrics.injected("injected");
            response.into_review()
        }
        Err(e) => AdmissionResponse::invalid(format!("{object}: {e}")).into_review(),
    }
}

async fn mutate(
    State(webhook): State<Webhook>,
    Json(body): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review(&webhook, body))
}

/// Serves `/mutate` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, webhook: Webhook) -> anyhow::Result<()> {
    let config = webhook.certs.server_config(&[b"h2", b"http/1.1"]);
    let app = Router::new()
        .route("/mutate", post(mutate))
        .with_state(webhook);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut connections = std::pin::pin!(incoming(listener, config));
    while let Some(connection) = connections.next().await {
        let Ok(stream) = connection else { continue };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(error, "webhook connection ended");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webhook(with_ca: bool) -> Webhook {
        let certs = Arc::new(CertStore::default());
        if with_ca {
            let now = time::OffsetDateTime::now_utc();
            let names = crate::certs::service_names("hotload", "ops");
            let material = crate::certs::renew(
                None,
                &crate::certs::Renewal::Everything("test".into()),
                &names,
                now,
                std::time::Duration::from_secs(3600),
            )
            .unwrap()
            .unwrap();
            certs.set(material).unwrap();
        }
        Webhook {
            config: Arc::new(
                serde_json::from_value(json!({"image": "s:1", "operatorAddr": "https://o:8443"}))
                    .unwrap(),
            ),
            certs,
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn request(labels: serde_json::Value) -> AdmissionReview<Pod> {
        request_with(labels, json!({}))
    }

    fn request_with(
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> AdmissionReview<Pod> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "operation": "CREATE", "namespace": "shop",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": "web-", "labels": labels,
                                        "annotations": annotations},
                           "spec": {"containers": [{"name": "app", "image": "web:1"}]}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn an_opted_in_pod_gets_a_patch_that_adds_the_sidecar() {
        let out =
            serde_json::to_value(review(&webhook(true), request(json!({"app": "web"})))).unwrap();
        let response = &out["response"];
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        // kube-core writes the patch bytes as a JSON array, which the API server accepts.
        let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
        let patch: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let text = patch.to_string();
        assert!(
            text.contains("hotload-sidecar") && text.contains("/spec/initContainers"),
            "{text}"
        );
    }

    #[test]
    fn an_opted_out_pod_is_allowed_unchanged() {
        let out = serde_json::to_value(review(
            &webhook(true),
            request(json!({"hotload.dev/inject": "false"})),
        ))
        .unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn a_pod_asking_for_an_unknown_readiness_policy_is_refused_by_name_and_value() {
        let out = serde_json::to_value(review(
            &webhook(true),
            request_with(
                json!({"app": "web"}),
                json!({"hotload.dev/readiness": "sometimes"}),
            ),
        ))
        .unwrap();
        assert_eq!(out["response"]["allowed"], false);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "hotload: cannot inject the sidecar into pod shop/web-*: \
                 annotation hotload.dev/readiness is \"sometimes\""
            ),
            "{message}"
        );
    }

    #[test]
    fn without_a_ca_the_pod_is_refused_with_the_reason() {
        let out = serde_json::to_value(review(&webhook(false), request(json!({})))).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(
            out["response"]["status"]["message"],
            "hotload: cannot inject the sidecar into pod shop/web-*: no CA loaded yet"
        );
    }
}
