"""Events an app can react to around a swap (metrics, logs, warming caches, alerting).

Hooks run on the loading thread, never on a request thread. `before_unload` runs after the
new revision passed every check and right before the swap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadEvent:
    """What was swapped in."""

    plugin: str
    revision: str
    previous: str | None
    cache: str
    swap_seconds: float


@dataclass(frozen=True)
class UnloadEvent:
    """What is about to be replaced (next set) or removed (next None)."""

    plugin: str
    revision: str
    next: str | None


class HostHooks:
    """Callbacks around loads; every method defaults to doing nothing. Subclass what you need."""

    def before_unload(self, event: UnloadEvent) -> None:
        """Called right before `event.revision` stops taking new calls."""

    def after_load(self, event: LoadEvent) -> None:
        """Called right after a new revision started taking calls."""

    def load_failed(self, plugin: str, revision: str, error: Exception) -> None:
        """Called when a load was refused; the old revision keeps serving."""


def fire(hooks: object | None, name: str, *args: object) -> None:
    """Calls hook `name` if the app gave one; a hook that raises never fails a load."""
    fn = getattr(hooks, name, None) if hooks is not None else None
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the app's hook, not the load, failed
        import logging

        logging.getLogger("hotload").exception("hook %s raised", name)
