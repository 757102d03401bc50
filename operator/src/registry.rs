//! The operator's memory of sidecars: which pods have a live channel, and for each plugin
//! what the pod was told to run and how loading it went. The sidecar channel writes it
//! (connect, report, disconnect); the controller reads it into the planner's `PodView`s and
//! sends assignments through it. A change wakes the controller for the pod's namespace.
//!
//! A stream belongs to one pod object, known by namespace, name and uid: a pod recreated
//! under the same name (a StatefulSet's) is another pod, and nothing of the old one (its
//! reports, its late delete event) touches the new one's stream.
//!
//! Each stream also waits for `Synced` ([`crate::synced`]): the registry keeps which
//! releases have planned for it since it connected, and sends `Synced` over it after
//! everything they sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use jiff::Timestamp;
use tokio::sync::{Notify, broadcast};

use crate::api::AckState;
use crate::crashloop::Baseline;

/// One plugin's state on one pod, as the sidecar reported it (or as last assigned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginReport {
    /// The revision the pod was told to run.
    pub assigned: Option<String>,
    /// The revision the app runs.
    pub serving: Option<String>,
    /// How the assigned revision is doing.
    pub state: AckState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Since when.
    pub since: Timestamp,
    /// The app's worker processes connected to the sidecar (0: a sidecar that does not
    /// count them).
    pub workers: u32,
    /// How many of them confirmed `assigned`.
    pub workers_loaded: u32,
}

/// What the operator tells a sidecar to do for one plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    /// The plugin slot.
    pub plugin: String,
    /// The revision to run; `None` unloads the plugin.
    pub revision: Option<String>,
    /// Artifact URL.
    pub url: String,
    /// Artifact digest.
    pub digest: String,
    /// Plugin config (JSON).
    pub config: Option<serde_json::Value>,
    /// Credentials from the release's pull secret, for the artifact's host.
    pub credentials: Option<crate::credentials::Credentials>,
    /// The PEM public key the artifact's cosign signature must verify with.
    pub signature_key: Option<String>,
}

/// A message queued for a sidecar.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// Run a revision (shared by every pod it goes to).
    Assign(Arc<Directive>),
    /// Everything the pod should run has been sent.
    Synced,
}

#[derive(Debug, Default)]
struct PodEntry {
    /// Where the pod's directives go. A futures channel allocates per message, not a block
    /// of 32 slots up front (tokio's); with one per pod, that is most of its cost. Every
    /// pod assigned a revision shares that revision's one `Directive`.
    outbox: Option<Outbox>,
    /// Which connection the outbox belongs to, so a stale stream's end cannot cut off the
    /// sidecar's new one.
    connection: u64,
    /// The pod object (its uid) the connection and everything here belong to.
    uid: String,
    plugins: Reports,
    /// Restart counts taken when each plugin's revision was assigned, kept across the
    /// sidecar's reconnects (a crash-looping sidecar reconnects) while the pod is the same
    /// object, and dropped once the sidecar reports that revision Loaded or Failed.
    baselines: Vec<(String, Baseline)>,
}

impl PodEntry {
    fn baseline(&self, plugin: &str) -> Option<&Baseline> {
        self.baselines
            .iter()
            .find(|(p, _)| p == plugin)
            .map(|(_, b)| b)
    }

    fn set_baseline(&mut self, plugin: &str, baseline: Baseline) {
        let full = self.baselines.len() >= MAX_PLUGINS_PER_POD;
        match self.baselines.iter_mut().find(|(p, _)| p == plugin) {
            Some((_, kept)) => *kept = baseline,
            None if full => {}
            None => {
                self.baselines.reserve_exact(1);
                self.baselines.push((plugin.to_string(), baseline));
            }
        }
    }
}

/// The most plugins kept per pod: what a sidecar reports is bounded, whatever it sends.
pub const MAX_PLUGINS_PER_POD: usize = 64;

/// The longest plugin name a sidecar may report: a DNS label, as `spec.plugin` is.
pub const MAX_PLUGIN_NAME_BYTES: usize = 63;

/// The longest revision a sidecar may report (the operator's are 10 hex digits).
pub const MAX_REVISION_BYTES: usize = 64;

/// The longest failure reason kept from a sidecar: it is copied into the release's status
/// (message, conditions, history, the pod list), which must stay far below etcd's limit.
pub const MAX_REASON_BYTES: usize = 512;

