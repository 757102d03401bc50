"""The app socket protocol v2 (docs/protocol.md), as pure functions: newline-delimited JSON.

app ──► sidecar   {"type":"hello","app":"checkout","worker":"4711","protocol":2}
sidecar ──► app   {"type":"load","plugin":"auth","revision":"r2","path":"…","digest":"…","config":…}
app ──► sidecar   {"type":"loaded",…,"health":"…"} | {"type":"failed",…,"reason":"…"}
sidecar ──► app   {"type":"unload","plugin":"auth"}
app ──► sidecar   {"type":"unloaded","plugin":"auth"}
sidecar ──► app   {"type":"error","reason":"…"}   (the app sent something unusable)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL = 2
# A longer line from the sidecar is skipped, not buffered.
MAX_SIDECAR_LINE = 1 << 20
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


@dataclass(frozen=True)
class Message:
    """A usable message from the sidecar."""

    type: str
    plugin: str = ""
    revision: str = ""
    path: str | None = None
    digest: str = ""
    config: Any = None
    reason: str = ""


class Unusable(ValueError):
    """A line that is not a message this app can act on (logged, never answered)."""


def hello(app: str, worker: str) -> dict:
    """The first line of every connection."""
    return {"type": "hello", "app": app, "worker": worker, "protocol": PROTOCOL}


def loaded(plugin: str, revision: str, health: str) -> dict:
    """Answer: revision now serves in this worker."""
    return {"type": "loaded", "plugin": plugin, "revision": revision, "health": health}


def failed(plugin: str, revision: str, reason: str) -> dict:
    """Answer: the load was refused; the previous revision still serves."""
    return {"type": "failed", "plugin": plugin, "revision": revision, "reason": reason}


def health(plugins: list[dict]) -> dict:
    """How the worker's plugins ran since its previous report (see health.py)."""
    return {"type": "health", "plugins": plugins}


def unloaded(plugin: str) -> dict:
    """Answer: plugin no longer runs in this worker."""
    return {"type": "unloaded", "plugin": plugin}


def encode(msg: dict) -> bytes:
    """One line, newline included."""
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode()


def parse(line: bytes) -> Message:
    """Parses one line from the sidecar (without its newline); raises Unusable."""
    try:
        raw = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise Unusable(f"not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise Unusable("not a JSON object")
    kind = raw.get("type")

    def text(name: str) -> str:
        value = raw.get(name, "")
        return value if isinstance(value, str) else ""

    if kind == "load":
        if not text("plugin") or not text("revision"):
            raise Unusable("a load without plugin or revision cannot be answered")
        path = raw.get("path")
        return Message(
            "load",
            plugin=text("plugin"),
            revision=text("revision"),
            path=path if isinstance(path, str) and path else None,
            digest=text("digest"),
            config=raw.get("config"),
        )
    if kind == "unload":
        if not text("plugin"):
            raise Unusable("an unload without plugin cannot be answered")
        return Message("unload", plugin=text("plugin"))
    if kind == "error":
        return Message("error", reason=text("reason"))
    raise Unusable(f"unknown message type {kind!r}")


def config_bytes(config: Any) -> bytes:
    """What a plugin's configure receives: nothing for null, else compact JSON text."""
    if config is None:
        return b""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


def next_backoff(delay: float, low: float = BACKOFF_START, high: float = BACKOFF_MAX) -> float:
    """The wait before the next connection attempt: doubling, capped."""
    return low if delay < low else min(2 * delay, high)
