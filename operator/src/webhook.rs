//! The sidecar-injection webhook: `POST /mutate` over TLS, AdmissionReview in, JSON patch
//! out. What to inject is [`crate::inject`]'s decision; this file only speaks HTTP.
//!
//! Every replica serves it (the webhook Service publishes not-ready replicas too), since
//! injecting needs no leadership, only the settings and the CA.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::inject::{InjectConfig, inject};
use crate::listener::{ConnectionInfo, ConnectionLimits, incoming};
use crate::metrics::Metrics;
use crate::tls::CertStore;

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
    // The trust bundle: during a CA rotation it holds the previous CA too.
    let Some(ca) = webhook.certs.material().map(|m| m.trust_bundle()) else {
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

/// Bounds on the webhook server. Its clients are API servers, whose own limits these
/// follow; anything else that connects gets no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Connections, handshakes and idleness (no request in flight).
    pub connections: ConnectionLimits,
    /// The largest AdmissionReview: the API server takes requests up to 3 MiB, and a
    /// review carries the pod plus some envelope.
    pub max_body_bytes: usize,
    /// How long the request headers may take (HTTP/1.1).
    pub header_timeout: Duration,
    /// How long a whole request may take, body included (the API server gives up on a
    /// webhook after at most 30 s).
    pub request_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub streams_per_connection: u32,
    /// HTTP/2 ping interval and how long a ping may go unanswered.
    pub keepalive: (Duration, Duration),
    /// The largest header block.
    pub max_header_bytes: usize,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections: 256,
                max_per_peer: 64,
                handshake_timeout: Duration::from_secs(10),
                // Longer than the API server's own idle timeout (90 s), so it is the one
                // that closes an idle connection, never racing a request on it.
                idle_timeout: Duration::from_secs(300),
            },
            max_body_bytes: 4 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            streams_per_connection: 64,
            keepalive: (Duration::from_secs(20), Duration::from_secs(10)),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The connection's [`ConnectionInfo`] is put in each request; this holds it in use while
/// the request runs (so an idle connection is one with none in flight), and bounds the
/// request's time, body read included.
async fn bounded(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    let _in_use = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|c| c.usage.hold());
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "hotload: the request took longer than {}s\n",
                timeout.as_secs()
            ),
        )
            .into_response(),
    }
}

/// The `/mutate` router with its body limit and request bound.
fn router(webhook: Webhook, limits: &WebhookLimits) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(webhook)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            bounded,
        ))
}

/// HTTP/1.1 and HTTP/2 with `limits`' header, stream and keepalive bounds.
fn http(limits: &WebhookLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams_per_connection)
        .keep_alive_interval(limits.keepalive.0)
        .keep_alive_timeout(limits.keepalive.1)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(16);
    builder
}

/// Serves `/mutate` on `listener` with `limits` until the process ends.
pub async fn serve(
    listener: TcpListener,
    webhook: Webhook,
    limits: WebhookLimits,
) -> anyhow::Result<()> {
    let config = webhook.certs.server_config(&[b"h2", b"http/1.1"]);
    let app = router(webhook, &limits);
    let http = Arc::new(http(&limits));
    let mut connections = std::pin::pin!(incoming(listener, config, limits.connections));
    while let Some(connection) = connections.next().await {
        let Ok(stream) = connection else { continue };
        let app = app.clone().layer(Extension(stream.info()));
        let service = TowerToHyperService::new(app);
        let http = http.clone();
        tokio::spawn(async move {
            let served = http.serve_connection(TokioIo::new(stream), service).await;
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

    fn small_limits() -> WebhookLimits {
        WebhookLimits {
            connections: ConnectionLimits {
                max_connections: 4,
                max_per_peer: 4,
                handshake_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_millis(400),
            },
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            ..WebhookLimits::default()
        }
    }

    /// A webhook server on loopback with `limits`: its address and the CA to trust.
    async fn webhook_server(limits: WebhookLimits) -> (std::net::SocketAddr, String) {
        let (certs, ca) = crate::listener::testing::served();
        let hook = Webhook {
            certs,
            ..webhook(false)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, hook, limits));
        (addr, ca)
    }

    /// Sends `head` and `body` over one HTTP/1.1 connection; returns what came back until
    /// the server closed it or went quiet for 2 s.
    async fn exchange(addr: std::net::SocketAddr, ca: &str, head: &str, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = crate::listener::testing::connect(addr, ca, &[b"http/1.1"])
            .await
            .unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        let _ = tls.write_all(body).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn post(length: usize) -> String {
        format!(
            "POST /mutate HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn a_review_under_the_limit_is_answered_and_a_larger_body_is_refused() {
        let (addr, ca) = webhook_server(small_limits()).await;
        let body = serde_json::to_vec(&request(json!({"app": "web"}))).unwrap();
        let answered = exchange(addr, &ca, &post(body.len()), &body).await;
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        assert!(
            answered.contains(r#""uid":"u-1""#),
            "the handler ran: {answered}"
        );

        let mut large = body.clone();
        large.truncate(body.len() - 1);
        large.extend(std::iter::repeat_n(b' ', 64 * 1024));
        large.push(b'}');
        let refused = exchange(addr, &ca, &post(large.len()), &large).await;
        assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    }

    #[test]
    fn the_default_body_limit_takes_what_the_api_server_sends() {
        assert!(WebhookLimits::default().max_body_bytes >= 3 * 1024 * 1024);
    }

    #[tokio::test]
    async fn headers_that_never_finish_are_cut_off() {
        let mut limits = small_limits();
        limits.connections.idle_timeout = Duration::from_secs(60);
        let (addr, ca) = webhook_server(limits).await;
        let started = std::time::Instant::now();
        let answer = exchange(addr, &ca, "POST /mutate HTTP/1.1\r\nHost: w\r\n", b"").await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "closed at the header timeout, not when the client gave up: {answer:?}"
        );
    }

    #[tokio::test]
    async fn a_body_that_trickles_in_is_given_up_at_the_request_timeout() {
        let (addr, ca) = webhook_server(small_limits()).await;
        let answer = exchange(addr, &ca, &post(1000), b"{\"apiVersion\":").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_once_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, ca) = webhook_server(small_limits()).await;
        let mut tls = crate::listener::testing::connect(addr, &ca, &[b"http/1.1"])
            .await
            .unwrap();
        let body = serde_json::to_vec(&request(json!({}))).unwrap();
        let head = post(body.len()).replace("Connection: close\r\n", "");
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the idle connection was closed");
    }
}
