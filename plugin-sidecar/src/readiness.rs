//! Readiness: not ready until the app confirmed, on its current connection, every plugin
//! revision the sidecar offers it, so a new or restarted pod takes no traffic before its
//! plugins work. The decision is a pure function; `admin.rs` serves it over HTTP.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::state::RevisionRecord;

/// How strict readiness is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReadinessPolicy {
    /// Ready once every offered plugin is confirmed loaded; with `require_assignment`, not
    /// ready either while nothing was assigned yet.
    RequireLoaded {
        /// Stay unready until the first assignment arrives.
        require_assignment: bool,
    },
    /// Always ready (the app serves without its plugins, or readiness is gated elsewhere).
    Always,
}

/// The app's last answer for a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AppAck {
    /// Loaded with this health summary.
    Loaded {
        /// Revision.
        revision: String,
        /// Health summary.
        health: String,
    },
    /// Refused with this reason.
    Failed {
        /// Revision.
        revision: String,
        /// Reason.
        reason: String,
    },
}

impl AppAck {
    /// The revision the ack is about.
    pub fn revision(&self) -> &str {
        match self {
            AppAck::Loaded { revision, .. } | AppAck::Failed { revision, .. } => revision,
        }
    }
}

/// What the connected app has confirmed; reset when it disconnects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LiveApp {
    /// Id of the current connection, if an app is connected.
    pub connection: Option<u64>,
    /// Plugin → revision the app confirmed serving on this connection.
    pub serving: BTreeMap<String, String>,
    /// Plugin → the app's last answer.
    pub last: BTreeMap<String, AppAck>,
}

/// Decides readiness. Pure.
pub fn readiness(
    offer: &[(String, RevisionRecord)],
    live: &LiveApp,
    policy: ReadinessPolicy,
) -> Result<(), String> {
    let ReadinessPolicy::RequireLoaded { require_assignment } = policy else {
        return Ok(());
    };
    if offer.is_empty() {
        return if require_assignment {
            Err("no plugin assigned yet".into())
        } else {
            Ok(())
        };
    }
    if live.connection.is_none() {
        return Err("app not connected to the plugin socket".into());
    }
    let pending: Vec<String> = offer
        .iter()
        .filter(|(plugin, rec)| live.serving.get(plugin) != Some(&rec.revision))
        .map(|(plugin, rec)| match live.last.get(plugin) {
            Some(AppAck::Failed { revision, reason }) if *revision == rec.revision => {
                format!("{plugin} {revision} failed: {reason}")
            }
            _ => format!("{plugin} {} not loaded yet", rec.revision),
        })
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(pending.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;

    fn offer(rev: &str) -> Vec<(String, RevisionRecord)> {
        let rec = RevisionRecord {
            revision: rev.into(),
            artifact: "a".into(),
            digest: Sha256Digest::of(b""),
            config: serde_json::Value::Null,
        };
        vec![("auth".into(), rec)]
    }

    const STRICT: ReadinessPolicy = ReadinessPolicy::RequireLoaded {
        require_assignment: true,
    };

    #[test]
    fn not_ready_until_the_offered_revision_is_confirmed_on_this_connection() {
        let mut live = LiveApp::default();
        assert_eq!(
            readiness(&offer("r1"), &live, STRICT),
            Err("app not connected to the plugin socket".into())
        );
        live.connection = Some(1);
        assert_eq!(
            readiness(&offer("r1"), &live, STRICT),
            Err("auth r1 not loaded yet".into())
        );
        live.serving.insert("auth".into(), "r1".into());
        assert_eq!(readiness(&offer("r1"), &live, STRICT), Ok(()));
        assert!(readiness(&offer("r2"), &live, STRICT).is_err());
    }

    #[test]
    fn failure_reason_is_shown_and_policies_relax() {
        let mut live = LiveApp {
            connection: Some(1),
            ..LiveApp::default()
        };
        live.last.insert(
            "auth".into(),
            AppAck::Failed {
                revision: "r1".into(),
                reason: "trap".into(),
            },
        );
        assert_eq!(
            readiness(&offer("r1"), &live, STRICT),
            Err("auth r1 failed: trap".into())
        );
        assert_eq!(
            readiness(&offer("r1"), &live, ReadinessPolicy::Always),
            Ok(())
        );
        assert_eq!(
            readiness(&[], &live, STRICT),
            Err("no plugin assigned yet".into())
        );
        let lax = ReadinessPolicy::RequireLoaded {
            require_assignment: false,
        };
        assert_eq!(readiness(&[], &live, lax), Ok(()));
    }
}
