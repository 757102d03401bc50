"""A WSGI app that serves every request through a hot-loaded Wasm plugin, for a pre-fork
server (gunicorn): `POST /` runs the body through plugin `handler` and answers its output.

Each worker process holds its own host and its own connection to the sidecar (started after
the fork by gunicorn.conf.py), so the sidecar counts the pod's plugin loaded only when every
worker has it. Every response names the worker that served it (`x-hotload-worker`, its pid,
the id it says hello with) and `POST /` the plugin revision that produced the body
(`x-hotload-revision`), like the Rust demo app.

    gunicorn -c gunicorn.conf.py --bind 0.0.0.0:8080 wsgi:app
"""

from __future__ import annotations

import json
import logging
import os

import hotload

PLUGIN = os.environ.get("HOTLOAD_PLUGIN", "handler")
MAX_BODY = 16 * 1024  # the example tagger plugins take up to 31 KiB
WORKER_HEADER = "x-hotload-worker"
REVISION_HEADER = "x-hotload-revision"

host: hotload.PluginHost | None = None
client: hotload.Client | None = None


def start_worker() -> None:
    """Runs in each worker after fork: its own plugin host and sidecar connection."""
    global host, client
    log_sdk_events()
    host = hotload.PluginHost()
    # Socket: $HOTLOAD_APP_SOCKET (the webhook sets it), else /var/run/hotload/app.sock.
    client = hotload.Client(host, app="python-example").start()


class FieldsFormatter(logging.Formatter):
    """The SDK logs the plugin, revision and error as record fields: print them too."""

    PLAIN = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in self.PLAIN}
        line = super().format(record)
        return f"{line} {json.dumps(fields, default=str)}" if fields else line


def log_sdk_events() -> None:
    """Loads, refusals and reconnects of the SDK to stderr, beside gunicorn's own log."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        FieldsFormatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    )
    sdk = logging.getLogger("hotload")
    sdk.addHandler(handler)
    sdk.setLevel(logging.INFO)


def app(environ, start_response):  # noqa: ANN001, ANN201 - WSGI
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if method == "GET" and path == "/healthz":
        return respond(start_response, "200 OK", b"ok\n")
    if method != "POST" or path != "/":
        return respond(start_response, "404 Not Found", b"POST / or GET /healthz\n")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > MAX_BODY:
        return respond(start_response, "413 Content Too Large", b"body too large\n")
    body = environ["wsgi.input"].read(length)
    if host is None:
        return respond(start_response, "503 Service Unavailable", b"worker not started\n")
    try:
        # The pin makes the revision in the header the one that produced the body.
        with host.pin(PLUGIN) as handler:
            out = handler.call(body)
            revision = handler.revision.revision
    except hotload.CallError as err:
        status = "503 Service Unavailable" if err.kind == "not_loaded" else "500 Internal Error"
        return respond(start_response, status, f"{err}\n".encode())
    return respond(start_response, "200 OK", out, [(REVISION_HEADER, revision)])


def respond(start_response, status: str, body: bytes, headers=()):  # noqa: ANN001, ANN201
    start_response(
        status,
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            (WORKER_HEADER, str(os.getpid())),
            *headers,
        ],
    )
    return [body]
