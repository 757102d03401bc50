// Warm worker threads (instance-worker.js, one V8 isolate each), shared by every revision of
// one host. Starting a thread costs tens of milliseconds of CPU (an isolate, a module graph);
// a load borrows threads that are already running instead, and a revision that goes away
// gives its threads back, so swapping v1 → v2 → v1 starts no thread at all once warm.
//
//   lease()        an idle thread, else one started in the background, else a new one
//   giveBack(t)    t waits, idle, for the next revision; past `spare` idle threads it is
//                  stopped instead. The instance it held is dropped by its next `start`, or
//                  (`reset`) once it has waited IDLE_RESET_MS: not at once, so that a swap
//                  does not wake four threads just to clear them
//   a dead thread  (terminated at a deadline, or crashed) is replaced in the background, so
//                  the next checkout finds a warm thread instead of starting one on the
//                  request path
//
// A thread is what the deadline acts on: past a request's deadline it is terminated, which
// stops guest code wherever it is. The memory limit travels in workerData, so a pool serves
// the one host (and limits) that made it.

import { Worker } from 'node:worker_threads';

const WORKER_URL = new URL('./instance-worker.js', import.meta.url);
/** How long a thread may take to start (not guest code: no plugin deadline applies). */
const SPAWN_TIMEOUT_MS = 30_000;
/** How long an idle thread keeps the instance it held (its memory) before dropping it. */
export const IDLE_RESET_MS = 1000;

const TIMEOUT = Object.freeze({ type: 'fault', fault: { type: 'timeout' } });

/** One worker thread, running one request at a time under a deadline. */
export class WorkerThread {
  /** @type {Worker} */
  #worker;
  #pending = null;
  /** Shared with the thread: [step of a `start` running, process.hrtime when it began]. */
  #steps;
  dead = false;
  /** It may hold an instance (a request ran since its last reset). */
  holding = false;
  /** performance.now() when it was last given back. */
  idleSince = 0;

