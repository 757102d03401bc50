//! OCI distribution pulls via `oci-client`: resolve the manifest (pinned by digest when the
//! reference has one), pick the plugin layer, stream it through the size limit and the hash.
//! Credentials come from a Kubernetes pull secret (`.dockerconfigjson`) mounted as a file.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use futures::StreamExt;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::fetch::error::{FetchError, TransportCause, status_failure, transport_cause};
use crate::fetch::https::{HttpLimits, map_reqwest};
use crate::store::{Staging, Store};

/// A parsed `registry/repository[:tag][@sha256:…]` (the part after `oci://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// Registry host, with port if any.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Manifest digest, if given (then the tag is informational).
    pub digest: Option<String>,
}

impl OciRef {
    /// Parses the reference. Pure.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                Sha256Digest::parse(d).map_err(|e| e.to_string())?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (registry, path) = name
            .split_once('/')
            .ok_or("missing repository after the registry")?;
        // A ':' after the last '/' is a tag; one before it belongs to the registry's port.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if registry.is_empty() || repository.is_empty() || tag.as_deref() == Some("") {
            return Err("want registry/repository[:tag][@sha256:…]".into());
        }
        if tag.is_none() && digest.is_none() {
            return Err("pin the manifest with :tag@sha256:… (or at least a tag)".into());
        }
        Ok(OciRef {
            registry: registry.into(),
            repository: repository.into(),
            tag,
            digest,
        })
    }

    pub(crate) fn reference(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (t, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

/// Registry credentials from a `.dockerconfigjson` pull secret, by registry host.
#[derive(Debug, Clone, Default)]
pub struct PullSecrets(BTreeMap<String, (String, String)>);

impl PullSecrets {
    /// Parses `{"auths":{"host":{"auth":"base64(user:pass)"}|{"username":…,"password":…}}}`. Pure.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Config {
            auths: BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let cfg: Config = serde_json::from_slice(json).map_err(|e| format!("pull secret: {e}"))?;
        let mut out = BTreeMap::new();
        for (host, e) in cfg.auths {
            let pair = match (e.username, e.password, e.auth) {
                (Some(u), Some(p), _) => (u, p),
                (_, _, Some(auth)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| {
                            format!("pull secret entry {host}: auth is not base64: {e}")
                        })?;
                    let text = String::from_utf8(raw)
                        .map_err(|_| format!("pull secret entry {host}: auth is not UTF-8"))?;
                    let (u, p) = text.split_once(':').ok_or_else(|| {
                        format!("pull secret entry {host}: auth is not user:password")
                    })?;
                    (u.to_string(), p.to_string())
                }
                _ => {
                    return Err(format!(
                        "pull secret entry {host}: no auth or username/password"
                    ));
                }
            };
            // Secrets often spell hosts as URLs (https://host/v1/); match on the bare host.
            let bare = host
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            out.insert(bare.split('/').next().unwrap_or(bare).to_string(), pair);
        }
        Ok(PullSecrets(out))
    }

    /// The auth to use for `registry`.
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self.0.get(registry) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// The clients of an [`OciPuller`], by registry, each with the auth it was made for.
#[derive(Default)]
struct Clients(BTreeMap<String, (RegistryAuth, Arc<Client>)>);

impl Clients {
    /// The client for `registry` if it was made for `auth`; else `make` one and keep it in its
    /// place.
    fn for_auth(
        &mut self,
        registry: &str,
        auth: &RegistryAuth,
        make: impl FnOnce() -> Client,
    ) -> Arc<Client> {
        match self.0.get(registry) {
            Some((made_for, client)) if made_for == auth => client.clone(),
            _ => {
                let client = Arc::new(make());
                self.0
                    .insert(registry.to_string(), (auth.clone(), client.clone()));
                client
            }
        }
    }
}

/// Pulls plugin layers from OCI registries.
#[derive(Clone)]
pub struct OciPuller {
    /// One client per registry, made on its first pull (a sidecar that never pulls from a
    /// registry never pays for a second HTTPS client and its root store), with the auth it
    /// was made for: an `oci_client::Client` keeps the first auth it is given for a registry,
    /// and its tokens, so other credentials need a client of their own.
    clients: Arc<std::sync::Mutex<Clients>>,
    /// Trusted besides the platform roots (the signature client uses it too).
    extra_ca_pem: Option<Vec<u8>>,
    limits: HttpLimits,
    secrets: PullSecrets,
}

impl OciPuller {
    /// A puller trusting the platform roots plus `extra_ca_pem`.
    pub fn new(limits: &HttpLimits, extra_ca_pem: Option<&[u8]>, secrets: PullSecrets) -> Self {
        crate::ensure_crypto_provider();
        OciPuller {
            clients: Arc::default(),
            extra_ca_pem: extra_ca_pem.map(<[u8]>::to_vec),
            limits: limits.clone(),
            secrets,
        }
    }

    /// The client for `registry` with `auth`: the one made for that auth, else a new one
    /// (which replaces a client made for other credentials).
    fn client(&self, registry: &str, auth: &RegistryAuth) -> Arc<Client> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.for_auth(registry, auth, || Client::new(self.client_config()))
    }

    /// The extra CA bundle registries are trusted with (the signature client uses it too).
    pub(crate) fn extra_ca_pem(&self) -> Option<&[u8]> {
        self.extra_ca_pem.as_deref()
    }

    fn client_config(&self) -> oci_client::client::ClientConfig {
        oci_client::client::ClientConfig {
            extra_root_certificates: self
                .extra_ca_pem
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            read_timeout: Some(self.limits.read_timeout),
            connect_timeout: Some(self.limits.connect_timeout),
            ..Default::default()
        }
    }

    /// The auth for `r`: the assignment's credentials, else the pull secret's.
    pub(crate) fn auth(&self, r: &OciRef, credentials: Option<&Credentials>) -> RegistryAuth {
        match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => self.secrets.auth_for(&r.registry),
        }
    }

    /// Resolves `r` to its manifest digest and checks that the manifest holds `layer`.
    pub(crate) async fn manifest_holding(
        &self,
        r: &OciRef,
        artifact: &str,
        layer: &Sha256Digest,
        auth: &RegistryAuth,
    ) -> Result<String, FetchError> {
        let (manifest, digest) = self
            .client(&r.registry, auth)
            .pull_image_manifest(&r.reference(), auth)
            .await
            .map_err(|e| map_oci(artifact, e, &self.limits))?;
        if manifest
            .layers
            .iter()
            .any(|l| l.digest == layer.to_string())
        {
            Ok(digest)
        } else {
            Err(FetchError::NoSuchLayer {
                artifact: artifact.into(),
                reason: format!("manifest {digest} no longer holds layer {layer}"),
            })
        }
    }

    /// Streams the plugin layer of `r` into a staging file.
    pub(crate) async fn pull(
        &self,
        r: &OciRef,
        artifact: &str,
        digest: &Sha256Digest,
        store: &Store,
        limits: &HttpLimits,
        credentials: Option<&Credentials>,
    ) -> Result<Staging, FetchError> {
        let reference = r.reference();
        let auth = self.auth(r, credentials);
        let client = self.client(&r.registry, &auth);
        let (manifest, _manifest_digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(|e| map_oci(artifact, e, limits))?;
        let layer = match manifest.layers.as_slice() {
            [only] => only.clone(),
            layers => layers
                .iter()
                .find(|l| l.digest == digest.to_string())
                .cloned()
                .ok_or_else(|| {
                    let seen: Vec<_> = layers.iter().map(|l| l.digest.as_str()).collect();
                    FetchError::NoSuchLayer {
                        artifact: artifact.into(),
                        reason: format!("no layer with digest {digest} (layers: {seen:?})"),
                    }
                })?,
        };
        let declared = u64::try_from(layer.size).unwrap_or(0);
        if declared > limits.max_bytes {
            return Err(FetchError::TooLarge {
                artifact: artifact.into(),
                size: declared,
                limit: limits.max_bytes,
            });
        }
        let mut stream = client
            .pull_blob_stream(&reference, &layer)
            .await
            .map_err(|e| map_oci(artifact, e, limits))?;
        let expected = stream.content_length.or(Some(declared).filter(|d| *d > 0));
        let store_err = |e: crate::store::StoreError| FetchError::Store {
            artifact: artifact.into(),
            reason: e.to_string(),
        };
        let mut staging = store.stage().map_err(store_err)?;
        while let Some(chunk) = stream.next().await {
            let received = staging.len();
            let chunk = chunk.map_err(|e| match transport_cause(&e) {
                TransportCause::Reset => FetchError::ConnectionReset {
                    artifact: artifact.into(),
                    received,
                },
                _ => match expected {
                    Some(expected) => FetchError::Truncated {
                        artifact: artifact.into(),
                        received,
                        expected,
                    },
                    None => FetchError::Other {
                        artifact: artifact.into(),
                        reason: e.to_string(),
                    },
                },
            })?;
            let size = received + chunk.len() as u64;
            if size > limits.max_bytes {
                return Err(FetchError::TooLarge {
                    artifact: artifact.into(),
                    size,
                    limit: limits.max_bytes,
                });
            }
            staging.write(&chunk).map_err(store_err)?;
        }
        super::complete(artifact, staging, expected)
    }
}

