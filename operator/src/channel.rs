//! The sidecar channel server. Each sidecar dials the operator (so new pods converge the
//! moment they start, and no pod needs ingress or RBAC) and proves which pod it is with an
//! audience-bound projected service-account token, which the operator checks with a
//! TokenReview. The token's pod (namespace, name and uid: a pod recreated under the same
//! name is another pod) is the only pod that stream may speak for.
//!
//! ```text
//!  sidecar ──Attach(Hello{ns,pod,plugins}, PluginState…)──▶ operator ──▶ Registry ──▶ controller
//!          ◀────────────── Assign{plugin, revision, …} ──────────── Registry::assign ◀─┘
//!          ◀────────────── Synced (once, after the Assigns planned from Hello) ── synced.rs
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::Either;
use futures::{FutureExt, Stream, StreamExt};
use hotload_channel::TOKEN_AUDIENCE;
use hotload_channel::proto::plugin_channel_server::{PluginChannel, PluginChannelServer};
use hotload_channel::proto::{
    Assign, Credentials, Health as HealthReport, OperatorMessage, PluginState, RevisionHealth,
    SidecarMessage, State, Synced, operator_message, sidecar_message,
};
use hotload_protocol::{Counts, Errors};
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status, Streaming};

use crate::admin::Health;
use crate::api::AckState;
use crate::health::HealthStore;
use crate::listener::{ConnectionInfo, ConnectionLimits, InUse};
use crate::metrics::Metrics;
use crate::registry::{self, Directive, Outgoing, PluginReport, Registry};
use crate::tls::CertStore;

/// The pod a verified token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod object's uid.
    pub uid: String,
}

/// The pod a TokenReview vouches for, or why the token is refused.
pub fn identity(review: &TokenReviewStatus) -> Result<PodIdentity, String> {
    if review.authenticated != Some(true) {
        let why = review
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(format!("token rejected by the API server: {why}"));
    }
    if !review
        .audiences
        .iter()
        .flatten()
        .any(|a| a == TOKEN_AUDIENCE)
    {
        return Err(format!("token is not for audience {TOKEN_AUDIENCE}"));
    }
    let user = review.user.as_ref().ok_or("token review names no user")?;
    let username = user.username.as_deref().unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split(':').next())
        .ok_or_else(|| format!("{username} is not a service account"))?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .filter(|value| !value.is_empty())
    };
    let unbound = "token is not bound to a pod (use a projected service-account token)";
    let pod = extra("authentication.kubernetes.io/pod-name").ok_or(unbound)?;
    let uid = extra("authentication.kubernetes.io/pod-uid").ok_or(unbound)?;
    Ok(PodIdentity {
        namespace: namespace.to_string(),
        pod: pod.clone(),
        uid: uid.clone(),
    })
}

/// TokenReviews in flight at once. A fleet reconnecting at once (an operator restart)
/// would otherwise open one API server connection per sidecar; 32 keep up and keep it
/// bounded.
const REVIEWS_IN_FLIGHT: usize = 32;

/// How long a token review may take, waiting for its turn included; past it the sidecar is
/// refused with `UNAVAILABLE` and retries after its back-off.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Attaches past their token review, waiting for Hello, at once. More are refused with
/// `UNAVAILABLE` and retried by the sidecar after its jittered back-off, so a reconnect
/// storm of 10,000 sidecars costs the memory of 512 pending streams, not of 10,000.
const ADMITTING: usize = 512;

/// How long a sidecar has to send Hello once its token is accepted.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message a sidecar may send. A Hello of 64 plugins with 512-byte reasons
/// is about 40 KiB; anything larger ends the stream with `OUT_OF_RANGE`.
pub const MAX_SIDECAR_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest message sent to a sidecar: an Assign carries a config of at most
/// [`crate::api::MAX_CONFIG_BYTES`] and a key of at most
/// [`crate::api::MAX_PUBLIC_KEY_BYTES`].
pub const MAX_OPERATOR_MESSAGE_BYTES: usize = 256 * 1024;

/// Bounds on the channel server's connections and HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Connections, handshakes and idleness (a connection without an attached sidecar).
    pub connections: ConnectionLimits,
    /// HTTP/2 streams per connection: a sidecar needs one (two while it reconnects).
    pub streams_per_connection: u32,
    /// HTTP/2 ping interval: a connection whose peer does not answer (a dead node) ends,
    /// and with it its stream, so the pod counts as unreachable instead of in flight.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// The largest header block (the sidecar's token is most of it).
    pub max_header_list_bytes: u32,
}

impl ChannelLimits {
    /// The defaults, for at most `max_connections` sidecars, `max_per_peer` of them from one
    /// address.
    pub fn new(max_connections: usize, max_per_peer: usize) -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections,
                max_per_peer,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
            streams_per_connection: 4,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// Serves `service` over TLS on `listener` with `limits`, until the listener ends.
///
/// Each connection is HTTP/2 only (ALPN `h2`), served by hyper with the service's routes and
/// the connection's [`ConnectionInfo`] put in each request. Its task is the connection
/// future itself: 2.8 KiB a connection, where tonic's `Server` spawned one of 5.0 KiB (its
/// task also kept the builder, the connection and the service it had moved into the
/// connection, and the connection-age timers this server does not use). At one connection
/// per sidecar that is 2 KiB per pod (docs/benchmarks.md, "Fleet scale").
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PluginChannelServer<ChannelService>,
    certs: &Arc<CertStore>,
    limits: ChannelLimits,
) -> anyhow::Result<()> {
    let connections =
        crate::listener::incoming(listener, certs.server_config(&[b"h2"]), limits.connections);
    let routes = tonic::service::Routes::new(service).prepare();
    let http = http2(&limits);
    let mut connections = std::pin::pin!(connections);
    while let Some(connection) = connections.next().await {
        let Ok(stream) = connection else { continue };
        let info = stream.info();
        let service = tower::ServiceExt::map_request(
            routes.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info.clone());
                request
            },
        );
        let served = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::spawn(served.map(|served| {
            if let Err(error) = served {
                tracing::debug!(%error, "sidecar channel connection ended");
            }
        }));
    }
    Ok(())
}

