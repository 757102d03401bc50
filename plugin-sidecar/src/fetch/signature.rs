//! Signature policy: a release may require a cosign signature made with one public key, and
//! then an artifact that is unsigned, or signed with another key, is never handed on.
//!
//! - OCI artifacts carry cosign's signature image: tag `sha256-<manifest hex>.sig` in the
//!   same repository, each layer a simple-signing payload naming the manifest digest, its
//!   signature in an annotation. The sidecar resolves the manifest, checks it holds the
//!   plugin layer it verified, and verifies a payload that names that manifest.
//! - HTTPS artifacts carry a `cosign sign-blob` signature (base64) at `<url>.sig`, verified
//!   over the artifact's bytes.
//!
//! Verification runs for every assignment that asks for it, also when the blob is cached: the
//! cache proves the digest, not who signed it. A signature that verified is kept in the store
//! beside the blob ([`Kept`]), and is verified again, with the release's key, the next time:
//! a rollback to a cached revision needs no registry. Whatever is kept is only ever
//! evidence to check, never a verdict, since other containers can write the volume.
//! Signatures and payloads are read within [`MAX_SIGNATURE_BYTES`].

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature};

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::fetch::FetchError;
use crate::fetch::https::{HttpLimits, map_reqwest, read_body};
use crate::fetch::oci::{self, OciRef};
use crate::fetch::registry::{Descriptor, Manifest, Repository};
use crate::store::Store;

/// A `cosign sign-blob` signature is base64 of an ECDSA or Ed25519 signature (about 100
/// bytes), and a simple-signing payload a few hundred bytes: anything far larger is neither,
/// and is not read into memory.
pub const MAX_SIGNATURE_BYTES: usize = 8 * 1024;

/// Signature layers of one signature image tried at most.
const MAX_SIGNATURE_LAYERS: usize = 16;

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn refused(artifact: &str, reason: impl Into<String>) -> FetchError {
    FetchError::Signature {
        artifact: artifact.into(),
        reason: reason.into(),
    }
}

fn key_error(e: impl std::fmt::Display) -> String {
    format!("the release's public key is not a usable PEM public key: {e}")
}

/// The release's key, or why it cannot verify anything.
pub(crate) fn parse_key(artifact: &str, pem: &str) -> Result<CosignVerificationKey, FetchError> {
    CosignVerificationKey::try_from_pem(pem.as_bytes()).map_err(|e| refused(artifact, key_error(e)))
}

/// Names a key in the store: the first 16 hex digits of the SHA-256 of its PEM text.
pub(crate) fn key_id(pem: &str) -> String {
    Sha256::digest(pem.trim().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A signature that verified, as kept in the store next to the blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kept {
    /// A `cosign sign-blob` signature (base64) over the blob.
    Blob {
        /// The signature, base64.
        signature: String,
    },
    /// A cosign simple signing: a manifest that holds the blob, a payload naming that
    /// manifest's digest, and the signature over the payload.
    Image {
        /// The manifest's bytes, base64.
        manifest: String,
        /// The payload's bytes, base64.
        payload: String,
        /// The signature over the payload, base64.
        signature: String,
    },
}

impl Kept {
    /// Whether it proves that the holder of `key` signed the blob `digest` at `blob`.
    pub fn verify(
        &self,
        key: &CosignVerificationKey,
        digest: &Sha256Digest,
        blob: &Path,
    ) -> Result<(), String> {
        match self {
            Kept::Blob { signature } => blob_verifies(key, signature, blob),
            Kept::Image {
                manifest,
                payload,
                signature,
            } => {
                let decode = |what: &str, b64: &str| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("kept {what} is not base64: {e}"))
                };
                let manifest = Manifest::parse(decode("manifest", manifest)?)?;
                if !manifest.holds(digest) {
                    return Err(format!(
                        "kept manifest {} does not hold {digest}",
                        manifest.digest
                    ));
                }
                payload_verifies(
                    key,
                    &manifest.digest,
                    &decode("payload", payload)?,
                    signature,
                )
            }
        }
    }
}

