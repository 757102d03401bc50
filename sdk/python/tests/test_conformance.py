"""Runs the shared conformance cases (sdk/conformance/cases.json) against PluginHost: the
same plugin files and inputs as every other SDK, the same outputs and refusal reasons."""

from __future__ import annotations

import base64
import time

import pytest
from conftest import PLUGINS, digest_of, host_config, plugin_bytes, suite

from hotload import HotloadError, LoadRequest, PluginHost, latency_bucket, sha256_digest

SUITE = suite()


class Recorder:
    """Hook events in the form cases.json compares."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def before_unload(self, e) -> None:  # noqa: ANN001
        self.events.append(f"before_unload {e.plugin} {e.revision} next={e.next or ''}")

    def after_load(self, e) -> None:  # noqa: ANN001
        self.events.append(f"after_load {e.plugin} {e.revision} previous={e.previous or ''}")

    def load_failed(self, plugin: str, revision: str, err: Exception) -> None:
        self.events.append(f"load_failed {plugin} {revision} {getattr(err, 'kind', '?')}")


def _bytes(spec: dict) -> bytes:
    if "input_b64" in spec:
        return base64.b64decode(spec["input_b64"])
    return spec["input"].encode()


def check_error(where: str, err: Exception | None, want: dict | None) -> bool:
    """Compares err with the expectation; True when the step is over."""
    if want is None:
        if err is not None:
            pytest.fail(f"{where}: unexpected error: {err}")
        return False
    if err is None:
        pytest.fail(f"{where}: succeeded, want a {want.get('kind')} error")
    assert isinstance(err, HotloadError), f"{where}: {type(err).__name__}: {err}"
    kinds = want.get("kind")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert err.kind in kinds, f"{where}: error kind {err.kind!r}, want {kinds}: {err}"
    if want.get("fault"):
        assert err.fault == want["fault"], (
            f"{where}: fault {err.fault!r}, want {want['fault']!r}: {err}"
        )
    for part in want.get("reason", []):
        assert part in str(err), f"{where}: reason {str(err)!r} lacks {part!r}"
    return True


def check_output(where: str, out: bytes | None, err: Exception | None, x: dict) -> None:
    if check_error(where, err, x.get("error")):
        return
    if "output_b64" in x:
        want = base64.b64decode(x["output_b64"])
    elif "output" in x:
        want = x["output"].encode()
    else:
        return
    assert out == want, f"{where}: output {out!r}, want {want!r}"


def attempt(fn):  # noqa: ANN001, ANN201
    try:
        return fn(), None
    except HotloadError as err:
        return None, err


def run_step(host: PluginHost, rec: Recorder, pins: dict, s: dict, where: str) -> None:
    x = s.get("expect", {})
    if "load" in s:
        spec = s["load"]
        wasm = plugin_bytes(spec["file"])
        digest = sha256_digest(wasm)
        if "digest_of" in spec:
            digest = digest_of(spec["digest_of"])
        if "digest" in spec:
            digest = spec["digest"]
        req = LoadRequest(
            spec["plugin"], spec["revision"], digest, wasm, spec.get("config", "").encode()
        )
        loaded, err = attempt(lambda: host.load(req))
        if check_error(where, err, x.get("error")):
            return
        if "swapped" in x:
            assert loaded.swapped == x["swapped"], f"{where}: swapped {loaded.swapped}"
        if "self_checked" in x:
            assert loaded.self_checked == x["self_checked"], f"{where}: self_checked"
        if "state_bytes" in x:
            assert loaded.state_bytes == x["state_bytes"], (
                f"{where}: state {loaded.state_bytes}, want {x['state_bytes']}"
            )
    elif "call" in s:
        out, err = attempt(lambda: host.call(s["call"]["plugin"], _bytes(s["call"])))
        check_output(where, out, err, x)
    elif "call_pinned" in s:
        pin = pins[s["call_pinned"]["pin"]]
        out, err = attempt(lambda: pin.call(_bytes(s["call_pinned"])))
        check_output(where, out, err, x)
    elif "pin" in s:
        pin, err = attempt(lambda: host.pin(s["pin"]["plugin"]))
        if check_error(where, err, x.get("error")):
            return
        pins[s["pin"]["as"]] = pin
        if "revision" in x:
            assert pin.revision.revision == x["revision"], where
    elif "release" in s:
        pin = pins.pop(s["release"]["pin"], None)
        if pin is not None:
            pin.release()
    elif "unload" in s:
        was = host.unload(s["unload"]["plugin"])
        if "was_loaded" in x:
            assert was == x["was_loaded"], f"{where}: unload reported {was}"
    elif "serving" in s:
        rid = host.serving(s["serving"]["plugin"])
        if "revision" in x:
            got = rid.revision if rid else None
            assert got == x["revision"], f"{where}: serving {got!r}, want {x['revision']!r}"
    elif "plugins" in s:
        if "names" in x:
            assert host.plugins() == x["names"], f"{where}: plugins {host.plugins()}"
    elif "mark_failed" in s:
        spec = s["mark_failed"]
        if "pin" in spec:
            pins[spec["pin"]].mark_failed()
        else:
            assert host.mark_failed(spec["plugin"]), f"{where}: mark_failed: nothing serves"
    elif "health" in s:
        if "reports" in x:
            check_health(where, host.take_health(), x["reports"])
    elif "events" in s:
        got, rec.events = rec.events, []
        if "events" in x:
            assert got == x["events"], f"{where}: events {got}"
    else:
        pytest.fail(f"{where}: step without an operation")


def check_health(where: str, got: list[dict], want: list[dict]) -> None:
    """Drained counts against a `health` step's reports: the same revisions in order, exact
    calls and errors, 20 latency buckets adding up to the calls, and at least
    latency_at_least.calls of them in the buckets of latency_at_least.ms or slower."""
    names = [(r["plugin"], r["revision"]) for r in got]
    assert names == [(r["plugin"], r["revision"]) for r in want], f"{where}: reported {got}"
    for g, w in zip(got, want, strict=True):
        who = f"{where}: {g['plugin']} {g['revision']}"
        assert (g["calls"], g["errors"]) == (w["calls"], w["errors"]), f"{who}: {g}"
        assert len(g["latency_us"]) == 20, f"{who}: {g['latency_us']}"
        assert sum(g["latency_us"]) == g["calls"], f"{who}: {g['latency_us']}"
        if "latency_at_least" in w:
            at = w["latency_at_least"]
            slow = sum(g["latency_us"][latency_bucket(at["ms"] * 1000) :])
            assert slow >= at["calls"], f"{who}: {slow} calls at {at['ms']} ms or slower"


@pytest.mark.parametrize("case", SUITE["cases"], ids=[c["name"] for c in SUITE["cases"]])
def test_conformance_case(case: dict) -> None:
    rec = Recorder()
    settings = {**SUITE["host"], **case.get("host", {})}
    with PluginHost(host_config(settings), hooks=rec) as host:
        pins: dict = {}
        for i, step in enumerate(case["steps"], start=1):
            for n in range(max(step.get("repeat", 1), 1)):
                where = f"{case['name']} step {i}" + (
                    f" (repeat {n + 1})" if step.get("repeat", 1) > 1 else ""
                )
                start = time.monotonic()
                run_step(host, rec, pins, step, where)
                took = time.monotonic() - start
                if step.get("max_ms"):
                    assert took * 1000 <= step["max_ms"], f"{where}: took {took:.3f} s"


def test_every_plugin_source_is_built() -> None:
    missing = [w.name for w in PLUGINS.glob("*.wat") if not w.with_suffix(".wasm").exists()]
    for name in ("go-upper.wasm", "not-wasm.wasm"):
        if not (PLUGINS / name).exists():
            missing.append(name)
    assert not missing, (
        f"not built: {missing} (run sdk/conformance/build.sh: make conformance-plugins)"
    )
