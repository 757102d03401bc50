//! The agent: turns assignments into verified artifacts on disk and `Load`s to the app, and
//! keeps what the app answered. Sources of assignments (the operator channel, and the local
//! control socket) call [`Agent::assign`]; the app channel calls the `app_*` methods.
//!
//! ```text
//!  source ─ assign ─► fetch+verify+store ─► state.assign + persist ─► Load ─► app
//!                                                          ▲                  │
//!  source ◄─ Loaded/Failed ◄─ wait on LiveApp ◄─ app_message ◄─ Loaded/Failed ┘
//! ```
//! `state` and the current app sender share one lock, so an app that connects while an
//! assignment is being published gets the new `Load` exactly once, either in its initial
//! offer or right after it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::assignment::{AssignOutcome, Assignment};
use crate::digest::Sha256Digest;
use crate::fetch::Fetcher;
use crate::protocol::{AppMessage, SidecarMessage};
use crate::readiness::{AppAck, LiveApp, ReadinessPolicy, readiness};
use crate::state::{RevisionRecord, SidecarState};
use crate::store::Store;

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
            },
        }
    }
}

struct Inner {
    state: SidecarState,
    app: Option<(u64, mpsc::UnboundedSender<SidecarMessage>)>,
    /// App connections so far: tells whether an app was offered a load while it waited.
    app_sessions: u64,
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
    /// What the app confirmed.
    pub app: LiveApp,
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
        let state = store.load_state()?;
        // A failed collection costs disk space, not correctness: start anyway.
        let removed = store.gc(&state.retained_digests()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "garbage collection at start failed");
            0
        });
        tracing::info!(plugins = state.plugins.len(), gc_removed = removed, root = %store.root().display(), "sidecar state restored");
        Ok(Arc::new(Agent {
            store,
            fetcher,
            settings,
            inner: Mutex::new(Inner {
                state,
                app: None,
                app_sessions: 0,
            }),
            live: watch::Sender::new(LiveApp::default()),
            assigning: Mutex::default(),
            fetching: Mutex::default(),
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
    fn keep(&self, state: &SidecarState) -> BTreeSet<Sha256Digest> {
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

    fn persist(&self, state: &SidecarState) {
        if let Err(e) = self.store.save_state(state) {
            tracing::error!(error = %e, "cannot persist sidecar state; a restart may re-download");
        }
    }

    /// Fetches, verifies, stores, hands to the app and waits for its answer.
    pub async fn assign(&self, a: Assignment) -> AssignOutcome {
        let _turn = self.turn(&a.plugin).await;
        let revision = a.revision_name();
        let failed = |reason: String| AssignOutcome::Failed {
            plugin: a.plugin.clone(),
            revision: revision.clone(),
            reason,
        };
        let digest = match Sha256Digest::parse(&a.digest) {
            Ok(d) => d,
            Err(e) => return failed(format!("assignment: {e}")),
        };
        let _fetching = self.fetching(&digest);
        let fetched = match self
            .fetcher
            .fetch_with(
                &a.artifact,
                &digest,
                &self.store,
                a.credentials.as_ref(),
                a.signature_key.as_deref(),
            )
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(plugin = a.plugin, revision, reason = e.label(), error = %e, "fetch failed");
                return failed(format!("fetch: {e}"));
            }
        };
        tracing::info!(plugin = a.plugin, revision, downloaded = fetched.downloaded, attempts = fetched.attempts, path = %fetched.path.display(), "artifact verified");
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
            self.live.send_modify(|l| {
                l.last.remove(&a.plugin);
            });
            if let Some((_, tx)) = &inner.app {
                let _ = tx.send(message_for(&a.plugin, &rec, &self.store));
            }
            if let Err(e) = self.store.gc(&self.keep(&inner.state)) {
                tracing::warn!(error = %e, "garbage collection failed");
            }
            (inner.app.is_some(), inner.app_sessions)
        };
        let answered = acks.wait_for(|l| {
            l.last
                .get(&a.plugin)
                .is_some_and(|ack| ack.revision() == revision)
        });
        match tokio::time::timeout(self.settings.ack_timeout, answered).await {
            Ok(Ok(live)) => match live.last.get(&a.plugin).cloned() {
                Some(AppAck::Loaded { health, .. }) => AssignOutcome::Loaded {
                    plugin: a.plugin.clone(),
                    revision,
                    health,
                    downloaded: fetched.downloaded,
                },
                Some(AppAck::Failed { reason, .. }) => failed(format!("app: {reason}")),
                None => failed("ack: answer vanished".into()),
            },
            Ok(Err(_)) => failed("ack: sidecar shutting down".into()),
            Err(_) if !told && self.lock().app_sessions == sessions => {
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
                let connected = self.live.borrow().connection.is_some();
                failed(format!(
                    "ack: app did not answer within {:?} (app connected: {connected})",
                    self.settings.ack_timeout
                ))
            }
        }
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
            self.live.send_modify(|l| {
                l.last.remove(plugin);
            });
            if !self.live.borrow().serving.contains_key(plugin) {
                return Ok(());
            }
            if let Some((_, tx)) = &inner.app {
                let _ = tx.send(SidecarMessage::Unload {
                    plugin: plugin.into(),
                });
            }
        }
        let gone = acks.wait_for(|l| !l.serving.contains_key(plugin));
        match tokio::time::timeout(self.settings.ack_timeout, gone).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("ack: sidecar shutting down".into()),
            Err(_) => Err(format!(
                "ack: app did not confirm the unload within {:?}",
                self.settings.ack_timeout
            )),
        }
    }

    /// A new app connection: it becomes the current one and is told the whole set at once.
    pub fn app_connected(&self, id: u64, tx: mpsc::UnboundedSender<SidecarMessage>) {
        let mut inner = self.lock();
        inner.app_sessions += 1;
        let offer = inner.state.offer();
        for (plugin, rec) in &offer {
            let _ = tx.send(message_for(plugin, rec, &self.store));
        }
        inner.app = Some((id, tx));
        self.live.send_modify(|l| {
            *l = LiveApp {
                connection: Some(id),
                ..LiveApp::default()
            }
        });
        tracing::info!(connection = id, offered = offer.len(), "app connected");
    }

    /// The app connection `id` closed.
    pub fn app_disconnected(&self, id: u64) {
        let mut inner = self.lock();
        if inner.app.as_ref().is_some_and(|(cur, _)| *cur == id) {
            inner.app = None;
            // The app's plugins died with its connection (or its process): not ready.
            self.live.send_modify(|l| *l = LiveApp::default());
            tracing::info!(connection = id, "app disconnected");
        }
    }

    /// A message from app connection `id`.
    pub fn app_message(&self, id: u64, msg: AppMessage) {
        let mut inner = self.lock();
        if inner.app.as_ref().is_none_or(|(cur, _)| *cur != id) {
            tracing::warn!(
                connection = id,
                "ignoring message from a replaced app connection"
            );
            return;
        }
        match msg {
            AppMessage::Hello { app } => tracing::info!(connection = id, app, "app said hello"),
            AppMessage::Loaded {
                plugin,
                revision,
                health,
            } => {
                if inner.state.confirm_loaded(&plugin, &revision) {
                    self.persist(&inner.state);
                } else {
                    tracing::warn!(
                        plugin,
                        revision,
                        "app confirmed a revision the sidecar never offered"
                    );
                }
                tracing::info!(plugin, revision, health, "app loaded plugin");
                self.live.send_modify(|l| {
                    l.serving.insert(plugin.clone(), revision.clone());
                    l.last.insert(plugin, AppAck::Loaded { revision, health });
                });
            }
            AppMessage::Unloaded { plugin } => {
                tracing::info!(plugin, "app unloaded plugin");
                self.live.send_modify(|l| {
                    l.serving.remove(&plugin);
                });
            }
            AppMessage::Failed {
                plugin,
                revision,
                reason,
            } => {
                inner.state.record_refusal(&plugin, &revision, &reason);
                self.persist(&inner.state);
                tracing::warn!(plugin, revision, reason, "app refused plugin");
                self.live.send_modify(|l| {
                    l.last.insert(plugin, AppAck::Failed { revision, reason });
                });
            }
        }
    }

    /// The readiness verdict.
    pub fn ready(&self) -> Result<(), String> {
        let offer = self.lock().state.offer();
        readiness(&offer, &self.live.borrow(), self.settings.readiness)
    }

    /// Everything `/status` shows.
    pub fn status(&self) -> StatusReport {
        let state = self.lock().state.clone();
        let app = self.live.borrow().clone();
        let ready = readiness(&state.offer(), &app, self.settings.readiness);
        StatusReport { state, app, ready }
    }

    /// Watch what the app confirmed.
    pub fn subscribe_app(&self) -> watch::Receiver<LiveApp> {
        self.live.subscribe()
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
            OciPuller::new(&limits, None, PullSecrets::default()),
        );
        let store = Store::open(dir).expect("store");
        Agent::new(store, fetcher, AgentSettings::default()).expect("agent")
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
