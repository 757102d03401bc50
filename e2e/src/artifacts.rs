//! A real HTTPS artifact server for rollout tests: rustls with a CA made for the test,
//! listening on the root end of the node link ([`netplan::HOST_IP`]) so sidecars in pods
//! reach it. It counts downloads per file, so a test can prove a rollback came from the
//! sidecar's cache, and files can be added or removed while it runs. It can go down (its
//! port refuses connections) and come back on the same address, as an artifact host does.

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
        })
    }

    /// Goes down: new connections are refused until [`ArtifactServer::resume`].
    pub fn stop(&self) {
        if let Ok(task) = self.task.lock() {
            task.abort();
        }
    }

    /// Comes back on the same address.
    pub async fn resume(&self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("binding the artifact server again on {}", self.addr))?;
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
