//! Signature policy: a release may require a cosign signature made with one public key, and
//! then an artifact that is unsigned, or signed with another key, is never handed on.
//!
//! - OCI artifacts carry cosign's signature image: tag `sha256-<manifest hex>.sig` in the
//!   same repository, whose simple-signing payload names the manifest digest. The sidecar
//!   resolves the manifest, checks it holds the plugin layer it verified, and lets sigstore
//!   find and verify the signature layers against the key.
//! - HTTPS artifacts carry a `cosign sign-blob` signature (base64) at `<url>.sig`, verified
//!   over the artifact's bytes.
//!
//! Verification runs for every assignment that asks for it, also when the blob is cached: the
//! cache proves the digest, not who signed it.

use std::path::Path;

use oci_client::secrets::RegistryAuth;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{ClientBuilder, CosignCapabilities, verify_constraints};
use sigstore::crypto::{CosignVerificationKey, Signature};
use sigstore::registry::{Auth, Certificate, CertificateEncoding, ClientConfig, OciReference};

use crate::assignment::Credentials;
use crate::digest::Sha256Digest;
use crate::fetch::FetchError;
use crate::fetch::https::{HttpLimits, map_reqwest};
use crate::fetch::oci::{OciPuller, OciRef};

fn refused(artifact: &str, reason: impl Into<String>) -> FetchError {
    FetchError::Signature {
        artifact: artifact.into(),
        reason: reason.into(),
    }
}

fn key_error(e: impl std::fmt::Display) -> String {
    format!("the release's public key is not a usable PEM public key: {e}")
}

/// Verifies the cosign signature of an OCI artifact whose plugin layer is `layer`.
pub(crate) async fn verify_oci(
    artifact: &str,
    r: &OciRef,
    layer: &Sha256Digest,
    public_key: &str,
    auth: &RegistryAuth,
    oci: &OciPuller,
) -> Result<(), FetchError> {
    let verifier = PublicKeyVerifier::try_from(public_key.as_bytes())
        .map_err(|e| refused(artifact, key_error(e)))?;
    // The exact manifest the signature must name, and proof that it holds our layer.
    let manifest = oci.manifest_holding(r, artifact, layer, auth).await?;
    let source: OciReference = format!("{}/{}@{manifest}", r.registry, r.repository)
        .parse()
        .map_err(|e| refused(artifact, format!("cannot name the signed manifest: {e}")))?;
    let mut client = ClientBuilder::default()
        .with_oci_client_config(ClientConfig {
            extra_root_certificates: oci
                .extra_ca_pem()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.to_vec(),
                })
                .into_iter()
                .collect(),
            ..ClientConfig::default()
        })
        .build()
        .map_err(|e| refused(artifact, format!("cosign client: {e}")))?;
    let auth = match auth {
        RegistryAuth::Anonymous => Auth::Anonymous,
        RegistryAuth::Basic(user, password) => Auth::Basic(user.clone(), password.clone()),
        RegistryAuth::Bearer(token) => Auth::Bearer(token.clone()),
    };
    let layers = client
        .trusted_signature_layers(&auth, &source)
        .await
        .map_err(|e| {
            refused(
                artifact,
                format!("unsigned: no cosign signature for {manifest}: {e}"),
            )
        })?;
    if layers.is_empty() {
        return Err(refused(
            artifact,
            format!("unsigned: no cosign signature for {manifest}"),
        ));
    }
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    verify_constraints(&layers, constraints.iter()).map_err(|_| {
        refused(
            artifact,
            format!(
                "none of the {} signature(s) of {manifest} verifies with the release's public key",
                layers.len()
            ),
        )
    })
}

/// A `cosign sign-blob` signature is base64 of an ECDSA or Ed25519 signature: about 100
/// bytes. Anything far larger is not one, and is not read into memory.
const MAX_SIGNATURE_BYTES: usize = 8 * 1024;

/// Verifies the `cosign sign-blob` signature at `<url>.sig` over the stored file `blob`.
pub(crate) async fn verify_https(
    http: &reqwest::Client,
    url: &str,
    blob: &Path,
    public_key: &str,
    credentials: Option<&Credentials>,
    limits: &HttpLimits,
) -> Result<(), FetchError> {
    let key = CosignVerificationKey::try_from_pem(public_key.as_bytes())
        .map_err(|e| refused(url, key_error(e)))?;
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
    let too_large = || {
        refused(
            url,
            format!("{sig_url} is larger than a signature ({MAX_SIGNATURE_BYTES} bytes at most)"),
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_SIGNATURE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut text = Vec::new();
    let mut body = response;
    while let Some(chunk) = body
        .chunk()
        .await
        .map_err(|e| map_reqwest(&sig_url, &e, limits, text.len() as u64))?
    {
        if text.len() + chunk.len() > MAX_SIGNATURE_BYTES {
            return Err(too_large());
        }
        text.extend_from_slice(&chunk);
    }
    let read_error = |e: std::io::Error| FetchError::Store {
        artifact: url.into(),
        reason: format!("read {}: {e}", blob.display()),
    };
    let file = std::fs::File::open(blob).map_err(read_error)?;
    // SAFETY: the blob is content-addressed and read-only (0444): the store only ever
    // replaces a blob by rename, never writes one in place, so the mapped bytes stay as
    // verified for as long as the map lives.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(read_error)?;
    key.verify_signature(Signature::Base64Encoded(text.trim_ascii()), &bytes)
        .map_err(|_| {
            refused(
                url,
                format!("the signature at {sig_url} does not verify with the release's public key"),
            )
        })
}
