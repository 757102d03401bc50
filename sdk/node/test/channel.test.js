// The way requests reach the worker threads (src/channel.js): calls through shared memory,
// with what does not fit it as messages; the steps of a load as chains of requests, each
// thread ringing the next; the state handed from thread to thread, or by the main thread when
// it is too large; every request of a chain under a deadline of its own.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PluginHost, sha256Digest } from '../index.js';
import { DATA_BYTES } from '../src/channel.js';
import { pluginBytes } from './helpers.js';

// Plugins of this file only, as wabt's wat2wasm 1.0.32 builds them from the text beside each.
const WASM = {
  // handle answers its input, whatever its size (up to 1 MiB).
  //   (memory (export "memory") 17)
  //   (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  //   (func (export "handle") (param $p i32) (param $l i32) (result i64)
  //     (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $l))))
  echoBig: 'AGFzbQEAAAABDAJgAX8Bf2ACf38BfgMDAgABBQMBABEHGwMGbWVtb3J5AgAFYWxsb2MAAAZoYW5kbGUAAQoVAgYAQYCABAsMACAArUIghiABrYQL',
  // save_state hands over 100000 bytes, byte i = i mod 251; restore_state checks every one and
  // keeps the length; handle answers "ok" and the 4-byte length restored (0 when fresh).
  //   (memory (export "memory") 4) (global $restored (mut i32) (i32.const 0))
  //   (func (export "alloc") (param $len i32) (result i32) (i32.const 65536))
  //   (func (export "handle") (param i32 i32) (result i64)
  //     (i32.store16 (i32.const 16) (i32.const 0x6b6f)) (i32.store (i32.const 18) (global.get $restored))
  //     (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 6)))
  //   (func (export "save_state") (result i64) (local $i i32)
  //     (loop $fill (i32.store8 (i32.add (i32.const 65536) (local.get $i)) (i32.rem_u (local.get $i) (i32.const 251)))
  //       (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $fill (i32.lt_u (local.get $i) (i32.const 100000))))
  //     (i64.or (i64.shl (i64.const 65536) (i64.const 32)) (i64.const 100000)))
  //   (func (export "restore_state") (param $p i32) (param $l i32) (result i32) (local $i i32)
  //     (if (i32.ne (local.get $l) (i32.const 100000)) (then (return (i32.const 1))))
  //     (loop $check (if (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.rem_u (local.get $i) (i32.const 251)))
  //         (then (return (i32.const 2))))
  //       (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $check (i32.lt_u (local.get $i) (i32.const 100000))))
  //     (global.set $restored (local.get $l)) (i32.const 0))
  bigState: 'AGFzbQEAAAABFgRgAX8Bf2ACf38BfmAAAX5gAn9/AX8DBQQAAQIDBQMBAAQGBgF/AUEACwc4BQZtZW1vcnkCAAVhbGxvYwAABmhhbmRsZQABCnNhdmVfc3RhdGUAAg1yZXN0b3JlX3N0YXRlAAMKlwEEBgBBgIAECxoAQRBB79YBOwEAQRIjADYCAEIQQiCGQgaECzMBAX8DQEGAgAQgAGogAEH7AXA6AAAgAEEBaiEAIABBoI0GSQ0AC0KAgARCIIZCoI0GhAs/AQF/IAFBoI0GRwRAQQEPCwNAIAAgAmotAAAgAkH7AXBHBEBBAg8LIAJBAWohAiACQaCNBkkNAAsgASQAQQAL',
  // self_check sleeps 150 ms in WASI poll_oneoff (as handle-sleep.wat does) and passes; handle answers "ok".
  slowSelfCheck: 'AGFzbQEAAAABGARgBH9/f38Bf2ABfwF/YAJ/fwF+YAABfwImARZ3YXNpX3NuYXBzaG90X3ByZXZpZXcxC3BvbGxfb25lb2ZmAAADBAMBAgMFAwEAAQcoBAZtZW1vcnkCAAVhbGxvYwABBmhhbmRsZQACCnNlbGZfY2hlY2sAAwpdAwUAQYAICxUAQYAEQe/WATsBAEKABEIghkIChAs/AEEAQgc3AwBBCEEAOgAAQRBBATYCAEEYQoCjw8cANwMAQSBCADcDAEEoQQA7AQBBAEGAAUEBQcABEAAaQQAL',
};
const bytes = (name) => Buffer.from(WASM[name], 'base64');
const load = (host, plugin, revision, wasm) => host.load({ plugin, revision, digest: sha256Digest(wasm), wasm });

