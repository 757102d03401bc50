//! Pre-fork mode through the real binary: `hotload-demo-app --workers 3` (a supervisor and
//! three worker processes on one port) against the sidecar agent on its real Unix socket.
//! Every worker is its own sidecar worker (protocol v2), answers the revision the pod loaded,
//! is restarted when it dies, and drains when the supervisor is told to stop.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hotload_demo_app::http::{REVISION_HEADER, WORKER_HEADER};
use hotload_sidecar::agent::Agent;
use hotload_sidecar::assignment::AssignOutcome;
use hotload_sidecar::digest::Sha256Digest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_hotload-demo-app");

/// The app's process (the supervisor in pre-fork mode) and its HTTP address.
struct App {
    child: Child,
    addr: SocketAddr,
}

/// Starts the binary with `args` and waits for its first `listening on <addr>` line; the
/// rest of its stdout (the workers' lines) is drained so no worker writes to a closed pipe.
async fn spawn_app(socket: &Path, args: &[&str]) -> App {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--socket"])
        .arg(socket)
        .args(args)
        .env_remove("DEMO_WORKERS")
        .env_remove("HOTLOAD_WORKER_ID")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start hotload-demo-app");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the app prints its address in time")
        .expect("read stdout")
        .expect("the app is running");
    let addr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    App { child, addr }
}

/// What one response said.
#[derive(Debug)]
struct Answer {
    status: u16,
    worker: String,
    revision: Option<String>,
    tag: Option<String>,
}

/// A client that opens a new connection per request, so SO_REUSEPORT spreads them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn post(client: &reqwest::Client, addr: SocketAddr, body: &str) -> Answer {
    let resp = send(client, addr, body)
        .await
        .unwrap_or_else(|e| panic!("POST {addr}: {e}"));
    answer(resp).await
}

async fn send(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("http://{addr}/"))
        .body(body.to_string())
        .send()
        .await
}

async fn answer(resp: reqwest::Response) -> Answer {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, worker, revision) = (
        resp.status().as_u16(),
        header(WORKER_HEADER),
        header(REVISION_HEADER),
    );
    let out = resp.bytes().await.expect("response body");
    Answer {
        status,
        worker: worker.expect("every response names its worker"),
        revision,
        tag: tag_of(&out).map(|(t, _)| t),
    }
}

/// Sends requests until `n` distinct workers have answered; returns every answer. Fails
/// after 30 s. A request that finds no listener (workers still starting) or is reset (it
/// waited in a killed worker's queue: SO_REUSEPORT gives each worker its own) is sent
/// again; every answer that comes is returned for the caller to check.
async fn until_workers(addr: SocketAddr, n: usize, what: &str) -> Vec<Answer> {
    let (client, started) = (client(), Instant::now());
    let mut answers: Vec<Answer> = Vec::new();
    loop {
        let seen: BTreeSet<&str> = answers.iter().map(|a| a.worker.as_str()).collect();
        if seen.len() >= n {
            return answers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: only workers {seen:?} answered"
        );
        match send(&client, addr, &format!("req{}", answers.len())).await {
            Ok(resp) => answers.push(answer(resp).await),
            Err(e) if e.is_connect() || e.is_request() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("POST {addr}: {e}"),
        }
    }
}

