//! Precompiled-module cache: compiled machine code on disk, keyed by the artifact's sha256
//! digest and the engine's compatibility hash (wasmtime version + codegen settings), so an
//! app restart or a rollback to a cached revision skips Cranelift entirely. Within one
//! process a revision loaded again comes from memory (`compiled.rs`), not from here: this
//! serves the first load of a module after a restart, and the modules memory no longer keeps.
//!
//! Files are written to a temp name and renamed, so a crash never leaves a half file under
//! a real key; a file that fails to deserialize is recompiled and overwritten. The
//! directory keeps the [`KEEP`] most recently used modules: every release brings a new
//! digest, and a cache that only grows would fill the app's disk.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Where a module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Compiled before: the module this host keeps in memory from an earlier load, or
    /// precompiled code from disk.
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

/// Precompiled modules kept: the serving revisions of every plugin and the ones a rollback
/// returns to fit many times over.
pub(crate) const KEEP: usize = 32;

/// The precompiled module for `digest_hex` in `dir`, if there is a usable one.
pub(crate) fn lookup(
    engine: &Engine,
    fingerprint: &str,
    dir: &Path,
    digest_hex: &str,
) -> Option<Module> {
    let path = cache_path(dir, digest_hex, fingerprint);
    if !path.exists() {
        return None;
    }
    // SAFETY: wasmtime requires that deserialized bytes were produced by `serialize` of a
    // compatible engine. Only this module writes into the cache directory (the app owns
    // it; it is not the sidecar's shared volume), names embed the digest of the source
    // and the engine fingerprint, and wasmtime re-checks the version header on load.
    match unsafe { Module::deserialize_file(engine, &path) } {
        Ok(m) => {
            touch(fingerprint, dir, digest_hex);
            Some(m)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "discarding unusable precompiled module");
            None
        }
    }
}

/// Marks the precompiled module for `digest_hex` as used now, the last to be pruned; also
/// when the host reused the module from memory, so a module that serves for long is not
/// pruned as stale and is still on disk after a restart. Nothing happens without a file.
pub(crate) fn touch(fingerprint: &str, dir: &Path, digest_hex: &str) {
    let path = cache_path(dir, digest_hex, fingerprint);
    if let Ok(file) = std::fs::File::options().append(true).open(&path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Stores a freshly compiled module in `dir` for next time; a failure to store is logged
/// and the module is used anyway.
pub(crate) fn save(
    module: &Module,
    fingerprint: &str,
    dir: &Path,
    digest_hex: &str,
) -> CacheOutcome {
    let path = cache_path(dir, digest_hex, fingerprint);
    match store(module, dir, &path) {
        Ok(()) => CacheOutcome::Miss,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot store precompiled module");
            CacheOutcome::Uncached
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
    tmp.persist(path).map_err(|e| e.error)?;
    prune(dir, KEEP)
}

/// Removes all but the `keep` most recently used precompiled modules in `dir`. A module
/// being loaded from a removed file is unaffected: it was mapped before.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut modules: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    modules.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, stale) in modules.into_iter().skip(keep) {
        std::fs::remove_file(stale)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_most_recently_used_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        for i in 0..5u64 {
            let path = dir.path().join(format!("{i}-ff.cwasm"));
            let file = std::fs::File::create(&path).expect("create");
            file.set_modified(epoch + std::time::Duration::from_secs(1_000 + i))
                .expect("mtime");
        }
        std::fs::write(dir.path().join("notes.txt"), b"not a module").expect("write");
        prune(dir.path(), 2).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3-ff.cwasm", "4-ff.cwasm", "notes.txt"]);
    }

    #[test]
    fn cache_path_embeds_digest_and_engine() {
        let p = cache_path(Path::new("/c"), "ab12", "ff00");
        assert_eq!(p, PathBuf::from("/c/ab12-ff00.cwasm"));
    }
}
