//! What the app's workers report about their plugins (`health` lines, docs/protocol.md), added
//! up two ways: a pending delta per (plugin, revision) that the operator channel sends on and
//! clears, and running totals that `/metrics` shows. Pure: the caller logs what was dropped.
//!
//! ```text
//!  worker 4711 ─ health ─┐  check   ┌─► pending (≤ 256 revisions) ─► channel: Health, 64 per message
//!  worker 4712 ─ health ─┴────────► │
//!                                   └─► totals (≤ 64 plugins × 4 newest revisions) ─► /metrics
//! ```
//! Every count only ever adds ([`Counts::merge`]), so reports of any number of workers add up
//! exactly. What is bounded drops the least recently reported entry first.

use std::collections::BTreeMap;

use hotload_channel::proto;

use crate::protocol::{Counts, PluginHealth};

/// The longest plugin name a report may carry: a DNS label, as a release's `spec.plugin`
/// (the operator refuses longer ones too).
pub const MAX_PLUGIN_NAME_BYTES: usize = 63;

/// The longest revision a report may carry (the operator's revisions are 10 hex digits; it
/// refuses any longer than this).
pub const MAX_REVISION_BYTES: usize = 64;

/// The most plugins with series on `/metrics`: the operator keeps 64 plugins per pod, so a
/// pod never legitimately runs more.
pub const MAX_PLUGINS: usize = 64;

/// The revisions per plugin with series on `/metrics`: the most recently reported ones. A
/// rollout has two revisions serving at once, a rollback a third: four keeps every one a
/// rollout compares, and the label set bounded.
pub const KEPT_REVISIONS: usize = 4;

/// The most revisions waiting to be sent to the operator (while the channel is down); one
/// more drops the least recently reported.
pub const MAX_PENDING: usize = 256;

/// The most revisions in one `Health` message to the operator (the channel's limit).
pub const MAX_REVISIONS_PER_MESSAGE: usize = 64;

/// A plugin and one of its revisions.
pub type RevisionKey = (String, String);

/// Why a report cannot be used, naming the entry and the cause. Pure.
pub fn check(report: &[PluginHealth]) -> Result<(), String> {
    for entry in report {
        check_names(&entry.plugin, &entry.revision)?;
        entry.counts.check().map_err(|why| {
            format!(
                "plugin {} revision {}: {why}",
                entry.plugin.escape_debug(),
                entry.revision.escape_debug()
            )
        })?;
    }
    Ok(())
}

fn check_names(plugin: &str, revision: &str) -> Result<(), String> {
    if plugin.is_empty() || plugin.len() > MAX_PLUGIN_NAME_BYTES {
        return Err(format!(
            "plugin name of {} bytes (1 to {MAX_PLUGIN_NAME_BYTES} allowed)",
            plugin.len()
        ));
    }
    if revision.is_empty() || revision.len() > MAX_REVISION_BYTES {
        return Err(format!(
            "plugin {}: revision of {} bytes (1 to {MAX_REVISION_BYTES} allowed)",
            plugin.escape_debug(),
            revision.len()
        ));
    }
    // They end up in logs and metric labels.
    if plugin.chars().chain(revision.chars()).any(char::is_control) {
        return Err(format!(
            "plugin {} revision {}: control characters in a name",
            plugin.escape_debug(),
            revision.escape_debug()
        ));
    }
    Ok(())
}

/// Counts with the report sequence number that last added to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stamped {
    counts: Counts,
    last: u64,
}

impl Stamped {
    fn add(&mut self, counts: &Counts, seq: u64) {
        self.counts.merge(counts);
        self.last = seq;
    }
}

/// What [`HealthBook::add`] had to drop to stay within its bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Revisions whose unsent counts were dropped ([`MAX_PENDING`]).
    pub pending: Vec<RevisionKey>,
    /// Revisions whose `/metrics` series were dropped ([`KEPT_REVISIONS`]).
    pub series: Vec<RevisionKey>,
    /// Plugins not given series: [`MAX_PLUGINS`] have them already.
    pub plugins: Vec<String>,
}

