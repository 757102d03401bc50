//! OCI manifests and cosign signatures. The first byte picks the input, the rest is it:
//! - 0: a manifest as a registry sends it (`registry::Manifest::parse`);
//! - 1: an artifact reference, a `WWW-Authenticate` challenge and a digest (one string);
//! - 2: a kept signature as read back from the shared volume (`signature::Kept`, JSON),
//!   verified with the release's key (`Kept::verify`);
//! - 3: a simple-signing payload and its signature (`payload NUL signature`), verified
//!   against a fixed manifest holding the plugin layer (the pure part of the OCI check).
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use base64::Engine as _;
use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::fetch::ArtifactRef;
use hotload_sidecar::fetch::registry::{Challenge, Manifest};
use hotload_sidecar::fetch::signature::Kept;
use libfuzzer_sys::fuzz_target;
use sigstore::crypto::CosignVerificationKey;

/// The release's key (P-256; fuzz/seeds/README.md says how the seed signatures were made).
const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaGwU7wfHe0IDgFiLBfFYhQmd1HOW
PqLRn1v6PRZlZH4W9BT7BZ6xmVtoHNOpgIKpauskC3mHQYslToNKmvwKHg==
-----END PUBLIC KEY-----
";

/// The plugin's bytes, stored once as the blob a kept `Blob` signature is checked over.
const BLOB: &[u8] = b"\0asm\x01\0\0\0";

/// A manifest holding the blob as its one layer (its digest is what a payload must name).
const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.wasm.content.layer.v1+wasm","digest":"sha256:93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476","size":8}]}"#;

struct Fixture {
    key: CosignVerificationKey,
    blob: PathBuf,
    digest: Sha256Digest,
    manifest_b64: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let blob = std::env::temp_dir().join(format!("hotload-fuzz-blob-{}", std::process::id()));
    std::fs::write(&blob, BLOB).expect("write the blob");
    let digest = Sha256Digest::of(BLOB);
    let manifest = Manifest::parse(MANIFEST.as_bytes().to_vec()).expect("the fixed manifest");
    assert!(manifest.holds(&digest), "the fixed manifest holds the blob");
    Fixture {
        key: CosignVerificationKey::try_from_pem(PUBLIC_KEY.as_bytes()).expect("the key"),
        blob,
        digest,
        manifest_b64: base64::engine::general_purpose::STANDARD.encode(MANIFEST),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&input, rest)) = data.split_first() else {
        return;
    };
    let fixture = &*FIXTURE;
    match input % 4 {
        0 => {
            if let Ok(manifest) = Manifest::parse(rest.to_vec()) {
                assert!(!manifest.layers.is_empty());
                let _ = manifest.holds(&fixture.digest);
                for layer in &manifest.layers {
                    let _ = Sha256Digest::parse(&layer.digest);
                }
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            let _ = ArtifactRef::parse(&text);
            let _ = Challenge::parse(&text);
            let _ = Sha256Digest::parse(&text);
        }
        2 => {
            if let Ok(kept) = serde_json::from_slice::<Kept>(rest) {
                let _ = kept.verify(&fixture.key, &fixture.digest, &fixture.blob);
            }
        }
        _ => {
            let (payload, signature) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            let kept = Kept::Image {
                manifest: fixture.manifest_b64.clone(),
                payload: base64::engine::general_purpose::STANDARD.encode(payload),
                signature: String::from_utf8_lossy(signature).into_owned(),
            };
            let _ = kept.verify(&fixture.key, &fixture.digest, &fixture.blob);
        }
    }
});
