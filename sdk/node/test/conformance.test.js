// The shared conformance cases (sdk/conformance/cases.json), run against this SDK's host:
// the same plugin files and inputs give the same outputs, and every fault case leaves the
// old revision serving with the reason hotload-host gives.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PluginHost, latencyBucket } from '../index.js';
import { sha256Digest } from '../src/digest.js';
import { checkError, checkOutcome, hostConfig, inputOf, pluginBytes, suite } from './helpers.js';

const s = suite();
assert.equal(s.format, 1, 'cases.json format this runner knows');

// Every case runs with guest calls on the event loop (the default) and in worker threads.
for (const calls of ['inline', 'threads']) for (const c of s.cases) {
  test(`conformance (${calls}): ${c.name}`, async () => {
    const events = [];
    const host = new PluginHost({ ...hostConfig(s.host, c.host), calls }, {
      afterLoad: (e) => events.push(`after_load ${e.plugin} ${e.revision} previous=${e.previous ?? ''}`),
      beforeUnload: (e) => events.push(`before_unload ${e.plugin} ${e.revision} next=${e.next ?? ''}`),
      loadFailed: (p, r, err) => events.push(`load_failed ${p} ${r} ${err.kind}`),
    });
    const pins = new Map();
    try {
      for (const [n, step] of c.steps.entries()) {
        const where = `${c.name} step ${n + 1}`;
        const expect = step.expect ?? {};
        const times = step.repeat ?? 1;
        for (let i = 0; i < times; i++) {
          const t = performance.now();
          await runStep(host, step, expect, pins, events, where);
          if (step.max_ms) {
            const took = performance.now() - t;
            assert.ok(took <= step.max_ms, `${where}: took ${took.toFixed(0)} ms, max ${step.max_ms}`);
          }
        }
      }
    } finally {
      for (const p of pins.values()) p.release();
      await host.close();
    }
  });
}

async function runStep(host, step, expect, pins, events, where) {
  if (step.load) {
    const l = step.load;
    const wasm = pluginBytes(l.file);
    const digest = l.digest ?? sha256Digest(l.digest_of ? pluginBytes(l.digest_of) : wasm);
    let loaded;
    let err;
    try {
      loaded = await host.load({ plugin: l.plugin, revision: l.revision, digest, config: l.config ?? null, wasm });
    } catch (e) {
      err = e;
    }
    if (expect.error) {
      assert.ok(err, `${where}: want load error ${JSON.stringify(expect.error)}, got ${JSON.stringify(loaded)}`);
      const bad = checkError(err, expect.error);
      assert.equal(bad, null, `${where}: ${bad}`);
      return;
    }
    if (err) assert.fail(`${where}: load failed: ${err.message}`);
    if ('swapped' in expect) assert.equal(loaded.swapped, expect.swapped, `${where}: swapped`);
    if ('self_checked' in expect) assert.equal(loaded.selfChecked, expect.self_checked, `${where}: self_checked`);
    if ('state_bytes' in expect) assert.equal(loaded.stateBytes, expect.state_bytes, `${where}: state_bytes`);
  } else if (step.call || step.call_pinned) {
    const spec = step.call ?? step.call_pinned;
    let out;
    let err;
    try {
      out = step.call ? await host.call(spec.plugin, inputOf(spec)) : await pins.get(spec.pin).call(inputOf(spec));
    } catch (e) {
      err = e;
    }
    const bad = checkOutcome(out, err, expect);
    assert.equal(bad, null, `${where}: ${bad}`);
  } else if (step.serving) {
    assert.equal(host.serving(step.serving.plugin)?.revision ?? null, expect.revision, `${where}: serving`);
  } else if (step.plugins) {
    assert.deepEqual(host.plugins(), expect.names, `${where}: plugins`);
  } else if (step.pin) {
    let pin;
    let err;
    try {
      pin = host.pin(step.pin.plugin);
    } catch (e) {
      err = e;
    }
    if (expect.error) {
      assert.ok(err, `${where}: want pin error`);
      const bad = checkError(err, expect.error);
      assert.equal(bad, null, `${where}: ${bad}`);
      return;
    }
    if (err) assert.fail(`${where}: pin failed: ${err.message}`);
    pins.set(step.pin.as, pin);
    if (expect.revision !== undefined) assert.equal(pin.revision.revision, expect.revision, `${where}: pinned revision`);
  } else if (step.release) {
    pins.get(step.release.pin).release();
    pins.delete(step.release.pin);
  } else if (step.unload) {
    assert.equal(await host.unload(step.unload.plugin), expect.was_loaded, `${where}: was_loaded`);
  } else if (step.mark_failed) {
    if (step.mark_failed.pin !== undefined) pins.get(step.mark_failed.pin).markFailed();
    else assert.ok(host.markFailed(step.mark_failed.plugin), `${where}: mark_failed: nothing serves`);
  } else if (step.health) {
    if (expect.reports) checkHealth(host.takeHealth(), expect.reports, where);
  } else if (step.events) {
    assert.deepEqual(events, expect.events, `${where}: events`);
  } else {
    assert.fail(`${where}: unknown step ${JSON.stringify(step)}`);
  }
}

// Drained counts against a `health` step's reports: the same revisions in order, exact calls
// and errors, 20 latency buckets adding up to the calls, and at least latency_at_least.calls
// of them in the buckets of latency_at_least.ms or slower.
function checkHealth(got, want, where) {
  assert.deepEqual(got.map((r) => `${r.plugin} ${r.revision}`), want.map((r) => `${r.plugin} ${r.revision}`), `${where}: reported revisions`);
  for (const [i, w] of want.entries()) {
    const g = got[i];
    const who = `${where}: ${g.plugin} ${g.revision}`;
    assert.equal(g.calls, w.calls, `${who}: calls`);
    assert.deepEqual(g.errors, w.errors, `${who}: errors`);
    assert.equal(g.latency_us.length, 20, `${who}: latency buckets`);
    assert.equal(g.latency_us.reduce((a, b) => a + b, 0), g.calls, `${who}: latency buckets hold every call`);
    if (w.latency_at_least) {
      const slow = g.latency_us.slice(latencyBucket(w.latency_at_least.ms * 1000)).reduce((a, b) => a + b, 0);
      assert.ok(slow >= w.latency_at_least.calls, `${who}: ${slow} calls at ${w.latency_at_least.ms} ms or slower: ${g.latency_us}`);
    }
  }
}
