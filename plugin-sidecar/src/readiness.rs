//! Readiness: not ready until every connected worker of the app confirmed every plugin
//! revision the sidecar offers it, and (with an operator) until the operator has sent the
//! pod's complete set, so a new or restarted pod takes no traffic before its plugins work.
//! The decision is a pure function; `admin.rs` serves it over HTTP.

use serde::Serialize;

use crate::state::RevisionRecord;
use crate::workers::{LiveApp, Verdict};

/// How strict readiness is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReadinessPolicy {
    /// Ready once every offered plugin is confirmed loaded by every worker; with
    /// `require_assignment`, not ready either while nothing was assigned yet; with
    /// `require_sync`, not before the operator's `Synced`.
    RequireLoaded {
        /// Stay unready until the first assignment arrives.
        require_assignment: bool,
        /// Stay unready until the operator has sent the pod's complete set once.
        require_sync: bool,
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

/// Decides readiness. Pure.
///
/// Ready when every offered plugin is served by every connected worker and no plugin asked
/// for is `missing` (being fetched or retried, or refused with nothing to fall back to);
/// with `require_sync`, not
/// before the operator said it sent the pod's complete set.
pub fn readiness(
    offer: &[(String, RevisionRecord)],
    missing: &[(String, String)],
    live: &LiveApp,
    policy: ReadinessPolicy,
    synced: bool,
) -> Result<(), String> {
    let ReadinessPolicy::RequireLoaded {
        require_assignment,
        require_sync,
    } = policy
    else {
        return Ok(());
    };
    if require_sync && !synced {
        return Err("waiting for the operator's complete set (Synced)".into());
    }
    if let Some((plugin, why)) = missing.first() {
        return Err(format!("{plugin} {why}"));
    }
    if offer.is_empty() {
        return if require_assignment {
            Err("no plugin assigned yet".into())
        } else {
            Ok(())
        };
    }
    if !live.connected() {
        return Err("app not connected to the plugin socket".into());
    }
    let pending: Vec<String> = offer
        .iter()
        .filter_map(|(plugin, rec)| match live.verdict(plugin, &rec.revision) {
            Verdict::Loaded { .. } => None,
            Verdict::Failed { reason } => {
                Some(format!("{plugin} {} failed: {reason}", rec.revision))
            }
            Verdict::Waiting { loaded, total } => Some(format!(
                "{plugin} {} loaded by {loaded}/{total} workers",
                rec.revision
            )),
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
        require_sync: false,
    };

    fn worker(live: &mut LiveApp, id: u64) {
        live.connect(id, None);
        live.hello(id, Some(format!("w{id}")), Some(2));
    }

    fn load(live: &mut LiveApp, id: u64, rev: &str) {
        live.answer(
            id,
            "auth",
            Some(AppAck::Loaded {
                revision: rev.into(),
                health: String::new(),
            }),
        );
    }

    #[test]
    fn not_ready_until_every_worker_confirmed_the_offered_revision() {
        let mut live = LiveApp::default();
        assert_eq!(
            readiness(&offer("r1"), &[], &live, STRICT, true),
            Err("app not connected to the plugin socket".into())
        );
        worker(&mut live, 1);
        worker(&mut live, 2);
        load(&mut live, 1, "r1");
        assert_eq!(
            readiness(&offer("r1"), &[], &live, STRICT, true),
            Err("auth r1 loaded by 1/2 workers".into())
        );
        load(&mut live, 2, "r1");
        assert_eq!(readiness(&offer("r1"), &[], &live, STRICT, true), Ok(()));
        assert!(readiness(&offer("r2"), &[], &live, STRICT, true).is_err());
    }

    #[test]
    fn not_ready_before_the_operators_complete_set() {
        let synced = ReadinessPolicy::RequireLoaded {
            require_assignment: false,
            require_sync: true,
        };
        let live = LiveApp::default();
        assert_eq!(
            readiness(&[], &[], &live, synced, false),
            Err("waiting for the operator's complete set (Synced)".into())
        );
        assert_eq!(
            readiness(&[], &[], &live, synced, true),
            Ok(()),
            "a pod no release selects is ready once synced"
        );
        let fetching = [("auth".to_string(), "r1 not fetched yet".to_string())];
        assert_eq!(
            readiness(&[], &fetching, &live, synced, true),
            Err("auth r1 not fetched yet".into()),
            "an assignment still being fetched holds a new pod back"
        );
    }

    #[test]
    fn failure_reason_is_shown_and_policies_relax() {
        let mut live = LiveApp::default();
        worker(&mut live, 1);
        live.answer(
            1,
            "auth",
            Some(AppAck::Failed {
                revision: "r1".into(),
                reason: "trap".into(),
            }),
        );
        assert_eq!(
            readiness(&offer("r1"), &[], &live, STRICT, true),
            Err("auth r1 failed: worker w1: trap".into())
        );
        assert_eq!(
            readiness(&offer("r1"), &[], &live, ReadinessPolicy::Always, false),
            Ok(())
        );
        assert_eq!(
            readiness(&[], &[], &live, STRICT, true),
            Err("no plugin assigned yet".into())
        );
        let lax = ReadinessPolicy::RequireLoaded {
            require_assignment: false,
            require_sync: false,
        };
        assert_eq!(readiness(&[], &[], &live, lax, false), Ok(()));
    }
}
