//! Turning an untrusted module into code under a budget: a size limit checked before
//! anything else, and a wall-clock limit on the compile itself.
//!
//! ```text
//!  load ── size ≤ max_module_bytes? ── digest ── cache hit? ──────────────────► Module
//!                                                    │ miss
//!                                                    └─ thread "hotload-compile": Module::new
//!                                                         ├─ done within compile_timeout ─► Module (cached)
//!                                                         └─ not done: load fails, the thread
//!                                                            runs on and its result is dropped
//! ```
//! Cranelift cannot be interrupted, so the budget is enforced by not waiting: the loading
//! thread gives up, the slot keeps its serving revision, and the abandoned compile (bounded
//! by the size limit) ends on its own. Its result is not cached either, so a retry of the
//! same module meets the same budget.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use wasmtime::{Engine, Module};

use crate::cache::{self, CacheOutcome};

/// Why no module came out.
#[derive(Debug)]
pub(crate) enum CompileError {
    /// wasmtime refused the bytes (parse, validation, or a declared limit).
    Invalid(String),
    /// The compile did not finish within the budget.
    Timeout(Duration),
    /// No thread could be started for the compile.
    Thread(std::io::Error),
}

/// The module's code: from the cache in `dir` if there, else compiled within `budget` (and
/// stored in `dir` for next time).
pub(crate) fn load_module(
    engine: &Engine,
    fingerprint: &str,
    dir: Option<&Path>,
    digest_hex: &str,
    wasm: &Arc<Vec<u8>>,
    budget: Duration,
) -> Result<(Module, CacheOutcome), CompileError> {
    if let Some(module) = dir.and_then(|d| cache::lookup(engine, fingerprint, d, digest_hex)) {
        return Ok((module, CacheOutcome::Hit));
    }
    let module = compile_within(engine, wasm.clone(), budget)?;
    let cache = match dir {
        Some(dir) => cache::save(&module, fingerprint, dir, digest_hex),
        None => CacheOutcome::Uncached,
    };
    Ok((module, cache))
}

/// Compiles on a thread of its own and waits at most `budget` for it.
fn compile_within(
    engine: &Engine,
    wasm: Arc<Vec<u8>>,
    budget: Duration,
) -> Result<Module, CompileError> {
    let (done, result) = mpsc::sync_channel(1);
    let engine = engine.clone();
    std::thread::Builder::new()
        .name("hotload-compile".into())
        .spawn(move || {
            let module = Module::new(&engine, wasm.as_slice());
            // Fails only if the load gave up waiting: the module is dropped here.
            let _ = done.send(module);
        })
        .map_err(CompileError::Thread)?;
    match result.recv_timeout(budget) {
        Ok(Ok(module)) => Ok(module),
        Ok(Err(e)) => Err(CompileError::Invalid(format!("{e:#}"))),
        Err(RecvTimeoutError::Timeout) => Err(CompileError::Timeout(budget)),
        Err(RecvTimeoutError::Disconnected) => {
            Err(CompileError::Invalid("the compiler panicked".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn a_compile_within_budget_returns_the_module() {
        let engine = Engine::default();
        let wasm = Arc::new(MINIMAL.to_vec());
        let module = compile_within(&engine, wasm, Duration::from_secs(60));
        assert!(module.is_ok(), "{module:?}");
    }

    #[test]
    fn invalid_bytes_keep_the_compiler_reason() {
        let engine = Engine::default();
        let wasm = Arc::new(b"\0asm\x01\0\0\0garbage".to_vec());
        let err = compile_within(&engine, wasm, Duration::from_secs(60)).expect_err("invalid");
        assert!(matches!(err, CompileError::Invalid(_)), "{err:?}");
    }
}
