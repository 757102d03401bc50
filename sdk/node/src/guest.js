// One plugin instance and the guest calls on it, wherever it runs: on the app's event loop
// (inline.js, the default) or in a pooled worker thread (instance-worker.js). Every call of
// guest code runs under `deadline` (performance.now() ms): the module is instrumented to call
// the host's `tick` every few thousand function entries and loop iterations
// (wasm-binary.js), and `tick` throws past the deadline, which unwinds the guest wherever it
// is; a WASI sleep ends at the deadline too (wasi.js). Failures become the GuestFailure
// values of errors.js, with the words of hotload-host.

import * as abi from './abi.js';
import { GROW_GLOBAL, TICK_MODULE, TICK_NAME } from './wasm-binary.js';
import { ExitSignal, TimeoutSignal, WASI_MODULE, sandboxedWasi } from './wasi.js';

/**
 * Function entries and loop iterations between two looks at the clock. A look is a call out
 * of Wasm and a clock read (about 0.1 µs); 10,000 guest steps take 10-100 µs, so a deadline
 * is overrun by at most that, and the looks cost the guest about a thousandth.
 */
export const TICK_EVERY = 10_000;

/** An answer (or a pointer the guest handed out) outside its linear memory. */
export class BadRange extends Error {
  constructor(ptr, len) {
    super('bad range');
    this.ptr = ptr;
    this.len = len;
  }
}

/** A failure of step `step` of start (instantiate, initialize, configure, self_check). */
export class StepFailure {
  constructor(step, cause) {
    this.step = step;
    this.cause = cause;
  }
}

/** The steps of start: a fresh instance made ready, and self-checked when loading. */
const START = ['instantiate', 'initialize', 'configure'];
const START_CHECKED = [...START, 'self_check'];

function status(code) {
  if (code !== 0) {
    const err = new Error('status');
    err.status = code;
    throw err;
  }
}

export class Guest {
  /** The instance's exports; null when it holds none. */
  exports = null;
  memory = undefined;
  /** When the guest call in progress must end (performance.now() ms). */
  deadline = 0;
  /**
   * What a host function threw into the guest (past the deadline, proc_exit, a bad pointer),
   * once per call. Wasm can catch a host's exception (`catch_all`), so a guest call that
   * returns normally after one still fails with it: as in hotload-host, where a host error
   * is a trap no guest code can catch.
   */
  #thrown = null;
  #limitBytes;
  #limitPages;
  #imports;

  /** @param {{limitBytes: number, limitPages: number}} limits */
  constructor({ limitBytes, limitPages }) {
    this.#limitBytes = limitBytes;
    this.#limitPages = limitPages;
    const tick = () => {
      if (performance.now() >= this.deadline) throw this.#fatal(new TimeoutSignal('past the call deadline'));
      return TICK_EVERY;
    };
    this.#imports = { [TICK_MODULE]: { [TICK_NAME]: tick } };
  }

