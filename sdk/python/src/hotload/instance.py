"""One live plugin instance: its store, memory and exports, and the byte-level calls that
move requests, config and state across the ABI under a deadline.

Everything here goes through wasmtime's C API directly, not wasmtime-py's classes: their
Python around each store, WASI setup, instantiation, export and call (type look-ups, value
conversions, context managers) was most of what building an instance and calling it cost,
and with the GIL every µs of it is a µs the app's other threads wait for.
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections.abc import Callable

import wasmtime
from wasmtime import _ffi as ffi

from . import abi, errors
from .abi import Capabilities
from .engine import (
    WASI,
    GuestCall,
    begin_call,
    classify,
    created_memory,
    recording_memories,
)
from .errors import Failure, GuestError

# ---- the C functions, without wasmtime-py's Python wrappers --------------------------


def _holding_gil(name: str, restype, *argtypes):  # noqa: ANN001, ANN202
    """A wasmtime C function called without wasmtime-py's Python wrapper and with the GIL
    held. For calls that run no guest code: ctypes otherwise drops and retakes the GIL around
    each, and every time another thread waiting for it may get in first (a loading thread's
    Python delays a call; a call's delays a load), which splits a load into several waits
    for the calls running meanwhile instead of one. Calls that run guest code must release
    it (`_releasing_gil`): the epoch ticker needs it to stop them, other threads to run."""
    address = ctypes.cast(getattr(ffi.dll, name), ctypes.c_void_p).value
    return ctypes.PYFUNCTYPE(restype, *argtypes)(address)


def _releasing_gil(name: str, restype, *argtypes):  # noqa: ANN001, ANN202
    """A wasmtime C function called without wasmtime-py's Python wrapper, releasing the GIL
    (as ctypes does): for the calls that run guest code."""
    address = ctypes.cast(getattr(ffi.dll, name), ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


_CONTEXT = ctypes.POINTER(ffi.wasmtime_context_t)
_STORE = ctypes.POINTER(ffi.wasmtime_store_t)
_ERROR = ctypes.POINTER(ffi.wasmtime_error_t)
_TRAP = ctypes.POINTER(ffi.wasm_trap_t)
_VALS = ctypes.POINTER(ffi.wasmtime_val_t)

_set_epoch_deadline = _holding_gil(
    "wasmtime_context_set_epoch_deadline", None, _CONTEXT, ctypes.c_uint64
)
_export_get = _holding_gil(
    "wasmtime_instance_export_get",
    ctypes.c_bool,
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_instance_t),
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_extern_t),
)
_memory_data = _holding_gil(
    "wasmtime_memory_data",
    ctypes.POINTER(ctypes.c_uint8),
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_memory_t),
)
_store_new = _holding_gil(
    "wasmtime_store_new",
    _STORE,
    ctypes.POINTER(ffi.wasm_engine_t),
    ctypes.c_void_p,
    ctypes.c_void_p,
)
_store_context = _holding_gil("wasmtime_store_context", _CONTEXT, _STORE)
_store_delete = _holding_gil("wasmtime_store_delete", None, _STORE)
_wasi_config_new = _holding_gil("wasi_config_new", ctypes.POINTER(ffi.wasi_config_t))
_context_set_wasi = _holding_gil(
    "wasmtime_context_set_wasi", _ERROR, _CONTEXT, ctypes.POINTER(ffi.wasi_config_t)
)
_PRE_INSTANTIATE = (
    "wasmtime_instance_pre_instantiate",
    _ERROR,
    ctypes.POINTER(ffi.wasmtime_instance_pre_t),
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_instance_t),
    ctypes.POINTER(_TRAP),
)
# Instantiation runs guest code only in a start function; it copies the data segments.
_pre_instantiate = _holding_gil(*_PRE_INSTANTIATE)
_pre_instantiate_guest = _releasing_gil(*_PRE_INSTANTIATE)
#: Largest module instantiated with the GIL held (when it has no start function): its data
#: segments copy in µs. Larger ones (a Go plugin's take a millisecond) let threads run.
SMALL_MODULE_BYTES = 64 << 10
_func_call = _releasing_gil(
    "wasmtime_func_call",
    _ERROR,
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_func_t),
    _VALS,
    ctypes.c_size_t,
    _VALS,
    ctypes.c_size_t,
    ctypes.POINTER(_TRAP),
)

_I32 = ffi.WASMTIME_I32.value
_EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value
# A wasmtime_val_t: its kind byte at 0, its value at `of` (an i32 at the start of it).
# Parameters are written and the result read with one struct call each (the parameters'
# kinds, always i32, are set once per instance), not through ctypes fields.
_VAL_SIZE = ctypes.sizeof(ffi.wasmtime_val_t)
_VAL_OF = ffi.wasmtime_val_t.of.offset
_ONE_U32 = struct.Struct("=I")
_TWO_U32 = struct.Struct(f"=I{_VAL_SIZE - 4}xI")
_RESULT = struct.Struct(f"=B{_VAL_OF - 1}xq")
_NAMES = {
    name: name.encode()
    for name in (
        abi.MEMORY,
        abi.ALLOC,
        abi.HANDLE,
        abi.CONFIGURE,
        abi.SELF_CHECK,
        abi.SAVE_STATE,
        abi.RESTORE_STATE,
        abi.INITIALIZE,
    )
}


# ---- what a module's instances share ---------------------------------------------------


def describe_exports(module: wasmtime.Module) -> dict[str, str]:
    """Reduces a module's exports to what `abi.check_exports` needs."""
    out: dict[str, str] = {}
    for exp in module.exports:
        ty = exp.type
        if isinstance(ty, wasmtime.MemoryType):
            out[exp.name] = "memory"
        elif isinstance(ty, wasmtime.FuncType):
            params = ",".join(str(p) for p in ty.params)
            results = ",".join(str(r) for r in ty.results)
            out[exp.name] = f"({params})->{results}"
        else:
            out[exp.name] = "other"
    return out


class Limits:
    """How long one guest call may run, in epoch ticks and in seconds."""

    __slots__ = ("ticks", "timeout")

    def __init__(self, ticks: int, timeout: float):
        self.ticks = ticks
        self.timeout = timeout


class ModulePlan:
    """What building an instance of one compiled module takes, worked out once per module
    and kept with it: its ABI capabilities, its imports resolved (`InstancePre`), whether it
    needs a WASI context, its `_initialize`, whether instantiating it may take a while. A
    cached load then only builds instances."""

    __slots__ = ("caps", "init", "pre", "pre_ptr", "slow_start", "wasi")

    def __init__(
        self,
        module: wasmtime.Module,
        wasm: bytes,
        caps: Capabilities,
        pre: wasmtime.InstancePre,
    ):
        self.caps = caps
        self.pre = pre  # owns pre_ptr
        self.pre_ptr = pre.ptr()
        # Whether instantiating may take long enough to let other threads run meanwhile:
        # it runs guest code (a start function) or copies large data segments.
        self.slow_start = len(wasm) > SMALL_MODULE_BYTES or has_start_function(wasm)
        # A store needs WASI only for WASI's own functions; poll_oneoff is the host's.
        self.wasi = any(imp.module != WASI or imp.name != "poll_oneoff" for imp in module.imports)
        # (parameters, results) of an exported function `_initialize`, else None.
        self.init: tuple[int, int] | None = None
        for exp in module.exports:
            ty = exp.type
            if exp.name == abi.INITIALIZE and isinstance(ty, wasmtime.FuncType):
                self.init = (len(ty.params), len(ty.results))


def has_start_function(wasm: bytes) -> bool:
    """Whether a (valid) module binary has a start section; True when unsure."""
    i, end = 8, len(wasm)  # past the magic and the version
    try:
        while i < end:
            section = wasm[i]
            i += 1
            size = shift = 0
            while True:  # LEB128 u32
                byte = wasm[i]
                i += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if section == 8:
                return True
            i += size
    except IndexError:
        return True
    return i != end  # a section running past the end: cut short


# ---- an instance -----------------------------------------------------------------------


class PluginInstance:
    """A ready instance of one revision; used by one thread at a time (pool checkout).

    Its store is the C API's, freed by `close` or with the last reference. Its guest calls
    reuse one parameter, result and trap buffer each (the instance is never used by two
    threads at once), and pointers to its exports made once."""

    __slots__ = (
        "__weakref__",
        "_alloc",
        "_configure",
        "_context",
        "_handle",
        "_instance",
        "_params",
        "_restore_state",
        "_result",
        "_save_state",
        "_self_check",
        "_store",
        "_trap",
        "_trap_ref",
        "clock_origin",
        "limits",
        "memory",
    )

    def __init__(self, plan: ModulePlan, engine: wasmtime.Engine, limits: Limits):
        self.limits = limits
        self.clock_origin = time.monotonic_ns()
        self._store = None  # read by __del__, however far this gets
        self._store = store = _store_new(engine.ptr(), None, None)
        self._context = context = _store_context(store)
        if plan.wasi:
            # Sandboxed preview1: clocks and randomness; no preopens, environment, arguments.
            error = _context_set_wasi(context, _wasi_config_new())
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        params = self._params = (ffi.wasmtime_val_t * 2)()
        params[0].kind = params[1].kind = _I32
        self._result = (ffi.wasmtime_val_t * 1)()
        self._trap = _TRAP()
        self._trap_ref = ctypes.byref(self._trap)
        # A start function is guest code too: it runs under the same deadline.
        call = self._arm()
        created: list[int] = []
        self._instance = instance = ffi.wasmtime_instance_t()
        try:
            recording_memories(created)
            try:
                # A small module without a start function: µs, no guest code, GIL held.
                instantiate = _pre_instantiate_guest if plan.slow_start else _pre_instantiate
                error = instantiate(plan.pre_ptr, context, ctypes.byref(instance), self._trap_ref)
            finally:
                recording_memories(None)
            if error or self._trap:
                self._raise(error)
            if plan.init is not None:
                # WASI reactors (Go -buildmode=c-shared, wasi-libc) initialise here.
                n_params, n_results = plan.init
                if n_params:
                    raise wasmtime.WasmtimeError(
                        f"too few parameters provided: given 0, expected {n_params}"
                    )
                call = self._arm()
                init = self._func(abi.INITIALIZE)
                results = (ffi.wasmtime_val_t * max(1, n_results))()
                error = _func_call(context, init, None, 0, results, n_results, self._trap_ref)
                if error or self._trap:
                    self._raise(error)
        except GuestError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to start is the guest's
            raise GuestError(classify(err, call)) from err
        if call.grow_refused is not None:
            raise GuestError(classify(RuntimeError("memory"), call))
        if len(created) == 1:
            # The instance's only memory (a plugin imports none): the one it exports.
            memory = created_memory(created, None)
        else:
            memory = None
            exported = self._export(abi.MEMORY)
            if exported is not None and exported.kind == _EXTERN_MEMORY:
                data = _memory_data(context, ctypes.byref(exported.of.memory))
                memory = created_memory(created, ctypes.cast(data, ctypes.c_void_p).value)
        if memory is None:
            # The ABI check saw an exported memory, which only this host's creator makes.
            raise GuestError(Failure(errors.OTHER, detail="exported memory not made by the host"))
        self.memory = memory
        # Exports by name, once (the ABI check at load vouched for their types); save_state,
        # used once per revision at most, when first asked for.
        caps = plan.caps
        self._alloc = self._func(abi.ALLOC)
        self._handle = self._func(abi.HANDLE)
        self._configure = self._func(abi.CONFIGURE) if caps.configure else None
        self._self_check = self._func(abi.SELF_CHECK) if caps.self_check else None
        self._save_state = True if caps.save_state else None
        self._restore_state = self._func(abi.RESTORE_STATE) if caps.restore_state else None

    def close(self, _delete: Callable = _store_delete) -> None:
        """Frees the store: the instance, its memory (kept for the next instance), its WASI
        context. Idempotent; the instance must not be used after."""
        store = self._store
        if store is not None:
            self._store = None
            _delete(store)

    def __del__(self) -> None:
        self.close()

    def _export(self, name: str) -> ffi.wasmtime_extern_t | None:
        """One export by name (wasmtime-py's `exports()` wraps every export in Python)."""
        raw = _NAMES.get(name) or name.encode()
        item = ffi.wasmtime_extern_t()
        found = _export_get(
            self._context, ctypes.byref(self._instance), raw, len(raw), ctypes.byref(item)
        )
        return item if found else None

    def _func(self, name: str):  # noqa: ANN202 - a ctypes pointer to a wasmtime_func_t
        """A pointer to the exported function `name`, for wasmtime_func_call."""
        item = self._export(name)
        if item is None or item.kind != _EXTERN_FUNC:
            raise GuestError(Failure(errors.OTHER, detail=f"export `{name}` not found"))
        return ctypes.byref(item.of.func)

    def _raise(self, error: _ERROR) -> None:
        """Raises what a C call that ran guest code returned: its error, else its trap."""
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        trap = self._trap
        if trap:
            # The Trap object owns the pointer now; the next call gets a fresh out-parameter.
            self._trap = _TRAP()
            self._trap_ref = ctypes.byref(self._trap)
            raise wasmtime.Trap._from_ptr(trap)

    def _arm(self) -> GuestCall:
        _set_epoch_deadline(self._context, self.limits.ticks)
        return begin_call(self.limits.timeout, self.clock_origin)

    def _run(self, call: GuestCall, func, n: int) -> int:  # noqa: ANN001
        """Calls an ABI export with the first `n` i32 parameters in `_params`; returns its
        i32 or i64 result.

        The C API directly: wasmtime-py's generic `Func.__call__` looks the type up and
        converts every value on each call, several times the cost of the call itself. The
        exports were type-checked at load (abi.check_exports), so the shapes are known."""
        try:
            error = _func_call(
                self._context, func, self._params, n, self._result, 1, self._trap_ref
            )
            if error or self._trap:
                self._raise(error)
        except Exception as err:  # noqa: BLE001 - traps, interrupts, host errors
            raise GuestError(classify(err, call)) from err
        if call.grow_refused is not None:
            # memory.grow returned -1 to the guest; the call fails as hotload-host's does.
            raise GuestError(classify(RuntimeError("memory"), call))
        kind, value = _RESULT.unpack_from(self._result)
        # An i32 result fills the low 4 bytes only: sign-extend them.
        return ((value & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000 if kind == _I32 else value

    def _write(self, call: GuestCall, data: bytes) -> None:
        """Copies `data` into guest memory (alloc'd by the guest); leaves (ptr, len) as the
        first two parameters for the next `_run`."""
        length = len(data)
        if length > 0xFFFF_FFFF:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=0, length=0xFFFF_FFFF))
        params = self._params
        _ONE_U32.pack_into(params, _VAL_OF, length)
        ptr = self._run(call, self._alloc, 1) & 0xFFFF_FFFF
        # The range check of abi.checked_range, inline (as in _read).
        memory = self.memory
        if ptr + length > memory.state.size:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if length:
            memory.buf[ptr : ptr + length] = data
        _TWO_U32.pack_into(params, _VAL_OF, ptr, length)

    def _read(self, packed: int) -> bytes:
        ptr = (packed >> 32) & 0xFFFF_FFFF  # abi.unpack, inline
        length = packed & 0xFFFF_FFFF
        memory = self.memory
        if ptr + length > memory.state.size:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if not length:
            return b""
        return memory.buf[ptr : ptr + length]

    @staticmethod
    def _status(code: int) -> None:
        if code != 0:
            raise GuestError(Failure(errors.STATUS, status=code))

    def handle(self, data: bytes) -> bytes:
        """Handles one request."""
        _set_epoch_deadline(self._context, self.limits.ticks)  # _arm, inline
        call = begin_call(self.limits.timeout, self.clock_origin)
        self._write(call, data)
        return self._read(self._run(call, self._handle, 2))

    def configure(self, config: bytes) -> None:
        """Hands the config bytes over, if the plugin takes config."""
        if self._configure is None:
            return
        call = self._arm()
        self._write(call, config)
        self._status(self._run(call, self._configure, 2))

    def self_check(self) -> None:
        """Runs the self-check, if exported."""
        if self._self_check is None:
            return
        call = self._arm()
        self._status(self._run(call, self._self_check, 0))

    def save_state(self) -> bytes | None:
        """A state snapshot (None if the plugin exports no save_state)."""
        if self._save_state is None:
            return None
        if self._save_state is True:
            self._save_state = self._func(abi.SAVE_STATE)
        call = self._arm()
        return self._read(self._run(call, self._save_state, 0))

    def restore_state(self, state: bytes) -> None:
        """Restores a snapshot; a plugin without restore_state ignores it."""
        if self._restore_state is None:
            return
        call = self._arm()
        self._write(call, state)
        self._status(self._run(call, self._restore_state, 2))
