"""The wasmtime engine of a host and what bounds a guest call: time, memory, WASI sleeps.

- Time: epoch interruption. A ticker thread advances the engine's epoch every
  `epoch_tick`; each guest call arms a deadline of `ceil(call_timeout / epoch_tick)` ticks
  and wasmtime traps the guest (`interrupt`) when it passes.
- Memory: a host memory creator backs every linear memory with an anonymous mapping of
  `max_memory_bytes` (virtual; pages are committed when touched). Growing past the limit is
  refused and recorded for the call in progress, which then fails with a memory-limit
  fault (as hotload-host's resource limiter makes it trap), never a plugin that limps on
  after `memory.grow` returned -1. The host copies requests and responses through that
  mapping itself (`LinearMemory`), with no call into wasmtime and the GIL held throughout.
  A freed memory that used at most `KEEP_RESIDENT_BYTES` is zeroed and kept for the next
  instance instead of unmapped.
- WASI: sandboxed preview1 (clocks and randomness; no files, environment, arguments or
  sockets), set up only for modules that import it. `poll_oneoff`, the one call that
  blocks (every language's sleep), is replaced by one that sleeps no later than the call's
  deadline and then traps as a timeout.

wasmtime's Python callbacks do not say which store they serve, so the guest call in
progress is found through a thread-local: a guest call runs on the thread that made it.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import mmap
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import Caller

from . import errors
from .errors import Failure


@dataclass
class HostConfig:
    """Limits and knobs of a host; every field has a production default (hotload-host's)."""

    #: Ceiling of one instance's linear memory, in bytes.
    max_memory_bytes: int = 64 << 20
    #: Longest one guest call (request, self-check, hand-over, start-up) may run, in seconds,
    #: WASI sleeps included.
    call_timeout: float = 0.5
    #: Granularity of the epoch ticker (the deadline's precision), in seconds.
    epoch_tick: float = 0.005
    #: Most instances per revision: the most calls one plugin serves in parallel.
    instances_per_revision: int = 4
    #: Instances a load builds, self-checks and hands the state to before the swap (at most
    #: `instances_per_revision`); the others are built the same way when calls first need
    #: them. Each costs the load tens of µs of Python that calls running meanwhile wait for
    #: (the GIL), and a swapped-out revision's instances cost as much to free.
    instances_at_load: int = 1
    #: How long a call waits for a free instance before it fails `busy`, in seconds.
    checkout_timeout: float = 2.0
    #: Most named plugins one host holds.
    max_plugins: int = 16
    #: Directory of precompiled modules (None: compiled modules are kept in memory only).
    cache_dir: Path | None = None
    #: Largest module a load accepts, in bytes; refused before hashing or compiling.
    max_module_bytes: int = 64 << 20
    #: Longest a compile may take, in seconds; past it the load fails, the old revision serves.
    compile_timeout: float = 120.0

    def deadline_ticks(self) -> int:
        """Epoch ticks that make up `call_timeout` (at least one)."""
        return max(1, math.ceil(self.call_timeout / self.epoch_tick - 1e-9))


class GuestCall:
    """What one guest call on this thread ran into, and when it must end."""

    __slots__ = ("clock_origin", "deadline", "grow_refused", "slept_past_deadline")

    def __init__(self, deadline: float, clock_origin: int = 0):
        self.deadline = deadline
        self.clock_origin = clock_origin
        self.grow_refused: tuple[int, int] | None = None
        self.slept_past_deadline = False


_local = threading.local()


def begin_call(timeout: float, clock_origin: int = 0) -> GuestCall:
    """Starts the bookkeeping of a guest call on this thread."""
    call = GuestCall(time.monotonic() + timeout, clock_origin)
    _local.call = call
    return call


def current_call() -> GuestCall | None:
    """The guest call in progress on this thread, if any."""
    return getattr(_local, "call", None)


def classify(err: BaseException, call: GuestCall | None) -> Failure:
    """Turns what a guest call raised into a Failure. Pure but for reading `call`."""
    if call is not None and call.grow_refused is not None:
        requested, limit = call.grow_refused
        return Failure(errors.MEMORY_LIMIT, requested=requested, limit=limit)
    if call is not None and call.slept_past_deadline:
        return Failure(errors.TIMEOUT)
    if isinstance(err, wasmtime.Trap):
        if err.trap_code == wasmtime.TrapCode.INTERRUPT:
            return Failure(errors.TIMEOUT)
        return Failure(errors.TRAP, detail=trap_words(str(err)))
    return Failure(errors.OTHER, detail=one_line(str(err)))


def trap_words(message: str) -> str:
    """The trap itself out of wasmtime's message ("wasm `unreachable` instruction executed")."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("wasm trap: "):
            return line[len("wasm trap: ") :]
    return one_line(message)


def one_line(message: str) -> str:
    """wasmtime's multi-line "Caused by:" chain as one line, like Rust's `{e:#}`."""
    parts = []
    for chunk in message.split("Caused by:"):
        words = " ".join(x.strip() for x in chunk.strip().splitlines() if x.strip())
        # Drop wasm backtraces: they name frames, not causes.
        if words and not words.startswith("error while executing at wasm backtrace"):
            parts.append(words)
    return ": ".join(parts) or message.strip()


# ---- memory: a host memory creator that refuses growth past the limit ----------------

#: A freed linear memory that used at most this many bytes is zeroed and kept for the next
#: instance (as hotload-host's `linear_memory_keep_resident`): an instance build then maps
#: nothing, and a teardown unmaps nothing (every munmap of touched pages interrupts the
#: other cores running this process, the threads serving calls). Larger ones are unmapped.
KEEP_RESIDENT_BYTES = 1 << 20


class _Memory:
    """One linear memory this host made: its mapping, size and limit."""

    __slots__ = ("addr", "anchor", "buf", "creator", "limit", "size")

    def __init__(self, buf: mmap.mmap, limit: int, creator: int):
        self.buf = buf
        self.anchor = ctypes.c_char.from_buffer(buf)
        self.addr = ctypes.addressof(self.anchor)
        self.size = 0
        self.limit = limit
        self.creator = creator


class _Creator:
    """An engine's memory creator: the limit and the freed memories kept for reuse."""

    __slots__ = ("free", "keep", "limit")

    def __init__(self, limit: int, keep: int):
        self.limit = limit
        self.keep = keep
        self.free: list[_Memory] = []


# memset with the GIL held (it runs inside a store's teardown, itself called with the GIL).
_memset = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)(
    ctypes.cast(ctypes.memset, ctypes.c_void_p).value
)
_memories: dict[int, _Memory] = {}
_creators: dict[int, _Creator] = {}
_ids = itertools.count(1)  # next() is atomic under the GIL


