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

    client = HotloadClient("/var/run/hotload/app.sock", app="checkout")
    client.start()                      # a daemon thread: connect, hello, serve loads
    client.call("handler", request)

Protocol v2: every connection starts with
{"type":"hello","app":…,"worker":…,"protocol":2}, and each process of the app is one
worker with its own connection. `worker` defaults to the process id, read when the
connection opens; pass worker="…" for another id that is stable across reconnects and
differs between processes (two connections with one id replace each other).

Pre-fork servers (gunicorn, uWSGI, multiprocessing): start the client in each worker
process, never in the master, so that the master does not count as a worker and every
worker loads every revision. With gunicorn, create the client at import time (no
connection yet) and start it in the post_fork hook; this works with and without
preload_app:

    # myapp.py
    hotload = HotloadClient("/var/run/hotload/app.sock", app="checkout")

    # gunicorn.conf.py
    def post_fork(server, worker):
        from myapp import hotload
        hotload.start()                 # this worker's own connection, worker id = its pid

A forked child never uses a connection it inherited: it closes its copy at once (the
parent's connection stays up) and connects only when start() is called in it. Modules
loaded before the fork keep serving in the child until its own connection's loads
arrive (the sidecar re-sends the whole set on connect; a revision already serving is
answered without reloading).
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
import types
import weakref

MAX_LINE = 64 * 1024
PROTOCOL = 2
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


class LoadFailed(Exception):
    """A load that did not happen; the message is the reason sent to the sidecar."""


class Slot:
    """The serving revision of one plugin; replaced whole, never changed in place."""

    __slots__ = ("config", "digest", "module", "revision")

    def __init__(self, module, revision, digest, config):
        self.module = module
        self.revision = revision
        self.digest = digest
        self.config = config


class HotloadClient:
    """Connects to the sidecar, hot-loads Python plugin modules, answers loaded/failed.

    One instance is one worker: it keeps one connection, in the process that started it.
    """

    def __init__(
        self, socket_path, on_event=None, *, app="python-example", worker=None
    ):
        self.socket_path = socket_path
        self.on_event = on_event or (lambda event: None)
        self.app = app
        self._worker = worker
        self._slots = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._conn_lock = threading.Lock()
        self._sock = None
        self._thread = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork_in_child(ref))

    @property
    def worker(self):
        """This worker's id: the one given, else the current process id."""
        return self._worker if self._worker is not None else str(os.getpid())

    def hello(self):
        """The first line of every connection (protocol v2)."""
        return {
            "type": "hello",
            "app": self.app,
            "worker": self.worker,
            "protocol": PROTOCOL,
        }

    def call(self, plugin, *args, **kwargs):
        """Calls the serving revision's handle(); the slot is read once."""
        slot = self._slots.get(plugin)
        if slot is None:
            raise LookupError(f"plugin {plugin}: not loaded")
        return slot.module.handle(*args, **kwargs)

    def serving(self, plugin):
        """The serving revision of plugin, or None."""
        slot = self._slots.get(plugin)
        return slot.revision if slot else None

    def start(self):
        """Runs run_forever on a daemon thread of this process; returns self.

        Call it in each worker process (after fork); a second call in the same process
        while the thread runs does nothing.
        """
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, name=f"hotload-{self.worker}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Closes the connection and makes run_forever return; waits for start()'s thread."""
        self._stop.set()
        with self._conn_lock:
            sock = self._sock
        if sock is not None:
            try:
                # Wakes the reader; the sidecar sees the worker leave.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run_forever(self):
        """Connect, say hello, serve loads; reconnect with capped back-off until stop()."""
        delay = BACKOFF_START
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(self.socket_path)
                    with self._conn_lock:
                        self._sock = sock
                    if self._stop.is_set():
                        break
                    delay = BACKOFF_START
                    self._session(sock)
            except OSError as err:
                if self._stop.is_set():
                    break
                self.on_event({"event": "disconnected", "error": str(err)})
            finally:
                with self._conn_lock:
                    self._sock = None
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _forget_parent_connection(self):
        """In a forked child: drop what belongs to the parent's thread, touch nothing of it.

        Only closes the child's copy of the socket (no shutdown, which would end the
        parent's connection too), so the sidecar sees the parent leave when it does.
        Locks another thread may have held at the fork are new.
        """
        sock, self._sock = self._sock, None
        self._conn_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if sock is not None:
            # detach(): the socket object forgets the descriptor (its reader's reference
            # would keep close() from closing it, and a later close must not hit a reused
            # number).
            fd = sock.detach()
            if fd >= 0:
                os.close(fd)

    def _session(self, sock):
        sock.sendall(_line(self.hello()))
        self.on_event({"event": "connected", "worker": self.worker})
        reader = sock.makefile("rb")
        for raw in reader:
            if len(raw) > MAX_LINE:
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "error":
                self.on_event({"event": "sidecar_error", "reason": msg.get("reason")})
            if kind not in ("load", "unload"):
                continue
            try:
                reply = self.load(msg) if kind == "load" else self.unload(msg["plugin"])
            except (KeyError, TypeError) as err:  # a message without its fields
                self.on_event({"event": "bad_message", "error": repr(err)})
                continue
            sock.sendall(_line(reply))
        if not self._stop.is_set():
            self.on_event(
                {"event": "disconnected", "error": "sidecar closed the connection"}
            )

    def load(self, msg):
        """Handles one load message; returns the reply message."""
        plugin, revision = msg["plugin"], msg["revision"]
        with self._load_lock:
            try:
                health = self._load(
                    plugin, revision, msg["path"], msg["digest"], msg.get("config")
                )
            except LoadFailed as err:
                reply = {
                    "type": "failed",
                    "plugin": plugin,
                    "revision": revision,
                    "reason": str(err),
                }
                self.on_event(
                    {
                        "event": "failed",
                        "plugin": plugin,
                        "revision": revision,
                        "reason": str(err),
                    }
                )
                return reply
        self.on_event(
            {
                "event": "loaded",
                "plugin": plugin,
                "revision": revision,
                "health": health,
            }
        )
        return {
            "type": "loaded",
            "plugin": plugin,
            "revision": revision,
            "health": health,
        }

    def unload(self, plugin):
        """Stops serving plugin (a rollback to no plugin); returns the reply message."""
        with self._load_lock:
            slot = self._slots.pop(plugin, None)
        self.on_event(
            {"event": "unloaded", "plugin": plugin, "was_loaded": slot is not None}
        )
        return {"type": "unloaded", "plugin": plugin}

    def _load(self, plugin, revision, path, digest, config):
        slot = self._slots.get(plugin)
        if slot and (slot.revision, slot.digest, slot.config) == (
            revision,
            digest,
            config,
        ):
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
            exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the plugin
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
        old = slot.module if slot else None
        if (
            old is not None
            and callable(getattr(old, "save_state", None))
            and callable(getattr(module, "restore_state", None))
        ):
            state = _guard("save_state", old.save_state)
            _guard("restore_state", lambda: module.restore_state(state))
            notes.append("state restored")
        # The swap: one reference assignment (atomic under the GIL and free-threaded builds);
        # call() and serving() see the old slot or the new one, never a mix.
        self._slots[plugin] = Slot(module, revision, digest, config)
        return "; ".join(notes) or "loaded"


def _after_fork_in_child(ref):
    client = ref()
    if client is not None:
        client._forget_parent_connection()


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
    parser.add_argument("--app", default="python-example", help="app name in hello")
    parser.add_argument("--worker", help="worker id in hello (default: the process id)")
    parser.add_argument(
        "--plugin", default="handler", help="plugin to probe after each event"
    )
    parser.add_argument(
        "--probe", default="ping", help="request sent to handle() after each load"
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="exit after this long"
    )
    args = parser.parse_args()

    def report(event):
        # One JSON line per event, with what the serving plugin answers now.
        if event["event"] in ("loaded", "failed"):
            try:
                event["probe"] = client.call(args.plugin, args.probe)
            except Exception as err:  # noqa: BLE001 - reported, not raised
                event["probe_error"] = str(err)
        print(json.dumps(event), flush=True)

    client = HotloadClient(
        args.socket, on_event=report, app=args.app, worker=args.worker
    )
    client.start()
    time.sleep(args.seconds)
    client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