/// HTTP/2 with `limits`' stream, keepalive and header bounds; hyper's defaults otherwise (as
/// tonic's server leaves them).
fn http2(limits: &ChannelLimits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.streams_per_connection)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_pending_accept_reset_streams(16);
    builder
}

/// Why an attach was refused: the gate was full (the sidecar retries after a back-off), or
/// anything else.
#[derive(Debug)]
enum Refusal {
    Busy(Status),
    Denied(Status),
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Refusal::Denied(status)
    }
}

/// Admission's two bounds, in order: token reviews in flight, then attaches past review
/// waiting for Hello. A slot is taken only once the token checks out, so requests without
/// a valid token cannot crowd out sidecars.
struct Gate {
    reviews: Semaphore,
    admitting: Semaphore,
}

impl Gate {
    fn new() -> Self {
        Self {
            reviews: Semaphore::new(REVIEWS_IN_FLIGHT),
            admitting: Semaphore::new(ADMITTING),
        }
    }

    /// Runs the review `review` makes (bounded in number and time), then takes an admission
    /// slot.
    ///
    /// The review is made, on the heap, only once its turn comes: an attach waiting for its
    /// turn holds a closure, not the API request's future (about 2 KiB), and a reconnect
    /// storm has every sidecar's attach waiting at once.
    async fn pass<R, F>(&self, review: R) -> Result<(PodIdentity, SemaphorePermit<'_>), Refusal>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<PodIdentity, Status>>,
    {
        let reviewed = tokio::time::timeout(REVIEW_TIMEOUT, async {
            let _turn = self
                .reviews
                .acquire()
                .await
                .map_err(|_| Status::unavailable("shutting down"))?;
            Box::pin(review()).await
        })
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "the token review took longer than {}s; retry after a back-off",
                REVIEW_TIMEOUT.as_secs()
            ))
        })??;
        let slot = self.admitting.try_acquire().map_err(|_| {
            Refusal::Busy(Status::unavailable(format!(
                "{ADMITTING} sidecars are being admitted; retry after a back-off"
            )))
        })?;
        Ok((reviewed, slot))
    }
}

/// The gRPC service.
pub struct ChannelService {
    client: Client,
    registry: Arc<Registry>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    plugin_health: Arc<HealthStore>,
    gate: Gate,
}

impl ChannelService {
    /// A service that checks tokens with `client`, records sidecars in `registry` and how
    /// their plugins run in `plugin_health`.
    pub fn new(
        client: Client,
        registry: Arc<Registry>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        plugin_health: Arc<HealthStore>,
    ) -> PluginChannelServer<Self> {
        PluginChannelServer::new(Self {
            client,
            registry,
            health,
            metrics,
            plugin_health,
            gate: Gate::new(),
        })
        .max_decoding_message_size(MAX_SIDECAR_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_OPERATOR_MESSAGE_BYTES)
    }

    async fn review(&self, token: String) -> Result<PodIdentity, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token,
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("cannot review the token: {e}")))?;
        identity(&reviewed.status.unwrap_or_default()).map_err(Status::unauthenticated)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<OperatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl PluginChannel for ChannelService {
    type AttachStream = Outbound;

    async fn attach(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let (outcome, attached) = match self.admit(request).await {
            Ok(response) => ("accepted", Ok(response)),
            Err(Refusal::Busy(status)) => ("busy", Err(status)),
            Err(Refusal::Denied(status)) => ("refused", Err(status)),
        };
        self.metrics.attached(outcome);
        attached
    }
}

