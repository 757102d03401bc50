"""Replays the shared protocol transcripts (sdk/conformance/transcripts/*.jsonl) against a
Client: the test plays the sidecar on a real Unix socket; the Client and its PluginHost are
the app under test."""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import time

import pytest
from conftest import CONFORMANCE, PLUGINS, digest_of, host_config, suite
from test_conformance import attempt, check_output

from hotload import Client, PluginHost

TRANSCRIPTS = sorted((CONFORMANCE / "transcripts").glob("*.jsonl"))
STEP_TIMEOUT = 10.0


def substitute(value, worker: str):  # noqa: ANN001, ANN201
    """Replaces {{worker}}, {{path:FILE}} and {{digest:FILE}} in every string."""
    if isinstance(value, str):
        out = value
        while "{{" in out:
            start = out.index("{{")
            end = out.index("}}", start)
            key = out[start + 2 : end]
            if key == "worker":
                val = worker
            elif key.startswith("path:"):
                val = str(PLUGINS / key[5:])
            elif key.startswith("digest:"):
                val = digest_of(key[7:])
            else:
                raise AssertionError(f"unknown placeholder {{{{{key}}}}}")
            out = out[:start] + val + out[end + 2 :]
        return out
    if isinstance(value, dict):
        return {k: substitute(v, worker) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, worker) for v in value]
    return value


def match(want, got) -> str | None:  # noqa: ANN001
    """None when got matches: {"$any": true} matches anything, {"$contains": s} a string
    containing s; every expected key must match, extra keys are allowed."""
    if isinstance(want, dict):
        if "$any" in want:
            return None
        if "$contains" in want:
            if isinstance(got, str) and want["$contains"] in got:
                return None
            return f"{got!r} does not contain {want['$contains']!r}"
        if not isinstance(got, dict):
            return f"{got!r} is not an object"
        for k, wv in want.items():
            if k not in got:
                return f"field {k!r} missing"
            if (why := match(wv, got[k])) is not None:
                return f"field {k!r}: {why}"
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{got!r} is not a list of {len(want)}"
        for i, (wv, gv) in enumerate(zip(want, got, strict=True)):
            if (why := match(wv, gv)) is not None:
                return f"item {i}: {why}"
        return None
    return None if want == got else f"{got!r}, want {want!r}"


class FakeSidecar:
    """The sidecar's side of the app socket."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.conn: socket.socket | None = None
        self.buf = b""

    def accept(self) -> None:
        self.listener.settimeout(STEP_TIMEOUT)
        self.conn, _ = self.listener.accept()
        self.buf = b""

    def recv(self, timeout: float) -> bytes | None:
        assert self.conn is not None
        self.conn.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.conn.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise AssertionError(f"the app closed the connection (got {self.buf!r})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.settimeout(STEP_TIMEOUT)
        self.conn.sendall(data)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path) -> None:  # noqa: ANN001
    worker = str(os.getpid())
    with tempfile.TemporaryDirectory() as d, PluginHost(host_config(suite()["host"])) as host:
        sock_path = os.path.join(d, "app.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(4)
        client = Client(host, socket_path=sock_path, app="conformance").start()
        side = FakeSidecar(listener)
        try:
            side.accept()
            for n, text in enumerate(path.read_text().strip().splitlines(), start=1):
                where = f"{path.name}:{n}"
                step = json.loads(text)
                if "comment" in step:
                    continue
                if "app_sends" in step:
                    # A health report may come whenever calls happened; it is skipped
                    # unless the step expects one.
                    deadline = time.monotonic() + STEP_TIMEOUT
                    while True:
                        line = side.recv(max(0.001, deadline - time.monotonic()))
                        assert line is not None, f"{where}: the app sent nothing"
                        got = json.loads(line)
                        if got.get("type") != "health" or step["app_sends"].get("type") == "health":
                            break
                    why = match(substitute(step["app_sends"], worker), got)
                    assert why is None, f"{where}: the app sent {line!r}: {why}"
                elif "sidecar_sends" in step:
                    msg = substitute(step["sidecar_sends"], worker)
                    side.send(json.dumps(msg).encode() + b"\n")
                elif "sidecar_sends_raw" in step:
                    side.send(step["sidecar_sends_raw"].encode())
                elif "sidecar_sends_b64" in step:
                    side.send(base64.b64decode(step["sidecar_sends_b64"]))
                elif "sidecar_sends_long_line" in step:
                    side.send(b"x" * step["sidecar_sends_long_line"] + b"\n")
                elif "drop_connection" in step:
                    side.conn.close()
                    side.accept()
                elif "app_silent_ms" in step:
                    line = side.recv(step["app_silent_ms"] / 1000)
                    assert line is None, f"{where}: the app sent {line!r}, want silence"
                elif "call" in step:
                    c = step["call"]
                    data = c["input"].encode() if "input" in c else base64.b64decode(c["input_b64"])
                    out, err = attempt(lambda c=c, data=data: host.call(c["plugin"], data))
                    check_output(where, out, err, step.get("expect", {}))
                else:
                    pytest.fail(f"{where}: step without an operation")
        finally:
            client.stop()
            if side.conn is not None:
                side.conn.close()
            listener.close()
