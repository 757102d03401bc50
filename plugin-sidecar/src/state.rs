//! What the sidecar knows and keeps across restarts: per plugin the assigned revision, the
//! last revision the app confirmed, the last refusal, and a short history of revisions whose
//! artifacts stay cached for rollback. Pure data plus pure decisions; `store.rs` persists it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// One revision of one plugin, as assigned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// Revision name.
    pub revision: String,
    /// Where it was fetched from.
    pub artifact: String,
    /// Digest the artifact was verified against.
    pub digest: Sha256Digest,
    /// Plugin config.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// A revision the app refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refused revision.
    pub revision: String,
    /// The app's reason.
    pub reason: String,
}

/// Everything the sidecar tracks for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The revision an assignment last asked for, before it is fetched: a pod with nothing
    /// of the plugin yet is not ready while this is being fetched (or retried).
    #[serde(default)]
    pub requested: Option<String>,
    /// The revision the sidecar was last told to run (stored and verified).
    pub assigned: Option<RevisionRecord>,
    /// The revision the app last confirmed loaded.
    pub loaded: Option<RevisionRecord>,
    /// The app's refusal of the assigned revision, if it refused it.
    pub refused: Option<Refusal>,
    /// Recent revisions, newest first; their artifacts are kept on disk.
    pub history: Vec<RevisionRecord>,
}

/// The sidecar's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SidecarState {
    /// Per plugin slot.
    pub plugins: BTreeMap<String, PluginRecord>,
    /// Whether an operator has sent this pod its complete set (`Synced`) once: from then on
    /// the stored set is the pod's, and a restarted sidecar may turn ready on it alone.
    #[serde(default)]
    pub synced: bool,
}

impl SidecarState {
    /// Records a new assignment and trims the history to `keep` revisions.
    pub fn assign(&mut self, plugin: &str, rec: RevisionRecord, keep: usize) {
        let entry = self.plugins.entry(plugin.to_string()).or_default();
        entry.history.retain(|h| h.revision != rec.revision);
        entry.history.insert(0, rec.clone());
        entry.history.truncate(keep.max(1));
        if entry
            .refused
            .as_ref()
            .is_some_and(|r| r.revision != rec.revision)
        {
            entry.refused = None;
        }
        entry.assigned = Some(rec);
    }

    /// Records that `revision` of `plugin` was asked for (before its fetch).
    pub fn request(&mut self, plugin: &str, revision: &str) {
        let entry = self.plugins.entry(plugin.to_string()).or_default();
        entry.requested = Some(revision.to_string());
    }

    /// Plugins asked for of which no revision can be offered (nothing fetched yet, or the
    /// only revision was refused), each with why: `r1 not fetched yet`, `r1 failed: …`.
    pub fn missing(&self) -> Vec<(String, String)> {
        let offered: BTreeSet<String> = self.offer().into_iter().map(|(p, _)| p).collect();
        self.plugins
            .iter()
            .filter(|(name, _)| !offered.contains(*name))
            .filter_map(|(name, p)| {
                let requested = p.requested.as_ref()?;
                let why = match &p.refused {
                    Some(r) if &r.revision == requested => {
                        format!("{requested} failed: {}", r.reason)
                    }
                    _ => format!("{requested} not fetched yet"),
                };
                Some((name.clone(), why))
            })
            .collect()
    }

    /// Records that nothing should run for `plugin` (a rollback to "no plugin"). Its history
    /// stays, so the artifacts stay cached for a later assignment.
    pub fn unassign(&mut self, plugin: &str) {
        if let Some(entry) = self.plugins.get_mut(plugin) {
            entry.requested = None;
            entry.assigned = None;
            entry.loaded = None;
            entry.refused = None;
        }
    }

    /// Applies the app's `Loaded`; returns false if it names no revision we know.
    pub fn confirm_loaded(&mut self, plugin: &str, revision: &str) -> bool {
        let Some(entry) = self.plugins.get_mut(plugin) else {
            return false;
        };
        let Some(rec) = entry
            .history
            .iter()
            .find(|h| h.revision == revision)
            .cloned()
        else {
            return false;
        };
        if entry
            .refused
            .as_ref()
            .is_some_and(|r| r.revision == revision)
        {
            entry.refused = None;
        }
        entry.loaded = Some(rec);
        true
    }

    /// Applies the app's `Failed`.
    pub fn record_refusal(&mut self, plugin: &str, revision: &str, reason: &str) {
        if let Some(entry) = self.plugins.get_mut(plugin) {
            entry.refused = Some(Refusal {
                revision: revision.into(),
                reason: reason.into(),
            });
        }
    }

