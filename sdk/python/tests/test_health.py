"""Health counts: the bucket function, the classification of call failures (busy included),
the report's JSON shape, counts under concurrent calls and takes, and a forked child that
starts with none of its parent's counts."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from conftest import plugin_bytes

from hotload import (
    LATENCY_BOUNDS_US,
    CallError,
    HostConfig,
    LoadRequest,
    PluginHost,
    latency_bucket,
    protocol,
    sha256_digest,
)


def load(host: PluginHost, plugin: str, revision: str, file: str) -> None:
    wasm = plugin_bytes(file)
    host.load(LoadRequest(plugin, revision, sha256_digest(wasm), wasm))


@pytest.mark.parametrize(
    ("micros", "bucket"),
    [(0, 0), (10, 0), (10.9, 0), (11, 1), (20, 1), (21, 2), (1000, 6), (1001, 7), (3000, 8),
     (1e6, 15), (1e7, 18), (1e7 + 1, 19), (3.6e9, 19), (-5, 0)],
)  # fmt: skip
def test_latency_buckets_follow_the_documented_bounds(micros: float, bucket: int) -> None:
    assert latency_bucket(micros) == bucket


def test_a_call_of_exactly_a_bound_is_in_its_bucket() -> None:
    assert len(LATENCY_BOUNDS_US) + 1 == 20
    for i, bound in enumerate(LATENCY_BOUNDS_US):
        assert latency_bucket(bound) == i


def test_a_busy_call_counts_as_failed_and_the_one_holding_the_instance_as_timeout() -> None:
    cfg = HostConfig(instances_per_revision=1, call_timeout=0.4, checkout_timeout=0.1)
    with PluginHost(cfg) as host:
        load(host, "slow", "r1", "handle-loop.wasm")
        held: list[BaseException] = []

        def hold() -> None:
            try:
                host.call("slow", b"x")
            except CallError as err:
                held.append(err)

        t = threading.Thread(target=hold)
        t.start()
        time.sleep(0.05)
        with pytest.raises(CallError) as busy:
            host.call("slow", b"y")
        assert busy.value.kind == "busy"
        t.join()
        assert held and held[0].failure.kind == "timeout"
        [h] = host.take_health()
        assert (h["calls"], h["errors"]) == (2, {"trap": 0, "timeout": 1, "memory": 0, "failed": 1})
        assert sum(h["latency_us"][latency_bucket(100_000) :]) == 2, h["latency_us"]
        assert host.take_health() == []


def test_health_is_the_protocols_json() -> None:
    with PluginHost(HostConfig(instances_per_revision=1)) as host:
        load(host, "auth", "r2", "tagger-v1.wasm")
        host.call("auth", b"x")
        with host.pin("auth") as pin:
            pin.mark_failed()
        pin.mark_failed()  # after release: nothing
        line = protocol.encode(protocol.health(host.take_health())).decode()
        assert line.startswith(
            '{"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":1,'
            '"errors":{"trap":0,"timeout":0,"memory":0,"failed":1},"latency_us":['
        ), line
        assert len(json.loads(line)["plugins"][0]["latency_us"]) == 20


def test_counts_add_up_under_concurrent_calls_swaps_and_takes() -> None:
    """Calls with swaps and takes at once, then calls with marks and takes at once: the
    reports add up to every call and every mark, and none has more failed calls than calls."""
    with PluginHost(HostConfig(instances_per_revision=2, call_timeout=5.0)) as host:
        load(host, "auth", "r0", "tagger-v1.wasm")
        reports: list[dict] = []
        callers, per_caller = 4, 100

        def phase(mark: bool, alongside) -> None:  # noqa: ANN001
            def caller() -> None:
                for i in range(per_caller):
                    host.call("auth", b"x")
                    if mark and i % 10 == 0:
                        host.mark_failed("auth")

            threads = [threading.Thread(target=caller) for _ in range(callers)]
            for t in threads:
                t.start()
            n = 0
            while any(t.is_alive() for t in threads):
                n += 1
                alongside(n)
            for t in threads:
                t.join()

        def swap_and_take(n: int) -> None:
            load(host, "auth", f"r{n % 3}", "tagger-v1.wasm")
            reports.extend(host.take_health())

        phase(False, swap_and_take)
        phase(True, lambda n: reports.extend(host.take_health()))
        reports.extend(host.take_health())
        for r in reports:
            assert sum(r["errors"].values()) <= r["calls"], r
            assert sum(r["latency_us"]) == r["calls"], r
        assert sum(r["calls"] for r in reports) == 2 * callers * per_caller
        assert sum(r["errors"]["failed"] for r in reports) == callers * per_caller // 10


def test_a_forked_child_starts_without_its_parents_counts() -> None:
    with PluginHost(HostConfig(instances_per_revision=1)) as host:
        load(host, "auth", "r1", "tagger-v1.wasm")
        host.call("auth", b"x")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it would send, then leave at once
            os.close(read)
            os.write(write, json.dumps(host.take_health()).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            child = json.loads(f.read())
        os.waitpid(pid, 0)
        assert child == []
        [parent] = host.take_health()
        assert parent["calls"] == 1
