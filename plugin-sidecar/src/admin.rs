//! The admin HTTP endpoint: `/ready` (kubelet readiness probe), `/live`, `/status`,
//! `/metrics` (Prometheus).
//!
//! It listens on the pod's addresses, because the kubelet probes them, so any pod of the
//! cluster can connect. `/ready`, `/live` and `/metrics` say nothing sensitive (metrics
//! carry plugin and revision names and counts: no config, no URL) and answer anyone:
//! Prometheus scrapes over the pod's IP.
//! `/status` answers loopback peers only (`kubectl port-forward` and `kubectl exec` arrive
//! there) and even then shows each plugin config as its size and hash, and artifact URLs
//! without credentials, query or fragment ([`redact`]).
//!
//! The server is bounded, so a flood of connections cannot starve the probes for long (the
//! sidecar has one thread): one request per connection, its headers within a short
//! timeout, no request body, every connection over within a deadline, and at most
//! [`AdminLimits::max_connections`] open, a new one closing the oldest rather than waiting
//! behind it (a probe connects and asks at once; a flood's connections are the old ones).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use crate::agent::{Agent, StatusReport};
use crate::state::RevisionRecord;

/// The admin router. `/status` needs the peer's address as [`ConnectInfo`].
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

async fn ready(State(agent): State<Arc<Agent>>) -> Response {
    match agent.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    let content_type = [("content-type", crate::metrics::CONTENT_TYPE)];
    (content_type, agent.telemetry().encode()).into_response()
}

/// Whether a peer at `ip` may see `/status`: the pod itself only. Pure.
pub fn may_see_status(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

async fn status(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(agent): State<Arc<Agent>>,
) -> Response {
    if !may_see_status(peer.ip()) {
        let refusal = format!(
            "/status answers only from inside the pod (kubectl port-forward or kubectl exec), \
             not from {}\n",
            peer.ip()
        );
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    let mut report = agent.status();
    redact(&mut report);
    match serde_json::to_string_pretty(&report) {
        Ok(body) => ([("content-type", "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// What `/status` shows of a report: no plugin config (configs carry a plugin's own
/// secrets: API keys, tokens), only its size and hash, enough to tell whether two pods run
/// the same one; artifact URLs without userinfo, query or fragment (presigned URLs carry
/// their signature there). Credentials are never in the report at all.
pub fn redact(report: &mut StatusReport) {
    for plugin in report.state.plugins.values_mut() {
        let records = plugin.assigned.iter_mut().chain(plugin.loaded.iter_mut());
        for record in records.chain(plugin.history.iter_mut()) {
            redact_record(record);
        }
    }
}

fn redact_record(record: &mut RevisionRecord) {
    record.config = config_summary(&record.config);
    record.artifact = redact_url(&record.artifact);
}

/// A config as `{"bytes": n, "sha256": "…"}` of its JSON text; no config stays `null`. Pure.
pub fn config_summary(config: &serde_json::Value) -> serde_json::Value {
    if config.is_null() {
        return serde_json::Value::Null;
    }
    let text = config.to_string();
    let hash: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::json!({"redacted": true, "bytes": text.len(), "sha256": hash})
}

/// `artifact` without userinfo, query or fragment. Pure.
pub fn redact_url(artifact: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(artifact) else {
        return "(not a URL; not shown)".into();
    };
    let secretive = !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some();
    if !secretive {
        return artifact.to_string();
    }
    // Setting userinfo fails only for URLs that cannot have one; then it had none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    format!("{url} (credentials, query and fragment not shown)")
}

/// Bounds of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections open at once; one more closes the oldest.
    pub max_connections: usize,
    /// How long a connection may take to send its request's headers.
    pub header_timeout: Duration,
    /// How long a connection may last in all.
    pub connection_deadline: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(2),
            connection_deadline: Duration::from_secs(5),
        }
    }
}

/// The open connections, oldest first, each with the means to close it.
struct Slots {
    max: usize,
    next: u64,
    open: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Slots {
    /// Takes a new connection: its id and what closes it. At the limit, the oldest
    /// connection is closed to make room.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>) {
        while self.open.len() >= self.max.max(1) {
            // Dropping its sender closes the connection.
            self.open.pop_first();
        }
        let (close, closed) = oneshot::channel();
        self.next += 1;
        self.open.insert(self.next, close);
        (self.next, closed)
    }

    fn release(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

/// Serves the admin router on `listener` within `limits`, until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, agent: Arc<Agent>, limits: AdminLimits) {
    let app = TowerToHyperService::new(router(agent));
    let slots = Arc::new(Mutex::new(Slots {
        max: limits.max_connections,
        next: 0,
        open: BTreeMap::new(),
    }));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some connections end.
                tracing::warn!(error = %e, "admin server cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (id, closed) = lock(&slots).admit();
        let (app, slots) = (app.clone(), slots.clone());
        tokio::spawn(async move {
            connection(tcp, peer, app, limits, closed).await;
            lock(&slots).release(id);
        });
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request on `tcp` from `peer`, unless `closed` or a limit ends it first.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: TowerToHyperService<Router>,
    limits: AdminLimits,
    closed: oneshot::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            if has_body(&req) {
                let refusal = "admin endpoints take no request body\n";
                return Ok::<_, Infallible>(
                    (StatusCode::PAYLOAD_TOO_LARGE, refusal).into_response(),
                );
            }
            app.call(req.map(Body::new)).await
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(16 * 1024);
    let served = http.serve_connection(TokioIo::new(tcp), service);
    tokio::select! {
        _ = tokio::time::timeout(limits.connection_deadline, served) => {}
        _ = closed => {}
    }
}

fn has_body<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
