// instrument() (wasm-binary.js): the memory.grow rewrite plus a deadline check at every function
// entry and loop header. Every test runs the rewritten module: validation alone would not show
// a call reaching the wrong function or a loop that is never interrupted.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';

import { unpack } from '../src/abi.js';
import {
  BUDGET_GLOBAL, GROW_GLOBAL, TICK_MODULE, TICK_NAME, WasmFormatError, instrument, parseModule,
} from '../src/wasm-binary.js';

const PLUGINS = new URL('../../conformance/plugins/', import.meta.url);
const plugin = (file) => readFileSync(new URL(file, PLUGINS));
const OPTS = { limitPages: 256, tickEvery: 1000 };

/** Parses and instruments; the output is returned with its instance-building helper. */
function rewrite(bytes, opts = OPTS) {
  return instrument(bytes, parseModule(bytes), opts);
}

/** A tick import that counts its calls, returns `budget`, and throws on call number `throwAt`. */
class Deadline extends Error {}
function ticker({ budget = 1000, throwAt = Infinity } = {}) {
  const t = { calls: 0 };
  t.imports = {
    [TICK_MODULE]: {
      [TICK_NAME]: () => {
        t.calls++;
        if (t.calls >= throwAt) throw new Deadline(`deadline after ${t.calls} ticks`);
        return budget;
      },
    },
  };
  return t;
}

function instantiate(bytes, imports) {
  return new WebAssembly.Instance(new WebAssembly.Module(bytes), imports);
}

/** The plugin ABI, as the host drives it: alloc, copy the input in, handle, read the packed range. */
function callHandle(instance, input) {
  const { memory, alloc, handle } = instance.exports;
  const data = Buffer.from(input);
  const ptr = alloc(data.length);
  new Uint8Array(memory.buffer, ptr, data.length).set(data);
  const [p, l] = unpack(handle(ptr, data.length));
  return Buffer.from(memory.buffer, p, l).toString('latin1');
}

// ---- A tiny assembler for the hand-written modules --------------------------------------------
const u32 = (n) => {
  const out = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
};
const str = (s) => [...u32(Buffer.byteLength(s)), ...Buffer.from(s)];
const vec = (items) => [...u32(items.length), ...items.flat()];
const section = (id, content) => [id, ...u32(content.length), ...content];
const wasm = (...sections) => Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...sections.flat()]);
const body = (code, locals = []) => {
  const b = [...vec(locals), ...code, 0x0b];
  return [...u32(b.length), ...b];
};
const I32 = 0x7f;
const FUNCREF = 0x70;
const END = 0x0b;

// Types: 0 ()->i32, 1 (i32)->i32, 2 ()->(), 3 ()->funcref.
const TYPES = section(1, vec([[0x60, 0, 1, I32], [0x60, 1, I32, 1, I32], [0x60, 0, 0], [0x60, 0, 1, FUNCREF]]));

/**
 * Function 0 is the import env.add100; the defined ones are 1..10. Every way a function index
 * can be written occurs: call (to defined and imported), return_call, ref.func in code, in a
 * global initialiser and in element expressions, vec(funcidx) elements, exports, start, and the
 * name section (function names and local names).
 */
