//! A real HTTPS artifact server for rollout tests: rustls with a CA made for the test,
//! listening on the root end of the node link ([`netplan::HOST_IP`]) so sidecars in pods
//! reach it. It counts downloads per file, so a test can prove a rollback came from the
//! sidecar's cache, and files can be added or removed while it runs. It can answer late (a
//! slow host), or go down (its port refuses connections) and come back on the same address,
//! as an artifact host does. While down it keeps the port bound without listening, so a
//! server another test starts meanwhile cannot take the address (its clients would then get
//! that server's answers instead of a refused connection).

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
    /// The accept loop while up.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// While down: the address, bound and not listening (connections are refused).
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
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
        Self::start_on(netplan::HOST_IP).await
    }

    async fn start_on(ip: std::net::Ipv4Addr) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let host = ip.to_string();
        let pki = TestCa::new(&[&host])?;
        let tls = crate::tls::acceptor_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None)?;
        let listener = tokio::net::TcpListener::bind((ip, 0))
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
            task: Mutex::new(Some(task)),
            reserved: Mutex::new(None),
        })
    }

    /// Goes down: new connections are refused until [`ArtifactServer::resume`]; the address
    /// stays reserved for it. Connections already open finish their requests.
    pub async fn stop(&self) -> Result<()> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let Some(task) = task else {
            return Ok(()); // down already
        };
        task.abort();
        // Cancelled: the listener is dropped once this returns, so the port is free to bind.
        let _ = task.await;
        let socket = reserve(self.addr)
            .with_context(|| format!("keeping the artifact server's address {}", self.addr))?;
        if let Ok(mut reserved) = self.reserved.lock() {
            *reserved = Some(socket);
        }
        Ok(())
    }

    /// Comes back on the same address (nothing to do if it is up).
    pub async fn resume(&self) -> Result<()> {
        let Some(socket) = self.reserved.lock().ok().and_then(|mut r| r.take()) else {
            return Ok(());
        };
        let listener = socket
            .listen(1024)
            .with_context(|| format!("listening again on {}", self.addr))?;
        let task = tokio::spawn(crate::tls::serve(
            self.app.clone(),
            listener,
            self.tls.clone(),
        ));
        if let Ok(mut current) = self.task.lock() {
            *current = Some(task);
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

/// A socket bound to `addr` that does not listen: it holds the port, and the kernel refuses
/// connections to it. `SO_REUSEADDR`, since the connections just served linger in TIME_WAIT.
fn reserve(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Down means refused, and the address stays this server's: a server started meanwhile
    /// (another test's, on a free port) must not get it, or the clients of this one would
    /// be answered by that one.
    #[tokio::test]
    async fn a_stopped_server_refuses_connections_and_keeps_its_address() {
        let server = ArtifactServer::start_on(std::net::Ipv4Addr::LOCALHOST)
            .await
            .expect("start");
        let addr = server.addr;
        tokio::net::TcpStream::connect(addr)
            .await
            .expect("up: connects");

        server.stop().await.expect("stop");
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "down, yet {addr} accepted a connection");
        // A socket without SO_REUSEADDR conflicts with any socket bound to the address, as
        // a server binding port 0 (the kernel skips ports bound by anyone) does.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        assert!(
            other.bind(addr).is_err(),
            "another server could take {addr} while it was down"
        );

        server.resume().await.expect("resume");
        tokio::net::TcpStream::connect(addr)
            .await
            .expect("resumed: connects again");
        server.resume().await.expect("resuming twice is a no-op");
    }
}
