"""Host limits and the compiled-module cache beyond the shared cases: module size, compile
budget, precompiled modules reused across hosts and recompiled when spoiled."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import host_config, plugin_bytes

from hotload import LoadError, LoadRequest, PluginHost, sha256_digest

TAGGER = plugin_bytes("tagger-v1.wasm")


def request(revision: str, wasm: bytes, plugin: str = "p") -> LoadRequest:
    return LoadRequest(plugin, revision, sha256_digest(wasm), wasm)


def test_a_module_over_the_size_limit_is_refused_before_hashing() -> None:
    with PluginHost(host_config({}, cache_dir=None, max_module_bytes=100)) as host:
        with pytest.raises(LoadError) as err:
            host.load(request("r1", TAGGER))
        assert err.value.kind == "module_too_large"
        assert f"module is {len(TAGGER)} bytes, over the limit of 100 bytes" in str(err.value)


def test_a_compile_over_its_budget_fails_and_the_old_revision_serves() -> None:
    with PluginHost(host_config({}, cache_dir=None)) as host:
        host.load(request("r1", TAGGER))
        # No compile finishes within 0.1 ms: the load fails, the compile is abandoned.
        host.config.compile_timeout = 0.0001
        with pytest.raises(LoadError) as err:
            host.load(request("r2", plugin_bytes("tagger-v2.wasm")))
        assert err.value.kind == "compile_timeout"
        assert "revision r2: compile did not finish within its budget of 0 ms" in str(err.value)
        assert host.serving("p").revision == "r1"
        assert host.call("p", b"x") == b"v01:xv01:"


def test_precompiled_modules_are_reused_across_hosts_and_recompiled_when_spoiled(
    tmp_path: Path,
) -> None:
    cfg = host_config({}, cache_dir=tmp_path)
    with PluginHost(cfg) as host:
        assert host.load(request("r1", TAGGER)).cache == "miss"
        assert host.load(request("r2", TAGGER)).cache == "hit", "kept in memory by digest"
    with PluginHost(cfg) as host:
        assert host.load(request("r1", TAGGER)).cache == "hit"
    for entry in tmp_path.iterdir():
        entry.write_bytes(b"not machine code")
    with PluginHost(cfg) as host:
        loaded = host.load(request("r1", TAGGER))
        assert loaded.cache == "miss"
        assert host.call("p", b"x") == b"v01:xv01:"