function indexModule() {
  const funcs = [
    /* 1 one */ [0, body([0x41, 11])],
    /* 2 two */ [0, body([0x41, 22])],
    /* 3 sum */ [0, body([0x10, 1, 0x10, 2, 0x6a, 0x10, 0])], // add100(one() + two()) = 133
    /* 4 start */ [2, body([0x10, 3, 0x24, 0])], // $started = sum()
    /* 5 tail */ [0, body([0x12, 2])], // return_call two
    /* 6 getref */ [3, body([0xd2, 1])], // ref.func one
    /* 7 initPassive */ [2, body([
      0x41, 7, 0x41, 0, 0x41, 1, 0xfc, 12, 1, 0, // table[7] = elem 1 (flag 1: [sum])
      0x41, 8, 0x41, 0, 0x41, 1, 0xfc, 12, 5, 0, // table[8] = elem 5 (flag 5: [ref.func tail])
    ])],
    /* 8 callIndirect */ [1, body([0x20, 0, 0x11, 0, 0])], // table[i]() as ()->i32
    /* 9 boom */ [2, body([0x00])],
    /* 10 countdown */ [1, body([0x03, 0x40, 0x20, 0, 0x41, 1, 0x6b, 0x22, 0, 0x0d, 0, END, 0x20, 0])],
  ];
  const refFunc = (i) => [0xd2, ...u32(i), END];
  const elements = [
    [0, 0x41, 0, END, ...vec([[1], [2], [3]])], // table[0..2] = one, two, sum
    [1, 0x00, ...vec([[3]])], // passive: [sum]
    [2, 0, 0x41, 3, END, 0x00, ...vec([[5]])], // table 0, table[3] = tail
    [3, 0x00, ...vec([[6]])], // declarative
    [4, 0x41, 4, END, ...vec([refFunc(2), [0xd0, FUNCREF, END]])], // table[4] = two, [5] = null
    [5, FUNCREF, ...vec([refFunc(5)])], // passive: [tail]
    [6, 0, 0x41, 6, END, FUNCREF, ...vec([refFunc(10)])], // table 0, table[6] = countdown
    [7, FUNCREF, ...vec([refFunc(1)])], // declarative
  ];
  const exports = [
    ['started', 3, 0], ['fref', 3, 1], ['table', 1, 0], ['one', 0, 1], ['sum', 0, 3], ['tail', 0, 5],
    ['getref', 0, 6], ['initPassive', 0, 7], ['callIndirect', 0, 8], ['boom', 0, 9], ['countdown', 0, 10],
  ];
  const names = [
    ...str('name'),
    ...section(1, vec([[...u32(3), ...str('sum')], [...u32(9), ...str('boom')]])),
    ...section(2, vec([[...u32(10), ...vec([[...u32(0), ...str('n')]])]])),
  ];
  return wasm(
    TYPES,
    section(2, vec([[...str('env'), ...str('add100'), 0x00, 1]])),
    section(3, vec(funcs.map(([t]) => [t]))),
    section(4, vec([[FUNCREF, 0x00, 10]])),
    section(6, vec([[I32, 1, 0x41, 0, END], [FUNCREF, 0, ...refFunc(2)]])),
    section(7, vec(exports.map(([n, k, i]) => [...str(n), k, ...u32(i)]))),
    section(8, u32(4)),
    section(9, vec(elements)),
    section(10, vec(funcs.map(([, b]) => b))),
    section(0, names),
  );
}

function checkIndexModule(instance) {
  const x = instance.exports;
  assert.equal(x.started.value, 133, 'start ran sum()');
  assert.equal(x.sum(), 133, 'call to defined functions and to the import');
  assert.equal(x.tail(), 22, 'return_call');
  assert.equal(x.getref()(), 11, 'ref.func in code');
  assert.equal(x.fref.value(), 22, 'ref.func in a global initialiser');
  const t = x.table;
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => t.get(i)()), [11, 22, 133, 22, 22], 'active element segments');
  assert.equal(t.get(5), null);
  assert.equal(t.get(6)(3), 0, 'flag 6 segment: countdown');
  x.initPassive();
  assert.deepEqual([t.get(7)(), t.get(8)()], [133, 22], 'passive segments (flags 1 and 5) through table.init');
  assert.deepEqual([0, 1, 2, 3, 4, 7, 8].map((i) => x.callIndirect(i)), [11, 22, 133, 22, 22, 133, 22], 'call_indirect');
  assert.throws(() => x.boom(), (e) => e instanceof WebAssembly.RuntimeError && /at boom \(/.test(e.stack),
    'the name section still names the function that traps');
}

