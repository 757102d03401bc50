//! The Python example client (examples/python/hotload_client.py, stdlib only) against the
//! real sidecar agent on a real Unix socket: load, state hand-over, config, refused loads
//! that keep the old module serving, and an app restart that gets its plugin back at once.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hotload_sidecar::assignment::AssignOutcome;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/hotload_client.py");
const V1: &str = include_str!("../../python/plugins/greeter_v1.py");
const V2: &str = include_str!("../../python/plugins/greeter_v2.py");

struct PyApp {
    child: Child,
    events: Lines<BufReader<ChildStdout>>,
}

fn python_available() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn spawn_app(socket: &Path) -> PyApp {
    let mut child = Command::new("python3")
        .arg(CLIENT)
        .arg("--socket")
        .arg(socket)
        .args(["--seconds", "60"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python client");
    let stdout = child.stdout.take().expect("stdout");
    PyApp {
        child,
        events: BufReader::new(stdout).lines(),
    }
}

impl PyApp {
    /// Its worker id: the client's default, the process id.
    fn worker(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }

    /// The next loaded/failed event (connection chatter skipped).
    async fn event(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.events.next_line())
                .await
                .expect("python client reports in time")
                .expect("read stdout")
                .expect("python client still running");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            if v["event"] == "loaded" || v["event"] == "failed" {
                return v;
            }
        }
    }
}

fn reason(o: &AssignOutcome) -> &str {
    match o {
        AssignOutcome::Failed { reason, .. } => reason,
        AssignOutcome::Loaded { .. } => "",
        AssignOutcome::AwaitingApp { .. } => "no app connected",
    }
}

#[tokio::test]
async fn python_client_hot_reloads_modules_and_keeps_the_old_one_on_failure() {
    if !python_available() {
        hotload_demo_app::harness::skip_without("python3");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = start_sidecar(dir.path());
    let mut app = spawn_app(&sidecar.socket);

    let d1 = seed(&sidecar.state_dir, V1.as_bytes());
    let out = assign_to(&sidecar.agent, "r1", &d1, Value::Null).await;
    assert!(
        matches!(&out, AssignOutcome::Loaded { health, .. } if health == "self-check passed"),
        "{out:?}"
    );
    assert_eq!(app.event().await["probe"], "v1:ping:1");

    let d2 = seed(&sidecar.state_dir, V2.as_bytes());
    let out = assign_to(&sidecar.agent, "r2", &d2, json!({"greeting": "hi"})).await;
    assert!(
        matches!(&out, AssignOutcome::Loaded { health, .. } if health.contains("state restored")),
        "{out:?}"
    );
    assert_eq!(
        app.event().await["probe"],
        "v2:hi ping:2",
        "count carried over, config applied"
    );

    let bad_check = seed(
        &sidecar.state_dir,
        b"def handle(r):\n    return r\n\ndef self_check():\n    return False\n",
    );
    let out = assign_to(&sidecar.agent, "r3", &bad_check, Value::Null).await;
    // A worker's refusal names the worker (protocol v2).
    let worker = app.worker();
    assert_eq!(
        reason(&out),
        format!("app: worker {worker}: self_check returned False")
    );
    let ev = app.event().await;
    assert_eq!(
        (ev["event"].as_str(), ev["probe"].as_str()),
        (Some("failed"), Some("v2:hi ping:3"))
    );

    let syntax = seed(&sidecar.state_dir, b"def handle(r)\n    return r\n");
    let out = assign_to(&sidecar.agent, "r4", &syntax, Value::Null).await;
    assert!(
        reason(&out).starts_with(&format!("app: worker {worker}: import failed: SyntaxError")),
        "{out:?}"
    );
    assert_eq!(app.event().await["probe"], "v2:hi ping:4");

    // App restart: it gets r2 back at once (r4 was refused, so it is not re-offered).
    drop(app);
    let mut app = spawn_app(&sidecar.socket);
    let ev = app.event().await;
    assert_eq!(
        (ev["event"].as_str(), ev["revision"].as_str()),
        (Some("loaded"), Some("r2"))
    );
    assert_eq!(ev["probe"], "v2:hi ping:1");
}
