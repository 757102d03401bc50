//! The real `hotload-sidecar` binary, a real HTTPS server and a test app on the real Unix
//! socket: load through the `load` command, readiness, garbage on the socket, and recovery
//! from sidecar and app restarts without a download.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hotload_sidecar::digest::Sha256Digest;
use serde_json::{Value, json};
use support::{ArtifactServer, TestPki};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_hotload-sidecar");
const STEP: Duration = Duration::from_secs(10);

struct Sidecar {
    child: Child,
    admin: String,
}

async fn start_sidecar(dir: &Path, ca: &Path) -> Sidecar {
    start_sidecar_acking_within(dir, ca, Duration::from_secs(10)).await
}

async fn start_sidecar_acking_within(dir: &Path, ca: &Path, ack_timeout: Duration) -> Sidecar {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--admin-addr",
            "127.0.0.1:0",
            "--require-assignment",
            "--attempts",
            "2",
            "--backoff-ms",
            "10",
        ])
        .args([
            "--ack-timeout-ms",
            &ack_timeout.as_millis().to_string(),
            "--read-timeout-ms",
            "2000",
            "--total-timeout-ms",
            "5000",
        ])
        .arg("--state-dir")
        .arg(dir)
        .arg("--ca-bundle")
        .arg(ca)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sidecar");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::time::timeout(STEP, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("sidecar announces itself in time")
        .expect("read stdout");
    let admin = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no admin= in {line:?}"))
        .to_string();
    Sidecar { child, admin }
}

