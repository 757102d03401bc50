//! Every refused load keeps the old revision serving and says precisely why.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hotload_host::{Fault, GuestFailure, LoadError, Phase, PluginHost};

fn host_serving_v1() -> PluginHost {
    let host = PluginHost::new(config()).expect("host starts");
    host.load(request("auth", "r1", plugin("v01", SAVE_STATE)))
        .expect("v1 loads");
    for _ in 0..3 {
        host.call("auth", b"x").expect("v1 serves");
    }
    host
}

/// Asserts that r1 still serves, with its state (3 handled requests) untouched.
fn assert_v1_serves(host: &PluginHost) {
    assert_eq!(
        host.serving("auth").map(|r| r.revision),
        Some("r1".to_string())
    );
    assert_eq!(count(host, "auth"), 3);
    let (tag, body) = tag_of(&host.call("auth", b"hello").expect("call")).expect("tagged");
    assert_eq!((tag.as_str(), body.as_slice()), ("v01", &b"hello"[..]));
}

fn guest_failure(err: LoadError, want_phase: Phase) -> GuestFailure {
    match err {
        LoadError::Guest { phase, detail, .. } if phase == want_phase => detail,
        other => panic!("want a {want_phase} failure, got {other}"),
    }
}

#[test]
fn invalid_wasm_is_refused_with_the_parser_reason() {
    let host = host_serving_v1();
    let err = host
        .load(request("auth", "r2", b"\0asm\x01\0\0\0garbage".to_vec()))
        .expect_err("refused");
    assert!(matches!(err, LoadError::InvalidWasm { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("plugin auth revision r2: invalid wasm"),
        "{err}"
    );
    assert_v1_serves(&host);
}

#[test]
fn digest_mismatch_is_refused_before_compiling() {
    let host = host_serving_v1();
    let mut req = request("auth", "r2", plugin("v02", ""));
    req.wasm.push(0);
    let err = host.load(req).expect_err("refused");
    assert!(matches!(err, LoadError::DigestMismatch { .. }), "{err}");
    assert_v1_serves(&host);
}

#[test]
fn missing_export_is_an_abi_violation() {
    let host = host_serving_v1();
    let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("parses");
    let err = host.load(request("auth", "r2", wasm)).expect_err("refused");
    assert!(err.to_string().contains("missing export `alloc`"), "{err}");
    assert_v1_serves(&host);
}

#[test]
fn self_check_status_is_reported() {
    let host = host_serving_v1();
    let err = host
        .load(request("auth", "r2", plugin("v02", SELF_CHECK_STATUS_7)))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "plugin auth revision r2: self-check failed: returned status 7"
    );
    assert_v1_serves(&host);
}

#[test]
fn trap_in_self_check_is_reported() {
    let host = host_serving_v1();
    let err = host
        .load(request("auth", "r2", plugin("v02", SELF_CHECK_TRAP)))
        .expect_err("refused");
    let detail = guest_failure(err, Phase::SelfCheck);
    assert!(
        matches!(&detail, GuestFailure::Fault(Fault::Trap(t)) if t.contains("unreachable")),
        "{detail}"
    );
    assert_v1_serves(&host);
}

#[test]
fn infinite_loop_in_self_check_is_cut_off_at_the_deadline() {
    let host = host_serving_v1();
    let t = Instant::now();
    let err = host
        .load(request("auth", "r2", plugin("v02", SELF_CHECK_LOOP)))
        .expect_err("refused");
    let took = t.elapsed();
    assert_eq!(
        guest_failure(err, Phase::SelfCheck),
        GuestFailure::Fault(Fault::Timeout)
    );
    // 200 ms deadline; generous bound for a loaded 2-core CI machine and a debug build.
    assert!(took < Duration::from_secs(5), "loop cut off after {took:?}");
    assert_v1_serves(&host);
}

#[test]
fn memory_blowup_in_self_check_hits_the_limit() {
    let host = host_serving_v1();
    let err = host
        .load(request(
            "auth",
            "r2",
            plugin("v02", SELF_CHECK_MEMORY_BLOWUP),
        ))
        .expect_err("refused");
    let detail = guest_failure(err, Phase::SelfCheck);
    assert!(
        matches!(detail, GuestFailure::Fault(Fault::MemoryLimit { limit, .. }) if limit == 16 << 20),
        "{detail}"
    );
    assert_v1_serves(&host);
}

#[test]
fn initial_memory_larger_than_the_limit_is_refused() {
    let host = host_serving_v1();
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1000)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("parses");
    let err = host.load(request("auth", "r2", wasm)).expect_err("refused");
    // The pooling allocator checks declared minimums when the module is compiled.
    assert!(matches!(err, LoadError::InvalidWasm { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("exceeds the limit of 0x1000000 bytes"),
        "{err}"
    );
    assert_v1_serves(&host);
}

#[test]
fn failing_state_restore_keeps_old_revision_and_its_state() {
    let host = host_serving_v1();
    let err = host
        .load(request("auth", "r2", plugin("v02", RESTORE_STATE_FAILS)))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "plugin auth revision r2: restore-state failed: returned status 3"
    );
    assert_v1_serves(&host);
}

#[test]
fn looping_request_times_out_and_the_pool_heals() {
    let host = PluginHost::new(config()).expect("host starts");
    host.load(request("slow", "r1", looping_handle()))
        .expect("loads: no self-check");
    // Twice as many faults as the pool has instances: each faulted instance is dropped and
    // replaced, so every call gets a fresh instance and times out again. A pool that kept
    // counting dropped instances would run dry and answer Busy after the first four.
    for call in 0..2 * config().instances_per_revision {
        let err = host.call("slow", b"x").expect_err("interrupted");
        assert!(
            err.to_string().contains("deadline exceeded"),
            "call {call}: {err}"
        );
    }
}

#[test]
fn a_trap_in_save_state_keeps_the_old_revision_serving_from_sound_instances() {
    let host = host_serving_v1();
    // Overwrites the old revision's tag in its memory, then traps: that instance is unsound.
    let save_state_trap = r#"(func (export "save_state") (result i64)
        (i32.store (i32.const 0) (i32.const 0x58585858)) (unreachable))"#;
    let v1 = plugin("v01", save_state_trap);
    host.load(request("trap", "r1", v1)).expect("loads");
    let err = host
        .load(request("trap", "r2", plugin("v02", RESTORE_STATE)))
        .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("plugin trap revision r2: save-state failed"),
        "{err}"
    );
    assert_eq!(
        host.serving("trap").map(|r| r.revision),
        Some("r1".to_string())
    );
    for _ in 0..8 {
        let (tag, _) = tag_of(&host.call("trap", b"x").expect("r1 serves")).expect("tagged");
        assert_eq!(tag, "v01", "the instance that trapped never serves again");
    }
    assert_v1_serves(&host);
}

#[test]
fn failed_first_loads_leave_no_slot_behind() {
    let host = PluginHost::new(config()).expect("host starts");
    for i in 0..6 {
        let err = host
            .load(request(&format!("bad{i}"), "r1", b"\0asm broken".to_vec()))
            .expect_err("refused");
        assert!(matches!(err, LoadError::InvalidWasm { .. }), "{err}");
    }
    assert!(host.plugins().is_empty());
    for i in 0..4 {
        host.load(request(&format!("good{i}"), "r1", plugin("v01", "")))
            .expect("max_plugins counts only plugins that loaded");
    }
}
