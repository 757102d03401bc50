//! [`CompiledModules`]: the modules this host compiled (or read from `cache_dir`), checked and
//! linked, kept in memory by digest, so that loading a revision again (a swap back, a
//! rollback, one module under two plugin names, a new config) reuses the very same module.
//!
//! Why not only the disk cache: a load from `cache_dir` deserializes a new copy of the code
//! (`mmap` and `mprotect` of the file), every instance of that copy maps its memory image
//! into its pool slot afresh (slots remember the image of the module that used them last,
//! not of the digest), and dropping the copy it replaces unmaps code and images again. Each
//! of those page-table changes flushes the TLB of every core running the process with an
//! interrupt, so the cores serving calls stop for every swap (docs/benchmarks.md, "App
//! SDKs"). The same module again maps nothing: the pool hands out the slots its instances
//! used before, with its image still in place, and its code stays where it was.
//!
//! What an entry holds: the module linked against the host's imports (`InstancePre`, which
//! owns the module) and the ABI capabilities found when it was checked. The digest was
//! checked against the delivered bytes before every lookup, so a hit is the same bytes.
//! Modules that failed to compile, to pass the ABI check or to link are not kept.
//!
//! Bounds: a module a revision still uses (serving, draining, pinned) is always kept, since
//! the revision holds it anyway. Of the others at most [`KEEP_UNUSED`] modules and
//! [`KEEP_UNUSED_BYTES`] of Wasm stay, least recently used out first; `cache_dir` still
//! serves the rest, and the first load after a restart.

use std::sync::{Arc, Mutex};

use wasmtime::InstancePre;

use crate::abi::Capabilities;
use crate::instance::StoreState;

/// A module ready to instantiate: checked against the ABI and linked.
pub(crate) struct Compiled {
    pub(crate) caps: Capabilities,
    pub(crate) pre: InstancePre<StoreState>,
}

/// Most modules kept that no revision uses: the previous revision of every plugin of a
/// typical app (a rollback, a rollout going back and forth) with room to spare. Not more:
/// an unused module still holds its machine code and memory image (several times its Wasm
/// size for a large plugin), and `cache_dir` serves beyond this at the cost of a deserialize.
pub(crate) const KEEP_UNUSED: usize = 8;

/// Most bytes of Wasm, summed over the modules kept that no revision uses, so a few large
/// plugins cannot make the count alone hold gigabytes of code.
pub(crate) const KEEP_UNUSED_BYTES: usize = 64 << 20;

struct Entry {
    digest_hex: String,
    /// Size of the module's Wasm: the measure of what the entry costs.
    wasm_bytes: usize,
    module: Arc<Compiled>,
}

/// The host's compiled modules by digest, least recently used first.
#[derive(Default)]
pub(crate) struct CompiledModules {
    entries: Mutex<Vec<Entry>>,
}

impl CompiledModules {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // Nothing under this lock can panic halfway through an update.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The module compiled from `digest_hex`, now the most recently used, or `None`.
    pub(crate) fn get(&self, digest_hex: &str) -> Option<Arc<Compiled>> {
        most_recent(&mut self.lock(), digest_hex)
    }

    /// Keeps a module that passed every check and returns the one to use: the module kept
    /// already if another load prepared the same digest meanwhile. Modules that no longer
    /// fit the bounds are returned by the second element, for the caller to drop outside the
    /// lock (dropping the last reference to a module unmaps its code).
    pub(crate) fn insert(
        &self,
        digest_hex: &str,
        wasm_bytes: usize,
        module: Compiled,
    ) -> (Arc<Compiled>, Vec<Arc<Compiled>>) {
        let mut entries = self.lock();
        // Looked up under the same lock as the push, so two loads of one digest keep one.
        if let Some(kept) = most_recent(&mut entries, digest_hex) {
            return (kept, Vec::new());
        }
        let module = Arc::new(module);
        entries.push(Entry {
            digest_hex: digest_hex.to_string(),
            wasm_bytes,
            module: module.clone(),
        });
        // In use: a revision holds it (the caller holds the one just added).
        let usage: Vec<(bool, usize)> = entries
            .iter()
            .map(|e| (Arc::strong_count(&e.module) > 1, e.wasm_bytes))
            .collect();
        let mut evicted = Vec::new();
        for at in evictions(&usage, KEEP_UNUSED, KEEP_UNUSED_BYTES)
            .into_iter()
            .rev()
        {
            evicted.push(entries.remove(at).module);
        }
        (module, evicted)
    }
}

/// The entry for `digest_hex`, moved to the most recently used end, if there is one.
fn most_recent(entries: &mut Vec<Entry>, digest_hex: &str) -> Option<Arc<Compiled>> {
    let at = entries.iter().position(|e| e.digest_hex == digest_hex)?;
    let entry = entries.remove(at);
    let module = entry.module.clone();
    entries.push(entry);
    Some(module)
}

/// Which entries to evict, given each one's `(in use, wasm bytes)` least recently used
/// first: the least recently used unused ones, until at most `keep` unused entries of at
/// most `keep_bytes` in all are left. Returns their positions, ascending. Pure.
pub(crate) fn evictions(usage: &[(bool, usize)], keep: usize, keep_bytes: usize) -> Vec<usize> {
    let mut count = usage.iter().filter(|(used, _)| !used).count();
    let mut bytes: usize = usage.iter().filter(|(used, _)| !used).map(|(_, b)| b).sum();
    let mut out = Vec::new();
    for (at, &(used, size)) in usage.iter().enumerate() {
        if count <= keep && bytes <= keep_bytes {
            break;
        }
        if !used {
            out.push(at);
            count -= 1;
            bytes -= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_evicted_within_the_bounds() {
        let usage = [(false, 10), (true, 10), (false, 10)];
        assert_eq!(evictions(&usage, 2, 20), Vec::<usize>::new());
    }

    #[test]
    fn the_least_recently_used_unused_go_first() {
        let usage = [(false, 1), (true, 1), (false, 1), (false, 1)];
        assert_eq!(evictions(&usage, 1, 100), [0, 2]);
    }

    #[test]
    fn modules_in_use_are_kept_whatever_the_bounds() {
        let usage = [(true, 50), (true, 50), (false, 50)];
        assert_eq!(evictions(&usage, 0, 0), [2]);
    }

    #[test]
    fn the_byte_bound_evicts_even_under_the_count() {
        let usage = [(false, 40), (false, 40), (false, 10)];
        assert_eq!(evictions(&usage, 8, 60), [0]);
        assert_eq!(evictions(&usage, 8, 10), [0, 1]);
    }
}
