"""The app-socket client beyond the shared transcripts: fork safety (one connection per
process), Python modules through the protocol, back-off while the sidecar is away."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from test_transcripts import FakeSidecar

from hotload import Client, ModuleHost, sha256_digest


def listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    return s


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(
    tmp_path: Path,
) -> None:
    sock = str(tmp_path / "app.sock")
    listener = listen(sock)
    host = ModuleHost()
    client = Client(host, socket_path=sock, app="fork-test").start()
    parent = FakeSidecar(listener)
    parent.accept()
    assert json.loads(parent.recv(10))["worker"] == str(os.getpid())
    pid = os.fork()
    if pid == 0:  # the child: a pre-fork server's worker
        try:
            client.start()
            time.sleep(5)
        finally:
            os._exit(0)
    try:
        child = FakeSidecar(listener)
        child.accept()
        hello = json.loads(child.recv(10))
        assert hello == {"type": "hello", "app": "fork-test", "worker": str(pid), "protocol": 2}
        # The parent's connection survived the child closing its inherited copy.
        parent.send(b'{"type":"unload","plugin":"p"}\n')
        assert json.loads(parent.recv(10)) == {"type": "unloaded", "plugin": "p"}
        child.send(b'{"type":"unload","plugin":"q"}\n')
        assert json.loads(child.recv(10)) == {"type": "unloaded", "plugin": "q"}
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        client.stop()
        listener.close()


def test_python_modules_load_through_the_protocol_with_their_json_config(tmp_path: Path) -> None:
    source = (
        b"def configure(c):\n    global cfg\n    cfg = c\ndef handle(x):\n    return cfg['k'] + x\n"
    )
    path = tmp_path / "rules.py"
    path.write_bytes(source)
    sock = str(tmp_path / "app.sock")
    listener = listen(sock)
    host = ModuleHost()
    client = Client(host, socket_path=sock).start()
    try:
        side = FakeSidecar(listener)
        side.accept()
        side.recv(10)
        load = {
            "type": "load",
            "plugin": "rules",
            "revision": "r1",
            "path": str(path),
            "digest": sha256_digest(source),
            "config": {"k": 40},
        }
        side.send(json.dumps(load).encode() + b"\n")
        assert json.loads(side.recv(10))["type"] == "loaded"
        assert host.call("rules", 2) == 42
        side.send(json.dumps({**load, "revision": "r2", "digest": "sha256:" + "0" * 64}).encode())
        side.send(b"\n")
        reply = json.loads(side.recv(10))
        assert reply["type"] == "failed" and "digest mismatch" in reply["reason"], reply
        assert host.serving("rules") == "r1"
    finally:
        client.stop()
        listener.close()


def test_the_client_waits_for_a_sidecar_that_is_not_there_yet(tmp_path: Path) -> None:
    sock = str(tmp_path / "app.sock")
    client = Client(ModuleHost(), socket_path=sock).start()
    try:
        time.sleep(0.3)  # a few failed attempts with back-off
        listener = listen(sock)
        side = FakeSidecar(listener)
        side.accept()
        assert json.loads(side.recv(10))["type"] == "hello"
        listener.close()
    finally:
        client.stop()
