"""100 swaps between two versions while callers hammer the plugin: no call fails, every
response comes wholly from one version, and a pinned request never straddles a swap."""

from __future__ import annotations

import threading
import time

from conftest import host_config, plugin_bytes, tag_of

from hotload import LoadRequest, PluginHost, sha256_digest

VERSIONS = [plugin_bytes("tagger-v1.wasm"), plugin_bytes("tagger-v2.wasm")]
TAGS = ["v01", "v02"]


def request(revision: str, wasm: bytes) -> LoadRequest:
    return LoadRequest("auth", revision, sha256_digest(wasm), wasm)


def host() -> PluginHost:
    # Deadlines are wall-clock and this machine is shared with builds: be generous; the test
    # is about swaps, not deadlines.
    return PluginHost(host_config({}, call_timeout=5.0, checkout_timeout=10.0, max_plugins=4))


def run_swaps(h: PluginHost, stop: threading.Event) -> int:
    swaps = 0
    for n in range(1, 101):
        loaded = h.load(request(f"r{n}", VERSIONS[n % 2]))
        assert loaded.swapped
        swaps += 1
        time.sleep(0.002)
    stop.set()
    return swaps


def test_hundred_swaps_under_concurrent_calls_fail_no_call() -> None:
    with host() as h:
        h.load(request("r0", VERSIONS[0]))
        stop = threading.Event()
        errors: list[str] = []
        per_tag = {"v01": 0, "v02": 0}
        lock = threading.Lock()

        def caller(n: int) -> None:
            i = 0
            while not stop.is_set() and i < 5_000_000:
                data = f"caller{n}-request{i}-{'x' * (i % 64)}".encode()
                try:
                    out = h.call("auth", data)
                except Exception as err:  # noqa: BLE001 - counted as a failed call
                    errors.append(f"call failed: {err}")
                    return
                tagged = tag_of(out)
                if tagged is None or tagged[1] != data or tagged[0] not in per_tag:
                    errors.append(f"mixed or wrong response {out!r}")
                    return
                with lock:
                    per_tag[tagged[0]] += 1
                i += 1

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        swaps = run_swaps(h, stop)
        for t in threads:
            t.join(60)
        assert errors == []
        assert swaps == 100
        assert per_tag["v01"] > 0 and per_tag["v02"] > 0, per_tag
        assert h.serving("auth").revision == "r100"


def test_pinned_requests_never_straddle_a_swap() -> None:
    with host() as h:
        h.load(request("r0", VERSIONS[0]))
        stop = threading.Event()
        errors: list[str] = []
        crossed = [0]

        def caller(n: int) -> None:
            i = 0
            while not stop.is_set():
                data = f"caller{n}-request{i}".encode()
                try:
                    with h.pin("auth") as auth:
                        first = auth.call(data)
                        if i % 4 == 0:
                            time.sleep(0.0002)
                        if h.serving("auth").revision != auth.revision.revision:
                            crossed[0] += 1
                        second = auth.call(data)
                        want = TAGS[int(auth.revision.revision[1:]) % 2]
                except Exception as err:  # noqa: BLE001
                    errors.append(f"request failed: {err}")
                    return
                t1, t2 = tag_of(first), tag_of(second)
                if t1 is None or t2 is None or t1 != t2 or t1[0] != want or t1[1] != data:
                    errors.append(f"request straddled or mixed: {first!r} / {second!r}")
                    return
                i += 1

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        run_swaps(h, stop)
        for t in threads:
            t.join(60)
        assert errors == []
        assert crossed[0] > 0, "no swap landed inside a request: the test proved nothing"


def test_a_pin_keeps_its_revision_after_unload_and_the_swap_does_not_wait() -> None:
    with host() as h:
        h.load(request("r1", VERSIONS[0]))
        pinned = h.pin("auth")
        done = threading.Event()
        threading.Thread(
            target=lambda: (h.load(request("r2", VERSIONS[1])), done.set()), daemon=True
        ).start()
        assert done.wait(30), "the swap waited for the pin"
        assert tag_of(h.call("auth", b"x"))[0] == "v02"
        assert tag_of(pinned.call(b"y"))[0] == "v01"
        assert h.unload("auth")
        assert tag_of(pinned.call(b"z"))[0] == "v01"
        pinned.release()
