"""A revision's pool: what a load builds, what a call builds later (self-checked, given the
handed-over state, exactly as the load's), and who frees a swapped-out revision's instances."""

from __future__ import annotations

import threading
import weakref

import pytest
from conftest import plugin_bytes

from hotload import CallError, HostConfig, LoadRequest, PluginHost, sha256_digest
from hotload.errors import Failure, GuestError
from hotload.instance import PluginInstance


def load(host: PluginHost, revision: str, file: str) -> None:
    wasm = plugin_bytes(file)
    host.load(LoadRequest("auth", revision, sha256_digest(wasm), wasm))


def count_of(out: bytes) -> int:
    """The tagger's answer to an empty input: how many requests its instance handled."""
    return int.from_bytes(out, "little")


def test_a_load_builds_instances_at_load_and_a_call_builds_the_rest_like_it() -> None:
    with PluginHost(HostConfig(instances_per_revision=3, instances_at_load=1)) as host:
        load(host, "r1", "tagger-v1.wasm")
        for _ in range(5):
            host.call("auth", b"x")
        load(host, "r2", "tagger-v2.wasm")  # hands the count (5) over
        rev = host._current("auth")
        assert rev._live == 1, "one instance built by the load"
        checks = []
        real = PluginInstance.self_check
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(PluginInstance, "self_check", lambda i: checks.append(i) or real(i))
            with rev.checkout() as a, rev.checkout() as b, rev.checkout() as c:
                counts = [count_of(x.instance.handle(b"")) for x in (a, b, c)]
                with pytest.raises(CallError) as busy:
                    rev._checkout_timeout = 0.05
                    with rev.checkout():
                        pass
        assert busy.value.kind == "busy", "never more than instances_per_revision"
        assert counts == [5, 5, 5], "built on demand, each took the load's snapshot"
        assert len(checks) == 2, "each instance built on demand ran the self-check"
        assert rev._live == 3 and len(rev._idle) == 3


def test_every_instance_can_be_built_at_load() -> None:
    with PluginHost(HostConfig(instances_per_revision=3, instances_at_load=3)) as host:
        load(host, "r1", "tagger-v1.wasm")
        assert host._current("auth")._live == 3
    with PluginHost(HostConfig(instances_per_revision=2, instances_at_load=9)) as host:
        load(host, "r1", "tagger-v1.wasm")
        assert host._current("auth")._live == 2, "at most instances_per_revision"


def test_a_later_instance_failing_its_self_check_fails_the_call_and_never_serves() -> None:
    with PluginHost(HostConfig(instances_per_revision=2)) as host:
        load(host, "r1", "tagger-v1.wasm")
        rev = host._current("auth")

        def failing(_inst: PluginInstance) -> None:
            raise GuestError(Failure("status", status=7))

        with rev.checkout() as held:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(PluginInstance, "self_check", failing)
                with pytest.raises(CallError) as err:
                    with rev.checkout():
                        pass
            assert err.value.kind == "reinstantiate"
            assert str(err.value) == (
                "plugin auth revision r1: re-instantiation failed: self-check: returned status 7"
            )
            assert rev._live == 1
            # The next one is built afresh, with the self-check again (which passes now).
            with rev.checkout() as other:
                assert other.instance is not held.instance
        assert host.call("auth", b"x") == b"v01:xv01:"


def test_the_last_call_on_a_swapped_out_revision_leaves_its_instances_to_the_next_load() -> None:
    with PluginHost() as host:
        load(host, "r1", "tagger-v1.wasm")
        freed_on: list[str] = []
        with host._current("auth").checkout() as loan:
            weakref.finalize(
                loan.instance, lambda: freed_on.append(threading.current_thread().name)
            )
            del loan
        pinned, swapped = threading.Event(), threading.Event()
        answers: list[bytes] = []

        def request() -> None:  # holds r1 across the swap, and lets go of it last
            with host.pin("auth") as pin:
                pinned.set()
                swapped.wait(5)
                answers.append(pin.call(b"x"))

        caller = threading.Thread(target=request, name="caller")
        caller.start()
        pinned.wait(5)
        load(host, "r2", "tagger-v2.wasm")
        swapped.set()
        caller.join(5)
        assert answers == [b"v01:xv01:"]
        assert freed_on == [], "not freed by the call that let go of r1"
        host.take_health()
        assert freed_on == ["MainThread"]
        assert host.call("auth", b"x") == b"v02:xv02:"


def test_an_unload_frees_the_revision_s_instances_at_once() -> None:
    from hotload import teardown

    with PluginHost(HostConfig(instances_per_revision=2, instances_at_load=2)) as host:
        load(host, "r1", "tagger-v1.wasm")
        host.call("auth", b"x")
        assert host.unload("auth")
        # No Client, no later load: nothing else would free them.
        assert teardown._retired == [], "the unloaded revision's instances were left queued"
