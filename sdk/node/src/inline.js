// Instances on the app's event loop (`calls: 'inline'`, the default): a call runs the guest
// right there, like any synchronous function, with no thread to wake. The deadline is kept
// from inside the guest (guest.js: the instrumented module looks at the clock every few
// thousand steps), so a plugin that loops forever still ends at callTimeoutMs, with the
// event loop blocked until then, as by any synchronous code that runs long. Calls of one
// host never run in parallel here; `calls: 'threads'` runs them in worker threads instead
// (worker-pool.js), at the cost of two thread wake-ups per call.
//
// InlineThread and InlinePool stand in for WorkerThread and WorkerPool: the same requests
// and answers ({ok: true, value} or {ok: false, failure, step}), so Instance and Revision
// drive either.

import { Guest, StepFailure } from './guest.js';
import { WorkerThread } from './worker-pool.js';

const OK_NULL = Object.freeze({ ok: true, value: null });
const BROKEN = Object.freeze({
  ok: false,
  failure: { type: 'fault', fault: { type: 'other', message: 'not run: an earlier request of its chain failed' } },
  step: 0,
  broken: true,
});

/** A copy out of guest memory (the view is reused by the next call). */
const copy = (view) => (view === null ? null : view.slice());

const OPS = {
  handle: (g, msg) => ({ ok: true, value: copy(g.handle(msg.input)) }),
  save_state: (g) => ({ ok: true, value: copy(g.saveState()) }),
  restore_state: (g, msg) => {
    g.restoreState(msg.state);
    return OK_NULL;
  },
  start: (g, msg, timeoutMs) => {
    g.start(msg.module, msg.config, msg.selfCheck, timeoutMs);
    return OK_NULL;
  },
};

/** Where one instance lives when calls run inline: no thread, just its Guest. */
export class InlineThread {
  #guest;
  /** Never: an inline instance cannot be lost mid-call; a failed one is discarded. */
  dead = false;

  constructor(limits) {
    this.#guest = new Guest(limits);
  }

  /**
   * Runs one request now, synchronously; `msg` as WorkerThread.request takes it. Each step
   * of `start` has `timeoutMs` of its own. Returns {ok: true, value} or {ok: false, failure,
   * step}; never throws for what the guest does.
   */
  run(msg, timeoutMs) {
    const op = OPS[msg.op];
    if (op === undefined) throw new TypeError(`unknown op ${msg.op}`);
    const g = this.#guest;
    g.deadline = performance.now() + timeoutMs;
    try {
      return op(g, msg, timeoutMs);
    } catch (err) {
      if (err instanceof StepFailure) return { ok: false, failure: g.failureOf(err.cause), step: err.step };
      return { ok: false, failure: g.failureOf(err), step: 0 };
    }
  }

  /** run() as a promise, for code that drives either kind of thread. */
  request(msg, timeoutMs) {
    return Promise.resolve(this.run(msg, timeoutMs));
  }

  /** Drops the instance it holds (its memory becomes garbage). */
  drop() {
    this.#guest.drop();
  }
}

/**
 * Runs the entries one after the other, as WorkerThread.chain does on threads: a request
 * after one that failed is not run, and a `pipe` entry hands its output (save_state) or its
 * input (restore_state) on to the next as that one's state.
 * @returns {object[]} one result per entry
 */
function runChain(entries) {
  const out = [];
  let failed = false;
  /** What the entry before, if it pipes, hands on to this one. */
  let handed = null;
  for (const { thread, msg, timeoutMs, pipe = false } of entries) {
    if (failed) {
      out.push(BROKEN);
      continue;
    }
    const m = handed !== null && msg.op === 'restore_state' ? { ...msg, state: handed } : msg;
    const r = thread.run(m, timeoutMs);
    out.push(r);
    failed = !r.ok;
    handed = !pipe ? null : msg.op === 'save_state' ? (r.value ?? new Uint8Array(0)) : m.state;
  }
  return out;
}

/**
 * A chain of requests on threads of one kind: inline ones have run when it returns (the
 * results), worker threads' are rung (a promise of them).
 * @returns {object[] | Promise<object[]>}
 */
export function chain(entries) {
  if (entries.length > 0 && entries[0].thread instanceof InlineThread) return runChain(entries);
  return WorkerThread.chain(entries);
}

/** The pool of a host whose calls run inline: a lease is a fresh InlineThread, nothing to warm. */
export class InlinePool {
  #limits;
  #closed = false;
  /** Threads started (none, ever: for the same figures as WorkerPool). */
  started = 0;
  idle = 0;

  /** @param {{maxMemoryBytes: number}} limits the host's */
  constructor(limits) {
    this.#limits = { limitBytes: limits.maxMemoryBytes, limitPages: Math.floor(limits.maxMemoryBytes / 65536) };
  }

  async lease() {
    if (this.#closed) throw new Error('host is closed');
    return new InlineThread(this.#limits);
  }

  giveBack(thread) {
    thread.drop();
  }

  reserve() {}

  close() {
    this.#closed = true;
  }
}
