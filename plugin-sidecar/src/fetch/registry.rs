//! Talking to an OCI distribution registry about one repository, with the credentials for
//! that registry only. A request goes out without credentials; a 401 says how to
//! authenticate (`WWW-Authenticate`): `Basic` gets the registry's credentials, `Bearer`
//! sends the sidecar to a token service (the realm) for a token.
//!
//! ```text
//!  GET /v2/<repo>/manifests/<ref> ── 401 Bearer realm=… ──► GET <realm>?scope=repository:<repo>:pull
//!       ▲                                                    │ the registry's credentials only if
//!       └──── again, with Authorization: Bearer <token> ◄────┘ the realm is the registry's host
//! ```
//! Credentials go to the host they are for and nowhere else: a realm on another host gets
//! the pull secret's entry for that host if it has one, else an anonymous token request;
//! a redirect (a blob served from a CDN or an object store) carries no Authorization,
//! because reqwest drops it on a redirect to another host, port or scheme.
//! Every document is read within a limit (manifests 4 MiB, like registries' own limit,
//! tokens 64 KiB); blobs stream through the artifact limit.
//!
//! The sidecar speaks this itself rather than through `oci-client`, which reads manifests
//! and token responses whole and sends the registry's basic credentials to any realm.

use std::collections::BTreeMap;

use base64::Engine as _;
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::fetch::FetchError;
use crate::fetch::error::status_failure;
use crate::fetch::https::{HttpLimits, map_reqwest, read_body};
use crate::fetch::oci::PullSecrets;

/// The largest manifest read (distribution and most registries refuse larger ones).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest token-service response read (a token is a few KiB).
pub const MAX_TOKEN_BYTES: usize = 64 << 10;

/// The manifest media types asked for; an index is asked for too, to refuse it by name.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How a registry asks to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication at the registry itself.
    Basic,
    /// A token from the service at `realm`.
    Bearer {
        /// The token service's URL.
        realm: String,
        /// The `service` parameter to pass on, if any.
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value such as `Bearer realm="https://auth/token",
    /// service="registry"` or `Basic realm="registry"`; `None` for anything else. Pure.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut params = auth_params(rest);
        Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
        })
    }
}

/// `key=value` and `key="quoted \" value"` pairs, comma-separated, keys lower-cased.
fn auth_params(mut rest: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            return params;
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => unquote(quoted),
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        params.insert(key.trim().to_ascii_lowercase(), value);
        rest = after;
    }
}

/// The quoted string at the start of `s` (after its opening quote), and what follows it.
fn unquote(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
            '"' => return (value, &s[i + 1..]),
            c => value.push(c),
        }
    }
    (value, "")
}

/// Whether `a` and `b` are one origin: scheme, host and port. Pure.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The credentials a token service at `realm` may receive: the registry's own when the realm
/// is the registry's origin; for a realm elsewhere the pull secret's entry for the realm's
/// host, if it has one (the cluster's owner said so), else none. Pure.
pub fn realm_credentials(
    registry: &Url,
    realm: &Url,
    registry_credentials: Option<&Credentials>,
    secrets: &PullSecrets,
) -> Option<Credentials> {
    if same_origin(registry, realm) {
        return registry_credentials.cloned();
    }
    let host = realm.host_str()?;
    let key = match realm.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    secrets.credentials_for(&key)
}

/// A manifest as read: its bytes (what a signature names by digest) and its layers.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The bytes the registry sent.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Sha256Digest,
    /// The layers it lists.
    pub layers: Vec<Descriptor>,
}

/// One layer of a manifest.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes, as the manifest says.
    #[serde(default)]
    pub size: u64,
    /// Annotations (a cosign signature travels in one).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads an image manifest; an index or a manifest without layers is refused. Pure.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            layers: Vec<Descriptor>,
            manifests: Option<serde_json::Value>,
        }
        let raw: Raw =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if raw.manifests.is_some() {
            return Err("an image index, not one manifest: pin the plugin's own manifest".into());
        }
        if raw.layers.is_empty() {
            return Err("it lists no layers".into());
        }
        Ok(Manifest {
            digest: Sha256Digest::of(&bytes),
            bytes,
            layers: raw.layers,
        })
    }

    /// Whether it lists a layer with `digest`.
    pub fn holds(&self, digest: &Sha256Digest) -> bool {
        self.layers.iter().any(|l| l.digest == digest.to_string())
    }
}

