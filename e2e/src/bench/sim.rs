//! Simulated sidecars: one process holds one channel stream per pod, speaking the real gRPC
//! protocol (hotload-channel) over TLS, each with that pod's own audience-bound token
//! (TokenRequest), so the operator does exactly what it does for real sidecars: a
//! TokenReview per stream, one Assign per pod, one state report per answer.
//!
//! Why simulated: a real sidecar is a process next to an application process. 1,000 or
//! 10,000 such pairs (tens of GiB, hundreds of thousands of threads and file descriptors)
//! do not fit on a 2-core machine, and what this benchmark measures is the operator and the
//! API server, not the data plane (`bench swap` measures that with real processes). The
//! simulated sidecar answers at once: Loaded, or Failed when the artifact URL contains
//! `broken`. With a [`HealthSwitch`] it also sends a Health report once a second while the
//! switch is on, as a sidecar does while its app serves calls ([`health_report`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use futures::StreamExt;
use hotload_channel::proto::plugin_channel_client::PluginChannelClient;
use hotload_channel::proto::{
    Health, Hello, OperatorMessage, PluginState, RevisionHealth, SidecarMessage, State,
    operator_message, sidecar_message,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// One answer a simulated sidecar gave.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The pod.
    pub pod: usize,
    /// The revision it was assigned.
    pub revision: String,
    /// Whether it loaded.
    pub loaded: bool,
    /// When the answer was sent.
    pub at: Instant,
}

/// Where the operator's channel is and how to trust it.
#[derive(Clone)]
pub struct Endpoint {
    /// `https://<ip>:8443`.
    pub url: String,
    /// The operator's CA (PEM).
    pub ca_pem: String,
    /// The name in the operator's certificate.
    pub server_name: String,
}

/// A token for `pod`, bound to it, for the channel's audience (what the kubelet projects).
pub async fn pod_token(client: &Client, pod: &Pod) -> Result<String> {
    pod_token_for(client, pod, hotload_channel::TOKEN_AUDIENCE).await
}

/// A token for `pod`, bound to it, for `audience`.
pub async fn pod_token_for(client: &Client, pod: &Pod, audience: &str) -> Result<String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": {
        "audiences": [audience],
        "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                           "name": pod.metadata.name, "uid": pod.metadata.uid},
    }}))?;
    let issued = accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("token for pod {namespace}/{:?}", pod.metadata.name))?;
    issued
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("TokenRequest returned no token")
}

/// Turns the simulated sidecars' health reports on and off, all at once.
pub type HealthSwitch = Arc<AtomicBool>;

/// The plugin the simulated health reports are about.
pub const HEALTH_PLUGIN: &str = "handler";