  constructor(worker, steps) {
    this.#worker = worker;
    this.#steps = steps;
    worker.on('message', (msg) => this.#settle(msg));
    worker.on('error', (err) => this.#crash(`worker thread failed: ${err?.message ?? err}`));
    worker.on('exit', (code) => this.#crash(`worker thread exited with code ${code}`));
    // A thread never keeps the process alive (a request in flight does: its deadline timer).
    // After the listeners: adding a 'message' listener refs the worker again.
    worker.unref();
  }

  /** Starts a thread and waits until it listens. @returns {Promise<WorkerThread>} */
  static async spawn(workerData) {
    const steps = new BigInt64Array(new SharedArrayBuffer(16));
    const worker = new Worker(WORKER_URL, { workerData: { ...workerData, steps: steps.buffer } });
    try {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('worker thread did not start in time')), SPAWN_TIMEOUT_MS);
        worker.once('message', () => { clearTimeout(timer); resolve(); });
        worker.once('error', (e) => { clearTimeout(timer); reject(e); });
        worker.once('exit', (c) => { clearTimeout(timer); reject(new Error(`worker thread exited with code ${c}`)); });
      });
    } catch (err) {
      void worker.terminate();
      throw err;
    }
    return new WorkerThread(worker, steps);
  }

  /**
   * Runs one request, `msg` = {op, timeoutMs, ...payload}, built whole by the caller (so this
   * code sees one shape whatever the op, and a load passing through does not deoptimize the
   * call path); past `timeoutMs` the thread is terminated. A request of several steps
   * (`start`) has `timeoutMs` for each, counted from when the step began. Resolves
   * {ok: true, value} or {ok: false, failure, step} (step: the one that failed, 0 for a request
   * of one step); never rejects.
   * @returns {Promise<{ok: true, value: any} | {ok: false, failure: object, step: number}>}
   */
  request(msg, timeoutMs, transfer) {
    if (this.dead) {
      return Promise.resolve({ ok: false, failure: { type: 'fault', fault: { type: 'other', message: 'instance is gone' } }, step: 0 });
    }
    this.holding = true;
    return new Promise((resolve) => {
      const p = { resolve, timer: null, timeoutMs, step: 0 };
      Atomics.store(this.#steps, 0, 0n);
      p.timer = setTimeout(() => this.#deadline(p), timeoutMs);
      this.#pending = p;
      this.#worker.postMessage(msg, transfer);
    });
  }

  /** The deadline of the step `p` was armed for: a later step gets its own, else the end. */
  #deadline(p) {
    if (this.#pending !== p) return;
    const step = Number(Atomics.load(this.#steps, 0));
    if (step > p.step) {
      p.step = step;
      const began = Atomics.load(this.#steps, 1);
      const left = p.timeoutMs - Number(process.hrtime.bigint() - began) / 1e6;
      if (left > 0) {
        p.timer = setTimeout(() => this.#deadline(p), left);
        return;
      }
    }
    this.#pending = null;
    this.kill();
    p.resolve({ ok: false, failure: TIMEOUT, step: p.step });
  }

  /** Drops the instance the thread holds (no answer; messages run in order). */
  reset() {
    if (!this.dead) this.#worker.postMessage({ op: 'reset', timeoutMs: 0 });
    this.holding = false;
  }

  #settle(msg) {
    const p = this.#pending;
    if (!p) return;
    this.#pending = null;
    clearTimeout(p.timer);
    p.resolve(msg);
  }

  #crash(message) {
    this.dead = true;
    const p = this.#pending;
    if (!p) return;
    this.#pending = null;
    clearTimeout(p.timer);
    p.resolve({ ok: false, failure: { type: 'fault', fault: { type: 'other', message } }, step: Number(Atomics.load(this.#steps, 0)) });
  }

  /** Stops the thread (wherever its guest code is); it is never used again. */
  kill() {
    if (!this.dead) {
      this.dead = true;
      void this.#worker.terminate();
    }
  }
}

/** The idle threads of one host, with at most `spare` of them kept waiting. */
export class WorkerPool {
  /** @type {WorkerThread[]} */
  #idle = [];
  /** Threads being started in the background that no lease has claimed yet. */
  #warming = [];
  #closed = false;
  #sweep = null;
  /** Threads this pool has started (a figure for tests and benchmarks). */
  started = 0;

  /**
   * @param {{maxMemoryBytes: number}} limits the host's
   * @param {number} spare most idle threads kept
   */
  constructor(limits, spare) {
    this.workerData = { limitBytes: limits.maxMemoryBytes, limitPages: Math.floor(limits.maxMemoryBytes / 65536) };
    this.spare = spare;
  }

  /** Idle threads now (not counting those still starting). */
  get idle() {
    return this.#idle.length;
  }

  /** A thread for the caller's sole use until giveBack(); rejects if none can be started. */
  async lease() {
    if (this.#closed) throw new Error('host is closed');
    for (let t = this.#idle.pop(); t; t = this.#idle.pop()) {
      if (!t.dead) return t;
    }
    const warming = this.#warming.shift();
    if (warming) {
      const t = await warming.catch(() => null);
      if (t && !t.dead) return t;
    }
    return this.#spawn();
  }

  /** Takes a thread back: idle for the next revision, replaced if it died, stopped if spare. */
  giveBack(thread) {
    if (thread.dead) {
      this.#replace();
    } else if (this.#closed || this.#idle.length + this.#warming.length >= this.spare) {
      thread.kill();
    } else {
      thread.idleSince = performance.now();
      this.#idle.push(thread);
      this.#sweep ??= setTimeout(() => this.#resetLongIdle(), IDLE_RESET_MS).unref();
    }
  }

  /** Drops the instances of threads idle for IDLE_RESET_MS; again later for the others. */
  #resetLongIdle() {
    this.#sweep = null;
    const now = performance.now();
    let next = Infinity;
    for (const t of this.#idle) {
      if (!t.holding) continue;
      const due = t.idleSince + IDLE_RESET_MS;
      if (due <= now) t.reset();
      else next = Math.min(next, due);
    }
    if (next < Infinity) this.#sweep = setTimeout(() => this.#resetLongIdle(), next - now).unref();
  }

  #spawn() {
    this.started++;
    return WorkerThread.spawn(this.workerData);
  }

  /** Starts a thread in the background to stand in for one that died. */
  #replace() {
    if (this.#closed || this.#idle.length + this.#warming.length >= this.spare) return;
    const p = this.#spawn();
    this.#warming.push(p);
    p.then((t) => {
      const i = this.#warming.indexOf(p);
      if (i < 0) return; // a lease claimed it
      this.#warming.splice(i, 1);
      if (this.#closed) t.kill();
      else this.#idle.push(t);
    }, () => {
      const i = this.#warming.indexOf(p);
      if (i >= 0) this.#warming.splice(i, 1);
    });
  }

  /** Stops every idle thread now; threads given back later are stopped too. */
  close() {
    this.#closed = true;
    clearTimeout(this.#sweep);
    for (const t of this.#idle) t.kill();
    this.#idle = [];
  }
}