/// Maps an `oci-client` error to a precise failure.
fn map_oci(artifact: &str, err: OciDistributionError, limits: &HttpLimits) -> FetchError {
    let a = || artifact.to_string();
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => FetchError::Unauthorized {
            artifact: a(),
            status: 401,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => {
            FetchError::NotFound { artifact: a() }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                FetchError::Unauthorized {
                    artifact: a(),
                    status: 401,
                }
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                )
            }) {
                FetchError::NotFound { artifact: a() }
            } else {
                FetchError::Other {
                    artifact: a(),
                    reason: format!("registry error: {codes:?}"),
                }
            }
        }
        OciDistributionError::ServerError { code, message, .. } => status_failure(artifact, code)
            .unwrap_or_else(|| FetchError::Other {
                artifact: a(),
                reason: format!("HTTP {code}: {message}"),
            }),
        OciDistributionError::RequestError(e) => map_reqwest(artifact, &e, limits, 0),
        other => FetchError::Other {
            artifact: a(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_credentials_for_a_registry_get_a_client_of_their_own() {
        let mut clients = Clients::default();
        let basic = |user: &str| RegistryAuth::Basic(user.into(), "pw".into());
        let a = clients.for_auth("reg:5000", &basic("a"), Client::default);
        let again = clients.for_auth("reg:5000", &basic("a"), Client::default);
        assert!(
            Arc::ptr_eq(&a, &again),
            "the same credentials reuse their client"
        );
        let b = clients.for_auth("reg:5000", &basic("b"), Client::default);
        assert!(
            !Arc::ptr_eq(&a, &b),
            "other credentials must not reuse a's auth"
        );
        let anonymous = clients.for_auth("reg:5000", &RegistryAuth::Anonymous, Client::default);
        assert!(!Arc::ptr_eq(&b, &anonymous));
        let other = clients.for_auth("other:5000", &RegistryAuth::Anonymous, Client::default);
        assert!(!Arc::ptr_eq(&anonymous, &other), "a client per registry");
        assert_eq!(clients.0.len(), 2, "one client kept per registry");
    }

    #[test]
    fn parses_registry_port_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("127.0.0.1:5000/team/auth:v1@{d}")).expect("parses");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/auth");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, Some(d));
        let r = OciRef::parse("reg:5000/auth:v2").expect("parses");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref(), r.digest),
            ("auth", Some("v2"), None)
        );
    }

    #[test]
    fn refuses_unpinned_or_malformed_references() {
        assert!(OciRef::parse("reg/auth").is_err());
        assert!(OciRef::parse("auth:v1").is_err());
        assert!(OciRef::parse("reg/auth:v1@sha256:short").is_err());
    }

    #[test]
    fn pull_secret_accepts_auth_and_username_forms() {
        let json = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other":{"username":"a","password":"b"}}}"#;
        let s = PullSecrets::parse(json).expect("parses");
        assert!(
            matches!(s.auth_for("reg.example:5000"), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(matches!(s.auth_for("other"), RegistryAuth::Basic(u, _) if u == "a"));
        assert!(matches!(s.auth_for("unknown"), RegistryAuth::Anonymous));
        assert!(PullSecrets::parse(br#"{"auths":{"h":{"auth":"!!"}}}"#).is_err());
    }
}
