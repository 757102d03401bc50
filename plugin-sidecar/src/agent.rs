//! The agent: turns assignments into verified artifacts on disk and `Load`s to the app, and
//! keeps what the app answered. Sources of assignments (the operator channel, and the local
//! control socket) call [`Agent::assign`]; the app channel calls the `app_*` methods.
//!
//! ```text
//!  source ─ assign ─► fetch+verify+store ─► state.assign + persist ─► Load ─► app
//!                                                          ▲                  │
//!  source ◄─ Loaded/Failed ◄─ wait on LiveApp ◄─ app_message ◄─ Loaded/Failed ┘
//! ```
//! Every connection to the app socket is a worker (`workers.rs`); a revision is loaded on
//! the pod when every connected worker confirmed it. `state` and the workers' senders share
//! one lock, so a worker that connects while an assignment is being published gets the new
//! `Load` exactly once, either in its initial offer or right after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::assignment::{AssignOutcome, Assignment, Supersedable};
use crate::digest::Sha256Digest;
use crate::fetch::Fetcher;
use crate::metrics::{FailureCause, Telemetry};
use crate::protocol::{AppMessage, SidecarMessage};
use crate::readiness::{AppAck, ReadinessPolicy, readiness};

use crate::state::{RevisionRecord, SidecarState};
use crate::store::{Store, StoreError};
use crate::workers::{LiveApp, Verdict};

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Revisions per plugin kept on disk for rollback.
    pub keep_revisions: usize,
    /// How long an assignment waits for the app's answer.
    pub ack_timeout: Duration,
    /// Readiness policy.
    pub readiness: ReadinessPolicy,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            keep_revisions: 3,
            ack_timeout: Duration::from_secs(60),
            readiness: ReadinessPolicy::RequireLoaded {
                require_assignment: false,
                require_sync: false,
            },
        }
    }
}

struct Inner {
    state: SidecarState,
    /// Connection id → sender, one per connected worker (the same keys as `LiveApp`).
    apps: BTreeMap<u64, mpsc::UnboundedSender<SidecarMessage>>,
    /// App connections so far: tells whether an app was offered a load while it waited.
    app_sessions: u64,
    /// Plugin → revision whose assignment waits for the workers' answers: a worker that
    /// dies before answering such a load fails it.
    waiting: BTreeMap<String, String>,
}

/// The per-pod agent.
pub struct Agent {
    store: Store,
    fetcher: Fetcher,
    settings: AgentSettings,
    inner: Mutex<Inner>,
    live: watch::Sender<LiveApp>,
    /// One assignment at a time per plugin; plugins are assigned side by side, so a
    /// rollback of one never waits for another's download.
    assigning: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests being fetched, with how many assignments fetch each: garbage collection
    /// spares them (a blob is stored before the state that retains it is written).
    fetching: Mutex<HashMap<Sha256Digest, usize>>,
    /// What `/metrics` shows and health reports wait for the operator in.
    telemetry: Arc<Telemetry>,
}

/// A digest being fetched, until dropped.
struct Fetching<'a> {
    agent: &'a Agent,
    digest: Sha256Digest,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        let mut fetching = self
            .agent
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = fetching.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                fetching.remove(&self.digest);
            }
        }
    }
}

fn message_for(plugin: &str, rec: &RevisionRecord, store: &Store) -> SidecarMessage {
    SidecarMessage::Load {
        plugin: plugin.into(),
        revision: rec.revision.clone(),
        path: store.blob_path(&rec.digest).display().to_string(),
        digest: rec.digest.to_string(),
        config: rec.config.clone(),
    }
}

/// A snapshot for `/status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Persisted state.
    pub state: SidecarState,
    /// What each worker confirmed.
    pub app: LiveApp,
    /// Per offered plugin: `r2 loaded by 3/4 workers`.
    pub workers: BTreeMap<String, String>,
    /// Readiness verdict.
    pub ready: Result<(), String>,
}

