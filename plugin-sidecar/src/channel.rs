//! The operator channel: the sidecar dials the operator, proves which pod it is with its
//! projected service-account token, says what it has (`Hello`), and from then on runs what
//! it is told (`Assign` → [`Agent::assign`]) and reports every change (`PluginState`).
//!
//! ```text
//!   operator ──Assign──► inbound ──► worker (per plugin: one at a time, newest next) ──► Agent::assign
//!      │ Synced              │            │ attempt started/ended/retrying
//!      └──► Agent::synced    │            ▼
//!      ▲                Agent::request    Reporter::refresh ◄── app acks (Agent::subscribe_app)
//!      └──PluginState◄── diff ◄──────────────┘
//! ```
//! A fetch that fails for a transient reason (connection refused, reset, timeout, 5xx) on a
//! pod that has no revision of the plugin to serve (a new pod, a restarted one) is tried
//! again with capped back-off until it works or the operator says something newer about the
//! plugin; meanwhile the plugin is reported `Loading` with the reason and the pod is not
//! Ready. A pod that serves an older revision reports the failure instead, and the rollout's
//! failure policy decides (as Kubernetes keeps a new pod in image-pull back-off, but a
//! rollout's failed step is the rollout's to judge).
//! A newer assignment of a plugin whose assignment is still being fetched or verified (not
//! yet handed to the app) stops that one and starts at once: a rollback never waits behind
//! the download of the revision it rolls back (`Turns::offer`).
//! What the operator is told is one pure function of the agent's state, what the app
//! confirmed, and the assignment attempts in flight or failed ([`summarize`]). Each stream
//! sends the whole picture in `Hello` and then only what changed, so a reconnect (operator
//! restart, leader change) needs no special case. Assignments outlive streams: a load that
//! is half-way when the stream drops finishes and is reported on the next stream.
//!
//! The workers' health reports are added up between streams too ([`crate::health`]): about
//! once a second each stream sends what was reported since the last `Health` it sent (at
//! most 64 revisions per message), so counts taken while no stream is open go out on the
//! next one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hotload_channel::proto::plugin_channel_client::PluginChannelClient;
use hotload_channel::proto::{
    self, Hello, OperatorMessage, PluginState, SidecarMessage, State, operator_message,
    sidecar_message,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::agent::Agent;
use crate::assignment::{AssignOutcome, Assignment, Credentials, Supersedable};
use crate::health;
use crate::state::SidecarState;
use crate::turns::{Failure, Turns};
use crate::workers::LiveApp;

/// How to reach the operator and who this sidecar is.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// `https://host:port` of the operator's channel.
    pub endpoint: String,
    /// CA (PEM) that signed the operator's certificate.
    pub ca_pem: Vec<u8>,
    /// Name to check the operator's certificate against (default: the endpoint's host).
    pub server_name: Option<String>,
    /// The projected token (audience `hotload.dev/channel`); re-read for every connection
    /// because the kubelet rotates it.
    pub token_file: PathBuf,
    /// This pod's namespace.
    pub namespace: String,
    /// This pod's name.
    pub pod: String,
    /// Reconnect back-off: first delay and ceiling.
    pub backoff: (Duration, Duration),
}

/// An assignment the agent is working on or failed, which the stored state cannot tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Fetching, verifying or waiting for the app.
    InFlight {
        /// The revision being loaded.
        revision: String,
    },
    /// The revision is not serving, for this reason.
    Failed {
        /// The revision that failed.
        revision: String,
        /// Stage-prefixed reason.
        reason: String,
    },
    /// The revision failed for a transient reason and is tried again.
    Retrying {
        /// The revision being retried.
        revision: String,
        /// Stage-prefixed reason, with when the next try is.
        reason: String,
    },
}

/// One plugin as the operator sees it (without the timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The revision the sidecar was last told to run.
    pub assigned: Option<String>,
    /// The revision every connected worker confirmed.
    pub serving: Option<String>,
    /// How the assigned revision is doing.
    pub state: State,
    /// Why it failed (or is being retried).
    pub reason: String,
    /// Workers connected.
    pub workers: u32,
    /// Workers serving the assigned revision.
    pub workers_loaded: u32,
}

