//! The e2e test server: a small HTTP service the cluster tests deploy as image
//! `hotload/e2e-testserver:dev`. It says which pod answered, can be told to fail readiness,
//! calls the API with its pod's service-account token, fetches URLs from inside the pod
//! (Service names, pod IPs), crashes on request, and logs SIGTERM handling.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;

/// Arguments of `testserver`.
#[derive(clap::Args, Debug, Clone)]
pub struct TestServerArgs {
    /// Port to listen on (all addresses).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Exit after this many seconds (a crashing container).
    #[arg(long)]
    pub exit_after: Option<f64>,
    /// Exit code used with --exit-after.
    #[arg(long, default_value_t = 3)]
    pub exit_code: i32,
    /// On SIGTERM, append "sigterm <hostname>" to this file before exiting.
    #[arg(long)]
    pub sigterm_file: Option<PathBuf>,
    /// On SIGTERM, keep serving this long before exiting (a draining server).
    #[arg(long, default_value_t = 0.0)]
    pub shutdown_delay: f64,
}

struct Shared {
    hostname: String,
    ready: AtomicBool,
}

/// Runs the server until SIGTERM (or --exit-after).
pub async fn run(args: TestServerArgs) -> Result<()> {
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    let shared = Arc::new(Shared {
        hostname: hostname.clone(),
        ready: AtomicBool::new(true),
    });
    let app =
        Router::new()
            .route(
                "/",
                get(|State(s): State<Arc<Shared>>| async move {
                    format!("hello from {}\n", s.hostname)
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/ready", get(ready))
            .route(
                "/ready/fail",
                post(|State(s): State<Arc<Shared>>| async move {
                    s.ready.store(false, Ordering::SeqCst);
                    "not ready\n"
                }),
            )
            .route(
                "/ready/ok",
                post(|State(s): State<Arc<Shared>>| async move {
                    s.ready.store(true, Ordering::SeqCst);
                    "ready\n"
                }),
            )
            .route("/kube", get(kube_call))
            .route("/fetch", get(fetch))
            .with_state(shared);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port)).await?;
    println!("testserver {hostname} listening on 0.0.0.0:{}", args.port);
    if let Some(seconds) = args.exit_after {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            println!(
                "exiting with code {} as asked (--exit-after)",
                args.exit_code
            );
            std::process::exit(args.exit_code);
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = axum::serve(listener, app);
    tokio::select! {
        result = server => result?,
        _ = sigterm.recv() => {
            println!("received SIGTERM; draining for {}s", args.shutdown_delay);
            if let Some(path) = &args.sigterm_file {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                writeln!(file, "sigterm {hostname}")?;
            }
            tokio::time::sleep(Duration::from_secs_f64(args.shutdown_delay)).await;
            println!("shut down cleanly");
        }
    }
    Ok(())
}

async fn ready(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

/// GETs an API path with the pod's own credentials; answers with the API's status code.
async fn kube_call(Query(q): Query<PathQuery>) -> (StatusCode, String) {
    let client = match kube::Config::incluster().map(kube::Client::try_from) {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("client: {e}\n")),
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("in-cluster config: {e}\n"),
            );
        }
    };
    let request = match http::Request::get(&q.path).body(Vec::new()) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad path: {e}\n")),
    };
    match client.request_text(request).await {
        Ok(_) => (StatusCode::OK, "200\n".into()),
        Err(kube::Error::Api(status)) => (StatusCode::OK, format!("{}\n", status.code)),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("request failed: {e}\n")),
    }
}

#[derive(Deserialize)]
struct UrlQuery {
    url: String,
}

/// GETs a URL from inside the pod (name resolution and routing as the pod sees them).
async fn fetch(Query(q): Query<UrlQuery>) -> (StatusCode, String) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match client.get(&q.url).send().await {
        Ok(response) => (StatusCode::OK, response.text().await.unwrap_or_default()),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("fetch {}: {e}\n", q.url)),
    }
}
