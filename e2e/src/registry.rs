//! A real OCI registry for the fleet: Debian's `docker-registry` (distribution 2.x, `make
//! deps` installs it) with TLS from a CA made for the test and htpasswd auth, behind a small
//! TCP proxy on the root end of the node link ([`netplan::HOST_IP`]) so sidecars in pods
//! reach it.
//!
//! ```text
//! sidecar ──TLS──▶ proxy HOST_IP:<front> (always listening; delays when slow)
//!                     └──TCP──▶ docker-registry HOST_IP:<back> (stopped and started again
//!                               on the same port and storage when down)
//! ```
//!
//! Artifacts are pushed with oci-client, one layer each; releases name them as
//! `oci://<front>/<repo>@<manifest digest>` with a pull secret ([`Registry::pull_secret`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use oci_client::client::{ClientConfig, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::netplan;
use crate::testing::TestCa;

/// Where `make deps` installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The media type of a plugin layer.
pub const PLUGIN_MEDIA_TYPE: &str = "application/vnd.hotload.plugin.v1+wasm";
const USER: &str = "puller";

/// The registry and its proxy; both stop, and the storage goes, when dropped.
pub struct Registry {
    dir: PathBuf,
    back: std::net::SocketAddr,
    front: std::net::SocketAddr,
    password: String,
    /// The CA (PEM) sidecars must trust.
    pub ca_pem: String,
    child: std::sync::Mutex<Option<tokio::process::Child>>,
    delay_ms: Arc<AtomicU64>,
    proxy: tokio::task::JoinHandle<()>,
}

impl Registry {
    /// Starts the registry on a free port of [`netplan::HOST_IP`] and the proxy in front.
    pub async fn start() -> Result<Self> {
        ensure!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: run `make deps` (apt-get install docker-registry)"
        );
        crate::tls::install_crypto_provider();
        let host = netplan::HOST_IP.to_string();
        let pki = TestCa::new(&[&host])?;
        let dir = std::env::temp_dir().join(format!(
            "hotload-registry-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        let password = format!("pw-{}", rand_hex());
        std::fs::write(dir.join("cert.pem"), &pki.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &pki.key_pem)?;
        let hash = bcrypt::hash(&password, 4).context("bcrypt")?;
        std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n"))?;
        let back = std::net::TcpListener::bind((netplan::HOST_IP, 0))
            .context("picking a port for the registry (is the cluster up?)")?
            .local_addr()?;
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: false\nhttp:\n  addr: {back}\n  tls:\n    certificate: {cert}\n    key: {key}\nauth:\n  htpasswd:\n    realm: hotload-e2e\n    path: {htpasswd}\n",
            data = dir.join("data").display(),
            cert = dir.join("cert.pem").display(),
            key = dir.join("key.pem").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let listener = TcpListener::bind((netplan::HOST_IP, 0))
            .await
            .context("binding the registry proxy")?;
        let front = listener.local_addr()?;
        let delay_ms = Arc::new(AtomicU64::new(0));
        let proxy = tokio::spawn(proxy(listener, back, delay_ms.clone()));
        let registry = Self {
            dir,
            back,
            front,
            password,
            ca_pem: pki.ca_pem,
            child: std::sync::Mutex::new(None),
            delay_ms,
            proxy,
        };
        registry.resume().await?;
        Ok(registry)
    }

    /// `host:port` sidecars and pushes use (the proxy's).
    pub fn host(&self) -> String {
        self.front.to_string()
    }

    /// Whether the registry process runs.
    pub fn is_up(&self) -> bool {
        self.child
            .lock()
            .map(|mut c| {
                c.as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none())
            })
            .unwrap_or(false)
    }

    /// Goes down: the registry process is killed (`kill -9`); the proxy still accepts and
    /// closes each connection at once, as a registry host whose service died does.
    pub async fn stop(&self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }

    /// Starts the registry process again on the same port and storage (nothing to do if it
    /// runs), and waits until it accepts connections.
    pub async fn resume(&self) -> Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let child = tokio::process::Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting docker-registry")?;
        if let Ok(mut slot) = self.child.lock() {
            *slot = Some(child);
        }
        for _ in 0..400 {
            if TcpStream::connect(self.back).await.is_ok() {
                return Ok(());
            }
            if !self.is_up() {
                bail!("docker-registry exited at once (port {} taken?)", self.back);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "docker-registry did not listen on {} within 10 s",
            self.back
        )
    }

    /// Delays every new connection, and every request chunk sent to the registry, by
    /// `delay` from now on (zero: at once again), as a slow or overloaded registry does.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Pushes `bytes` as the single layer of `repo:tag`; returns the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, bytes: &[u8]) -> Result<String> {
        let client = Client::new(ClientConfig {
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: self.ca_pem.clone().into_bytes(),
            }],
            ..Default::default()
        });
        let reference = Reference::with_tag(self.host(), repo.into(), tag.into());
        let auth = RegistryAuth::Basic(USER.into(), self.password.clone());
        let layer = ImageLayer::new(bytes.to_vec(), PLUGIN_MEDIA_TYPE.into(), None);
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.hotload.plugin.config.v1+json".into(),
            None,
        );
        client
            .push(&reference, &[layer], config, &auth, None)
            .await
            .with_context(|| format!("pushing {reference}"))?;
        Ok(client
            .pull_image_manifest(&reference, &auth)
            .await
            .with_context(|| format!("reading back the manifest of {reference}"))?
            .1)
    }

    /// The `oci://` URL of `repo` at manifest `digest`.
    pub fn url(&self, repo: &str, digest: &str) -> String {
        format!("oci://{}/{repo}@{digest}", self.host())
    }

    /// A `kubernetes.io/dockerconfigjson` Secret named `name` with the pull credentials.
    pub fn pull_secret(&self, name: &str) -> Result<k8s_openapi::api::core::v1::Secret> {
        let config = serde_json::json!({"auths": {self.host(): {
            "username": USER, "password": self.password}}});
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config.to_string()},
        }))?)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.proxy.abort();
        if let Ok(mut child) = self.child.lock()
            && let Some(child) = child.as_mut()
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 16 hex digits from the clock and the pid (a password only this run knows).
fn rand_hex() -> String {
    use sha2::Digest as _;
    let seed = format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
    );
    sha2::Sha256::digest(seed.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts on `listener` and relays each connection to `back`, late by the current delay.
async fn proxy(listener: TcpListener, back: std::net::SocketAddr, delay_ms: Arc<AtomicU64>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let delay_ms = delay_ms.clone();
        tokio::spawn(async move {
            let late = delay_ms.load(Ordering::SeqCst);
            if late > 0 {
                tokio::time::sleep(Duration::from_millis(late)).await;
            }
            // Down: the client's connection is closed at once.
            let Ok(server) = TcpStream::connect(back).await else {
                return;
            };
            relay(client, server, delay_ms).await;
        });
    }
}

/// Copies both ways until either side closes; chunks towards the registry wait the delay.
async fn relay(client: TcpStream, server: TcpStream, delay_ms: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let late = delay_ms.load(Ordering::SeqCst);
            if late > 0 {
                tokio::time::sleep(Duration::from_millis(late)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
