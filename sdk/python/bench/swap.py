"""The Python SDK measured the way every app SDK is (docs/benchmarks.md, "App SDKs"), with
the conformance taggers (sdk/conformance/build.sh builds them); prints one JSON line:

- call_us: µs per `host.call` of tagger-v1 with a 5-byte input, one thread, after warm-up
  (median of the rounds' means);
- swap_ns_*: `Loaded.swap_seconds`, the one assignment `slot.current = new`;
- load_cached_ms_*: `Loaded.total_seconds` of alternating v1/v2 loads whose compiled module
  the host keeps by digest in memory (cache "hit"): digest, ABI check and link (kept with the
  module), `HostConfig.instances_at_load` instances (default 1; the rest of the pool of 4 is
  built when calls first need it), self-check, state hand-over, swap; no compile;
- p99 of single calls (back to back), steady and while a thread swaps v1<->v2 every ~10 ms.

Run from sdk/python with the SDK's venv: ~/.cache/hotload/venv/bin/python bench/swap.py
"""

from __future__ import annotations

import importlib.metadata
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from hotload import LoadRequest, PluginHost, sha256_digest

PLUGIN = "tagger"
WARMUP = 5_000
ROUNDS = 7
ROUND_CALLS = 20_000
LOADS = 100
P99_CALLS = 20_000
SWAP_EVERY = 0.010
INPUT = b"hello"


def pct(xs: list[float], p: int) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, len(s) * p // 100)]


def latencies(host: PluginHost) -> list[float]:
    lat = []
    clock = time.perf_counter_ns
    for _ in range(P99_CALLS):
        t = clock()
        host.call(PLUGIN, INPUT)
        lat.append((clock() - t) / 1e3)
    return lat


def main() -> None:
    plugins = Path(__file__).resolve().parent.parent.parent / "conformance" / "plugins"
    reqs = []
    for name in ("tagger-v1", "tagger-v2"):
        try:
            wasm = (plugins / f"{name}.wasm").read_bytes()
        except OSError as err:
            sys.exit(f"{err} (run sdk/conformance/build.sh first)")
        reqs.append(LoadRequest(PLUGIN, name, sha256_digest(wasm), wasm))

    host = PluginHost()
    try:
        # The first load of each compiles; the host keeps both compiled modules by digest.
        host.load(reqs[0])
        host.load(reqs[1])
        swaps, totals, hits = [], [], 0
        for i in range(LOADS):
            loaded = host.load(reqs[i % 2])
            hits += loaded.cache == "hit"
            swaps.append(loaded.swap_seconds * 1e9)
            totals.append(loaded.total_seconds * 1e3)
        host.load(reqs[0])  # LOADS is even: v2 serves now; v1 for the rest.

        for _ in range(WARMUP):
            host.call(PLUGIN, INPUT)
        means = []
        for _ in range(ROUNDS):
            t = time.perf_counter_ns()
            for _ in range(ROUND_CALLS):
                host.call(PLUGIN, INPUT)
            means.append((time.perf_counter_ns() - t) / 1e3 / ROUND_CALLS)

        steady = latencies(host)
        stop = threading.Event()
        swapped = 0
        errors: list[BaseException] = []

        def swapper() -> None:
            nonlocal swapped
            i = 1
            try:
                while not stop.wait(SWAP_EVERY):
                    host.load(reqs[i % 2])
                    swapped += 1
                    i += 1
            except BaseException as err:  # noqa: BLE001 - reported after the join
                errors.append(err)

        thread = threading.Thread(target=swapper)
        thread.start()
        try:
            during = latencies(host)
        finally:
            stop.set()
            thread.join()
        if errors:
            raise errors[0]
    finally:
        host.close()

    p99_steady, p99_swaps = pct(steady, 99), pct(during, 99)
    print(
        json.dumps(
            {
                "sdk": "python",
                "runtime": f"wasmtime-py {importlib.metadata.version('wasmtime')}",
                "call_us": round(statistics.median(means), 3),
                "call_us_rounds": [round(m, 3) for m in means],
                "swap_ns_median": round(statistics.median(swaps)),
                "swap_ns_max": round(max(swaps)),
                "load_cached_ms_median": round(statistics.median(totals), 3),
                "load_cached_ms_p90": round(pct(totals, 90), 3),
                "loads": LOADS,
                "cache_hits": hits,
                "calls": P99_CALLS,
                "p50_steady_us": round(pct(steady, 50), 3),
                "p99_steady_us": round(p99_steady, 3),
                "p50_swaps_us": round(pct(during, 50), 3),
                "p99_swaps_us": round(p99_swaps, 3),
                "swaps_during": swapped,
                "switch_interval_s": sys.getswitchinterval(),
                "p99_ratio": round(p99_swaps / p99_steady, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