def _next_id() -> int:
    return next(_ids)


def _error(message: str) -> int:
    return ctypes.cast(ffi.wasmtime_error_new(message.encode()), ctypes.c_void_p).value or 0


@ffi.wasmtime_memory_get_callback_t
def _get_memory(env, size_p, capacity_p):  # noqa: ANN001, ANN202 - ctypes callback
    mem = _memories[env]
    size_p[0] = mem.size
    # Capacity = size: every growth goes through _grow_memory, where the limit is enforced.
    capacity_p[0] = mem.size
    return mem.addr


@ffi.wasmtime_memory_grow_callback_t
def _grow_memory(env, new_size):  # noqa: ANN001, ANN202 - ctypes callback
    mem = _memories[env]
    if new_size > mem.limit:
        call = current_call()
        if call is not None and call.grow_refused is None:
            call.grow_refused = (new_size, mem.limit)
        return _error(f"memory limit exceeded: asked for {new_size} bytes")
    mem.size = new_size
    return 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _free_memory(env):  # noqa: ANN001, ANN202 - ctypes callback
    mem = _memories.pop(env, None)
    if mem is None:
        return
    creator = _creators.get(mem.creator)
    if creator is not None and mem.size <= KEEP_RESIDENT_BYTES and len(creator.free) < creator.keep:
        # Fresh pages read as zero; so must a reused memory's (data segments aside).
        _memset(mem.addr, 0, mem.size)
        mem.size = 0
        creator.free.append(mem)
    # Otherwise the last reference goes here: the mapping is unmapped.


