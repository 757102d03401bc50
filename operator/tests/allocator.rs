//! The operator binary allocates with jemalloc (`src/allocator.rs`): with a connection per
//! pod, glibc malloc's arenas fragment and the operator's memory creeps for minutes
//! (docs/benchmarks.md, "The allocator").

#![cfg(all(feature = "jemalloc", not(target_env = "msvc")))]

use std::process::Command;

/// jemalloc prints its statistics at exit when its (prefixed) configuration variable asks
/// for them; the system allocator ignores the variable.
#[test]
fn the_operator_binary_allocates_with_jemalloc() {
    let out = Command::new(env!("CARGO_BIN_EXE_hotload-operator"))
        .arg("crd")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("running hotload-operator crd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hotload-operator crd failed: {stderr}"
    );
    assert!(
        stderr.contains("Begin jemalloc statistics"),
        "no jemalloc statistics at exit: {stderr}"
    );
    assert_eq!(hotload_operator::allocator::NAME, "jemalloc");
}
