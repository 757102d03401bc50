"""Frees the instances of swapped-out revisions on the loading thread, not on a call's.

The last reference to a swapped-out revision is most often dropped by the call that was
running on it at the swap (with the GIL, a load runs while a call is inside wasm). Freeing
its instances there (a wasmtime store each, its linear memory zeroed for reuse) would add
to that call's latency; the revision's finalizer only queues them (`retire`), and the next load, or
the Client's next health report, frees them (`free_retired`). Not a thread of its own, as
hotload-host's reaper is: freeing is mostly Python, which holds the GIL wherever it runs,
and waking a thread for it cost the waking call more than it saved (on 2 busy cores).
"""

from __future__ import annotations

# Lists of instances, appended by finalizers on any thread (list operations are atomic).
_retired: list[list] = []


def retire(instances: list) -> None:
    """Queues a dead revision's instances to be freed later."""
    _retired.append(instances)


def free_retired() -> None:
    """Frees every queued instance, here."""
    while _retired:
        try:
            instances = _retired.pop()
        except IndexError:  # another thread took the last one
            return
        instances.clear()
