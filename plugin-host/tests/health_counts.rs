//! Health counts (docs/protocol.md, "health"): every call through `PluginHost::call` and
//! `Pinned::call` counts on the revision it ran on, errors by kind, latency in the fixed
//! buckets; `take_health` drains them, calls that finish after a swap included.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use hotload_host::protocol::{Counts, ErrorKind, PluginHealth};
use hotload_host::{CallError, HostConfig, PluginHost};

/// `handle` by the input's first byte: `t` traps, `l` loops until the deadline, `g` grows
/// memory past the limit; anything else is echoed between `v01:` tags.
fn faulty() -> Vec<u8> {
    wat::parse_str(
        r#"(module
  (memory (export "memory") 2)
  (data (i32.const 0) "v01:")
  (func (export "alloc") (param $len i32) (result i32) (i32.const 1024))
  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32)
    (if (local.get $len) (then (local.set $op (i32.load8_u (local.get $ptr)))))
    (if (i32.eq (local.get $op) (i32.const 116)) (then (unreachable)))
    (if (i32.eq (local.get $op) (i32.const 108)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $op) (i32.const 103)) (then (drop (memory.grow (i32.const 2000)))))
    (i32.store (i32.const 32768) (i32.load (i32.const 0)))
    (memory.copy (i32.const 32772) (local.get $ptr) (local.get $len))
    (i32.store (i32.add (i32.const 32772) (local.get $len)) (i32.load (i32.const 0)))
    (i64.or (i64.shl (i64.const 32768) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8))))))"#,
    )
    .expect("faulty plugin parses")
}

fn one(reports: &[PluginHealth], plugin: &str, revision: &str) -> Counts {
    let found: Vec<_> = reports
        .iter()
        .filter(|r| r.plugin == plugin && r.revision == revision)
        .collect();
    assert!(found.len() <= 1, "one report per revision: {reports:?}");
    found.first().map(|r| r.counts.clone()).unwrap_or_default()
}

fn timed(c: &Counts) -> u64 {
    c.latency_us.iter().sum()
}

#[test]
fn a_mix_of_calls_counts_exactly_by_kind() {
    let host = Arc::new(
        PluginHost::new(HostConfig {
            instances_per_revision: 1,
            call_timeout: Duration::from_millis(300),
            checkout_timeout: Duration::from_millis(50),
            ..config()
        })
        .expect("host"),
    );
    host.load(request("p", "r1", faulty())).expect("load");
    for i in 0..10 {
        host.call("p", format!("ok{i}").as_bytes())
            .expect("ok call");
    }
    for _ in 0..3 {
        let e = host.call("p", b"trap").expect_err("traps");
        assert_eq!(e.health_kind(), Some(ErrorKind::Trap), "{e}");
    }
    let e = host.call("p", b"grow").expect_err("memory limit");
    assert_eq!(e.health_kind(), Some(ErrorKind::Memory), "{e}");
    // One call holds the only instance until its deadline; another finds none free.
    let holder = {
        let host = host.clone();
        std::thread::spawn(move || host.call("p", b"loop"))
    };
    let (mut busy, mut waited_ok) = (None, 0);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(10));
        match host.call("p", b"ok") {
            Err(e @ CallError::Busy { .. }) => {
                busy = Some(e);
                break;
            }
            Ok(_) => waited_ok += 1, // the holder had not started yet
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let busy = busy.expect("a call found no free instance");
    assert_eq!(busy.health_kind(), Some(ErrorKind::Failed));
    let e = holder.join().expect("holder").expect_err("times out");
    assert_eq!(e.health_kind(), Some(ErrorKind::Timeout), "{e}");
    // A plugin not loaded has no revision to count on.
    let e = host.call("absent", b"x").expect_err("not loaded");
    assert_eq!(e.health_kind(), None);
    // The app marks a call that returned as failed, through its pin or by name.
    let pinned = host.pin("p").expect("pin");
    pinned.call(b"ok").expect("ok");
    pinned.mark_failed();
    host.call("p", b"ok").expect("ok");
    assert!(host.mark_failed("p"), "the serving revision");
    host.call("p", b"ok").expect("ok");
    assert!(host.mark_failed_on("p", "r1"), "a revision by name");
    assert!(!host.mark_failed_on("p", "r9"), "no such revision");
    assert!(!host.mark_failed("absent"), "nothing serves");

    let reports = host.take_health();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let c = one(&reports, "p", "r1");
    assert_eq!(c.errors.trap, 3);
    assert_eq!(c.errors.memory, 1);
    assert_eq!(c.errors.timeout, 1);
    assert_eq!(c.errors.failed, 4, "busy + three marks");
    // ok: 10, those made while waiting for the holder, 3 at the end; failed: 3 + 1 + 1 + 1.
    assert_eq!(c.calls, 10 + waited_ok + 3 + 6);
    assert_eq!(timed(&c), c.calls, "every call has a latency");
    // The timeout took its deadline (300 ms): bucket 14 holds 200-500 ms.
    assert!(c.latency_us[14] >= 1, "{:?}", c.latency_us);
    assert!(c.check().is_ok());
    assert!(host.take_health().is_empty(), "drained: nothing new");
}