/// What to tell the operator about every plugin. Pure.
///
/// The workers' confirmation wins: a pod whose every worker serves its assigned revision (or
/// nothing, when nothing is assigned) is `Loaded` whatever happened before. Otherwise an
/// attempt in flight or being retried is `Loading`, a failed one `Failed`, a revision a
/// worker refused `Failed`, and anything else waits for the app (`Loading` when a worker is
/// connected, `Pending` when none is).
pub fn summarize(
    state: &SidecarState,
    live: &LiveApp,
    attempts: &BTreeMap<String, Attempt>,
) -> BTreeMap<String, Summary> {
    let plugins = state.plugins.keys().chain(attempts.keys());
    plugins
        .map(|plugin| {
            let record = state.plugins.get(plugin);
            let attempt = attempts.get(plugin);
            let assigned = match attempt {
                Some(
                    Attempt::InFlight { revision }
                    | Attempt::Failed { revision, .. }
                    | Attempt::Retrying { revision, .. },
                ) => Some(revision.clone()),
                None => record.and_then(|r| r.assigned.as_ref().map(|a| a.revision.clone())),
            };
            let serving = live.serving(plugin).map(str::to_string);
            let (loaded, total) = assigned
                .as_deref()
                .map_or((0, live.workers.len()), |r| live.loaded_by(plugin, r));
            let refused = record
                .and_then(|r| r.refused.as_ref())
                .filter(|r| Some(&r.revision) == assigned.as_ref());
            // Nothing assigned and nothing serving is converged too (an unload).
            let (state, reason) = if serving == assigned {
                (State::Loaded, String::new())
            } else {
                match (attempt, refused) {
                    (Some(Attempt::InFlight { .. }), _) => (State::Loading, String::new()),
                    (Some(Attempt::Retrying { reason, .. }), _) => (State::Loading, reason.clone()),
                    (Some(Attempt::Failed { reason, .. }), _) => (State::Failed, reason.clone()),
                    (None, Some(r)) => (State::Failed, format!("app: {}", r.reason)),
                    (None, None) if live.connected() => (State::Loading, String::new()),
                    (None, None) => (State::Pending, "waiting for the app to connect".into()),
                }
            };
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let summary = Summary {
                assigned,
                serving,
                state,
                reason,
                workers: count(total),
                workers_loaded: count(loaded),
            };
            (plugin.clone(), summary)
        })
        .collect()
}

/// The summaries with the time each one last changed; `since` survives reconnects.
type Published = BTreeMap<String, (Summary, i64)>;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Keeps the published picture up to date.
struct Reporter {
    agent: Arc<Agent>,
    attempts: Mutex<BTreeMap<String, Attempt>>,
    published: watch::Sender<Published>,
}

impl Reporter {
    fn set_attempt(&self, plugin: &str, attempt: Option<Attempt>) {
        if let Ok(mut attempts) = self.attempts.lock() {
            match attempt {
                Some(a) => attempts.insert(plugin.to_string(), a),
                None => attempts.remove(plugin),
            };
        }
        self.refresh();
    }

    fn refresh(&self) {
        let report = self.agent.status();
        let attempts = self.attempts.lock().map(|a| a.clone()).unwrap_or_default();
        let next = summarize(&report.state, &report.app, &attempts);
        let now = unix_ms();
        self.published.send_if_modified(|current| {
            let mut changed = false;
            for (plugin, summary) in next {
                if current.get(&plugin).is_none_or(|(s, _)| *s != summary) {
                    current.insert(plugin, (summary, now));
                    changed = true;
                }
            }
            changed
        });
    }
}

fn wire(plugin: &str, (summary, since): &(Summary, i64)) -> PluginState {
    PluginState {
        plugin: plugin.to_string(),
        assigned_revision: summary.assigned.clone().unwrap_or_default(),
        serving_revision: summary.serving.clone().unwrap_or_default(),
        state: summary.state.into(),
        reason: summary.reason.clone(),
        since_unix_ms: *since,
        workers: summary.workers,
        workers_loaded: summary.workers_loaded,
    }
}

/// Turns an `Assign` with a revision into an assignment (an empty revision is an unload).
pub fn assignment(assign: proto::Assign) -> Result<Assignment, String> {
    let config = if assign.config_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&assign.config_json)
            .map_err(|e| format!("assignment: config is not JSON: {e}"))?
    };
    Ok(Assignment {
        plugin: assign.plugin,
        revision: Some(assign.revision),
        artifact: assign.url,
        digest: assign.digest,
        config,
        credentials: assign.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
        }),
        signature_key: (!assign.signature_public_key.is_empty())
            .then_some(assign.signature_public_key),
    })
}

