//! A real HTTPS artifact server for tests: rustls with a CA made by rcgen, hyper serving
//! routes that fail in every way the fetcher must name. Listens on 127.0.0.1 only.
#![allow(dead_code)] // each test binary uses a different subset

pub mod recording;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and a leaf certificate for 127.0.0.1 / localhost.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl TestPki {
    /// Generates a fresh CA and leaf.
    pub fn generate() -> Self {
        hotload_sidecar::ensure_crypto_provider();
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hotload test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        TestPki {
            ca_pem: ca_cert.pem(),
            leaf_der: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        }
    }

    /// The leaf certificate, PEM (for servers started outside Rust, like a registry).
    pub fn leaf_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.leaf_der)
    }

    /// The leaf key, PKCS#8 PEM.
    pub fn leaf_key_pem(&self) -> String {
        pem_block("PRIVATE KEY", &self.leaf_key)
    }

    fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.clone()));
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The server's shared state: blobs by name and hits by path.
#[derive(Default)]
pub struct Routes {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    hits: Mutex<HashMap<String, usize>>,
}

/// A running HTTPS server.
pub struct ArtifactServer {
    /// `https://127.0.0.1:<port>`.
    pub base: String,
    routes: Arc<Routes>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn streamed(
    content_length: Option<usize>,
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> Response<Body> {
    // A pause before each chunk makes hyper flush what came before, so a failing chunk
    // cuts a response the client has already started reading.
    let stream = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.map(|b| Frame::data(Bytes::from(b)))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Some(len) = content_length {
        r.headers_mut().insert("content-length", len.into());
    }
    r
}

async fn route(
    routes: Arc<Routes>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let hit = {
        let mut hits = routes.hits.lock().expect("hits");
        let n = hits.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let blob = |name: &str| routes.blobs.lock().expect("blobs").get(name).cloned();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    let resp = match parts.as_slice() {
        ["blob", name] => match blob(name) {
            Some(b) => full(StatusCode::OK, b),
            None => full(StatusCode::NOT_FOUND, b"no such blob".to_vec()),
        },
        ["status", code] => full(
            code.parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            b"as requested".to_vec(),
        ),
        // Fails with 503 `fails` times, then serves the blob.
        ["flaky", fails, name] => {
            if hit <= fails.parse::<usize>().unwrap_or(0) {
                full(StatusCode::SERVICE_UNAVAILABLE, b"try later".to_vec())
            } else {
                blob(name).map_or_else(
                    || full(StatusCode::NOT_FOUND, Vec::new()),
                    |b| full(StatusCode::OK, b),
                )
            }
        }
        ["slow"] => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            full(StatusCode::OK, Vec::new())
        }
        // Announces its size: refused before the body.
        ["big", size] => {
            let n = size.parse::<usize>().unwrap_or(0);
            streamed(Some(n), vec![Ok(vec![0u8; n])])
        }
        // No length: refused while reading.
        ["big-chunked", size] => {
            let n = size.parse::<usize>().unwrap_or(0);
            streamed(
                None,
                (0..n.div_ceil(1024)).map(|_| Ok(vec![0u8; 1024])).collect(),
            )
        }
        // Announces the full length, sends half, then the connection dies.
        ["truncated", name] => {
            let b = blob(name).unwrap_or_default();
            let half = b[..b.len() / 2].to_vec();
            streamed(
                Some(b.len()),
                vec![Ok(half), Err(std::io::Error::other("server cut the body"))],
            )
        }
        // Announces the full length, sends half, then nothing more, ever.
        ["half-then-hang", name] => {
            let b = blob(name).unwrap_or_default();
            let half = b[..b.len() / 2].to_vec();
            let never = futures::stream::once(std::future::pending());
            let stream = futures::stream::iter([Ok(Frame::data(Bytes::from(half)))]).chain(never);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert("content-length", b.len().into());
            r
        }
        _ => full(StatusCode::NOT_FOUND, Vec::new()),
    };
    Ok(resp)
}

impl ArtifactServer {
    /// Starts a server. With `reset_on_abort`, sockets linger 0 so an aborted response is
    /// an RST (connection reset) rather than a FIN (truncation).
    pub async fn start(pki: &TestPki, reset_on_abort: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let acceptor = pki.acceptor();
        let routes = Arc::new(Routes::default());
        let r = routes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if reset_on_abort {
                    let _ = tcp.set_zero_linger();
                }
                let (acceptor, routes) = (acceptor.clone(), r.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here, as it should.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| route(routes.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ArtifactServer {
            base: format!("https://127.0.0.1:{}", addr.port()),
            routes,
            task,
        }
    }

    /// Publishes `bytes` at `/blob/<name>`.
    pub fn put(&self, name: &str, bytes: &[u8]) -> String {
        self.routes
            .blobs
            .lock()
            .expect("blobs")
            .insert(name.into(), bytes.to_vec());
        format!("{}/blob/{name}", self.base)
    }

    /// Requests served for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.routes
            .hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests served in total.
    pub fn total_hits(&self) -> usize {
        self.routes.hits.lock().expect("hits").values().sum()
    }
}

/// A cosign key pair (ECDSA P-256, cosign's default) and its public key as PEM.
pub fn cosign_key() -> (sigstore::crypto::SigStoreSigner, String) {
    let signer = sigstore::crypto::SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .expect("signer");
    let pem = signer
        .to_sigstore_keypair()
        .expect("keypair")
        .public_key_to_pem()
        .expect("pem");
    (signer, pem)
}
