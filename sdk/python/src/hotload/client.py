"""`Client`: one worker's link to the Hotload sidecar (app protocol v2, docs/protocol.md).

    connect ─ hello ─┬─ load ─── host.load_file (this thread, off requests) ─ loaded | failed
                     ├─ unload ─ host.unload ────────────────────────────────── unloaded
                     ├─ error, garbage, overlong lines: logged, connection kept
                     └─ every second: host.take_health() ─ health (only when calls happened)
    drop ─ wait 50 ms, 100 ms, … 2 s ─ connect again, hello again (same worker id)

One client is one worker: it keeps one connection, in the process that started it. After
`fork` the child closes its copy of the parent's connection at once (without shutting it
down, which would end the parent's too) and connects only when `start()` is called in it.
Pre-fork servers start it per worker; with gunicorn, in `post_fork`:

    # gunicorn.conf.py
    def post_fork(server, worker):
        from myapp import hotload_client
        hotload_client.start()          # this worker's own connection; worker id = its pid
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable

from . import protocol
from .errors import HotloadError
from .health import HEALTH_INTERVAL

log = logging.getLogger("hotload.client")

DEFAULT_SOCKET = "/var/run/hotload/app.sock"


class Client:
    """Connects to the sidecar, hands every load to `host`, answers loaded/failed/unloaded.

    `host` is a `PluginHost` (Wasm) or a `ModuleHost` (Python modules): anything with
    `load_file(plugin, revision, path, digest, config)` returning an object with `health()`
    and `unload(plugin)`.
    """

    def __init__(
        self,
        host: object,
        *,
        socket_path: str | None = None,
        app: str | None = None,
        worker: str | None = None,
        on_event: Callable[[dict], None] | None = None,
        min_backoff: float = protocol.BACKOFF_START,
        max_backoff: float = protocol.BACKOFF_MAX,
        health_interval: float = HEALTH_INTERVAL,
    ):
        self.host = host
        self.socket_path = socket_path or os.environ.get("HOTLOAD_APP_SOCKET") or DEFAULT_SOCKET
        self.app = app or os.path.basename(sys.argv[0] or "python")
        self._worker = worker
        self.on_event = on_event or (lambda event: None)
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.health_interval = health_interval
        self._stop = threading.Event()
        self._conn_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork_in_child(ref))

    @property
    def worker(self) -> str:
        """This worker's id: the one given, else the current process id."""
        return self._worker if self._worker is not None else str(os.getpid())

    def start(self) -> Client:
        """Runs `run_forever` on a daemon thread of this process; returns self.

        Call it in each worker process (after fork); a second call while it runs does nothing.
        """
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, name=f"hotload-client-{self.worker}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Closes the connection and makes `run_forever` return; waits for start()'s thread."""
        self._stop.set()
        with self._conn_lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the sidecar sees us leave
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run_forever(self) -> None:
        """Connect, say hello, serve loads; reconnect with capped back-off until stop()."""
        delay = self.min_backoff
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(self.socket_path)
                    with self._conn_lock:
                        self._sock = sock
                    if self._stop.is_set():
                        break
                    delay = self.min_backoff
                    self._session(sock)
            except OSError as err:
                if self._stop.is_set():
                    break
                self._event({"event": "disconnected", "error": str(err)})
            finally:
                with self._conn_lock:
                    self._sock = None
            self._stop.wait(delay)
            delay = protocol.next_backoff(delay, self.min_backoff, self.max_backoff)

    def _event(self, event: dict) -> None:
        log.info(event.get("event", "event"), extra={"hotload": event, "worker": self.worker})
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - the app's callback must not break the link
            log.exception("on_event raised")

    def _session(self, sock: socket.socket) -> None:
        sock.sendall(protocol.encode(protocol.hello(self.app, self.worker)))
        self._event({"event": "connected", "worker": self.worker})
        # Answers and health reports share the connection: one line at a time.
        send_lock = threading.Lock()

        def send(msg: dict) -> None:
            with send_lock:
                sock.sendall(protocol.encode(msg))

        over = threading.Event()
        reporter = None
        if callable(getattr(self.host, "take_health", None)):
            reporter = threading.Thread(
                target=self._report_health,
                args=(over, send),
                name=f"hotload-health-{self.worker}",
                daemon=True,
            )
            reporter.start()
        try:
            self._serve(sock, send)
        finally:
            over.set()
            if reporter is not None:
                reporter.join()

    def _report_health(self, over: threading.Event, send: Callable[[dict], None]) -> None:
        """Sends the host's counts every `health_interval` until the session is over, and
        nothing while no call happened. Counts taken for a report that could not be sent are
        lost, as the protocol says (a dropped connection loses its last report, never more)."""
        while not over.wait(self.health_interval):
            plugins = self.host.take_health()
            if not plugins:
                continue
            try:
                send(protocol.health(plugins))
            except OSError as err:
                self._event({"event": "health_not_sent", "error": str(err)})
                return

    def _serve(self, sock: socket.socket, send: Callable[[dict], None]) -> None:
        for n, line in enumerate(_lines(sock), start=1):
            if line is None:
                self._event({"event": "skipped", "line": n, "error": "line too long"})
                continue
            if not line.strip():
                continue
            try:
                msg = protocol.parse(line)
            except protocol.Unusable as err:
                self._event({"event": "skipped", "line": n, "error": str(err)})
                continue
            reply = self.answer(msg)
            if reply is not None:
                send(reply)
        if not self._stop.is_set():
            self._event({"event": "disconnected", "error": "sidecar closed the connection"})

    def answer(self, msg: protocol.Message) -> dict | None:
        """Carries out one message and returns the reply (None when none is due)."""
        if msg.type == "error":
            self._event({"event": "sidecar_error", "reason": msg.reason})
            return None
        if msg.type == "unload":
            was = self.host.unload(msg.plugin)
            self._event({"event": "unloaded", "plugin": msg.plugin, "was_loaded": bool(was)})
            return protocol.unloaded(msg.plugin)
        try:
            health = self._load(msg)
        except HotloadError as err:
            reason = str(err)
            self._event(
                {
                    "event": "failed",
                    "plugin": msg.plugin,
                    "revision": msg.revision,
                    "reason": reason,
                }
            )
            return protocol.failed(msg.plugin, msg.revision, reason)
        except Exception as err:  # noqa: BLE001 - every load is answered
            reason = f"plugin {msg.plugin} revision {msg.revision}: {type(err).__name__}: {err}"
            self._event(
                {
                    "event": "failed",
                    "plugin": msg.plugin,
                    "revision": msg.revision,
                    "reason": reason,
                }
            )
            return protocol.failed(msg.plugin, msg.revision, reason)
        self._event(
            {"event": "loaded", "plugin": msg.plugin, "revision": msg.revision, "health": health}
        )
        return protocol.loaded(msg.plugin, msg.revision, health)

    def _load(self, msg: protocol.Message) -> str:
        if msg.path is None:
            from .errors import LoadError

            raise LoadError("read", msg.plugin, msg.revision, reason="the load names no path")
        config = (
            msg.config
            if getattr(self.host, "takes_json_config", False)
            else protocol.config_bytes(msg.config)
        )
        loaded = self.host.load_file(msg.plugin, msg.revision, msg.path, msg.digest, config)
        return loaded.health()

    def _forget_parent_connection(self) -> None:
        """In a forked child: drop what belongs to the parent's thread, touch nothing of it."""
        sock, self._sock = self._sock, None
        self._conn_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if sock is not None:
            # detach(): the socket object forgets the descriptor, so a later close cannot hit
            # a reused number; close only the child's copy (no shutdown).
            fd = sock.detach()
            if fd >= 0:
                os.close(fd)


def _lines(sock: socket.socket):
    """Yields lines without their newline; None for a line over the limit (skipped whole)."""
    buf = bytearray()
    skipping = False
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > protocol.MAX_SIDECAR_LINE:
                    if not skipping:
                        skipping = True
                    buf.clear()
                break
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if skipping:
                skipping = False
                yield None
            elif len(line) > protocol.MAX_SIDECAR_LINE:
                yield None
            else:
                yield line


def _after_fork_in_child(ref: weakref.ref) -> None:
    client = ref()
    if client is not None:
        client._forget_parent_connection()
