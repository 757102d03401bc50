//! 100 swaps between two versions while callers hammer the plugin: no call fails and every
//! response comes wholly from one version.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hotload_host::PluginHost;

#[test]
fn hundred_swaps_under_concurrent_calls_fail_no_call() {
    let cache = tempfile::tempdir().expect("tempdir");
    // Epoch deadlines are wall-clock: on a 2-core machine shared with builds a caller thread
    // can be descheduled for a long time, so this test (about swaps, not deadlines) gives
    // calls a generous one.
    let host = Arc::new(
        PluginHost::new(hotload_host::HostConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            call_timeout: Duration::from_secs(5),
            ..config()
        })
        .expect("host starts"),
    );
    let versions = [plugin("v01", SELF_CHECK_OK), plugin("v02", SELF_CHECK_OK)];
    host.load(request("auth", "r0", versions[0].clone()))
        .expect("initial load");

    let stop = Arc::new(AtomicBool::new(false));
    let per_tag = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let callers: Vec<_> = (0..3)
        .map(|n| {
            let (host, stop, per_tag) = (host.clone(), stop.clone(), per_tag.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut i = 0u64;
                // Bounded by count as well as by the stop flag.
                while !stop.load(Ordering::Relaxed) && i < 5_000_000 {
                    let input = format!("caller{n}-request{i}-{}", "x".repeat((i % 64) as usize));
                    let out = host
                        .call("auth", input.as_bytes())
                        .map_err(|e| e.to_string())?;
                    let (tag, body) =
                        tag_of(&out).ok_or_else(|| format!("mixed response {out:?}"))?;
                    if body != input.as_bytes() {
                        return Err(format!("body mismatch: {out:?}"));
                    }
                    match tag.as_str() {
                        "v01" => per_tag[0].fetch_add(1, Ordering::Relaxed),
                        "v02" => per_tag[1].fetch_add(1, Ordering::Relaxed),
                        _ => return Err(format!("unknown tag {tag}")),
                    };
                    i += 1;
                }
                Ok(i)
            })
        })
        .collect();

    let started = Instant::now();
    let mut swaps = 0;
    let mut worst_swap = Duration::ZERO;
    for n in 1..=100 {
        let loaded = host
            .load(request("auth", &format!("r{n}"), versions[n % 2].clone()))
            .unwrap_or_else(|e| panic!("swap {n} failed: {e}"));
        assert!(loaded.swapped);
        worst_swap = worst_swap.max(loaded.swap);
        swaps += 1;
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "swap loop exceeded its time bound"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    for c in callers {
        calls += c
            .join()
            .expect("caller thread")
            .unwrap_or_else(|e| panic!("a call failed: {e}"));
    }
    let (a, b) = (
        per_tag[0].load(Ordering::Relaxed),
        per_tag[1].load(Ordering::Relaxed),
    );
    eprintln!(
        "{swaps} swaps, {calls} calls ({a} v01, {b} v02), worst swap critical section {worst_swap:?}"
    );
    assert_eq!(swaps, 100);
    assert!(a > 0 && b > 0, "both versions served: v01={a} v02={b}");
    assert_eq!(
        host.serving("auth").map(|r| r.revision),
        Some("r100".to_string())
    );
}
