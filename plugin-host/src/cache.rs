//! Precompiled-module cache: compiled machine code on disk, keyed by the artifact's sha256
//! digest and the engine's compatibility hash (wasmtime version + codegen settings), so an
//! app restart or a rollback to a cached revision skips Cranelift entirely.
//!
//! Files are written to a temp name and renamed, so a crash never leaves a half file under
//! a real key; a file that fails to deserialize is recompiled and overwritten.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Where a module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code from disk.
    Hit,
    /// Compiled and stored for next time.
    Miss,
    /// Compiled; no cache directory configured (or storing failed, logged).
    Uncached,
}

/// Feeds `Hash` output into sha256 so the key is stable across processes (std's
/// `DefaultHasher` is not guaranteed to be).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the key is taken from the full sha256 state
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Hex fingerprint of everything that makes precompiled code (in)compatible with `engine`.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The cache file for a digest: pure, so the naming scheme is tested beside it.
pub(crate) fn cache_path(dir: &Path, digest_hex: &str, fingerprint: &str) -> PathBuf {
    dir.join(format!("{digest_hex}-{fingerprint}.cwasm"))
}

/// Compiles `wasm`, or loads its precompiled code from `dir`.
pub(crate) fn load_module(
    engine: &Engine,
    fingerprint: &str,
    dir: Option<&Path>,
    digest_hex: &str,
    wasm: &[u8],
) -> wasmtime::Result<(Module, CacheOutcome)> {
    let Some(dir) = dir else {
        return Ok((Module::new(engine, wasm)?, CacheOutcome::Uncached));
    };
    let path = cache_path(dir, digest_hex, fingerprint);
    if path.exists() {
        // SAFETY: wasmtime requires that deserialized bytes were produced by `serialize` of a
        // compatible engine. Only this module writes into the cache directory (the app owns
        // it; it is not the sidecar's shared volume), names embed the digest of the source
        // and the engine fingerprint, and wasmtime re-checks the version header on load.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(m) => return Ok((m, CacheOutcome::Hit)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "discarding unusable precompiled module")
            }
        }
    }
    let module = Module::new(engine, wasm)?;
    match store(&module, dir, &path) {
        Ok(()) => Ok((module, CacheOutcome::Miss)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot store precompiled module");
            Ok((module, CacheOutcome::Uncached))
        }
    }
}

/// Writes the precompiled module under a temp name of its own (two slots may precompile the
/// same digest at once) and renames it into place.
fn store(module: &Module, dir: &Path, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_path_embeds_digest_and_engine() {
        let p = cache_path(Path::new("/c"), "ab12", "ff00");
        assert_eq!(p, PathBuf::from("/c/ab12-ff00.cwasm"));
    }
}