/// Whether the base64 `signature` verifies over the stored file `blob` with `key`.
fn blob_verifies(key: &CosignVerificationKey, signature: &str, blob: &Path) -> Result<(), String> {
    let read_error = |e: std::io::Error| format!("read {}: {e}", blob.display());
    let file = std::fs::File::open(blob).map_err(read_error)?;
    // SAFETY: the blob is content-addressed and read-only (0444): the store only ever
    // replaces a blob by rename, never writes one in place, so the mapped bytes stay as
    // verified for as long as the map lives.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(read_error)?;
    key.verify_signature(
        Signature::Base64Encoded(signature.trim().as_bytes()),
        &bytes,
    )
    .map_err(|_| "the signature does not verify with the release's public key".into())
}

/// Whether `payload` is a simple signing of `manifest` and `signature` (base64) verifies over
/// it with `key`. Pure.
fn payload_verifies(
    key: &CosignVerificationKey,
    manifest: &Sha256Digest,
    payload: &[u8],
    signature: &str,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct SimpleSigning {
        critical: Critical,
    }
    #[derive(serde::Deserialize)]
    struct Critical {
        image: Image,
    }
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let signing: SimpleSigning = serde_json::from_slice(payload)
        .map_err(|e| format!("the payload is not a cosign simple signing: {e}"))?;
    if signing.critical.image.digest != manifest.to_string() {
        return Err(format!(
            "the payload signs {}, not {manifest}",
            signing.critical.image.digest
        ));
    }
    key.verify_signature(
        Signature::Base64Encoded(signature.trim().as_bytes()),
        payload,
    )
    .map_err(|_| "the signature does not verify with the release's public key".into())
}

/// Whether the signature kept for `digest` and the key `pem` verifies the blob at `blob`
/// (`false` when none is kept, or it does not verify: then it is looked up again).
pub(crate) fn kept_verifies(store: &Store, digest: &Sha256Digest, blob: &Path, pem: &str) -> bool {
    let limit = (crate::fetch::registry::MAX_MANIFEST_BYTES as u64) * 2;
    let Some(bytes) = store.signature(digest, &key_id(pem), limit) else {
        return false;
    };
    let checked = CosignVerificationKey::try_from_pem(pem.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|key| {
            let kept: Kept = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            kept.verify(&key, digest, blob)
        });
    match checked {
        Ok(()) => true,
        Err(reason) => {
            tracing::warn!(%digest, reason, "kept signature does not verify; looking it up again");
            false
        }
    }
}

/// Keeps `kept` for `digest` and the key `pem`; a failure only costs a lookup next time.
pub(crate) fn keep(store: &Store, digest: &Sha256Digest, pem: &str, kept: &Kept) {
    let saved = serde_json::to_vec(kept)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            store
                .save_signature(digest, &key_id(pem), &bytes)
                .map_err(|e| e.to_string())
        });
    if let Err(error) = saved {
        tracing::warn!(%digest, error, "cannot keep the verified signature");
    }
}

/// Verifies the cosign signature of an OCI artifact whose plugin layer is `layer`.
pub(crate) async fn verify_oci(
    artifact: &str,
    r: &OciRef,
    layer: &Sha256Digest,
    pem: &str,
    repository: &mut Repository<'_>,
) -> Result<Kept, FetchError> {
    let key = parse_key(artifact, pem)?;
    // The exact manifest the signature must name, and proof that it holds our layer.
    let manifest = oci::resolve(repository, r, artifact).await?;
    if !manifest.holds(layer) {
        return Err(FetchError::NoSuchLayer {
            artifact: artifact.into(),
            reason: format!("manifest {} no longer holds layer {layer}", manifest.digest),
        });
    }
    let unsigned = || {
        refused(
            artifact,
            format!("unsigned: no cosign signature for {}", manifest.digest),
        )
    };
    let tag = format!("sha256-{}.sig", manifest.digest.hex());
    let signatures = match repository.manifest(&tag).await {
        Ok(signatures) => signatures,
        Err(FetchError::NotFound { .. }) => return Err(unsigned()),
        Err(e) => return Err(e),
    };
    let candidates: Vec<_> = signatures
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING)
        .take(MAX_SIGNATURE_LAYERS)
        .collect();
    if candidates.is_empty() {
        return Err(unsigned());
    }
    let mut reasons = Vec::new();
    for candidate in &candidates {
        match candidate_verifies(repository, &key, &manifest, candidate, &tag).await? {
            Ok(kept) => return Ok(kept),
            Err(reason) => reasons.push(format!("{}: {reason}", candidate.digest)),
        }
    }
    Err(refused(
        artifact,
        format!(
            "none of the {} signature(s) of {} verifies with the release's public key ({})",
            candidates.len(),
            manifest.digest,
            reasons.join("; ")
        ),
    ))
}

