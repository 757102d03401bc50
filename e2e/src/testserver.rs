//! The e2e test server: a small HTTP service the cluster tests deploy as image
//! `hotload/e2e-testserver:dev`. It says which pod answered, can be told to fail readiness,
//! calls the API with its pod's service-account token, fetches URLs from inside the pod
//! (Service names, pod IPs), shows files and environment variables as the container sees
//! them, crashes or turns unhealthy on request, logs SIGTERM handling, and serves a
//! mutating admission webhook over HTTPS.

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
    /// On SIGTERM, append "sigterm <hostname> <port>" to this file before exiting.
    #[arg(long)]
    pub sigterm_file: Option<PathBuf>,
    /// On SIGTERM, keep serving this long before exiting (a draining server).
    #[arg(long, default_value_t = 0.0)]
    pub shutdown_delay: f64,
    /// /healthz fails (500) once this many seconds have passed (for liveness probes).
    #[arg(long)]
    pub healthy_for: Option<f64>,
    /// Serve the admission webhook (`POST /mutate`) over HTTPS with this certificate.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The webhook certificate's key.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The HTTPS port.
    #[arg(long, default_value_t = 8443)]
    pub tls_port: u16,
}

struct Shared {
    hostname: String,
    ready: AtomicBool,
    unhealthy_at: Option<std::time::Instant>,
}

/// Runs the server until SIGTERM (or --exit-after).
pub async fn run(args: TestServerArgs) -> Result<()> {
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    let shared = Arc::new(Shared {
        hostname: hostname.clone(),
        ready: AtomicBool::new(true),
        unhealthy_at: args
            .healthy_for
            .map(|s| std::time::Instant::now() + Duration::from_secs_f64(s)),
    });
    let app =
        Router::new()
            .route(
                "/",
                get(|State(s): State<Arc<Shared>>| async move {
                    format!("hello from {}\n", s.hostname)
                }),
            )
            .route("/healthz", get(healthz))
            .route("/file", get(file))
            .route("/env", get(env_var))
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
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = crate::tls::acceptor(cert, key, None)?;
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.tls_port)).await?;
        let webhook = Router::new().route("/mutate", post(mutate));
        println!("webhook listening on 0.0.0.0:{} (https)", args.tls_port);
        tokio::spawn(crate::tls::serve(webhook, listener, tls));
    }
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
                writeln!(file, "sigterm {hostname} {}", args.port)?;
            }
            tokio::time::sleep(Duration::from_secs_f64(args.shutdown_delay)).await;
            println!("shut down cleanly");
            if let Some(path) = &args.sigterm_file {
                // Written after the drain: a kubelet that killed the container before the
                // grace period ended never lets this line be written.
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                writeln!(file, "drained {hostname} {}", args.port)?;
            }
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

async fn healthz(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    match s.unhealthy_at {
        Some(at) if std::time::Instant::now() >= at => {
            (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy\n")
        }
        _ => (StatusCode::OK, "ok\n"),
    }
}

/// A file as the container sees it (its mounts, not the host's).
async fn file(Query(q): Query<PathQuery>) -> (StatusCode, String) {
    match std::fs::read_to_string(&q.path) {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::NOT_FOUND, format!("{}: {e}\n", q.path)),
    }
}

#[derive(Deserialize)]
struct NameQuery {
    name: String,
}

/// An environment variable of the container.
async fn env_var(Query(q): Query<NameQuery>) -> (StatusCode, String) {
    match std::env::var(&q.name) {
        Ok(value) => (StatusCode::OK, value),
        Err(_) => (StatusCode::NOT_FOUND, format!("{} is not set\n", q.name)),
    }
}

/// A mutating admission webhook that labels every object it sees `hotload.dev/mutated=true`.
async fn mutate(
    axum::Json(review): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    let request = &review["request"];
    let has_labels = request["object"]["metadata"]["labels"].is_object();
    let patch = if has_labels {
        serde_json::json!([{"op": "add", "path": "/metadata/labels/hotload.dev~1mutated", "value": "true"}])
    } else {
        serde_json::json!([{"op": "add", "path": "/metadata/labels", "value": {"hotload.dev/mutated": "true"}}])
    };
    let patch = k8s_openapi::ByteString(patch.to_string().into_bytes());
    axum::Json(serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": patch,
        },
    }))
}
