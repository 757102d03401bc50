"""A WSGI app that serves through a hot-loaded Wasm plugin, one Hotload worker per gunicorn
worker process. `GET /?text` answers {"worker", "revision", "output"} from plugin `auth`."""

from __future__ import annotations

import json
import os

import hotload

host: hotload.PluginHost | None = None
client: hotload.Client | None = None


def start_worker() -> None:
    """Called in each worker after fork (gunicorn.conf.py post_fork): its own host and link."""
    global host, client
    host = hotload.PluginHost()
    client = hotload.Client(host, app="gunicorn-test").start()


def app(environ, start_response):  # noqa: ANN001, ANN201 - WSGI
    text = environ.get("QUERY_STRING", "") or "x"
    reply = {"worker": str(os.getpid())}
    try:
        with host.pin("auth") as auth:
            reply["output"] = auth.call(text.encode()).decode()
            reply["revision"] = auth.revision.revision
        status = "200 OK"
    except hotload.HotloadError as err:
        reply["error"] = str(err)
        status = "503 Service Unavailable"
    body = json.dumps(reply).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