/// Runs the channel until the process ends: reconnects with jittered back-off and never
/// returns.
pub async fn run(agent: Arc<Agent>, settings: ChannelSettings) {
    crate::ensure_crypto_provider();
    agent.telemetry().forward_to_operator();
    let reporter = Arc::new(Reporter {
        agent: agent.clone(),
        attempts: Mutex::default(),
        published: watch::Sender::new(Published::new()),
    });
    reporter.refresh();
    // App acks and disconnects change the picture without an assignment.
    let mut live = agent.subscribe_app();
    let on_app = reporter.clone();
    tokio::spawn(async move {
        while live.changed().await.is_ok() {
            on_app.refresh();
        }
    });
    let (work, queue) = mpsc::unbounded_channel::<proto::Assign>();
    tokio::spawn(worker(reporter.clone(), queue));

    let (first, ceiling) = settings.backoff;
    let mut delay = first;
    loop {
        let started = tokio::time::Instant::now();
        match session(&settings, &reporter, &work).await {
            Ok(()) => tracing::warn!("operator closed the channel; reconnecting"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "operator channel failed"),
        }
        // A stream that lived a while was healthy: start the back-off over.
        if started.elapsed() > Duration::from_secs(30) {
            delay = first;
        }
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        delay = (delay * 2).min(ceiling);
    }
}

/// Runs the operator's assignments: one plugin's one at a time, different plugins side by
/// side, so a rollback of one plugin never waits behind another's download; a transient
/// failure is tried again after a back-off.
async fn worker(reporter: Arc<Reporter>, mut queue: mpsc::UnboundedReceiver<proto::Assign>) {
    let mut turns = Turns::default();
    let mut tasks = Tasks::default();
    loop {
        let retry_at = turns.next_retry();
        tokio::select! {
            received = queue.recv() => match received {
                Some(assign) => {
                    if let Some(now) = turns.offer(assign) {
                        let stage = turns.stage(&now.plugin);
                        tasks.start(&reporter, now, stage);
                    }
                }
                None => return,
            },
            Some(done) = tasks.running.join_next_with_id() => {
                let (id, outcome) = match done {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => {
                        tracing::error!(error = %e, "an assignment task failed");
                        let reason = format!("assignment: the sidecar's task failed: {e}");
                        (e.id(), Err(Failure::permanent(reason)))
                    }
                };
                let Some(plugin) = tasks.ended(id) else {
                    continue;
                };
                let jitter = 0.5 + fastrand::f64() / 2.0;
                let now = tokio::time::Instant::now();
                let retry = outcome.as_ref().is_err_and(|f| f.transient)
                    && !reporter.agent.has_fallback(&plugin);
                let (attempt, next) = turns.finished(&plugin, outcome, retry, now, jitter);
                if let Some(Attempt::Retrying { revision, reason }) = &attempt {
                    tracing::warn!(plugin, revision, reason, "assignment failed; trying again");
                }
                reporter.set_attempt(&plugin, attempt);
                if let Some(next) = next {
                    let stage = turns.stage(&next.plugin);
                    tasks.start(&reporter, next, stage);
                }
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                for again in turns.due(tokio::time::Instant::now()) {
                    let stage = turns.stage(&again.plugin);
                    tasks.start(&reporter, again, stage);
                }
            }
        }
    }
}

/// The tasks carrying out assignments, and which plugin each one is for, so that a task's
/// end is recorded in one place, even if it panicked (a failure is reported and its
/// plugin's turn freed).
#[derive(Default)]
struct Tasks {
    running: tokio::task::JoinSet<Result<(), Failure>>,
    carrying: BTreeMap<tokio::task::Id, String>,
    /// The task under way for each plugin.
    current: BTreeMap<String, tokio::task::AbortHandle>,
}

impl Tasks {
    /// Starts carrying out `assign`. A task of its plugin still under way was superseded
    /// before the app was told ([`Turns::offer`]): it is stopped, and its end not reported
    /// (neither a failure nor a retry: the newer assignment is the plugin's attempt now).
    fn start(&mut self, reporter: &Arc<Reporter>, assign: proto::Assign, stage: Supersedable) {
        let plugin = assign.plugin.clone();
        if let Some(superseded) = self.current.remove(&plugin) {
            self.carrying.remove(&superseded.id());
            superseded.abort();
            tracing::info!(
                plugin,
                revision = assign.revision,
                "superseded the assignment not yet handed to the app"
            );
        }
        let reporter = reporter.clone();
        let task = self
            .running
            .spawn(async move { carry_out(&reporter, assign, stage).await });
        self.carrying.insert(task.id(), plugin.clone());
        self.current.insert(plugin, task);
    }

