//! The admin HTTP endpoint: `/ready` (kubelet readiness probe), `/live`, `/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::agent::Agent;

/// The admin router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/status", get(status))
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

async fn status(State(agent): State<Arc<Agent>>) -> Response {
    match serde_json::to_string_pretty(&agent.status()) {
        Ok(body) => ([("content-type", "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
