//! Revisions: what a pod must run, named by a hash of everything that changes what loads.

use sha2::{Digest, Sha256};

use crate::api::{PluginReleaseSpec, RevisionRecord};

/// What a pod loads to run one revision (empty: unload the plugin).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionSource {
    /// Artifact URL.
    pub url: String,
    /// Artifact digest.
    pub digest: String,
    /// Plugin config.
    pub config: Option<serde_json::Value>,
    /// The PEM public key its cosign signature must verify with, if one is required.
    pub signature_key: Option<String>,
    /// The pull secret (in the release's namespace) its artifact is fetched with.
    pub pull_secret: Option<String>,
}

/// Where `revision` comes from: the spec when it is the spec's revision, otherwise its
/// history record (a rollback hands pods what they ran before, not the spec's new artifact).
/// `None` when the revision is in neither. Pure.
pub fn source_of(
    revision: &str,
    spec: &PluginReleaseSpec,
    history: &[RevisionRecord],
) -> Option<RevisionSource> {
    if revision == revision_of(spec) {
        return Some(RevisionSource {
            url: spec.artifact.url.clone(),
            digest: spec.artifact.digest.clone(),
            config: spec.config.clone(),
            signature_key: spec
                .artifact
                .signature
                .as_ref()
                .map(|s| s.public_key.clone()),
            pull_secret: spec.artifact.pull_secret.clone(),
        });
    }
    history
        .iter()
        .find(|r| r.revision == revision)
        .map(|r| RevisionSource {
            url: r.url.clone(),
            digest: r.digest.clone(),
            config: r.config.clone(),
            signature_key: r.signature.as_ref().map(|s| s.public_key.clone()),
            pull_secret: r.pull_secret.clone(),
        })
}

/// The revision of a spec: the first 10 hex digits of sha256 over the artifact digest, the
/// canonical JSON of the config and, when a signature is required, the key it must verify
/// with (so requiring one re-verifies every pod). The URL is left out on purpose: the same
/// bytes from a mirror are the same revision, so moving registries rolls nothing out.
pub fn revision_of(spec: &PluginReleaseSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(spec.artifact.digest.as_bytes());
    hasher.update(b"\n");
    // serde_json sorts object keys (no preserve_order feature), so equal configs hash equally.
    let config = spec
        .config
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    hasher.update(config.as_bytes());
    if let Some(signature) = &spec.artifact.signature {
        hasher.update(b"\nsignature:");
        hasher.update(signature.public_key.trim().as_bytes());
    }
    let digest = hasher.finalize();
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Artifact;

    fn spec(digest: &str, url: &str, config: Option<serde_json::Value>) -> PluginReleaseSpec {
        serde_json::from_value(serde_json::json!({
            "plugin": "auth",
            "selector": {"matchLabels": {"app": "shop"}},
            "artifact": Artifact {
                url: url.into(),
                digest: digest.into(),
                pull_secret: None,
                signature: None,
            },
            "config": config,
        }))
        .unwrap()
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn digest_and_config_make_the_revision_url_does_not() {
        let base = revision_of(&spec(A, "oci://r/p:1", None));
        assert_eq!(base.len(), 10);
        assert_eq!(base, revision_of(&spec(A, "https://mirror/p.wasm", None)));
        assert_ne!(base, revision_of(&spec(B, "oci://r/p:1", None)));
        let with_config = revision_of(&spec(A, "oci://r/p:1", Some(serde_json::json!({"x": 1}))));
        assert_ne!(base, with_config);
    }

    #[test]
    fn a_rollback_loads_the_stable_revisions_own_artifact_config_and_pull_secret() {
        let stable = spec(A, "oci://r/p:1", Some(serde_json::json!({"mode": "old"})));
        // The spec moved to an artifact on a public HTTPS host: no pull secret any more.
        let broken = spec(B, "https://mirror/p2.wasm", None);
        let record = RevisionRecord {
            revision: revision_of(&stable),
            url: stable.artifact.url.clone(),
            digest: A.into(),
            config: stable.config.clone(),
            signature: None,
            pull_secret: Some("registry-creds".into()),
            started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            outcome: crate::api::Outcome::Stable,
            reason: None,
        };
        let history = [record];
        let back = source_of(&revision_of(&stable), &broken, &history).expect("in history");
        assert_eq!(back.digest, A);
        assert_eq!(back.url, "oci://r/p:1");
        assert_eq!(back.config, Some(serde_json::json!({"mode": "old"})));
        assert_eq!(
            back.pull_secret.as_deref(),
            Some("registry-creds"),
            "the stable revision's registry still wants its credentials"
        );
        let forward = source_of(&revision_of(&broken), &broken, &history).expect("the spec");
        assert_eq!(forward.digest, B);
        assert_eq!(forward.pull_secret, None);
        assert_eq!(source_of("0123456789", &broken, &history), None);
    }

    #[test]
    fn requiring_a_signature_is_a_new_revision() {
        let plain = spec(A, "oci://r/p:1", None);
        let mut signed = plain.clone();
        signed.artifact.signature = Some(crate::api::SignaturePolicy {
            public_key: "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n".into(),
        });
        assert_ne!(revision_of(&plain), revision_of(&signed));
        let mut other_key = signed.clone();
        other_key.artifact.signature = Some(crate::api::SignaturePolicy {
            public_key: "-----BEGIN PUBLIC KEY-----\nMFkx\n-----END PUBLIC KEY-----\n".into(),
        });
        assert_ne!(revision_of(&signed), revision_of(&other_key));
    }

    #[test]
    fn config_key_order_does_not_matter() {
        let one = serde_json::from_str(r#"{"a": 1, "b": {"c": 2, "d": 3}}"#).unwrap();
        let two = serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap();
        assert_eq!(
            revision_of(&spec(A, "oci://r/p:1", Some(one))),
            revision_of(&spec(A, "oci://r/p:1", Some(two)))
        );
    }
}