    /// Task `id` ended: the plugin it carried out, unless it was superseded.
    fn ended(&mut self, id: tokio::task::Id) -> Option<String> {
        let plugin = self.carrying.remove(&id)?;
        if self.current.get(&plugin).is_some_and(|t| t.id() == id) {
            self.current.remove(&plugin);
        }
        Some(plugin)
    }
}

/// Carries out one `Assign` (an empty revision unloads) unless `stage` calls it off before
/// the app is told; `Err` says why it did not take.
async fn carry_out(
    reporter: &Reporter,
    assign: proto::Assign,
    stage: Supersedable,
) -> Result<(), Failure> {
    let (plugin, revision) = (assign.plugin.clone(), assign.revision.clone());
    if revision.is_empty() {
        // An unload tells the app at once.
        if !stage.publish() {
            return Ok(());
        }
        tracing::info!(plugin, "unload asked by the operator");
        reporter.set_attempt(&plugin, Some(Attempt::InFlight { revision }));
        return reporter
            .agent
            .unload(&plugin)
            .await
            .map_err(Failure::permanent);
    }
    let a = assignment(assign)
        .inspect_err(|reason| {
            tracing::warn!(plugin, revision, reason, "assignment refused");
            let invalid = crate::metrics::FailureCause::Invalid;
            reporter.agent.telemetry().failed(&plugin, invalid);
        })
        .map_err(Failure::permanent)?;
    tracing::info!(
        plugin,
        revision,
        artifact = a.artifact,
        "assigned by the operator"
    );
    reporter.set_attempt(&plugin, Some(Attempt::InFlight { revision }));
    match reporter.agent.assign_supersedable(a, &stage).await {
        // Assigned, and offered when the app connects: reported as waiting for the app.
        AssignOutcome::Loaded { .. } | AssignOutcome::AwaitingApp { .. } => Ok(()),
        AssignOutcome::Failed {
            reason, transient, ..
        } => Err(Failure { reason, transient }),
    }
}

/// A projected service-account token is a JWT of a few KiB: a larger file is not one.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads the projected token (re-read per connection: the kubelet rotates it).
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = crate::bounded::read_file(path, MAX_TOKEN_FILE_BYTES)
        .with_context(|| format!("read token {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("token {} is not UTF-8", path.display()))
}

/// One stream: connect, Hello, then forward assignments in and changes out until it ends.
async fn session(
    settings: &ChannelSettings,
    reporter: &Reporter,
    work: &mpsc::UnboundedSender<proto::Assign>,
) -> anyhow::Result<()> {
    let token = read_token(&settings.token_file)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&settings.ca_pem));
    if let Some(name) = &settings.server_name {
        tls = tls.domain_name(name.clone());
    }
    let channel = Endpoint::from_shared(settings.endpoint.clone())
        .with_context(|| format!("operator address {}", settings.endpoint))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect to {}", settings.endpoint))?;

    let mut published = reporter.published.subscribe();
    let mut sent = published.borrow_and_update().clone();
    let hello = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(Hello {
            namespace: settings.namespace.clone(),
            pod: settings.pod.clone(),
            plugins: sent.iter().map(|(p, s)| wire(p, s)).collect(),
        })),
    };
    let (out, outbound) = mpsc::channel::<SidecarMessage>(16);
    out.send(hello).await?;
    let health = tokio::spawn(forward_health(
        reporter.agent.telemetry().clone(),
        out.clone(),
        HEALTH_FORWARD_INTERVAL,
    ));
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
    hotload_channel::authorize(&mut request, &token).with_context(|| {
        format!(
            "token {} is not a valid header value",
            settings.token_file.display()
        )
    })?;
    let mut inbound = PluginChannelClient::new(channel)
        .attach(request)
        .await
        .context("operator refused the stream")?
        .into_inner();
    tracing::info!(operator = settings.endpoint, "operator channel open");

    let forward = tokio::spawn(async move {
        while published.changed().await.is_ok() {
            let now = published.borrow_and_update().clone();
            for (plugin, entry) in &now {
                if sent.get(plugin) != Some(entry) {
                    let state = SidecarMessage {
                        kind: Some(sidecar_message::Kind::State(wire(plugin, entry))),
                    };
                    if out.send(state).await.is_err() {
                        return;
                    }
                }
            }
            sent = now;
        }
    });
    let result = async {
        while let Some(OperatorMessage { kind }) = inbound.message().await? {
            match kind {
                Some(operator_message::Kind::Assign(assign)) => {
                    if !assign.revision.is_empty() {
                        reporter.agent.request(&assign.plugin, &assign.revision);
                    }
                    work.send(assign).context("assignment worker stopped")?;
                }
                // Sent after the Assigns it vouches for, so they are requested already.
                Some(operator_message::Kind::Synced(_)) => reporter.agent.synced(),
                None => {}
            }
        }
        Ok(())
    }
    .await;
    forward.abort();
    health.abort();
    result
}