/// The worker names the sidecar's `/status` shows (its JSON, read generically).
fn sidecar_workers(agent: &Agent) -> BTreeSet<String> {
    let status = serde_json::to_value(agent.status()).expect("status serializes");
    status["app"]["workers"]
        .as_object()
        .map(|ws| {
            ws.values()
                .filter_map(|w| w["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The sidecar's `/status` line for the handler plugin: `r2 loaded by 3/3 workers`.
fn pod_line(agent: &Agent) -> Option<String> {
    let status = serde_json::to_value(agent.status()).expect("status serializes");
    status["workers"]["handler"].as_str().map(str::to_string)
}

async fn until_sidecar_sees(agent: &Agent, workers: &BTreeSet<String>) {
    let started = Instant::now();
    while &sidecar_workers(agent) != workers {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sidecar shows workers {:?}, expected {workers:?}",
            sidecar_workers(agent)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads `revision` and checks that every one of `workers` then answers it, with `tag`.
async fn load_everywhere(
    sidecar: &Sidecar,
    app: &App,
    workers: &BTreeSet<String>,
    (revision, digest, tag): (&str, &Sha256Digest, &str),
) {
    let out = assign_to(&sidecar.agent, revision, digest, serde_json::Value::Null).await;
    assert!(
        matches!(out, AssignOutcome::Loaded { .. }),
        "{revision}: {out:?}"
    );
    // Loaded means loaded by every worker: from now on no answer may be older.
    for a in until_workers(app.addr, workers.len(), revision).await {
        assert!(workers.contains(&a.worker), "unknown worker {a:?}");
        assert_eq!(
            (a.status, a.revision.as_deref()),
            (200, Some(revision)),
            "{a:?}"
        );
        assert_eq!(a.tag.as_deref(), Some(tag), "{a:?}");
    }
}

fn pid(worker: &str) -> Pid {
    Pid::from_raw(worker.parse().expect("pre-fork worker ids are pids"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_each_load_every_revision_and_a_dead_one_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = start_sidecar(dir.path());
    let cache = dir.path().join("cwasm").display().to_string();
    let mut app = spawn_app(&sidecar.socket, &["--workers", "3", "--cache-dir", &cache]).await;
    let supervisor = app.child.id().expect("supervisor pid").to_string();

    let answers = until_workers(app.addr, 3, "start-up").await;
    let workers: BTreeSet<String> = answers.into_iter().map(|a| a.worker).collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
    assert!(
        !workers.contains(&supervisor),
        "the supervisor does not serve"
    );
    until_sidecar_sees(&sidecar.agent, &workers).await;

    let v1 = seed(&sidecar.state_dir, &wat::parse_str(V1_WAT).expect("v1"));
    load_everywhere(&sidecar, &app, &workers, ("r1", &v1, "v01")).await;
    let v2 = seed(&sidecar.state_dir, &wat::parse_str(V2_WAT).expect("v2"));
    load_everywhere(&sidecar, &app, &workers, ("r2", &v2, "v02")).await;

    // A worker dies: the supervisor starts a new one (a new pid, a new sidecar worker),
    // which gets the pod's set from the sidecar at once.
    let dead = workers.iter().next().expect("a worker").clone();
    kill(pid(&dead), Signal::SIGKILL).expect("kill a worker");
    let started = Instant::now();
    let workers = loop {
        let now = sidecar_workers(&sidecar.agent);
        if now.len() == 3 && !now.contains(&dead) {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replacement: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = Instant::now();
    while pod_line(&sidecar.agent).as_deref() != Some("r2 loaded by 3/3 workers") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replacement never loaded r2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in until_workers(app.addr, 3, "after the restart").await {
        assert!(workers.contains(&a.worker), "a dead worker answered: {a:?}");
        assert_eq!((a.status, a.tag.as_deref()), (200, Some("v02")), "{a:?}");
    }

    // SIGTERM to the supervisor: forwarded, every worker drains and exits, then it does.
    kill(pid(&supervisor), Signal::SIGTERM).expect("signal the supervisor");
    let status = tokio::time::timeout(Duration::from_secs(20), app.child.wait())
        .await
        .expect("the supervisor exits after its workers")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    for w in &workers {
        assert!(
            kill(pid(w), None).is_err(),
            "worker {w} outlived its supervisor"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_is_bounded_even_with_a_stream_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = start_sidecar(dir.path());
    let mut app = spawn_app(
        &sidecar.socket,
        &["--workers", "2", "--drain-timeout-ms", "500"],
    )
    .await;
    let workers: BTreeSet<String> = until_workers(app.addr, 2, "start-up")
        .await
        .into_iter()
        .map(|a| a.worker)
        .collect();
    // A long-lived response that would hold an unbounded drain forever.
    let stream = reqwest::get(format!("http://{}/stream", app.addr))
        .await
        .expect("stream opens");
    let t = Instant::now();
    kill(
        pid(&app.child.id().expect("pid").to_string()),
        Signal::SIGTERM,
    )
    .expect("signal");
    let status = tokio::time::timeout(Duration::from_secs(10), app.child.wait())
        .await
        .expect("the drain is bounded")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "the workers drained: {:?}",
        t.elapsed()
    );
    for w in &workers {
        assert!(
            kill(pid(w), None).is_err(),
            "worker {w} outlived its supervisor"
        );
    }
    drop(stream);
}

#[tokio::test]
async fn one_worker_is_one_process_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = start_sidecar(dir.path());
    let app = spawn_app(&sidecar.socket, &[]).await;
    let own = app.child.id().expect("pid").to_string();
    let a = post(&client(), app.addr, "x").await;
    assert_eq!(a.worker, own, "the process itself serves");
    until_sidecar_sees(&sidecar.agent, &BTreeSet::from([own])).await;
}
