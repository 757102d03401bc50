//! A plugin compiled from a real language: Go (`GOOS=wasip1`, `-buildmode=c-shared`,
//! `//go:wasmexport`), built here with the machine's Go toolchain, loaded by `hotload-host`
//! (WASI preview1 sandbox, reactor `_initialize`), and swapped with the Wasm-text plugin
//! under concurrent calls.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hotload_demo_app::harness::{V1_WAT, skip_without, tag_of};
use hotload_host::{HostConfig, LoadRequest, PluginHost, StateHandover, sha256_digest};

fn build_go_plugin(out: &Path) -> Option<Vec<u8>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/go-upper");
    let result = std::process::Command::new("go")
        .args(["build", "-buildmode=c-shared", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(&src)
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .output();
    match result {
        Err(e) => {
            skip_without(&format!("the Go toolchain ({e})"));
            None
        }
        Ok(o) if !o.status.success() => {
            panic!("go build failed: {}", String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => Some(std::fs::read(out).expect("read built plugin")),
    }
}

fn request(revision: &str, wasm: &[u8]) -> LoadRequest {
    LoadRequest {
        plugin: "handler".into(),
        revision: revision.into(),
        digest: sha256_digest(wasm),
        config: Vec::new(),
        wasm: wasm.to_vec(),
    }
}

#[test]
fn go_plugin_serves_and_swaps_with_the_wat_plugin_under_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(go) = build_go_plugin(&dir.path().join("go-upper.wasm")) else {
        return;
    };
    let wat = wat::parse_str(V1_WAT).expect("wat");
    // The cache makes every swap after the first a deserialize, not a Cranelift compile.
    let config = HostConfig {
        cache_dir: Some(dir.path().join("cwasm")),
        ..HostConfig::default()
    };
    let host = Arc::new(PluginHost::new(config).expect("host"));

    let loaded = host.load(request("go-1", &go)).expect("Go plugin loads");
    assert!(loaded.self_checked);
    assert_eq!(
        host.call("handler", b"hello").expect("call"),
        b"go1:HELLOgo1:"
    );

    // WAT v1 exports save_state, Go exports restore_state: the counter crosses languages.
    host.load(request("wat-1", &wat)).expect("WAT loads");
    host.call("handler", b"x").expect("call");
    let loaded = host.load(request("go-2", &go)).expect("Go again");
    assert_eq!(loaded.state, StateHandover::Restored(4));

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|n| {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || -> Result<[u64; 2], String> {
                let mut i = 0u64;
                // Answers from the WAT plugin, and from the Go one.
                let mut seen = [0u64; 2];
                while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                    let body = format!("caller{n}-{i}");
                    let out = host
                        .call("handler", body.as_bytes())
                        .map_err(|e| e.to_string())?;
                    let (tag, echoed) =
                        tag_of(&out).ok_or_else(|| format!("mixed response {out:?}"))?;
                    let want = if tag == "go1" {
                        body.to_uppercase()
                    } else {
                        body.clone()
                    };
                    if echoed != want.as_bytes() || !(tag == "go1" || tag == "v01") {
                        return Err(format!("unexpected response {out:?}"));
                    }
                    seen[usize::from(tag == "go1")] += 1;
                    i += 1;
                }
                Ok(seen)
            })
        })
        .collect();
    let started = Instant::now();
    for n in 0..40 {
        let (rev, wasm) = if n % 2 == 0 {
            (format!("wat-{n}"), &wat)
        } else {
            (format!("go-{n}"), &go)
        };
        host.load(request(&rev, wasm))
            .unwrap_or_else(|e| panic!("swap {n}: {e}"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "swap loop over its time bound"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let [wat_answers, go_answers] = c
            .join()
            .expect("caller")
            .unwrap_or_else(|e| panic!("a call failed: {e}"));
        assert!(
            wat_answers > 0 && go_answers > 0,
            "each caller was answered by both plugins while they swapped: \
             {wat_answers} WAT, {go_answers} Go"
        );
    }
}