class LinearMemory:
    """A linear memory this host created, read and written in place: its mapping never moves
    and its size is the one wasmtime asks the host for, so no wasmtime call is needed (each
    would drop and retake the GIL, and let a loading thread in, on every request). `buf` is
    the mapping; `state.size` its current size in bytes."""

    __slots__ = ("buf", "state")

    def __init__(self, mem: _Memory):
        self.buf = mem.buf
        self.state = mem

    def size(self) -> int:
        """Current size in bytes."""
        return self.state.size

    def read(self, ptr: int, length: int) -> bytes:
        """`length` bytes at `ptr` (the caller checked the range)."""
        return self.buf[ptr : ptr + length]

    def write(self, ptr: int, data: bytes) -> None:
        """Writes data at `ptr` (the caller checked the range)."""
        self.buf[ptr : ptr + len(data)] = data


def recording_memories(created: list[int] | None) -> None:
    """Starts (into a list) or stops (None) recording the keys of the memories created on
    this thread meanwhile (an instantiation's)."""
    _local.new_memories = created


def created_memory(created: list[int], addr: int | None) -> LinearMemory | None:
    """The memory at `addr` among those recorded in `created`, if this host made it (any of
    them when `addr` is None and exactly one was made)."""
    if addr is None and len(created) == 1:
        mem = _memories.get(created[0])
        return LinearMemory(mem) if mem is not None else None
    for key in created:
        mem = _memories.get(key)
        if mem is not None and mem.addr == addr:
            return LinearMemory(mem)
    return None


@ffi.wasmtime_new_memory_callback_t
def _new_memory(env, _ty, minimum, _maximum, _reserved, _guard, out):  # noqa: ANN001, ANN202
    creator = _creators[env]
    limit = creator.limit
    if minimum > limit:
        return _error(f"memory minimum size of {minimum} bytes exceeds the limit of {limit} bytes")
    try:
        mem = creator.free.pop()
    except IndexError:
        try:
            buf = mmap.mmap(-1, max(limit, mmap.PAGESIZE))
        except OSError as err:
            return _error(f"cannot map {limit} bytes for a linear memory: {err}")
        mem = _Memory(buf, limit, env)
    mem.size = minimum
    key = next(_ids)
    _memories[key] = mem
    created = getattr(_local, "new_memories", None)
    if created is not None:
        created.append(key)
    out[0].env = key
    out[0].get_memory = _get_memory
    out[0].grow_memory = _grow_memory
    out[0].finalizer = _free_memory
    return 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _free_creator(env):  # noqa: ANN001, ANN202 - ctypes callback
    _creators.pop(env, None)


