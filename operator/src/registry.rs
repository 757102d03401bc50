//! The operator's memory of sidecars: which pods have a live channel, and for each plugin
//! what the pod was told to run and how loading it went. The sidecar channel writes it
//! (connect, report, disconnect); the controller reads it into the planner's `PodView`s and
//! sends assignments through it. A change wakes the controller for the pod's namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use jiff::Timestamp;
use tokio::sync::broadcast;

use crate::api::AckState;

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

#[derive(Debug, Default)]
struct PodEntry {
    /// Where the pod's directives go. A futures channel allocates per message, not a block
    /// of 32 slots up front (tokio's); with one per pod, that is most of its cost. Every
    /// pod assigned a revision shares that revision's one `Directive`.
    outbox: Option<Outbox>,
    /// Which connection the outbox belongs to, so a stale stream's end cannot cut off the
    /// sidecar's new one.
    connection: u64,
    plugins: Reports,
}

/// The most plugins kept per pod: what a sidecar reports is bounded, whatever it sends.
const MAX_PLUGINS_PER_POD: usize = 64;

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

/// The sending side of a sidecar's directive queue.
pub type Outbox = mpsc::Sender<Arc<Directive>>;

/// A directive queue for one sidecar: the registry keeps the sender, the channel the
/// receiver. Bounded: a sidecar that stops reading is not sent more.
pub fn outbox() -> (Outbox, mpsc::Receiver<Arc<Directive>>) {
    mpsc::channel(16)
}

/// Sidecar connections and reports, keyed by (namespace, pod).
#[derive(Debug)]
pub struct Registry {
    pods: Mutex<HashMap<(String, String), PodEntry>>,
    changed: broadcast::Sender<String>,
    connections: std::sync::atomic::AtomicU64,
    /// Pods with an open channel, kept as they connect and go (read per connect, so it
    /// must not scan every pod).
    connected: std::sync::atomic::AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            pods: Mutex::default(),
            changed: broadcast::channel(1024).0,
            connections: std::sync::atomic::AtomicU64::new(0),
            connected: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Registry {
    /// The pod's open stream (`None` when its sidecar is not connected) and its report for
    /// `plugin`. The stream's id goes back to [`Registry::assign`] with whatever is planned
    /// from this view.
    pub fn view(
        &self,
        namespace: &str,
        pod: &str,
        plugin: &str,
    ) -> (Option<u64>, Option<PluginReport>) {
        let Ok(pods) = self.pods.lock() else {
            return (None, None);
        };
        match pods.get(&(namespace.to_string(), pod.to_string())) {
            Some(entry) => (
                entry.outbox.as_ref().map(|_| entry.connection),
                entry.plugins.get(plugin).cloned(),
            ),
            None => (None, None),
        }
    }

    /// Sends `directive` to the pod's sidecar over stream `connection` and records the
    /// assignment as pending. Returns false, sending nothing, when that stream is gone: the
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
        now: Timestamp,
    ) -> bool {
        let Ok(mut pods) = self.pods.lock() else {
            return false;
        };
        let Some(entry) = pods.get_mut(&(namespace.to_string(), pod.to_string())) else {
            return false;
        };
        if entry.connection != connection {
            return false;
        }
        let Some(outbox) = &mut entry.outbox else {
            return false;
        };
        let pending = PluginReport {
            assigned: directive.revision.clone(),
            serving: entry
                .plugins
                .get(&directive.plugin)
                .and_then(|r| r.serving.clone()),
            state: AckState::Pending,
            reason: None,
            since: now,
        };
        let sent = outbox.try_send(directive.clone()).is_ok();
        if sent {
            entry.plugins.insert(&directive.plugin, pending);
        }
        sent
    }