/// One repository on one registry, and how the sidecar is authenticated there so far.
pub struct Repository<'a> {
    http: &'a reqwest::Client,
    limits: &'a HttpLimits,
    /// `https://<registry>/`.
    base: Url,
    name: String,
    /// Names the artifact in errors.
    artifact: &'a str,
    /// For the registry's host only.
    credentials: Option<Credentials>,
    /// Credentials for token services on other hosts.
    secrets: &'a PullSecrets,
    authorization: Option<HeaderValue>,
}

impl<'a> Repository<'a> {
    /// `name` on `registry` (host and port), for `artifact`, with `credentials` for it.
    pub fn new(
        http: &'a reqwest::Client,
        limits: &'a HttpLimits,
        (registry, name): (&str, &str),
        artifact: &'a str,
        credentials: Option<Credentials>,
        secrets: &'a PullSecrets,
    ) -> Result<Self, FetchError> {
        let base =
            Url::parse(&format!("https://{registry}/")).map_err(|e| FetchError::BadReference {
                artifact: artifact.into(),
                reason: format!("registry {registry:?} is not a host: {e}"),
            })?;
        Ok(Repository {
            http,
            limits,
            base,
            name: name.into(),
            artifact,
            credentials,
            secrets,
            authorization: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}v2/{}/{path}", self.base, self.name)
    }

    async fn send(&self, url: &str, accept: &str) -> Result<reqwest::Response, FetchError> {
        let mut request = self.http.get(url).header(ACCEPT, accept);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        request
            .send()
            .await
            .map_err(|e| map_reqwest(self.artifact, &e, self.limits, 0))
    }

    /// GETs `path` under the repository, authenticating once if the registry asks to.
    async fn get(&mut self, path: &str, accept: &str) -> Result<reqwest::Response, FetchError> {
        let url = self.url(path);
        let response = self.send(&url, accept).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED || self.authorization.is_some() {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(Challenge::parse);
        let Some(authorization) = self.authorize(challenge).await? else {
            return Ok(response);
        };
        self.authorization = Some(authorization);
        self.send(&url, accept).await
    }

    /// The Authorization answering `challenge`, if the sidecar has one to give.
    async fn authorize(
        &self,
        challenge: Option<Challenge>,
    ) -> Result<Option<HeaderValue>, FetchError> {
        match challenge {
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(basic)),
            Some(Challenge::Bearer { realm, service }) => {
                let token = self.token(&realm, service.as_deref()).await?;
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        self.auth_error(format!("the token from {realm} is not a header value"))
                    })?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    fn auth_error(&self, reason: String) -> FetchError {
        FetchError::Auth {
            artifact: self.artifact.into(),
            reason,
        }
    }

    /// A pull token for the repository from the token service at `realm`.
    async fn token(&self, realm: &str, service: Option<&str>) -> Result<String, FetchError> {
        let url = Url::parse(realm)
            .map_err(|e| self.auth_error(format!("token service {realm:?} is not a URL: {e}")))?;
        let credentials =
            realm_credentials(&self.base, &url, self.credentials.as_ref(), self.secrets);
        let scope = format!("repository:{}:pull", self.name);
        let mut request = self.http.get(url.clone()).query(&[("scope", &scope)]);
        if let Some(service) = service {
            request = request.query(&[("service", service)]);
        }
        if let Some(c) = &credentials {
            request = request.header(AUTHORIZATION, basic(c));
        }
        let response = request
            .send()
            .await
            .map_err(|e| map_reqwest(self.artifact, &e, self.limits, 0))?;
        let status = response.status().as_u16();
        if matches!(status, 401 | 403) {
            return Err(self.token_refused(&url, status, credentials.is_some()));
        }
        if let Some(err) = status_failure(self.artifact, status) {
            return Err(err);
        }
        let what = format!("token response from {realm}");
        let body = read_body(response, self.artifact, &what, MAX_TOKEN_BYTES, self.limits).await?;
        parse_token(&body).map_err(|reason| self.auth_error(format!("{what}: {reason}")))
    }

    fn token_refused(&self, realm: &Url, status: u16, sent_credentials: bool) -> FetchError {
        let registry = self.base.host_str().unwrap_or_default();
        let why = if sent_credentials || self.credentials.is_none() {
            String::new()
        } else {
            format!(
                "; it is not on {registry}, so {registry}'s credentials were not sent there \
                 (add an entry for its host to the pull secret to allow it)"
            )
        };
        self.auth_error(format!("token service {realm} answered HTTP {status}{why}"))
    }

    /// The manifest `reference` (a tag or a digest), read within [`MAX_MANIFEST_BYTES`].
    pub async fn manifest(&mut self, reference: &str) -> Result<Manifest, FetchError> {
        let path = format!("manifests/{reference}");
        let response = self.get(&path, MANIFEST_TYPES).await?;
        if let Some(err) = status_failure(self.artifact, response.status().as_u16()) {
            return Err(err);
        }
        let what = format!("manifest {}", self.url(&path));
        let bytes = read_body(
            response,
            self.artifact,
            &what,
            MAX_MANIFEST_BYTES,
            self.limits,
        )
        .await?;
        Manifest::parse(bytes).map_err(|reason| FetchError::BadManifest {
            artifact: self.artifact.into(),
            reason: format!("{what}: {reason}"),
        })
    }

    /// The blob `digest`, its status checked, for its body to be streamed.
    pub async fn blob(&mut self, digest: &str) -> Result<reqwest::Response, FetchError> {
        let response = self.get(&format!("blobs/{digest}"), "*/*").await?;
        match status_failure(self.artifact, response.status().as_u16()) {
            Some(err) => Err(err),
            None => Ok(response),
        }
    }

    /// A small blob (`what`) read whole within `limit` bytes, checked against its digest.
    pub async fn small_blob(
        &mut self,
        digest: &str,
        what: &str,
        limit: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let response = self.blob(digest).await?;
        let bytes = read_body(response, self.artifact, what, limit, self.limits).await?;
        let actual = Sha256Digest::of(&bytes);
        if actual.to_string() != digest {
            return Err(FetchError::BadManifest {
                artifact: self.artifact.into(),
                reason: format!("{what}: blob {digest} hashes to {actual}"),
            });
        }
        Ok(bytes)
    }
}

fn basic(c: &Credentials) -> HeaderValue {
    let pair = format!("{}:{}", c.username, c.password);
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    // Base64 is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// The token in a token service's JSON answer (`token`, or OAuth's `access_token`). Pure.
fn parse_token(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "no token in it".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_name_basic_or_a_token_service() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="hotload-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer Realm="https://a/t?x=1,2", service=plain"#),
            Some(Challenge::Bearer {
                realm: "https://a/t?x=1,2".into(),
                service: Some("plain".into()),
            }),
            "case, commas inside quotes and unquoted values"
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None
            })
        );
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn credentials_go_to_the_registrys_own_token_service_only() {
        let url = |s: &str| Url::parse(s).expect("url");
        let mine = Credentials {
            username: "robot".into(),
            password: "pw".into(),
        };
        let none = PullSecrets::default();
        let registry = url("https://reg.example:5000/");
        let given = |realm: &str, secrets: &PullSecrets| {
            realm_credentials(&registry, &url(realm), Some(&mine), secrets).map(|c| c.username)
        };
        assert_eq!(
            given("https://reg.example:5000/token", &none),
            Some("robot".into())
        );
        assert_eq!(given("https://auth.example/token", &none), None);
        assert_eq!(
            given("https://reg.example:5001/token", &none),
            None,
            "another port"
        );
        assert_eq!(
            given("http://reg.example:5000/token", &none),
            None,
            "another scheme"
        );
        let listed = PullSecrets::parse(
            br#"{"auths":{"auth.example":{"username":"hub","password":"x"},"auth.example:8443":{"username":"port","password":"y"}}}"#,
        )
        .expect("secret");
        assert_eq!(
            given("https://auth.example/token", &listed),
            Some("hub".into()),
            "the pull secret names the realm's host: its own entry goes there"
        );
        assert_eq!(
            given("https://auth.example:8443/token", &listed),
            Some("port".into())
        );
    }

    #[test]
    fn manifests_are_image_manifests_with_layers() {
        let layer = format!("sha256:{}", "a".repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/wasm","digest":"{layer}","size":7}}]}}"#
        );
        let m = Manifest::parse(json.clone().into_bytes()).expect("manifest");
        assert_eq!(m.digest, Sha256Digest::of(json.as_bytes()));
        assert!(m.holds(&Sha256Digest::parse(&layer).expect("digest")));
        assert_eq!(m.layers[0].size, 7);
        let index = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        assert!(Manifest::parse(index).is_err_and(|e| e.contains("image index")));
        assert!(Manifest::parse(b"{".to_vec()).is_err_and(|e| e.contains("not a manifest")));
        assert!(
            Manifest::parse(br#"{"layers":[]}"#.to_vec()).is_err_and(|e| e.contains("no layers"))
        );
    }

    #[test]
    fn token_answers_carry_token_or_access_token() {
        assert_eq!(parse_token(br#"{"token":"t1"}"#), Ok("t1".into()));
        assert_eq!(parse_token(br#"{"access_token":"t2"}"#), Ok("t2".into()));
        assert!(parse_token(br#"{"token":""}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
    }
}
