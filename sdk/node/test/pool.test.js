// A revision's pool (src/revision.js): what a load builds (instancesAtLoad), what a call
// builds later (self-checked, given the handed-over state, as the load's own), what happens
// when building one of those fails, and the threads the later instances find started.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PluginHost, sha256Digest } from '../index.js';
import { compileModule } from '../src/compile.js';
import { DEFAULTS } from '../src/host.js';
import { Revision } from '../src/revision.js';
import { WorkerPool } from '../src/worker-pool.js';
import { pluginBytes } from './helpers.js';

const EMPTY = new Uint8Array(0);

/** A pool and the revisions made on it, closed after `fn`. */
async function withPool(config, fn) {
  const cfg = { ...DEFAULTS, ...config };
  const pool = new WorkerPool(cfg, cfg.instancesPerRevision);
  const revisions = [];
  const compile = async (file) => {
    const r = await compileModule(pluginBytes(file), cfg, pool);
    assert.ok(r.ok, `${file} compiles`);
    return { module: r.module, caps: r.caps, release() {} };
  };
  // A revision as a load makes it (its first instances built), not published.
  const revision = async (name, compiled) => {
    const rev = new Revision({ plugin: 'auth', revision: name, digest: `sha256:${'0'.repeat(64)}`, config: EMPTY },
      compiled, pool, cfg);
    await rev.fill();
    revisions.push(rev);
    return rev;
  };
  try {
    await fn({ cfg, compile, revision });
  } finally {
    for (const rev of revisions) rev.destroy();
    pool.close();
  }
}

/** The tagger's answer to an empty input on `inst`: how many requests that instance handled. */
async function countOn(inst, cfg) {
  const r = await inst.request({ op: 'handle', timeoutMs: cfg.callTimeoutMs, input: EMPTY }, cfg.callTimeoutMs);
  assert.ok(r.ok);
  return Buffer.from(r.value).readUInt32LE(0);
}

test('a load builds instancesAtLoad instances, and a call builds the rest like them', async () => {
  await withPool({ instancesPerRevision: 3, checkoutTimeoutMs: 50 }, async ({ cfg, compile, revision }) => {
    const r1 = await revision('r1', await compile('tagger-v1.wasm'));
    assert.equal(r1.live, 1, 'one instance built by the load (the default)');
    for (let i = 0; i < 5; i++) assert.ok((await r1.run({ op: 'handle', timeoutMs: cfg.callTimeoutMs, input: Buffer.from('x') })).ok);
    const r2 = await revision('r2', await compile('tagger-v2.wasm'));
    const { saved, failure } = await r1.handOverTo(r2);
    assert.ok(saved.ok);
    assert.equal(failure, null);
    const held = await Promise.all([r2.checkout(), r2.checkout(), r2.checkout()]);
    assert.equal(r2.live, 3);
    await assert.rejects(r2.checkout(), { kind: 'busy' }, 'never more than instancesPerRevision');
    const counts = [];
    for (const inst of held) counts.push(await countOn(inst, cfg));
    assert.deepEqual(counts, [5, 5, 5], 'the instances built later took the load\'s state too');
    for (const inst of held) r2.checkin(inst, false);
    assert.equal(r2.idle.length, 3);
  });
  await withPool({ instancesPerRevision: 2, instancesAtLoad: 9 }, async ({ compile, revision }) => {
    assert.equal((await revision('r1', await compile('tagger-v1.wasm'))).live, 2, 'at most instancesPerRevision');
  });
});

test('a later instance that fails its self-check fails the call that needed it and never serves', async () => {
  await withPool({ instancesPerRevision: 2 }, async ({ cfg, compile, revision }) => {
    const tagger = await compile('tagger-v1.wasm');
    const good = tagger.module;
    const rev = await revision('r1', tagger);
    const held = await rev.checkout();
    // The instances built from now on fail their self-check (the revision's caps still say
    // it has one); the one built at load is unaffected.
    tagger.module = (await compile('self-check-status-7.wasm')).module;
    await assert.rejects(rev.checkout(), {
      kind: 'reinstantiate',
      fault: 'status',
      message: 'plugin auth revision r1: re-instantiation failed: self-check: returned status 7',
    });
    assert.equal(rev.live, 1, 'the failed instance is not counted');
    const answer = await held.request({ op: 'handle', timeoutMs: cfg.callTimeoutMs, input: Buffer.from('x') }, cfg.callTimeoutMs);
    assert.equal(Buffer.from(answer.value).toString(), 'v01:xv01:', 'the instance built at load serves on');
    // The next checkout that needs one builds it afresh, self-check included (it passes now).
    tagger.module = good;
    const other = await rev.checkout();
    assert.notEqual(other, held);
    assert.equal(rev.live, 2);
    // Once every instance of the pool is built, a replacement for a faulted one is only
    // configured, as in hotload-host.
    rev.checkin(other, true);
    tagger.module = (await compile('self-check-status-7.wasm')).module;
    const replacement = await rev.checkout();
    assert.equal(rev.live, 2);
    rev.checkin(replacement, false);
    rev.checkin(held, false);
  });
});

test('a later instance that refuses the load\'s state fails the call that needed it and never serves', async () => {
  await withPool({ instancesPerRevision: 2 }, async ({ cfg, compile, revision }) => {
    const r1 = await revision('r1', await compile('tagger-v1.wasm'));
    const v2 = await compile('tagger-v2.wasm');
    const r2 = await revision('r2', v2);
    assert.equal((await r1.handOverTo(r2)).failure, null);
    const held = await r2.checkout();
    v2.module = (await compile('restore-fails.wasm')).module;
    await assert.rejects(r2.checkout(), {
      kind: 'reinstantiate',
      message: 'plugin auth revision r2: re-instantiation failed: restore-state: returned status 3',
    });
    assert.equal(r2.live, 1);
    assert.equal(r2.idle.length, 0, 'the instance that refused it was dropped');
    const answer = await held.request({ op: 'handle', timeoutMs: cfg.callTimeoutMs, input: Buffer.from('x') }, cfg.callTimeoutMs);
    assert.equal(Buffer.from(answer.value).toString(), 'v02:xv02:');
    r2.checkin(held, false);
  });
});

test('the instances built after a load find their threads started', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 3 });
  try {
    const wasm = pluginBytes('tagger-v1.wasm');
    await host.load({ plugin: 'auth', revision: 'r1', digest: sha256Digest(wasm), wasm });
    const end = performance.now() + 10_000;
    while (host.warm().idleThreads < 2) {
      assert.ok(performance.now() < end, 'timed out waiting for the threads of the later instances');
      await new Promise((r) => setTimeout(r, 10));
    }
    const started = host.warm().threadsStarted;
    const outs = await Promise.all(['a', 'b', 'c'].map((x) => host.call('auth', x)));
    assert.deepEqual(outs.map(String), ['v01:av01:', 'v01:bv01:', 'v01:cv01:']);
    assert.equal(host.warm().threadsStarted, started, 'no thread started on a call\'s path');
  } finally {
    await host.close();
  }
});
