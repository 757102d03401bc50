//! In-request atomicity: a request that pins its plugin runs every call on one revision,
//! while swaps land between its calls; the swap never waits for the pin.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hotload_host::{CallError, Pinned, PluginHost};

fn host() -> Arc<PluginHost> {
    // Deadlines are wall-clock and this machine is shared with builds: be generous.
    Arc::new(
        PluginHost::new(hotload_host::HostConfig {
            call_timeout: Duration::from_secs(5),
            ..config()
        })
        .expect("host starts"),
    )
}

fn tag(out: &[u8]) -> String {
    tag_of(out)
        .unwrap_or_else(|| panic!("mixed response {out:?}"))
        .0
}

/// Loads on another thread and waits for it: a swap that waited for the pin would time out.
fn load_elsewhere(host: &Arc<PluginHost>, revision: &str, wasm: Vec<u8>) {
    let (host, revision) = (host.clone(), revision.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            host.load(request("auth", &revision, wasm))
                .map(|l| l.swapped),
        );
    });
    let swapped = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the swap finished while a pin was held")
        .expect("load succeeds");
    assert!(swapped);
}

#[test]
fn a_pin_keeps_its_revision_across_a_swap_and_an_unload() {
    let host = host();
    host.load(request("auth", "r1", plugin("v01", SELF_CHECK_OK)))
        .expect("r1");
    let pinned = host.pin("auth").expect("pin r1");
    assert_eq!(tag(&pinned.call(b"first").expect("call")), "v01");

    load_elsewhere(&host, "r2", plugin("v02", SELF_CHECK_OK));
    assert_eq!(tag(&host.call("auth", b"x").expect("call")), "v02");
    assert_eq!(tag(&pinned.call(b"second").expect("call")), "v01");
    assert_eq!(pinned.revision().revision, "r1");

    assert!(host.unload("auth"));
    assert!(matches!(
        host.call("auth", b"x"),
        Err(CallError::NotLoaded { .. })
    ));
    assert!(matches!(host.pin("auth"), Err(CallError::NotLoaded { .. })));
    let clone = pinned.clone();
    drop(pinned);
    assert_eq!(tag(&clone.call(b"third").expect("call")), "v01");
}

/// One request: pin, call, pause, call. Returns (tag of both calls, a swap landed between).
fn request_twice(host: &PluginHost, input: &str, pause: bool) -> Result<(String, bool), String> {
    let pinned: Pinned = host.pin("auth").map_err(|e| e.to_string())?;
    let first = pinned.call(input.as_bytes()).map_err(|e| e.to_string())?;
    if pause {
        std::thread::sleep(Duration::from_micros(200));
    }
    let crossed =
        host.serving("auth").map(|r| r.revision) != Some(pinned.revision().revision.clone());
    let second = pinned.call(input.as_bytes()).map_err(|e| e.to_string())?;
    let (t1, b1) = tag_of(&first).ok_or_else(|| format!("mixed response {first:?}"))?;
    let (t2, b2) = tag_of(&second).ok_or_else(|| format!("mixed response {second:?}"))?;
    if b1 != input.as_bytes() || b2 != input.as_bytes() {
        return Err(format!("body mismatch: {first:?} / {second:?}"));
    }
    // Revision rN serves v01 for even N, v02 for odd N (see the swap loop).
    let n: u32 = pinned.revision().revision[1..]
        .parse()
        .map_err(|e| format!("{e}"))?;
    let expected = if n.is_multiple_of(2) { "v01" } else { "v02" };
    if t1 != t2 || t1 != expected {
        return Err(format!(
            "request straddled: {t1} then {t2} on pinned {}",
            pinned.revision().revision
        ));
    }
    Ok((t1, crossed))
}

#[test]
fn every_request_runs_on_one_revision_while_swaps_land_between_its_calls() {
    let host = host();
    let versions = [plugin("v01", SELF_CHECK_OK), plugin("v02", SELF_CHECK_OK)];
    host.load(request("auth", "r0", versions[0].clone()))
        .expect("initial load");
    let stop = Arc::new(AtomicBool::new(false));
    let crossed = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|n| {
            let (host, stop, crossed) = (host.clone(), stop.clone(), crossed.clone());
            std::thread::spawn(move || -> Result<[u64; 2], String> {
                let mut per_tag = [0u64; 2];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 5_000_000 {
                    let input = format!("caller{n}-request{i}");
                    let (tag, swap_between) = request_twice(&host, &input, i.is_multiple_of(4))?;
                    per_tag[usize::from(tag == "v02")] += 1;
                    crossed.fetch_add(u64::from(swap_between), Ordering::Relaxed);
                    i += 1;
                }
                Ok(per_tag)
            })
        })
        .collect();

    let started = Instant::now();
    for n in 1..=100usize {
        let loaded = host
            .load(request("auth", &format!("r{n}"), versions[n % 2].clone()))
            .unwrap_or_else(|e| panic!("swap {n} failed: {e}"));
        assert!(loaded.swapped);
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "swap loop over its time bound"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = [0u64; 2];
    for c in callers {
        let seen = c
            .join()
            .expect("caller thread")
            .unwrap_or_else(|e| panic!("a request failed: {e}"));
        total[0] += seen[0];
        total[1] += seen[1];
    }
    let crossed = crossed.load(Ordering::Relaxed);
    eprintln!(
        "requests v01={} v02={}, {crossed} with a swap between their calls",
        total[0], total[1]
    );
    assert!(
        total[0] > 0 && total[1] > 0,
        "both versions served: {total:?}"
    );
    assert!(
        crossed > 0,
        "no swap landed inside a request: the test proved nothing"
    );
}
