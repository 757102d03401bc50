// 100 swaps between two versions while callers keep calling: no call fails, every response
// comes wholly from one version, and a pinned request sees one version throughout.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate } from 'node:timers/promises';

import { PluginHost, sha256Digest } from '../index.js';
import { pluginBytes } from './helpers.js';

const V = [pluginBytes('tagger-v1.wasm'), pluginBytes('tagger-v2.wasm')];
const TAGS = ['v01', 'v02'];

/** The tag of a tagger response `tag:body tag:` and its body, or null if the halves differ. */
function tagOf(out) {
  const s = out.toString('latin1');
  const tag = s.slice(0, 3);
  if (s.length < 8 || s[3] !== ':' || !s.endsWith(`${tag}:`)) return null;
  return { tag, body: s.slice(4, -4) };
}

const load = (host, rev, n) => host.load({ plugin: 'auth', revision: rev, digest: sha256Digest(V[n]), wasm: V[n] });

for (const calls of ['inline', 'threads']) test(`${calls}: 100 swaps under concurrent calls fail no call and mix no response`, async () => {
  // Calls get a generous deadline: this test is about swaps, not deadlines, and a loaded CI
  // machine can deschedule a worker thread for a while.
  const host = new PluginHost({ calls, callTimeoutMs: 5000, instancesPerRevision: 2 });
  await load(host, 'r0', 0);
  let stop = false;
  const perTag = new Map(TAGS.map((t) => [t, 0]));
  const failures = [];
  const caller = async (n) => {
    let i = 0;
    while (!stop && i < 1_000_000) {
      const input = `caller${n}-request${i}-${'x'.repeat(i % 64)}`;
      try {
        const out = await host.call('auth', input);
        const t = tagOf(out);
        if (!t || !perTag.has(t.tag)) failures.push(`mixed response ${JSON.stringify(out.toString('latin1'))}`);
        else if (t.body !== input) failures.push(`body mismatch ${JSON.stringify(out.toString('latin1'))}`);
        else perTag.set(t.tag, perTag.get(t.tag) + 1);
      } catch (err) {
        failures.push(err.message);
      }
      i++;
      // As requests come in from sockets: inline, a call never yields to the event loop.
      await setImmediate();
    }
    return i;
  };
  const pinned = async () => {
    let i = 0;
    while (!stop) {
      const pin = host.pin('auth');
      try {
        const a = tagOf(await pin.call('first'));
        const b = tagOf(await pin.call('second'));
        if (a?.tag !== b?.tag || a?.tag !== TAGS[pin.revision.digest === sha256Digest(V[0]) ? 0 : 1]) {
          failures.push(`a pinned request saw ${a?.tag} then ${b?.tag}`);
        }
      } catch (err) {
        failures.push(`pinned: ${err.message}`);
      } finally {
        pin.release();
      }
      i++;
      await setImmediate();
    }
    return i;
  };
  const callers = [caller(0), caller(1), caller(2), caller(3), pinned()];
  let worstSwapMs = 0;
  const started = performance.now();
  for (let n = 1; n <= 100; n++) {
    const loaded = await load(host, `r${n}`, n % 2);
    assert.ok(loaded.swapped);
    worstSwapMs = Math.max(worstSwapMs, loaded.swapMs);
    await new Promise((r) => setTimeout(r, 2));
    assert.ok(performance.now() - started < 120_000, 'swap loop exceeded its time bound');
  }
  stop = true;
  const counts = await Promise.all(callers);
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} failed calls`);
  const served = counts.reduce((a, b) => a + b, 0);
  const [a, b] = TAGS.map((t) => perTag.get(t));
  console.log(`${calls}: 100 swaps, ${served} calls (${a} v01, ${b} v02), worst swap critical section ${(worstSwapMs * 1000).toFixed(1)} µs, ${((performance.now() - started) / 1000).toFixed(1)} s`);
  assert.ok(a > 0 && b > 0, `both versions served: v01=${a} v02=${b}`);
  assert.equal(host.serving('auth').revision, 'r100');
  await host.close();
});