impl Dropped {
    /// Nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.series.is_empty() && self.plugins.is_empty()
    }
}

/// The workers' reports, added up: what the operator has not been sent yet, and the totals.
#[derive(Debug, Clone, Default)]
pub struct HealthBook {
    /// Reports taken so far: orders entries by how recently they were reported.
    seq: u64,
    /// Whether reports are kept for the operator (only with an operator channel).
    forwarding: bool,
    pending: BTreeMap<RevisionKey, Stamped>,
    totals: BTreeMap<String, BTreeMap<String, Stamped>>,
}

impl HealthBook {
    /// Keeps reports for the operator from now on (`true`), or not.
    pub fn set_forwarding(&mut self, forwarding: bool) {
        self.forwarding = forwarding;
        if !forwarding {
            self.pending.clear();
        }
    }

    /// Adds a report that passed [`check`]. Entries without calls add nothing.
    pub fn add(&mut self, report: &[PluginHealth]) -> Dropped {
        self.seq += 1;
        let seq = self.seq;
        let mut dropped = Dropped::default();
        for entry in report.iter().filter(|e| !e.counts.is_empty()) {
            let key = (entry.plugin.clone(), entry.revision.clone());
            if self.forwarding {
                self.pending
                    .entry(key.clone())
                    .or_default()
                    .add(&entry.counts, seq);
            }
            if !self.totals.contains_key(&entry.plugin) && self.totals.len() >= MAX_PLUGINS {
                if !dropped.plugins.contains(&entry.plugin) {
                    dropped.plugins.push(entry.plugin.clone());
                }
                continue;
            }
            let revisions = self.totals.entry(entry.plugin.clone()).or_default();
            revisions
                .entry(entry.revision.clone())
                .or_default()
                .add(&entry.counts, seq);
            while revisions.len() > KEPT_REVISIONS {
                let Some(oldest) = least_recent(revisions) else {
                    break;
                };
                revisions.remove(&oldest);
                dropped.series.push((entry.plugin.clone(), oldest));
            }
        }
        while self.pending.len() > MAX_PENDING {
            let Some(oldest) = least_recent(&self.pending) else {
                break;
            };
            self.pending.remove(&oldest);
            dropped.pending.push(oldest);
        }
        dropped
    }

    /// Takes up to `max` pending revisions, least recently reported first, out of the
    /// pending delta, for the caller to send.
    pub fn take(&mut self, max: usize) -> Vec<(RevisionKey, Counts)> {
        let mut order: Vec<(u64, RevisionKey)> = self
            .pending
            .iter()
            .map(|(key, s)| (s.last, key.clone()))
            .collect();
        order.sort();
        order
            .into_iter()
            .take(max)
            .filter_map(|(_, key)| self.pending.remove(&key).map(|s| (key, s.counts)))
            .collect()
    }

    /// How many revisions wait to be sent.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The totals of every kept revision, by plugin and revision.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &str, &Counts)> {
        self.totals.iter().flat_map(|(plugin, revisions)| {
            revisions
                .iter()
                .map(move |(revision, s)| (plugin.as_str(), revision.as_str(), &s.counts))
        })
    }
}

/// The key of the entry reported least recently.
fn least_recent<K: Clone + Ord>(entries: &BTreeMap<K, Stamped>) -> Option<K> {
    entries
        .iter()
        .min_by_key(|(_, s)| s.last)
        .map(|(k, _)| k.clone())
}

/// One revision's counts as the operator channel carries them; trailing empty latency
/// buckets are left out. Pure.
pub fn revision_health((plugin, revision): &RevisionKey, counts: &Counts) -> proto::RevisionHealth {
    let mut latency_us = counts.latency_us.clone();
    while latency_us.last() == Some(&0) {
        latency_us.pop();
    }
    proto::RevisionHealth {
        plugin: plugin.clone(),
        revision: revision.clone(),
        calls: counts.calls,
        trap: counts.errors.trap,
        timeout: counts.errors.timeout,
        memory: counts.errors.memory,
        failed: counts.errors.failed,
        latency_us,
    }
}