/// How often a stream sends the health counts reported since it last did.
const HEALTH_FORWARD_INTERVAL: Duration = crate::protocol::HEALTH_INTERVAL;

/// Sends the pending health counts on `out` every `every` (nothing when none are pending),
/// split into messages of [`health::MAX_REVISIONS_PER_MESSAGE`] revisions, until `out`
/// closes or the task is aborted. Counts are taken only once the stream has room for their
/// message, so an abort loses none; what is queued when the stream breaks is lost with it.
async fn forward_health(
    telemetry: Arc<crate::metrics::Telemetry>,
    out: mpsc::Sender<SidecarMessage>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let Ok(room) = out.reserve().await else {
                return;
            };
            let taken = telemetry.take_pending(health::MAX_REVISIONS_PER_MESSAGE);
            let Some(message) = health::messages(&taken).pop() else {
                break;
            };
            tracing::debug!(revisions = taken.len(), "health sent to the operator");
            room.send(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;
    use crate::state::{Refusal, RevisionRecord};

    fn record(revision: &str) -> RevisionRecord {
        RevisionRecord {
            revision: revision.into(),
            artifact: "https://a/p.wasm".into(),
            digest: Sha256Digest::of(revision.as_bytes()),
            config: serde_json::Value::Null,
        }
    }

    fn assigned(revision: &str) -> SidecarState {
        let mut state = SidecarState::default();
        state.assign("auth", record(revision), 3);
        state
    }

    /// One connected worker serving `serving`.
    fn app(serving: &[(&str, &str)]) -> LiveApp {
        let mut live = LiveApp::default();
        live.connect(1, Some(4711));
        live.hello(1, None, Some(2));
        for (plugin, revision) in serving {
            let ack = crate::readiness::AppAck::Loaded {
                revision: revision.to_string(),
                health: String::new(),
            };
            live.answer(1, plugin, Some(ack));
        }
        live
    }

    fn one(state: &SidecarState, live: &LiveApp, attempts: &[(&str, Attempt)]) -> Summary {
        let attempts = attempts
            .iter()
            .map(|(p, a)| (p.to_string(), a.clone()))
            .collect();
        summarize(state, live, &attempts)
            .remove("auth")
            .expect("auth is summarized")
    }

    #[test]
    fn a_retry_is_reported_loading_with_its_reason() {
        let retrying = Attempt::Retrying {
            revision: "r1".into(),
            reason: "fetch: connection refused (try 2 failed; trying again in 2.0s)".into(),
        };
        let s = one(&SidecarState::default(), &app(&[]), &[("auth", retrying)]);
        assert_eq!(s.state, State::Loading);
        assert!(s.reason.contains("trying again"), "{}", s.reason);
    }

    #[test]
    fn loaded_means_every_worker_and_the_counts_say_how_many() {
        let mut live = app(&[("auth", "r1")]);
        live.connect(2, Some(4712));
        live.hello(2, None, Some(2));
        let s = one(&assigned("r1"), &live, &[]);
        assert_eq!(
            s.state,
            State::Loading,
            "the second worker has not loaded r1"
        );
        assert_eq!((s.workers_loaded, s.workers), (1, 2));
        live.answer(
            2,
            "auth",
            Some(crate::readiness::AppAck::Loaded {
                revision: "r1".into(),
                health: String::new(),
            }),
        );
        let s = one(&assigned("r1"), &live, &[]);
        assert_eq!(s.state, State::Loaded);
        assert_eq!((s.workers_loaded, s.workers), (2, 2));
    }

    #[test]
    fn a_revision_the_app_confirmed_is_loaded() {
        let s = one(&assigned("r1"), &app(&[("auth", "r1")]), &[]);
        assert_eq!(s.state, State::Loaded);
        assert_eq!(s.assigned.as_deref(), Some("r1"));
        assert_eq!(s.serving.as_deref(), Some("r1"));
    }

    #[test]
    fn an_attempt_in_flight_is_loading_and_the_old_revision_still_serves() {
        let inflight = Attempt::InFlight {
            revision: "r2".into(),
        };
        let s = one(
            &assigned("r1"),
            &app(&[("auth", "r1")]),
            &[("auth", inflight)],
        );
        assert_eq!(s.state, State::Loading);
        assert_eq!(s.assigned.as_deref(), Some("r2"));
        assert_eq!(s.serving.as_deref(), Some("r1"));
    }

    #[test]
    fn a_failed_fetch_names_its_reason_while_the_stored_state_never_changed() {
        let failed = Attempt::Failed {
            revision: "r2".into(),
            reason: "fetch: digest mismatch".into(),
        };
        let s = one(
            &assigned("r1"),
            &app(&[("auth", "r1")]),
            &[("auth", failed)],
        );
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.assigned.as_deref(), Some("r2"));
        assert_eq!(s.reason, "fetch: digest mismatch");
    }

    #[test]
    fn a_refusal_recorded_before_a_restart_is_still_reported() {
        let mut state = assigned("r2");
        state.plugins.get_mut("auth").expect("assigned").refused = Some(Refusal {
            revision: "r2".into(),
            reason: "self-check trapped".into(),
        });
        let s = one(&state, &app(&[("auth", "r1")]), &[]);
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.reason, "app: self-check trapped");
    }

    #[test]
    fn without_an_app_the_assignment_is_pending_and_nothing_serves() {
        let s = one(&assigned("r1"), &LiveApp::default(), &[]);
        assert_eq!(s.state, State::Pending);
        assert_eq!(s.serving, None);
        let s = one(&assigned("r1"), &app(&[]), &[]);
        assert_eq!(s.state, State::Loading, "connected app, not confirmed yet");
    }

    #[test]
    fn the_apps_confirmation_wins_over_a_stale_failure() {
        let failed = Attempt::Failed {
            revision: "r2".into(),
            reason: "ack: app did not answer within 60s".into(),
        };
        let s = one(
            &assigned("r2"),
            &app(&[("auth", "r2")]),
            &[("auth", failed)],
        );
        assert_eq!(s.state, State::Loaded);
    }

    #[test]
    fn an_unloaded_plugin_is_converged_on_nothing() {
        let mut state = assigned("r1");
        state.unassign("auth");
        let s = one(&state, &app(&[]), &[]);
        assert_eq!(
            (s.assigned, s.serving, s.state),
            (None, None, State::Loaded)
        );
        let unloading = Attempt::InFlight {
            revision: String::new(),
        };
        let s = one(&state, &app(&[("auth", "r1")]), &[("auth", unloading)]);
        assert_eq!(s.state, State::Loading, "the app still runs it");
    }

    #[test]
    fn a_token_file_larger_than_a_token_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, vec![b'a'; 64 * 1024 + 1]).expect("write");
        let err = format!("{:#}", read_token(&path).expect_err("too large"));
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("larger than 65536 bytes"), "{err}");
        std::fs::write(&path, "eyJhbGciOi.token\n").expect("write");
        assert_eq!(read_token(&path).expect("a token"), "eyJhbGciOi.token\n");
    }

    #[test]
    fn assign_messages_become_assignments() {
        let a = assignment(proto::Assign {
            plugin: "auth".into(),
            revision: "r1".into(),
            url: "oci://reg/p:1".into(),
            digest: "sha256:00".into(),
            config_json: r#"{"k":1}"#.into(),
            credentials: Some(proto::Credentials {
                username: "u".into(),
                password: "p".into(),
            }),
            signature_public_key: "PEM".into(),
        })
        .expect("valid");
        assert_eq!(a.revision.as_deref(), Some("r1"));
        assert_eq!(a.signature_key.as_deref(), Some("PEM"));
        assert_eq!(a.config, serde_json::json!({"k": 1}));
        assert_eq!(a.credentials.map(|c| c.username), Some("u".to_string()));
        let unsigned = assignment(proto::Assign {
            revision: "r1".into(),
            ..Default::default()
        });
        assert!(
            unsigned.is_ok_and(|a| a.signature_key.is_none()),
            "\"\" means no policy"
        );
        let bad = assignment(proto::Assign {
            revision: "r1".into(),
            config_json: "{".into(),
            ..Default::default()
        });
        assert!(bad.is_err_and(|e| e.contains("config is not JSON")));
    }
}

#[cfg(test)]
#[path = "channel_supersede_tests.rs"]
mod supersede_tests;
