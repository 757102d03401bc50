//! The app's workers: every connection to the app socket is one worker process (app
//! protocol v2: gunicorn workers, Node `cluster` workers, pre-forked servers), and a plugin
//! revision is loaded on the pod only when every connected worker has confirmed it. Pure
//! data and decisions; `agent.rs` applies the app's messages to it under its lock.
//!
//! ```text
//!   conn 1 (worker 4711) serving auth=r2 ┐
//!   conn 2 (worker 4712) serving auth=r2 ├─► pod: auth r2 loaded by 2/3 workers (not yet)
//!   conn 3 (worker 4713) serving auth=r1 ┘
//! ```
//! A v1 app (no `worker`, no `protocol: 2` in its hello) is one implicit worker: when a
//! connection shows itself as v1, it replaces the older v1 connections, as in protocol v1.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::readiness::AppAck;

/// One connected worker process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Worker {
    /// Its id: `worker` from its hello, else the peer's process id, else `conn-<n>`.
    pub name: String,
    /// The protocol it speaks: 2 after a v2 hello, 1 once it answered without one, 0 while
    /// it has said nothing.
    pub protocol: u32,
    /// Plugin → revision this worker confirmed serving.
    pub serving: BTreeMap<String, String>,
    /// Plugin → this worker's last answer.
    pub last: BTreeMap<String, AppAck>,
    /// Plugin → revision it was sent a `load` of and has not answered yet.
    #[serde(skip)]
    pub awaiting: BTreeMap<String, String>,
}

/// Every connected worker, by connection id, and the loads lost with a worker that went away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LiveApp {
    /// Connection id → worker.
    pub workers: BTreeMap<u64, Worker>,
    /// Plugin → a load of a revision that failed because a worker disconnected before
    /// answering it (a crash mid-load), with the reason.
    pub lost: BTreeMap<String, AppAck>,
}

/// How the pod's workers stand on one revision of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every connected worker (at least one) serves it.
    Loaded {
        /// A worker's health summary.
        health: String,
    },
    /// A worker refused it or died loading it; the reason names the worker.
    Failed {
        /// `worker <id>: <reason>`.
        reason: String,
    },
    /// Not decided yet: `loaded` of `total` connected workers serve it.
    Waiting {
        /// Workers serving it.
        loaded: usize,
        /// Workers connected.
        total: usize,
    },
}

impl LiveApp {
    /// Whether any worker is connected.
    pub fn connected(&self) -> bool {
        !self.workers.is_empty()
    }

    /// The revision of `plugin` every connected worker serves, if they agree (and one is
    /// connected).
    pub fn serving(&self, plugin: &str) -> Option<&str> {
        let mut revisions = self.workers.values().map(|w| w.serving.get(plugin));
        let first = revisions.next()??;
        revisions
            .all(|r| r == Some(first))
            .then_some(first.as_str())
    }

    /// Whether some worker still runs `plugin`.
    pub fn runs(&self, plugin: &str) -> bool {
        self.workers
            .values()
            .any(|w| w.serving.contains_key(plugin))
    }

    /// Workers serving `revision` of `plugin`, and workers connected.
    pub fn loaded_by(&self, plugin: &str, revision: &str) -> (usize, usize) {
        let loaded = self
            .workers
            .values()
            .filter(|w| w.serving.get(plugin).is_some_and(|r| r == revision))
            .count();
        (loaded, self.workers.len())
    }

