"""One live plugin instance: its store, memory and exports, and the byte-level calls that
move requests, config and state across the ABI under a deadline."""

from __future__ import annotations

import ctypes
import time

import wasmtime
from wasmtime import _ffi as ffi

from . import abi, errors
from .abi import Capabilities
from .engine import GuestCall, begin_call, classify, created_memory, new_memories, sandboxed_wasi
from .errors import Failure, GuestError


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


class PluginInstance:
    """A ready instance of one revision; used by one thread at a time (pool checkout)."""

    def __init__(self, pre: wasmtime.InstancePre, engine, caps: Capabilities, limits: Limits):  # noqa: ANN001
        self.limits = limits
        self.clock_origin = time.monotonic_ns()
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(sandboxed_wasi())
        self._context = self.store._context()
        # A start function is guest code too: it runs under the same deadline.
        call = self._arm()
        try:
            with new_memories() as created:
                instance = pre.instantiate(self.store)
            init = self._export(instance, abi.INITIALIZE)
            if init is not None and init.kind == _EXTERN_FUNC:
                # WASI reactors (Go -buildmode=c-shared, wasi-libc) initialise here.
                call = self._arm()
                wasmtime.Func._from_raw(init.of.func)(self.store)
        except Exception as err:  # noqa: BLE001 - any failure to start is the guest's
            raise GuestError(classify(err, call)) from err
        if call.grow_refused is not None:
            raise GuestError(classify(RuntimeError("memory"), call))
        exported = self._export(instance, abi.MEMORY)
        memory = None
        if exported is not None and exported.kind == _EXTERN_MEMORY:
            data = _memory_data(self._context, ctypes.byref(exported.of.memory))
            memory = created_memory(created, ctypes.cast(data, ctypes.c_void_p).value)
        if memory is None:
            # The ABI check saw an exported memory, which only this host's creator makes.
            raise GuestError(Failure(errors.OTHER, detail="exported memory not made by the host"))
        self.memory = memory
        # Exports by name, once (the ABI check at load vouched for their types).
        self._alloc = self._func(instance, abi.ALLOC)
        self._handle = self._func(instance, abi.HANDLE)
        self._configure = self._func(instance, abi.CONFIGURE) if caps.configure else None
        self._self_check = self._func(instance, abi.SELF_CHECK) if caps.self_check else None
        self._save_state = self._func(instance, abi.SAVE_STATE) if caps.save_state else None
        self._restore_state = (
            self._func(instance, abi.RESTORE_STATE) if caps.restore_state else None
        )

    def _export(self, instance: wasmtime.Instance, name: str) -> ffi.wasmtime_extern_t | None:
        """One export by name (wasmtime-py's `exports()` wraps every export in Python)."""
        raw = name.encode()
        item = ffi.wasmtime_extern_t()
        found = _export_get(
            self._context, ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
        )
        return item if found else None

    def _func(self, instance: wasmtime.Instance, name: str) -> ffi.wasmtime_func_t:
        item = self._export(instance, name)
        if item is None or item.kind != _EXTERN_FUNC:
            raise GuestError(Failure(errors.OTHER, detail=f"export `{name}` not found"))
        return item.of.func

    def _arm(self) -> GuestCall:
        _set_epoch_deadline(self._context, self.limits.ticks)
        return begin_call(self.limits.timeout, self.clock_origin)

    def _run(self, call: GuestCall, func: ffi.wasmtime_func_t, *args: int) -> int:
        try:
            result = _call_i32s(self._context, func, args)
        except Exception as err:  # noqa: BLE001 - traps, interrupts, host errors
            raise GuestError(classify(err, call)) from err
        if call.grow_refused is not None:
            # memory.grow returned -1 to the guest; the call fails as hotload-host's does.
            raise GuestError(classify(RuntimeError("memory"), call))
        return result

    def _write(self, call: GuestCall, data: bytes) -> tuple[int, int]:
        length = len(data)
        if length > 0xFFFF_FFFF:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=0, length=0xFFFF_FFFF))
        ptr = self._run(call, self._alloc, _i32(length)) & 0xFFFF_FFFF
        if abi.checked_range(ptr, length, self.memory.size()) is None:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if length:
            self.memory.write(ptr, data)
        return _i32(ptr), _i32(length)

    def _read(self, packed: int) -> bytes:
        ptr, length = abi.unpack(packed)
        if abi.checked_range(ptr, length, self.memory.size()) is None:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if not length:
            return b""
        return self.memory.read(ptr, length)

    @staticmethod
    def _status(code: int) -> None:
        if code != 0:
            raise GuestError(Failure(errors.STATUS, status=code))

    def handle(self, data: bytes) -> bytes:
        """Handles one request."""
        call = self._arm()
        ptr, length = self._write(call, data)
        return self._read(self._run(call, self._handle, ptr, length))

    def configure(self, config: bytes) -> None:
        """Hands the config bytes over, if the plugin takes config."""
        if self._configure is None:
            return
        call = self._arm()
        ptr, length = self._write(call, config)
        self._status(self._run(call, self._configure, ptr, length))

    def self_check(self) -> None:
        """Runs the self-check, if exported."""
        if self._self_check is None:
            return
        call = self._arm()
        self._status(self._run(call, self._self_check))

    def save_state(self) -> bytes | None:
        """A state snapshot (None if the plugin exports no save_state)."""
        if self._save_state is None:
            return None
        call = self._arm()
        return self._read(self._run(call, self._save_state))

    def restore_state(self, state: bytes) -> None:
        """Restores a snapshot; a plugin without restore_state ignores it."""
        if self._restore_state is None:
            return
        call = self._arm()
        ptr, length = self._write(call, state)
        self._status(self._run(call, self._restore_state, ptr, length))


