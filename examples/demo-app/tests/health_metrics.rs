//! Health from the app to the sidecar's `/metrics`, through real processes only: the real
//! `hotload-sidecar` binary, the real `hotload-demo-app` binary (its link is
//! `hotload_host::link`), the sidecar's `load` command, and HTTP. The app serves
//! examples/plugins/tagger-flaky.wat, which traps on one call in five; after 100 requests
//! the sidecar's admin port shows 100 calls and 20 traps for that revision.
//!
//! The sidecar binary is `HOTLOAD_SIDECAR_BIN`, or the `hotload-sidecar` built in the same
//! target directory as this test (`cargo test --workspace` builds it; on its own, run
//! `cargo build -p hotload-sidecar` first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hotload_demo_app::harness::{skip_without, tag_of};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const APP_BIN: &str = env!("CARGO_BIN_EXE_hotload-demo-app");
const STEP: Duration = Duration::from_secs(30);

/// The sidecar binary, if there is one.
fn sidecar_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("HOTLOAD_SIDECAR_BIN") {
        return Some(PathBuf::from(bin));
    }
    // <target>/debug/deps/health_metrics-… → <target>/debug/hotload-sidecar
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("hotload-sidecar");
    bin.exists().then_some(bin)
}

/// Starts a process and returns it with the first line it prints.
async fn start(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(STEP, lines.next_line())
        .await
        .expect("the process announces itself in time")
        .expect("read stdout")
        .expect("the process is running");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, first)
}

/// One sample of the Prometheus text format: its name, labels and value. Enough of the
/// format for the sidecar's own output (no escaped quotes in these label values).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value))
        })
        .collect()
}

/// The value of `name` with exactly these labels (others than those named are allowed).
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples(text).into_iter().find_map(|(n, labels, v)| {
        (n == name
            && want
                .iter()
                .all(|(k, val)| labels.get(*k).map(String::as_str) == Some(*val)))
        .then_some(v)
    })
}

/// Puts `bytes` where the sidecar's store keeps verified artifacts; the store hashes a blob
/// again before it uses it, so the `load` below takes it instead of fetching.
fn place_blob(state: &Path, bytes: &[u8]) -> String {
    let digest = hotload_host::sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let dir = state.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("blob dir");
    std::fs::write(dir.join(hex), bytes).expect("write blob");
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_traps_reach_the_sidecars_metrics() {
    let Some(sidecar_bin) = sidecar_bin() else {
        skip_without("the hotload-sidecar binary (cargo build -p hotload-sidecar)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (_sidecar, first) = start(
        Command::new(&sidecar_bin)
            .args(["run", "--admin-addr", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "warn"),
    )
    .await;
    let admin = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no admin= in {first:?}"))
        .to_string();
    let (_app, first) = start(
        Command::new(APP_BIN)
            .args(["--listen", "127.0.0.1:0", "--socket"])
            .arg(state.join("app.sock"))
            .env_remove("DEMO_WORKERS")
            .env_remove("HOTLOAD_WORKER_ID")
            .env("RUST_LOG", "warn"),
    )
    .await;
    let http: std::net::SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));

    let flaky =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tagger-flaky.wat");
    let wasm = wat::parse_file(&flaky).expect("tagger-flaky parses");
    let digest = place_blob(&state, &wasm);
    let out = tokio::time::timeout(
        STEP,
        Command::new(&sidecar_bin)
            .args(["load", "--plugin", "handler", "--revision", "r-flaky"])
            .args(["--artifact", "https://artifacts.invalid/tagger-flaky.wasm"])
            .args(["--digest", &digest, "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("load finishes")
    .expect("run load");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("loaded"),
        "load: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (mut ok, mut failed) = (0, 0);
    for i in 0..100 {
        let body = format!("req{i}");
        let resp = client
            .post(format!("http://{http}/"))
            .body(body.clone())
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        let out = resp.bytes().await.expect("body");
        if status == 200 {
            let (tag, echoed) = tag_of(&out).expect("one version per response");
            assert_eq!((tag.as_str(), echoed.as_slice()), ("v03", body.as_bytes()));
            ok += 1;
        } else {
            assert_eq!(status, 500, "{}", String::from_utf8_lossy(&out));
            failed += 1;
        }
    }
    assert_eq!((ok, failed), (80, 20), "one call in five traps");

    // The app reports about once a second; the sidecar counts what it is told.
    let labels = [("plugin", "handler"), ("revision", "r-flaky")];
    let trap = [
        ("plugin", "handler"),
        ("revision", "r-flaky"),
        ("kind", "trap"),
    ];
    let started = Instant::now();
    let metrics = loop {
        let text = match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        let calls = value(&text, "hotload_plugin_calls_total", &labels);
        if calls == Some(100.0) {
            break text;
        }
        assert!(
            started.elapsed() < STEP,
            "the sidecar's /metrics never showed 100 calls (now {calls:?}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(&metrics, "hotload_plugin_errors_total", &trap),
        Some(20.0),
        "{metrics}"
    );
    for kind in ["timeout", "memory", "failed"] {
        let labels = [
            ("plugin", "handler"),
            ("revision", "r-flaky"),
            ("kind", kind),
        ];
        let n = value(&metrics, "hotload_plugin_errors_total", &labels);
        assert!(matches!(n, None | Some(0.0)), "{kind}: {n:?}\n{metrics}");
    }
    assert_eq!(
        value(
            &metrics,
            "hotload_plugin_call_duration_seconds_count",
            &labels
        ),
        Some(100.0),
        "{metrics}"
    );
}

#[test]
fn prometheus_samples_parse_with_labels_in_any_order() {
    let text = "# TYPE x counter\nx_total{revision=\"r\",plugin=\"p\",kind=\"trap\"} 20\ny 1.5\n";
    assert_eq!(
        value(
            text,
            "x_total",
            &[("plugin", "p"), ("kind", "trap"), ("revision", "r")]
        ),
        Some(20.0)
    );
    assert_eq!(value(text, "y", &[]), Some(1.5));
    assert_eq!(value(text, "x_total", &[("plugin", "q")]), None);
}