/** The function names subsection of a module's name section: index → name. */
function functionNames(module) {
  const [section] = WebAssembly.Module.customSections(module, 'name');
  const b = new Uint8Array(section);
  let pos = 0;
  const leb = () => {
    let v = 0;
    for (let shift = 0; ; shift += 7) {
      const x = b[pos++];
      v += (x & 0x7f) * 2 ** shift;
      if (!(x & 0x80)) return v;
    }
  };
  const names = new Map();
  while (pos < b.length) {
    const id = b[pos++];
    const size = leb();
    const end = pos + size;
    if (id === 1) {
      for (let n = leb(); n > 0; n--) {
        const i = leb();
        const len = leb();
        names.set(i, Buffer.from(b.subarray(pos, pos + len)).toString());
        pos += len;
      }
    }
    pos = end;
  }
  return names;
}

// ---- Tests ------------------------------------------------------------------------------------

test('every conformance plugin the parser accepts still validates, imports tick last and keeps its exports', () => {
  const files = readdirSync(PLUGINS).filter((f) => f.endsWith('.wasm'));
  assert.ok(files.length >= 20, `found ${files.length} plugins`);
  let rewritten = 0;
  for (const file of files) {
    const bytes = plugin(file);
    let info;
    try {
      info = parseModule(bytes);
    } catch (e) {
      assert.ok(e instanceof WasmFormatError, `${file}: ${e}`);
      continue;
    }
    const out = instrument(bytes, info, OPTS);
    assert.ok(WebAssembly.validate(out), `${file} stays valid`);
    const before = new WebAssembly.Module(bytes);
    const after = new WebAssembly.Module(out);
    assert.deepEqual(WebAssembly.Module.imports(after),
      [...WebAssembly.Module.imports(before), { module: TICK_MODULE, name: TICK_NAME, kind: 'function' }], `${file} imports`);
    assert.deepEqual(WebAssembly.Module.exports(after),
      [...WebAssembly.Module.exports(before), { name: GROW_GLOBAL, kind: 'global' }, { name: BUDGET_GLOBAL, kind: 'global' }],
      `${file} exports`);
    const strip = (es) => es.map(({ name, kind, signature }) => ({ name, kind, signature }));
    assert.deepEqual(strip(parseModule(out).exports.slice(0, info.exports.length)), strip(info.exports), `${file}: signatures kept`);
    rewritten++;
  }
  assert.ok(rewritten >= files.length - 1, `${rewritten} of ${files.length} rewritten`);
});

test('tagger-v1 answers the same after the rewrite, and its state still counts', () => {
  const bytes = plugin('tagger-v1.wasm');
  const original = instantiate(bytes, {});
  const t = ticker({ budget: 2 });
  const instrumented = instantiate(rewrite(bytes, { limitPages: 256, tickEvery: 2 }), t.imports);
  for (const input of ['x', 'hello, world', 'é'.repeat(300), '']) {
    assert.equal(callHandle(instrumented, input), callHandle(original, input), JSON.stringify(input).slice(0, 20));
  }
  assert.equal(callHandle(instrumented, ''), '\x03\x00\x00\x00', 'three non-empty requests counted');
  // 4 alloc + 4 handle + the 5th handle's alloc and handle: 10 function entries, no loops; budget 2 → 5 ticks.
  assert.equal(t.calls, 5);
});

/**
 * Runs `handle` of the instrumented `file` in a worker, with a tick that throws on its 5th call,
 * so that a loop the rewrite failed to interrupt fails the test after `ms` instead of hanging it.
 */