impl Sidecar {
    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .expect("admin reachable");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    /// Polls `/ready` until it reports `want` (bounded).
    async fn wait_ready(&self, want: u16) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let (code, body) = self.get("/ready").await;
            if code == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/ready stayed {code} ({body}), want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics`, as lines.
    async fn metrics(&self) -> Vec<String> {
        let (code, text) = self.get("/metrics").await;
        assert_eq!(code, 200, "{text}");
        text.lines().map(str::to_string).collect()
    }

    /// Asserts that `/metrics` has every line of `want`.
    async fn assert_metrics(&self, want: &[&str]) {
        let have = self.metrics().await;
        for line in want {
            assert!(
                have.iter().any(|l| l == line),
                "{line} missing in\n{}",
                have.join("\n")
            );
        }
    }

    async fn crash(mut self) {
        self.child.kill().await.expect("SIGKILL sidecar");
    }
}

struct App {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl App {
    async fn connect(dir: &Path) -> App {
        let path = dir.join("app.sock");
        let deadline = tokio::time::Instant::now() + STEP;
        let stream = loop {
            match UnixStream::connect(&path).await {
                Ok(s) => break s,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "connect {}: {e}",
                    path.display()
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (rd, wr) = stream.into_split();
        App {
            rd: BufReader::new(rd),
            wr,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.expect("write to sidecar");
    }

    /// Connects as worker `name` of a v2 app.
    async fn worker(dir: &Path, name: &str) -> App {
        let mut app = App::connect(dir).await;
        app.send(json!({"type": "hello", "app": "test", "worker": name, "protocol": 2}))
            .await;
        app
    }

    async fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes()).await;
    }

    /// Whether the sidecar closed this connection within `within` (end of file, not just
    /// silence).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(within, self.rd.read_line(&mut line)).await,
            Ok(Ok(0))
        )
    }

    async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        let mut line = String::new();
        match tokio::time::timeout(within, self.rd.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) => None,
            Ok(Ok(_)) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")),
            ),
            Ok(Err(e)) => panic!("read from sidecar: {e}"),
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(STEP)
            .await
            .expect("a message from the sidecar")
    }

    /// Receives a `load`, checks the file is the verified artifact, answers `loaded`.
    async fn accept_load(&mut self, plugin: &str, bytes: &[u8]) -> Value {
        let msg = self.recv().await;
        assert_eq!(msg["type"], "load", "{msg}");
        assert_eq!(msg["plugin"], plugin);
        let path = PathBuf::from(msg["path"].as_str().expect("path"));
        assert_eq!(std::fs::read(&path).expect("artifact on disk"), bytes);
        assert_eq!(msg["digest"], Sha256Digest::of(bytes).to_string());
        self.send(json!({"type": "loaded", "plugin": plugin, "revision": msg["revision"], "health": "self-check passed"}))
            .await;
        msg
    }
}

fn load_cmd(
    dir: &Path,
    plugin: &str,
    artifact: &str,
    digest: &str,
) -> tokio::task::JoinHandle<(bool, Value)> {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "load",
        "--plugin",
        plugin,
        "--artifact",
        artifact,
        "--digest",
        digest,
    ])
    .arg("--state-dir")
    .arg(dir);
    tokio::spawn(async move {
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("load finishes")
            .expect("run load");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("load printed {text:?}: {e}"));
        (out.status.success(), v)
    })
}

struct Env {
    _pki: TestPki,
    server: ArtifactServer,
    dir: tempfile::TempDir,
    ca: PathBuf,
}

async fn env() -> Env {
    let pki = TestPki::generate();
    let server = ArtifactServer::start(&pki, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    Env {
        _pki: pki,
        server,
        dir,
        ca,
    }
}

const V1: &[u8] = b"\0asm plugin v1";
const V2: &[u8] = b"\0asm plugin v2";
const V3: &[u8] = b"\0asm plugin v3";

#[tokio::test]
async fn load_then_recover_from_app_and_sidecar_restarts_without_download() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar(&state, &e.ca).await;
    assert!(
        sidecar
            .wait_ready(503)
            .await
            .contains("no plugin assigned yet")
    );

    let mut app = App::connect(&state).await;
    app.send(json!({"type": "hello", "app": "test"})).await;
    let url = e.server.put("v1", V1);
    let digest = Sha256Digest::of(V1).to_string();
    let load = load_cmd(&state, "auth", &url, &digest);
    let first = app.accept_load("auth", V1).await;
    let (ok, outcome) = load.await.expect("load task");
    assert!(ok, "{outcome}");
    assert_eq!(
        (outcome["result"].as_str(), outcome["downloaded"].as_bool()),
        (Some("loaded"), Some(true))
    );
    assert_eq!(outcome["health"], "self-check passed");
    sidecar.wait_ready(200).await;

    // App restart: its plugins are gone, so not ready, and it is re-told the set at once.
    drop(app);
    assert!(sidecar.wait_ready(503).await.contains("app not connected"));
    let mut app = App::connect(&state).await;
    assert_eq!(app.accept_load("auth", V1).await, first);
    sidecar.wait_ready(200).await;

    // Sidecar crash: state and artifact survive; nothing is downloaded again.
    let hits = e.server.total_hits();
    sidecar.crash().await;
    drop(app);
    let sidecar = start_sidecar(&state, &e.ca).await;
    let mut app = App::connect(&state).await;
    assert_eq!(app.accept_load("auth", V1).await, first);
    sidecar.wait_ready(200).await;
    let load = load_cmd(&state, "auth", &url, &digest);
    app.accept_load("auth", V1).await;
    let (ok, outcome) = load.await.expect("load task");
    assert!(ok && outcome["downloaded"] == false, "{outcome}");
    assert_eq!(e.server.total_hits(), hits, "no download after restart");
}

#[tokio::test]
async fn refusals_and_fetch_failures_keep_the_old_revision_and_say_why() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar(&state, &e.ca).await;
    let mut app = App::connect(&state).await;
    let v1 = e.server.put("v1", V1);
    let load = load_cmd(&state, "auth", &v1, &Sha256Digest::of(V1).to_string());
    let loaded = app.accept_load("auth", V1).await;
    assert!(load.await.expect("load").0);

    // The app refuses v2: the load fails with the app's reason; v1 still serves; ready.
    let v2 = e.server.put("v2", V2);
    let load = load_cmd(&state, "auth", &v2, &Sha256Digest::of(V2).to_string());
    let msg = app.recv().await;
    app.send(json!({"type": "failed", "plugin": "auth", "revision": msg["revision"], "reason": "self-check failed: returned status 7"}))
        .await;
    let (ok, outcome) = load.await.expect("load");
    assert!(!ok);
    // A v1 app is one worker, named by its process id.
    assert_eq!(
        outcome["reason"],
        format!(
            "app: worker {}: self-check failed: returned status 7",
            std::process::id()
        )
    );
    sidecar.wait_ready(200).await;

    // Fetch failures never reach the app. (A digest already in the store would be served
    // from it whatever the URL: content addressing. So these pin bytes never fetched.)
    let v3 = Sha256Digest::of(b"never fetched").to_string();
    let cases = [
        (
            format!("{}/status/404", e.server.base),
            v3.clone(),
            "not found (HTTP 404)",
        ),
        (
            format!("{}/status/401", e.server.base),
            v3.clone(),
            "unauthorized (HTTP 401)",
        ),
        (
            format!("{}/status/500", e.server.base),
            v3.clone(),
            "server error (HTTP 500)",
        ),
        (
            v2.clone(),
            Sha256Digest::of(b"something else").to_string(),
            "digest mismatch",
        ),
        (v2.clone(), "sha256:nope".to_string(), "malformed digest"),
    ];
    for (url, digest, want) in cases {
        let (ok, outcome) = load_cmd(&state, "auth", &url, &digest).await.expect("load");
        let reason = outcome["reason"].as_str().unwrap_or_default();
        assert!(
            !ok && reason.contains(want),
            "{url}: want {want:?} in {outcome}"
        );
    }
    assert_eq!(
        app.recv_within(Duration::from_millis(300)).await,
        None,
        "app told nothing"
    );
    sidecar.wait_ready(200).await;
    let (_, status) = sidecar.get("/status").await;
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["workers"]["auth"],
        format!(
            "{} loaded by 1/1 workers",
            loaded["revision"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(
        status["state"]["plugins"]["auth"]["loaded"]["revision"],
        loaded["revision"]
    );
    assert_eq!(
        status["state"]["plugins"]["auth"]["refused"]["revision"],
        msg["revision"]
    );
    // Every outcome is counted under its cause; the malformed digest fetched nothing.
    sidecar
        .assert_metrics(&[
            "hotload_sidecar_fetches_total{plugin=\"auth\",result=\"ok\"} 2",
            "hotload_sidecar_fetches_total{plugin=\"auth\",result=\"error\"} 4",
            "hotload_sidecar_loads_total{plugin=\"auth\",result=\"loaded\"} 1",
            "hotload_sidecar_loads_total{plugin=\"auth\",result=\"failed\"} 6",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"app_refused\"} 1",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"fetch\"} 3",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"digest\"} 1",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"invalid\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn garbage_on_the_app_socket_is_a_clear_error_not_a_crash() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar(&state, &e.ca).await;
    let mut app = App::connect(&state).await;
    app.send_raw(b"hello?\n").await;
    let err = app.recv().await;
    assert_eq!(err["type"], "error");
    assert!(
        err["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("line 1: not a valid app message")),
        "{err}"
    );
    app.send_raw(b"{\"type\":\"reboot\"}\n\xff\xfe\n").await;
    assert!(
        app.recv().await["reason"]
            .as_str()
            .is_some_and(|r| r.contains("line 2") && r.contains("reboot"))
    );
    assert!(
        app.recv().await["reason"]
            .as_str()
            .is_some_and(|r| r.contains("line 3: line is not UTF-8"))
    );

    // The same connection still works.
    let url = e.server.put("v1", V1);
    let load = load_cmd(&state, "auth", &url, &Sha256Digest::of(V1).to_string());
    app.accept_load("auth", V1).await;
    assert!(load.await.expect("load").0);

    // An endless line is refused and that connection closed; the sidecar lives on.
    let mut flood = App::connect(&state).await;
    flood.accept_load("auth", V1).await;
    flood.send_raw(&vec![b'x'; 70 * 1024]).await;
    let err = flood.recv().await;
    assert!(
        err["reason"]
            .as_str()
            .is_some_and(|r| r.contains("longer than")),
        "{err}"
    );
    assert!(
        flood.closed_within(STEP).await,
        "the flooding connection is closed"
    );
    assert_eq!(sidecar.get("/live").await.0, 200);
    let mut again = App::connect(&state).await;
    again.accept_load("auth", V1).await;
    sidecar.wait_ready(200).await;
}

#[tokio::test]
async fn a_load_no_app_was_there_to_see_waits_for_the_app_and_a_silent_app_fails_it() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar_acking_within(&state, &e.ca, Duration::from_millis(300)).await;

    // No app yet (its container is still starting): the revision is assigned, not failed.
    let v1 = e.server.put("v1", V1);
    let load = load_cmd(&state, "auth", &v1, &Sha256Digest::of(V1).to_string());
    let (ok, outcome) = load.await.expect("load task");
    assert!(!ok, "not loaded yet: {outcome}");
    assert_eq!(outcome["result"], "awaiting_app", "{outcome}");
    let (_, status) = sidecar.get("/status").await;
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["state"]["plugins"]["auth"]["assigned"]["artifact"], v1,
        "{status}"
    );
    // The app comes up and is offered it at once.
    let mut app = App::connect(&state).await;
    app.accept_load("auth", V1).await;
    sidecar.wait_ready(200).await;

    // An app that is there and says nothing is a failure of the load, as before.
    let v2 = e.server.put("v2", V2);
    let load = load_cmd(&state, "auth", &v2, &Sha256Digest::of(V2).to_string());
    let told = app.recv().await;
    assert_eq!(told["type"], "load", "{told}");
    let (ok, outcome) = load.await.expect("load task");
    assert!(!ok);
    assert_eq!(outcome["result"], "failed", "{outcome}");
    let reason = outcome["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ack: 1 of 1 connected workers did not answer"),
        "{reason}"
    );
    // Waiting for an app is no failure (nor, once an app came, a load); a silent app is.
    assert!(
        !sidecar
            .metrics()
            .await
            .iter()
            .any(|l| l.contains("result=\"loaded\"")),
        "the revision that waited for the app ended neither way"
    );
    sidecar
        .assert_metrics(&[
            "hotload_sidecar_loads_total{plugin=\"auth\",result=\"failed\"} 1",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"app_timeout\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn a_revision_is_loaded_only_when_every_worker_loaded_it_and_one_refusal_fails_it() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar(&state, &e.ca).await;
    let mut workers = vec![
        App::worker(&state, "w1").await,
        App::worker(&state, "w2").await,
        App::worker(&state, "w3").await,
    ];
    let v1 = e.server.put("v1", V1);
    let load = load_cmd(&state, "auth", &v1, &Sha256Digest::of(V1).to_string());
    workers[0].accept_load("auth", V1).await;
    workers[1].accept_load("auth", V1).await;
    let body = sidecar.wait_ready(503).await;
    assert!(body.contains("loaded by 2/3 workers"), "{body}");
    assert!(
        !load.is_finished(),
        "not loaded on the pod while a worker has not answered"
    );
    workers[2].accept_load("auth", V1).await;
    let (ok, outcome) = load.await.expect("load task");
    assert!(ok, "{outcome}");
    sidecar.wait_ready(200).await;

    // A worker that connects later gets the set at once and counts only once it loaded.
    let mut late = App::worker(&state, "w4").await;
    let body = sidecar.wait_ready(503).await;
    assert!(body.contains("loaded by 3/4 workers"), "{body}");
    late.accept_load("auth", V1).await;
    sidecar.wait_ready(200).await;
    workers.push(late);

    // One worker refusing v2 fails the pod's load, naming the worker; the others keep v1.
    let v2 = e.server.put("v2", V2);
    let load = load_cmd(&state, "auth", &v2, &Sha256Digest::of(V2).to_string());
    for w in &mut workers[..3] {
        w.accept_load("auth", V2).await;
    }
    let msg = workers[3].recv().await;
    workers[3]
        .send(json!({"type": "failed", "plugin": "auth", "revision": msg["revision"], "reason": "self-check failed: returned status 1"}))
        .await;
    let (ok, outcome) = load.await.expect("load task");
    assert!(!ok);
    assert_eq!(
        outcome["reason"], "app: worker w4: self-check failed: returned status 1",
        "{outcome}"
    );
    // The workers that took v2 are sent back to v1, so the pod serves one revision again.
    for w in &mut workers[..3] {
        w.accept_load("auth", V1).await;
    }
    sidecar.wait_ready(200).await;

    // A worker that leaves leaves the set; one that dies while loading fails that load.
    drop(workers.pop());
    let v3 = e.server.put("v3", V3);
    let load = load_cmd(&state, "auth", &v3, &Sha256Digest::of(V3).to_string());
    workers[0].accept_load("auth", V3).await;
    workers[1].accept_load("auth", V3).await;
    let mut crashing = workers.pop().expect("w3");
    assert_eq!(crashing.recv().await["type"], "load");
    drop(crashing);
    let (ok, outcome) = load.await.expect("load task");
    assert!(!ok);
    let revision = outcome["revision"].as_str().unwrap_or_default();
    assert_eq!(
        outcome["reason"],
        format!("app: worker w3 disconnected before answering the load of {revision}"),
        "{outcome}"
    );
    sidecar
        .assert_metrics(&[
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"app_refused\"} 1",
            "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"app_disconnected\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn health_reports_of_two_workers_add_up_on_metrics_and_a_bad_one_is_refused() {
    let e = env().await;
    let state = e.dir.path().join("state");
    let sidecar = start_sidecar(&state, &e.ca).await;
    let mut w1 = App::worker(&state, "w1").await;
    let mut w2 = App::worker(&state, "w2").await;
    w1.send(json!({"type": "health", "plugins": [
        {"plugin": "auth", "revision": "r1", "calls": 3, "errors": {"trap": 1}, "latency_us": [2, 1]},
        {"plugin": "auth", "revision": "r2", "calls": 1, "latency_us": [0, 0, 0, 1]},
    ]}))
    .await;
    w2.send(json!({"type": "health", "plugins": [
        {"plugin": "auth", "revision": "r1", "calls": 4, "errors": {"timeout": 2, "failed": 1}, "latency_us": [0, 4]},
    ]}))
    .await;
    // More failed calls than calls: refused whole, with the cause; the connection stays.
    w2.send(json!({"type": "health", "plugins": [
        {"plugin": "auth", "revision": "r1", "calls": 1, "errors": {"memory": 5}},
    ]}))
    .await;
    let err = w2.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(
        err["reason"],
        "line 3: health report refused: plugin auth revision r1: 5 failed calls of 1 calls"
    );
    w2.send(json!({"type": "health", "plugins": [
        {"plugin": "auth", "revision": "r1", "calls": 1, "latency_us": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]},
    ]}))
    .await;
    let want = [
        "hotload_plugin_calls_total{plugin=\"auth\",revision=\"r1\"} 8",
        "hotload_plugin_calls_total{plugin=\"auth\",revision=\"r2\"} 1",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"trap\"} 1",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"timeout\"} 2",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"memory\"} 0",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"failed\"} 1",
        "hotload_plugin_call_duration_seconds_count{plugin=\"auth\",revision=\"r1\"} 8",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.00001\",plugin=\"auth\",revision=\"r1\"} 2",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.00002\",plugin=\"auth\",revision=\"r1\"} 7",
        "hotload_plugin_call_duration_seconds_bucket{le=\"10.0\",plugin=\"auth\",revision=\"r1\"} 7",
        "hotload_plugin_call_duration_seconds_bucket{le=\"+Inf\",plugin=\"auth\",revision=\"r1\"} 8",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.00005\",plugin=\"auth\",revision=\"r2\"} 0",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.0001\",plugin=\"auth\",revision=\"r2\"} 1",
    ];
    // The reports arrive on two sockets: wait (bounded) until both are counted.
    let deadline = tokio::time::Instant::now() + STEP;
    while !sidecar.metrics().await.iter().any(|l| l == want[0]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports not counted in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar.assert_metrics(&want).await;
    assert_eq!(
        w1.recv_within(Duration::from_millis(200)).await,
        None,
        "a good report gets no answer"
    );
}
