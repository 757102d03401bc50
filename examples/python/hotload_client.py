#!/usr/bin/env python3
"""Hotload app-side client in pure Python (standard library only).

Implements the app socket protocol of docs/protocol.md for Python plugins: the artifact
the sidecar hands over is a Python module file. A plugin module defines

    handle(request) -> response        required
    configure(config)                  optional, receives the release's config (JSON value)
    self_check() -> bool               optional, run before the swap; False/raise = Failed
    save_state() -> object             optional, on the outgoing revision
    restore_state(state)               optional, on the incoming revision; raise = Failed

A load imports the new module next to the serving one, runs its checks, then swaps a
single reference: a call that already holds the old module finishes on it, and a failed
load leaves the old module serving.

    client = HotloadClient("/var/run/hotload/app.sock")
    threading.Thread(target=client.run_forever, daemon=True).start()
    client.call("handler", request)
"""

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
import types

MAX_LINE = 64 * 1024


class LoadFailed(Exception):
    """A load that did not happen; the message is the reason sent to the sidecar."""


class Slot:
    """One plugin slot: the serving module and its identity."""

    def __init__(self):
        self.module = None
        self.revision = None
        self.digest = None
        self.config = None


class HotloadClient:
    """Connects to the sidecar, hot-loads Python plugin modules, answers loaded/failed."""

    def __init__(self, socket_path, on_event=None):
        self.socket_path = socket_path
        self.on_event = on_event or (lambda event: None)
        self._slots = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()

    def call(self, plugin, *args, **kwargs):
        """Calls the serving revision's handle(); the module reference is read once."""
        slot = self._slots.get(plugin)
        module = slot.module if slot else None
        if module is None:
            raise LookupError(f"plugin {plugin}: not loaded")
        return module.handle(*args, **kwargs)

    def serving(self, plugin):
        """The serving revision of plugin, or None."""
        slot = self._slots.get(plugin)
        return slot.revision if slot else None

    def stop(self):
        """Makes run_forever return after its current wait."""
        self._stop.set()

    def run_forever(self):
        """Connect, serve loads, reconnect with capped back-off until stop()."""
        delay = 0.05
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(self.socket_path)
                    delay = 0.05
                    self._session(sock)
            except OSError as err:
                self.on_event({"event": "disconnected", "error": str(err)})
            self._stop.wait(delay)
            delay = min(delay * 2, 2.0)

    def _session(self, sock):
        sock.sendall(_line({"type": "hello", "app": "python-example"}))
        reader = sock.makefile("rb")
        for raw in reader:
            if len(raw) > MAX_LINE:
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("type") == "load":
                sock.sendall(_line(self.load(msg)))
            elif msg.get("type") == "unload":
                sock.sendall(_line(self.unload(msg["plugin"])))
            elif msg.get("type") == "error":
                self.on_event({"event": "sidecar_error", "reason": msg.get("reason")})
        self.on_event({"event": "disconnected", "error": "sidecar closed the connection"})

    def load(self, msg):
        """Handles one load message; returns the reply message."""
        plugin, revision = msg["plugin"], msg["revision"]
        with self._load_lock:
            try:
                health = self._load(plugin, revision, msg["path"], msg["digest"], msg.get("config"))
            except LoadFailed as err:
                reply = {"type": "failed", "plugin": plugin, "revision": revision, "reason": str(err)}
                self.on_event({"event": "failed", "plugin": plugin, "revision": revision, "reason": str(err)})
                return reply
        self.on_event({"event": "loaded", "plugin": plugin, "revision": revision, "health": health})
        return {"type": "loaded", "plugin": plugin, "revision": revision, "health": health}

    def unload(self, plugin):
        """Stops serving plugin (a rollback to no plugin); returns the reply message."""
        with self._load_lock:
            slot = self._slots.pop(plugin, None)
        self.on_event({"event": "unloaded", "plugin": plugin, "was_loaded": slot is not None})
        return {"type": "unloaded", "plugin": plugin}

    def _load(self, plugin, revision, path, digest, config):
        slot = self._slots.setdefault(plugin, Slot())
        if (slot.revision, slot.digest, slot.config) == (revision, digest, config) and slot.module:
            return "already serving"
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as err:
            raise LoadFailed(f"cannot read {path}: {err}") from err
        actual = "sha256:" + hashlib.sha256(source).hexdigest()
        if actual != digest:
            raise LoadFailed(f"digest mismatch: expected {digest}, got {actual}")
        name = f"hotload_plugin_{plugin}_{revision}".replace("-", "_")
        module = types.ModuleType(name)
        module.__file__ = path
        try:
            # Execute exactly the bytes that were verified (no second read of the file), and
            # write no __pycache__ into the sidecar's store.
            exec(compile(source, path, "exec"), module.__dict__)
        except BaseException as err:  # a plugin must never take the app down
            raise LoadFailed(f"import failed: {type(err).__name__}: {err}") from err
        if not callable(getattr(module, "handle", None)):
            raise LoadFailed("ABI violation: module defines no handle()")
        notes = []
        if callable(getattr(module, "configure", None)):
            _guard("configure", lambda: module.configure(config))
        if callable(getattr(module, "self_check", None)):
            if _guard("self_check", module.self_check) is False:
                raise LoadFailed("self_check returned False")
            notes.append("self-check passed")
        old = slot.module
        if old is not None and callable(getattr(old, "save_state", None)) and callable(
            getattr(module, "restore_state", None)
        ):
            state = _guard("save_state", old.save_state)
            _guard("restore_state", lambda: module.restore_state(state))
            notes.append("state restored")
        # The swap: one reference assignment (atomic under the GIL and free-threaded builds).
        slot.module, slot.revision, slot.digest, slot.config = module, revision, digest, config
        return "; ".join(notes) or "loaded"


def _guard(phase, fn):
    try:
        return fn()
    except BaseException as err:
        raise LoadFailed(f"{phase} raised {type(err).__name__}: {err}") from err


def _line(msg):
    return (json.dumps(msg) + "\n").encode()


def main():
    parser = argparse.ArgumentParser(description="Hotload Python client demo")
    parser.add_argument("--socket", required=True, help="the sidecar's app socket")
    parser.add_argument("--plugin", default="handler", help="plugin to probe after each event")
    parser.add_argument("--probe", default="ping", help="request sent to handle() after each load")
    parser.add_argument("--seconds", type=float, default=60.0, help="exit after this long")
    args = parser.parse_args()

    def report(event):
        # One JSON line per event, with what the serving plugin answers now.
        if event["event"] in ("loaded", "failed"):
            try:
                event["probe"] = client.call(args.plugin, args.probe)
            except Exception as err:  # noqa: BLE001 - reported, not raised
                event["probe_error"] = str(err)
        print(json.dumps(event), flush=True)

    client = HotloadClient(args.socket, on_event=report)
    threading.Thread(target=client.run_forever, daemon=True).start()
    time.sleep(args.seconds)
    client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
