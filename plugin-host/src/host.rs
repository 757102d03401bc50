//! [`PluginHost`]: named plugin slots, each holding its serving revision in an `ArcSwap`.
//!
//! ```text
//!  load(req) ── size, digest ─ module kept in memory (or: disk cache or budgeted compile,
//!      │         ABI check, link, then kept) ─ instantiate pool ─ configure
//!      │                                                           │
//!      │        self_check ─ state hand-over (old.save → new.restore) ─ before_unload
//!      │                                                           │
//!      └──────────────── slot.current.store(new)  ◄── the only critical section
//!  call(name) ── slot.current.load_full() ── checkout instance ── handle ── return
//!  pin(name)  ── slot.current.load_full() ── Pinned ── call, call, … ── drop
//! ```
//! Everything before the store happens off the request path; a failure anywhere leaves the
//! slot untouched. So does everything after: the old revision is freed by the host's reaper
//! thread, whoever drops it last (`teardown.rs`). A call holds an `Arc` to the revision it started on, so it finishes there;
//! a [`Pinned`] holds one for as long as a request needs several calls on one revision.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use wasmtime::{Engine, Linker};

use crate::abi;
use crate::cache::{self, CacheOutcome};
use crate::compile::{self, CompileError};
use crate::compiled::{Compiled, CompiledModules};
use crate::digest::{parse_sha256, sha256_digest};
use crate::engine::{EpochTicker, HostConfig, build_engine};
use crate::error::{CallError, GuestFailure, LoadError, Phase};
use crate::health::Meters;
use crate::hooks::{HostHooks, LoadEvent, NoHooks, UnloadEvent};
use crate::instance::{CallLimit, StoreState, describe_exports};
use crate::pinned::Pinned;
use crate::revision::{InstanceError, Remains, Revision, RevisionId, RevisionLimits};
use crate::teardown::{Reaper, ReaperThread};

/// A request to make `revision` of `plugin` the serving one.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// Plugin slot name.
    pub plugin: String,
    /// Revision name (opaque to the host).
    pub revision: String,
    /// Expected `sha256:<hex>` of `wasm`.
    pub digest: String,
    /// Config bytes handed to the plugin's `configure` export.
    pub config: Vec<u8>,
    /// The module (binary Wasm).
    pub wasm: Vec<u8>,
}

impl LoadRequest {
    /// Reads the module from `path` (the sidecar's store on the shared volume).
    pub fn from_file(
        plugin: &str,
        revision: &str,
        path: &Path,
        digest: &str,
        config: Vec<u8>,
    ) -> Result<Self, LoadError> {
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            plugin: plugin.into(),
            revision: revision.into(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(LoadRequest {
            plugin: plugin.into(),
            revision: revision.into(),
            digest: digest.into(),
            config,
            wasm,
        })
    }
}

/// Whether state moved across the swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateHandover {
    /// No previous revision, or one side lacks the exports.
    None,
    /// This many bytes of state were restored into every new instance.
    Restored(usize),
}

/// A successful load.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The revision now serving.
    pub revision: String,
    /// `false` when the request named the revision already serving (nothing was done).
    pub swapped: bool,
    /// Where the compiled code came from.
    pub cache: CacheOutcome,
    /// Whether the plugin exported a self-check (and passed it).
    pub self_checked: bool,
    /// State hand-over result.
    pub state: StateHandover,
    /// Wall time of compile (or cache load).
    pub compile: Duration,
    /// Wall time of the whole load.
    pub total: Duration,
    /// Time of the atomic swap alone.
    pub swap: Duration,
}

/// What a load request means given what is serving. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPlan {
    /// The same revision, digest and config already serve: answer `Loaded` again.
    AlreadyServing,
    /// Build and swap in a new revision.
    Swap,
}

/// Decides whether a load needs work (a reconnecting sidecar re-sends the whole set).
pub fn plan_load(current: Option<&RevisionId>, wanted: &RevisionId) -> LoadPlan {
    match current {
        Some(c) if c == wanted => LoadPlan::AlreadyServing,
        _ => LoadPlan::Swap,
    }
}