test('inputs and outputs past the shared memory of a thread travel as messages, intact', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1 });
  try {
    await load(host, 'echo', 'r1', bytes('echoBig'));
    const pattern = (n, seed) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));
    for (const n of [0, 1, 5, DATA_BYTES - 1, DATA_BYTES, DATA_BYTES + 1, 300_000, 1 << 20]) {
      const input = pattern(n, n);
      assert.ok((await host.call('echo', input)).equals(input), `${n} bytes`);
    }
    // A view into a larger buffer: only the view's bytes go.
    const big = pattern(200_000, 3);
    const view = big.subarray(1000, 1000 + DATA_BYTES + 10);
    assert.ok((await host.call('echo', view)).equals(view));
    assert.equal((await host.call('echo', 'x'.repeat(DATA_BYTES + 3))).toString(), 'x'.repeat(DATA_BYTES + 3));
  } finally {
    await host.close();
  }
});

test('a state past the shared memory of a thread is handed over whole, to every instance, those built later too', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 3 });
  try {
    await load(host, 'big', 'r1', bytes('bigState'));
    const l = await load(host, 'big', 'r2', bytes('bigState').subarray(0));
    assert.equal(l.swapped, true);
    // Same bytes, another revision: the hand-over ran.
    assert.equal(l.stateBytes, 100_000);
    const outs = await Promise.all([0, 1, 2].map(() => host.call('big', 'x')));
    for (const out of outs) {
      assert.equal(out.subarray(0, 2).toString(), 'ok');
      assert.equal(out.readUInt32LE(2), 100_000, 'every instance restored the whole state');
    }
  } finally {
    await host.close();
  }
});

test('a small state is handed from thread to thread, to every instance a load builds', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 3, instancesAtLoad: 3 });
  const [v1, v2] = [pluginBytes('tagger-v1.wasm'), pluginBytes('tagger-v2.wasm')];
  try {
    await load(host, 'tag', 'r1', v1);
    for (let i = 0; i < 5; i++) await host.call('tag', 'x');
    const l = await load(host, 'tag', 'r2', v2);
    assert.equal(l.stateBytes, 4);
    // One call at a time uses the instance used last; the save ran on that one (count 5).
    const counts = await Promise.all([0, 1, 2].map(async () => (await host.call('tag', '')).readUInt32LE(0)));
    assert.deepEqual(counts, [5, 5, 5]);
  } finally {
    await host.close();
  }
});

test('each start of a load has its own deadline, counted from when its thread takes it up', async () => {
  // Three self-checks of 150 ms each, one after the other: 450 ms in all, each under 400 ms.
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 3, instancesAtLoad: 3, callTimeoutMs: 400 });
  try {
    const t = performance.now();
    const l = await load(host, 'slow', 'r1', bytes('slowSelfCheck'));
    assert.equal(l.selfChecked, true);
    assert.ok(performance.now() - t >= 440, 'the starts ran one after the other');
    assert.equal((await host.call('slow', 'x')).toString(), 'ok');
  } finally {
    await host.close();
  }
});

test('a start cut off at its deadline fails the load at once, and the next load is served', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 3, instancesAtLoad: 3, callTimeoutMs: 300 });
  try {
    // Warm threads and the module, so that the load below times only its starts.
    await load(host, 'p', 'r0', pluginBytes('self-check-loop.wasm')).catch(() => {});
    await load(host, 'warm', 'r0', pluginBytes('tagger-v1.wasm'));
    await host.unload('warm');
    const t = performance.now();
    await assert.rejects(load(host, 'p', 'r1', pluginBytes('self-check-loop.wasm')), { kind: 'self_check', fault: 'timeout' });
    const took = performance.now() - t;
    // The first instance's self-check was cut off; the two after it never ran.
    assert.ok(took < 2 * 300, `failed after ${took.toFixed(0)} ms`);
    await load(host, 'p', 'r2', pluginBytes('tagger-v1.wasm'));
    assert.equal((await host.call('p', 'y')).toString(), 'v01:yv01:');
  } finally {
    await host.close();
  }
});