/// Refuses a report whose plugin name or revisions are longer than any the operator gives
/// out (nothing could match them; kept, they would cost memory and status space), naming
/// the field and its length.
pub fn check_names<'a>(
    plugin: &str,
    revisions: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    if plugin.is_empty() || plugin.len() > MAX_PLUGIN_NAME_BYTES {
        return Err(format!(
            "plugin name of {} bytes (1 to {MAX_PLUGIN_NAME_BYTES} allowed)",
            plugin.len()
        ));
    }
    match revisions.into_iter().find(|r| r.len() > MAX_REVISION_BYTES) {
        Some(long) => Err(format!(
            "plugin {}: revision of {} bytes (at most {MAX_REVISION_BYTES} allowed)",
            crate::api::escape_controls(plugin),
            long.len()
        )),
        None => Ok(()),
    }
}

/// A sidecar's failure reason as kept: control characters escaped (it reaches terminals
/// through `kubectl hotload` and events), cut to [`MAX_REASON_BYTES`].
pub fn kept_reason(reason: &str) -> String {
    cut(&crate::api::escape_controls(reason), MAX_REASON_BYTES)
}

/// `text` cut to at most `max` bytes on a character boundary, marked with "…" when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let ellipsis = '…';
    let mut end = max - ellipsis.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

/// `report` with its reason made safe to keep ([`kept_reason`]).
fn keepable(mut report: PluginReport) -> PluginReport {
    if let Some(reason) = &report.reason {
        report.reason = Some(kept_reason(reason));
    }
    report
}

/// One pod's reports by plugin. A pod runs a plugin or a few, so this is a vector searched
/// in order and grown one entry at a time: a map's smallest node (a B-tree leaf holds 11
/// entries, 1.3 KiB) was the largest thing the operator kept per pod.
#[derive(Debug, Default)]
struct Reports(Vec<(String, PluginReport)>);

impl Reports {
    fn get(&self, plugin: &str) -> Option<&PluginReport> {
        self.0.iter().find(|(p, _)| p == plugin).map(|(_, r)| r)
    }

    fn insert(&mut self, plugin: &str, report: PluginReport) {
        let full = self.0.len() >= MAX_PLUGINS_PER_POD;
        match self.0.iter_mut().find(|(p, _)| p == plugin) {
            Some((_, kept)) => *kept = report,
            None if full => {
                tracing::warn!(
                    plugin,
                    "a pod reports more than {MAX_PLUGINS_PER_POD} plugins; ignored"
                );
            }
            None => {
                self.0.reserve_exact(1);
                self.0.push((plugin.to_string(), report));
            }
        }
    }
}

/// The sending side of a sidecar's queue.
pub type Outbox = mpsc::Sender<Outgoing>;

/// A queue for one sidecar: the registry keeps the sender, the channel the receiver.
/// Bounded: a sidecar that stops reading is not sent more.
pub fn outbox() -> (Outbox, mpsc::Receiver<Outgoing>) {
    mpsc::channel(16)
}

/// A stream that has not been told `Synced` yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The stream.
    pub stream: u64,
    /// The pod object it belongs to.
    pub uid: String,
    /// The releases (by uid) that have planned for it: sent it what they planned, or
    /// decided it needs nothing.
    pub planned: Vec<String>,
}

/// What the registry knows of one pod object, for one plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sighting {
    /// The pod's open stream (`None`: its sidecar is not connected).
    pub stream: Option<u64>,
    /// The sidecar's report for the plugin.
    pub report: Option<PluginReport>,
    /// Restart counts from when the plugin's revision was assigned.
    pub baseline: Option<Baseline>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<(String, String), PodEntry>,
    /// Streams waiting for `Synced`, by (namespace, pod): a few at a time, except while a
    /// fleet reconnects.
    waiting: BTreeMap<(String, String), Waiting>,
}

/// Sidecar connections and reports, keyed by (namespace, pod).
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    changed: broadcast::Sender<String>,
    /// Wakes the `Synced` settler ([`crate::synced::run`]); permits do not pile up.
    settle: Notify,
    connections: std::sync::atomic::AtomicU64,
    /// Pods with an open channel, kept as they connect and go (read per connect, so it
    /// must not scan every pod).
    connected: std::sync::atomic::AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changed: broadcast::channel(1024).0,
            settle: Notify::new(),
            connections: std::sync::atomic::AtomicU64::new(0),
            connected: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

fn key(namespace: &str, pod: &str) -> (String, String) {
    (namespace.to_string(), pod.to_string())
}

