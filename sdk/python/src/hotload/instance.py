"""One live plugin instance: its store, memory and exports, and the byte-level calls that
move requests, config and state across the ABI under a deadline."""

from __future__ import annotations

import ctypes
import time

import wasmtime
from wasmtime import _ffi as ffi

from . import abi, errors
from .abi import Capabilities
from .engine import GuestCall, begin_call, classify, sandboxed_wasi
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
        # A start function is guest code too: it runs under the same deadline.
        call = self._arm()
        try:
            instance = pre.instantiate(self.store)
            exports = instance.exports(self.store)
            init = exports.get(abi.INITIALIZE)
            if isinstance(init, wasmtime.Func):
                # WASI reactors (Go -buildmode=c-shared, wasi-libc) initialise here.
                call = self._arm()
                init(self.store)
        except Exception as err:  # noqa: BLE001 - any failure to start is the guest's
            raise GuestError(classify(err, call)) from err
        if call.grow_refused is not None:
            raise GuestError(classify(RuntimeError("memory"), call))
        self.memory = exports[abi.MEMORY]
        self._alloc = exports[abi.ALLOC]
        self._handle = exports[abi.HANDLE]
        self._configure = exports[abi.CONFIGURE] if caps.configure else None
        self._self_check = exports[abi.SELF_CHECK] if caps.self_check else None
        self._save_state = exports[abi.SAVE_STATE] if caps.save_state else None
        self._restore_state = exports[abi.RESTORE_STATE] if caps.restore_state else None

    def _arm(self) -> GuestCall:
        self.store.set_epoch_deadline(self.limits.ticks)
        return begin_call(self.limits.timeout, self.clock_origin)

    def _run(self, call: GuestCall, func: wasmtime.Func, *args: int) -> int:
        try:
            result = _call_i32s(self.store, func, args)
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
        if abi.checked_range(ptr, length, self.memory.data_len(self.store)) is None:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if length:
            self.memory.write(self.store, data, ptr)
        return _i32(ptr), _i32(length)

    def _read(self, packed: int) -> bytes:
        ptr, length = abi.unpack(packed)
        if abi.checked_range(ptr, length, self.memory.data_len(self.store)) is None:
            raise GuestError(Failure(errors.BAD_RANGE, ptr=ptr, length=length))
        if not length:
            return b""
        return bytes(self.memory.read(self.store, ptr, ptr + length))

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


def _call_i32s(store: wasmtime.Store, func: wasmtime.Func, args: tuple[int, ...]) -> int:
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
        store._context(),
        ctypes.byref(func._func),
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