impl ChannelService {
    /// Checks the token and Hello, registers the sidecar and returns its directive stream.
    async fn admit(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Outbound>, Refusal> {
        // The headers are dropped before the review: an attach keeps only its token while it
        // waits for its turn.
        let (metadata, extensions, mut inbound) = request.into_parts();
        // Whatever happens, this connection is in use while the stream is.
        let in_use = extensions.get::<ConnectionInfo>().map(|c| c.usage.hold());
        if !self.health.ready() {
            return Err(Status::unavailable(
                "this operator replica is not the leader (or is still syncing)",
            )
            .into());
        }
        let token = hotload_channel::bearer_token(&metadata)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no bearer token: the sidecar must send its projected token",
                )
            })?
            .to_string();
        drop((metadata, extensions));
        let (who, _admitting, first) = self.pass_hearing(token, &mut inbound).await?;
        let hello = hello_of(first, &who)?;
        if !self.health.ready() {
            // Stepped down while this sidecar was being admitted.
            return Err(
                Status::unavailable("this operator replica is no longer the leader").into(),
            );
        }
        let (tx, rx) = registry::outbox();
        let holds = held(&who, &hello.plugins, Timestamp::now());
        let id = self
            .registry
            .connect(&who.namespace, &who.pod, &who.uid, tx, holds);
        self.metrics.set_connected(self.registry.connected());
        tracing::info!(namespace = %who.namespace, pod = %who.pod, uid = %who.uid, "sidecar connected");
        Ok(Response::new(Box::pin(Session {
            inbound,
            outbox: rx,
            sidecar: Attached {
                registry: self.registry.clone(),
                metrics: self.metrics.clone(),
                plugin_health: self.plugin_health.clone(),
                who,
                id,
                warned_health: None,
                _in_use: in_use,
            },
        })))
    }

    /// Reviews `token` and takes an admission slot ([`Gate::pass`]) while the first message
    /// is read. A refused token is told at once, Hello or not. An unread Hello would keep
    /// its frame's bytes, and with them its connection's whole read buffer (h2 hands a
    /// frame on as a slice of it), for as long as the review waits for its turn: in a
    /// reconnect storm, every connection's.
    async fn pass_hearing(
        &self,
        token: String,
        inbound: &mut Streaming<SidecarMessage>,
    ) -> Result<(PodIdentity, SemaphorePermit<'_>, Option<SidecarMessage>), Refusal> {
        let reviewing = std::pin::pin!(self.gate.pass(|| self.review(token)));
        let hearing = std::pin::pin!(first_message(inbound));
        match futures::future::select(reviewing, hearing).await {
            Either::Left((reviewed, hearing)) => {
                let (who, slot) = reviewed?;
                Ok((who, slot, hearing.await?))
            }
            Either::Right((first, reviewing)) => {
                let (who, slot) = reviewing.await?;
                Ok((who, slot, first?))
            }
        }
    }
}

/// The sidecar's first message, within [`HELLO_TIMEOUT`].
async fn first_message(
    inbound: &mut Streaming<SidecarMessage>,
) -> Result<Option<SidecarMessage>, Status> {
    tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no Hello within {}s of attaching",
                HELLO_TIMEOUT.as_secs()
            ))
        })?
}

/// The Hello `first` must be, from the pod the token names (`who`).
fn hello_of(
    first: Option<SidecarMessage>,
    who: &PodIdentity,
) -> Result<hotload_channel::proto::Hello, Status> {
    let Some(SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(hello)),
    }) = first
    else {
        return Err(Status::invalid_argument("the first message must be Hello"));
    };
    if hello.namespace != who.namespace || hello.pod != who.pod {
        return Err(Status::permission_denied(format!(
            "token belongs to pod {}/{}, but the sidecar claims {}/{}",
            who.namespace, who.pod, hello.namespace, hello.pod
        )));
    }
    Ok(hello)
}

/// What a Hello says the pod holds, as the registry keeps it: at most
/// [`registry::MAX_PLUGINS_PER_POD`] plugins, each report checked ([`report`]); what is
/// left out is logged once, naming the pod.
fn held(who: &PodIdentity, plugins: &[PluginState], now: Timestamp) -> Vec<(String, PluginReport)> {
    let PodIdentity { namespace, pod, .. } = who;
    if plugins.len() > registry::MAX_PLUGINS_PER_POD {
        tracing::warn!(%namespace, %pod, plugins = plugins.len(), kept = registry::MAX_PLUGINS_PER_POD,
            "the sidecar's Hello names more plugins than a pod may hold; the rest are ignored");
    }
    plugins
        .iter()
        .take(registry::MAX_PLUGINS_PER_POD)
        .filter_map(|state| match report(state, now) {
            Ok(report) => Some((state.plugin.clone(), report)),
            Err(why) => {
                tracing::warn!(%namespace, %pod, why, "ignored a plugin in the sidecar's Hello");
                None
            }
        })
        .collect()
}

/// State reports taken in per poll before the outbox gets its turn.
const REPORTS_PER_POLL: usize = 32;

/// One sidecar's session, served as the response stream: each poll takes in what the
/// sidecar reported and hands out what the registry queued for it, so a sidecar costs no
/// task of its own. The session ends when the sidecar closes its side, and whatever ends it (that, a reset,
/// a dead connection, a newer stream for the pod) drops it, which marks the pod
/// disconnected.
struct Session {
    inbound: Streaming<SidecarMessage>,
    outbox: mpsc::Receiver<Outgoing>,
    sidecar: Attached,
}

impl Stream for Session {
    type Item = Result<OperatorMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut budget = REPORTS_PER_POLL;
        loop {
            match this.inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(message))) => this.sidecar.heard(message),
                Poll::Ready(Some(Err(status))) => {
                    let PodIdentity { namespace, pod, .. } = &this.sidecar.who;
                    tracing::debug!(%namespace, %pod, %status, "sidecar stream broke off");
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
            budget -= 1;
            if budget == 0 {
                // More may be waiting: come back once the outbox had its turn.
                cx.waker().wake_by_ref();
                break;
            }
        }
        this.outbox
            .poll_next_unpin(cx)
            .map(|next| next.map(|message| Ok(message_for(&message))))
    }
}