impl Registry {
    /// What is known of pod object `uid` for `plugin`: its open stream (which goes back to
    /// [`Registry::assign`] with whatever is planned from this view), its report, and the
    /// restart counts its assignment is measured from. Nothing when the registry's entry
    /// belongs to another pod object of the same name (an old pod whose delete has not been
    /// seen, or a new one the cache has not seen yet).
    pub fn view(&self, namespace: &str, pod: &str, uid: &str, plugin: &str) -> Sighting {
        let Ok(inner) = self.inner.lock() else {
            return Sighting::default();
        };
        match inner.pods.get(&key(namespace, pod)) {
            Some(entry) if entry.uid == uid => Sighting {
                stream: entry.outbox.as_ref().map(|_| entry.connection),
                report: entry.plugins.get(plugin).cloned(),
                baseline: entry.baseline(plugin).cloned(),
            },
            _ => Sighting::default(),
        }
    }

    /// Sends `directive` to the pod's sidecar over stream `connection` and records the
    /// assignment as pending, measured from the pod's `restarts` now (for
    /// [`crate::crashloop`]). Returns false, sending nothing, when that stream is gone: the
    /// plan was made from what the sidecar had said on it, and a sidecar that has connected
    /// again since (an operator restart, a network blip) has said in its Hello what it holds
    /// now, which the next plan starts from. Without this check a pod reconnecting while a
    /// plan was being made would be sent what was planned for the pod as it looked before,
    /// say the stable revision for a pod the operator had not heard from yet, and would roll
    /// back from the target it already ran.
    pub fn assign(
        &self,
        namespace: &str,
        pod: &str,
        connection: u64,
        directive: Arc<Directive>,
        restarts: Vec<(String, i32)>,
        now: Timestamp,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some(entry) = inner.pods.get_mut(&key(namespace, pod)) else {
            return false;
        };
        if entry.connection != connection {
            return false;
        }
        let Some(outbox) = &mut entry.outbox else {
            return false;
        };
        let kept = entry.plugins.get(&directive.plugin);
        let pending = PluginReport {
            assigned: directive.revision.clone(),
            serving: kept.and_then(|r| r.serving.clone()),
            state: AckState::Pending,
            reason: None,
            since: now,
            workers: kept.map_or(0, |r| r.workers),
            workers_loaded: 0,
        };
        let sent = outbox.try_send(Outgoing::Assign(directive.clone())).is_ok();
        if sent {
            entry.plugins.insert(&directive.plugin, pending);
            entry.set_baseline(
                &directive.plugin,
                Baseline {
                    revision: directive.revision.clone(),
                    restarts,
                },
            );
        }
        sent
    }

