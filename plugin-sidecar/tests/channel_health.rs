//! The operator channel forwards the workers' health counts: a real tonic server over TLS
//! (a stand-in operator that records what it hears and assigns nothing) and the sidecar's
//! real channel client. Counts reported while the channel is down go out once it is up,
//! at most 64 revisions per message, and what was sent is not sent again.

mod support;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use hotload_channel::proto::plugin_channel_server::{PluginChannel, PluginChannelServer};
use hotload_channel::proto::{OperatorMessage, RevisionHealth, SidecarMessage, sidecar_message};
use hotload_sidecar::agent::{Agent, AgentSettings};
use hotload_sidecar::channel::{self, ChannelSettings};
use hotload_sidecar::fetch::oci::{OciPuller, PullSecrets};
use hotload_sidecar::fetch::{Fetcher, HttpLimits, RetryPolicy, https};
use hotload_sidecar::protocol::PluginHealth;
use hotload_sidecar::store::Store;
use support::TestPki;
use tokio::sync::mpsc;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const STEP: Duration = Duration::from_secs(10);

/// Records every message a sidecar sends; sends nothing back and keeps the stream open.
struct Operator {
    heard: mpsc::UnboundedSender<SidecarMessage>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<OperatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl PluginChannel for Operator {
    type AttachStream = Outbound;

    async fn attach(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let heard = self.heard.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let _ = heard.send(message);
            }
        });
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

fn agent(dir: &std::path::Path) -> std::sync::Arc<Agent> {
    let limits = HttpLimits::default();
    let fetcher = Fetcher::new(
        https::build_client(&limits, None).expect("client"),
        limits,
        RetryPolicy::default(),
        OciPuller::new(PullSecrets::default()),
    );
    let store = Store::open(dir).expect("store");
    Agent::new(store, fetcher, AgentSettings::default()).expect("agent")
}

fn report(revisions: impl IntoIterator<Item = (String, u64)>) -> Vec<PluginHealth> {
    revisions
        .into_iter()
        .map(|(revision, calls)| {
            serde_json::from_value(serde_json::json!({
                "plugin": "auth", "revision": revision, "calls": calls,
                "errors": {"trap": 1}, "latency_us": [0, calls],
            }))
            .expect("a report entry")
        })
        .collect()
}

/// The next `Health` the operator hears (skipping Hello and plugin states).
async fn next_health(heard: &mut mpsc::UnboundedReceiver<SidecarMessage>) -> Vec<RevisionHealth> {
    loop {
        let message = tokio::time::timeout(STEP, heard.recv())
            .await
            .expect("the sidecar sends in time")
            .expect("the operator is running");
        if let Some(sidecar_message::Kind::Health(health)) = message.kind {
            return health.revisions;
        }
    }
}

#[tokio::test]
async fn health_counted_while_the_channel_is_down_goes_out_after_it_connects() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "a-pod-token").expect("token");
    let agent = agent(&dir.path().join("state"));
    // A port nothing listens on yet: the operator is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let settings = ChannelSettings {
        endpoint: format!("https://{addr}"),
        ca_pem: pki.ca_pem.clone().into_bytes(),
        server_name: Some("localhost".into()),
        token_file: token,
        namespace: "shop".into(),
        pod: "checkout-0".into(),
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
    };
    tokio::spawn(channel::run(agent.clone(), settings));
    // Let the channel start (and fail to connect) before the workers report.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let revisions = (0..70).map(|i| (format!("r{i:03}"), 2));
    agent
        .telemetry()
        .report(&report(revisions))
        .expect("a valid report");

    let (heard, mut hearing) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the operator");
    let tls =
        ServerTlsConfig::new().identity(Identity::from_pem(pki.leaf_pem(), pki.leaf_key_pem()));
    let service = PluginChannelServer::new(Operator { heard });
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = Server::builder()
        .tls_config(tls)
        .expect("TLS")
        .serve_with_incoming(service, incoming);
    tokio::spawn(server);

    let first = next_health(&mut hearing).await;
    let second = next_health(&mut hearing).await;
    assert_eq!(
        (first.len(), second.len()),
        (64, 6),
        "split at 64 revisions"
    );
    let all: Vec<_> = first.iter().chain(&second).collect();
    let mut names: Vec<&str> = all.iter().map(|r| r.revision.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 70, "every revision once");
    assert!(
        all.iter()
            .all(|r| r.plugin == "auth" && r.calls == 2 && r.trap == 1 && r.latency_us == [0, 2]),
        "{all:?}"
    );

    // Sent counts are cleared: the next message carries only what was reported since.
    agent
        .telemetry()
        .report(&report([("r000".to_string(), 5)]))
        .expect("a valid report");
    let next = next_health(&mut hearing).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!((next[0].revision.as_str(), next[0].calls), ("r000", 5));
}
