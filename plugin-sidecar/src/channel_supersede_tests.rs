//! The operator channel's worker against a real agent: a rollback never waits behind the
//! download of the revision it rolls back, and an assignment it cannot use is counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotload_channel::proto;
use tokio::sync::{mpsc, watch};

use super::{Attempt, Published, Reporter, worker};
use crate::agent::{Agent, AgentSettings};
use crate::digest::Sha256Digest;
use crate::fetch::oci::{OciPuller, PullSecrets};
use crate::fetch::{Fetcher, HttpLimits, RetryPolicy, https};
use crate::store::Store;

const CACHED: &[u8] = b"\0asm\x01\0\0\0 the revision to roll back to";

/// A TCP listener on 127.0.0.1 that accepts and never answers (a hung artifact host); says
/// on `accepted` when a connection arrived.
async fn hanging_host() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let (tell, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = tell.send(());
        }
    });
    (format!("https://{addr}"), accepted)
}

fn agent(store: &Store) -> Arc<Agent> {
    // The fetcher's own timeouts are long: only superseding can end the hung fetch early.
    let limits = HttpLimits::default();
    let fetcher = Fetcher::new(
        https::build_client(&limits, None).expect("client"),
        limits,
        RetryPolicy::default(),
        OciPuller::new(PullSecrets::default()),
    );
    let settings = AgentSettings {
        ack_timeout: Duration::from_millis(200),
        ..AgentSettings::default()
    };
    Agent::new(store.clone(), fetcher, settings).expect("agent")
}

fn assign(revision: &str, url: String, digest: &Sha256Digest) -> proto::Assign {
    proto::Assign {
        plugin: "auth".into(),
        revision: revision.into(),
        url,
        digest: digest.to_string(),
        ..Default::default()
    }
}

fn assigned(agent: &Agent) -> Option<String> {
    let state = agent.status().state;
    let record = state.plugins.get("auth")?.assigned.clone()?;
    Some(record.revision)
}

#[tokio::test]
async fn a_rollback_supersedes_the_hung_fetch_of_the_revision_it_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    // After the agent's start, whose garbage collection keeps only what its state retains.
    let agent = agent(&store);
    let cached = Sha256Digest::of(CACHED);
    let mut staging = store.stage().expect("stage");
    staging.write(CACHED).expect("write");
    store.commit(staging, &cached).expect("cache r1");
    let reporter = Arc::new(Reporter {
        agent: agent.clone(),
        attempts: Mutex::default(),
        published: watch::Sender::new(Published::new()),
    });
    let (work, queue) = mpsc::unbounded_channel();
    tokio::spawn(worker(reporter.clone(), queue));
    let (host, mut accepted) = hanging_host().await;

    let broken = Sha256Digest::of(b"the broken revision, never delivered");
    work.send(assign("r2", format!("{host}/r2.wasm"), &broken))
        .expect("send r2");
    tokio::time::timeout(Duration::from_secs(5), accepted.recv())
        .await
        .expect("r2's fetch reached the host");
    let started = tokio::time::Instant::now();
    work.send(assign("r1", format!("{host}/r1.wasm"), &cached))
        .expect("send r1");
    while assigned(&agent).as_deref() != Some("r1") {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the rollback to r1 waited behind r2's fetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // r1 ends (no app connected: it waits for one), and r2 is never reported as failed.
    while reporter
        .attempts
        .lock()
        .expect("attempts")
        .contains_key("auth")
    {
        assert!(started.elapsed() < Duration::from_secs(3), "r1 did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attempts = reporter.attempts.lock().expect("attempts").clone();
    assert!(
        !attempts
            .values()
            .any(|a| matches!(a, Attempt::Failed { .. } | Attempt::Retrying { .. })),
        "{attempts:?}"
    );
    let state = agent.status().state;
    assert!(
        !agent.keep(&state).contains(&broken),
        "r2 is no longer marked as being fetched"
    );
    let leftovers = std::fs::read_dir(dir.path().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(leftovers, 0, "no partial download left behind");
}

#[tokio::test]
async fn an_assignment_that_cannot_be_used_is_counted_as_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let agent = agent(&store);
    let reporter = Arc::new(Reporter {
        agent: agent.clone(),
        attempts: Mutex::default(),
        published: watch::Sender::new(Published::new()),
    });
    let (work, queue) = mpsc::unbounded_channel();
    tokio::spawn(worker(reporter.clone(), queue));
    let digest = Sha256Digest::of(CACHED);
    let mut bad = assign("r1", "https://files.example/a.wasm".into(), &digest);
    bad.config_json = "{".into();
    work.send(bad).expect("send");
    let line = "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"invalid\"} 1";
    let started = tokio::time::Instant::now();
    while !agent.telemetry().encode().lines().any(|l| l == line) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{line} missing in\n{}",
            agent.telemetry().encode()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