/// Opens one stream per pod (`pods`: name and token), `per_connection` streams sharing a
/// TLS connection; every answer is sent to `answers`. The sidecars dial at once, as a fleet
/// does when the operator starts, and each retries a refused attach (as the real one does).
/// With `health`, each also sends a [`health_report`] once a second while it is on (its
/// second starts at an offset of its own, as real sidecars' do).
pub async fn attach_all(
    endpoint: &Endpoint,
    namespace: &str,
    pods: Vec<(String, String)>,
    per_connection: usize,
    answers: mpsc::UnboundedSender<Answer>,
    health: Option<HealthSwitch>,
) -> Result<()> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&endpoint.ca_pem))
        .domain_name(endpoint.server_name.clone());
    let mut channel = None;
    for (index, (pod, token)) in pods.into_iter().enumerate() {
        if index % per_connection.max(1) == 0 {
            channel = Some(
                Channel::from_shared(endpoint.url.clone())?
                    .tls_config(tls.clone())?
                    .connect_lazy(),
            );
        }
        let client = PluginChannelClient::new(channel.clone().context("a channel")?)
            .max_decoding_message_size(4 << 20);
        tokio::spawn(sidecar(
            client,
            index,
            namespace.to_string(),
            pod,
            token,
            answers.clone(),
            health.clone(),
        ));
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// Attach tries per simulated sidecar: the operator sheds a connect storm beyond what it is
/// admitting (`UNAVAILABLE`), and the sidecar comes back after a back-off (≤ 2 s, ~70 s in
/// all), as the real one does.
const ATTACH_ATTEMPTS: u64 = 40;

/// Opens a channel stream for `pod` as its sidecar does: sends Hello, with the pod's bearer
/// `token` (`None` sends none). Returns the sender for state reports and the replies.
pub async fn attach(
    client: &mut PluginChannelClient<Channel>,
    namespace: &str,
    pod: &str,
    token: Option<&str>,
) -> Result<(mpsc::Sender<SidecarMessage>, Streaming<OperatorMessage>), Status> {
    let (tx, rx) = mpsc::channel(8);
    let hello = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(Hello {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            plugins: Vec::new(),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| Status::internal("the request stream closed"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        hotload_channel::authorize(&mut request, token)
            .map_err(|_| Status::invalid_argument("the token is not a header value"))?;
    }
    Ok((tx, client.attach(request).await?.into_inner()))
}

/// What a simulated sidecar reports in its `tick`th second: two revisions of
/// [`HEALTH_PLUGIN`] (the stable `r1` and the target `r2`, as during a canary step), a few
/// hundred calls between them, every latency bucket touched, about 1% trapped.
pub fn health_report(index: usize, tick: u64) -> SidecarMessage {
    let revision = |revision: &str, calls: u64| {
        let buckets = hotload_protocol::health::LATENCY_BUCKETS as u64;
        let mut latency_us = vec![calls / buckets; buckets as usize];
        // The rest around 1 ms, where most calls of a small plugin land.
        latency_us[6] += calls % buckets;
        RevisionHealth {
            plugin: HEALTH_PLUGIN.into(),
            revision: revision.into(),
            calls,
            trap: calls / 100,
            latency_us,
            ..Default::default()
        }
    };
    let wobble = (index as u64).wrapping_add(tick) % 100;
    SidecarMessage {
        kind: Some(sidecar_message::Kind::Health(Health {
            revisions: vec![revision("r1", 200 + wobble), revision("r2", 100 + wobble)],
        })),
    }
}

/// Sends [`health_report`]s on `tx` once a second while `switch` is on, until the stream
/// ends.
async fn report_health(tx: mpsc::Sender<SidecarMessage>, index: usize, switch: HealthSwitch) {
    // Each sidecar's second starts when it does: spread them over the second.
    tokio::time::sleep(Duration::from_millis((index as u64 * 7919) % 1000)).await;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u64;
    loop {
        every.tick().await;
        if tx.is_closed() {
            return;
        }
        if !switch.load(Ordering::Relaxed) {
            continue;
        }
        tick += 1;
        if tx.send(health_report(index, tick)).await.is_err() {
            return;
        }
    }
}

async fn sidecar(
    mut client: PluginChannelClient<Channel>,
    index: usize,
    namespace: String,
    pod: String,
    token: String,
    answers: mpsc::UnboundedSender<Answer>,
    health: Option<HealthSwitch>,
) {
    let mut attempts = 0;
    let (tx, mut replies) = loop {
        match attach(&mut client, &namespace, &pod, Some(&token)).await {
            Ok(attached) => break attached,
            Err(status) if attempts < ATTACH_ATTEMPTS => {
                attempts += 1;
                tracing::debug!(%pod, %status, "simulated sidecar refused; retrying");
                tokio::time::sleep(Duration::from_millis((200 * attempts).min(2_000))).await;
            }
            Err(status) => {
                tracing::warn!(%pod, %status, "simulated sidecar refused; giving up");
                return;
            }
        }
    };
    if let Some(switch) = health {
        tokio::spawn(report_health(tx.clone(), index, switch));
    }
    let mut serving = String::new();
    while let Some(Ok(OperatorMessage { kind })) = replies.next().await {
        // Synced says the set is complete; a simulated sidecar has no readiness to gate.
        let Some(operator_message::Kind::Assign(assign)) = kind else {
            continue;
        };
        let loaded = !assign.url.contains("broken");
        if loaded {
            serving.clone_from(&assign.revision);
        }
        let state = PluginState {
            plugin: assign.plugin.clone(),
            assigned_revision: assign.revision.clone(),
            serving_revision: serving.clone(),
            state: if loaded { State::Loaded } else { State::Failed } as i32,
            reason: if loaded {
                String::new()
            } else {
                "self-check failed: simulated".into()
            },
            since_unix_ms: now_ms(),
            workers: 1,
            workers_loaded: u32::from(loaded),
        };
        let at = Instant::now();
        if tx
            .send(SidecarMessage {
                kind: Some(sidecar_message::Kind::State(state)),
            })
            .await
            .is_err()
        {
            return;
        }
        let _ = answers.send(Answer {
            pod: index,
            revision: assign.revision,
            loaded,
            at,
        });
    }
}
