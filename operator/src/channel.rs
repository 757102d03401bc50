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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use hotload_channel::TOKEN_AUDIENCE;
use hotload_channel::proto::plugin_channel_server::{PluginChannel, PluginChannelServer};
use hotload_channel::proto::{
    Assign, Credentials, OperatorMessage, PluginState, SidecarMessage, State, Synced,
    operator_message, sidecar_message,
};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::Health;
use crate::api::AckState;
use crate::metrics::Metrics;
use crate::registry::{self, Directive, Outgoing, PluginReport, Registry};

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

/// Attaches being admitted at once (token review and Hello). More are refused with
/// `UNAVAILABLE` and retried by the sidecar after its jittered back-off, so a reconnect
/// storm of 10,000 sidecars costs the memory of 512 pending streams, not of 10,000.
const ADMITTING: usize = 512;

/// How long a sidecar has to send Hello once its token is accepted.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service.
pub struct ChannelService {
    client: Client,
    registry: Arc<Registry>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    reviews: Semaphore,
    admitting: Semaphore,
}

impl ChannelService {
    /// A service that checks tokens with `client` and records sidecars in `registry`.
    pub fn new(
        client: Client,
        registry: Arc<Registry>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> PluginChannelServer<Self> {
        PluginChannelServer::new(Self {
            client,
            registry,
            health,
            metrics,
            reviews: Semaphore::new(REVIEWS_IN_FLIGHT),
            admitting: Semaphore::new(ADMITTING),
        })
    }

    async fn review(&self, token: &str) -> Result<PodIdentity, Status> {
        let _permit = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
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
        let counted = |outcome: &str| self.metrics.attached(outcome);
        let Ok(_admitting) = self.admitting.try_acquire() else {
            counted("busy");
            return Err(Status::unavailable(format!(
                "{ADMITTING} sidecars are being admitted; retry after a back-off"
            )));
        };
        let attached = self.admit(request).await;
        counted(if attached.is_ok() {
            "accepted"
        } else {
            "refused"
        });
        attached
    }
}

impl ChannelService {
    /// Checks the token and Hello, registers the sidecar and returns its directive stream.
    async fn admit(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        if !self.health.ready() {
            return Err(Status::unavailable(
                "this operator replica is not the leader (or is still syncing)",
            ));
        }
        let token = hotload_channel::bearer_token(request.metadata())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no bearer token: the sidecar must send its projected token",
                )
            })?
            .to_string();
        let who = self.review(&token).await?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {}s of attaching",
                    HELLO_TIMEOUT.as_secs()
                ))
            })??;
        let hello = match first {
            Some(SidecarMessage {
                kind: Some(sidecar_message::Kind::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.namespace != who.namespace || hello.pod != who.pod {
            return Err(Status::permission_denied(format!(
                "token belongs to pod {}/{}, but the sidecar claims {}/{}",
                who.namespace, who.pod, hello.namespace, hello.pod
            )));
        }
        let (tx, rx) = registry::outbox();
        let now = Timestamp::now();
        let holds = hello
            .plugins
            .iter()
            .map(|state| (state.plugin.clone(), report(state, now)))
            .collect();
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
                who,
                id,
            },
        })))
    }
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
    who: PodIdentity,
    id: u64,
}

impl Attached {
    fn heard(&self, message: SidecarMessage) {
        let Some(sidecar_message::Kind::State(state)) = message.kind else {
            return;
        };
        let report = report(&state, Timestamp::now());
        self.metrics.acked(report.state, report.reason.as_deref());
        let PodIdentity { namespace, pod, .. } = &self.who;
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

/// The longest failure reason kept from a sidecar: it is copied into the release's status
/// (message, conditions, history, the pod list), which must stay far below etcd's limit.
const MAX_REASON_BYTES: usize = 512;

/// A sidecar's PluginState as the registry keeps it, received at `now` (the operator's
/// clock; the sidecar's `since` is for people reading its own status).
pub fn report(state: &PluginState, now: Timestamp) -> PluginReport {
    let revision = |r: &str| (!r.is_empty()).then(|| r.to_string());
    PluginReport {
        assigned: revision(&state.assigned_revision),
        serving: revision(&state.serving_revision),
        state: match state.state() {
            State::Loading => AckState::Loading,
            State::Loaded => AckState::Loaded,
            State::Failed => AckState::Failed,
            State::Pending | State::Unspecified => AckState::Pending,
        },
        reason: (!state.reason.is_empty()).then(|| cut(&state.reason, MAX_REASON_BYTES)),
        since: now,
        workers: state.workers,
        workers_loaded: state.workers_loaded,
    }
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
        let r = report(&state, now);
        assert_eq!(
            (r.assigned.as_deref(), r.serving, r.state),
            (Some("abc"), None, AckState::Failed)
        );
        assert_eq!((r.workers, r.workers_loaded), (4, 3));
        assert_eq!(r.reason.as_deref(), Some("digest mismatch"));
        assert_eq!(r.since, now, "the operator's clock, not the sidecar's");
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let state = PluginState {
            plugin: "auth".into(),
            reason: "é".repeat(1_000),
            ..Default::default()
        };
        let reason = report(&state, Timestamp::UNIX_EPOCH).reason.unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(reason.ends_with("é…"), "{reason}");
        assert_eq!(cut("short", MAX_REASON_BYTES), "short");
    }
}
