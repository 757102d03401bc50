//! OCI distribution pulls: resolve the manifest (pinned by digest when the reference has
//! one, and then checked against it), pick the plugin layer, stream it through the size
//! limit and the hash. The requests themselves are `registry.rs`'s. Credentials come from
//! the assignment or from a Kubernetes pull secret (`.dockerconfigjson`) mounted as a file.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::fetch::FetchError;
use crate::fetch::https::{self, HttpLimits};
use crate::fetch::registry::{Descriptor, Manifest, Repository};
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

    /// The host the registry's API answers on (Docker Hub's is not `docker.io`).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" => "index.docker.io",
            other => other,
        }
    }

    /// What names the manifest: its digest when pinned, else its tag.
    fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// Registry credentials from a `.dockerconfigjson` pull secret, by registry host.
#[derive(Clone, Default)]
pub struct PullSecrets(BTreeMap<String, (String, String)>);

impl std::fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hosts only: a debug print must not carry the passwords into a log.
        f.debug_tuple("PullSecrets")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

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

    /// The credentials for `host` (`host[:port]`), if the secret has an entry for it.
    pub fn credentials_for(&self, host: &str) -> Option<Credentials> {
        self.0.get(host).map(|(username, password)| Credentials {
            username: username.clone(),
            password: password.clone(),
        })
    }
}

/// Pulls plugin layers from OCI registries.
#[derive(Debug, Clone, Default)]
pub struct OciPuller {
    secrets: PullSecrets,
}

impl OciPuller {
    /// A puller with the sidecar's pull secret (the assignment's credentials, when it has
    /// some, take its place for the artifact's registry).
    pub fn new(secrets: PullSecrets) -> Self {
        OciPuller { secrets }
    }

    /// The repository of `r`, with the credentials for its registry: the assignment's,
    /// else the pull secret's.
    pub(crate) fn repository<'a>(
        &'a self,
        http: &'a reqwest::Client,
        limits: &'a HttpLimits,
        r: &OciRef,
        artifact: &'a str,
        credentials: Option<&Credentials>,
    ) -> Result<Repository<'a>, FetchError> {
        let credentials = credentials.cloned().or_else(|| {
            self.secrets
                .credentials_for(&r.registry)
                .or_else(|| self.secrets.credentials_for(r.api_host()))
        });
        let name = (r.api_host(), r.repository.as_str());
        Repository::new(http, limits, name, artifact, credentials, &self.secrets)
    }

    /// Streams the plugin layer of `r` into a staging file.
    pub(crate) async fn pull(
        &self,
        (http, limits): (&reqwest::Client, &HttpLimits),
        r: &OciRef,
        artifact: &str,
        digest: &Sha256Digest,
        store: &Store,
        credentials: Option<&Credentials>,
    ) -> Result<Staging, FetchError> {
        let mut repository = self.repository(http, limits, r, artifact, credentials)?;
        let manifest = resolve(&mut repository, r, artifact).await?;
        let layer = plugin_layer(&manifest, digest, artifact)?;
        if layer.size > limits.max_bytes {
            return Err(FetchError::TooLarge {
                artifact: artifact.into(),
                size: layer.size,
                limit: limits.max_bytes,
            });
        }
        let response = repository.blob(&layer.digest).await?;
        let declared = Some(layer.size).filter(|size| *size > 0);
        https::stage_response(response, artifact, store, limits, declared).await
    }
}

/// The manifest `r` names; a pinned one must hash to its pin.
pub(crate) async fn resolve(
    repository: &mut Repository<'_>,
    r: &OciRef,
    artifact: &str,
) -> Result<Manifest, FetchError> {
    let manifest = repository.manifest(r.manifest_reference()).await?;
    if let Some(pinned) = &r.digest
        && pinned != &manifest.digest.to_string()
    {
        return Err(FetchError::DigestMismatch {
            artifact: artifact.into(),
            expected: Sha256Digest::parse(pinned).map_err(|e| FetchError::BadReference {
                artifact: artifact.into(),
                reason: e.to_string(),
            })?,
            actual: manifest.digest,
        });
    }
    Ok(manifest)
}

/// The layer holding the plugin: the only one, or the one with the plugin's digest. Pure.
fn plugin_layer(
    manifest: &Manifest,
    digest: &Sha256Digest,
    artifact: &str,
) -> Result<Descriptor, FetchError> {
    match manifest.layers.as_slice() {
        [only] => Ok(only.clone()),
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
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let user = |host: &str| s.credentials_for(host).map(|c| (c.username, c.password));
        assert_eq!(
            user("reg.example:5000"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(user("other").map(|(u, _)| u), Some("a".into()));
        assert_eq!(user("unknown"), None);
        assert!(PullSecrets::parse(br#"{"auths":{"h":{"auth":"!!"}}}"#).is_err());
    }
}
