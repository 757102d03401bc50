//! One live plugin instance: its store, memory and typed exports, and the byte-level calls
//! that move requests, config and state across the ABI under a deadline.

use std::time::{Duration, Instant};

use wasmtime::{
    ExternType, InstancePre, Memory, Module, ResourceLimiter, Store, TypedFunc, ValType,
};

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{HostMonotonicClock, WasiCtxBuilder};

use crate::abi::{self, Capabilities, ExportKind};
use crate::engine::MAX_TABLE_ELEMENTS;
use crate::error::{Fault, GuestFailure, MemoryLimitExceeded, classify};

/// Per-store data: the memory ceiling (enforced by [`ResourceLimiter`]), the deadline of
/// the guest call in progress (enforced in host code by `wasi_poll`, in guest code by the
/// epoch) and the plugin's WASI preview1 context.
pub(crate) struct StoreState {
    max_memory: usize,
    deadline: Instant,
    /// Zero of the guest's monotonic clock, so host code can read that clock as the guest
    /// does (absolute sleeps).
    clock_origin: Instant,
    pub(crate) wasi: WasiP1Ctx,
}

impl StoreState {
    /// When the guest call in progress must end.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The guest's monotonic clock now, in nanoseconds.
    pub(crate) fn monotonic_now(&self) -> u64 {
        monotonic_nanos(self.clock_origin)
    }
}

fn monotonic_nanos(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The guest's monotonic clock: nanoseconds since the instance was created.
struct SandboxClock(Instant);

impl HostMonotonicClock for SandboxClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        monotonic_nanos(self.0)
    }
}