  /** Notes `err`, thrown into the guest by a host function; returns it, to be thrown. */
  #fatal(err) {
    this.#thrown ??= err;
    return err;
  }

  /** `fns` with every exception they throw noted (see #thrown). */
  #guarded(fns) {
    const out = {};
    for (const [name, f] of Object.entries(fns)) {
      out[name] = (...args) => {
        try {
          return f(...args);
        } catch (err) {
          throw this.#fatal(err);
        }
      };
    }
    return out;
  }

  /** `value`, the result of a guest call, unless a host function threw into it meanwhile. */
  #returned(value) {
    const err = this.#thrown;
    if (err !== null) {
      this.#thrown = null;
      throw err;
    }
    return value;
  }

  /** The instance (and its memory) becomes garbage. */
  drop() {
    this.exports = null;
    this.memory = undefined;
    this.#thrown = null;
  }

  /**
   * Makes a fresh instance of `module` ready: instantiate (start function), `_initialize`,
   * `configure` and, when `selfCheck`, `self_check`, each under a deadline of `timeoutMs` of
   * its own, as hotload-host arms one per guest call. Throws a StepFailure. `onStep(i)` is
   * told as step i > 0 begins.
   */
  start(module, config, selfCheck, timeoutMs, onStep) {
    this.drop();
    const names = selfCheck ? START_CHECKED : START;
    for (let i = 0; i < names.length; i++) {
      if (i > 0) onStep?.(i);
      this.deadline = performance.now() + timeoutMs;
      try {
        this.#step(names[i], module, config);
      } catch (err) {
        throw new StepFailure(i, err);
      }
    }
  }

  #step(name, module, config) {
    const ex = this.exports;
    switch (name) {
      case 'instantiate': {
        const imports = { ...this.#imports };
        // Built only for a module that imports WASI (a third of a small module's instantiation).
        for (const imp of WebAssembly.Module.imports(module)) {
          if (imp.module === WASI_MODULE) {
            imports[WASI_MODULE] ??= this.#guarded(sandboxedWasi(() => this.memory, () => this.deadline));
          }
        }
        const instance = this.#returned(new WebAssembly.Instance(module, imports));
        this.exports = instance.exports;
        this.memory = this.exports[abi.MEMORY];
        return;
      }
      case 'initialize':
        if (typeof ex[abi.INITIALIZE] === 'function') this.#returned(this.exports[abi.INITIALIZE]());
        return;
      case 'configure': {
        if (typeof ex[abi.CONFIGURE] !== 'function') return;
        const [ptr, len] = this.#write(config);
        status(this.#returned(this.exports[abi.CONFIGURE](ptr, len)));
        return;
      }
      default:
        if (typeof ex[abi.SELF_CHECK] === 'function') status(this.#returned(this.exports[abi.SELF_CHECK]()));
    }
  }

  /** `handle(input)`: a view of the answer in guest memory, valid until the next call. */
  handle(input) {
    const [ptr, len] = this.#write(input);
    return this.#read(this.#returned(this.exports[abi.HANDLE](ptr, len)));
  }

  /** `save_state()`: a view of the snapshot in guest memory, or null without the export. */
  saveState() {
    if (typeof this.exports[abi.SAVE_STATE] !== 'function') return null;
    return this.#read(this.#returned(this.exports[abi.SAVE_STATE]()));
  }

  /** `restore_state(state)`; nothing without the export. */
  restoreState(state) {
    if (typeof this.exports[abi.RESTORE_STATE] !== 'function') return;
    const [ptr, len] = this.#write(state);
    status(this.#returned(this.exports[abi.RESTORE_STATE](ptr, len)));
  }

  /**
   * The failure an exception out of a guest call stands for: what a host function threw into
   * the guest first, if one did (the guest may have caught it and trapped after), else `err`.
   */
  failureOf(thrown) {
    const err = this.#thrown ?? thrown;
    this.#thrown = null;
    if (err?.status !== undefined && err.message === 'status') return { type: 'status', code: err.status };
    if (err instanceof BadRange) return { type: 'bad_range', ptr: err.ptr, len: err.len };
    if (err instanceof TimeoutSignal) return { type: 'fault', fault: { type: 'timeout' } };
    if (err instanceof ExitSignal) return { type: 'fault', fault: { type: 'other', message: err.message } };
    const asked = this.exports?.[GROW_GLOBAL]?.value;
    if (typeof asked === 'bigint' && asked > BigInt(this.#limitPages)) {
      return { type: 'fault', fault: { type: 'memory_limit', requested: Number(asked) * 65536, limit: this.#limitBytes } };
    }
    if (err instanceof WebAssembly.RuntimeError) return { type: 'fault', fault: { type: 'trap', message: err.message } };
    if (err instanceof RangeError && /call stack/i.test(err.message)) {
      return { type: 'fault', fault: { type: 'trap', message: 'call stack exhausted' } };
    }
    return { type: 'fault', fault: { type: 'other', message: String(err?.message ?? err) } };
  }

  #write(bytes) {
    const len = bytes.length;
    const ptr = this.#returned(this.exports[abi.ALLOC](len)) >>> 0;
    const range = abi.checkedRange(ptr, len, this.memory.buffer.byteLength);
    if (!range) throw new BadRange(ptr, len);
    new Uint8Array(this.memory.buffer, ptr, len).set(bytes);
    return [ptr, len];
  }

  #read(packed) {
    const [ptr, len] = abi.unpack(packed);
    if (!abi.checkedRange(ptr, len, this.memory.buffer.byteLength)) throw new BadRange(ptr, len);
    return new Uint8Array(this.memory.buffer, ptr, len);
  }
}