/// `Health` messages for the operator carrying `taken`, at most
/// [`MAX_REVISIONS_PER_MESSAGE`] revisions each. Pure.
pub fn messages(taken: &[(RevisionKey, Counts)]) -> Vec<proto::SidecarMessage> {
    taken
        .chunks(MAX_REVISIONS_PER_MESSAGE)
        .map(|chunk| proto::SidecarMessage {
            kind: Some(proto::sidecar_message::Kind::Health(proto::Health {
                revisions: chunk.iter().map(|(k, c)| revision_health(k, c)).collect(),
            })),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Errors;

    fn entry(plugin: &str, revision: &str, calls: u64, trap: u64) -> PluginHealth {
        PluginHealth {
            plugin: plugin.into(),
            revision: revision.into(),
            counts: Counts {
                calls,
                errors: Errors {
                    trap,
                    ..Errors::default()
                },
                latency_us: vec![0, calls],
            },
        }
    }

    fn forwarding() -> HealthBook {
        let mut book = HealthBook::default();
        book.set_forwarding(true);
        book
    }

    fn total(book: &HealthBook, plugin: &str, revision: &str) -> Option<Counts> {
        book.totals()
            .find(|(p, r, _)| *p == plugin && *r == revision)
            .map(|(_, _, c)| c.clone())
    }

    #[test]
    fn bad_reports_are_refused_naming_the_cause() {
        assert_eq!(check(&[entry("auth", "r1", 3, 1)]), Ok(()));
        let lying = check(&[entry("auth", "r1", 3, 1), entry("auth", "r2", 1, 2)]);
        assert_eq!(
            lying,
            Err("plugin auth revision r2: 2 failed calls of 1 calls".into())
        );
        let mut long = entry("auth", "r1", 1, 0);
        long.counts.latency_us = vec![0; 21];
        assert!(check(&[long]).is_err_and(|e| e.contains("21 buckets")));
        let name = "p".repeat(64);
        assert_eq!(
            check(&[entry(&name, "r1", 1, 0)]),
            Err("plugin name of 64 bytes (1 to 63 allowed)".into())
        );
        assert!(check(&[entry("auth", "", 1, 0)]).is_err_and(|e| e.contains("revision of 0")));
        let revision = "r".repeat(65);
        assert!(check(&[entry("auth", &revision, 1, 0)]).is_err_and(|e| e.contains("65 bytes")));
        assert!(
            check(&[entry("auth", "r1\n", 1, 0)]).is_err_and(|e| e.contains("control characters"))
        );
        assert_eq!(check(&[]), Ok(()), "an empty report is no error");
    }

    #[test]
    fn reports_of_two_workers_add_up_in_both_views() {
        let mut book = forwarding();
        assert!(book.add(&[entry("auth", "r1", 3, 1)]).is_empty());
        assert!(
            book.add(&[entry("auth", "r1", 5, 0), entry("auth", "r2", 2, 0)])
                .is_empty()
        );
        let r1 = total(&book, "auth", "r1").expect("r1 counted");
        assert_eq!(
            (r1.calls, r1.errors.trap, r1.latency_us),
            (8, 1, vec![0, 8])
        );
        let taken = book.take(10);
        let keys: Vec<_> = taken
            .iter()
            .map(|((_, r), c)| (r.as_str(), c.calls))
            .collect();
        assert_eq!(keys, [("r1", 8), ("r2", 2)]);
        assert_eq!(book.pending_len(), 0, "what was taken is no longer pending");
        assert_eq!(
            total(&book, "auth", "r1").map(|c| c.calls),
            Some(8),
            "totals stay"
        );
        book.add(&[entry("auth", "r1", 1, 0)]);
        assert_eq!(
            book.take(10)[0].1.calls,
            1,
            "the next delta starts from zero"
        );
    }

    #[test]
    fn without_an_operator_nothing_waits_to_be_sent() {
        let mut book = HealthBook::default();
        book.add(&[entry("auth", "r1", 3, 0)]);
        assert_eq!(book.pending_len(), 0);
        assert_eq!(total(&book, "auth", "r1").map(|c| c.calls), Some(3));
        let mut empty = forwarding();
        empty.add(&[entry("auth", "r1", 0, 0)]);
        assert_eq!(
            (empty.pending_len(), empty.totals().count()),
            (0, 0),
            "no calls, no entry"
        );
    }

    #[test]
    fn only_the_four_most_recently_reported_revisions_keep_series() {
        let mut book = HealthBook::default();
        for r in ["r1", "r2", "r3", "r4"] {
            assert!(book.add(&[entry("auth", r, 1, 0)]).is_empty());
        }
        // r1 reported again: r2 is now the least recent, and goes when r5 comes.
        book.add(&[entry("auth", "r1", 1, 0)]);
        let dropped = book.add(&[entry("auth", "r5", 1, 0)]);
        assert_eq!(dropped.series, [("auth".to_string(), "r2".to_string())]);
        let kept: Vec<_> = book.totals().map(|(_, r, _)| r.to_string()).collect();
        assert_eq!(kept, ["r1", "r3", "r4", "r5"]);
    }

    #[test]
    fn plugins_beyond_the_cap_get_no_series() {
        let mut book = HealthBook::default();
        for i in 0..MAX_PLUGINS {
            book.add(&[entry(&format!("p{i}"), "r1", 1, 0)]);
        }
        let dropped = book.add(&[entry("one-too-many", "r1", 1, 0), entry("p0", "r1", 1, 0)]);
        assert_eq!(dropped.plugins, ["one-too-many"]);
        assert_eq!(book.totals().count(), MAX_PLUGINS);
        assert_eq!(total(&book, "p0", "r1").map(|c| c.calls), Some(2));
    }

    #[test]
    fn pending_is_bounded_dropping_the_least_recently_reported() {
        let mut book = forwarding();
        for i in 0..MAX_PENDING {
            book.add(&[entry(&format!("p{}", i % 60), &format!("r{i}"), 1, 0)]);
        }
        assert!(
            book.add(&[entry("p0", "r0", 1, 0)]).pending.is_empty(),
            "an update"
        );
        let dropped = book.add(&[entry("new", "r1", 1, 0)]);
        assert_eq!(dropped.pending, [("p1".to_string(), "r1".to_string())]);
        assert_eq!(book.pending_len(), MAX_PENDING);
    }

    #[test]
    fn the_operator_gets_at_most_64_revisions_per_message_in_its_wire_form() {
        let mut book = forwarding();
        let report: Vec<_> = (0..130)
            .map(|i| entry("auth", &format!("r{i:03}"), 2, 1))
            .collect();
        book.add(&report);
        let messages = messages(&book.take(usize::MAX));
        let sizes: Vec<usize> = messages
            .iter()
            .map(|m| match &m.kind {
                Some(proto::sidecar_message::Kind::Health(h)) => h.revisions.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [64, 64, 2]);
        let mut counts = Counts::default();
        counts.record(std::time::Duration::from_millis(3), None);
        counts.errors.memory = 1;
        let wire = revision_health(&("auth".into(), "r2".into()), &counts);
        assert_eq!(
            wire,
            proto::RevisionHealth {
                plugin: "auth".into(),
                revision: "r2".into(),
                calls: 1,
                trap: 0,
                timeout: 0,
                memory: 1,
                failed: 0,
                latency_us: vec![0, 0, 0, 0, 0, 0, 0, 0, 1],
            },
            "trailing empty buckets are left out"
        );
    }
}