/// The WASI a plugin gets: clocks and randomness only. No preopened directories, no
/// environment, no arguments, no sockets; stdin is closed, stdout and stderr are discarded.
/// Enough for the runtimes of compiled languages (Go, Rust, C via wasi-libc) to start,
/// nothing to escape with; and nothing that blocks but a sleep, which `wasi_poll` bounds.
fn sandboxed_wasi(clock_origin: Instant) -> WasiP1Ctx {
    WasiCtxBuilder::new()
        .monotonic_clock(SandboxClock(clock_origin))
        .build_p1()
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // An error (not `Ok(false)`) so the guest traps with a reason we can classify,
        // instead of `memory.grow` quietly returning -1 and the plugin limping on.
        if desired > self.max_memory {
            return Err(MemoryLimitExceeded {
                requested: desired,
                limit: self.max_memory,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Reduces a module's exports to what [`abi::check_exports`] needs.
pub(crate) fn describe_exports(module: &Module) -> Vec<(String, ExportKind)> {
    fn ty(v: &ValType) -> &'static str {
        match v {
            ValType::I32 => "i32",
            ValType::I64 => "i64",
            ValType::F32 => "f32",
            ValType::F64 => "f64",
            ValType::V128 => "v128",
            ValType::Ref(_) => "ref",
        }
    }
    module
        .exports()
        .map(|e| {
            let kind = match e.ty() {
                ExternType::Memory(_) => ExportKind::Memory,
                ExternType::Func(f) => {
                    let params: Vec<_> = f.params().map(|p| ty(&p)).collect();
                    let results: Vec<_> = f.results().map(|r| ty(&r)).collect();
                    ExportKind::Func(format!("({})->{}", params.join(","), results.join(",")))
                }
                _ => ExportKind::Other,
            };
            (e.name().to_string(), kind)
        })
        .collect()
}

/// Starts the deadline of the next guest call, for guest code and host code alike.
fn arm(store: &mut Store<StoreState>, limit: CallLimit) {
    arm_at(store, limit, Instant::now());
}

/// [`arm`] with the time the caller read just before (one clock read less per request).
fn arm_at(store: &mut Store<StoreState>, limit: CallLimit, now: Instant) {
    store.set_epoch_deadline(limit.ticks);
    store.data_mut().deadline = now + limit.timeout;
}

/// A ready instance of one revision.
pub(crate) struct PluginInstance {
    store: Store<StoreState>,
    memory: Memory,
    limit: CallLimit,
    alloc: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i64>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    self_check: Option<TypedFunc<(), i32>>,
    save_state: Option<TypedFunc<(), i64>>,
    restore_state: Option<TypedFunc<(i32, i32), i32>>,
}

/// How long one guest call may run: in epoch ticks for guest code, as a duration for host
/// code (a WASI sleep).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimit {
    pub ticks: u64,
    pub timeout: Duration,
}

fn fault(e: wasmtime::Error) -> GuestFailure {
    GuestFailure::Fault(classify(&e))
}

impl PluginInstance {
    /// Instantiates and binds the exports `caps` says exist (checked on the module already).
    pub(crate) fn new(
        pre: &InstancePre<StoreState>,
        caps: Capabilities,
        max_memory: usize,
        limit: CallLimit,
    ) -> Result<Self, Fault> {
        let clock_origin = Instant::now();
        let state = StoreState {
            max_memory,
            deadline: clock_origin + limit.timeout,
            clock_origin,
            wasi: sandboxed_wasi(clock_origin),
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.epoch_deadline_trap();
        // A start function is guest code too: it runs under the same deadline.
        arm(&mut store, limit);
        let instance = pre.instantiate(&mut store).map_err(|e| classify(&e))?;
        let other = |e: wasmtime::Error| Fault::Other(format!("{e:#}"));
        // WASI reactors (Go `-buildmode=c-shared`, wasi-libc) initialise their runtime here.
        if let Some(init) = instance.get_func(&mut store, abi::INITIALIZE) {
            let init = init.typed::<(), ()>(&store).map_err(other)?;
            arm(&mut store, limit);
            init.call(&mut store, ()).map_err(|e| classify(&e))?;
        }
        let memory = instance
            .get_memory(&mut store, abi::MEMORY)
            .ok_or_else(|| Fault::Other("export `memory` vanished".into()))?;
        let alloc = instance
            .get_typed_func(&mut store, abi::ALLOC)
            .map_err(other)?;
        let handle = instance
            .get_typed_func(&mut store, abi::HANDLE)
            .map_err(other)?;
        let mut opt = |present: bool, name: &str| {
            present
                .then(|| instance.get_func(&mut store, name))
                .flatten()
        };
        let configure = opt(caps.configure, abi::CONFIGURE);
        let self_check = opt(caps.self_check, abi::SELF_CHECK);
        let save_state = opt(caps.save_state, abi::SAVE_STATE);
        let restore_state = opt(caps.restore_state, abi::RESTORE_STATE);
        Ok(PluginInstance {
            configure: configure
                .map(|f| f.typed(&store))
                .transpose()
                .map_err(other)?,
            self_check: self_check
                .map(|f| f.typed(&store))
                .transpose()
                .map_err(other)?,
            save_state: save_state
                .map(|f| f.typed(&store))
                .transpose()
                .map_err(other)?,
            restore_state: restore_state
                .map(|f| f.typed(&store))
                .transpose()
                .map_err(other)?,
            store,
            memory,
            limit,
            alloc,
            handle,
        })
    }

    fn arm(&mut self) {
        arm(&mut self.store, self.limit);
    }

    /// Copies `bytes` into guest memory through `alloc`.
    fn write(&mut self, bytes: &[u8]) -> Result<(i32, i32), GuestFailure> {
        let len = u32::try_from(bytes.len()).map_err(|_| GuestFailure::BadRange {
            ptr: 0,
            len: u32::MAX,
        })?;
        let ptr = self
            .alloc
            .call(&mut self.store, len as i32)
            .map_err(fault)? as u32;
        let data = self.memory.data_mut(&mut self.store);
        let range =
            abi::checked_range(ptr, len, data.len()).ok_or(GuestFailure::BadRange { ptr, len })?;
        data[range].copy_from_slice(bytes);
        Ok((ptr as i32, len as i32))
    }

    /// Copies a packed `(ptr, len)` out of guest memory.
    fn read(&self, packed: i64) -> Result<Vec<u8>, GuestFailure> {
        let (ptr, len) = abi::unpack(packed);
        let data = self.memory.data(&self.store);
        let range =
            abi::checked_range(ptr, len, data.len()).ok_or(GuestFailure::BadRange { ptr, len })?;
        Ok(data[range].to_vec())
    }

    fn status(code: i32) -> Result<(), GuestFailure> {
        if code == 0 {
            Ok(())
        } else {
            Err(GuestFailure::Status(code))
        }
    }

    /// Handles one request; its deadline runs from `now`, which the caller read a moment
    /// ago (the request's own start, when it found an idle instance at once).
    pub(crate) fn handle(&mut self, input: &[u8], now: Instant) -> Result<Vec<u8>, GuestFailure> {
        arm_at(&mut self.store, self.limit, now);
        let (ptr, len) = self.write(input)?;
        let packed = self
            .handle
            .call(&mut self.store, (ptr, len))
            .map_err(fault)?;
        self.read(packed)
    }

    /// Hands the config bytes over, if the plugin takes config.
    pub(crate) fn configure(&mut self, config: &[u8]) -> Result<(), GuestFailure> {
        let Some(f) = self.configure.clone() else {
            return Ok(());
        };
        self.arm();
        let (ptr, len) = self.write(config)?;
        Self::status(f.call(&mut self.store, (ptr, len)).map_err(fault)?)
    }

    /// Runs the self-check, if exported.
    pub(crate) fn self_check(&mut self) -> Result<(), GuestFailure> {
        let Some(f) = self.self_check.clone() else {
            return Ok(());
        };
        self.arm();
        Self::status(f.call(&mut self.store, ()).map_err(fault)?)
    }

    /// Takes a state snapshot (`None` if the plugin exports no `save_state`).
    pub(crate) fn save_state(&mut self) -> Result<Option<Vec<u8>>, GuestFailure> {
        let Some(f) = self.save_state.clone() else {
            return Ok(None);
        };
        self.arm();
        let packed = f.call(&mut self.store, ()).map_err(fault)?;
        self.read(packed).map(Some)
    }

    /// Restores a snapshot; a plugin without `restore_state` ignores it.
    pub(crate) fn restore_state(&mut self, state: &[u8]) -> Result<(), GuestFailure> {
        let Some(f) = self.restore_state.clone() else {
            return Ok(());
        };
        self.arm();
        let (ptr, len) = self.write(state)?;
        Self::status(f.call(&mut self.store, (ptr, len)).map_err(fault)?)
    }
}
