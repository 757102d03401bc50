//! Serving TLS with certificates that change under a running server.
//!
//! ```text
//!  Secret <name> ◀──create/replace── keep() ──▶ MutatingWebhookConfiguration caBundle
//!        │                             │
//!        └────────── read ─────────────┴──▶ CertStore ──▶ listener::incoming ──▶ channel + webhook
//! ```
//!
//! [`keep`] looks after the Secret: every replica reads it, whoever finds it missing or due
//! ([`certs::assess`]) writes it with optimistic concurrency, and all of them hand the
//! result to the [`CertStore`], which the listeners consult on every handshake. With
//! cert-manager the Secret is someone else's and `keep` only reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::certs::{self, Material, PreviousCa};

/// The material currently served, swapped in place on rotation.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(Arc<Material>, Arc<CertifiedKey>)>>,
}

impl CertStore {
    /// Serves `material` from the next handshake on.
    pub fn set(&self, material: Material) -> anyhow::Result<()> {
        let certified = certified_key(&material)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Some((Arc::new(material), Arc::new(certified)));
        Ok(())
    }

    /// The material being served, if any yet.
    pub fn material(&self) -> Option<Arc<Material>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|(material, _)| material.clone())
    }

    /// A rustls configuration that always presents the current certificate.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|(_, key)| key.clone())
    }
}

fn certified_key(material: &Material) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(material.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("tls.crt is not PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(material.key.as_bytes()).context("tls.key is not PEM")?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .context("tls.key is not a supported private key")?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files, read once (a local run).
    Files {
        /// `tls.crt`.
        cert: std::path::PathBuf,
        /// `tls.key`.
        key: std::path::PathBuf,
        /// The CA that signed it, for injected sidecars; without it there is no webhook.
        ca: Option<std::path::PathBuf>,
    },
    /// A Secret in the operator's namespace.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The operator creates and renews it (else cert-manager does, and it is only read).
        managed: bool,
        /// The names the serving certificate must carry.
        dns_names: Vec<String>,
        /// How long a serving certificate the operator issues is valid.
        validity: Duration,
        /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
        webhook_config: Option<String>,
    },
}

/// Loads the first certificate (so nothing listens before there is one), then keeps it
/// current for as long as the process runs. Reading the Secret is retried (capped back-off)
/// until it works: an API server that is briefly away does not end the process.
pub async fn start(
    client: Client,
    source: CertSource,
    store: Arc<CertStore>,
) -> anyhow::Result<()> {
    match source {
        CertSource::Files { cert, key, ca } => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            store.set(Material {
                ca_cert: ca.as_deref().map(read).transpose()?.unwrap_or_default(),
                ca_key: None,
                cert: read(&cert)?,
                key: read(&key)?,
                previous: None,
            })?;
        }
        CertSource::Secret { .. } => {
            let mut backoff = Duration::from_secs(1);
            let wait = loop {
                match sync_secret(&client, &source, &store).await {
                    Ok(wait) => break wait,
                    Err(error) => {
                        let error = format!("{error:#}");
                        tracing::warn!(
                            error,
                            retry_in_s = backoff.as_secs(),
                            "loading the serving certificate"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            tokio::spawn(keep(client, source, store, wait));
        }
    }
    Ok(())
}

async fn keep(client: Client, source: CertSource, store: Arc<CertStore>, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        wait = match sync_secret(&client, &source, &store).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "keeping the serving certificate"
                );
                Duration::from_secs(10)
            }
        };
    }
}

/// One pass: read the Secret, renew or restore it if due and ours to, serve what it holds,
/// publish the trust bundle to the webhook configuration. Returns when to look again.
async fn sync_secret(
    client: &Client,
    source: &CertSource,
    store: &CertStore,
) -> anyhow::Result<Duration> {
    let CertSource::Secret {
        namespace,
        name,
        managed,
        dns_names,
        validity,
        webhook_config,
    } = source
    else {
        return Ok(Duration::from_secs(3600));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let object = format!("Secret {namespace}/{name}");
    let (material, next) = if *managed {
        let served = store.material();
        let material = keep_secret(&secrets, name, served.as_deref(), dns_names, *validity)
            .await
            .with_context(|| object.clone())?;
        let next = certs::next_check(&material, OffsetDateTime::now_utc());
        (material, next)
    } else {
        let existing = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("reading {object}"))?;
        let material = existing.as_ref().and_then(material_of).with_context(|| {
            format!("{object} has no ca.crt, tls.crt and tls.key (is cert-manager issuing it?)")
        })?;
        (material, Duration::from_secs(60))
    };
    if store.material().is_none_or(|m| *m != material) {
        store
            .set(material.clone())
            .with_context(|| format!("serving {object}"))?;
    }
    if let (true, Some(config)) = (*managed, webhook_config) {
        publish_ca_bundle(client, config, &material.trust_bundle()).await?;
    }
    Ok(next)
}