struct Slot {
    current: ArcSwapOption<Revision>,
    /// Serializes loads of one plugin; other plugins load concurrently.
    loading: Mutex<()>,
}

/// The app's plugin host: one engine, many named plugins.
pub struct PluginHost {
    engine: Engine,
    fingerprint: String,
    config: HostConfig,
    linker: Linker<StoreState>,
    /// Modules already compiled, checked and linked, by digest (see `compiled.rs`).
    compiled: CompiledModules,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    hooks: Arc<dyn HostHooks>,
    /// The counters of every revision that served and has counts left to take.
    meters: Meters,
    _ticker: EpochTicker,
    /// Frees dropped revisions off the request path (see `teardown.rs`).
    reaper: Arc<Reaper<Remains>>,
    /// Declared after `slots`: revisions the host still holds are freed by the reaper too,
    /// before its thread ends.
    _reaper_thread: ReaperThread<Remains>,
}

/// The host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime rejected the configuration.
    #[error("cannot configure wasm engine: {0}")]
    Engine(String),
    /// The epoch thread could not be spawned.
    #[error("cannot start epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
    /// The reaper thread could not be spawned.
    #[error("cannot start reaper thread: {0}")]
    Reaper(std::io::Error),
}

impl PluginHost {
    /// Starts a host with no hooks.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        Self::with_hooks(config, Arc::new(NoHooks))
    }

    /// Starts a host that reports load events to `hooks`.
    pub fn with_hooks(config: HostConfig, hooks: Arc<dyn HostHooks>) -> Result<Self, HostError> {
        let engine = build_engine(&config).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        let (reaper, reaper_thread) = Reaper::start().map_err(HostError::Reaper)?;
        let mut linker = Linker::new(&engine);
        // The only imports plugins get: sandboxed WASI preview1 (see instance.rs), whose
        // sleep is bounded by the call's deadline (see wasi_poll.rs).
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .and_then(|()| crate::wasi_poll::add_to_linker(&mut linker))
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(PluginHost {
            fingerprint: cache::engine_fingerprint(&engine),
            linker,
            compiled: CompiledModules::default(),
            engine,
            config,
            slots: RwLock::new(HashMap::new()),
            hooks,
            meters: Meters::default(),
            _ticker: ticker,
            reaper,
            _reaper_thread: reaper_thread,
        })
    }

    fn slot(&self, plugin: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
    }

    fn slot_or_create(&self, plugin: &str) -> Result<Arc<Slot>, LoadError> {
        // Every call takes the read lock: a load of a plugin that exists takes it too, not
        // the write lock a preempted loader could hold while calls wait.
        if let Some(s) = self.slot(plugin) {
            return Ok(s);
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(plugin) {
            return Ok(s.clone());
        }
        if slots.len() >= self.config.max_plugins {
            return Err(LoadError::TooManyPlugins {
                plugin: plugin.into(),
                max: self.config.max_plugins,
            });
        }
        let slot = Arc::new(Slot {
            current: ArcSwapOption::empty(),
            loading: Mutex::new(()),
        });
        slots.insert(plugin.into(), slot.clone());
        Ok(slot)
    }

    /// Calls `plugin`'s `handle` with `input` on the revision serving right now.
    ///
    /// Two calls may run on two revisions if a swap lands between them; a request that
    /// calls more than once and needs one revision throughout uses [`PluginHost::pin`].
    pub fn call(&self, plugin: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.pin(plugin)?.call(input)
    }

    /// Pins the revision serving `plugin` right now, for all the calls of one request.
    ///
    /// Every [`Pinned::call`] runs on that revision, even after a load swaps in another or
    /// an unload removes the plugin; the swap does not wait for the guard, and the old
    /// revision is freed when the last guard on it drops. Fails `NotLoaded` like `call`.
    pub fn pin(&self, plugin: &str) -> Result<Pinned, CallError> {
        self.slot(plugin)
            .and_then(|s| s.current.load_full())
            .map(Pinned::new)
            .ok_or_else(|| CallError::NotLoaded {
                plugin: plugin.into(),
            })
    }

    /// The revision serving `plugin`, if any.
    pub fn serving(&self, plugin: &str) -> Option<RevisionId> {
        self.slot(plugin)
            .and_then(|s| s.current.load_full())
            .map(|r| r.id.clone())
    }

    /// Loads a revision; on any failure the previous revision keeps serving.
    pub fn load(&self, req: LoadRequest) -> Result<Loaded, LoadError> {
        let (plugin, revision) = (req.plugin.clone(), req.revision.clone());
        let result = self.try_load(req);
        match &result {
            Ok(l) => tracing::info!(plugin, revision, swapped = l.swapped, cache = ?l.cache,
                total_ms = l.total.as_secs_f64() * 1e3, swap_us = l.swap.as_secs_f64() * 1e6, "plugin loaded"),
            Err(e) => {
                tracing::warn!(plugin, revision, error = %e, "plugin load failed; previous revision keeps serving");
                self.hooks.load_failed(&plugin, &revision, e);
            }
        }
        result
    }

    fn try_load(&self, req: LoadRequest) -> Result<Loaded, LoadError> {
        let start = Instant::now();
        let LoadRequest {
            plugin,
            revision,
            digest,
            config,
            wasm,
        } = req;
        if wasm.len() > self.config.max_module_bytes {
            // Before hashing: the size alone is reason enough, and cheaper to find.
            return Err(LoadError::ModuleTooLarge {
                plugin,
                revision,
                size: wasm.len(),
                limit: self.config.max_module_bytes,
            });
        }
        let Some(hex) = parse_sha256(&digest) else {
            return Err(LoadError::BadDigest {
                plugin,
                revision,
                digest,
            });
        };
        let actual = sha256_digest(&wasm);
        if actual != digest {
            return Err(LoadError::DigestMismatch {
                plugin,
                revision,
                expected: digest,
                actual,
            });
        }
        let hex = hex.to_string();
        // Shared with the compile thread, which may outlive this load.
        let wasm = Arc::new(wasm);
        let id = RevisionId {
            plugin,
            revision,
            digest,
            config,
        };
        loop {
            let slot = self.slot_or_create(&id.plugin)?;
            let _serial = slot.loading.lock().unwrap_or_else(|p| p.into_inner());
            if !self.holds(&id.plugin, &slot) {
                // Unloaded (or given up after a failed first load) while this load waited.
                continue;
            }
            let plugin = id.plugin.clone();
            let loaded = self.load_into(&slot, id, &hex, &wasm, start);
            if loaded.is_err() && slot.current.load().is_none() {
                // A first load that failed leaves no empty slot behind to count against
                // max_plugins.
                let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
                if slots.get(&plugin).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    slots.remove(&plugin);
                }
            }
            return loaded;
        }
    }

    /// Whether `slot` is still `plugin`'s.
    fn holds(&self, plugin: &str, slot: &Arc<Slot>) -> bool {
        self.slot(plugin).is_some_and(|s| Arc::ptr_eq(&s, slot))
    }

    /// Loads `id` into `slot`, whose `loading` lock the caller holds.
    fn load_into(
        &self,
        slot: &Slot,
        id: RevisionId,
        hex: &str,
        wasm: &Arc<Vec<u8>>,
        start: Instant,
    ) -> Result<Loaded, LoadError> {
        let old = slot.current.load_full();
        if plan_load(old.as_ref().map(|o| &o.id), &id) == LoadPlan::AlreadyServing {
            return Ok(Loaded {
                revision: id.revision,
                swapped: false,
                cache: CacheOutcome::Hit,
                self_checked: false,
                state: StateHandover::None,
                compile: Duration::ZERO,
                total: start.elapsed(),
                swap: Duration::ZERO,
            });
        }
        let (p, r) = (id.plugin.clone(), id.revision.clone());
        let guest = |phase: Phase, detail: GuestFailure| LoadError::Guest {
            plugin: p.clone(),
            revision: r.clone(),
            phase,
            detail,
        };

        let (module, cache, compile) = self.module_for(&p, &r, hex, wasm)?;
        let caps = module.caps;
        let limits = RevisionLimits {
            instances: self.config.instances_per_revision,
            max_memory: self.config.max_memory_bytes,
            call_limit: CallLimit {
                ticks: self.config.deadline_ticks(),
                timeout: self.config.call_timeout,
            },
            checkout_timeout: self.config.checkout_timeout,
        };
        // Revisions dropped before this load may still be being freed: their pool slots come
        // back first, as when teardown ran inline.
        self.reaper.settle();
        let new = Revision::new(id, module, limits, self.reaper.clone()).map_err(|e| match e {
            InstanceError::Instantiate(fault) => LoadError::Instantiate {
                plugin: p.clone(),
                revision: r.clone(),
                fault,
            },
            InstanceError::Configure(detail) => guest(Phase::Configure, detail),
        })?;
        let mut self_checked = false;
        if caps.self_check {
            new.for_each_instance(|i| i.self_check())
                .map_err(|d| guest(Phase::SelfCheck, d))?;
            self_checked = true;
        }
        let state = match &old {
            Some(old) if old.caps.save_state && caps.restore_state => {
                let snapshot = {
                    let mut inst = old.checkout().map_err(|e| {
                        guest(
                            Phase::SaveState,
                            GuestFailure::Fault(crate::Fault::Other(e.to_string())),
                        )
                    })?;
                    let saved = inst.save_state();
                    if saved.is_err() {
                        // Its memory may be half-written: the old revision keeps serving,
                        // from its other instances and fresh ones, never from this one.
                        inst.discard();
                    }
                    saved
                        .map_err(|d| guest(Phase::SaveState, d))?
                        .unwrap_or_default()
                };
                new.for_each_instance(|i| i.restore_state(&snapshot))
                    .map_err(|d| guest(Phase::RestoreState, d))?;
                StateHandover::Restored(snapshot.len())
            }
            _ => StateHandover::None,
        };
        if let Some(old) = &old {
            self.hooks.before_unload(&UnloadEvent {
                plugin: &p,
                revision: &old.id.revision,
                next: Some(&r),
            });
        }
        let new = Arc::new(new);
        self.meters.register(new.meter.clone());
        let t = Instant::now();
        slot.current.store(Some(new));
        let swap = t.elapsed();
        self.hooks.after_load(&LoadEvent {
            plugin: &p,
            revision: &r,
            previous: old.as_ref().map(|o| o.id.revision.as_str()),
            cache,
            swap,
        });
        Ok(Loaded {
            revision: r,
            swapped: true,
            cache,
            self_checked,
            state,
            compile,
            total: start.elapsed(),
            swap,
        })
    }

    /// The module of `hex`, ready to instantiate: the one this host keeps, or else one from
    /// the disk cache or a budgeted compile, checked against the ABI, linked, and kept. With
    /// where its code came from, and how long getting the code took.
    fn module_for(
        &self,
        plugin: &str,
        revision: &str,
        hex: &str,
        wasm: &Arc<Vec<u8>>,
    ) -> Result<(Arc<Compiled>, CacheOutcome, Duration), LoadError> {
        let t = Instant::now();
        if let Some(module) = self.compiled.get(hex) {
            if let Some(dir) = self.config.cache_dir.as_deref() {
                cache::touch(&self.fingerprint, dir, hex);
            }
            return Ok((module, CacheOutcome::Hit, t.elapsed()));
        }
        let (p, r) = (plugin.to_string(), revision.to_string());
        let (module, cache) = compile::load_module(
            &self.engine,
            &self.fingerprint,
            self.config.cache_dir.as_deref(),
            hex,
            wasm,
            self.config.compile_timeout,
        )
        .map_err(|e| match e {
            CompileError::Invalid(reason) => LoadError::InvalidWasm {
                plugin: p.clone(),
                revision: r.clone(),
                reason,
            },
            CompileError::Timeout(budget) => LoadError::CompileTimeout {
                plugin: p.clone(),
                revision: r.clone(),
                budget_ms: budget.as_millis(),
            },
            CompileError::Thread(source) => LoadError::CompileThread {
                plugin: p.clone(),
                revision: r.clone(),
                source,
            },
        })?;
        let compile = t.elapsed();
        let abi_err = |reason: String| LoadError::Abi {
            plugin: p.clone(),
            revision: r.clone(),
            reason,
        };
        let caps = abi::check_exports(&describe_exports(&module)).map_err(abi_err)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            abi_err(format!(
                "imports cannot be satisfied (plugins get none): {e:#}"
            ))
        })?;
        let (module, evicted) = self
            .compiled
            .insert(hex, wasm.len(), Compiled { caps, pre });
        // Modules no revision runs are unmapped here, off the request path.
        drop(evicted);
        Ok((module, cache, compile))
    }

    /// Removes a plugin; in-flight calls finish on the revision they started on.
    pub fn unload(&self, plugin: &str) -> bool {
        let Some(slot) = self
            .slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(plugin)
        else {
            return false;
        };
        let _serial = slot.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.current.swap(None) {
            self.hooks.before_unload(&UnloadEvent {
                plugin,
                revision: &old.id.revision,
                next: None,
            });
        }
        true
    }

    /// Takes the health counts of every revision since the previous call: one report per
    /// plugin revision that was called (sorted by plugin, then revision), none when nothing
    /// was. A revision swapped out or unloaded is reported until the calls that were still
    /// running on it (or pinned to it) are taken, then forgotten. What the app sends in its
    /// `health` message (docs/protocol.md); [`link::Link`](crate::link::Link) does it.
    pub fn take_health(&self) -> Vec<hotload_protocol::PluginHealth> {
        self.meters.take()
    }

    /// Counts one `failed` error on the revision serving `plugin` now, for a call that
    /// returned an answer the app could not use; `false` when nothing serves. Adds no call.
    /// A request that must mark the revision its call ran on (a swap can come between)
    /// marks through its [`Pinned`] instead ([`Pinned::mark_failed`]).
    pub fn mark_failed(&self, plugin: &str) -> bool {
        match self.slot(plugin).and_then(|s| s.current.load_full()) {
            Some(rev) => {
                rev.meter.mark_failed();
                true
            }
            None => false,
        }
    }

    /// Counts one `failed` error on `revision` of `plugin`, which may no longer serve (a
    /// call made before a swap, judged after it); `false` when the host has no counts of
    /// that revision any more (forgotten after its last report).
    pub fn mark_failed_on(&self, plugin: &str, revision: &str) -> bool {
        self.meters.mark_failed(plugin, revision)
    }

    /// Names of the plugins with a serving revision.
    pub fn plugins(&self) -> Vec<String> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<_> = slots
            .iter()
            .filter(|(_, s)| s.current.load().is_some())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(rev: &str, cfg: &[u8]) -> RevisionId {
        RevisionId {
            plugin: "p".into(),
            revision: rev.into(),
            digest: "sha256:x".into(),
            config: cfg.to_vec(),
        }
    }

    #[test]
    fn same_revision_digest_and_config_is_already_serving() {
        assert_eq!(
            plan_load(Some(&id("r1", b"a")), &id("r1", b"a")),
            LoadPlan::AlreadyServing
        );
    }

    #[test]
    fn any_difference_or_nothing_serving_means_swap() {
        assert_eq!(plan_load(None, &id("r1", b"")), LoadPlan::Swap);
        assert_eq!(
            plan_load(Some(&id("r1", b"a")), &id("r1", b"b")),
            LoadPlan::Swap
        );
        assert_eq!(
            plan_load(Some(&id("r1", b"")), &id("r2", b"")),
            LoadPlan::Swap
        );
    }
}
