//! An untrusted module cannot take unbounded time or memory to compile: one over the size
//! limit is refused before it is hashed, and a compile past its time budget is abandoned,
//! in both cases with the old revision serving on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hotload_host::{CacheOutcome, HostConfig, LoadError, PluginHost};

/// A valid plugin of `funcs` extra functions of 200 arithmetic instructions each: about a
/// second of Cranelift per 100 functions in a debug build, still far above a millisecond
/// in a release one.
fn slow_to_compile(funcs: usize) -> Vec<u8> {
    let mut text = String::from(
        r#"(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))"#,
    );
    for _ in 0..funcs {
        text.push_str("\n  (func (param $x i32) (result i32) (local.get $x)");
        for k in 0..100 {
            text.push_str(&format!(
                " (i32.mul (i32.const {k})) (i32.add (local.get $x))"
            ));
        }
        text.push(')');
    }
    text.push(')');
    wat::parse_str(&text).expect("generated module parses")
}

/// r1 of `auth` serves with 3 requests handled, as in load_failures.rs.
fn assert_v1_serves(host: &PluginHost) {
    assert_eq!(
        host.serving("auth").map(|r| r.revision),
        Some("r1".to_string())
    );
    assert_eq!(count(host, "auth"), 3);
    let (tag, body) = tag_of(&host.call("auth", b"hello").expect("call")).expect("tagged");
    assert_eq!((tag.as_str(), body.as_slice()), ("v01", &b"hello"[..]));
}

fn serve_v1(host: &PluginHost) -> CacheOutcome {
    let loaded = host
        .load(request("auth", "r1", plugin("v01", "")))
        .expect("v1 loads");
    for _ in 0..3 {
        host.call("auth", b"x").expect("v1 serves");
    }
    loaded.cache
}

/// The base plugin padded with a data segment to `size` bytes: valid, only big.
fn padded_plugin(size: usize) -> Vec<u8> {
    let base = plugin("v02", "").len();
    // A data segment costs its bytes plus a few of framing (a LEB128 length among them).
    let framing = plugin("v02", r#"(data (i32.const 40000) "")"#).len() - base;
    let padding = size - base - framing;
    let wasm = plugin(
        "v02",
        &format!(r#"(data (i32.const 40000) "{}")"#, "x".repeat(padding)),
    );
    let extra = wasm.len() - size; // the length's LEB128 grew with the padding
    let wasm = plugin(
        "v02",
        &format!(
            r#"(data (i32.const 40000) "{}")"#,
            "x".repeat(padding - extra)
        ),
    );
    assert_eq!(wasm.len(), size, "padding arithmetic");
    wasm
}

#[test]
fn a_module_over_the_size_limit_is_refused_before_compiling() {
    let host = PluginHost::new(HostConfig {
        max_module_bytes: 4096,
        ..config()
    })
    .expect("host starts");
    serve_v1(&host);
    let mut req = request("auth", "r2", padded_plugin(4097));
    // A malformed digest too: the size is checked first, before anything else is looked at.
    req.digest = "sha256:nonsense".into();
    let err = host.load(req).expect_err("refused");
    assert!(matches!(err, LoadError::ModuleTooLarge { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "plugin auth revision r2: module is 4097 bytes, over the limit of 4096 bytes"
    );
    assert_v1_serves(&host);
    host.load(request("auth", "r2", padded_plugin(4096)))
        .expect("a module of exactly the limit loads");
}

#[test]
fn a_compile_past_its_budget_fails_and_the_old_revision_keeps_serving() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cached = |compile_timeout| HostConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        compile_timeout,
        ..config()
    };
    // r1 is compiled once with room to spare; the host under test loads it from the cache,
    // which is not a compile, so r1 serves whatever the budget (and however loaded the
    // machine running this test is).
    let warm = PluginHost::new(cached(Duration::from_secs(600))).expect("host starts");
    assert_eq!(serve_v1(&warm), CacheOutcome::Miss);
    drop(warm);
    let host = PluginHost::new(cached(Duration::from_millis(1))).expect("host starts");
    assert_eq!(serve_v1(&host), CacheOutcome::Hit);

    let slow = slow_to_compile(300);
    for attempt in 0..2 {
        let t = Instant::now();
        let err = host
            .load(request("auth", "r2", slow.clone()))
            .expect_err("the compile takes far longer than 1 ms");
        let took = t.elapsed();
        assert!(matches!(err, LoadError::CompileTimeout { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "plugin auth revision r2: compile did not finish within its budget of 1 ms"
        );
        // The load does not wait for the abandoned compile (seconds in a debug build).
        assert!(
            took < Duration::from_millis(500),
            "attempt {attempt}: gave up after {took:?}"
        );
    }
    assert_v1_serves(&host);
}