    /// What a (re)connecting app must run: the assigned revision, unless the app already
    /// refused it, then the last one it confirmed (so a restarted app comes back on a
    /// working plugin instead of retrying a known-bad one).
    pub fn offer(&self) -> Vec<(String, RevisionRecord)> {
        self.plugins
            .iter()
            .filter_map(|(name, p)| {
                let refused = |rev: &RevisionRecord| {
                    p.refused
                        .as_ref()
                        .is_some_and(|r| r.revision == rev.revision)
                };
                let pick = match &p.assigned {
                    Some(a) if !refused(a) => Some(a),
                    _ => p.loaded.as_ref(),
                };
                pick.map(|r| (name.clone(), r.clone()))
            })
            .collect()
    }

    /// Digests that must stay on disk: every history entry plus assigned and loaded.
    pub fn retained_digests(&self) -> BTreeSet<Sha256Digest> {
        self.plugins
            .values()
            .flat_map(|p| {
                p.history
                    .iter()
                    .chain(p.assigned.iter())
                    .chain(p.loaded.iter())
            })
            .map(|r| r.digest.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: u8) -> RevisionRecord {
        RevisionRecord {
            revision: format!("r{n}"),
            artifact: format!("https://a/{n}"),
            digest: Sha256Digest::of(&[n]),
            config: serde_json::Value::Null,
        }
    }

    #[test]
    fn history_keeps_newest_n_and_gc_set_follows_it() {
        let mut s = SidecarState::default();
        for n in 1..=4 {
            s.assign("p", rev(n), 2);
        }
        let p = &s.plugins["p"];
        assert_eq!(
            p.history
                .iter()
                .map(|h| h.revision.as_str())
                .collect::<Vec<_>>(),
            ["r4", "r3"]
        );
        assert_eq!(
            s.retained_digests(),
            [rev(3).digest, rev(4).digest].into_iter().collect()
        );
    }

    #[test]
    fn loaded_revision_outside_history_is_still_retained() {
        let mut s = SidecarState::default();
        s.assign("p", rev(1), 1);
        assert!(s.confirm_loaded("p", "r1"));
        s.assign("p", rev(2), 1);
        assert!(s.retained_digests().contains(&rev(1).digest));
        assert!(!s.confirm_loaded("p", "r9"));
    }

    #[test]
    fn an_unassigned_plugin_is_offered_to_nobody_and_keeps_its_cache() {
        let mut s = SidecarState::default();
        s.assign("p", rev(1), 3);
        s.confirm_loaded("p", "r1");
        s.unassign("p");
        assert!(
            s.offer().is_empty(),
            "a reconnecting app gets nothing for p"
        );
        assert!(s.retained_digests().contains(&rev(1).digest));
        s.assign("p", rev(1), 3);
        assert_eq!(s.offer(), [("p".to_string(), rev(1))]);
    }

    #[test]
    fn offer_skips_a_refused_assignment_in_favour_of_the_loaded_one() {
        let mut s = SidecarState::default();
        s.assign("p", rev(1), 3);
        s.confirm_loaded("p", "r1");
        s.assign("p", rev(2), 3);
        assert_eq!(s.offer(), [("p".to_string(), rev(2))]);
        s.record_refusal("p", "r2", "trap");
        assert_eq!(s.offer(), [("p".to_string(), rev(1))]);
        s.assign("p", rev(3), 3);
        assert_eq!(
            s.offer(),
            [("p".to_string(), rev(3))],
            "a new assignment clears the refusal"
        );
    }

    #[test]
    fn a_requested_plugin_is_missing_until_something_of_it_can_be_offered() {
        let mut s = SidecarState::default();
        s.request("p", "r1");
        assert_eq!(s.missing(), [("p".into(), "r1 not fetched yet".into())]);
        s.assign("p", rev(1), 3);
        assert!(s.missing().is_empty());
        s.record_refusal("p", "r1", "worker 7: trap");
        assert_eq!(
            s.missing(),
            [("p".into(), "r1 failed: worker 7: trap".into())],
            "nothing else of p to fall back to"
        );
        s.unassign("p");
        assert!(s.missing().is_empty(), "an unload asks for nothing");
        let old: SidecarState = serde_json::from_str(r#"{"plugins":{}}"#).expect("v1 state");
        assert!(!old.synced, "state written before Synced existed");
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = SidecarState::default();
        s.assign("p", rev(1), 3);
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(
            serde_json::from_str::<SidecarState>(&json).expect("parse"),
            s
        );
    }
}
