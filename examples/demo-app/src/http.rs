//! The demo's HTTP surface: `POST /` runs the body through the `handler` plugin;
//! `GET /stream` is a long-lived chunked response that keeps going across swaps. Every
//! response names the worker process that served it (`x-hotload-worker`), and `POST /` the
//! plugin revision (`x-hotload-revision`), so a test can check every worker of a pod.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hotload_host::{CallError, PluginHost};

/// The plugin slot request handling runs through.
pub const HANDLER: &str = "handler";

/// Largest request body (the example plugin's input buffer holds 31 KiB).
pub const MAX_BODY: usize = 16 * 1024;

/// Response header: the id of the worker process that served the request.
pub const WORKER_HEADER: &str = "x-hotload-worker";

/// Response header of `POST /`: the plugin revision that handled the request.
pub const REVISION_HEADER: &str = "x-hotload-revision";

/// The demo router; `worker` is this process's worker id (see `cli::Args::worker`).
pub fn router(host: Arc<PluginHost>, worker: &str) -> Router {
    let worker = HeaderValue::from_str(worker).unwrap_or(HeaderValue::from_static("invalid"));
    Router::new()
        .route("/", post(handle))
        .route("/stream", get(stream))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(move |mut res: Response| {
            let worker = worker.clone();
            async move {
                res.headers_mut().insert(WORKER_HEADER, worker);
                res
            }
        }))
        .with_state(host)
}

async fn handle(State(host): State<Arc<PluginHost>>, body: Bytes) -> Response {
    // A plugin call is bounded by its epoch deadline; a short block_in_place keeps the
    // runtime's other tasks moving without a thread hop per request. The pin makes the
    // revision named in the header the one that produced the body.
    let served = tokio::task::block_in_place(|| {
        let pinned = host.pin(HANDLER)?;
        let out = pinned.call(&body)?;
        Ok::<_, CallError>((pinned.revision().revision.clone(), out))
    });
    match served {
        Ok((revision, out)) => {
            let mut res = (StatusCode::OK, out).into_response();
            if let Ok(v) = HeaderValue::from_str(&revision) {
                res.headers_mut().insert(REVISION_HEADER, v);
            }
            res
        }
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
