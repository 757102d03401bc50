//! Bounded TLS listeners for the channel and the webhook: a fixed number of connection
//! slots (TLS handshakes included), a handshake timeout, and connections closed once
//! unused for an idle timeout. "Unused" is told by the server: it holds an [`InUse`] per
//! request in flight or sidecar attached, found in each request's [`ConnectionInfo`].
//!
//! ```text
//!  accept ──(slot)──▶ TLS handshake (timeout) ──▶ Conn ──▶ server (holds InUse while busy)
//!                                                   └── unused for idle_timeout: reads fail, it ends
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Bounds on a TLS listener's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, TLS handshakes included; more wait in the listen backlog
    /// until one closes.
    pub max_connections: usize,
    /// Connections open at once from one address: one pod (or node) cannot take every slot.
    pub max_per_peer: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight (no request, no attached sidecar) for this long
    /// is closed, so idle connections cannot hold every slot.
    pub idle_timeout: Duration,
}

/// Accepted TLS connections on `listener`, at most `limits.max_connections` at once and
/// `limits.max_per_peer` from one address (more from it are closed at once). Handshakes run
/// in their own tasks, so a slow or silent client never holds up the next one.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: ConnectionLimits,
) -> impl Stream<Item = std::io::Result<Conn<TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers::default());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok(global) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Some(from_peer) = peers.admit(peer.ip(), limits.max_per_peer) else {
                tracing::debug!(%peer, max = limits.max_per_peer, "too many connections from one address; closed");
                continue;
            };
            let slot = Slot {
                _global: global,
                _peer: Some(from_peer),
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let conn = Conn::new(stream, peer, slot, limits.idle_timeout);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Open connections by peer address.
#[derive(Debug, Default)]
struct Peers(std::sync::Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    /// Counts a connection from `ip`, unless it already has `max`.
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One connection counted against its peer; uncounted when dropped.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What an accepted connection holds until it closes: one of the listener's slots, and
/// its count against its peer.
#[derive(Debug)]
struct Slot {
    _global: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
}

/// How much a connection is in use: what serves it holds an [`InUse`] per request in
/// flight or sidecar attached, and the connection closes itself once unused for its idle
/// timeout.
#[derive(Debug)]
pub struct Usage {
    active: AtomicUsize,
    last_used: std::sync::Mutex<Instant>,
}

impl Usage {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            last_used: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// Marks the connection in use until the guard is dropped.
    pub fn hold(self: &Arc<Self>) -> InUse {
        self.active.fetch_add(1, Ordering::SeqCst);
        InUse(self.clone())
    }

    /// When the connection is to be closed for idleness: `None` while in use.
    fn close_at(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last_used = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        Some(last_used + idle)
    }
}

/// A connection held in use ([`Usage::hold`]).
#[derive(Debug)]
pub struct InUse(Arc<Usage>);

impl Drop for InUse {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a server learns of a connection: the peer, and its [`Usage`] to hold.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Hold it while serving the connection.
    pub usage: Arc<Usage>,
}

/// An accepted connection: holds one of the listener's slots until dropped, and fails its
/// reads once unused for the idle timeout, which ends it.
pub struct Conn<S> {
    inner: S,
    info: ConnectionInfo,
    idle: Duration,
    check: Pin<Box<tokio::time::Sleep>>,
    _slot: Slot,
}

impl<S> Conn<S> {
    fn new(inner: S, peer: std::net::SocketAddr, slot: Slot, idle: Duration) -> Self {
        Self {
            inner,
            info: ConnectionInfo {
                peer,
                usage: Usage::new(),
            },
            idle,
            check: Box::pin(tokio::time::sleep(idle)),
            _slot: slot,
        }
    }

    /// The peer and usage of this connection.
    pub fn info(&self) -> ConnectionInfo {
        self.info.clone()
    }

    /// Ready with an error once the connection has been unused for the idle timeout; keeps
    /// its timer armed (and this task's waker registered) otherwise.
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Error> {
        while self.check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.info.usage.close_at(self.idle) {
                Some(at) if at <= now => {
                    return Poll::Ready(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "connection from {} unused for {}s: closed",
                            self.info.peer,
                            self.idle.as_secs()
                        ),
                    ));
                }
                Some(at) => self.check.as_mut().reset(at),
                None => self.check.as_mut().reset(now + self.idle),
            }
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(error) = this.poll_idle(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info()
    }
}

/// Test doubles for the servers: a served certificate, TLS clients, a fake API server.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use axum::http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use crate::tls::CertStore;

    /// The name the test certificate carries.
    pub const HOST: &str = "hotload.ops.svc";

    /// A store serving a fresh certificate for [`HOST`], and its CA (PEM).
    pub fn served() -> (Arc<CertStore>, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = time::OffsetDateTime::now_utc();
        let names = crate::certs::service_names("hotload", "ops");
        let material = crate::certs::renew(
            None,
            &crate::certs::Renewal::Everything("test".into()),
            &names,
            now,
            std::time::Duration::from_secs(3600),
        )
        .unwrap()
        .unwrap();
        let ca = material.ca_cert.clone();
        let store = Arc::new(CertStore::default());
        store.set(material).unwrap();
        (store, ca)
    }

    /// A TLS connection to `addr` that trusts only `ca`, offering `alpn`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        ca: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// A kube client whose API server is `answer(method, path, body) -> (status, JSON)`.
    pub fn fake_api<F>(answer: F) -> kube::Client
    where
        F: Fn(&Method, &str, &[u8]) -> (u16, serde_json::Value) + Clone + Send + Sync + 'static,
    {
        let service = tower::service_fn(move |request: Request<Body>| {
            let answer = answer.clone();
            async move {
                let (method, path) = (request.method().clone(), request.uri().path().to_string());
                let body = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let (code, reply) = answer(&method, &path, &body);
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    /// A Kubernetes `Status` failure.
    pub fn failure(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "reason": reason, "message": reason})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    fn limits(max_connections: usize, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_per_peer: max_connections,
            handshake_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    fn conn(idle: Duration) -> (Conn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(64);
        let slot = Slot {
            _global: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            _peer: None,
        };
        let peer = "127.0.0.1:1".parse().unwrap();
        (Conn::new(server, peer, slot, idle), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_unused_for_its_idle_timeout_is_closed() {
        let (mut server, mut client) = conn(Duration::from_secs(60));
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 1, "reads while fresh");
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("unused for 60s"), "{error}");
        assert_eq!(
            started.elapsed().as_secs(),
            60,
            "from when it was last used"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_in_use_stays_open_and_idles_from_its_last_use() {
        let (mut server, _client) = conn(Duration::from_secs(60));
        let in_use = server.info().usage.hold();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(600), server.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting for data after 600 s in use");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(in_use);
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 60);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let (certs, ca) = testing::served();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(
            listener,
            certs.server_config(&[]),
            limits(1, 60_000),
        ));
        let _first = testing::connect(addr, &ca, &[]).await.unwrap();
        let first = accepted.next().await.unwrap().unwrap();
        let second = tokio::spawn(async move { testing::connect(addr, &ca, &[]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "no handshake while the only slot is taken"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(
            second.unwrap().unwrap().is_ok(),
            "served once the slot is free"
        );
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_handshake_gives_its_slot_back() {
        let (certs, ca) = testing::served();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(
            listener,
            certs.server_config(&[]),
            limits(1, 60_000),
        ));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            let client = testing::connect(addr, &ca, &[]).await;
            (client, accepted.next().await)
        })
        .await
        .expect("the silent client's handshake timed out and freed the slot");
        assert!(served.0.is_ok() && served.1.is_some());
    }

    #[tokio::test]
    async fn one_address_gets_at_most_its_share_of_connections() {
        let (certs, ca) = testing::served();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut limits = limits(8, 60_000);
        limits.max_per_peer = 1;
        let mut accepted = Box::pin(incoming(listener, certs.server_config(&[]), limits));
        let _first = testing::connect(addr, &ca, &[]).await.unwrap();
        let first = accepted.next().await.unwrap().unwrap();
        assert!(
            testing::connect(addr, &ca, &[]).await.is_err(),
            "a second connection from the same address is closed"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            testing::connect(addr, &ca, &[]).await.is_ok(),
            "its share is free again"
        );
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let held = peers.admit(ip, 1).unwrap();
        assert!(peers.admit(ip, 1).is_none());
        assert!(peers.admit("10.0.0.2".parse().unwrap(), 1).is_some());
        drop(held);
        assert!(
            peers.0.lock().unwrap().get(&ip).is_none(),
            "forgotten at zero"
        );
    }
}
