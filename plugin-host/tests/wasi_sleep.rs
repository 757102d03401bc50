//! A WASI sleep (`poll_oneoff` on a clock) is host code, where epoch interruption cannot
//! reach: the host bounds it by the call's deadline itself, so a sleeping plugin times out
//! like a looping one and gives its instance back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hotload_host::{CallError, Fault, GuestFailure, HostConfig, PluginHost};

/// `handle` looks at the first input byte:
/// - `s`: sleeps 10 s (one relative monotonic clock subscription, as Rust's
///   `thread::sleep` and Go's `time.Sleep` on wasip1 do);
/// - `a`: sleeps until 10 s from now on the monotonic clock (an absolute subscription, as
///   wasi-libc's `clock_nanosleep(TIMER_ABSTIME)` does);
/// - `n`: naps 20 ms on the realtime clock beside a 10 s monotonic one, and answers the 72
///   bytes at 128: the first event (32 bytes), padding, then `nevents` and the errno;
/// - anything else: echoes the input.
const SLEEPER: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  ;; Writes clock subscription number $i at 0 (48 bytes each).
  (func $sub (param $i i32) (param $userdata i64) (param $clock i32) (param $timeout i64)
             (param $flags i32)
    (local $at i32)
    (local.set $at (i32.mul (local.get $i) (i32.const 48)))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (i32.const 0))
    (i32.store offset=16 (local.get $at) (local.get $clock))
    (i64.store offset=24 (local.get $at) (local.get $timeout))
    (i64.store offset=32 (local.get $at) (i64.const 0))
    (i32.store16 offset=40 (local.get $at) (local.get $flags)))
  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32)
    (local.set $op (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $op) (i32.const 115)) ;; s
      (then
        (call $sub (i32.const 0) (i64.const 7) (i32.const 1) (i64.const 10000000000) (i32.const 0))
        (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))))
    (if (i32.eq (local.get $op) (i32.const 97)) ;; a
      (then
        (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 256)))
        (call $sub (i32.const 0) (i64.const 7) (i32.const 1)
          (i64.add (i64.load (i32.const 256)) (i64.const 10000000000)) (i32.const 1))
        (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))))
    (if (i32.eq (local.get $op) (i32.const 110)) ;; n
      (then
        (call $sub (i32.const 0) (i64.const 1) (i32.const 1) (i64.const 10000000000) (i32.const 0))
        (call $sub (i32.const 1) (i64.const 2) (i32.const 0) (i64.const 20000000) (i32.const 0))
        (i32.store (i32.const 196)
          (call $poll (i32.const 0) (i32.const 128) (i32.const 2) (i32.const 192)))
        (return (i64.or (i64.shl (i64.const 128) (i64.const 32)) (i64.const 72)))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))"#;

fn sleeper_host(cfg: HostConfig) -> PluginHost {
    let host = PluginHost::new(cfg).expect("host starts");
    let wasm = wat::parse_str(SLEEPER).expect("sleeper parses");
    host.load(request("sleepy", "r1", wasm)).expect("loads");
    host
}

fn assert_timeout(result: Result<Vec<u8>, CallError>) {
    match result {
        Err(CallError::Guest {
            failure: GuestFailure::Fault(Fault::Timeout),
            ..
        }) => {}
        other => panic!("want the deadline's timeout, got {other:?}"),
    }
}

#[test]
fn a_ten_second_sleep_times_out_at_the_call_deadline() {
    let host = sleeper_host(config());
    for op in ["sleep", "abs-sleep"] {
        let t = Instant::now();
        let result = host.call("sleepy", op.as_bytes());
        let took = t.elapsed();
        assert_timeout(result);
        assert_eq!(
            host.call("sleepy", op.as_bytes())
                .expect_err("times out")
                .to_string(),
            "plugin sleepy revision r1: handle failed: deadline exceeded (interrupted)",
            "the same error a CPU-bound loop gets"
        );
        // The deadline is 200 ms; a debug build on a loaded 2-core machine gets slack.
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(3),
            "{op}: returned after {took:?}"
        );
    }
    // The instances that timed out were replaced: the pool serves on.
    for _ in 0..2 * config().instances_per_revision {
        assert_eq!(host.call("sleepy", b"hi").expect("serves"), b"hi");
    }
}

#[test]
fn sleepers_twice_the_pool_size_do_not_exhaust_it() {
    let host = Arc::new(sleeper_host(HostConfig {
        checkout_timeout: Duration::from_secs(3),
        ..config()
    }));
    let sleepers = 2 * config().instances_per_revision;
    let t = Instant::now();
    let threads: Vec<_> = (0..sleepers)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || host.call("sleepy", b"sleep"))
        })
        .collect();
    for thread in threads {
        // A sleeper that held its instance for 10 s would leave the others `Busy`.
        assert_timeout(thread.join().expect("caller thread"));
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "sleepers done after {took:?}"
    );
    assert_eq!(host.call("sleepy", b"hello").expect("serves"), b"hello");
}

#[test]
fn a_nap_within_the_deadline_wakes_with_the_first_clock_event() {
    let host = sleeper_host(config());
    let t = Instant::now();
    let out = host.call("sleepy", b"nap").expect("naps and answers");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(20), "woke after {took:?}");
    let u64_at = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(u32_at(64), 1, "one event: the 20 ms clock");
    assert_eq!(u32_at(68), 0, "poll_oneoff succeeded");
    assert_eq!(
        u64_at(0),
        2,
        "event userdata names the realtime subscription"
    );
    assert_eq!(u16::from_le_bytes([out[8], out[9]]), 0, "event errno");
    assert_eq!(out[10], 0, "event type is clock");
}