    /// A sidecar opened its channel and said in its Hello what it holds (`hello`, by plugin,
    /// at most [`MAX_PLUGINS_PER_POD`] kept); that replaces whatever was known of the pod, so
    /// a recreated pod with a reused name (a StatefulSet's) starts from what its own sidecar
    /// has. Returns the connection's id for [`Registry::disconnect`].
    pub fn connect(
        &self,
        namespace: &str,
        pod: &str,
        outbox: Outbox,
        hello: Vec<(String, PluginReport)>,
    ) -> u64 {
        let id = self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut pods) = self.pods.lock() {
            let entry = pods
                .entry((namespace.to_string(), pod.to_string()))
                .or_default();
            if entry.outbox.replace(outbox).is_none() {
                self.connected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            entry.connection = id;
            entry.plugins = Reports::default();
            for (plugin, report) in hello {
                entry.plugins.insert(&plugin, report);
            }
        }
        let _ = self.changed.send(namespace.to_string());
        id
    }

    /// Connection `id` closed; what the sidecar reported stays known.
    pub fn disconnect(&self, namespace: &str, pod: &str, id: u64) {
        if let Ok(mut pods) = self.pods.lock()
            && let Some(entry) = pods.get_mut(&(namespace.to_string(), pod.to_string()))
            && entry.connection == id
            && entry.outbox.take().is_some()
        {
            self.connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.changed.send(namespace.to_string());
    }

    /// A sidecar reported on a plugin. `report.since` is the operator's clock when it came
    /// in, and stays as it was while nothing but the reason changes: the planner compares it
    /// with its own clock (minReadySeconds, the start of a retry), never with a sidecar's.
    pub fn report(&self, namespace: &str, pod: &str, plugin: &str, mut report: PluginReport) {
        if let Ok(mut pods) = self.pods.lock() {
            let entry = pods
                .entry((namespace.to_string(), pod.to_string()))
                .or_default();
            if let Some(kept) = entry.plugins.get(plugin)
                && (&kept.assigned, &kept.serving, kept.state)
                    == (&report.assigned, &report.serving, report.state)
            {
                report.since = kept.since;
            }
            entry.plugins.insert(plugin, report);
        }
        let _ = self.changed.send(namespace.to_string());
    }

    /// Forgets a deleted pod.
    pub fn forget(&self, namespace: &str, pod: &str) {
        if let Ok(mut pods) = self.pods.lock()
            && let Some(entry) = pods.remove(&(namespace.to_string(), pod.to_string()))
            && entry.outbox.is_some()
        {
            self.connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
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

    #[tokio::test]
    async fn assignments_reach_connected_sidecars_only_and_are_pending_until_reported() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(registry.view("shop", "a", "auth"), (None, None));
        assert!(
            !registry.assign("shop", "a", 1, directive("r1"), now),
            "not connected"
        );
        let (tx, mut rx) = outbox();
        let first = registry.connect("shop", "a", tx, Vec::new());
        assert_eq!(registry.view("shop", "a", "auth"), (Some(first), None));
        assert!(registry.assign("shop", "a", first, directive("r1"), now));
        assert_eq!(
            rx.next().await.and_then(|d| d.revision.clone()).as_deref(),
            Some("r1")
        );
        let (connection, report) = registry.view("shop", "a", "auth");
        assert_eq!(connection, Some(first));
        let report = report.unwrap();
        assert_eq!(
            (report.assigned.as_deref(), report.state),
            (Some("r1"), AckState::Pending)
        );

        // A reconnect replaces the outbox; the old stream ending does not cut the new one off.
        let loading = PluginReport {
            state: AckState::Loading,
            ..report
        };
        let (tx2, _rx2) = outbox();
        let second = registry.connect("shop", "a", tx2, vec![("auth".into(), loading.clone())]);
        registry.disconnect("shop", "a", first);
        assert_eq!(
            registry.view("shop", "a", "auth").0,
            Some(second),
            "still connected through the new stream"
        );
        registry.disconnect("shop", "a", second);
        let (connection, report) = registry.view("shop", "a", "auth");
        assert_eq!(connection, None);
        assert_eq!(report, Some(loading), "reports survive a reconnect gap");

        // A new sidecar for a pod of the same name (a StatefulSet's) holds nothing yet.
        let (tx3, _rx3) = outbox();
        let third = registry.connect("shop", "a", tx3, Vec::new());
        assert_eq!(registry.view("shop", "a", "auth"), (Some(third), None));
        registry.forget("shop", "a");
        assert_eq!(registry.view("shop", "a", "auth"), (None, None));
        assert_eq!(
            registry.connected(),
            0,
            "forgetting a connected pod counts it gone"
        );
    }

    #[tokio::test]
    async fn what_was_planned_before_a_reconnect_is_not_sent_over_the_new_stream() {
        // The operator restarted: a plan made before the pod's sidecar was heard from (no
        // stream, no report: "put it on the stable revision") must not reach the sidecar
        // that connects meanwhile and says in its Hello that it runs the target.
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (planned_on, _) = registry.view("shop", "a", "auth");
        assert_eq!(planned_on, None);
        let target = PluginReport {
            assigned: Some("r2".into()),
            serving: Some("r2".into()),
            state: AckState::Loaded,
            reason: None,
            since: now,
        };
        let (tx, mut rx) = outbox();
        let first = registry.connect("shop", "a", tx, vec![("auth".into(), target.clone())]);
        let never = 0; // stream ids start at 1
        assert!(!registry.assign("shop", "a", never, directive("r1"), now));

        // The same holds for a plan made over one stream when the sidecar has a new one.
        let (tx2, mut rx2) = outbox();
        let second = registry.connect("shop", "a", tx2, vec![("auth".into(), target.clone())]);
        assert!(!registry.assign("shop", "a", first, directive("r1"), now));
        assert_eq!(
            registry.view("shop", "a", "auth"),
            (Some(second), Some(target))
        );
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
        let failed = |reason: &str, since: Timestamp| PluginReport {
            assigned: Some("r1".into()),
            serving: None,
            state: AckState::Failed,
            reason: Some(reason.into()),
            since,
        };
        registry.report("shop", "a", "auth", failed("fetch: 404", at(10)));
        registry.report("shop", "a", "auth", failed("fetch: 503", at(20)));
        let kept = registry.view("shop", "a", "auth").1.unwrap();
        assert_eq!(
            (kept.since, kept.reason.as_deref()),
            (at(10), Some("fetch: 503"))
        );
        let loaded = PluginReport {
            serving: Some("r1".into()),
            state: AckState::Loaded,
            reason: None,
            ..failed("", at(30))
        };
        registry.report("shop", "a", "auth", loaded);
        assert_eq!(registry.view("shop", "a", "auth").1.unwrap().since, at(30));
    }

    #[tokio::test]
    async fn each_plugin_keeps_its_own_report_and_a_new_assignment_keeps_what_serves() {
        let registry = Registry::default();
        let now = Timestamp::UNIX_EPOCH;
        let (tx, _rx) = outbox();
        let id = registry.connect("shop", "a", tx, Vec::new());
        let loaded = |revision: &str| PluginReport {
            assigned: Some(revision.into()),
            serving: Some(revision.into()),
            state: AckState::Loaded,
            reason: None,
            since: now,
        };
        registry.report("shop", "a", "auth", loaded("r1"));
        registry.report("shop", "a", "geo", loaded("g1"));
        assert!(registry.assign("shop", "a", id, directive("r2"), now));

        let auth = registry.view("shop", "a", "auth").1.unwrap();
        assert_eq!(
            (
                auth.assigned.as_deref(),
                auth.serving.as_deref(),
                auth.state
            ),
            (Some("r2"), Some("r1"), AckState::Pending),
            "r1 serves until r2 is reported loaded"
        );
        let geo = registry.view("shop", "a", "geo").1.unwrap();
        assert_eq!(
            (geo.serving.as_deref(), geo.state),
            (Some("g1"), AckState::Loaded)
        );
        assert_eq!(registry.view("shop", "a", "other").1, None);
    }
}
