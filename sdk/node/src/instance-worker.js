// A pooled worker thread (worker-pool.js): it holds at most one plugin instance at a time,
// and serves one revision after another (`reset` drops the instance it held), or compiles a
// module for a load. The main thread times every request and terminates this thread when a
// request outlives its deadline: that is what bounds a plugin that loops forever (V8 has no
// epoch interruption that an embedder in JavaScript can use, but Worker.terminate() stops a
// thread in the middle of guest code).
//
// Requests (one at a time): {op, timeoutMs, ...}; answers {ok: true, value} or
// {ok: false, failure} with a GuestFailure (errors.js). `reset` has no answer. `start` runs
// several steps in one request, each under a deadline of its own: as step i begins it writes
// (i, now) into the shared `steps` array (no message), where the main thread's deadline timer
// looks before it terminates the thread; a failure names its step.

import { parentPort, workerData } from 'node:worker_threads';

import * as abi from './abi.js';
import { checkedCompile } from './checked-compile.js';
import { GROW_GLOBAL } from './wasm-binary.js';
import { ExitSignal, TimeoutSignal, WASI_MODULE, sandboxedWasi } from './wasi.js';

const { limitBytes, limitPages } = workerData;
/** [index of the step of `start` running, process.hrtime when it began], read by the main thread. */
const steps = new BigInt64Array(workerData.steps);
let exports = null;
let memory;
let deadline = 0;

class BadRange extends Error {
  constructor(ptr, len) {
    super('bad range');
    this.ptr = ptr;
    this.len = len;
  }
}

function fault(err) {
  if (err instanceof BadRange) return { type: 'bad_range', ptr: err.ptr, len: err.len };
  if (err instanceof TimeoutSignal) return { type: 'fault', fault: { type: 'timeout' } };
  if (err instanceof ExitSignal) return { type: 'fault', fault: { type: 'other', message: err.message } };
  const asked = exports?.[GROW_GLOBAL]?.value;
  if (typeof asked === 'bigint' && asked > BigInt(limitPages)) {
    return { type: 'fault', fault: { type: 'memory_limit', requested: Number(asked) * 65536, limit: limitBytes } };
  }
  if (err instanceof WebAssembly.RuntimeError) return { type: 'fault', fault: { type: 'trap', message: err.message } };
  if (err instanceof RangeError && /call stack/i.test(err.message)) {
    return { type: 'fault', fault: { type: 'trap', message: 'call stack exhausted' } };
  }
  return { type: 'fault', fault: { type: 'other', message: String(err?.message ?? err) } };
}

function write(bytes) {
  const len = bytes.length;
  const ptr = exports[abi.ALLOC](len) >>> 0;
  const range = abi.checkedRange(ptr, len, memory.buffer.byteLength);
  if (!range) throw new BadRange(ptr, len);
  new Uint8Array(memory.buffer, ptr, len).set(bytes);
  return [ptr, len];
}

function read(packed) {
  const [ptr, len] = abi.unpack(packed);
  if (!abi.checkedRange(ptr, len, memory.buffer.byteLength)) throw new BadRange(ptr, len);
  return new Uint8Array(memory.buffer, ptr, len).slice();
}

function status(code) {
  if (code !== 0) {
    const err = new Error('status');
    err.status = code;
    throw err;
  }
}

/** What an op returns when it sends no answer. */
const SILENT = Symbol('silent');

/** The steps of `start`: a fresh instance made ready, and self-checked when loading. */
const START = ['instantiate', 'initialize', 'configure'];
const START_CHECKED = [...START, 'self_check'];

/** A failure of step `step` of a multi-step request. */
class StepFailure {
  constructor(step, cause) {
    this.step = step;
    this.cause = cause;
  }
}

const ops = {
  // One request, one wake-up of this thread, instead of one per step.
  start(msg) {
    ops.reset();
    const names = msg.selfCheck ? START_CHECKED : START;
    for (let i = 0; i < names.length; i++) {
      if (i > 0) {
        Atomics.store(steps, 1, process.hrtime.bigint());
        Atomics.store(steps, 0, BigInt(i));
        deadline = performance.now() + msg.timeoutMs;
      }
      try {
        ops[names[i]](msg);
      } catch (err) {
        throw new StepFailure(i, err);
      }
    }
  },
  compile({ bytes }) {
    ops.reset();
    return checkedCompile(new Uint8Array(bytes), limitBytes);
  },
  reset() {
    // The instance (and its memory) becomes garbage; the next revision instantiates afresh.
    exports = null;
    memory = undefined;
    return SILENT;
  },
  instantiate({ module }) {
    const imports = {};
    // Built only for a module that imports WASI (a third of a small module's instantiation).
    for (const imp of WebAssembly.Module.imports(module)) {
      if (imp.module === WASI_MODULE) imports[WASI_MODULE] ??= sandboxedWasi(() => memory, () => deadline);
    }
    const instance = new WebAssembly.Instance(module, imports);
    exports = instance.exports;
    memory = exports[abi.MEMORY];
  },
  initialize() {
    if (typeof exports[abi.INITIALIZE] === 'function') exports[abi.INITIALIZE]();
  },
  configure({ config }) {
    if (typeof exports[abi.CONFIGURE] !== 'function') return;
    const [ptr, len] = write(config);
    status(exports[abi.CONFIGURE](ptr, len));
  },
  self_check() {
    if (typeof exports[abi.SELF_CHECK] === 'function') status(exports[abi.SELF_CHECK]());
  },
  save_state() {
    if (typeof exports[abi.SAVE_STATE] !== 'function') return null;
    return read(exports[abi.SAVE_STATE]());
  },
  restore_state({ state }) {
    if (typeof exports[abi.RESTORE_STATE] !== 'function') return;
    const [ptr, len] = write(state);
    status(exports[abi.RESTORE_STATE](ptr, len));
  },
  handle({ input }) {
    const [ptr, len] = write(input);
    return read(exports[abi.HANDLE](ptr, len));
  },
};

function answer(value) {
  if (value === SILENT) return;
  const transfer = value instanceof Uint8Array ? [value.buffer] : [];
  parentPort.postMessage({ ok: true, value }, transfer);
}

function failureOf(err) {
  return err?.status !== undefined && err.message === 'status' ? { type: 'status', code: err.status } : fault(err);
}

function fail(err) {
  if (err instanceof StepFailure) parentPort.postMessage({ ok: false, failure: failureOf(err.cause), step: err.step });
  else parentPort.postMessage({ ok: false, failure: failureOf(err) });
}

parentPort.on('message', (msg) => {
  deadline = performance.now() + msg.timeoutMs;
  try {
    const value = ops[msg.op](msg);
    // Only `compile` is asynchronous; guest calls answer without a trip through a promise.
    if (value instanceof Promise) value.then(answer, fail);
    else answer(value);
  } catch (err) {
    fail(err);
  }
});
parentPort.postMessage({ ready: true });
