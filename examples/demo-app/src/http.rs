//! The demo's HTTP surface: `POST /` runs the body through the `handler` plugin;
//! `GET /stream` is a long-lived chunked response that keeps going across swaps.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hotload_host::{CallError, PluginHost};

/// The plugin slot request handling runs through.
pub const HANDLER: &str = "handler";

/// Largest request body (the example plugin's input buffer holds 31 KiB).
pub const MAX_BODY: usize = 16 * 1024;

/// The demo router.
pub fn router(host: Arc<PluginHost>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/stream", get(stream))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(host)
}

async fn handle(State(host): State<Arc<PluginHost>>, body: Bytes) -> Response {
    // A plugin call is bounded by its epoch deadline; a short block_in_place keeps the
    // runtime's other tasks moving without a thread hop per request.
    match tokio::task::block_in_place(|| host.call(HANDLER, &body)) {
        Ok(out) => (StatusCode::OK, out).into_response(),
        Err(e @ CallError::NotLoaded { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn stream(State(host): State<Arc<PluginHost>>) -> Response {
    let ticks = futures::stream::unfold(0u64, move |n| {
        let host = host.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let line = match host.call(HANDLER, format!("tick {n}").as_bytes()) {
                Ok(out) => {
                    let mut l = out;
                    l.push(b'\n');
                    l
                }
                Err(e) => format!("error: {e}\n").into_bytes(),
            };
            Some((Ok::<_, Infallible>(Bytes::from(line)), n + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(ticks))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
