"""One loaded revision of a plugin: a pool of up to `instances` instances that calls check out.

Instances live across calls because plugins keep state that the ABI hands over across a
swap. An instance that faulted (trap, deadline, memory limit) is dropped, never lent again,
and a fresh one is made on a later checkout. A call holds a reference to the revision it
started on, which is how a swap never cuts a call off.

A load builds only `warm` instances (`HostConfig.instances_at_load`, one by default), which
run the self-check and take the handed-over state before the revision is published. The
rest of the pool is built when a checkout first finds every built instance lent out, and
each passes the same steps (configure, self-check, the load's snapshot) before it serves:
it is the instance the load would have built, kept idle until needed. Why: with the GIL,
every instance a load builds is tens of µs of Python that the calls running meanwhile wait
for (docs/benchmarks.md, "App SDKs"), and an app that never calls a plugin from two threads
at once never needs a second instance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import wasmtime

from . import errors
from .errors import CallError, Failure, GuestError
from .health import HealthTable, _Entry, error_kind
from .instance import Limits, ModulePlan, PluginInstance
from .teardown import retire

_PHASE = {
    errors.CONFIGURE: "configure",
    errors.SELF_CHECK: "self-check",
    errors.RESTORE_STATE: "restore-state",
}


@dataclass(frozen=True)
class RevisionId:
    """Identity of a revision: what a repeated load is compared against."""

    plugin: str
    revision: str
    digest: str
    config: bytes


class Revision:
    """A loaded revision and its instances."""

    _built = False
    _health_table = None

    def __init__(
        self,
        rid: RevisionId,
        plan: ModulePlan,
        engine: wasmtime.Engine,
        instances: int,
        limits: Limits,
        checkout_timeout: float,
        warm: int = 1,
    ):
        self.id = rid
        self.caps = plan.caps
        self._plan = plan
        self._engine = engine
        self._limits = limits
        self._target = max(1, instances)
        self._checkout_timeout = checkout_timeout
        # `with self._lock` on the paths every call takes (a Condition's own __enter__ and
        # __exit__ are Python); the condition, on the same lock, for the waits.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[PluginInstance] = []
        self._live = 0
        # Checkouts waiting for an instance (none left to lend or build).
        self._waiting = 0
        # Instances of the first pool not built yet: each is built the way the load builds
        # its warm ones (self-check, snapshot); a replacement for a faulted one only configures.
        self._unbuilt = self._target - min(self._target, max(1, warm))
        # The state handed over at load (None: none), for the instances built after it.
        self._snapshot: bytes | None = None
        # Where its calls count, and the table to leave when freed; set when it starts
        # serving (see health.py).
        self.health: _Entry | None = None
        self._health_table: HealthTable | None = None
        for _ in range(self._target - self._unbuilt):
            self._idle.append(self.instantiate())
        self._live = len(self._idle)
        # From here on, its instances are freed by a later load when it goes (teardown.py).
        self._built = True

    def count_in(self, table: HealthTable) -> None:
        """Counts this revision's calls in `table` from now on (it starts serving)."""
        self.health = table.join(self.id.plugin, self.id.revision)
        self._health_table = table

    def __del__(self, _retire: Callable[[list], None] = retire) -> None:
        # Cheaper than weakref.finalize, at creation and at the end; a revision is in no
        # reference cycle, so this runs as the last reference goes, on that thread.
        if self._built:
            _retire(self._idle)
        if self._health_table is not None:
            self._health_table.leave(self.health)

    def instantiate(self) -> PluginInstance:
        """A new configured instance; raises GuestError(phase in {instantiate, configure})."""
        try:
            inst = PluginInstance(self._plan, self._engine, self._limits)
        except GuestError as err:
            err.phase = errors.INSTANTIATE
            raise
        try:
            inst.configure(self.id.config)
        except GuestError as err:
            err.phase = errors.CONFIGURE
            raise
        return inst

    def self_check(self) -> None:
        """Runs the self-check on every instance built (only before the revision is published)."""
        if self.caps.self_check:
            self.for_each_instance(lambda i: i.self_check())

    def hand_over(self, snapshot: bytes) -> None:
        """Restores the old revision's snapshot into every instance built, and keeps it for the
        ones built later (only before the revision is published)."""
        self._snapshot = snapshot
        self.for_each_instance(lambda i: i.restore_state(snapshot))

    def _prepared(self) -> PluginInstance:
        """An instance of the first pool, built as at load: configured, self-checked, given the
        load's snapshot; raises GuestError(phase) like a load's step would."""
        inst = self.instantiate()
        if self.caps.self_check:
            try:
                inst.self_check()
            except GuestError as err:
                err.phase = errors.SELF_CHECK
                raise
        if self._snapshot is not None:
            try:
                inst.restore_state(self._snapshot)
            except GuestError as err:
                err.phase = errors.RESTORE_STATE
                raise
        return inst

    @contextmanager
    def checkout(self) -> Iterator[_Loan]:
        """Borrows an instance (creating one if faults cost the pool some); returns it after."""
        loan = _Loan(self._take())
        try:
            yield loan
        finally:
            with self._cond:
                if loan.faulted:
                    self._live -= 1
                else:
                    self._idle.append(loan.instance)
                if self._waiting:
                    self._cond.notify()

    def _take(self) -> PluginInstance:
        deadline = time.monotonic() + self._checkout_timeout
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._live < self._target:
                    self._live += 1
                    first = self._unbuilt > 0
                    if first:
                        self._unbuilt -= 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallError(
                        errors.BUSY,
                        self.id.plugin,
                        self.id.revision,
                        waited_ms=int(self._checkout_timeout * 1000),
                    )
                self._waiting += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting -= 1
        try:
            return self._prepared() if first else self.instantiate()
        except GuestError as err:
            with self._cond:
                self._live -= 1
                if first:
                    self._unbuilt += 1
                if self._waiting:
                    self._cond.notify()
            failure = err.failure
            phase = getattr(err, "phase", "")
            if phase in _PHASE and failure.kind == errors.STATUS:
                failure = Failure(errors.OTHER, detail=f"{_PHASE[phase]}: {failure}")
            raise CallError(
                errors.REINSTANTIATE, self.id.plugin, self.id.revision, failure=failure
            ) from err

    def for_each_instance(self, fn: Callable[[PluginInstance], None]) -> None:
        """Runs fn on every idle instance (only before the revision is published)."""
        with self._cond:
            for inst in self._idle:
                fn(inst)

    def call(self, data: bytes) -> bytes:
        """Handles one request on a pooled instance, and counts it."""
        start = time.perf_counter()
        try:
            out = self._handle(data)
        except BaseException as err:
            if self.health is not None:
                self.health.record(time.perf_counter() - start, error_kind(err))
            raise
        if self.health is not None:
            self.health.record(time.perf_counter() - start, None)
        return out

    def mark_failed(self) -> None:
        """Counts a returned call the app found failed."""
        if self.health is not None:
            self.health.mark_failed()

    def _handle(self, data: bytes) -> bytes:
        # `checkout` inlined: this is every call's path.
        with self._lock:
            inst = self._idle.pop() if self._idle else None
        if inst is None:
            inst = self._take()
        try:
            out = inst.handle(data)
        except GuestError as err:
            # Its memory may be half-updated: never hand it to another request.
            with self._lock:
                self._live -= 1
                if self._waiting:
                    self._cond.notify()
            raise CallError(
                errors.HANDLE, self.id.plugin, self.id.revision, failure=err.failure
            ) from None
        except BaseException:
            with self._lock:
                self._idle.append(inst)
                if self._waiting:
                    self._cond.notify()
            raise
        with self._lock:
            self._idle.append(inst)
            if self._waiting:
                self._cond.notify()
        return out


class _Loan:
    __slots__ = ("faulted", "instance")

    def __init__(self, instance: PluginInstance):
        self.instance = instance
        self.faulted = False
