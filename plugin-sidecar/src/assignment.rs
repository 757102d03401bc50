//! What a source of assignments (the operator channel, or the local `load` command) asks
//! for, and what it is told back. Owned by the sidecar: both sources speak it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// "Run this artifact as this plugin."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Plugin slot name.
    pub plugin: String,
    /// Revision name; derived from digest + config when absent.
    #[serde(default)]
    pub revision: Option<String>,
    /// `https://…` or `oci://…`.
    pub artifact: String,
    /// Mandatory `sha256:<hex>` of the artifact.
    pub digest: String,
    /// Plugin config handed to the app.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Credentials for the artifact's host (from the release's pull secret); they take the
    /// place of the sidecar's own pull secret for this fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// The PEM public key a cosign signature of the artifact must verify with; without it
    /// no signature is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
}

/// A username and password for a registry or HTTPS server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Assignment {
    /// The revision name to use.
    pub fn revision_name(&self) -> String {
        self.revision
            .clone()
            .unwrap_or_else(|| derive_revision(&self.digest, &self.config))
    }
}

/// The revision name the operator would compute: a hash of digest and config. Pure.
pub fn derive_revision(digest: &str, config: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update(b"\n");
    h.update(config.to_string().as_bytes());
    let hex: String = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("r-{hex}")
}

/// The result of an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AssignOutcome {
    /// The app confirmed it serves the revision.
    Loaded {
        /// Plugin slot name.
        plugin: String,
        /// Revision now serving.
        revision: String,
        /// The app's health summary.
        health: String,
        /// Whether the artifact had to be downloaded (false: store hit).
        downloaded: bool,
    },
    /// No app was connected to be told (none was when it was assigned, and none connected
    /// while the sidecar waited): the revision is assigned, and offered to the app when it
    /// connects. Nothing about the revision is known yet, so this is not a failure.
    AwaitingApp {
        /// Plugin slot name.
        plugin: String,
        /// Revision assigned.
        revision: String,
    },
    /// The revision is not serving; the previous one (if any) still is.
    Failed {
        /// Plugin slot name.
        plugin: String,
        /// Revision that failed.
        revision: String,
        /// Stage-prefixed reason (`fetch:`, `app:`, `ack:`, `store:`).
        reason: String,
        /// Whether the cause is transient (connection refused, reset, timeout, 5xx), so the
        /// same assignment may work when tried again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        transient: bool,
    },
}

/// The point of no return of one assignment. Until the agent publishes the revision (stores
/// it as assigned and tells the app), a newer assignment of the plugin may call it off;
/// after that it runs to its end. Whichever of the two comes first wins, once.
#[derive(Debug, Clone, Default)]
pub struct Supersedable(Arc<AtomicU8>);

const OPEN: u8 = 0;
const PUBLISHED: u8 = 1;
const CALLED_OFF: u8 = 2;

impl Supersedable {
    fn settle(&self, to: u8) -> bool {
        match self
            .0
            .compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == to,
        }
    }

    /// The agent is about to publish: `true` unless the assignment was called off.
    pub fn publish(&self) -> bool {
        self.settle(PUBLISHED)
    }

    /// Whether the agent published it (the app was told).
    pub fn published(&self) -> bool {
        self.0.load(Ordering::Acquire) == PUBLISHED
    }

    /// A newer assignment supersedes this one: `true` if it was not published yet (it must
    /// then stop where it is), `false` if the app was told already.
    pub fn call_off(&self) -> bool {
        self.settle(CALLED_OFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_revision_depends_on_digest_and_config() {
        let a = derive_revision("sha256:1", &serde_json::json!({"k": 1}));
        assert_eq!(a, derive_revision("sha256:1", &serde_json::json!({"k": 1})));
        assert_ne!(a, derive_revision("sha256:1", &serde_json::json!({"k": 2})));
        assert_ne!(a, derive_revision("sha256:2", &serde_json::json!({"k": 1})));
        assert!(a.starts_with("r-") && a.len() == 14, "{a}");
    }

    #[test]
    fn an_assignment_is_either_published_or_called_off_never_both() {
        let open = Supersedable::default();
        assert!(open.call_off(), "called off before it was published");
        assert!(!open.publish(), "and then it must not publish");
        assert!(open.call_off(), "calling off twice says the same");
        let published = Supersedable::default();
        assert!(published.publish());
        assert!(
            !published.call_off(),
            "the app was told: it runs to its end"
        );
        assert!(published.publish());
    }
}
