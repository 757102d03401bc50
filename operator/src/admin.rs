//! The admin port: `/live` (the process runs), `/ready` (caches synced: a standby replica
//! is Ready too, so rolling upgrades can surge) and `/metrics`. Sidecars reach only the
//! leader because the channel Service also selects the `hotload.dev/leader` label, which
//! the leader puts on its own pod ([`crate::leader`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness, set by the controller and the leader election.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
    leading: AtomicBool,
}

impl Health {
    /// The watch caches have their first full list.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Leadership gained or lost.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// Whether the watch caches have synced (the pod's readiness).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Whether this replica should reconcile and accept sidecar streams.
    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::SeqCst) && self.leading.load(Ordering::SeqCst)
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(
                |State((health, _)): State<(Arc<Health>, Arc<Metrics>)>| async move {
                    match (health.synced(), health.ready()) {
                        (true, true) => (StatusCode::OK, "ready: leading\n"),
                        (true, false) => (StatusCode::OK, "ready: standby\n"),
                        (false, _) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: caches syncing\n",
                        ),
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |State((_, metrics)): State<(Arc<Health>, Arc<Metrics>)>| async move {
                    metrics.encode()
                },
            ),
        )
        .with_state((health, metrics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