def build_engine(cfg: HostConfig) -> wasmtime.Engine:
    """An engine with epoch interruption and the limiting memory creator."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.parallel_compilation = True
    # Explicit bounds checks against the current size, so memories need no reservation or
    # guard region and can be backed by the creator below; never moved.
    config.memory_reservation = 0
    config.memory_guard_size = 0
    config.memory_reservation_for_growth = 0
    config.memory_may_move = True
    config.memory_init_cow = False
    key = _next_id()
    # Enough freed memories for a swapped-out revision's instances to become the next one's.
    _creators[key] = _Creator(cfg.max_memory_bytes, 2 * max(1, cfg.instances_per_revision))
    creator = ffi.wasmtime_memory_creator_t()
    creator.env = key
    creator.new_memory = _new_memory
    creator.finalizer = _free_creator
    ffi.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(creator))
    return wasmtime.Engine(config)


class EpochTicker:
    """Advances an engine's epoch every tick until stopped."""

    def __init__(self, engine: wasmtime.Engine, tick: float):
        self._engine = engine
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Starts (or, in a forked child, restarts) the ticker thread."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hotload-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            self._engine.increment_epoch()

    def stop(self) -> None:
        """Stops the thread and waits for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


# ---- WASI: sandboxed preview1, with a poll_oneoff bounded by the call deadline -------

WASI = "wasi_snapshot_preview1"
_EINVAL, _EFAULT, _EBADF, _ENOTSUP = 28, 21, 8, 58
_SUB, _EVENT = 48, 32


def _poll_oneoff(caller: Caller, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int):
    """Returns (errno, timed_out). Clock subscriptions sleep, bounded by the call deadline;
    fd subscriptions fail at once (a plugin has no files)."""
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        return _EINVAL, False
    size = mem.data_len(caller)
    if nsubs == 0:
        return _EINVAL, False
    if in_ptr + nsubs * _SUB > size or out_ptr + nsubs * _EVENT > size or nevents_ptr + 4 > size:
        return _EFAULT, False
    raw = bytes(mem.read(caller, in_ptr, in_ptr + nsubs * _SUB))
    now_mono = time.monotonic_ns()
    wake: int | None = None
    clocks, fds = [], []
    for i in range(nsubs):
        sub = raw[i * _SUB : (i + 1) * _SUB]
        userdata, tag = struct.unpack_from("<QB", sub, 0)
        if tag == 0:
            # subscription_clock: id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40
            (clock_id,) = struct.unpack_from("<I", sub, 16)
            (timeout,) = struct.unpack_from("<Q", sub, 24)
            (flags,) = struct.unpack_from("<H", sub, 40)
            if flags & 1:  # absolute
                now = time.time_ns() if clock_id == 0 else now_mono - _clock_origin()
                delay = max(0, timeout - now)
            else:
                delay = timeout
            at = now_mono + delay
            wake = at if wake is None else min(wake, at)
            clocks.append((userdata, at))
        else:
            fds.append((userdata, tag))
    events = []
    if fds:
        for userdata, tag in fds:
            events.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, _EBADF, tag, 0, 0))
    else:
        call = current_call()
        deadline_ns = int(call.deadline * 1e9) if call is not None else None
        target = wake if wake is not None else now_mono
        if deadline_ns is not None and target > deadline_ns:
            time.sleep(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
            call.slept_past_deadline = True
            return 0, True
        time.sleep(max(0.0, (target - time.monotonic_ns()) / 1e9))
        for userdata, at in clocks:
            if at <= target:
                events.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, 0, 0, 0))
    blob = b"".join(events)
    mem.write(caller, blob, out_ptr)
    mem.write(caller, struct.pack("<I", len(events)), nevents_ptr)
    return 0, False


def _clock_origin() -> int:
    call = current_call()
    return call.clock_origin if call is not None else 0


@ffi.wasmtime_func_callback_t
def _poll_trampoline(_env, caller_ptr, args, _nargs, results, _nresults):  # noqa: ANN001, ANN202
    caller = Caller(caller_ptr)
    try:
        errno, timed_out = _poll_oneoff(
            caller, args[0].of.i32, args[1].of.i32, args[2].of.i32, args[3].of.i32
        )
    except Exception:  # noqa: BLE001 - a host bug must not unwind through wasm
        errno, timed_out = _EINVAL, False
    finally:
        caller._invalidate()
    if timed_out:
        trap = wasmtime.Trap("sleep interrupted: deadline exceeded")._consume()
        return ctypes.cast(trap, ctypes.c_void_p).value
    results[0].kind = ffi.WASMTIME_I32.value
    results[0].of.i32 = errno
    return 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(_env):  # noqa: ANN001, ANN202
    return None


def build_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """The only imports plugins get: sandboxed WASI preview1, sleeps bounded by the deadline."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32, i32, i32, i32], [i32])
    module, name = WASI.encode(), b"poll_oneoff"
    # Defined through the C API directly: wasmtime-py's own trampoline passes a Python
    # exception between threads through a global, and a trap raised here must stay here.
    err = ffi.wasmtime_linker_define_func(
        linker.ptr(),
        ctypes.create_string_buffer(module),
        len(module),
        ctypes.create_string_buffer(name),
        len(name),
        ty.ptr(),
        _poll_trampoline,
        None,
        _no_finalizer,
    )
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    linker.allow_shadowing = False
    return linker