    /// Records the pod's `restarts` as the baseline of `plugin`'s `revision` on stream
    /// `connection`, unless one is kept for that revision already: a sidecar that said in
    /// its Hello that it is loading a revision this operator did not assign (it restarted
    /// since) is measured from when the operator first heard of it.
    pub fn baseline_if_missing(
        &self,
        namespace: &str,
        pod: &str,
        connection: u64,
        plugin: &str,
        revision: &str,
        restarts: Vec<(String, i32)>,
    ) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(entry) = inner.pods.get_mut(&key(namespace, pod))
            && entry.connection == connection
            && entry.baseline(plugin).and_then(|b| b.revision.as_deref()) != Some(revision)
        {
            entry.set_baseline(
                plugin,
                Baseline {
                    revision: Some(revision.to_string()),
                    restarts,
                },
            );
        }
    }

    /// A sidecar of pod object `uid` opened its channel and said in its Hello what it holds
    /// (`hello`, by plugin, at most [`MAX_PLUGINS_PER_POD`] kept); that replaces whatever
    /// was known of the pod, so a recreated pod with a reused name (a StatefulSet's) starts
    /// from what its own sidecar has. The stream waits for `Synced`. Returns the
    /// connection's id for [`Registry::disconnect`] and [`Registry::report`].
    pub fn connect(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        outbox: Outbox,
        hello: Vec<(String, PluginReport)>,
    ) -> u64 {
        let id = self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut inner) = self.inner.lock() {
            let entry = inner.pods.entry(key(namespace, pod)).or_default();
            if entry.outbox.replace(outbox).is_none() {
                self.connected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            entry.connection = id;
            if entry.uid != uid {
                entry.uid = uid.to_string();
                entry.baselines = Vec::new();
            }
            entry.plugins = Reports::default();
            for (plugin, report) in hello {
                entry.plugins.insert(&plugin, keepable(report));
            }
            inner.waiting.insert(
                key(namespace, pod),
                Waiting {
                    stream: id,
                    uid: uid.to_string(),
                    planned: Vec::new(),
                },
            );
        }
        self.settle.notify_one();
        let _ = self.changed.send(namespace.to_string());
        id
    }

    /// Connection `id` closed; what the sidecar reported stays known.
    pub fn disconnect(&self, namespace: &str, pod: &str, id: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            let key = key(namespace, pod);
            if let Some(entry) = inner.pods.get_mut(&key)
                && entry.connection == id
                && entry.outbox.take().is_some()
            {
                self.connected
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            if inner.waiting.get(&key).is_some_and(|w| w.stream == id) {
                inner.waiting.remove(&key);
            }
        }
        let _ = self.changed.send(namespace.to_string());
    }

    /// The sidecar on stream `connection` reported on a plugin; ignored (false) unless that
    /// stream is the one that owns the pod now. `report.since` is the operator's clock when
    /// it came in, and stays as it was while nothing but the reason or the worker counts
    /// change: the planner compares it with its own clock (minReadySeconds, the start of a
    /// retry), never with a sidecar's.
    pub fn report(
        &self,
        namespace: &str,
        pod: &str,
        connection: u64,
        plugin: &str,
        mut report: PluginReport,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some(entry) = inner.pods.get_mut(&key(namespace, pod)) else {
            return false;
        };
        if entry.connection != connection || entry.outbox.is_none() {
            return false;
        }
        if let Some(kept) = entry.plugins.get(plugin)
            && (&kept.assigned, &kept.serving, kept.state)
                == (&report.assigned, &report.serving, report.state)
        {
            report.since = kept.since;
        }
        let settled = matches!(report.state, AckState::Loaded | AckState::Failed);
        if settled && entry.baseline(plugin).map(|b| &b.revision) == Some(&report.assigned) {
            entry.baselines.retain(|(p, _)| p != plugin);
        }
        entry.plugins.insert(plugin, keepable(report));
        drop(inner);
        let _ = self.changed.send(namespace.to_string());
        true
    }

    /// Ends every sidecar stream and forgets every pod: this replica stopped leading. Each
    /// stream's session sees its queue closed and ends, so the sidecar reconnects (to the
    /// new leader); what it said here is stale by the time this replica leads again.
    pub fn close_all(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            let closed = inner.pods.values().filter(|e| e.outbox.is_some()).count();
            inner.pods.clear();
            inner.waiting.clear();
            self.connected
                .fetch_sub(closed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Forgets a deleted pod object: only the entry of that uid. A pod recreated under the
    /// same name whose sidecar connected before the old pod's delete event came in keeps its
    /// stream. Returns whether anything was forgotten.
    pub fn forget(&self, namespace: &str, pod: &str, uid: &str) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let key = key(namespace, pod);
        if inner.pods.get(&key).is_none_or(|entry| entry.uid != uid) {
            return false;
        }
        if let Some(entry) = inner.pods.remove(&key)
            && entry.outbox.is_some()
        {
            self.connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if inner.waiting.get(&key).is_some_and(|w| w.uid == uid) {
            inner.waiting.remove(&key);
        }
        true
    }

    /// Release `release` (its uid) has planned for these streams (`(pod, stream)`, sorted
    /// by pod name): what it planned for them went out before this call. Returns how many
    /// waiting streams that was news to, and wakes the settler if any.
    pub fn planned(&self, namespace: &str, release: &str, streams: &[(&str, u64)]) -> usize {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        let mut marked = 0;
        let from = key(namespace, "");
        for ((ns, pod), waiting) in inner.waiting.range_mut(from..) {
            if ns != namespace {
                break;
            }
            let planned_here = streams
                .binary_search_by(|(name, _)| (*name).cmp(pod.as_str()))
                .is_ok_and(|i| streams[i].1 == waiting.stream);
            if planned_here && !waiting.planned.iter().any(|r| r == release) {
                waiting.planned.push(release.to_string());
                marked += 1;
            }
        }
        drop(inner);
        if marked > 0 {
            self.settle.notify_one();
        }
        marked
    }

    /// The streams waiting for `Synced`, as `(namespace, pod, waiting)`.
    pub fn waiting(&self) -> Vec<(String, String, Waiting)> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .waiting
            .iter()
            .map(|((ns, pod), w)| (ns.clone(), pod.clone(), w.clone()))
            .collect()
    }

    /// Queues `Synced` on the pod's stream `stream`, after everything queued before it.
    /// Returns false, sending nothing, when that stream is gone or was told already, or its
    /// queue is full (the settler tries again).
    pub fn synced(&self, namespace: &str, pod: &str, stream: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let key = key(namespace, pod);
        if inner.waiting.get(&key).is_none_or(|w| w.stream != stream) {
            return false;
        }
        let sent = inner
            .pods
            .get_mut(&key)
            .filter(|entry| entry.connection == stream)
            .and_then(|entry| entry.outbox.as_mut())
            .is_some_and(|outbox| outbox.try_send(Outgoing::Synced).is_ok());
        if sent {
            inner.waiting.remove(&key);
        }
        sent
    }

    /// The pod changed in the cache: if its stream waits for `Synced`, the settler looks
    /// again (the pod may have just become known, or changed labels).
    pub fn pod_changed(&self, namespace: &str, pod: &str) {
        let waits = self
            .inner
            .lock()
            .is_ok_and(|inner| inner.waiting.contains_key(&key(namespace, pod)));
        if waits {
            self.settle.notify_one();
        }
    }

    /// Wakes the settler (a release went away: streams may owe it nothing any more).
    pub fn wake_settler(&self) {
        self.settle.notify_one();
    }

    /// Resolves when the settler has been woken since it last looked.
    pub async fn settler_woken(&self) {
        self.settle.notified().await;
    }

    /// Namespaces in which something changed, as it happens.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// How many sidecars are connected.
    pub fn connected(&self) -> usize {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn directive(revision: &str) -> Arc<Directive> {
        Arc::new(Directive {
            plugin: "auth".into(),
            revision: Some(revision.into()),
            url: "oci://r/p:1".into(),
            digest: "sha256:00".into(),
            config: None,
            credentials: None,
            signature_key: None,
        })
    }

    fn report(
        assigned: &str,
        serving: Option<&str>,
        state: AckState,
        since: Timestamp,
    ) -> PluginReport {
        PluginReport {
            assigned: Some(assigned.into()),
            serving: serving.map(Into::into),
            state,
            reason: None,
            since,
            workers: 0,
            workers_loaded: 0,
        }
    }

    fn revision(message: Option<Outgoing>) -> Option<String> {
        match message {
            Some(Outgoing::Assign(d)) => d.revision.clone(),
            other => panic!("expected an Assign, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn assignments_reach_connected_sidecars_only_and_are_pending_until_reported() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(
            registry.view("shop", "a", "u1", "auth"),
            Sighting::default()
        );
        assert!(
            !registry.assign("shop", "a", 1, directive("r1"), Vec::new(), now),
            "not connected"
        );
        let (tx, mut rx) = outbox();
        let first = registry.connect("shop", "a", "u1", tx, Vec::new());
        assert_eq!(registry.view("shop", "a", "u1", "auth").stream, Some(first));
        assert!(registry.assign("shop", "a", first, directive("r1"), Vec::new(), now));
        assert_eq!(revision(rx.next().await).as_deref(), Some("r1"));
        let seen = registry.view("shop", "a", "u1", "auth");
        assert_eq!(seen.stream, Some(first));
        let pending = seen.report.unwrap();
        assert_eq!(
            (pending.assigned.as_deref(), pending.state),
            (Some("r1"), AckState::Pending)
        );

        // A reconnect replaces the outbox; the old stream ending does not cut the new one off.
        let loading = PluginReport {
            state: AckState::Loading,
            ..pending
        };
        let (tx2, _rx2) = outbox();
        let second = registry.connect(
            "shop",
            "a",
            "u1",
            tx2,
            vec![("auth".into(), loading.clone())],
        );
        registry.disconnect("shop", "a", first);
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").stream,
            Some(second),
            "still connected through the new stream"
        );
        registry.disconnect("shop", "a", second);
        let seen = registry.view("shop", "a", "u1", "auth");
        assert_eq!(seen.stream, None);
        assert_eq!(
            seen.report,
            Some(loading),
            "reports survive a reconnect gap"
        );

        // A new sidecar for a pod of the same name (a StatefulSet's) holds nothing yet.
        let (tx3, _rx3) = outbox();
        let third = registry.connect("shop", "a", "u2", tx3, Vec::new());
        assert_eq!(
            registry.view("shop", "a", "u2", "auth"),
            Sighting {
                stream: Some(third),
                ..Sighting::default()
            }
        );
        assert!(registry.forget("shop", "a", "u2"));
        assert_eq!(
            registry.view("shop", "a", "u2", "auth"),
            Sighting::default()
        );
        assert_eq!(
            registry.connected(),
            0,
            "forgetting a connected pod counts it gone"
        );
    }

    #[test]
    fn reasons_are_kept_escaped_and_cut_whichever_way_they_come_in() {
        let registry = Registry::default();
        let failed = |reason: String| PluginReport {
            reason: Some(reason),
            ..report("r1", None, AckState::Failed, Timestamp::UNIX_EPOCH)
        };
        let (tx, _rx) = outbox();
        let hello = vec![(
            "auth".to_string(),
            failed("app: \u{1b}[31mred\u{1b}[0m\r\n".into()),
        )];
        let id = registry.connect("shop", "a", "u1", tx, hello);
        let kept = registry.view("shop", "a", "u1", "auth").report.unwrap();
        assert_eq!(
            kept.reason.as_deref(),
            Some(r"app: \u{1b}[31mred\u{1b}[0m\r\n")
        );

        registry.report("shop", "a", id, "auth", failed("é\u{7}".repeat(1_000)));
        let kept = registry
            .view("shop", "a", "u1", "auth")
            .report
            .unwrap()
            .reason
            .unwrap();
        assert!(kept.len() <= MAX_REASON_BYTES, "{}", kept.len());
        assert!(kept.ends_with('…') && !kept.contains('\u{7}'), "{kept}");
        assert_eq!(cut("short", MAX_REASON_BYTES), "short");
        assert_eq!(cut("ééé", 5), "é…", "cut on a character boundary");
    }

    #[test]
    fn plugin_names_and_revisions_longer_than_any_the_operator_gives_out_are_refused() {
        let ok = "r1".to_string();
        assert_eq!(check_names("auth", [&ok, &ok]), Ok(()));
        assert_eq!(
            check_names(&"p".repeat(64), [&ok]),
            Err("plugin name of 64 bytes (1 to 63 allowed)".into())
        );
        assert!(check_names("", [&ok]).is_err());
        let long = "r".repeat(65);
        assert_eq!(
            check_names("a\u{1b}", [&ok, &long]),
            Err(r"plugin a\u{1b}: revision of 65 bytes (at most 64 allowed)".into())
        );
    }

    #[tokio::test]
    async fn a_replica_that_steps_down_ends_every_stream_and_forgets_every_pod() {
        let registry = Registry::default();
        let (tx, mut rx) = outbox();
        let id = registry.connect("shop", "a", "u1", tx, Vec::new());
        let (tx, _rx_b) = outbox();
        registry.connect("shop", "b", "u2", tx, Vec::new());
        registry.close_all();
        assert_eq!(
            rx.next().await,
            None,
            "the session's queue is closed: it ends"
        );
        assert_eq!(registry.connected(), 0);
        assert!(registry.waiting().is_empty());
        assert_eq!(
            registry.view("shop", "a", "u1", "auth"),
            Sighting::default()
        );
        registry.disconnect("shop", "a", id);
        assert_eq!(
            registry.connected(),
            0,
            "the session's own end counts nothing twice"
        );
    }

    #[tokio::test]
    async fn a_late_delete_of_the_old_pod_keeps_the_new_pods_stream() {
        // A StatefulSet pod web-0 (uid old) is deleted and recreated (uid new); the new
        // pod's sidecar attaches before the old pod's delete event reaches the operator.
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (tx, _rx) = outbox();
        let old = registry.connect("shop", "web-0", "old", tx, Vec::new());
        registry.disconnect("shop", "web-0", old);
        let (tx, mut rx) = outbox();
        let new = registry.connect("shop", "web-0", "new", tx, Vec::new());

        assert!(
            !registry.forget("shop", "web-0", "old"),
            "not the old pod's any more"
        );
        assert_eq!(
            registry.view("shop", "web-0", "new", "auth").stream,
            Some(new)
        );
        assert_eq!(registry.connected(), 1);
        assert_eq!(
            registry.waiting().len(),
            1,
            "the new stream still waits for Synced"
        );
        assert!(registry.assign("shop", "web-0", new, directive("r1"), Vec::new(), now));
        assert_eq!(revision(rx.next().await).as_deref(), Some("r1"));

        // Its own delete forgets it.
        assert!(registry.forget("shop", "web-0", "new"));
        assert_eq!(registry.connected(), 0);
        assert!(registry.waiting().is_empty());
    }

    #[test]
    fn a_stream_is_not_the_pod_the_cache_knows_under_another_uid() {
        // The cache still holds the old pod object (uid old) while the new one's sidecar is
        // connected (uid new): the planner must see the old pod as unreachable and knowing
        // nothing, not as the new pod's stream and reports.
        let registry = Registry::default();
        let (tx, _rx) = outbox();
        let hello = vec![(
            "auth".to_string(),
            report("r1", Some("r1"), AckState::Loaded, Timestamp::UNIX_EPOCH),
        )];
        let id = registry.connect("shop", "web-0", "new", tx, hello);
        assert_eq!(
            registry.view("shop", "web-0", "old", "auth"),
            Sighting::default()
        );
        assert_eq!(
            registry.view("shop", "web-0", "new", "auth").stream,
            Some(id)
        );
    }

    #[test]
    fn only_the_stream_that_owns_the_pod_may_report_for_it() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let loaded = report("r1", Some("r1"), AckState::Loaded, now);
        assert!(
            !registry.report("shop", "a", 1, "auth", loaded.clone()),
            "an unknown pod"
        );
        let (tx, _rx) = outbox();
        let first = registry.connect("shop", "a", "u1", tx, Vec::new());
        let (tx, _rx2) = outbox();
        let second = registry.connect("shop", "a", "u1", tx, Vec::new());
        assert!(!registry.report("shop", "a", first, "auth", loaded.clone()));
        assert_eq!(registry.view("shop", "a", "u1", "auth").report, None);
        assert!(registry.report("shop", "a", second, "auth", loaded.clone()));
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").report,
            Some(loaded)
        );
    }

    #[tokio::test]
    async fn what_was_planned_before_a_reconnect_is_not_sent_over_the_new_stream() {
        // The operator restarted: a plan made before the pod's sidecar was heard from (no
        // stream, no report: "put it on the stable revision") must not reach the sidecar
        // that connects meanwhile and says in its Hello that it runs the target.
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(registry.view("shop", "a", "u1", "auth").stream, None);
        let target = report("r2", Some("r2"), AckState::Loaded, now);
        let (tx, mut rx) = outbox();
        let first = registry.connect("shop", "a", "u1", tx, vec![("auth".into(), target.clone())]);
        let never = 0; // stream ids start at 1
        assert!(!registry.assign("shop", "a", never, directive("r1"), Vec::new(), now));

        // The same holds for a plan made over one stream when the sidecar has a new one.
        let (tx2, mut rx2) = outbox();
        let second = registry.connect(
            "shop",
            "a",
            "u1",
            tx2,
            vec![("auth".into(), target.clone())],
        );
        assert!(!registry.assign("shop", "a", first, directive("r1"), Vec::new(), now));
        let seen = registry.view("shop", "a", "u1", "auth");
        assert_eq!((seen.stream, seen.report), (Some(second), Some(target)));
        drop(registry);
        assert!(
            rx.next().await.is_none() && rx2.next().await.is_none(),
            "nothing was sent"
        );
    }

    #[test]
    fn since_is_when_the_state_last_changed() {
        let registry = Registry::default();
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let (tx, _rx) = outbox();
        let id = registry.connect("shop", "a", "u1", tx, Vec::new());
        let failed = |reason: &str, since: Timestamp| PluginReport {
            reason: Some(reason.into()),
            ..report("r1", None, AckState::Failed, since)
        };
        registry.report("shop", "a", id, "auth", failed("fetch: 404", at(10)));
        registry.report("shop", "a", id, "auth", failed("fetch: 503", at(20)));
        let kept = registry.view("shop", "a", "u1", "auth").report.unwrap();
        assert_eq!(
            (kept.since, kept.reason.as_deref()),
            (at(10), Some("fetch: 503"))
        );
        let loaded = report("r1", Some("r1"), AckState::Loaded, at(30));
        registry.report("shop", "a", id, "auth", loaded);
        assert_eq!(
            registry
                .view("shop", "a", "u1", "auth")
                .report
                .unwrap()
                .since,
            at(30)
        );
        // More workers loading the same revision is no new state.
        let loading = |workers, loaded, since| PluginReport {
            workers,
            workers_loaded: loaded,
            ..report("r2", Some("r1"), AckState::Loading, since)
        };
        registry.report("shop", "a", id, "auth", loading(4, 1, at(40)));
        registry.report("shop", "a", id, "auth", loading(4, 3, at(50)));
        let kept = registry.view("shop", "a", "u1", "auth").report.unwrap();
        assert_eq!(
            (kept.since, kept.workers, kept.workers_loaded),
            (at(40), 4, 3)
        );
    }

    #[tokio::test]
    async fn each_plugin_keeps_its_own_report_and_a_new_assignment_keeps_what_serves() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (tx, _rx) = outbox();
        let id = registry.connect("shop", "a", "u1", tx, Vec::new());
        let loaded = |revision: &str| PluginReport {
            workers: 4,
            workers_loaded: 4,
            ..report(revision, Some(revision), AckState::Loaded, now)
        };
        registry.report("shop", "a", id, "auth", loaded("r1"));
        registry.report("shop", "a", id, "geo", loaded("g1"));
        assert!(registry.assign("shop", "a", id, directive("r2"), Vec::new(), now));

        let auth = registry.view("shop", "a", "u1", "auth").report.unwrap();
        assert_eq!(
            (
                auth.assigned.as_deref(),
                auth.serving.as_deref(),
                auth.state,
                (auth.workers, auth.workers_loaded)
            ),
            (Some("r2"), Some("r1"), AckState::Pending, (4, 0)),
            "r1 serves until r2 is reported loaded, by none of the 4 workers yet"
        );
        let geo = registry.view("shop", "a", "u1", "geo").report.unwrap();
        assert_eq!(
            (geo.serving.as_deref(), geo.state),
            (Some("g1"), AckState::Loaded)
        );
        assert_eq!(registry.view("shop", "a", "u1", "other").report, None);
    }

    #[test]
    fn a_baseline_is_taken_at_assignment_kept_across_reconnects_and_dropped_once_settled() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (tx, _rx) = outbox();
        let first = registry.connect("shop", "a", "u1", tx, Vec::new());
        let restarts = |n| vec![("app".to_string(), n)];
        assert!(registry.assign("shop", "a", first, directive("r1"), restarts(1), now));
        let expected = Baseline {
            revision: Some("r1".into()),
            restarts: restarts(1),
        };
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").baseline,
            Some(expected.clone())
        );

        // The sidecar restarts (its container crashed) and says it is still loading r1.
        let (tx, _rx2) = outbox();
        let loading = report("r1", None, AckState::Loading, now);
        let second = registry.connect("shop", "a", "u1", tx, vec![("auth".into(), loading)]);
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").baseline,
            Some(expected.clone()),
            "restarts still count from the assignment"
        );
        registry.baseline_if_missing("shop", "a", second, "auth", "r1", restarts(5));
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").baseline,
            Some(expected),
            "an existing baseline is kept"
        );

        registry.report(
            "shop",
            "a",
            second,
            "auth",
            report("r1", Some("r1"), AckState::Loaded, now),
        );
        assert_eq!(registry.view("shop", "a", "u1", "auth").baseline, None);

        // A sidecar loading something this operator never assigned is measured from now.
        registry.report(
            "shop",
            "a",
            second,
            "auth",
            report("r2", Some("r1"), AckState::Loading, now),
        );
        registry.baseline_if_missing("shop", "a", second, "auth", "r2", restarts(5));
        assert_eq!(
            registry.view("shop", "a", "u1", "auth").baseline,
            Some(Baseline {
                revision: Some("r2".into()),
                restarts: restarts(5)
            })
        );

        // Another pod object under the same name starts from nothing.
        let (tx, _rx3) = outbox();
        registry.connect("shop", "a", "u2", tx, Vec::new());
        assert_eq!(registry.view("shop", "a", "u2", "auth").baseline, None);
    }

    #[tokio::test]
    async fn synced_goes_out_after_what_was_planned_and_only_once_per_stream() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (tx, mut rx) = outbox();
        let id = registry.connect("shop", "a", "u1", tx, Vec::new());
        let (tx, _rx_b) = outbox();
        let b = registry.connect("shop", "b", "u2", tx, Vec::new());
        let (tx, _rx_c) = outbox();
        registry.connect("other", "a", "u3", tx, Vec::new());
        assert_eq!(registry.waiting().len(), 3);

        assert!(registry.assign("shop", "a", id, directive("r1"), Vec::new(), now));
        // Marks only the streams the release planned, in its namespace, once.
        assert_eq!(
            registry.planned("shop", "rel-1", &[("a", id), ("b", b + 100)]),
            1
        );
        assert_eq!(registry.planned("shop", "rel-1", &[("a", id)]), 0);
        let waiting = registry.waiting();
        let a = waiting
            .iter()
            .find(|(ns, pod, _)| (ns.as_str(), pod.as_str()) == ("shop", "a"))
            .unwrap();
        assert_eq!(a.2.planned, ["rel-1"]);
        assert!(
            waiting
                .iter()
                .all(|(_, pod, w)| pod == "a" || w.planned.is_empty())
        );

        assert!(!registry.synced("shop", "a", id + 100), "another stream");
        assert!(registry.synced("shop", "a", id));
        assert!(!registry.synced("shop", "a", id), "once");
        assert_eq!(revision(rx.next().await).as_deref(), Some("r1"));
        assert_eq!(rx.next().await, Some(Outgoing::Synced), "after the Assign");
        assert_eq!(registry.waiting().len(), 2);

        // A stream that ends stops waiting.
        registry.disconnect("shop", "b", b);
        assert_eq!(registry.waiting().len(), 1);
    }
}