_ARGS = [(ffi.wasmtime_val_t * n) for n in range(3)]
_I32 = ffi.WASMTIME_I32.value
_EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value


def _holding_gil(name: str, restype, *argtypes):  # noqa: ANN001, ANN202
    """A wasmtime C function called without wasmtime-py's Python wrapper and with the GIL
    held. Only for short calls that run no guest code: ctypes otherwise drops and retakes the
    GIL around each, and every time another thread waiting for it gets in first (a loading
    thread's Python delays a call; a call's delays a load). Calls that run guest code
    (instantiate, wasmtime_func_call) must release it: the epoch ticker needs it to stop them.
    """
    address = ctypes.cast(getattr(ffi.dll, name), ctypes.c_void_p).value
    return ctypes.PYFUNCTYPE(restype, *argtypes)(address)


_CONTEXT = ctypes.POINTER(ffi.wasmtime_context_t)
_set_epoch_deadline = _holding_gil(
    "wasmtime_context_set_epoch_deadline", None, _CONTEXT, ctypes.c_uint64
)
_export_get = _holding_gil(
    "wasmtime_instance_export_get",
    ctypes.c_bool,
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_instance_t),
    ctypes.POINTER(ctypes.c_char),
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_extern_t),
)
_memory_data = _holding_gil(
    "wasmtime_memory_data",
    ctypes.POINTER(ctypes.c_uint8),
    _CONTEXT,
    ctypes.POINTER(ffi.wasmtime_memory_t),
)


def _call_i32s(context, func: ffi.wasmtime_func_t, args: tuple[int, ...]) -> int:  # noqa: ANN001
    """Calls an ABI export (i32 parameters, one i32/i64 result, or none for _initialize).

    The C API directly: wasmtime-py's generic `Func.__call__` looks the type up and converts
    every value on each call, several times the cost of the call itself. The exports were
    type-checked at load (abi.check_exports), so the shapes are known.
    """
    params = _ARGS[len(args)]()
    for i, value in enumerate(args):
        params[i].kind = _I32
        params[i].of.i32 = value
    results = (ffi.wasmtime_val_t * 1)()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call(
        context,
        ctypes.byref(func),
        params,
        len(args),
        results,
        1,
        ctypes.byref(trap),
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)
    kind = results[0].kind
    return results[0].of.i32 if kind == _I32 else results[0].of.i64


def _i32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value
