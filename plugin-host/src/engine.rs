//! The one wasmtime [`Engine`] an app shares across all its plugins: pooling allocator,
//! epoch interruption, and the background ticker that advances the epoch.
//!
//! Epochs rather than fuel: an epoch check is a load and a compare at loop heads, fuel
//! instruments every basic block (~10–30 % slower). A deadline of `call_timeout` is
//! `ceil(call_timeout / epoch_tick)` ticks, so its precision is one tick. Epochs only
//! interrupt guest code; the one host function that can block (a WASI sleep) checks the same
//! deadline itself (`wasi_poll.rs`).
//!
//! What a module may declare is bounded by the pooling allocator, checked when it is compiled
//! or instantiated (a load that breaks a bound fails with wasmtime's reason): one memory of at
//! most [`HostConfig::max_memory_bytes`], one table of at most [`MAX_TABLE_ELEMENTS`]
//! elements, and at most [`MAX_INSTANCE_METADATA_BYTES`] of instance metadata (functions,
//! globals and the like). Guest stacks get wasmtime's default of 512 KiB.
//!
//! Swaps must not slow the calls that run meanwhile (docs/benchmarks.md, "App SDKs"). Every
//! load builds a revision's instances and frees the old revision's, and wasmtime's defaults
//! do that with virtual memory: a freed linear memory is reset with `madvise(DONTNEED)` and a
//! memory image is `mmap`ped per module. Each unmapping of resident pages makes the kernel
//! flush the TLB of every core running the process, with an interrupt (a TLB shootdown), so
//! the core serving a call stops for it; and the next instance in that slot page-faults
//! again on its first writes. So the pool resets memories and tables with `memset` up to
//! [`KEEP_RESIDENT_BYTES`] of dirty pages (found with the `PAGEMAP_SCAN` ioctl where the
//! kernel has it, Linux 6.7+), and reuses freed slots before untouched ones. Memory images
//! stay mapped per module (copy-on-write), and a slot keeps the image of the module that used
//! it last: the host keeps modules by digest (`compiled.rs`), so a revision loaded again is
//! the same module, whose instances find their image already in place (the pool prefers
//! such slots) and map nothing. Copying the data segments into every instance
//! instead would spare the shootdowns of unmapping an image, but it made instantiating the
//! Go plugin (megabytes of data) several times slower (its conformance case: 43 s against
//! 8 s in a debug build), and loads must stay short.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Limits and knobs of a host; every field has a production default.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Ceiling of one instance's linear memory, in bytes.
    pub max_memory_bytes: usize,
    /// Longest a single guest call (request, self-check, state hand-over) may run, counting
    /// the time it spends sleeping in WASI (`poll_oneoff`) as well as running.
    pub call_timeout: Duration,
    /// Granularity of the epoch ticker (the deadline's precision).
    pub epoch_tick: Duration,
    /// Warm instances per loaded revision: the most calls one plugin serves in parallel.
    pub instances_per_revision: usize,
    /// How long a call waits for a free instance before it fails `Busy`.
    pub checkout_timeout: Duration,
    /// Most named plugins one host holds; sizes the pooling allocator.
    pub max_plugins: usize,
    /// Directory of precompiled modules (`None` = compile every time).
    pub cache_dir: Option<PathBuf>,
    /// Largest module, in bytes of binary Wasm, a load accepts; a larger one is refused
    /// (`LoadError::ModuleTooLarge`) before it is hashed or compiled. The compiler's memory
    /// grows with the code it is given, so this is also the bound on a compile's memory.
    /// The default matches the sidecar's `--max-artifact-bytes`.
    pub max_module_bytes: usize,
    /// Longest a compile may take. The compile runs on a thread of its own; past this budget
    /// the load fails (`LoadError::CompileTimeout`) and the old revision keeps serving, while
    /// the abandoned compile finishes in the background (it cannot be stopped; with the
    /// module size bounded it ends) and its result is dropped, not cached. Loading from
    /// `cache_dir` is not a compile and is not bounded by this. The default leaves room for
    /// unoptimized (debug) builds of the host: there, a 2 MiB Go plugin took 20–40 s to
    /// compile on two busy cores; an optimized build is many times faster.
    pub compile_timeout: Duration,
}

/// Most elements a plugin's table may have (declared or grown to).
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Dirty bytes of a freed linear memory (and of a table) that are reset in place with
/// `memset` and stay resident for the next instance in that slot; beyond this the rest is
/// returned to the kernel with `madvise`, which interrupts every core running the process.
/// Also the most a free slot keeps resident.
pub(crate) const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Most bytes of wasmtime's per-instance metadata, which grows with the functions, globals
/// and tables a module declares.
pub const MAX_INSTANCE_METADATA_BYTES: usize = 1 << 20;

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_memory_bytes: 64 << 20,
            call_timeout: Duration::from_millis(500),
            epoch_tick: Duration::from_millis(5),
            instances_per_revision: 4,
            checkout_timeout: Duration::from_secs(2),
            max_plugins: 16,
            cache_dir: None,
            max_module_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(120),
        }
    }
}

impl HostConfig {
    /// Epoch ticks that make up `call_timeout` (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        self.call_timeout.as_nanos().div_ceil(tick).max(1) as u64
    }

    /// Pool slots needed: per plugin the serving revision, a draining one and a candidate,
    /// plus one replacement instance each, so a load never starves on slots in a steady state.
    pub fn pool_slots(&self) -> u32 {
        let per_plugin = 3 * (self.instances_per_revision + 1);
        u32::try_from(self.max_plugins.saturating_mul(per_plugin)).unwrap_or(u32::MAX)
    }
}

/// Builds the engine. Fails only on a configuration wasmtime rejects.
pub(crate) fn build_engine(cfg: &HostConfig) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let slots = cfg.pool_slots();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instance_size(MAX_INSTANCE_METADATA_BYTES)
        .max_memory_size(cfg.max_memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto)
        // Reuse a freed slot (its pages resident) before an untouched one, which would
        // page-fault on every first write; this also bounds what free slots keep resident.
        .max_unused_warm_slots(0);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Swaps compile a whole module; spreading functions over cores keeps loads short.
        .parallel_compilation(true);
    Engine::new(&config)
}

/// Advances the engine's epoch every tick until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hotload-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up_and_never_zero() {
        let mut c = HostConfig {
            call_timeout: Duration::from_millis(501),
            ..HostConfig::default()
        };
        assert_eq!(c.deadline_ticks(), 101);
        c.call_timeout = Duration::ZERO;
        assert_eq!(c.deadline_ticks(), 1);
    }

    #[test]
    fn pool_slots_cover_serving_draining_and_candidate() {
        let c = HostConfig {
            max_plugins: 2,
            instances_per_revision: 4,
            ..HostConfig::default()
        };
        assert_eq!(c.pool_slots(), 30);
    }
}