function runLoopInWorker(file, ms) {
  const code = `
    import { parentPort, workerData } from 'node:worker_threads';
    import { readFileSync } from 'node:fs';
    const m = await import(workerData.binary);
    const bytes = readFileSync(new URL(workerData.file, workerData.plugins));
    const out = m.instrument(bytes, m.parseModule(bytes), { limitPages: 256, tickEvery: 1000 });
    let calls = 0;
    class Deadline extends Error {}
    const tick = () => { if (++calls >= 5) throw new Deadline('deadline'); return 1000; };
    const instance = new WebAssembly.Instance(new WebAssembly.Module(out), { [m.TICK_MODULE]: { [m.TICK_NAME]: tick } });
    const budget0 = instance.exports[m.BUDGET_GLOBAL].value;
    let threw = null;
    try { instance.exports.handle(instance.exports.alloc(1), 1); } catch (e) { threw = e instanceof Deadline ? 'Deadline' : String(e); }
    const first = { calls, budget: instance.exports[m.BUDGET_GLOBAL].value };
    let again = null;
    try { instance.exports.handle(0, 1); } catch (e) { again = e instanceof Deadline ? 'Deadline' : String(e); }
    parentPort.postMessage({ budget0, threw, first, again, calls });
  `;
  const worker = new Worker(`import(${JSON.stringify(`data:text/javascript,${encodeURIComponent(code)}`)})`, {
    eval: true,
    workerData: { file, plugins: PLUGINS.href, binary: new URL('../src/wasm-binary.js', import.meta.url).href },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new Error(`${file}: handle still running after ${ms} ms: the loop was not interrupted`));
    }, ms);
    worker.once('message', (msg) => {
      clearTimeout(timer);
      worker.terminate();
      resolve(msg);
    });
    worker.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

for (const file of ['handle-loop.wasm', 'handle-loop-br-if.wasm', 'handle-loop-br-table.wasm']) {
  test(`${file}: the endless loop is interrupted by the tick that throws`, async () => {
    const r = await runLoopInWorker(file, 10_000);
    assert.equal(r.budget0, 1000, 'budget starts at tickEvery');
    assert.equal(r.threw, 'Deadline', 'handle ends with the tick\'s exception');
    // 1 (alloc) + 1 (handle entry) + the loop headers: 5 ticks of 1000 each, the 5th at check 5000, throwing
    // before it refills the budget.
    assert.deepEqual(r.first, { calls: 5, budget: 0 });
    // The instance is still usable after the unwinding: the next check ticks again.
    assert.equal(r.again, 'Deadline');
    assert.equal(r.calls, 6);
  });
}

test('function indices are remapped everywhere: start, calls, return_call, ref.func, all element forms, names', () => {
  const bytes = indexModule();
  assert.ok(WebAssembly.validate(bytes), 'the hand-assembled module is valid');
  const env = { env: { add100: (x) => x + 100 } };
  checkIndexModule(instantiate(bytes, env)); // the test's own expectations hold before the rewrite
  const out = rewrite(bytes, { limitPages: 1, tickEvery: 1 });
  const t = ticker({ budget: 1 });
  checkIndexModule(instantiate(out, { ...env, ...t.imports }));
  assert.ok(t.calls > 0);
  // instrument() parses for itself when not given the info.
  assert.deepEqual(instrument(bytes, undefined, { limitPages: 1, tickEvery: 1 }), out);
});

