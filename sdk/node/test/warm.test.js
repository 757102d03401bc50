// What a host keeps warm between loads: compiled modules by digest (a revision loaded again
// compiles nothing) and worker threads (a swap between warm revisions starts none; a thread
// that served a revision or a faulted instance serves the next one with a fresh instance; a
// thread terminated at a deadline is replaced in the background).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PluginHost, sha256Digest } from '../index.js';
import { ModuleCache } from '../src/module-cache.js';
import { IDLE_RESET_MS, WorkerPool } from '../src/worker-pool.js';
import { pluginBytes } from './helpers.js';

const V = [pluginBytes('tagger-v1.wasm'), pluginBytes('tagger-v2.wasm')];
const load = (host, plugin, rev, wasm, extra = {}) =>
  host.load({ plugin, revision: rev, digest: sha256Digest(wasm), wasm, ...extra });
const count = async (host, plugin) => (await host.call(plugin, '')).readUInt32LE(0);

async function until(what, fn, ms = 10_000) {
  const end = performance.now() + ms;
  while (!fn()) {
    assert.ok(performance.now() < end, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('module cache: least recently used unused modules go first, modules in use never', () => {
  const c = new ModuleCache(2, 1000);
  const held = c.add('a', 'mod-a', {}, 100);
  c.add('b', 'mod-b', {}, 100).release();
  c.add('c', 'mod-c', {}, 100).release();
  assert.deepEqual(c.entries().map((e) => e.digest), ['a', 'b', 'c']);
  c.lease('b').release(); // b is now more recent than c
  c.add('d', 'mod-d', {}, 100).release();
  // Unused: b, c, d; at most 2 stay; c is the least recently used of them. a is in use.
  assert.deepEqual(c.entries().map((e) => e.digest), ['a', 'b', 'd']);
  held.release();
  // Now a is unused and the least recently used.
  assert.deepEqual(c.entries().map((e) => e.digest), ['b', 'd']);
  c.add('big', 'mod-big', {}, 950).release();
  assert.deepEqual(c.entries().map((e) => e.digest), ['big'], 'bytes bound');
  const twice = c.add('big', 'other', {}, 950);
  assert.equal(twice.module, 'mod-big', 'a second compile of a digest keeps the first');
  twice.release();
  twice.release(); // idempotent
  assert.deepEqual(c.entries(), [{ digest: 'big', users: 0, bytes: 950 }]);
  assert.equal(c.lease('gone'), null);
});

test('a swap between warm revisions compiles nothing and starts no thread', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 2 });
  try {
    const first = await load(host, 'auth', 'r0', V[0]);
    assert.equal(first.cached, false);
    assert.ok(first.compileMs > 0);
    assert.equal((await load(host, 'auth', 'r1', V[1])).cached, false);
    const started = host.warm().threadsStarted;
    assert.ok(started >= 2 && started <= 6, `${started} threads for two revisions of 2 instances and two compiles`);
    for (let n = 2; n < 12; n++) {
      const l = await load(host, 'auth', `r${n}`, V[n % 2]);
      assert.equal(l.cached, true, `load ${n} from the cache`);
      assert.equal(l.compileMs, 0);
      assert.equal(l.stateBytes, 4);
      assert.equal((await host.call('auth', 'x')).toString(), n % 2 ? 'v02:xv02:' : 'v01:xv01:');
    }
    // Idle: the swapped-out revision's thread, for the next load, and the one the pool started
    // for the serving revision's second instance (built when two calls overlap).
    await until('two idle threads', () => host.warm().idleThreads === 2);
    const w = host.warm();
    assert.equal(w.threadsStarted, started, 'no thread started after the first two loads');
    assert.deepEqual(w.modules.map((m) => m.users).sort(), [0, 1]);
  } finally {
    await host.close();
  }
  assert.equal(host.warm().idleThreads, 0, 'close stops the idle threads');
});

test('a thread serves the next revision with a fresh instance', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1 });
  try {
    await load(host, 'a', 'r1', V[0]);
    for (let i = 0; i < 3; i++) await host.call('a', 'x');
    assert.equal(await count(host, 'a'), 3);
    await host.unload('a');
    const started = host.warm().threadsStarted;
    const l = await load(host, 'b', 'r1', V[0]);
    assert.equal(l.cached, true);
    assert.equal(host.warm().threadsStarted, started, 'the thread of the unloaded plugin was reused');
    assert.equal(await count(host, 'b'), 0, 'nothing of the previous instance is left');
  } finally {
    await host.close();
  }
});

test('modules no revision uses are evicted past moduleCacheEntries', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1, moduleCacheEntries: 0 });
  try {
    await load(host, 'auth', 'r0', V[0]);
    await load(host, 'auth', 'r1', V[1]);
    assert.deepEqual(host.warm().modules.map((m) => m.digest), [sha256Digest(V[1])]);
    assert.equal((await load(host, 'auth', 'r2', V[0])).cached, false, 'v1 was evicted: compiled again');
  } finally {
    await host.close();
  }
});

test('a faulted instance is dropped but its thread serves on', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1 });
  try {
    await load(host, 'trap', 'r1', pluginBytes('handle-trap.wasm'));
    const started = host.warm().threadsStarted;
    for (let i = 0; i < 3; i++) await assert.rejects(host.call('trap', 'x'), { kind: 'handle', fault: 'trap' });
    assert.equal(host.warm().threadsStarted, started);
  } finally {
    await host.close();
  }
});

test('a thread terminated at the deadline is replaced off the request path', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1, callTimeoutMs: 200 });
  try {
    await load(host, 'slow', 'r1', pluginBytes('handle-loop.wasm'));
    assert.equal(host.warm().idleThreads, 0);
    await assert.rejects(host.call('slow', 'x'), { kind: 'handle', fault: 'timeout' });
    // No call is waiting, yet a thread starts and waits for the next checkout.
    await until('a replacement thread', () => host.warm().idleThreads === 1);
    const started = host.warm().threadsStarted;
    await assert.rejects(host.call('slow', 'x'), { kind: 'handle', fault: 'timeout' });
    assert.equal(host.warm().threadsStarted, started + 1, 'the checkout took the warm thread; one more replaces the one terminated');
  } finally {
    await host.close();
  }
});

test('a compile past its budget is cut off and its thread replaced', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1, compileTimeoutMs: 1 });
  try {
    await assert.rejects(load(host, 'go', 'r1', pluginBytes('go-upper.wasm')), {
      kind: 'compile_timeout',
      message: 'plugin go revision r1: compile did not finish within its budget of 1 ms',
    });
    assert.deepEqual(host.warm().modules, []);
    // The compiling thread was terminated; another stands in for it.
    await until('a replacement thread', () => host.warm().idleThreads === 1);
  } finally {
    await host.close();
  }
});

test('an idle thread drops the instance it held after IDLE_RESET_MS, not at once', async () => {
  const pool = new WorkerPool({ maxMemoryBytes: 1 << 20 }, 1);
  try {
    const t = await pool.lease();
    const bytes = new Uint8Array(V[0]).buffer;
    const r = await t.request({ op: 'compile', timeoutMs: 5000, bytes }, 5000, [bytes]);
    assert.ok(r.ok && r.value.module instanceof WebAssembly.Module);
    const given = performance.now();
    pool.giveBack(t);
    assert.equal(t.holding, true, 'not cleared on the swap path');
    await until('the idle reset', () => !t.holding, IDLE_RESET_MS * 5);
    assert.ok(performance.now() - given >= IDLE_RESET_MS - 5);
    assert.equal(await pool.lease(), t, 'the same thread, still idle in the pool');
  } finally {
    pool.close();
  }
});