/// A registered sidecar: records its reports, and unregisters it when dropped.
struct Attached {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    plugin_health: Arc<HealthStore>,
    who: PodIdentity,
    id: u64,
    /// When this stream last warned of a refused health report (at most one a minute:
    /// a broken sidecar sends one a second).
    warned_health: Option<std::time::Instant>,
    /// Keeps the connection from being closed as idle.
    _in_use: Option<InUse>,
}

/// How often one stream may warn of refused health reports.
const HEALTH_WARNING_EVERY: Duration = Duration::from_secs(60);

impl Attached {
    fn heard(&mut self, message: SidecarMessage) {
        match message.kind {
            Some(sidecar_message::Kind::State(state)) => self.state(&state),
            Some(sidecar_message::Kind::Health(report)) => self.health(&report),
            // A second Hello, or a kind this operator does not know yet.
            _ => {}
        }
    }

    /// Records how the pod's plugins ran, while this stream owns the pod: every revision
    /// that checks out ([`revision_counts`]); the others are refused with a warning.
    fn health(&mut self, report: &HealthReport) {
        let PodIdentity {
            namespace,
            pod,
            uid,
        } = &self.who;
        let (kept, refused) = health_counts(report);
        let owns = self.registry.view(namespace, pod, uid, "").stream == Some(self.id);
        if owns {
            let now = Timestamp::now();
            for (health, counts) in &kept {
                self.plugin_health.record(
                    namespace,
                    pod,
                    &health.plugin,
                    &health.revision,
                    counts,
                    now,
                );
            }
        }
        self.metrics
            .health_reported(kept.len(), refused.len(), owns);
        let Some(why) = refused.first() else {
            return;
        };
        let quiet = self
            .warned_health
            .is_some_and(|at| at.elapsed() < HEALTH_WARNING_EVERY);
        if !quiet {
            self.warned_health = Some(std::time::Instant::now());
            tracing::warn!(%namespace, %pod, why, refused = refused.len(),
                "ignored a sidecar health report (warned at most once a minute per stream)");
        }
    }