test('the budget counts down once per function entry and once per loopChunk loop headers, and ticks at zero', () => {
  const env = { env: { add100: (x) => x + 100 } };
  const t = ticker({ budget: 3 });
  const instance = instantiate(rewrite(indexModule(), { limitPages: 1, tickEvery: 3, loopChunk: 1 }), { ...env, ...t.imports });
  const budget = instance.exports[BUDGET_GLOBAL];
  // Instantiation ran start → sum → one, two: 4 checks from 3 → one tick, budget 2.
  assert.deepEqual([t.calls, budget.value], [1, 2]);
  budget.value = 3;
  const before = t.calls;
  assert.equal(instance.exports.countdown(10), 0);
  // 1 entry + 10 loop headers = 11 checks from 3: ticks at the 3rd, 6th and 9th, 1 left.
  assert.deepEqual([t.calls - before, budget.value], [3, 1]);
  // Loop headers counted in chunks of 4 (in a local): entry, header 4, header 8 = 3 checks
  // from 3, one tick at the third; headers 9 and 10 are not a chunk.
  const c = ticker({ budget: 3 });
  const chunked = instantiate(rewrite(indexModule(), { limitPages: 1, tickEvery: 1000, loopChunk: 4 }), { ...env, ...c.imports });
  const cb = chunked.exports[BUDGET_GLOBAL];
  cb.value = 3;
  assert.equal(chunked.exports.countdown(10), 0);
  assert.deepEqual([c.calls, cb.value], [1, 3]);
  // The counter is the function's own: each call starts a fresh chunk.
  cb.value = 100;
  for (let i = 0; i < 5; i++) chunked.exports.countdown(3);
  assert.equal(cb.value, 95, 'five entries, no chunk of 4 headers within one call');
  // Without checks the budget is never touched: the host stops such a guest by other means.
  const u = ticker({ budget: 3 });
  const unchecked = instantiate(rewrite(indexModule(), { limitPages: 1, tickEvery: 3, loopChunk: 1, checks: false }), { ...env, ...u.imports });
  assert.equal(unchecked.exports.countdown(10), 0);
  assert.deepEqual([u.calls, unchecked.exports[BUDGET_GLOBAL].value], [0, 3]);
  // A tick that returns 0 is asked again at the next check rather than after 2^32 of them.
  const zero = ticker({ budget: 0 });
  const z = instantiate(rewrite(indexModule(), { limitPages: 1, tickEvery: 1, loopChunk: 1 }), { ...env, ...zero.imports });
  const n = zero.calls;
  z.exports.countdown(5);
  assert.equal(zero.calls - n, 6);
});

test('a module with no type, import, global or export section gets them, in order', () => {
  const empty = wasm();
  // A custom section first, a type section, no import, global or export section.
  const one = wasm(section(0, str('first')), section(1, vec([[0x60, 0, 0]])), section(3, vec([[0]])),
    section(10, vec([body([0x03, 0x40, END])])));
  for (const bytes of [empty, one]) {
    const out = rewrite(bytes, { limitPages: 1, tickEvery: 1 });
    assert.ok(WebAssembly.validate(out));
    const info = parseModule(out);
    assert.deepEqual(info.sections.map((x) => x.id), bytes === empty ? [1, 2, 6, 7] : [0, 1, 2, 3, 6, 7, 10]);
    assert.deepEqual(info.imports, [{ module: TICK_MODULE, name: TICK_NAME, kind: 'func' }]);
    assert.deepEqual(info.exports.map((e) => e.name), [GROW_GLOBAL, BUDGET_GLOBAL]);
    const x = instantiate(out, ticker().imports).exports;
    assert.equal(x[BUDGET_GLOBAL].value, 1);
    assert.equal(x[GROW_GLOBAL].value, 0n);
  }
  // The same function, exported and called: a tick at its entry and at its loop header.
  const exported = wasm(section(1, vec([[0x60, 0, 0]])), section(3, vec([[0]])),
    section(7, vec([[...str('f'), 0, 0]])), section(10, vec([body([0x03, 0x40, END])])));
  const t = ticker({ budget: 1 });
  instantiate(rewrite(exported, { limitPages: 1, tickEvery: 1, loopChunk: 1 }), t.imports).exports.f();
  assert.equal(t.calls, 2, 'entry and loop header');
});

