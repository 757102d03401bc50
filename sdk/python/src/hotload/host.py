"""`PluginHost`: named plugin slots, each holding its serving revision.

    load(req) ── size, digest ── compile on a thread (budget; cache) ── ABI check, link
        │        ── instantiate (instances_at_load) ── configure ── self_check
        │        ── state hand-over (old.save_state → new.restore_state) ── before_unload
        └──────── slot.current = new   ◄── the only critical section (one assignment)
    call(name) ── slot.current ── checkout instance ── handle ── return
    pin(name)  ── slot.current ── Pinned ── call, call, … ── release

Everything before the assignment happens on the loading thread, off the request path; a
failure anywhere leaves the slot untouched. A call holds a reference to the revision it
started on, so it finishes there; a `Pinned` holds one for a whole request. The ABI check,
link and the rest of a module's plan (instance.ModulePlan) are kept with it by digest, so
a cached load only instantiates; a swapped-out revision's instances are freed by the next
load or health report, not by the call that let go of it last (teardown.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from . import abi, errors
from .engine import EpochTicker, HostConfig, build_engine, build_linker, one_line
from .errors import CallError, Failure, GuestError, LoadError
from .health import HealthTable
from .hooks import LoadEvent, UnloadEvent, fire
from .instance import Limits, ModulePlan, describe_exports
from .revision import Revision, RevisionId
from .teardown import free_retired

log = logging.getLogger("hotload")

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadRequest:
    """A request to make `revision` of `plugin` the serving one."""

    plugin: str
    revision: str
    digest: str
    wasm: bytes
    config: bytes = b""

    @classmethod
    def from_file(
        cls, plugin: str, revision: str, path: str, digest: str, config: bytes = b""
    ) -> LoadRequest:
        """Reads the module from `path` (the sidecar's store on the shared volume)."""
        try:
            with open(path, "rb") as f:
                wasm = f.read()
        except OSError as err:
            words = f"{err.strerror} (os error {err.errno})" if err.strerror else str(err)
            raise LoadError(
                errors.READ, plugin, revision, reason=f"cannot read {path}: {words}"
            ) from err
        return cls(plugin, revision, digest, wasm, config)


@dataclass(frozen=True)
class Loaded:
    """A successful load."""

    revision: str
    swapped: bool
    cache: str
    self_checked: bool
    state_bytes: int | None
    compile_seconds: float
    total_seconds: float
    swap_seconds: float

    def health(self) -> str:
        """The `health` summary answered to the sidecar."""
        if not self.swapped:
            return "already serving"
        notes = ["self-check passed" if self.self_checked else "loaded"]
        if self.state_bytes is not None:
            notes.append(f"state handed over ({self.state_bytes} bytes)")
        notes.append(f"cache {self.cache}")
        return "; ".join(notes)


def plan_load(current: RevisionId | None, wanted: RevisionId) -> str:
    """ "already_serving" when the same revision, digest and config serve, else "swap". Pure."""
    return "already_serving" if current == wanted else "swap"


class _Compiled:
    """A compiled module kept by digest, with what loads work out from it alone."""

    __slots__ = ("linked", "module")

    def __init__(self, module: wasmtime.Module):
        self.module = module
        # Its ABI capabilities, imports and the rest, once a load has checked and linked it.
        self.linked: ModulePlan | None = None


class _Slot:
    __slots__ = ("current", "loading")

    def __init__(self) -> None:
        self.current: Revision | None = None
        # Serialises loads of one plugin; other plugins load concurrently.
        self.loading = threading.Lock()


class Pinned:
    """One revision of a plugin held for a request: every call runs there, whatever is
    loaded or unloaded meanwhile. A context manager; the swap never waits for it."""

    __slots__ = ("_rev",)

    def __init__(self, rev: Revision):
        self._rev: Revision | None = rev

    def call(self, data: bytes) -> bytes:
        """Calls the plugin's `handle` on the pinned revision."""
        if self._rev is None:
            raise ValueError("hotload: call through a released pin")
        return self._rev.call(data)

    @property
    def revision(self) -> RevisionId:
        """The pinned revision's identity."""
        if self._rev is None:
            raise ValueError("hotload: released pin")
        return self._rev.id

    def mark_failed(self) -> None:
        """Counts one call through this pin that returned as failed (its answer was unusable,
        say) on the pinned revision. Does nothing after release."""
        if self._rev is not None:
            self._rev.mark_failed()

    def release(self) -> None:
        """Lets the revision go (it is freed when the last holder lets go)."""
        self._rev = None

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PluginHost:
    """The app's Wasm plugin host: one wasmtime engine, many named plugins."""

    def __init__(self, config: HostConfig | None = None, *, hooks: object | None = None):
        self.config = config or HostConfig()
        self.hooks = hooks
        self._engine = build_engine(self.config)
        self._linker = build_linker(self._engine)
        self._ticker = EpochTicker(self._engine, self.config.epoch_tick)
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._health = HealthTable()
        # Compiled modules by digest, most recent last: a reload of a digest this process
        # compiled already (a revision rolled back to, a new config) skips the compile.
        self._compiled: OrderedDict[str, _Compiled] = OrderedDict()
        self._compiled_lock = threading.Lock()
        self._fingerprint = hashlib.sha256(
            f"wasmtime-py {_wasmtime_version()} {self.config.max_memory_bytes}".encode()
        ).hexdigest()[:16]
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart_ticker(ref))

    # ---- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stops the epoch ticker; the host serves no guest code with a deadline after this."""
        self._ticker.stop()
        free_retired()

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests --------------------------------------------------------------------

    def _slot(self, plugin: str) -> _Slot | None:
        return self._slots.get(plugin)

    def call(self, plugin: str, data: bytes) -> bytes:
        """Calls `plugin`'s handle with `data` on the revision serving right now."""
        slot = self._slots.get(plugin)  # _current, inline: every call's path
        rev = slot.current if slot is not None else None
        if rev is None:
            raise CallError(errors.NOT_LOADED, plugin)
        return rev.call(data)

    def pin(self, plugin: str) -> Pinned:
        """Pins the serving revision for all the calls of one request (`with host.pin(p) as p:`)."""
        return Pinned(self._current(plugin))

    def mark_failed(self, plugin: str) -> bool:
        """Counts one call to `plugin` that returned as failed (its answer was unusable, say)
        on the revision serving now; False when none serves. To mark the very revision a
        request called, even across a swap, call through a pin and use `Pinned.mark_failed`."""
        slot = self._slot(plugin)
        rev = slot.current if slot is not None else None
        if rev is None:
            return False
        rev.mark_failed()
        return True

    def take_health(self) -> list[dict]:
        """What each plugin revision did since the previous take_health() (only revisions
        with calls, sorted by plugin and revision), as entries of the protocol's `health`
        message: plugin, revision, calls, errors {trap, timeout, memory, failed}, latency_us
        (20 buckets). Counting starts afresh. A Client sends it about once a second."""
        free_retired()  # with a Client, within a second of the last call on a revision
        return self._health.take()

    def _current(self, plugin: str) -> Revision:
        slot = self._slot(plugin)
        rev = slot.current if slot is not None else None
        if rev is None:
            raise CallError(errors.NOT_LOADED, plugin)
        return rev

    def serving(self, plugin: str) -> RevisionId | None:
        """The revision serving `plugin`, if any."""
        slot = self._slot(plugin)
        rev = slot.current if slot is not None else None
        return rev.id if rev is not None else None

    def plugins(self) -> list[str]:
        """Names of the plugins with a serving revision, sorted."""
        with self._slots_lock:
            return sorted(n for n, s in self._slots.items() if s.current is not None)

    # ---- loads -----------------------------------------------------------------------

    def load_file(
        self, plugin: str, revision: str, path: str, digest: str, config: bytes = b""
    ) -> Loaded:
        """Reads `path` and loads it (what the app-socket client does for a `load`)."""
        try:
            req = LoadRequest.from_file(plugin, revision, path, digest, config)
        except LoadError as err:
            fire(self.hooks, "load_failed", plugin, revision, err)
            raise
        return self.load(req)

    def load(self, req: LoadRequest) -> Loaded:
        """Loads a revision; on any failure the previous revision keeps serving."""
        free_retired()
        try:
            loaded = self._try_load(req)
        except LoadError as err:
            log.warning(
                "plugin load failed; previous revision keeps serving",
                extra={"plugin": req.plugin, "revision": req.revision, "error": str(err)},
            )
            fire(self.hooks, "load_failed", req.plugin, req.revision, err)
            raise
        log.info(
            "plugin loaded",
            extra={"plugin": req.plugin, "revision": req.revision, "swapped": loaded.swapped},
        )
        return loaded

    def _slot_or_create(self, plugin: str, revision: str) -> _Slot:
        with self._slots_lock:
            slot = self._slots.get(plugin)
            if slot is not None:
                return slot
            if len(self._slots) >= self.config.max_plugins:
                raise LoadError(
                    errors.TOO_MANY_PLUGINS,
                    plugin,
                    revision,
                    reason=f"cannot load more than {self.config.max_plugins} plugins",
                )
            slot = _Slot()
            self._slots[plugin] = slot
            return slot

    def _try_load(self, req: LoadRequest) -> Loaded:
        start = time.monotonic()
        p, r = req.plugin, req.revision
        if len(req.wasm) > self.config.max_module_bytes:
            raise LoadError(
                errors.MODULE_TOO_LARGE,
                p,
                r,
                reason=f"module is {len(req.wasm)} bytes, over the limit of "
                f"{self.config.max_module_bytes} bytes",
            )
        if not _SHA256.fullmatch(req.digest):
            raise LoadError(
                errors.BAD_DIGEST,
                p,
                r,
                reason=f"malformed digest {_quote(req.digest)}: want sha256:<64 lowercase hex>",
            )
        actual = sha256_digest(req.wasm)
        if actual != req.digest:
            raise LoadError(
                errors.DIGEST_MISMATCH,
                p,
                r,
                reason=f"digest mismatch: expected {req.digest}, got {actual}",
            )
        rid = RevisionId(p, r, req.digest, bytes(req.config))
        while True:
            slot = self._slot_or_create(p, r)
            with slot.loading:
                if self._slot(p) is not slot:
                    continue  # unloaded while this load waited
                try:
                    return self._load_into(slot, rid, req.wasm, start)
                except LoadError:
                    if slot.current is None:
                        # A failed first load leaves no empty slot to count against max_plugins.
                        with self._slots_lock:
                            if self._slots.get(p) is slot:
                                del self._slots[p]
                    raise

    def _load_into(self, slot: _Slot, rid: RevisionId, wasm: bytes, start: float) -> Loaded:
        old = slot.current
        if plan_load(old.id if old else None, rid) == "already_serving":
            return Loaded(
                rid.revision, False, "hit", False, None, 0.0, time.monotonic() - start, 0.0
            )
        p, r = rid.plugin, rid.revision

        def guest(kind: str, failure: Failure) -> LoadError:
            return LoadError(kind, p, r, failure=failure)

        t = time.monotonic()
        compiled, cache = self._module(rid, wasm)
        compile_seconds = time.monotonic() - t
        plan = self._linked(rid, compiled, wasm)
        caps = plan.caps
        limits = Limits(self.config.deadline_ticks(), self.config.call_timeout)
        try:
            new = Revision(
                rid,
                plan,
                self._engine,
                self.config.instances_per_revision,
                limits,
                self.config.checkout_timeout,
                self.config.instances_at_load,
            )
        except GuestError as err:
            raise guest(getattr(err, "phase", errors.INSTANTIATE), err.failure) from None
        self_checked = False
        if caps.self_check:
            try:
                new.self_check()
            except GuestError as err:
                raise guest(errors.SELF_CHECK, err.failure) from None
            self_checked = True
        state_bytes = None
        if old is not None and old.caps.save_state and caps.restore_state:
            try:
                with old.checkout() as loan:
                    try:
                        snapshot = loan.instance.save_state() or b""
                    except GuestError:
                        # Its memory may be half-written: the old revision keeps serving
                        # from its other instances and fresh ones, never from this one.
                        loan.faulted = True
                        raise
            except GuestError as err:
                raise guest(errors.SAVE_STATE, err.failure) from None
            except CallError as err:
                raise guest(errors.SAVE_STATE, Failure(errors.OTHER, detail=str(err))) from None
            try:
                new.hand_over(snapshot)
            except GuestError as err:
                raise guest(errors.RESTORE_STATE, err.failure) from None
            state_bytes = len(snapshot)
        if old is not None and self.hooks is not None:
            fire(self.hooks, "before_unload", UnloadEvent(p, old.id.revision, r))
        new.count_in(self._health)
        t = time.perf_counter()
        slot.current = new  # the swap: one reference assignment
        swap = time.perf_counter() - t
        if self.hooks is not None:
            fire(
                self.hooks,
                "after_load",
                LoadEvent(p, r, old.id.revision if old else None, cache, swap),
            )
        return Loaded(
            r,
            True,
            cache,
            self_checked,
            state_bytes,
            compile_seconds,
            time.monotonic() - start,
            swap,
        )

    def _module(self, rid: RevisionId, wasm: bytes) -> tuple[_Compiled, str]:
        """The compiled module: from the cache directory, else compiled on a thread of its
        own within the compile budget; compiled modules are kept by digest (in memory)."""
        with self._compiled_lock:
            compiled = self._compiled.get(rid.digest)
            if compiled is not None:
                self._compiled.move_to_end(rid.digest)
                return compiled, "hit"
        module, cache = self._compile_or_read_cache(rid, wasm)
        compiled = _Compiled(module)
        with self._compiled_lock:
            self._compiled[rid.digest] = compiled
            while len(self._compiled) > 2 * self.config.max_plugins:
                self._compiled.popitem(last=False)
        return compiled, cache

    def _linked(self, rid: RevisionId, compiled: _Compiled, wasm: bytes) -> ModulePlan:
        """The module's ABI capabilities, its imports resolved against the host's linker and
        the rest of its ModulePlan, worked out once per compiled module (they depend on the
        module alone)."""
        if compiled.linked is not None:
            return compiled.linked
        p, r = rid.plugin, rid.revision
        try:
            caps = abi.check_exports(describe_exports(compiled.module))
        except abi.AbiViolation as err:
            raise LoadError(errors.ABI, p, r, reason=str(err)) from None
        try:
            pre = self._linker.instantiate_pre(compiled.module)
        except wasmtime.WasmtimeError as err:
            raise LoadError(
                errors.ABI,
                p,
                r,
                reason=f"imports cannot be satisfied (plugins get none): {one_line(str(err))}",
            ) from None
        compiled.linked = ModulePlan(compiled.module, wasm, caps, pre)
        return compiled.linked

    def _compile_or_read_cache(self, rid: RevisionId, wasm: bytes) -> tuple[wasmtime.Module, str]:
        p, r = rid.plugin, rid.revision
        cache_file = None
        if self.config.cache_dir is not None:
            hexdigest = rid.digest.split(":", 1)[1]
            cache_file = Path(self.config.cache_dir) / f"{hexdigest}-{self._fingerprint}.cwasm"
            try:
                return wasmtime.Module.deserialize(self._engine, cache_file.read_bytes()), "hit"
            except (OSError, wasmtime.WasmtimeError):
                pass  # absent or unusable (other engine, corrupt): compile
        outcome: dict[str, object] = {}

        def compile_module() -> None:
            try:
                outcome["module"] = wasmtime.Module(self._engine, wasm)
            except Exception as err:  # noqa: BLE001 - reported below
                outcome["error"] = err

        thread = threading.Thread(target=compile_module, name=f"hotload-compile-{p}", daemon=True)
        thread.start()
        thread.join(self.config.compile_timeout)
        if thread.is_alive():
            raise LoadError(
                errors.COMPILE_TIMEOUT,
                p,
                r,
                reason=f"compile did not finish within its budget of "
                f"{int(self.config.compile_timeout * 1000)} ms",
            )
        if "error" in outcome:
            raise LoadError(
                errors.INVALID_WASM, p, r, reason=one_line(str(outcome["error"]))
            ) from None
        module = outcome["module"]
        assert isinstance(module, wasmtime.Module)
        if cache_file is None:
            return module, "none"
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(module.serialize())
            tmp.replace(cache_file)
        except OSError as err:
            log.warning("cannot cache compiled module", extra={"error": str(err)})
        return module, "miss"

    def unload(self, plugin: str) -> bool:
        """Removes a plugin; calls in flight finish on the revision they started on."""
        with self._slots_lock:
            slot = self._slots.pop(plugin, None)
        if slot is None:
            return False
        with slot.loading:
            old, slot.current = slot.current, None
        unloaded = old is not None
        if unloaded:
            fire(self.hooks, "before_unload", UnloadEvent(plugin, old.id.revision, None))
        # Without calls in flight this was the last reference: its instances are queued now
        # and freed here (an app without a Client may never load again).
        del old
        free_retired()
        return unloaded


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wasmtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # noqa: BLE001
        return "unknown"


def _restart_ticker(ref: weakref.ref) -> None:
    host = ref()
    if host is not None:
        host._ticker.start()
