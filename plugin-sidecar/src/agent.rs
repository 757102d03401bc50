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
}

/// The per-pod agent.
pub struct Agent {
    store: Store,
    fetcher: Fetcher,
    settings: AgentSettings,
    inner: Mutex<Inner>,
    live: watch::Sender<LiveApp>,
    /// One assignment at a time: fetches are short and ordering keeps state simple.
    assigning: tokio::sync::Mutex<()>,
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
        let removed = store.gc(&state).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "garbage collection at start failed");
            0
        });
        tracing::info!(plugins = state.plugins.len(), gc_removed = removed, root = %store.root().display(), "sidecar state restored");
        Ok(Arc::new(Agent {
            store,
            fetcher,
            settings,
            inner: Mutex::new(Inner { state, app: None }),
            live: watch::Sender::new(LiveApp::default()),
            assigning: tokio::sync::Mutex::new(()),
        }))
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
        let _one = self.assigning.lock().await;
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
        {
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
            if let Err(e) = self.store.gc(&inner.state) {
                tracing::warn!(error = %e, "garbage collection failed");
            }
        }
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
        let _one = self.assigning.lock().await;
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
