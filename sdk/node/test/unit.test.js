// The pure parts: ABI packing and export check, the protocol's line handling and back-off,
// the memory.grow rewrite.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { abi, LATENCY_BOUNDS_US, latencyBucket, protocol, PluginHost, sha256Digest, parseSha256 } from '../index.js';
import { instrument, parseModule, WasmFormatError } from '../src/wasm-binary.js';
import { pluginBytes } from './helpers.js';

test('pack round-trips, including high-bit pointers', () => {
  for (const [p, l] of [[0, 0], [1024, 5], [0xffffffff, 0xffffffff], [0x80000000, 1]]) {
    assert.deepEqual(abi.unpack(abi.pack(p, l)), [p, l]);
  }
  assert.equal(abi.pack(1, 2), (1n << 32n) | 2n);
});

test('checkedRange refuses out of bounds', () => {
  assert.deepEqual(abi.checkedRange(10, 5, 15), [10, 15]);
  assert.equal(abi.checkedRange(10, 6, 15), null);
  assert.equal(abi.checkedRange(0xffffffff, 0xffffffff, 1 << 20), null);
  assert.deepEqual(abi.checkedRange(0, 0, 0), [0, 0]);
});

test('checkExports accepts the minimum and names the offending export', () => {
  const minimal = [
    { name: 'memory', kind: 'memory' },
    { name: 'alloc', kind: 'func', signature: '(i32)->i32' },
    { name: 'handle', kind: 'func', signature: '(i32,i32)->i64' },
  ];
  assert.deepEqual(abi.checkExports(minimal), { configure: false, selfCheck: false, saveState: false, restoreState: false });
  assert.throws(() => abi.checkExports(minimal.filter((e) => e.name !== 'handle')), { message: 'missing export `handle` (i32,i32)->i64' });
  assert.throws(() => abi.checkExports([...minimal, { name: 'self_check', kind: 'func', signature: '()->i64' }]),
    { message: 'export `self_check` has signature ()->i64, want ()->i32' });
  assert.throws(() => abi.checkExports([{ name: 'memory', kind: 'func', signature: '()->i32' }]),
    { message: 'export `memory` must be a memory, found Func("()->i32")' });
});

test('digests are sha256:<64 lowercase hex>', () => {
  assert.equal(sha256Digest(Buffer.alloc(0)), 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  const ok = `sha256:${'a1'.repeat(32)}`;
  assert.equal(parseSha256(ok), 'a1'.repeat(32));
  assert.equal(parseSha256(ok.toUpperCase()), null);
  assert.equal(parseSha256('sha256:abc'), null);
});

test('parseLine reads loads and unloads and ignores everything else', () => {
  const p = (s) => protocol.parseLine(Buffer.from(s));
  assert.equal(p('{"type":"load","plugin":"a","revision":"r1","path":"/x"}').kind, 'load');
  assert.deepEqual(p('{"type":"unload","plugin":"a"}'), { kind: 'unload', plugin: 'a' });
  assert.deepEqual(p('{"type":"error","reason":"line 1: …"}'), { kind: 'error', reason: 'line 1: …' });
  for (const bad of ['hello?', '', '[]', 'null', '{"type":"reboot"}', '{"type":"load","plugin":"a"}', '{"type":"unload"}']) {
    assert.equal(p(bad).kind, 'ignore', bad);
  }
  assert.equal(protocol.parseLine(Buffer.from([0xff, 0xfe])).kind, 'ignore');
});

test('LineSplitter splits across chunks and skips lines over its limit', () => {
  const s = new protocol.LineSplitter(8);
  assert.deepEqual(s.push(Buffer.from('ab')).map(String), []);
  assert.deepEqual(s.push(Buffer.from('c\nde\n')).map(String), ['abc', 'de']);
  assert.deepEqual(s.push(Buffer.from('0123456789')).map(String), []);
  assert.deepEqual(s.push(Buffer.from('0123\nok\n')).map(String), ['ok']);
  assert.deepEqual(s.push(Buffer.from('012345678\nok2\n')).map(String), ['ok2']);
});

test('back-off doubles from 50 ms to 2 s', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 50].map(protocol.backoffMs), [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
});

test('config is compact JSON text; null is zero bytes', () => {
  assert.equal(protocol.configBytes({ threshold: 3 }).toString(), '{"threshold":3}');
  assert.equal(protocol.configBytes(null).length, 0);
  assert.equal(protocol.configBytes(undefined).length, 0);
  assert.equal(protocol.configBytes(false).toString(), 'false');
});