#[test]
fn calls_count_on_the_revision_they_ran_on_across_a_swap_and_an_unload() {
    let host = PluginHost::new(config()).expect("host");
    host.load(request("p", "r1", plugin("v01", "")))
        .expect("r1");
    host.call("p", b"a").expect("call");
    let old = host.pin("p").expect("pin r1");
    host.load(request("p", "r2", plugin("v02", "")))
        .expect("r2");
    for _ in 0..3 {
        host.call("p", b"b").expect("call r2");
    }
    // In flight on r1 after the swap: still r1's.
    old.call(b"c").expect("pinned r1");
    old.call(b"d").expect("pinned r1");
    let reports = host.take_health();
    assert_eq!(one(&reports, "p", "r1").calls, 3);
    assert_eq!(one(&reports, "p", "r2").calls, 3);
    // r1 is only held by the pin now; its last calls come after the drain, then it goes.
    old.call(b"e").expect("pinned r1");
    drop(old);
    host.unload("p");
    let reports = host.take_health();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(one(&reports, "p", "r1").calls, 1, "not lost to the swap");
    assert!(host.take_health().is_empty());
}

#[test]
fn concurrent_calls_during_swaps_add_up_to_the_calls_made() {
    let host = Arc::new(
        PluginHost::new(HostConfig {
            // Wall-clock deadlines on a busy 2-core machine: generous, this is about counts.
            call_timeout: Duration::from_secs(5),
            ..config()
        })
        .expect("host"),
    );
    let versions = [faulty(), plugin("v02", "")];
    // Every 7th call asks to trap: the faulty version does, the other echoes. Each caller
    // counts what it made and what trapped, for the totals to be checked against.
    host.load(request("p", "r0", versions[0].clone()))
        .expect("r0");
    let stop = Arc::new(AtomicBool::new(false));
    let (made, trapped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..3)
        .map(|n| {
            let (host, stop, made, trapped) =
                (host.clone(), stop.clone(), made.clone(), trapped.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                    let input = if i.is_multiple_of(7) {
                        "trap".to_string()
                    } else {
                        format!("c{n}-{i}")
                    };
                    match host.call("p", input.as_bytes()) {
                        Ok(_) => {}
                        Err(CallError::Guest { .. }) => {
                            trapped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let mut total = Counts::default();
    let mut revisions = std::collections::BTreeSet::new();
    for swap in 1..=20 {
        std::thread::sleep(Duration::from_millis(15));
        host.load(request(
            "p",
            &format!("r{swap}"),
            versions[swap % 2].clone(),
        ))
        .expect("swap");
        for r in host.take_health() {
            assert!(r.counts.check().is_ok(), "every report is valid: {r:?}");
            revisions.insert(r.revision.clone());
            total.merge(&r.counts);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().expect("caller");
    }
    for r in host.take_health() {
        assert!(r.counts.check().is_ok(), "{r:?}");
        revisions.insert(r.revision.clone());
        total.merge(&r.counts);
    }
    let made = made.load(Ordering::Relaxed);
    assert!(made > 100, "the callers ran: {made}");
    assert_eq!(total.calls, made, "every call counted once");
    assert_eq!(timed(&total), made, "every call timed once");
    assert_eq!(total.errors.trap, trapped.load(Ordering::Relaxed));
    assert_eq!(total.errors.total(), total.errors.trap);
    assert!(
        revisions.len() > 2,
        "calls spread over the swaps: {revisions:?}"
    );
    assert!(host.take_health().is_empty());
}
