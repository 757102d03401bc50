//! A real HTTPS artifact server for rollout tests: rustls with a CA made for the test,
//! listening on the root end of the node link ([`netplan::HOST_IP`]) so sidecars in pods
//! reach it. It counts downloads per file, so a test can prove a rollback came from the
//! sidecar's cache, and files can be added or removed while it runs. It can answer late (a
//! slow host), or go down (its port refuses connections) and come back on the same address,
//! as an artifact host does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use crate::netplan;
use crate::testing::TestCa;

#[derive(Default)]
struct Files {
    bytes: HashMap<String, Vec<u8>>,
    hits: HashMap<String, usize>,
    /// How long every answer waits (a slow host).
    delay: std::time::Duration,
}

/// The server; stops when dropped.
pub struct ArtifactServer {
    files: Arc<Mutex<Files>>,
    base: String,
    addr: std::net::SocketAddr,
    /// The CA (PEM) sidecars must trust.
    pub ca_pem: String,
    app: Router,
    tls: tokio_rustls::TlsAcceptor,
    task: Mutex<tokio::task::JoinHandle<()>>,
    /// Stopped and not resumed since.
    down: std::sync::atomic::AtomicBool,
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

async fn serve_file(
    State(files): State<Arc<Mutex<Files>>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let delay = files.lock().map(|f| f.delay).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Ok(mut files) = files.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    *files.hits.entry(name.clone()).or_default() += 1;
    match files.bytes.get(&name) {
        Some(bytes) => bytes.clone().into_response(),
        None => (StatusCode::NOT_FOUND, format!("no artifact {name}\n")).into_response(),
    }
}

impl ArtifactServer {
    /// Starts the server on a free port of [`netplan::HOST_IP`], with a CA of its own.
    pub async fn start() -> Result<Self> {
        crate::tls::install_crypto_provider();
        let host = netplan::HOST_IP.to_string();
        let pki = TestCa::new(&[&host])?;
        let tls = crate::tls::acceptor_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None)?;
        let listener = tokio::net::TcpListener::bind((netplan::HOST_IP, 0))
            .await
            .context("binding the artifact server (is the cluster up?)")?;
        let addr = listener.local_addr()?;
        let files = Arc::new(Mutex::new(Files::default()));
        let app = Router::new()
            .route("/{name}", get(serve_file))
            .with_state(files.clone());
        let task = tokio::spawn(crate::tls::serve(app.clone(), listener, tls.clone()));
        Ok(Self {
            files,
            base: format!("https://{addr}"),
            addr,
            ca_pem: pki.ca_pem,
            app,
            tls,
            task: Mutex::new(task),
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Goes down: new connections are refused until [`ArtifactServer::resume`].
    pub fn stop(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(task) = self.task.lock() {
            task.abort();
        }
    }

    /// Comes back on the same address (nothing to do if it is up).
    pub async fn resume(&self) -> Result<()> {
        if !self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("binding the artifact server again on {}", self.addr))?;
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let task = tokio::spawn(crate::tls::serve(
            self.app.clone(),
            listener,
            self.tls.clone(),
        ));
        if let Ok(mut current) = self.task.lock() {
            current.abort();
            *current = task;
        }
        Ok(())
    }

    /// Answers every request `delay` late from now on (zero: at once again), as a slow
    /// or overloaded host does.
    pub fn set_delay(&self, delay: std::time::Duration) {
        if let Ok(mut files) = self.files.lock() {
            files.delay = delay;
        }
    }

    /// Serves `bytes` as `name`; returns its URL.
    pub fn put(&self, name: &str, bytes: &[u8]) -> String {
        if let Ok(mut files) = self.files.lock() {
            files.bytes.insert(name.to_string(), bytes.to_vec());
        }
        self.url(name)
    }

    /// The URL `name` is (or would be) served at.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// How many times `name` was requested.
    pub fn hits(&self, name: &str) -> usize {
        self.files
            .lock()
            .map(|f| f.hits.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.stop();
    }
}