/// Whether one signature layer signs `manifest` with `key` (`Ok(Err)`: it does not, and
/// why); `Err` when the registry could not be asked.
async fn candidate_verifies(
    repository: &mut Repository<'_>,
    key: &CosignVerificationKey,
    manifest: &Manifest,
    candidate: &Descriptor,
    tag: &str,
) -> Result<Result<Kept, String>, FetchError> {
    let Some(signature) = candidate.annotations.get(SIGNATURE_ANNOTATION) else {
        return Ok(Err("no signature annotation".into()));
    };
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Ok(Err(format!(
            "its signature is larger than {MAX_SIGNATURE_BYTES} bytes"
        )));
    }
    if candidate.size > MAX_SIGNATURE_BYTES as u64 {
        return Ok(Err(format!(
            "its payload is larger than {MAX_SIGNATURE_BYTES} bytes"
        )));
    }
    let what = format!("signature payload {} of {tag}", candidate.digest);
    let payload = match repository
        .small_blob(&candidate.digest, &what, MAX_SIGNATURE_BYTES)
        .await
    {
        Ok(payload) => payload,
        Err(e @ (FetchError::Oversized { .. } | FetchError::BadManifest { .. })) => {
            return Ok(Err(e.to_string()));
        }
        Err(e) => return Err(e),
    };
    Ok(payload_verifies(key, &manifest.digest, &payload, signature)
        .map(|()| image_kept(manifest, &payload, signature)))
}

fn image_kept(manifest: &Manifest, payload: &[u8], signature: &str) -> Kept {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Kept::Image {
        manifest: b64(&manifest.bytes),
        payload: b64(payload),
        signature: signature.trim().to_string(),
    }
}

/// Verifies the `cosign sign-blob` signature at `<url>.sig` over the stored file `blob`.
pub(crate) async fn verify_https(
    http: &reqwest::Client,
    url: &str,
    blob: &Path,
    pem: &str,
    credentials: Option<&Credentials>,
    limits: &HttpLimits,
) -> Result<Kept, FetchError> {
    let key = parse_key(url, pem)?;
    let sig_url = format!("{url}.sig");
    let mut request = http.get(&sig_url);
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let response = request
        .send()
        .await
        .map_err(|e| map_reqwest(&sig_url, &e, limits, 0))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(refused(url, format!("unsigned: no signature at {sig_url}")));
    }
    if let Some(err) = crate::fetch::error::status_failure(&sig_url, response.status().as_u16()) {
        return Err(err);
    }
    let text = read_body(response, url, &sig_url, MAX_SIGNATURE_BYTES, limits).await?;
    let signature = String::from_utf8(text).map_err(|_| {
        refused(
            url,
            format!("the signature at {sig_url} is not base64 text"),
        )
    })?;
    let verified = {
        let (signature, blob) = (signature.clone(), blob.to_path_buf());
        tokio::task::spawn_blocking(move || blob_verifies(&key, &signature, &blob)).await
    };
    match verified {
        Ok(Ok(())) => Ok(Kept::Blob {
            signature: signature.trim().to_string(),
        }),
        Ok(Err(reason)) => Err(refused(url, format!("{sig_url}: {reason}"))),
        Err(e) => Err(refused(url, format!("verifying {sig_url} failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_name_the_key_not_its_surrounding_whitespace() {
        assert_eq!(key_id("PEM\n"), key_id("PEM"));
        assert_ne!(key_id("PEM"), key_id("other PEM"));
        assert_eq!(key_id("PEM").len(), 16);
    }
}
