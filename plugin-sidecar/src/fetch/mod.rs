//! Fetching artifacts: parse the reference, reuse a verified cached blob when there is one,
//! otherwise download (HTTPS or OCI) with bounded, jittered retries, and publish into the
//! store only after the digest matched. Every attempt restarts from byte 0 into a fresh
//! staging file, so a torn attempt can never leak into the next.

pub mod error;
pub mod https;
pub mod oci;
pub mod registry;
pub mod retry;
pub mod signature;

use std::path::PathBuf;

pub use error::FetchError;
pub use https::HttpLimits;
pub use retry::RetryPolicy;

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::store::{Staging, Store, StoreError};

/// A parsed artifact location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRef {
    /// `https://host/path`.
    Https(String),
    /// `oci://registry/repository[:tag][@sha256:…]`.
    Oci(oci::OciRef),
}

impl ArtifactRef {
    /// Parses an artifact string. Pure.
    pub fn parse(artifact: &str) -> Result<Self, FetchError> {
        let bad = |reason: &str| FetchError::BadReference {
            artifact: artifact.into(),
            reason: reason.into(),
        };
        if let Some(rest) = artifact.strip_prefix("oci://") {
            return oci::OciRef::parse(rest)
                .map(ArtifactRef::Oci)
                .map_err(|r| bad(&r));
        }
        if artifact.starts_with("https://") && artifact.len() > "https://".len() {
            return Ok(ArtifactRef::Https(artifact.into()));
        }
        Err(bad(
            "want https://… or oci://registry/repo:tag@sha256:…; plain http is refused",
        ))
    }
}

/// A fetched, verified artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its path in the store.
    pub path: PathBuf,
    /// `false` when it was already cached.
    pub downloaded: bool,
    /// Download attempts made (0 when cached).
    pub attempts: u32,
}

/// Downloads artifacts into a [`Store`].
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    limits: HttpLimits,
    retry: RetryPolicy,
    oci: oci::OciPuller,
}

impl Fetcher {
    /// A fetcher with the given client (see [`https::build_client`]) and registry auth.
    pub fn new(
        http: reqwest::Client,
        limits: HttpLimits,
        retry: RetryPolicy,
        oci: oci::OciPuller,
    ) -> Self {
        Fetcher {
            http,
            limits,
            retry,
            oci,
        }
    }

    /// Returns the verified artifact, downloading it only if the store lacks it.
    pub async fn fetch(
        &self,
        artifact: &str,
        digest: &Sha256Digest,
        store: &Store,
    ) -> Result<Fetched, FetchError> {
        self.fetch_with(artifact, digest, store, None, None).await
    }

    /// [`Fetcher::fetch`] with credentials for the artifact's host (they take the place of
    /// the pull secret the sidecar was started with) and, with `signature_key`, a cosign
    /// signature that must verify with that key before the artifact is handed on.
    pub async fn fetch_with(
        &self,
        artifact: &str,
        digest: &Sha256Digest,
        store: &Store,
        credentials: Option<&Credentials>,
        signature_key: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let fetched = self
            .fetch_verified(artifact, digest, store, credentials)
            .await?;
        if let Some(key) = signature_key {
            self.check_signature(artifact, digest, &fetched, store, (key, credentials))
                .await?;
        }
        Ok(fetched)
    }