test('the rewrite keeps a module valid and its exports the same', async () => {
  for (const file of ['tagger-v1.wasm', 'self-check-grow.wasm', 'go-upper.wasm']) {
    const bytes = pluginBytes(file);
    const info = parseModule(bytes);
    const out = instrument(bytes, info, { limitPages: 256, tickEvery: 10_000 });
    assert.ok(WebAssembly.validate(out), `${file} stays valid`);
    const after = parseModule(out);
    // Function indices move up by one (the tick import comes first); names, kinds, types stay.
    const shape = (e) => ({ name: e.name, kind: e.kind, signature: e.signature });
    assert.deepEqual(after.exports.slice(0, info.exports.length).map(shape), info.exports.map(shape), `${file}: exports kept`);
  }
  assert.throws(() => parseModule(Buffer.from('\0asm\x01\0\0\0garbage')), WasmFormatError);
  assert.throws(() => parseModule(Buffer.from('not wasm at all')), /magic header/);
});

test('growth up to the limit works; past it traps with the sizes', async () => {
  const host = new PluginHost({ maxMemoryBytes: 4 << 16, instancesPerRevision: 1 });
  const tagger = pluginBytes('tagger-v1.wasm'); // declares 2 pages: fits a 4-page limit
  await host.load({ plugin: 't', revision: 'r1', digest: sha256Digest(tagger), wasm: tagger });
  assert.equal((await host.call('t', 'x')).toString(), 'v01:xv01:');
  const grow = pluginBytes('handle-grow.wasm');
  await host.load({ plugin: 'g', revision: 'r1', digest: sha256Digest(grow), wasm: grow });
  await assert.rejects(host.call('g', 'x'), { message: 'plugin g revision r1: handle failed: memory limit exceeded: asked for 1114112 bytes, limit is 262144 bytes' });
  await host.close();
});

test('latency buckets follow the documented bounds; a call of exactly a bound is in its bucket', () => {
  const cases = [[0, 0], [10, 0], [10.9, 0], [11, 1], [20, 1], [21, 2], [1000, 6], [1001, 7], [3000, 8],
    [1e6, 15], [1e7, 18], [1e7 + 1, 19], [3.6e9, 19], [-5, 0]];
  for (const [us, want] of cases) assert.equal(latencyBucket(us), want, `${us} µs`);
  LATENCY_BOUNDS_US.forEach((bound, i) => assert.equal(latencyBucket(bound), i, `${bound} µs`));
  assert.equal(LATENCY_BOUNDS_US.length + 1, 20);
});

test('a call that finds no free instance in time counts as failed; the one that held it as timeout', async () => {
  const host = new PluginHost({ calls: 'threads', instancesPerRevision: 1, callTimeoutMs: 400, checkoutTimeoutMs: 100 });
  try {
    const wasm = pluginBytes('handle-loop.wasm');
    await host.load({ plugin: 'slow', revision: 'r1', digest: sha256Digest(wasm), wasm });
    const holding = host.call('slow', 'x').catch((e) => e);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await assert.rejects(host.call('slow', 'y'), { kind: 'busy' });
    assert.equal((await holding).fault, 'timeout');
    const [h] = host.takeHealth();
    assert.deepEqual([h.calls, h.errors], [2, { trap: 0, timeout: 1, memory: 0, failed: 1 }]);
    const slow = h.latency_us.slice(latencyBucket(100_000)).reduce((a, b) => a + b, 0);
    assert.equal(slow, 2, `both calls took 100 ms or more: ${h.latency_us}`);
    assert.deepEqual(host.takeHealth(), [], 'drained');
  } finally {
    await host.close();
  }
});

test('health is the protocol\'s JSON: field names, 20 latency buckets', async () => {
  const host = new PluginHost({ instancesPerRevision: 1 });
  try {
    const wasm = pluginBytes('tagger-v1.wasm');
    await host.load({ plugin: 'auth', revision: 'r2', digest: sha256Digest(wasm), wasm });
    await host.call('auth', 'x');
    const pin = host.pin('auth');
    pin.markFailed();
    pin.release();
    pin.markFailed(); // after release: nothing
    const line = JSON.stringify(protocol.health(host.takeHealth()));
    assert.ok(line.startsWith('{"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":1,"errors":{"trap":0,"timeout":0,"memory":0,"failed":1},"latency_us":['), line);
    assert.equal(JSON.parse(line).plugins[0].latency_us.length, 20);
  } finally {
    await host.close();
  }
});
