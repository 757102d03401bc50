"""Health per plugin revision (docs/protocol.md, `health`), counted as hotload-host counts it
(plugin-sidecar/protocol/src/health.rs).

Every call counts on the revision it started on, with its wall time in the host (instance
checkout included) in fixed latency buckets and, if it failed, its kind:

    trap     the guest trapped, answered out of range, or the runtime stopped it
    timeout  the call ran past `call_timeout`
    memory   the guest grew past `max_memory_bytes`
    failed   no instance free within `checkout_timeout`, none could be re-created, or the
             app marked a returned call failed (`mark_failed`)

`take_health()` drains: it returns what happened since the previous `take_health()`. A
revision that was swapped out keeps its counts until they are taken. Thread safe (one lock
per revision, one for the table); a forked child starts with no counts.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref

from . import errors
from .errors import CallError

#: How often a Client sends the counts while calls happen, in seconds.
HEALTH_INTERVAL = 1.0

#: Upper bounds (µs) of every latency bucket but the last: 1-2-5 steps from 10 µs to 10 s.
LATENCY_BOUNDS_US = (
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
)  # fmt: skip

#: Buckets in a report: one per bound, one for slower calls.
LATENCY_BUCKETS = len(LATENCY_BOUNDS_US) + 1

ERROR_KINDS = ("trap", "timeout", "memory", "failed")


def latency_bucket(micros: float) -> int:
    """The bucket of a call of `micros` µs (whole µs): the first bound ≥ it, else the last."""
    return bisect.bisect_left(LATENCY_BOUNDS_US, max(0, int(micros)))


def error_kind(err: BaseException | None) -> str | None:
    """How a call's error counts: None (no error), trap, timeout, memory or failed."""
    if err is None:
        return None
    if not isinstance(err, CallError) or err.kind != errors.HANDLE or err.failure is None:
        return "failed"  # busy, re-instantiation failed, or not a guest failure
    kind = err.failure.kind
    if kind == errors.TIMEOUT:
        return "timeout"
    if kind == errors.MEMORY_LIMIT:
        return "memory"
    if kind in (errors.TRAP, errors.BAD_RANGE, errors.OTHER):
        return "trap"
    return "failed"


def _empty(plugin: str, revision: str) -> dict:
    return {
        "plugin": plugin,
        "revision": revision,
        "calls": 0,
        "errors": dict.fromkeys(ERROR_KINDS, 0),
        "latency_us": [0] * LATENCY_BUCKETS,
    }


class _Entry:
    """One (plugin, revision)'s counts, shared by every Revision object of that pair."""

    __slots__ = ("counts", "lock", "users")

    def __init__(self, plugin: str, revision: str):
        self.lock = threading.Lock()
        self.counts = _empty(plugin, revision)
        self.users = 0  # live Revision objects counting here (under the table's lock)

    def record(self, seconds: float, kind: str | None) -> None:
        # latency_bucket, inline: every call records.
        bucket = bisect.bisect_left(LATENCY_BOUNDS_US, max(0, int(seconds * 1e6)))
        with self.lock:
            c = self.counts
            c["calls"] += 1
            if kind is not None:
                c["errors"][kind] += 1
            c["latency_us"][bucket] += 1

    def mark_failed(self) -> None:
        with self.lock:
            self.counts["errors"]["failed"] += 1

    def take(self) -> tuple[dict, bool]:
        """Drains the counts. A report never has more failed calls than calls (the sidecar
        refuses one): marks beyond that wait for the next report with calls."""
        with self.lock:
            out = self.counts
            e = out["errors"]
            room = max(0, out["calls"] - e["trap"] - e["timeout"] - e["memory"])
            failed = min(e["failed"], room)
            self.counts = _empty(out["plugin"], out["revision"])
            self.counts["errors"]["failed"] = e["failed"] - failed
            e["failed"] = failed
            return out, self.counts["errors"]["failed"] > 0


class HealthTable:
    """A host's counts per (plugin, revision)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(ref))

    def join(self, plugin: str, revision: str) -> _Entry:
        """The entry a revision that starts serving counts in; the revision calls `leave`
        with it when it is freed."""
        key = (plugin, revision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(plugin, revision)
            entry.users += 1
        return entry

    def leave(self, entry: _Entry) -> None:
        """A revision counting in `entry` was freed."""
        with self._lock:
            entry.users -= 1

    def take(self) -> list[dict]:
        """Drains every entry (those with calls, sorted); entries of freed revisions go."""
        out = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                counts, pending = entry.take()
                if counts["calls"] > 0:
                    out.append(counts)
                if entry.users == 0 and not pending:
                    del self._entries[key]
        out.sort(key=lambda c: (c["plugin"], c["revision"]))
        return out


def _reset_in_child(ref: weakref.ref) -> None:
    table = ref()
    if table is None:
        return
    # The parent's calls are the parent's to report; its locks may be held by its threads.
    table._lock = threading.Lock()
    for entry in table._entries.values():
        entry.lock = threading.Lock()
        entry.counts = _empty(entry.counts["plugin"], entry.counts["revision"])