    /// Verifies the signature of the fetched blob with `key`: with the one kept from its
    /// first verification when that verifies (no registry needed), else looked up again
    /// within the whole-download timeout, and kept.
    async fn check_signature(
        &self,
        artifact: &str,
        digest: &Sha256Digest,
        fetched: &Fetched,
        store: &Store,
        (key, credentials): (&str, Option<&Credentials>),
    ) -> Result<(), FetchError> {
        let kept = {
            let (store, digest, path) = (store.clone(), digest.clone(), fetched.path.clone());
            let key = key.to_string();
            tokio::task::spawn_blocking(move || {
                signature::kept_verifies(&store, &digest, &path, &key)
            })
            .await
            .unwrap_or(false)
        };
        if kept {
            tracing::info!(artifact, %digest, "signature verified with the one kept from its first verification");
            return Ok(());
        }
        let lookup = self.look_up_signature(artifact, digest, &fetched.path, key, credentials);
        let found = tokio::time::timeout(self.limits.total_timeout, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    artifact: artifact.into(),
                    phase: "signature lookup",
                    after: self.limits.total_timeout,
                })
            })?;
        signature::keep(store, digest, key, &found);
        Ok(())
    }

    async fn look_up_signature(
        &self,
        artifact: &str,
        digest: &Sha256Digest,
        blob: &std::path::Path,
        key: &str,
        credentials: Option<&Credentials>,
    ) -> Result<signature::Kept, FetchError> {
        match ArtifactRef::parse(artifact)? {
            ArtifactRef::Https(url) => {
                signature::verify_https(&self.http, &url, blob, key, credentials, &self.limits)
                    .await
            }
            ArtifactRef::Oci(r) => {
                let mut repository =
                    self.oci
                        .repository(&self.http, &self.limits, &r, artifact, credentials)?;
                signature::verify_oci(artifact, &r, digest, key, &mut repository).await
            }
        }
    }

    async fn fetch_verified(
        &self,
        artifact: &str,
        digest: &Sha256Digest,
        store: &Store,
        credentials: Option<&Credentials>,
    ) -> Result<Fetched, FetchError> {
        let reference = ArtifactRef::parse(artifact)?;
        // Hashing a cached blob (up to the size limit) and fsyncing a new one block: they
        // run off the sidecar's one runtime thread, which keeps answering probes, the app
        // socket and the operator channel meanwhile.
        let cached = {
            let (store, digest) = (store.clone(), digest.clone());
            tokio::task::spawn_blocking(move || store.verified_blob(&digest))
                .await
                .ok()
                .flatten()
        };
        if let Some(path) = cached {
            return Ok(Fetched {
                path,
                downloaded: false,
                attempts: 0,
            });
        }
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = match &reference {
                ArtifactRef::Https(url) => {
                    https::download(&self.http, url, store, &self.limits, credentials).await
                }
                ArtifactRef::Oci(r) => {
                    // Each request is bounded by the client's timeouts; the pull is several
                    // (token, manifest, blob): together they get the same limit.
                    let client = (&self.http, &self.limits);
                    let pull = self
                        .oci
                        .pull(client, r, artifact, digest, store, credentials);
                    tokio::time::timeout(self.limits.total_timeout, pull)
                        .await
                        .unwrap_or_else(|_| {
                            Err(FetchError::Timeout {
                                artifact: artifact.into(),
                                phase: "whole pull",
                                after: self.limits.total_timeout,
                            })
                        })
                }
            };
            let committed = match result {
                Ok(staging) => {
                    let (store, name, digest) =
                        (store.clone(), artifact.to_string(), digest.clone());
                    tokio::task::spawn_blocking(move || commit(&store, staging, &name, &digest))
                        .await
                        .unwrap_or_else(|e| {
                            Err(FetchError::Store {
                                artifact: artifact.into(),
                                reason: format!("storing the download failed: {e}"),
                            })
                        })
                }
                Err(e) => Err(e),
            };
            let err = match committed {
                Ok(path) => {
                    return Ok(Fetched {
                        path,
                        downloaded: true,
                        attempts: attempt,
                    });
                }
                Err(e) => e,
            };
            if !err.retryable() || attempt >= attempts {
                return Err(err);
            }
            let delay = self.retry.backoff(attempt, fastrand::f64());
            tracing::warn!(artifact, attempt, error = %err, reason = err.label(), delay_ms = delay.as_millis() as u64, "fetch failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// A download is whole only if it has every byte the server announced.
pub(crate) fn complete(
    artifact: &str,
    staging: Staging,
    expected: Option<u64>,
) -> Result<Staging, FetchError> {
    match expected {
        Some(expected) if staging.len() < expected => Err(FetchError::Truncated {
            artifact: artifact.into(),
            received: staging.len(),
            expected,
        }),
        _ => Ok(staging),
    }
}

fn commit(
    store: &Store,
    staging: Staging,
    artifact: &str,
    digest: &Sha256Digest,
) -> Result<PathBuf, FetchError> {
    store.commit(staging, digest).map_err(|e| match e {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => FetchError::DigestMismatch {
            artifact: artifact.into(),
            expected,
            actual,
        },
        other => FetchError::Store {
            artifact: artifact.into(),
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_https_and_oci_and_refuses_plain_http() {
        assert_eq!(
            ArtifactRef::parse("https://h/p.wasm"),
            Ok(ArtifactRef::Https("https://h/p.wasm".into()))
        );
        assert!(matches!(
            ArtifactRef::parse("oci://reg:5000/team/auth:v1"),
            Ok(ArtifactRef::Oci(_))
        ));
        assert!(matches!(
            ArtifactRef::parse("http://h/p"),
            Err(FetchError::BadReference { .. })
        ));
        assert!(matches!(
            ArtifactRef::parse("https://"),
            Err(FetchError::BadReference { .. })
        ));
    }
}
