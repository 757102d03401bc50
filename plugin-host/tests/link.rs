//! `hotload_host::link::Link` over a real Unix socket, with this test on the sidecar's end
//! of it speaking docs/protocol.md line by line: hello v2, load and unload answered, garbage
//! survived, health reported only while calls happen (and kept while disconnected), and a
//! reconnect after the sidecar goes away. The real sidecar binary drives the same link in
//! examples/demo-app/tests/health_metrics.rs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hotload_host::PluginHost;
use hotload_host::link::{Link, LinkOptions};
use serde_json::{Value, json};

/// The sidecar's end of one connection.
struct Peer {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Peer {
    fn accept(listener: &UnixListener) -> Peer {
        let (stream, _) = listener.accept().expect("the link connects");
        let writer = stream.try_clone().expect("clone");
        Peer {
            reader: BufReader::new(stream),
            writer,
        }
    }

    fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the app");
    }

    /// The next line within `within`; `None` if none came (or the link hung up).
    fn recv_within(&mut self, within: Duration) -> Option<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .expect("timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("the link sends JSON lines")),
        }
    }

    fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(10))
            .expect("a message from the link")
    }

    /// The next message that is not `health`.
    fn reply(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v["type"] != "health" {
                return v;
            }
        }
    }

    /// The next `health` message, skipping nothing else.
    fn health(&mut self) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], "health", "{v}");
        v
    }
}

fn load(path: &Path, revision: &str, digest: &str) -> Value {
    json!({"type": "load", "plugin": "p", "revision": revision,
           "path": path.display().to_string(), "digest": digest, "config": null})
}

fn options() -> LinkOptions {
    LinkOptions {
        app: "link-test".into(),
        worker: "w1".into(),
        health_interval: Duration::from_millis(100),
    }
}

#[test]
fn the_link_loads_answers_reports_health_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let host = Arc::new(PluginHost::new(config()).expect("host"));
    let link = Link::spawn(&socket, host.clone(), options()).expect("link starts");
    let mut peer = Peer::accept(&listener);
    assert_eq!(
        peer.recv(),
        json!({"type": "hello", "app": "link-test", "worker": "w1", "protocol": 2})
    );

    let wasm = plugin("v01", SELF_CHECK_OK);
    let file = dir.path().join("v1.wasm");
    std::fs::write(&file, &wasm).expect("write plugin");
    let digest = hotload_host::sha256_digest(&wasm);
    peer.send_raw(b"not json\n\n");
    peer.send(json!({"type": "error", "reason": "you said something odd"}));
    peer.send(load(&file, "r1", &digest));
    let loaded = peer.reply();
    assert_eq!(
        (&loaded["type"], &loaded["revision"]),
        (&json!("loaded"), &json!("r1")),
        "{loaded}"
    );
    assert!(
        loaded["health"]
            .as_str()
            .is_some_and(|h| h.contains("self-check passed")),
        "{loaded}"
    );
    assert!(link.connected());

    // Idle: no health at all.
    assert_eq!(peer.recv_within(Duration::from_millis(350)), None);
    for i in 0..5 {
        host.call("p", format!("x{i}").as_bytes()).expect("call");
    }
    host.call("p", b"").expect("count call");
    let health = peer.health();
    let reports = health["plugins"].as_array().expect("plugins");
    assert_eq!(reports.len(), 1, "{health}");
    assert_eq!(
        (
            &reports[0]["plugin"],
            &reports[0]["revision"],
            &reports[0]["calls"]
        ),
        (&json!("p"), &json!("r1"), &json!(6)),
        "{health}"
    );
    assert_eq!(
        peer.recv_within(Duration::from_millis(350)),
        None,
        "drained"
    );

    let bad = load(&file, "r2", &format!("sha256:{}", "0".repeat(64)));
    peer.send(bad);
    let failed = peer.reply();
    assert_eq!(failed["type"], "failed", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("digest mismatch")),
        "{failed}"
    );
    assert_eq!(host.serving("p").expect("r1 serves").revision, "r1");

    peer.send(json!({"type": "unload", "plugin": "p"}));
    assert_eq!(peer.reply(), json!({"type": "unloaded", "plugin": "p"}));
    assert!(host.serving("p").is_none());

    // The sidecar goes away: calls made meanwhile are reported once it is back.
    host.load(request("p", "r3", plugin("v03", "")))
        .expect("local load");
    drop(peer);
    drop(listener);
    std::fs::remove_file(&socket).expect("remove socket");
    let t = Instant::now();
    while link.connected() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "link noticed the hang-up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..3 {
        host.call("p", b"y").expect("call");
    }
    std::thread::sleep(Duration::from_millis(300)); // several health intervals, disconnected
    let listener = UnixListener::bind(&socket).expect("bind again");
    let mut peer = Peer::accept(&listener);
    assert_eq!(peer.recv()["worker"], "w1", "the same worker comes back");
    let health = peer.health();
    assert_eq!(health["plugins"][0]["revision"], "r3", "{health}");
    assert_eq!(health["plugins"][0]["calls"], 3, "{health}");

    // Stopping the link hangs up.
    link.stop();
    assert_eq!(peer.recv_within(Duration::from_secs(5)), None);
}

#[test]
fn a_load_in_progress_holds_neither_health_nor_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let host = Arc::new(PluginHost::new(config()).expect("host"));
    host.load(request("other", "o1", plugin("v01", "")))
        .expect("other");
    let _link = Link::spawn(&socket, host.clone(), options()).expect("link starts");
    let mut peer = Peer::accept(&listener);
    assert_eq!(peer.recv()["type"], "hello");

    // A self-check that spins until the deadline (200 ms in `config()`) fails the load
    // slowly; meanwhile health about another plugin keeps flowing.
    let wasm = plugin("v02", SELF_CHECK_LOOP);
    let file = dir.path().join("slow.wasm");
    std::fs::write(&file, &wasm).expect("write plugin");
    let digest = hotload_host::sha256_digest(&wasm);
    for i in 0..4 {
        peer.send(load(&file, &format!("s{i}"), &digest));
    }
    host.call("other", b"z").expect("call");
    let health = peer.health();
    assert_eq!(health["plugins"][0]["plugin"], "other", "{health}");
    // The four loads are answered in order.
    for i in 0..4 {
        let v = peer.reply();
        assert_eq!(
            (&v["type"], &v["revision"]),
            (&json!("failed"), &json!(format!("s{i}"))),
            "{v}"
        );
    }
}
