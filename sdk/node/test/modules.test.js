// JavaScript module hot-loading: each revision imported fresh from the verified bytes, the
// old module kept on any failure, state handed over, the same answers through AppClient.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CallError, LoadError, ModuleHost, sha256Digest } from '../index.js';

const mod = (tag, extra = '') => Buffer.from(`
let count = 0;
export function handle(input) { count++; return '${tag}:' + input; }
export function count_() { return count; }
export function saveState() { return { count }; }
export function restoreState(s) { count = s.count; }
${extra}
`);

const load = (host, revision, source, config = null) =>
  host.load({ plugin: 'greet', revision, digest: sha256Digest(source), config, source });

test('a module swaps in, hands its state over and is kept when the next one fails', async () => {
  const events = [];
  const host = new ModuleHost({}, {
    afterLoad: (e) => events.push(`after_load ${e.revision} previous=${e.previous ?? ''}`),
    loadFailed: (p, r, err) => events.push(`load_failed ${r} ${err.kind}`),
  });
  const v1 = mod('v1');
  assert.equal((await load(host, 'r1', v1)).swapped, true);
  assert.equal(await host.call('greet', 'a'), 'v1:a');
  await host.call('greet', 'b');
  assert.equal((await load(host, 'r1', v1)).swapped, false, 'the serving revision again: nothing reloaded');
  assert.equal(host.module('greet').count_(), 2);

  const v2 = mod('v2', 'export function selfCheck() { return true; }');
  const l2 = await load(host, 'r2', v2);
  assert.deepEqual([l2.swapped, l2.selfChecked, l2.stateBytes], [true, true, 11]);
  assert.equal(await host.call('greet', 'c'), 'v2:c');
  assert.equal(host.module('greet').count_(), 3, 'count handed over');

  const cases = [
    [mod('v3', 'export function selfCheck() { throw new Error("no database"); }'), 'self_check', 'self-check failed: no database'],
    [mod('v3', 'export function selfCheck() { return false; }'), 'self_check', 'self-check failed: returned false'],
    [Buffer.from('export function handle( {'), 'import', 'import failed: SyntaxError'],
    [Buffer.from('export const x = 1;'), 'abi', 'module does not export a function `handle`'],
    [Buffer.from('export function handle() {} export function restoreState() { throw new Error("bad state"); }'), 'restore_state', 'restore-state failed: bad state'],
  ];
  for (const [source, kind, words] of cases) {
    await assert.rejects(load(host, 'r3', source), (err) => {
      assert.ok(err instanceof LoadError);
      assert.equal(err.kind, kind, err.message);
      assert.ok(err.message.startsWith('plugin greet revision r3: '), err.message);
      assert.ok(err.message.includes(words), err.message);
      return true;
    });
    assert.equal(host.serving('greet').revision, 'r2');
    assert.equal(await host.call('greet', 'd'), 'v2:d');
  }
  await assert.rejects(host.load({ plugin: 'greet', revision: 'r4', digest: sha256Digest(v1), source: v2 }),
    /digest mismatch: expected sha256:[0-9a-f]{64}, got sha256:/);

  const cfg = Buffer.from('let c; export function configure(x) { c = x; } export function handle() { return c.greeting; }');
  await host.load({ plugin: 'cfg', revision: 'c1', digest: sha256Digest(cfg), config: '{"greeting":"hi"}', source: cfg });
  assert.equal(await host.call('cfg', ''), 'hi');
  assert.deepEqual(host.plugins(), ['cfg', 'greet']);
  assert.equal(await host.unload('greet'), true);
  assert.equal(await host.unload('greet'), false);
  await assert.rejects(host.call('greet', 'x'), (err) => err instanceof CallError && err.kind === 'not_loaded');
  await host.close();
  assert.deepEqual(events.slice(0, 3), ['after_load r1 previous=', 'after_load r2 previous=r1', 'load_failed r3 self_check']);
});
