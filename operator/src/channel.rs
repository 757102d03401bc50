//! The sidecar channel server. Each sidecar dials the operator (so new pods converge the
//! moment they start, and no pod needs ingress or RBAC) and proves which pod it is with an
//! audience-bound projected service-account token, which the operator checks with a
//! TokenReview. The token's pod is the only pod that stream may speak for.
//!
//! ```text
//!  sidecar ──Attach(Hello{ns,pod,plugins}, PluginState…)──▶ operator ──▶ Registry ──▶ controller
//!          ◀────────────── Assign{plugin, revision, …} ──────────── Registry::assign ◀─┘
//! ```

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use hotload_channel::TOKEN_AUDIENCE;
use hotload_channel::proto::plugin_channel_server::{PluginChannel, PluginChannelServer};
use hotload_channel::proto::{
    Assign, Credentials, OperatorMessage, PluginState, SidecarMessage, State, operator_message,
    sidecar_message,
};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::Health;
use crate::api::AckState;
use crate::metrics::{Metrics, label};
use crate::registry::{Directive, PluginReport, Registry};

/// The pod a verified token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
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
    let pod = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get("authentication.kubernetes.io/pod-name"))
        .and_then(|names| names.first())
        .ok_or("token is not bound to a pod (use a projected service-account token)")?;
    Ok(PodIdentity {
        namespace: namespace.to_string(),
        pod: pod.clone(),
    })
}

/// The gRPC service.
pub struct ChannelService {
    client: Client,
    registry: Arc<Registry>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    reviews: tokio::sync::Semaphore,
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
            reviews: tokio::sync::Semaphore::new(32),
        })
    }

    async fn review(&self, token: &str) -> Result<PodIdentity, Status> {
        // A fleet reconnecting at once (an operator restart) would otherwise open one API
        // server connection per sidecar; 32 reviews in flight keep up and keep it bounded.
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
        if !self.health.ready() {
            return Err(Status::unavailable(
                "this operator replica is not the leader (or is still syncing)",
            ));
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no bearer token: the sidecar must send its projected token",
                )
            })?
            .to_string();
        let who = self.review(&token).await?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
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
        let (tx, rx) = mpsc::channel::<Box<Directive>>(16);
        let id = self.registry.connect(&who.namespace, &who.pod, tx);
        self.metrics.set_connected(self.registry.connected());
        tracing::info!(namespace = %who.namespace, pod = %who.pod, "sidecar connected");
        for state in &hello.plugins {
            self.registry
                .report(&who.namespace, &who.pod, &state.plugin, report(state));
        }
        let (registry, metrics) = (self.registry.clone(), self.metrics.clone());
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(sidecar_message::Kind::State(state)) = message.kind {
                    let report = report(&state);
                    metrics
                        .acks
                        .get_or_create(&label(&format!("{:?}", report.state)))
                        .inc();
                    if report.state == AckState::Failed {
                        metrics.load_failed(report.reason.as_deref().unwrap_or("unknown"));
                    }
                    registry.report(&who.namespace, &who.pod, &state.plugin, report);
                }
            }
            registry.disconnect(&who.namespace, &who.pod, id);
            metrics.set_connected(registry.connected());
            tracing::info!(namespace = %who.namespace, pod = %who.pod, "sidecar disconnected");
        });
        let outbound = ReceiverStream::new(rx).map(|d| Ok(assign(*d)));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// A sidecar's PluginState as the registry keeps it.
pub fn report(state: &PluginState) -> PluginReport {
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
        reason: (!state.reason.is_empty()).then(|| state.reason.clone()),
        since: Timestamp::from_millisecond(state.since_unix_ms)
            .unwrap_or_else(|_| Timestamp::now()),
    }
}

fn assign(directive: Directive) -> OperatorMessage {
    OperatorMessage {
        kind: Some(operator_message::Kind::Assign(Assign {
            plugin: directive.plugin,
            revision: directive.revision.unwrap_or_default(),
            url: directive.url,
            digest: directive.digest,
            config_json: directive.config.map(|c| c.to_string()).unwrap_or_default(),
            credentials: directive.credentials.map(|c| Credentials {
                username: c.username,
                password: c.password,
            }),
            signature_public_key: directive.signature_key.unwrap_or_default(),
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
                    [(
                        "authentication.kubernetes.io/pod-name".to_string(),
                        vec![p.to_string()],
                    )]
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
                pod: "web-1".into()
            })
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
        };
        let r = report(&state);
        assert_eq!(
            (r.assigned.as_deref(), r.serving, r.state),
            (Some("abc"), None, AckState::Failed)
        );
        assert_eq!(r.reason.as_deref(), Some("digest mismatch"));
        assert_eq!(r.since, Timestamp::from_millisecond(1_000).unwrap());
    }
}