test('go-upper.wasm (a large Go wasip1 module) validates with the same exports', () => {
  const bytes = plugin('go-upper.wasm');
  const info = parseModule(bytes);
  const out = instrument(bytes, info, { limitPages: 256, tickEvery: 10_000 });
  assert.ok(WebAssembly.validate(out));
  const kinds = (m) => WebAssembly.Module.exports(m).filter((e) => e.name !== GROW_GLOBAL && e.name !== BUDGET_GLOBAL);
  assert.deepEqual(kinds(new WebAssembly.Module(out)), kinds(new WebAssembly.Module(bytes)));
  assert.deepEqual(WebAssembly.Module.imports(new WebAssembly.Module(out)).at(-1), { module: TICK_MODULE, name: TICK_NAME, kind: 'function' });
  // The name section is kept, shifted: every function keeps its name.
  const before = functionNames(new WebAssembly.Module(bytes));
  const after = functionNames(new WebAssembly.Module(out));
  assert.ok(before.size > 1000, `${before.size} names`);
  const shifted = new Map([...before].map(([i, n]) => [i >= info.importedFuncs ? i + 1 : i, n]));
  assert.deepEqual(after, shifted);
  assert.ok(out.length > bytes.length && out.length < bytes.length * 1.2, `${bytes.length} → ${out.length} bytes`);
});

test('handle-grow.wasm: growth past limitPages traps and the asked-for pages are recorded', () => {
  for (const [limitPages, asked, pages] of [[4, 17n, 1], [64, 65n, 49]]) {
    const t = ticker();
    const instance = instantiate(rewrite(plugin('handle-grow.wasm'), { limitPages, tickEvery: 1000 }), t.imports);
    assert.throws(() => callHandle(instance, 'x'), WebAssembly.RuntimeError);
    assert.equal(instance.exports[GROW_GLOBAL].value, asked, `limit ${limitPages}`);
    assert.equal(instance.exports.memory.buffer.byteLength, pages * 65536, 'memory never grew past the limit');
  }
});

/** mulberry32: a fixed-seed generator, so a failure reproduces. */
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Bad bytes give WasmFormatError or an output that is valid whenever the input was. */
function tryRewrite(bytes, label) {
  let out;
  try {
    out = rewrite(bytes);
  } catch (e) {
    assert.ok(e instanceof WasmFormatError, `${label}: ${e?.stack ?? e}`);
    return false;
  }
  if (WebAssembly.validate(bytes)) assert.ok(WebAssembly.validate(out), `${label}: valid input, invalid output`);
  return true;
}

test('truncated, random and mutated modules give WasmFormatError, never another exception', () => {
  const rand = random(20261202);
  let refused = 0;
  for (const file of ['tagger-v1.wasm', 'handle-grow.wasm', 'echo-config.wasm']) {
    const bytes = plugin(file);
    for (let len = 0; len < bytes.length; len++) {
      if (!tryRewrite(bytes.subarray(0, len), `${file} cut at ${len}`)) refused++;
    }
  }
  assert.ok(refused > 500, `${refused} truncations refused`);
  for (let i = 0; i < 300; i++) {
    const junk = Uint8Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256));
    assert.equal(tryRewrite(junk, `random ${i}`), false);
    const headed = Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, ...junk]);
    tryRewrite(headed, `header + random ${i}`);
  }
  for (const file of ['tagger-v1.wasm', 'handle-grow.wasm', 'handle-loop-br-table.wasm']) {
    const bytes = plugin(file);
    for (let i = 0; i < 1500; i++) {
      const m = Uint8Array.from(bytes);
      for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) m[8 + Math.floor(rand() * (m.length - 8))] = Math.floor(rand() * 256);
      tryRewrite(m, `${file} mutation ${i}`);
    }
  }
});

test('bad options are refused; existing export names are refused', () => {
  const bytes = plugin('tagger-v1.wasm');
  for (const opts of [{ limitPages: 1, tickEvery: 0 }, { limitPages: 1, tickEvery: 2 ** 31 }, { limitPages: -1, tickEvery: 1 },
    { limitPages: 1, tickEvery: 1.5 }, { limitPages: 1 }, { limitPages: 1, tickEvery: 1, loopChunk: 0 }]) {
    assert.throws(() => rewrite(bytes, opts), RangeError, JSON.stringify(opts));
  }
  const twice = rewrite(bytes);
  assert.throws(() => rewrite(twice), WasmFormatError, 'instrumenting twice is refused');
});
