// The Node SDK measured the way every app SDK is (docs/benchmarks.md, "App SDKs"), with the
// conformance taggers (sdk/conformance/build.sh builds them); prints one JSON line:
//   call_mode     where guest calls run (the host's `calls`): inline (the default) or threads;
//   call_us       µs per `await host.call()` of tagger-v1 with a 5-byte input, one at a time,
//                 after warm-up (median of the rounds' means): inline, the guest call itself;
//                 with threads, a round trip to the instance's worker thread through shared
//                 memory (src/channel.js), two thread wake-ups;
//   swap_ns_*     the load result's swapMs, the one assignment `slot.current = next`;
//   load_cached_ms_*  totalMs of alternating v1/v2 loads after one load of each: the
//                 compiled module comes from the host's in-memory cache by digest and the
//                 instance a load builds (instancesAtLoad: 1) inline or, with threads, in a
//                 warm pooled thread (cache_hits counts the loads that reported `cached`;
//                 threads_started, the threads the host started during them and during the
//                 p99 run: 0 once warm). No cache outlives the process: Node 20 has no API to
//                 serialize compiled Wasm;
//   p99           200,000 single requests, steady and while the same event loop swaps v1↔v2
//                 every ~10 ms (an async loop: sleep 10 ms, await load); inline they take
//                 about half a second, so that the window holds some 50 swaps (20,000, as
//                 before calls ran inline, held 6-8 and a single millisecond's hiccup of the
//                 machine decided the p99). A request is a turn of the
//                 event loop (setImmediate, as a request read from a socket gets one) and then
//                 `await host.call()`, timed together: a request that arrives while the loop
//                 runs a load's work waits for it, and that wait is in its latency.
// Run from sdk/node: node bench/swap.js [inline|threads]
import { readFileSync } from 'node:fs';
import { setImmediate as turn, setTimeout as sleep } from 'node:timers/promises';
import { PluginHost, sha256Digest } from '../index.js';

const PLUGIN = 'tagger';
const WARMUP = 5_000;
const ROUNDS = 7;
const ROUND_CALLS = 5_000;
const LOADS = 40;
const P99_CALLS = 200_000;
const SWAP_EVERY_MS = 10;
const input = Buffer.from('hello');
const calls = process.argv[2] ?? 'inline';

const dir = new URL('../../conformance/plugins/', import.meta.url);
const reqs = ['tagger-v1', 'tagger-v2'].map((name) => {
  let wasm;
  try {
    wasm = readFileSync(new URL(`${name}.wasm`, dir));
  } catch (err) {
    throw new Error(`${err.message} (run sdk/conformance/build.sh first)`);
  }
  return { plugin: PLUGIN, revision: name, digest: sha256Digest(wasm), wasm };
});

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))];
};
const round = (x, digits = 3) => Number(x.toFixed(digits));

async function latencies(host) {
  const lat = new Array(P99_CALLS);
  for (let i = 0; i < P99_CALLS; i++) {
    const t = performance.now();
    await turn();
    await host.call(PLUGIN, input);
    lat[i] = performance.now() - t;
  }
  return lat;
}

const host = new PluginHost({ calls });
try {
  await host.load(reqs[0]);
  await host.load(reqs[1]);
  const swaps = [];
  const totals = [];
  let hits = 0;
  const threadsBefore = host.warm().threadsStarted;
  for (let i = 0; i < LOADS; i++) {
    const l = await host.load(reqs[i % 2]);
    swaps.push(l.swapMs * 1e6);
    totals.push(l.totalMs);
    if (l.cached) hits++;
  }
  // LOADS is even: v2 serves now; v1 for the rest.
  await host.load(reqs[0]);

  for (let i = 0; i < WARMUP; i++) await host.call(PLUGIN, input);
  const means = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t = performance.now();
    for (let i = 0; i < ROUND_CALLS; i++) await host.call(PLUGIN, input);
    means.push(((performance.now() - t) * 1e3) / ROUND_CALLS);
  }

  const steady = await latencies(host);
  let stop = false;
  let swapped = 0;
  const swapper = (async () => {
    for (let i = 1; !stop; i++) {
      await sleep(SWAP_EVERY_MS);
      await host.load(reqs[i % 2]);
      swapped++;
    }
  })();
  let during;
  try {
    during = await latencies(host);
  } finally {
    stop = true;
    await swapper;
  }

  const p99Steady = pct(steady, 99);
  const p99Swaps = pct(during, 99);
  console.log(JSON.stringify({
    sdk: 'node',
    call_mode: calls,
    runtime: `V8 ${process.versions.v8} (Node ${process.version})`,
    call_us: round(pct(means, 50)),
    call_us_rounds: means.map((m) => round(m)),
    swap_ns_median: Math.round(pct(swaps, 50)),
    swap_ns_max: Math.round(Math.max(...swaps)),
    cache_hits: hits,
    load_cached_ms_median: round(pct(totals, 50)),
    load_cached_ms_p90: round(pct(totals, 90)),
    loads: LOADS,
    cache: calls === 'inline' ? 'memory (WebAssembly.Module by digest)' : 'memory (WebAssembly.Module by digest; warm worker threads)',
    threads_started: host.warm().threadsStarted - threadsBefore,
    calls: P99_CALLS,
    p50_steady_us: round(pct(steady, 50) * 1e3),
    p99_steady_us: round(p99Steady * 1e3),
    p50_swaps_us: round(pct(during, 50) * 1e3),
    p99_swaps_us: round(p99Swaps * 1e3),
    swaps_during: swapped,
    p99_ratio: round(p99Swaps / p99Steady),
  }));
} finally {
  await host.close?.();
}