impl Agent {
    /// Opens the agent on a store, restoring its state and collecting garbage.
    pub fn new(
        store: Store,
        fetcher: Fetcher,
        settings: AgentSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let (state, readable) = match store.load_state() {
            Ok(state) => (state, true),
            // Any container of the pod can write the shared volume: a state file it spoiled
            // must not keep the sidecar from starting. The operator sends the set again.
            Err(e @ StoreError::CorruptState { .. }) => {
                let aside = store.quarantine_state()?;
                tracing::error!(error = %e, moved_to = %aside.display(), "sidecar state unreadable; starting from an empty state");
                (SidecarState::default(), false)
            }
            Err(e) => return Err(e.into()),
        };
        // A failed collection costs disk space, not correctness: start anyway. Without a
        // readable state nothing says which blobs are wanted: keep them all as cache.
        let removed = if readable {
            store.gc(&state.retained_digests()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "garbage collection at start failed");
                0
            })
        } else {
            0
        };
        tracing::info!(plugins = state.plugins.len(), gc_removed = removed, root = %store.root().display(), "sidecar state restored");
        Ok(Arc::new(Agent {
            store,
            fetcher,
            settings,
            inner: Mutex::new(Inner {
                state,
                apps: BTreeMap::new(),
                app_sessions: 0,
                waiting: BTreeMap::new(),
            }),
            live: watch::Sender::new(LiveApp::default()),
            assigning: Mutex::default(),
            fetching: Mutex::default(),
            telemetry: Arc::default(),
        }))
    }

    /// Waits for `plugin`'s turn: one assignment (or unload) of a plugin at a time.
    async fn turn(&self, plugin: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .assigning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Marks `digest` as being fetched until the guard is dropped.
    fn fetching(&self, digest: &Sha256Digest) -> Fetching<'_> {
        *self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default() += 1;
        Fetching {
            agent: self,
            digest: digest.clone(),
        }
    }

    /// What garbage collection must keep: what `state` retains and what is being fetched.
    pub(crate) fn keep(&self, state: &SidecarState) -> BTreeSet<Sha256Digest> {
        let mut keep = state.retained_digests();
        keep.extend(
            self.fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        keep
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Inner is only mutated through whole-value updates, so a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `load` of `rec` to connection `id` and remembers that it owes an answer.
    fn send_load(
        &self,
        id: u64,
        tx: &mpsc::UnboundedSender<SidecarMessage>,
        plugin: &str,
        rec: &RevisionRecord,
    ) {
        if tx.send(message_for(plugin, rec, &self.store)).is_ok() {
            self.live
                .send_modify(|l| l.sent_load(id, plugin, &rec.revision));
        }
    }

    /// Forgets the connections a newer one replaced: they are told nothing more, and what
    /// they send is ignored (as a replaced v1 app connection always was).
    fn forget_replaced(&self, inner: &mut Inner, replaced: &[u64]) {
        for id in replaced {
            inner.apps.remove(id);
            tracing::info!(connection = id, "app connection replaced by a newer one");
        }
    }

    fn persist(&self, state: &SidecarState) {
        if let Err(e) = self.store.save_state(state) {
            tracing::error!(error = %e, "cannot persist sidecar state; a restart may re-download");
        }
    }

    /// Fetches, verifies, stores, hands to the app and waits for its answer.
    pub async fn assign(&self, a: Assignment) -> AssignOutcome {
        self.assign_supersedable(a, &Supersedable::default()).await
    }

    /// [`Agent::assign`], which a newer assignment may call off (`stage`) until the
    /// revision is published: called off, it publishes nothing. Dropping the future before
    /// then leaves nothing behind either: the download's temp file and the `fetching` mark
    /// go with it, and a blob already verified is only cache.
    pub async fn assign_supersedable(&self, a: Assignment, stage: &Supersedable) -> AssignOutcome {
        let _turn = self.turn(&a.plugin).await;
        let revision = a.revision_name();
        let failed = |reason: String| AssignOutcome::Failed {
            plugin: a.plugin.clone(),
            revision: revision.clone(),
            reason,
            transient: false,
        };
        let digest = match Sha256Digest::parse(&a.digest) {
            Ok(d) => d,
            Err(e) => {
                self.telemetry.failed(&a.plugin, FailureCause::Invalid);
                return failed(format!("assignment: {e}"));
            }
        };
        let _fetching = self.fetching(&digest);
        let started = tokio::time::Instant::now();
        let fetched = self
            .fetcher
            .fetch_with(
                &a.artifact,
                &digest,
                &self.store,
                a.credentials.as_ref(),
                a.signature_key.as_deref(),
            )
            .await;
        let took = started.elapsed();
        self.telemetry.fetched(&a.plugin, fetched.as_ref(), took);
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                self.telemetry.failed(&a.plugin, FailureCause::of_fetch(&e));
                tracing::warn!(plugin = a.plugin, revision, reason = e.label(), error = %e, "fetch failed");
                return AssignOutcome::Failed {
                    plugin: a.plugin.clone(),
                    revision,
                    reason: format!("fetch: {e}"),
                    transient: e.retryable(),
                };
            }
        };
        tracing::info!(plugin = a.plugin, revision, downloaded = fetched.downloaded, attempts = fetched.attempts, path = %fetched.path.display(), "artifact verified");
        if !stage.publish() {
            tracing::info!(
                plugin = a.plugin,
                revision,
                "superseded before it was published"
            );
            return failed("superseded by a newer assignment".into());
        }
        let rec = RevisionRecord {
            revision: revision.clone(),
            artifact: a.artifact.clone(),
            digest,
            config: a.config.clone(),
        };
        let mut acks = self.live.subscribe();
        let (told, sessions) = {
            let mut inner = self.lock();
            inner
                .state
                .assign(&a.plugin, rec.clone(), self.settings.keep_revisions);
            self.persist(&inner.state);
            // A previous answer about this revision must not be mistaken for the new one.
            self.live.send_modify(|l| l.forget_answers(&a.plugin));
            inner.waiting.insert(a.plugin.clone(), revision.clone());
            for (id, tx) in &inner.apps {
                self.send_load(*id, tx, &a.plugin, &rec);
            }
            if let Err(e) = self.store.gc(&self.keep(&inner.state)) {
                tracing::warn!(error = %e, "garbage collection failed");
            }
            (!inner.apps.is_empty(), inner.app_sessions)
        };
        let answered =
            acks.wait_for(|l| !matches!(l.verdict(&a.plugin, &revision), Verdict::Waiting { .. }));
        let outcome = tokio::time::timeout(self.settings.ack_timeout, answered).await;
        let verdict = outcome
            .as_ref()
            .map(|r| r.as_ref().map(|l| l.verdict(&a.plugin, &revision)));
        // No app was there to be told, and none came: see `AwaitingApp` below.
        let awaiting_app = !told && self.lock().app_sessions == sessions;
        let lost = self.live.borrow().lost_load(&a.plugin, &revision);
        self.count_outcome(&a.plugin, &verdict, lost, awaiting_app);
        {
            let mut inner = self.lock();
            if inner.waiting.get(&a.plugin) == Some(&revision) {
                inner.waiting.remove(&a.plugin);
            }
        }
        match verdict {
            Ok(Ok(Verdict::Loaded { health })) => AssignOutcome::Loaded {
                plugin: a.plugin.clone(),
                revision,
                health,
                downloaded: fetched.downloaded,
            },
            Ok(Ok(Verdict::Failed { reason })) => failed(format!("app: {reason}")),
            Ok(Ok(Verdict::Waiting { .. })) => failed("ack: answer vanished".into()),
            Ok(Err(_)) => failed("ack: sidecar shutting down".into()),
            Err(_) if awaiting_app => {
                // No app was there to be told, and none came: an app that is not running
                // (still starting, crash-looping for its own reasons) is no verdict on the
                // revision. It stays assigned and is offered when the app connects.
                tracing::warn!(
                    plugin = a.plugin,
                    revision,
                    "no app connected; the revision waits for it"
                );
                AssignOutcome::AwaitingApp {
                    plugin: a.plugin.clone(),
                    revision,
                }
            }
            Err(_) => {
                let (loaded, total) = self.live.borrow().loaded_by(&a.plugin, &revision);
                failed(format!(
                    "ack: {} of {total} connected workers did not answer within {:?}",
                    total - loaded,
                    self.settings.ack_timeout
                ))
            }
        }
    }

    /// Counts how the app answered an assignment (`lost`: a worker died loading it). One
    /// that waits for an app to connect (`awaiting_app`) has not ended.
    fn count_outcome<E1, E2>(
        &self,
        plugin: &str,
        verdict: &Result<Result<Verdict, E1>, E2>,
        lost: bool,
        awaiting_app: bool,
    ) {
        let cause = match verdict {
            Ok(Ok(Verdict::Loaded { .. })) => return self.telemetry.loaded(plugin),
            Ok(Ok(Verdict::Failed { .. })) if lost => FailureCause::AppDisconnected,
            Ok(Ok(Verdict::Failed { .. })) => FailureCause::AppRefused,
            Err(_) if awaiting_app => return,
            Err(_) => FailureCause::AppTimeout,
            Ok(_) => FailureCause::Other,
        };
        self.telemetry.failed(plugin, cause);
    }

    /// Stops running `plugin`: nothing is assigned any more, and the app is told to unload it
    /// if it runs it. The artifacts stay cached. `Err` says why the app did not confirm.
    pub async fn unload(&self, plugin: &str) -> Result<(), String> {
        let _turn = self.turn(plugin).await;
        let mut acks = self.live.subscribe();
        {
            let mut inner = self.lock();
            inner.state.unassign(plugin);
            self.persist(&inner.state);
            self.live.send_modify(|l| l.forget_answers(plugin));
            if !self.live.borrow().runs(plugin) {
                return Ok(());
            }
            for tx in inner.apps.values() {
                let _ = tx.send(SidecarMessage::Unload {
                    plugin: plugin.into(),
                });
            }
        }
        let gone = acks.wait_for(|l| !l.runs(plugin));
        match tokio::time::timeout(self.settings.ack_timeout, gone).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("ack: sidecar shutting down".into()),
            Err(_) => Err(format!(
                "ack: app did not confirm the unload within {:?}",
                self.settings.ack_timeout
            )),
        }
    }

    /// A new app connection: a worker, told the whole set at once.
    pub fn app_connected(
        &self,
        id: u64,
        peer_pid: Option<u32>,
        tx: mpsc::UnboundedSender<SidecarMessage>,
    ) {
        let mut inner = self.lock();
        inner.app_sessions += 1;
        self.live.send_modify(|l| l.connect(id, peer_pid));
        let offer = inner.state.offer();
        for (plugin, rec) in &offer {
            self.send_load(id, &tx, plugin, rec);
        }
        inner.apps.insert(id, tx);
        tracing::info!(connection = id, offered = offer.len(), "app connected");
    }

    /// The app connection `id` closed: its worker leaves the set. A load it was sent and had
    /// not answered, while that load's assignment waits, fails (the worker crashed loading).
    pub fn app_disconnected(&self, id: u64) {
        let mut inner = self.lock();
        if inner.apps.remove(&id).is_none() {
            return;
        }
        let mut gone = None;
        self.live.send_modify(|l| gone = l.disconnect(id));
        let Some(worker) = gone else { return };
        tracing::info!(
            connection = id,
            worker = worker.name,
            "app worker disconnected"
        );
        for (plugin, revision) in &worker.awaiting {
            if inner.waiting.get(plugin) != Some(revision) {
                continue;
            }
            let mut reason = String::new();
            self.live
                .send_modify(|l| reason = l.lose(plugin, revision, &worker.name));
            inner.state.record_refusal(plugin, revision, &reason);
            self.persist(&inner.state);
            tracing::warn!(plugin, revision, reason, "load lost with its worker");
            self.restore(&inner, plugin, revision);
        }
    }

    /// After the pod's load of `refused` failed, sends the workers that already swapped to
    /// it the revision the pod falls back to, so every worker serves one revision again
    /// (the previous one) without waiting for the operator's rollback.
    fn restore(&self, inner: &Inner, plugin: &str, refused: &str) {
        let offer = inner.state.offer();
        let Some((_, fallback)) = offer.iter().find(|(p, _)| p == plugin) else {
            return;
        };
        if fallback.revision == refused {
            return;
        }
        let swapped: Vec<u64> = self
            .live
            .borrow()
            .workers
            .iter()
            .filter(|(_, w)| w.serving.get(plugin).is_some_and(|r| r == refused))
            .map(|(id, _)| *id)
            .collect();
        for id in swapped {
            if let Some(tx) = inner.apps.get(&id) {
                tracing::info!(
                    connection = id,
                    plugin,
                    revision = fallback.revision,
                    "worker sent back to the revision the pod serves"
                );
                self.send_load(id, tx, plugin, fallback);
            }
        }
    }

    /// A message from app connection `id`.
    pub fn app_message(&self, id: u64, msg: AppMessage) {
        let mut inner = self.lock();
        if !inner.apps.contains_key(&id) {
            tracing::warn!(
                connection = id,
                "ignoring message from a replaced app connection"
            );
            return;
        }
        let replaced = match msg {
            AppMessage::Hello {
                app,
                worker,
                protocol,
            } => {
                let mut replaced = Vec::new();
                self.live
                    .send_modify(|l| replaced = l.hello(id, worker, protocol));
                let name = self.worker_name(id);
                tracing::info!(
                    connection = id,
                    app,
                    worker = name,
                    protocol,
                    "app said hello"
                );
                replaced
            }
            AppMessage::Loaded {
                plugin,
                revision,
                health,
            } => {
                tracing::info!(
                    plugin,
                    revision,
                    health,
                    worker = self.worker_name(id),
                    "app worker loaded plugin"
                );
                let ack = AppAck::Loaded {
                    revision: revision.clone(),
                    health,
                };
                let replaced = self.answer(id, &plugin, Some(ack));
                if self.live.borrow().serving(&plugin) == Some(revision.as_str()) {
                    if inner.state.confirm_loaded(&plugin, &revision) {
                        self.persist(&inner.state);
                    } else {
                        tracing::warn!(
                            plugin,
                            revision,
                            "app confirmed a revision the sidecar never offered"
                        );
                    }
                }
                replaced
            }
            AppMessage::Unloaded { plugin } => {
                tracing::info!(
                    plugin,
                    worker = self.worker_name(id),
                    "app worker unloaded plugin"
                );
                self.answer(id, &plugin, None)
            }
            AppMessage::Failed {
                plugin,
                revision,
                reason,
            } => {
                let worker = self.worker_name(id);
                tracing::warn!(
                    plugin,
                    revision,
                    reason,
                    worker,
                    "app worker refused plugin"
                );
                let named = format!("worker {worker}: {reason}");
                inner.state.record_refusal(&plugin, &revision, &named);
                self.persist(&inner.state);
                let ack = AppAck::Failed {
                    revision: revision.clone(),
                    reason,
                };
                let replaced = self.answer(id, &plugin, Some(ack));
                self.restore(&inner, &plugin, &revision);
                replaced
            }
            // `app_channel` hands health reports to the telemetry; they never get here.
            AppMessage::Health { .. } => Vec::new(),
        };
        self.forget_replaced(&mut inner, &replaced);
    }

    fn answer(&self, id: u64, plugin: &str, ack: Option<AppAck>) -> Vec<u64> {
        let mut replaced = Vec::new();
        self.live
            .send_modify(|l| replaced = l.answer(id, plugin, ack));
        replaced
    }

    fn worker_name(&self, id: u64) -> String {
        self.live
            .borrow()
            .workers
            .get(&id)
            .map(|w| w.name.clone())
            .unwrap_or_default()
    }

    /// The operator has sent the pod's complete set (once per stream): remembered, so a
    /// restarted sidecar can turn ready on its stored set.
    pub fn synced(&self) {
        let mut inner = self.lock();
        if !inner.state.synced {
            inner.state.synced = true;
            self.persist(&inner.state);
            tracing::info!("the operator sent the pod's complete set");
        }
        // Readiness and the operator's report read `synced`: wake their watchers.
        self.live.send_modify(|_| {});
    }

    /// The readiness verdict.
    pub fn ready(&self) -> Result<(), String> {
        let state = self.lock().state.clone();
        self.verdict(&state, &self.live.borrow())
    }

    fn verdict(&self, state: &SidecarState, live: &LiveApp) -> Result<(), String> {
        let policy = self.settings.readiness;
        readiness(&state.offer(), &state.missing(), live, policy, state.synced)
    }

    /// Whether the pod has a revision of `plugin` to serve (fetched, and not refused): a
    /// failed newer one is then the rollout's to judge, not the sidecar's to retry.
    pub fn has_fallback(&self, plugin: &str) -> bool {
        self.lock().state.offer().iter().any(|(p, _)| p == plugin)
    }

    /// The operator asked for `revision` of `plugin` (before it is fetched).
    pub fn request(&self, plugin: &str, revision: &str) {
        let mut inner = self.lock();
        inner.state.request(plugin, revision);
        self.persist(&inner.state);
    }

    /// Everything `/status` shows.
    pub fn status(&self) -> StatusReport {
        let state = self.lock().state.clone();
        let app = self.live.borrow().clone();
        let offer = state.offer();
        let ready = self.verdict(&state, &app);
        let workers = offer
            .iter()
            .map(|(plugin, rec)| {
                let (loaded, total) = app.loaded_by(plugin, &rec.revision);
                let line = format!("{} loaded by {loaded}/{total} workers", rec.revision);
                (plugin.clone(), line)
            })
            .collect();
        StatusReport {
            state,
            app,
            workers,
            ready,
        }
    }

    /// Watch what the app confirmed.
    pub fn subscribe_app(&self) -> watch::Receiver<LiveApp> {
        self.live.subscribe()
    }

    /// The sidecar's metrics and the workers' health reports.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::oci::{OciPuller, PullSecrets};
    use crate::fetch::{HttpLimits, RetryPolicy, https};

    fn agent(dir: &std::path::Path) -> Arc<Agent> {
        let limits = HttpLimits::default();
        let fetcher = Fetcher::new(
            https::build_client(&limits, None).expect("client"),
            limits.clone(),
            RetryPolicy::default(),
            OciPuller::new(PullSecrets::default()),
        );
        let store = Store::open(dir).expect("store");
        Agent::new(store, fetcher, AgentSettings::default()).expect("agent")
    }

    #[test]
    fn a_spoiled_state_file_is_moved_aside_and_the_sidecar_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        std::fs::write(store.state_path(), b"{\"plugins\": 7").expect("spoil");
        let started = agent(dir.path());
        assert!(started.status().state.plugins.is_empty());
        let aside = store.state_path().with_extension("json.corrupt");
        assert_eq!(
            std::fs::read(aside).expect("kept aside"),
            b"{\"plugins\": 7"
        );
        let huge = vec![b' '; usize::try_from(crate::store::MAX_STATE_BYTES).expect("fits") + 1];
        std::fs::write(store.state_path(), huge).expect("oversized");
        assert!(matches!(
            store.load_state(),
            Err(StoreError::CorruptState { reason, .. }) if reason.contains("larger than")
        ));
        assert!(agent(dir.path()).status().state.plugins.is_empty());
    }

    #[test]
    fn garbage_collection_spares_what_is_being_fetched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent(dir.path());
        let digest = Sha256Digest::of(b"a plugin on its way");
        let state = SidecarState::default();
        assert!(agent.keep(&state).is_empty());
        {
            let _one = agent.fetching(&digest);
            let _two = agent.fetching(&digest);
            assert!(agent.keep(&state).contains(&digest));
        }
        assert!(
            agent.keep(&state).is_empty(),
            "spared only while an assignment fetches it"
        );
    }
}