    /// Where the pod stands on `revision` of `plugin`. A refusal by any worker decides,
    /// before the others have answered: one worker serving the old revision is enough to
    /// make the pod's answer untrue.
    pub fn verdict(&self, plugin: &str, revision: &str) -> Verdict {
        if let Some(AppAck::Failed {
            revision: r,
            reason,
        }) = self.lost.get(plugin)
            && r == revision
        {
            return Verdict::Failed {
                reason: reason.clone(),
            };
        }
        for w in self.workers.values() {
            if let Some(AppAck::Failed {
                revision: r,
                reason,
            }) = w.last.get(plugin)
                && r == revision
            {
                return Verdict::Failed {
                    reason: format!("worker {}: {reason}", w.name),
                };
            }
        }
        let (loaded, total) = self.loaded_by(plugin, revision);
        if total > 0 && loaded == total {
            let health = self
                .workers
                .values()
                .find_map(|w| match w.last.get(plugin) {
                    Some(AppAck::Loaded { health, .. }) => Some(health.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            return Verdict::Loaded { health };
        }
        Verdict::Waiting { loaded, total }
    }

    /// A new connection: a worker that has said nothing yet, named by the peer's process
    /// id where the socket tells it.
    pub fn connect(&mut self, id: u64, peer_pid: Option<u32>) {
        let name = peer_pid.map_or_else(|| format!("conn-{id}"), |pid| pid.to_string());
        self.workers.insert(
            id,
            Worker {
                name,
                ..Worker::default()
            },
        );
    }

    /// Records that connection `id` was sent a `load` of `revision` of `plugin`.
    pub fn sent_load(&mut self, id: u64, plugin: &str, revision: &str) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.awaiting.insert(plugin.to_string(), revision.to_string());
        }
    }

    /// Forgets every answer about `plugin` (a new assignment of it is about to go out).
    pub fn forget_answers(&mut self, plugin: &str) {
        self.lost.remove(plugin);
        for w in self.workers.values_mut() {
            w.last.remove(plugin);
        }
    }

    /// Applies a hello. Returns the connections it replaces: an older connection of the same
    /// worker, or, for a v1 app, the older v1 connections.
    pub fn hello(&mut self, id: u64, worker: Option<String>, protocol: Option<u32>) -> Vec<u64> {
        let v2 = protocol.is_some_and(|p| p >= 2) || worker.is_some();
        let Some(w) = self.workers.get_mut(&id) else {
            return Vec::new();
        };
        if !v2 {
            w.protocol = 1;
            return self.replace_v1(id);
        }
        w.protocol = protocol.unwrap_or(2).max(2);
        if let Some(name) = worker {
            w.name = name;
        }
        let name = w.name.clone();
        let older: Vec<u64> = self
            .workers
            .iter()
            .filter(|(other, w)| **other != id && w.name == name)
            .map(|(other, _)| *other)
            .collect();
        self.remove(&older);
        older
    }

    /// Applies an answer from connection `id`; a connection that answers before any hello
    /// is a v1 app. Returns the connections it replaces (see [`LiveApp::hello`]).
    pub fn answer(&mut self, id: u64, plugin: &str, ack: Option<AppAck>) -> Vec<u64> {
        let Some(w) = self.workers.get_mut(&id) else {
            return Vec::new();
        };
        w.awaiting.remove(plugin);
        match &ack {
            Some(AppAck::Loaded { revision, .. }) => {
                w.serving.insert(plugin.to_string(), revision.clone());
            }
            Some(AppAck::Failed { .. }) => {}
            None => {
                w.serving.remove(plugin);
            }
        }
        if let Some(ack) = ack {
            w.last.insert(plugin.to_string(), ack);
        }
        if w.protocol == 0 {
            w.protocol = 1;
            return self.replace_v1(id);
        }
        Vec::new()
    }

    /// Connection `id` closed. Returns the worker it was (its unanswered loads among it).
    pub fn disconnect(&mut self, id: u64) -> Option<Worker> {
        self.workers.remove(&id)
    }

    /// Whether the pod's load of `revision` of `plugin` failed because a worker died
    /// loading it (rather than refusing it).
    pub fn lost_load(&self, plugin: &str, revision: &str) -> bool {
        matches!(self.lost.get(plugin), Some(AppAck::Failed { revision: r, .. }) if r == revision)
    }

    /// Records that `worker` died while loading `revision` of `plugin`.
    pub fn lose(&mut self, plugin: &str, revision: &str, worker: &str) -> String {
        let reason =
            format!("worker {worker} disconnected before answering the load of {revision}");
        self.lost.insert(
            plugin.to_string(),
            AppAck::Failed {
                revision: revision.to_string(),
                reason: reason.clone(),
            },
        );
        reason
    }

    fn replace_v1(&mut self, id: u64) -> Vec<u64> {
        let older: Vec<u64> = self
            .workers
            .iter()
            .filter(|(other, w)| **other < id && w.protocol == 1)
            .map(|(other, _)| *other)
            .collect();
        self.remove(&older);
        older
    }

    fn remove(&mut self, ids: &[u64]) {
        for id in ids {
            self.workers.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(revision: &str) -> Option<AppAck> {
        Some(AppAck::Loaded {
            revision: revision.into(),
            health: "ok".into(),
        })
    }

    fn v2(app: &mut LiveApp, id: u64, name: &str) {
        app.connect(id, None);
        assert!(app.hello(id, Some(name.into()), Some(2)).is_empty());
    }

    #[test]
    fn a_revision_is_loaded_only_when_every_worker_serves_it() {
        let mut app = LiveApp::default();
        assert_eq!(
            app.verdict("auth", "r2"),
            Verdict::Waiting {
                loaded: 0,
                total: 0
            },
            "no worker is no verdict"
        );
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            v2(&mut app, id, name);
        }
        app.answer(1, "auth", loaded("r2"));
        app.answer(2, "auth", loaded("r2"));
        assert_eq!(
            app.verdict("auth", "r2"),
            Verdict::Waiting {
                loaded: 2,
                total: 3
            }
        );
        assert_eq!(app.serving("auth"), None, "the workers disagree");
        app.answer(3, "auth", loaded("r2"));
        assert_eq!(
            app.verdict("auth", "r2"),
            Verdict::Loaded {
                health: "ok".into()
            }
        );
        assert_eq!(app.serving("auth"), Some("r2"));
    }

    #[test]
    fn a_late_worker_counts_only_after_it_loaded_and_a_leaving_one_leaves_the_set() {
        let mut app = LiveApp::default();
        v2(&mut app, 1, "a");
        app.answer(1, "auth", loaded("r1"));
        v2(&mut app, 2, "b");
        assert_eq!(app.serving("auth"), None);
        assert_eq!(app.loaded_by("auth", "r1"), (1, 2));
        app.disconnect(2);
        assert_eq!(app.serving("auth"), Some("r1"));
    }

    #[test]
    fn one_worker_refusing_fails_the_pod_and_the_reason_names_it() {
        let mut app = LiveApp::default();
        v2(&mut app, 1, "4711");
        v2(&mut app, 2, "4712");
        app.answer(1, "auth", loaded("r2"));
        app.answer(
            2,
            "auth",
            Some(AppAck::Failed {
                revision: "r2".into(),
                reason: "self-check failed".into(),
            }),
        );
        assert_eq!(
            app.verdict("auth", "r2"),
            Verdict::Failed {
                reason: "worker 4712: self-check failed".into()
            }
        );
        app.forget_answers("auth");
        assert!(matches!(app.verdict("auth", "r2"), Verdict::Waiting { .. }));
    }

    #[test]
    fn a_v2_worker_without_an_id_is_named_by_its_pid_and_a_reconnect_replaces_it() {
        let mut app = LiveApp::default();
        app.connect(1, Some(4711));
        app.hello(1, None, Some(2));
        assert_eq!(app.workers[&1].name, "4711");
        app.connect(2, Some(4800));
        assert_eq!(app.hello(2, Some("4711".into()), Some(2)), [1]);
        assert_eq!(app.workers.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn v1_connections_replace_each_other_but_not_v2_workers() {
        let mut app = LiveApp::default();
        v2(&mut app, 1, "w");
        app.connect(2, None);
        assert!(app.answer(2, "auth", loaded("r1")).is_empty());
        assert_eq!(app.workers[&2].protocol, 1, "answered without hello: v1");
        assert_eq!(app.workers[&2].name, "conn-2");
        app.connect(3, Some(99));
        assert_eq!(app.hello(3, None, None), [2], "a v1 hello");
        assert_eq!(app.workers.keys().copied().collect::<Vec<_>>(), [1, 3]);
        app.connect(4, None);
        assert!(
            app.answer(4, "auth", None).contains(&3),
            "an unloaded answer shows v1 too"
        );
    }

    #[test]
    fn unloaded_clears_what_the_worker_serves() {
        let mut app = LiveApp::default();
        v2(&mut app, 1, "a");
        app.answer(1, "auth", loaded("r1"));
        assert!(app.runs("auth"));
        app.answer(1, "auth", None);
        assert!(!app.runs("auth"));
    }

    #[test]
    fn a_lost_load_fails_that_revision_only() {
        let mut app = LiveApp::default();
        let reason = app.lose("auth", "r2", "4711");
        assert_eq!(
            reason,
            "worker 4711 disconnected before answering the load of r2"
        );
        assert_eq!(app.verdict("auth", "r2"), Verdict::Failed { reason });
        assert!(matches!(app.verdict("auth", "r3"), Verdict::Waiting { .. }));
    }
}