/// Reads the operator's own Secret and renews, rotates or restores it as [`certs::carry_on`]
/// decides (from it and from `served`), with optimistic concurrency: another replica's
/// write wins, and is what is used. Returns what the Secret holds now.
async fn keep_secret(
    secrets: &Api<Secret>,
    name: &str,
    served: Option<&Material>,
    names: &[String],
    validity: Duration,
) -> anyhow::Result<Material> {
    loop {
        let existing = secrets.get_opt(name).await.context("reading")?;
        let stored = existing.as_ref().and_then(material_of);
        let now = OffsetDateTime::now_utc();
        let (basis, renewal) = certs::carry_on(stored.as_ref(), served, names, now);
        let Some(renewed) = certs::renew(basis, &renewal, names, now, validity)? else {
            return basis.cloned().context("assessed as current");
        };
        match write_secret(secrets, name, existing, &renewed).await {
            Ok(()) => {
                tracing::info!(secret = name, reason = ?renewal, "wrote the serving certificate");
                return Ok(renewed);
            }
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).context("writing"),
        }
    }
}

/// Replaces `existing` (its resourceVersion guards the write) or creates the Secret.
async fn write_secret(
    secrets: &Api<Secret>,
    name: &str,
    existing: Option<Secret>,
    material: &Material,
) -> Result<(), kube::Error> {
    match existing {
        Some(mut secret) => {
            secret.data = Some(secret_data(material));
            secrets
                .replace(name, &PostParams::default(), &secret)
                .await?;
        }
        None => {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "hotload-operator".to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(secret_data(material)),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &secret).await?;
        }
    }
    Ok(())
}

/// The material a Secret holds: `ca.crt`, `tls.crt` and `tls.key`, with `ca.key` when the
/// operator issued it, and the previous CA (`ca-previous.crt`, `ca-cross.crt`) during a
/// rotation.
fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let previous = text(PREVIOUS_CA)
        .zip(text(CROSS_CERT))
        .map(|(ca_cert, cross)| PreviousCa { ca_cert, cross });
    Some(Material {
        ca_cert: text("ca.crt")?,
        ca_key: text("ca.key"),
        cert: text("tls.crt")?,
        key: text("tls.key")?,
        previous,
    })
}

/// The Secret key of the CA a rotation replaced.
const PREVIOUS_CA: &str = "ca-previous.crt";

/// The Secret key of the current CA cross-signed by the previous one.
const CROSS_CERT: &str = "ca-cross.crt";

fn secret_data(material: &Material) -> BTreeMap<String, ByteString> {
    let bytes = |text: &String| ByteString(text.clone().into_bytes());
    let mut data = BTreeMap::from([
        ("ca.crt".to_string(), bytes(&material.ca_cert)),
        ("tls.crt".to_string(), bytes(&material.cert)),
        ("tls.key".to_string(), bytes(&material.key)),
    ]);
    if let Some(key) = &material.ca_key {
        data.insert("ca.key".into(), bytes(key));
    }
    if let Some(previous) = &material.previous {
        data.insert(PREVIOUS_CA.into(), bytes(&previous.ca_cert));
        data.insert(CROSS_CERT.into(), bytes(&previous.cross));
    }
    data
}

/// Sets every webhook's caBundle in `config` to `ca_pem` (the trust bundle). A JSON patch that tests each
/// entry's name first, so a concurrent edit of the list fails the patch instead of putting
/// a bundle on the wrong webhook; Helm never sets caBundle, so upgrades leave it alone.
async fn publish_ca_bundle(client: &Client, config: &str, ca_pem: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let object = format!("MutatingWebhookConfiguration {config}");
    let current = api
        .get(config)
        .await
        .with_context(|| format!("reading {object}"))?;
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut operations = Vec::new();
    for (index, hook) in current.webhooks.iter().flatten().enumerate() {
        if hook.client_config.ca_bundle.as_ref() == Some(&bundle) {
            continue;
        }
        operations.push(serde_json::json!(
            {"op": "test", "path": format!("/webhooks/{index}/name"), "value": hook.name}));
        operations.push(serde_json::json!({"op": "add",
            "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": bundle}));
    }
    if operations.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
        .context("building the caBundle patch")?;
    api.patch(config, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("setting the caBundle of {object}"))?;
    tracing::info!(%config, "published the CA to the webhook configuration");
    Ok(())
}
