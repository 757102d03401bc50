"""How instances are built and freed: what a module's plan works out once, the linear memories
kept for reuse (zeroed), and stores freed exactly once."""

from __future__ import annotations

from conftest import plugin_bytes

from hotload import HostConfig, LoadRequest, PluginHost, sha256_digest
from hotload.engine import KEEP_RESIDENT_BYTES
from hotload.instance import SMALL_MODULE_BYTES, has_start_function


def load(host: PluginHost, revision: str, file: str) -> None:
    wasm = plugin_bytes(file)
    host.load(LoadRequest("auth", revision, sha256_digest(wasm), wasm))


def only_instance(host: PluginHost):  # noqa: ANN201
    rev = host._current("auth")
    assert rev._live == 1 and len(rev._idle) == 1
    return rev._idle[0]


def test_the_plan_knows_how_instances_start_and_whether_they_need_wasi() -> None:
    assert has_start_function(plugin_bytes("start-trap.wasm"))
    assert not has_start_function(plugin_bytes("tagger-v1.wasm"))
    assert not has_start_function(plugin_bytes("go-upper.wasm"))  # a reactor: _initialize
    assert has_start_function(plugin_bytes("tagger-v1.wasm")[:-3]), "unsure (cut): assume one"
    assert len(plugin_bytes("go-upper.wasm")) > SMALL_MODULE_BYTES
    with PluginHost() as host:
        load(host, "r1", "tagger-v1.wasm")
        plan = host._current("auth")._plan
        assert not plan.wasi and not plan.slow_start and plan.init is None
        load(host, "r2", "wasi-probe.wasm")
        assert host._current("auth")._plan.wasi, "imports WASI's clocks and randomness"


def test_a_freed_memory_is_zeroed_and_serves_the_next_instance() -> None:
    with PluginHost(HostConfig(instances_per_revision=1)) as host:
        load(host, "r1", "tagger-v1.wasm")
        assert host.call("auth", b"x") == b"v01:xv01:"
        memory = only_instance(host).memory
        used = memory.size()
        assert used <= KEEP_RESIDENT_BYTES
        memory.write(used - 4, b"junk")
        load(host, "r2", "tagger-v2.wasm")
        host.take_health()  # frees r1's instance: its memory goes back to the host
        load(host, "r3", "tagger-v1.wasm")
        reused = only_instance(host).memory
        assert reused.state is memory.state, "the freed memory, not a new mapping"
        assert reused.read(used - 4, 4) == b"\0\0\0\0", "reads as a fresh memory"
        assert host.call("auth", b"y") == b"v01:yv01:", "data segments written afresh"


def test_a_store_is_freed_once_however_the_instance_goes() -> None:
    with PluginHost() as host:
        load(host, "r1", "tagger-v1.wasm")
        inst = only_instance(host)
        assert inst._store is not None
        inst.close()
        assert inst._store is None
        inst.close()  # idempotent; __del__ later does nothing either
        host._current("auth")._idle.clear()