    fn state(&self, state: &PluginState) {
        let PodIdentity { namespace, pod, .. } = &self.who;
        let report = match report(state, Timestamp::now()) {
            Ok(report) => report,
            Err(why) => {
                tracing::warn!(%namespace, %pod, why, "ignored a sidecar report");
                return;
            }
        };
        self.metrics.acked(report.state, report.reason.as_deref());
        if !self
            .registry
            .report(namespace, pod, self.id, &state.plugin, report)
        {
            // A newer stream owns the pod now (or the pod is gone): this one's word is stale.
            tracing::debug!(%namespace, %pod, "report from a stream that no longer owns the pod; ignored");
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let PodIdentity { namespace, pod, .. } = &self.who;
        self.registry.disconnect(namespace, pod, self.id);
        self.metrics.set_connected(self.registry.connected());
        tracing::info!(%namespace, %pod, "sidecar disconnected");
    }
}

/// The most revisions one Health message may report on; a longer one is refused whole.
pub const MAX_REVISIONS_PER_HEALTH: usize = 64;

/// The revisions of a Health message that check out, with their counts, and why each other
/// was refused (all of them when the message reports on more than
/// [`MAX_REVISIONS_PER_HEALTH`] revisions).
pub fn health_counts(report: &HealthReport) -> (Vec<(&RevisionHealth, Counts)>, Vec<String>) {
    if report.revisions.len() > MAX_REVISIONS_PER_HEALTH {
        let why = format!(
            "{} revisions in one health report (at most {MAX_REVISIONS_PER_HEALTH})",
            report.revisions.len()
        );
        return (Vec::new(), vec![why; report.revisions.len()]);
    }
    let mut kept = Vec::with_capacity(report.revisions.len());
    let mut refused = Vec::new();
    for health in &report.revisions {
        match revision_counts(health) {
            Ok(counts) => kept.push((health, counts)),
            Err(why) => refused.push(why),
        }
    }
    (kept, refused)
}

/// One revision's health as counts, or why it cannot be used: a plugin name or revision
/// longer than any the operator gives out ([`registry::check_names`]), an empty revision,
/// or counts that do not add up ([`Counts::check`]).
pub fn revision_counts(health: &RevisionHealth) -> Result<Counts, String> {
    registry::check_names(&health.plugin, [&health.revision])?;
    if health.revision.is_empty() {
        return Err(format!(
            "plugin {}: health without a revision",
            crate::api::escape_controls(&health.plugin)
        ));
    }
    let counts = Counts {
        calls: health.calls,
        errors: Errors {
            trap: health.trap,
            timeout: health.timeout,
            memory: health.memory,
            failed: health.failed,
        },
        latency_us: health.latency_us.clone(),
    };
    counts.check().map_err(|why| {
        format!(
            "plugin {} revision {}: {why}",
            crate::api::escape_controls(&health.plugin),
            crate::api::escape_controls(&health.revision)
        )
    })?;
    Ok(counts)
}

/// A sidecar's PluginState as the registry keeps it, received at `now` (the operator's
/// clock; the sidecar's `since` is for people reading its own status). Refused, naming the
/// field, when the plugin name or a revision is longer than any the operator gives out. The
/// registry makes the reason safe to keep ([`registry::kept_reason`]).
pub fn report(state: &PluginState, now: Timestamp) -> Result<PluginReport, String> {
    registry::check_names(
        &state.plugin,
        [&state.assigned_revision, &state.serving_revision],
    )?;
    let revision = |r: &str| (!r.is_empty()).then(|| r.to_string());
    Ok(PluginReport {
        assigned: revision(&state.assigned_revision),
        serving: revision(&state.serving_revision),
        state: match state.state() {
            State::Loading => AckState::Loading,
            State::Loaded => AckState::Loaded,
            State::Failed => AckState::Failed,
            State::Pending | State::Unspecified => AckState::Pending,
        },
        reason: (!state.reason.is_empty()).then(|| state.reason.clone()),
        since: now,
        workers: state.workers,
        workers_loaded: state.workers_loaded,
    })
}

fn message_for(message: &Outgoing) -> OperatorMessage {
    match message {
        Outgoing::Assign(directive) => assign(directive),
        Outgoing::Synced => OperatorMessage {
            kind: Some(operator_message::Kind::Synced(Synced {})),
        },
    }
}

fn assign(directive: &Directive) -> OperatorMessage {
    OperatorMessage {
        kind: Some(operator_message::Kind::Assign(Assign {
            plugin: directive.plugin.clone(),
            revision: directive.revision.clone().unwrap_or_default(),
            url: directive.url.clone(),
            digest: directive.digest.clone(),
            config_json: directive
                .config
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            credentials: directive.credentials.as_ref().map(|c| Credentials {
                username: c.username.clone(),
                password: c.password.clone(),
            }),
            signature_public_key: directive.signature_key.clone().unwrap_or_default(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn review(username: &str, pod: Option<&str>, audience: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![audience.into()]),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: pod.map(|p| {
                    [
                        (
                            "authentication.kubernetes.io/pod-name".to_string(),
                            vec![p.to_string()],
                        ),
                        (
                            "authentication.kubernetes.io/pod-uid".to_string(),
                            vec![format!("uid-of-{p}")],
                        ),
                    ]
                    .into()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_bound_service_account_token_names_its_pod() {
        let who = identity(&review(
            "system:serviceaccount:shop:default",
            Some("web-1"),
            TOKEN_AUDIENCE,
        ));
        assert_eq!(
            who,
            Ok(PodIdentity {
                namespace: "shop".into(),
                pod: "web-1".into(),
                uid: "uid-of-web-1".into(),
            })
        );
    }

    #[test]
    fn a_token_without_the_pods_uid_is_refused() {
        let mut without_uid = review(
            "system:serviceaccount:shop:default",
            Some("web-1"),
            TOKEN_AUDIENCE,
        );
        if let Some(extra) = without_uid.user.as_mut().and_then(|u| u.extra.as_mut()) {
            extra.remove("authentication.kubernetes.io/pod-uid");
        }
        assert!(
            identity(&without_uid)
                .unwrap_err()
                .contains("not bound to a pod")
        );
    }

    #[test]
    fn synced_and_assigns_go_out_as_their_messages() {
        assert_eq!(
            message_for(&Outgoing::Synced),
            OperatorMessage {
                kind: Some(operator_message::Kind::Synced(Synced {}))
            }
        );
        let directive = Directive {
            plugin: "auth".into(),
            revision: Some("r1".into()),
            url: "https://plugins/auth.wasm".into(),
            digest: "sha256:00".into(),
            config: None,
            credentials: None,
            signature_key: None,
        };
        let Some(operator_message::Kind::Assign(sent)) =
            message_for(&Outgoing::Assign(Arc::new(directive))).kind
        else {
            panic!("an Assign");
        };
        assert_eq!(
            (sent.plugin.as_str(), sent.revision.as_str()),
            ("auth", "r1")
        );
    }

    #[test]
    fn other_tokens_are_refused_with_the_reason() {
        let unbound = identity(&review(
            "system:serviceaccount:shop:default",
            None,
            TOKEN_AUDIENCE,
        ));
        assert!(unbound.unwrap_err().contains("not bound to a pod"));
        let audience = identity(&review(
            "system:serviceaccount:shop:default",
            Some("web-1"),
            "https://kubernetes.default.svc",
        ));
        assert!(audience.unwrap_err().contains("audience"));
        let person = identity(&review("alice", Some("web-1"), TOKEN_AUDIENCE));
        assert!(person.unwrap_err().contains("not a service account"));
        let rejected = identity(&TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..Default::default()
        });
        assert!(rejected.unwrap_err().contains("token has expired"));
    }

    #[test]
    fn plugin_states_map_to_acks() {
        let state = PluginState {
            plugin: "auth".into(),
            assigned_revision: "abc".into(),
            serving_revision: String::new(),
            state: State::Failed as i32,
            reason: "digest mismatch".into(),
            since_unix_ms: 1_000,
            workers: 4,
            workers_loaded: 3,
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let r = report(&state, now).unwrap();
        assert_eq!(
            (r.assigned.as_deref(), r.serving, r.state),
            (Some("abc"), None, AckState::Failed)
        );
        assert_eq!((r.workers, r.workers_loaded), (4, 3));
        assert_eq!(r.reason.as_deref(), Some("digest mismatch"));
        assert_eq!(r.since, now, "the operator's clock, not the sidecar's");
    }

    /// A TokenReview that vouches for pod shop/web-1 (uid-1) when the token is "good".
    fn reviews() -> Client {
        crate::listener::testing::fake_api(|_, path, body| {
            assert!(path.ends_with("/tokenreviews"), "{path}");
            let review: serde_json::Value = serde_json::from_slice(body).unwrap();
            let good = review["spec"]["token"] == "good";
            (
                201,
                serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": review["spec"],
                    "status": {"authenticated": good, "audiences": [TOKEN_AUDIENCE],
                        "user": {"username": "system:serviceaccount:shop:default",
                            "extra": {"authentication.kubernetes.io/pod-name": ["web-1"],
                                      "authentication.kubernetes.io/pod-uid": ["uid-1"]}}},
                }),
            )
        })
    }

    fn test_limits() -> ChannelLimits {
        let mut limits = ChannelLimits::new(16, 16);
        limits.keepalive_interval = Duration::from_millis(200);
        limits.keepalive_timeout = Duration::from_secs(1);
        limits.connections.idle_timeout = Duration::from_millis(300);
        limits
    }

    /// A leading channel server on loopback: its address, registry and CA.
    async fn channel_server(
        limits: ChannelLimits,
    ) -> (std::net::SocketAddr, Arc<Registry>, String) {
        let (addr, registry, _, ca) = channel_server_with_store(limits).await;
        (addr, registry, ca)
    }

    /// [`channel_server`], with the health store its streams record into.
    async fn channel_server_with_store(
        limits: ChannelLimits,
    ) -> (
        std::net::SocketAddr,
        Arc<Registry>,
        Arc<HealthStore>,
        String,
    ) {
        let (certs, ca) = crate::listener::testing::served();
        let registry = Arc::new(Registry::default());
        let health = Arc::new(Health::default());
        health.set_synced();
        health.set_leading(true);
        let store = Arc::new(HealthStore::new());
        let service = ChannelService::new(
            reviews(),
            registry.clone(),
            health,
            Arc::new(Metrics::default()),
            store.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { serve(listener, service, &certs, limits).await });
        (addr, registry, store, ca)
    }

    type Client_ = hotload_channel::proto::plugin_channel_client::PluginChannelClient<
        tonic::transport::Channel,
    >;

    async fn dial(addr: std::net::SocketAddr, ca: &str) -> Client_ {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name(crate::listener::testing::HOST);
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client_::new(channel)
    }

    fn hello(plugins: Vec<PluginState>) -> SidecarMessage {
        SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(
                hotload_channel::proto::Hello {
                    namespace: "shop".into(),
                    pod: "web-1".into(),
                    plugins,
                },
            )),
        }
    }

    /// Attaches as web-1 with `token`, sending `first`; the sender keeps the stream open.
    async fn attach_with(
        client: &mut Client_,
        token: &str,
        first: SidecarMessage,
    ) -> (
        Result<Response<Streaming<OperatorMessage>>, Status>,
        tokio::sync::mpsc::Sender<SidecarMessage>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(first).await.unwrap();
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        hotload_channel::authorize(&mut request, token).unwrap();
        (client.attach(request).await, tx)
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 5 s");
    }

    #[tokio::test]
    async fn a_sidecar_message_larger_than_the_limit_is_refused() {
        let (addr, registry, ca) = channel_server(test_limits()).await;
        let mut client = dial(addr, &ca).await;
        let huge = PluginState {
            plugin: "auth".into(),
            reason: "x".repeat(MAX_SIDECAR_MESSAGE_BYTES),
            ..Default::default()
        };
        let (attached, _tx) = attach_with(&mut client, "good", hello(vec![huge])).await;
        let status = attached.unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert_eq!(registry.connected(), 0);
        let fits = PluginState {
            plugin: "auth".into(),
            reason: "x".repeat(MAX_SIDECAR_MESSAGE_BYTES / 2),
            ..Default::default()
        };
        let (attached, _tx) = attach_with(&mut client, "good", hello(vec![fits])).await;
        assert!(attached.is_ok(), "a message under the limit is taken");
        let kept = registry
            .view("shop", "web-1", "uid-1", "auth")
            .report
            .unwrap();
        assert!(kept.reason.unwrap().len() <= registry::MAX_REASON_BYTES);
    }

    #[tokio::test]
    async fn a_dead_peers_stream_ends_by_keepalive_and_its_pod_is_disconnected() {
        let (addr, registry, ca) = channel_server(test_limits()).await;
        let (proxy, cut, _) = black_hole_proxy(addr).await;
        let mut client = dial(proxy, &ca).await;
        let (attached, _tx) = attach_with(&mut client, "good", hello(Vec::new())).await;
        let _stream = attached.unwrap();
        assert_eq!(registry.connected(), 1);
        // Longer than the idle timeout: an attached sidecar keeps its connection.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            registry.connected(),
            1,
            "kept while attached and answering pings"
        );
        cut.store(true, std::sync::atomic::Ordering::SeqCst);
        eventually("the dead peer's stream ended", || registry.connected() == 0).await;
    }

    #[tokio::test]
    async fn a_refused_token_leaves_the_connection_to_be_closed_as_idle() {
        let (addr, registry, ca) = channel_server(test_limits()).await;
        let (proxy, _, open) = black_hole_proxy(addr).await;
        let mut client = dial(proxy, &ca).await;
        let (attached, _tx) = attach_with(&mut client, "bad", hello(Vec::new())).await;
        assert_eq!(attached.unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(registry.connected(), 0);
        assert_eq!(open.load(std::sync::atomic::Ordering::SeqCst), 1);
        eventually("the unused connection closed", || {
            open.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await;
    }

    /// A TCP proxy to `to` that, once cut, swallows every byte both ways without closing
    /// anything: a node that died. Also returns how many connections the server still
    /// holds open through it.
    async fn black_hole_proxy(
        to: std::net::SocketAddr,
    ) -> (
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cutting = cut.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opened = open.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(to).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                opened.fetch_add(1, SeqCst);
                let closed = opened.clone();
                let cut = cutting.clone();
                let up = tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        if !cut.load(SeqCst) && server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let cut = cutting.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if !cut.load(SeqCst) && client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // The server closed its side.
                    closed.fetch_sub(1, SeqCst);
                    up.abort();
                });
            }
        });
        (addr, cut, open)
    }

    fn who() -> PodIdentity {
        PodIdentity {
            namespace: "shop".into(),
            pod: "web-1".into(),
            uid: "uid-1".into(),
        }
    }

    #[tokio::test]
    async fn an_admission_slot_is_taken_only_once_the_token_checks_out() {
        let gate = Gate::new();
        let passed = gate
            .pass(|| async {
                assert_eq!(
                    gate.admitting.available_permits(),
                    ADMITTING,
                    "no slot is taken while the token is being reviewed"
                );
                Ok(who())
            })
            .await;
        let (_, slot) = passed.unwrap();
        assert_eq!(gate.admitting.available_permits(), ADMITTING - 1);
        drop(slot);

        // With every slot taken, a bad token is still told it is bad (and takes nothing);
        // a good one is told to come back.
        let _all = gate.admitting.try_acquire_many(ADMITTING as u32).unwrap();
        let bad = gate
            .pass(|| async { Err(Status::unauthenticated("token has expired")) })
            .await;
        assert!(matches!(bad, Err(Refusal::Denied(s)) if s.code() == tonic::Code::Unauthenticated));
        let good = gate.pass(|| async { Ok(who()) }).await;
        assert!(matches!(good, Err(Refusal::Busy(s)) if s.code() == tonic::Code::Unavailable));
    }

    #[tokio::test]
    async fn an_attach_waiting_for_its_review_turn_holds_no_api_request() {
        let service = ChannelService {
            client: reviews(),
            registry: Arc::new(Registry::default()),
            health: Arc::new(Health::default()),
            metrics: Arc::new(Metrics::default()),
            plugin_health: Arc::new(HealthStore::new()),
            gate: Gate::new(),
        };
        // Every sidecar of a reconnect storm waits here at once, 10,000 of them after an
        // operator restart: what each holds meanwhile is paid 10,000 times.
        let waiting = service.gate.pass(|| service.review("good".into()));
        let held = std::mem::size_of_val(&waiting);
        assert!(
            held <= 512,
            "a waiting attach holds {held} bytes: the review's request is made before its turn"
        );
        let (who, _slot) = waiting.await.unwrap();
        assert_eq!(
            who.pod, "web-1",
            "the review still runs once its turn comes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_review_that_hangs_is_given_up() {
        let gate = Gate::new();
        let hung = gate.pass(std::future::pending).await;
        assert!(
            matches!(&hung, Err(Refusal::Denied(s)) if s.code() == tonic::Code::Unavailable
                && s.message().contains("took longer than 10s")),
            "{hung:?}"
        );
        assert_eq!(
            gate.reviews.available_permits(),
            REVIEWS_IN_FLIGHT,
            "its turn is given back"
        );
    }

    #[test]
    fn a_hello_keeps_at_most_its_share_of_plugins_and_refuses_overlong_names() {
        let state = |plugin: String, revision: &str| PluginState {
            plugin,
            assigned_revision: revision.into(),
            ..Default::default()
        };
        let many: Vec<PluginState> = (0..200).map(|i| state(format!("p{i}"), "r1")).collect();
        assert_eq!(
            held(&who(), &many, Timestamp::UNIX_EPOCH).len(),
            registry::MAX_PLUGINS_PER_POD
        );
        let odd = vec![
            state("a".repeat(64), "r1"),
            state("auth".into(), &"r".repeat(65)),
            state(String::new(), "r1"),
            state("geo".into(), "r1"),
        ];
        let kept = held(&who(), &odd, Timestamp::UNIX_EPOCH);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, "geo");
        let why = report(
            &state("auth".into(), &"r".repeat(65)),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(
            why,
            "plugin auth: revision of 65 bytes (at most 64 allowed)"
        );
    }

    fn revision_health(plugin: &str, revision: &str, calls: u64, trap: u64) -> RevisionHealth {
        let mut latency_us = vec![0; hotload_protocol::health::LATENCY_BUCKETS];
        latency_us[8] = calls;
        RevisionHealth {
            plugin: plugin.into(),
            revision: revision.into(),
            calls,
            trap,
            latency_us,
            ..Default::default()
        }
    }

    fn health_message(revisions: Vec<RevisionHealth>) -> SidecarMessage {
        SidecarMessage {
            kind: Some(sidecar_message::Kind::Health(HealthReport { revisions })),
        }
    }

    #[test]
    fn health_reports_are_checked_revision_by_revision() {
        let good = revision_health("auth", "r2", 10, 2);
        let counts = revision_counts(&good).unwrap();
        assert_eq!((counts.calls, counts.errors.trap), (10, 2));
        assert_eq!(counts.latency_us[8], 10);
        let lying = revision_health("auth", "r2", 1, 2);
        assert_eq!(
            revision_counts(&lying).unwrap_err(),
            "plugin auth revision r2: 2 failed calls of 1 calls"
        );
        let mut long = revision_health("auth", "r2", 1, 0);
        long.latency_us = vec![0; 21];
        assert!(revision_counts(&long).unwrap_err().contains("21 buckets"));
        let named = revision_health("auth", &"r".repeat(65), 1, 0);
        assert!(revision_counts(&named).unwrap_err().contains("65 bytes"));
        let unnamed = revision_health("", "r2", 1, 0);
        assert!(
            revision_counts(&unnamed)
                .unwrap_err()
                .contains("plugin name")
        );
        let no_revision = revision_health("auth", "", 1, 0);
        assert!(
            revision_counts(&no_revision)
                .unwrap_err()
                .contains("without a revision")
        );

        let mixed = HealthReport {
            revisions: vec![good.clone(), lying, named],
        };
        let (kept, refused) = health_counts(&mixed);
        assert_eq!((kept.len(), refused.len()), (1, 2));
        let too_many = HealthReport {
            revisions: vec![good; MAX_REVISIONS_PER_HEALTH + 1],
        };
        let (kept, refused) = health_counts(&too_many);
        assert!(kept.is_empty(), "a message over the limit is refused whole");
        assert!(
            refused[0].contains("65 revisions in one health report"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn health_over_the_channel_reaches_the_store_and_bad_reports_do_not() {
        let (addr, registry, store, ca) = channel_server_with_store(test_limits()).await;
        let mut client = dial(addr, &ca).await;
        let (attached, tx) = attach_with(&mut client, "good", hello(Vec::new())).await;
        let _stream = attached.unwrap();
        let started = Timestamp::now();
        let sample = || {
            let to = Timestamp::now() + jiff::SignedDuration::from_secs(2);
            store.sample(
                "shop",
                "auth",
                "r2",
                started - jiff::SignedDuration::from_secs(2),
                to,
            )
        };
        // A bad report (more failed calls than calls), then one with a bad revision beside a
        // good one, then a good one: the stream stays up and only the good ones count.
        tx.send(health_message(vec![revision_health("auth", "r2", 1, 5)]))
            .await
            .unwrap();
        tx.send(health_message(vec![
            revision_health("auth", &"r".repeat(65), 100, 0),
            revision_health("auth", "r2", 10, 1),
        ]))
        .await
        .unwrap();
        tx.send(health_message(vec![revision_health("auth", "r2", 30, 0)]))
            .await
            .unwrap();
        eventually("the good reports recorded", || sample().counts.calls == 40).await;
        let got = sample();
        assert_eq!(got.counts.errors.trap, 1);
        assert_eq!(got.counts.latency_us[8], 40);
        assert_eq!(got.pods, ["web-1"]);
        assert_eq!(registry.connected(), 1, "the stream stays up");
        // A state report still works on the same stream after them.
        tx.send(SidecarMessage {
            kind: Some(sidecar_message::Kind::State(PluginState {
                plugin: "auth".into(),
                assigned_revision: "r2".into(),
                serving_revision: "r2".into(),
                state: State::Loaded as i32,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        eventually("the state report taken", || {
            registry
                .view("shop", "web-1", "uid-1", "auth")
                .report
                .is_some_and(|r| r.state == AckState::Loaded)
        })
        .await;

        // A newer stream owns the pod now: the old stream's word is stale and not recorded.
        let (newer, newer_tx) = attach_with(&mut client, "good", hello(Vec::new())).await;
        let _newer = newer.unwrap();
        // (The old stream may be gone already: the newer one ended it.)
        let _ = tx
            .send(health_message(vec![revision_health("auth", "r2", 500, 0)]))
            .await;
        newer_tx
            .send(health_message(vec![revision_health("auth", "r2", 2, 0)]))
            .await
            .unwrap();
        eventually("the newer stream's report recorded", || {
            sample().counts.calls == 42
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            sample().counts.calls,
            42,
            "the stale stream's report is not"
        );
    }

    #[test]
    fn health_is_recorded_only_from_the_stream_that_owns_the_pod() {
        let registry = Arc::new(Registry::default());
        let store = Arc::new(HealthStore::new());
        let attached = |id| Attached {
            registry: registry.clone(),
            metrics: Arc::new(Metrics::default()),
            plugin_health: store.clone(),
            who: who(),
            id,
            warned_health: None,
            _in_use: None,
        };
        let (old_tx, _old_rx) = registry::outbox();
        let old = registry.connect("shop", "web-1", "uid-1", old_tx, Vec::new());
        let (new_tx, _new_rx) = registry::outbox();
        let new = registry.connect("shop", "web-1", "uid-1", new_tx, Vec::new());
        let mut stale = attached(old);
        let mut owner = attached(new);
        stale.heard(health_message(vec![revision_health("auth", "r2", 500, 0)]));
        owner.heard(health_message(vec![revision_health("auth", "r2", 7, 0)]));
        let now = Timestamp::now();
        let sample = store.sample(
            "shop",
            "auth",
            "r2",
            now - jiff::SignedDuration::from_secs(5),
            now + jiff::SignedDuration::from_secs(5),
        );
        assert_eq!(sample.counts.calls, 7);
        assert_eq!(sample.pods, ["web-1"]);
    }
}
