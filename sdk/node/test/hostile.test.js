// Guests that try to get around the host's limits, and what the host does about each. The
// modules are small enough to keep here as bytes (their WAT beside them): wat2wasm, which
// builds the conformance plugins, refuses the first without --no-check and the others
// without proposals enabled.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PluginHost, sha256Digest } from '../index.js';
import { pluginBytes } from './helpers.js';

const wasm = (b64) => Buffer.from(b64, 'base64');

/**
 * Invalid by itself: it declares no global, and its loop sets global 1 to a million, which
 * after the rewrite (two globals appended) would be the deadline's countdown.
 *   (memory (export "memory") 1)
 *   (func (export "alloc") (param i32) (result i32) (i32.const 1024))
 *   (func (export "handle") (param i32 i32) (result i64)
 *     (loop $l (global.set 1 (i32.const 1000000)) (br $l)) (i64.const 0))
 */
const BUDGET = wasm('AGFzbQEAAAABDAJgAX8Bf2ACf38BfgMDAgABBQMBAAEHGwMGbWVtb3J5AgAFYWxsb2MAAAZoYW5kbGUAAQoXAgUAQYAICw8AA0BBwIQ9JAEMAAtCAAs=');

/**
 * A shared memory (threads), and a handle that waits on it forever.
 *   (memory (export "memory") 1 1 shared)
 *   (func (export "handle") (param i32 i32) (result i64)
 *     (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1))) (i64.const 0))
 */
const ATOMIC_WAIT = wasm('AGFzbQEAAAABDAJgAX8Bf2ACf38BfgMDAgABBQQBAwEBBxsDBm1lbW9yeQIABWFsbG9jAAAGaGFuZGxlAAEKFwIFAEGACAsPAEEAQQBCf/4BAgAaQgAL');

/**
 * Loops forever inside try / catch_all (legacy exceptions, as C++ `catch (...)` builds with
 * -fwasm-exceptions), so it catches what the host throws at the deadline, and answers "ok".
 *   (data (i32.const 0) "ok")
 *   (func $work (loop $inner (br $inner)))
 *   (func (export "handle") (param i32 i32) (result i64)
 *     (try (do (call $work)) (catch_all)) (i64.const 2))
 */
const SWALLOW = wasm('AGFzbQEAAAABDwNgAX8Bf2AAAGACf38BfgMEAwABAgUDAQABBxsDBm1lbW9yeQIABWFsbG9jAAAGaGFuZGxlAAIKGgMFAEGACAsHAANADAALCwoABkAQARkLQgILCwgBAEEACwJvaw==');

/**
 * save_state hands over 70,000 bytes (more than a worker thread's 64 KiB of shared memory);
 * restore_state counts its runs on the instance and traps on the first; handle answers the
 * count as one digit.
 *   (global $restores (mut i32) (i32.const 0))
 *   (func (export "handle") ... (i32.store8 (i32.const 0) (i32.add (i32.const 48) (global.get $restores))) (i64.const 1))
 *   (func (export "save_state") (result i64) (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 70000)))
 *   (func (export "restore_state") (param i32 i32) (result i32)
 *     (global.set $restores (i32.add (global.get $restores) (i32.const 1)))
 *     (if (i32.eq (global.get $restores) (i32.const 1)) (then unreachable)) (i32.const 0))
 * BIG_STATE is the same without the trap.
 */
const BIG_STATE_TRAP = wasm('AGFzbQEAAAABFgRgAX8Bf2ACf38BfmAAAX5gAn9/AX8DBQQAAQIDBQMBAAQGBgF/AUEACwc4BQZtZW1vcnkCAAVhbGxvYwAABmhhbmRsZQABCnNhdmVfc3RhdGUAAg1yZXN0b3JlX3N0YXRlAAMKOgQGAEGAgAQLDgBBAEEwIwBqOgAAQgELDQBCgAhCIIZC8KIEhAsUACMAQQFqJAAjAEEBRgRAAAtBAAs=');
const BIG_STATE = wasm('AGFzbQEAAAABFgRgAX8Bf2ACf38BfmAAAX5gAn9/AX8DBQQAAQIDBQMBAAQGBgF/AUEACwc4BQZtZW1vcnkCAAVhbGxvYwAABmhhbmRsZQABCnNhdmVfc3RhdGUAAg1yZXN0b3JlX3N0YXRlAAMKMQQGAEGAgAQLDgBBAEEwIwBqOgAAQgELDQBCgAhCIIZC8KIEhAsLACMAQQFqJABBAAs=');

const load = (host, revision, bytes) => host.load({ plugin: 'p', revision, digest: sha256Digest(bytes), wasm: bytes });

for (const calls of ['inline', 'threads']) {
  test(`${calls}: a module that is invalid by itself is refused, even one the rewrite would make valid`, async () => {
    const host = new PluginHost({ calls, callTimeoutMs: 300 });
    try {
      await assert.rejects(load(host, 'r1', BUDGET), (err) => err.kind === 'invalid_wasm' && /global/i.test(err.message));
    } finally {
      await host.close();
    }
  });

  test(`${calls}: a shared memory is refused (no atomic wait can outlast a deadline)`, async () => {
    const host = new PluginHost({ calls, callTimeoutMs: 300 });
    try {
      await assert.rejects(load(host, 'r1', ATOMIC_WAIT),
        { kind: 'invalid_wasm', message: /shared memory is not supported/ });
    } finally {
      await host.close();
    }
  });

  test(`${calls}: a guest that catches the deadline still fails with it, and its instance is replaced`, async () => {
    const host = new PluginHost({ calls, callTimeoutMs: 200 });
    try {
      await load(host, 'r1', SWALLOW);
      for (let i = 0; i < 2; i++) {
        await assert.rejects(host.call('p', 'x'), { kind: 'handle', fault: 'timeout', message: /deadline exceeded/ });
      }
      const [h] = host.takeHealth();
      assert.equal(h.errors.timeout, 2);
    } finally {
      await host.close();
    }
  });

  test(`${calls}: a state over 64 KiB is restored once on each new instance, and a failed restore fails the load`, async () => {
    const host = new PluginHost({ calls });
    try {
      await load(host, 'r1', BIG_STATE);
      await load(host, 'r2', BIG_STATE);
      assert.equal((await host.call('p', 'x')).toString(), '1', 'restore_state ran once on r2\'s instance');
      await assert.rejects(load(host, 'r3', BIG_STATE_TRAP), { kind: 'restore_state', message: /unreachable/ });
      assert.equal(host.serving('p').revision, 'r2', 'the old revision serves on');
    } finally {
      await host.close();
    }
  });
}

test('inline: calls made in the same turn share one instance', async () => {
  const host = new PluginHost();
  try {
    const tagger = pluginBytes('tagger-v1.wasm');
    await load(host, 'r1', tagger);
    await Promise.all(['a', 'b', 'c', 'd'].map((x) => host.call('p', x)));
    // The tagger answers an empty input with how many requests its instance has handled
    // (not counting those): 4 from one instance, where four instances would answer 1 each.
    const counts = await Promise.all([0, 1, 2, 3].map(() => host.call('p', '')));
    assert.deepEqual(counts.map((b) => b.readUInt32LE(0)), [4, 4, 4, 4]);
  } finally {
    await host.close();
  }
});
