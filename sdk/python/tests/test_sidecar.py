"""Protocol tests against the REAL sidecar (skipped unless HOTLOAD_SIDECAR_BIN is set):
artifacts over HTTPS, loads through `hotload-sidecar load`, the app in this process or a
pre-forked gunicorn with 3 workers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import digest_of, plugin_bytes, tag_of
from sidecar_support import ArtifactServer, Sidecar, make_pki, needs_sidecar

from hotload import Client, HostConfig, HotloadError, ModuleHost, PluginHost, sha256_digest

pytestmark = needs_sidecar
APPS = Path(__file__).parent / "apps"


@pytest.fixture
def env(tmp_path: Path):  # noqa: ANN201
    ca, leaf, key = make_pki(tmp_path)
    server = ArtifactServer(leaf, key)
    state = tmp_path / "state"
    state.mkdir()
    sidecar = Sidecar(state, ca)
    yield server, sidecar
    sidecar.stop()
    server.close()


def wait_for(predicate, what: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Events:
    """Hook recorder: what the host swapped in."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    def after_load(self, event) -> None:  # noqa: ANN001
        self.loads.append(event.revision)


def test_hundred_swaps_under_calls_faults_and_restart(env) -> None:  # noqa: ANN001
    server, sidecar = env
    events = Events()
    pid = str(os.getpid())
    # Generous deadlines: the machine may be busy, and these tests are not about deadlines.
    with PluginHost(HostConfig(call_timeout=2.0, checkout_timeout=10.0), hooks=events) as host:
        client = Client(host, socket_path=sidecar.app_socket, app="pytest").start()
        try:
            assert client.worker == pid
            wait_for(lambda: pid in sidecar.status(), "the worker to connect")
            v1 = server.put("v1", plugin_bytes("tagger-v1.wasm"))
            v2 = server.put("v2", plugin_bytes("tagger-v2.wasm"))
            d1, d2 = digest_of("tagger-v1.wasm"), digest_of("tagger-v2.wasm")
            ok, outcome = sidecar.load("auth", v1, d1, "s0")
            assert ok and outcome["result"] == "loaded", outcome
            assert "self-check passed" in outcome.get("health", ""), outcome
            assert tag_of(host.call("auth", b"hello")) == ("v01", b"hello")

            # Callers hammer the plugin while the sidecar swaps it 100 times.
            stop = threading.Event()
            failures: list[str] = []
            per_tag = {"v01": 0, "v02": 0}

            def caller(n: int) -> None:
                i = 0
                while not stop.is_set():
                    data = f"caller{n}-{i}".encode()
                    try:
                        tagged = tag_of(host.call("auth", data))
                    except Exception as err:  # noqa: BLE001 - counted
                        failures.append(str(err))
                        return
                    if tagged is None or tagged[1] != data:
                        failures.append(f"mixed response for {data!r}")
                        return
                    per_tag[tagged[0]] += 1
                    i += 1

            callers = [threading.Thread(target=caller, args=(n,)) for n in range(2)]
            for t in callers:
                t.start()
            try:
                for n in range(1, 101):
                    url, digest = (v1, d1) if n % 2 == 0 else (v2, d2)
                    ok, outcome = sidecar.load("auth", url, digest, f"s{n}")
                    assert ok and outcome["result"] == "loaded", f"swap {n}: {outcome}"
            finally:
                stop.set()
                for t in callers:
                    t.join(30)
            assert failures == []
            assert per_tag["v01"] > 0 and per_tag["v02"] > 0, per_tag
            assert host.serving("auth").revision == "s100"

            # Faults: refused with the precise reason naming the worker; s100 serves on.
            for file, rev, reason in [
                ("self-check-status-7.wasm", "bad1", "self-check failed: returned status 7"),
                ("self-check-loop.wasm", "bad2", "self-check failed: deadline exceeded"),
                ("not-wasm.wasm", "bad3", "invalid wasm"),
            ]:
                url = server.put(file, plugin_bytes(file))
                ok, outcome = sidecar.load("auth", url, digest_of(file), rev)
                want = f"app: worker {pid}: plugin auth revision {rev}: {reason}"
                assert not ok and outcome.get("reason", "").startswith(want), outcome
                assert host.serving("auth").revision == "s100"
                assert host.call("auth", b"x") == b"v01:xv01:"

            # The sidecar crashes and restarts: the worker reconnects with back-off, says
            # hello again and is offered the set from the sidecar's disk: no download, and
            # s100 already serves, so no reload.
            downloads = dict(server.downloads)
            events.loads.clear()
            sidecar.restart()
            sidecar.wait_status("s100 loaded by 1/1 workers")
            assert server.downloads == downloads
            assert events.loads == [], "the worker reloaded after the sidecar restart"
            assert host.serving("auth").revision == "s100"
        finally:
            client.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def every_worker_serves(url: str, revision: str, tag: str, workers: int = 3) -> set[str]:
    """Requests until `workers` distinct workers answered with revision; fails on any answer
    that is neither the wanted revision nor (while workers are still swapping) an older one."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    n = 0
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only workers {seen} served {revision}"
        n += 1
        reply = get_json(f"{url}/?req{n}")
        assert "error" not in reply, reply
        assert reply["output"] == f"{tag}:req{n}{tag}:", reply
        if reply["revision"] == revision:
            seen.add(reply["worker"])
    return seen


def test_gunicorn_with_three_workers_every_worker_acknowledged(env) -> None:  # noqa: ANN001
    if shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("gunicorn is not installed in this environment")
    server, sidecar = env
    port = free_port()
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "gunicorn"),
            "-c",
            str(APPS / "gunicorn.conf.py"),
            "--chdir",
            str(APPS),
            "-b",
            f"127.0.0.1:{port}",
            "hotload_app:app",
        ],
        env={**os.environ, "HOTLOAD_APP_SOCKET": sidecar.app_socket},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # The pre-fork master never connects: exactly the three workers do.
        workers = wait_for(lambda: len(sidecar.workers()) == 3 and sidecar.workers(), "3 workers")
        assert str(proc.pid) not in workers, "the gunicorn master connected as a worker"
        v1 = server.put("v1", plugin_bytes("tagger-v1.wasm"))
        ok, outcome = sidecar.load("auth", v1, digest_of("tagger-v1.wasm"), "r1")
        assert ok, outcome
        sidecar.wait_status("r1 loaded by 3/3 workers")
        assert every_worker_serves(url, "r1", "v01") == set(workers)

        v2 = server.put("v2", plugin_bytes("tagger-v2.wasm"))
        ok, outcome = sidecar.load("auth", v2, digest_of("tagger-v2.wasm"), "r2")
        assert ok, outcome
        sidecar.wait_status("r2 loaded by 3/3 workers")
        assert every_worker_serves(url, "r2", "v02") == set(workers)
        for n in range(30):  # after 3/3, no worker answers from r1
            reply = get_json(f"{url}/?after{n}")
            assert reply.get("revision") == "r2", reply

        bad = server.put("bad", plugin_bytes("self-check-trap.wasm"))
        ok, outcome = sidecar.load("auth", bad, digest_of("self-check-trap.wasm"), "r3")
        assert not ok
        assert "self-check failed: trap" in outcome.get("reason", ""), outcome
        assert any(f"worker {w}: " in outcome["reason"] for w in workers), outcome
        sidecar.wait_status("r2 loaded by 3/3 workers")
        assert every_worker_serves(url, "r2", "v02") == set(workers)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_python_modules_through_the_sidecar(env) -> None:  # noqa: ANN001
    """Seed 000's use case end to end: Python plugin files delivered by the sidecar."""
    server, sidecar = env
    host = ModuleHost()
    client = Client(host, socket_path=sidecar.app_socket, app="pytest-modules").start()
    try:
        wait_for(lambda: str(os.getpid()) in sidecar.status(), "the worker to connect")
        v1 = b"def handle(x):\n    return 'v1:' + x\n"
        ok, outcome = sidecar.load("rules", server.put("v1.py", v1), sha256_digest(v1), "m1")
        assert ok, outcome
        assert host.call("rules", "a") == "v1:a"
        bad = b"def handle(x):\n    return x\ndef self_check():\n    return False\n"
        ok, outcome = sidecar.load("rules", server.put("bad.py", bad), sha256_digest(bad), "m2")
        assert not ok
        assert "plugin rules revision m2: self-check failed: returned False" in outcome["reason"]
        assert host.call("rules", "b") == "v1:b"
    finally:
        client.stop()


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    """A sample's value in Prometheus text (labels matched as given), or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        got = dict(pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if "=" in pair)
        if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None


def test_two_workers_health_merges_on_the_sidecars_metrics(env) -> None:  # noqa: ANN001
    """Two workers call a plugin, one marks a call failed, then both call a revision that
    traps: /metrics shows the sum of both workers' reports per revision, and keeps showing
    it (reports are counts since the previous one, never re-sent)."""
    server, sidecar = env
    hosts = [PluginHost(HostConfig(call_timeout=2.0, instances_per_revision=1)) for _ in range(2)]
    clients = [
        Client(h, socket_path=sidecar.app_socket, app="pytest", worker=f"w{i + 1}").start()
        for i, h in enumerate(hosts)
    ]
    w1, w2 = hosts
    try:
        wait_for(lambda: sidecar.workers() == ["w1", "w2"], "both workers to connect")
        url = server.put("v1", plugin_bytes("tagger-v1.wasm"))
        ok, outcome = sidecar.load("h", url, digest_of("tagger-v1.wasm"), "r1")
        assert ok, outcome
        for host, n in ((w1, 5), (w2, 3)):
            for _ in range(n):
                assert host.call("h", b"x") == b"v01:xv01:"
        assert w1.mark_failed("h")
        url = server.put("trap", plugin_bytes("handle-trap.wasm"))
        ok, outcome = sidecar.load("h", url, digest_of("handle-trap.wasm"), "r2")
        assert ok, outcome
        for host, n in ((w1, 2), (w2, 1)):
            for _ in range(n):
                with pytest.raises(HotloadError) as err:
                    host.call("h", b"x")
                assert err.value.failure.kind == "trap", err.value
        r1 = {"plugin": "h", "revision": "r1"}
        r2 = {"plugin": "h", "revision": "r2"}
        want = [
            ("hotload_plugin_calls_total", r1, 8),
            ("hotload_plugin_errors_total", {**r1, "kind": "failed"}, 1),
            ("hotload_plugin_errors_total", {**r1, "kind": "trap"}, 0),
            ("hotload_plugin_call_duration_seconds_bucket", {**r1, "le": "+Inf"}, 8),
            ("hotload_plugin_call_duration_seconds_count", r1, 8),
            ("hotload_plugin_calls_total", r2, 3),
            ("hotload_plugin_errors_total", {**r2, "kind": "trap"}, 3),
            ("hotload_plugin_errors_total", {**r2, "kind": "timeout"}, 0),
            ("hotload_plugin_call_duration_seconds_count", r2, 3),
        ]

        def wrong() -> list:
            text = sidecar.get("/metrics")[1]
            return [
                (n, lb, v, metric_value(text, n, lb))
                for n, lb, v in want
                if metric_value(text, n, lb) != v
            ]

        wait_for(lambda: not wrong(), "/metrics to show both workers' totals", timeout=15.0)
        time.sleep(2.5)  # two more report intervals: nothing is counted twice
        assert wrong() == [], sidecar.get("/metrics")[1]
    finally:
        for c in clients:
            c.stop()
        for h in hosts:
            h.close()
