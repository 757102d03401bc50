// The main thread's handle on one plugin instance: a worker thread (instance-worker.js) that
// runs one request at a time, each under a deadline. Past the deadline the thread is
// terminated, which stops guest code wherever it is, and the request fails with a timeout;
// the instance is dead and its pool replaces it.

import { Worker } from 'node:worker_threads';

const WORKER_URL = new URL('./instance-worker.js', import.meta.url);
/** How long a thread may take to start (not guest code: no plugin deadline applies). */
const SPAWN_TIMEOUT_MS = 30_000;

const TIMEOUT = Object.freeze({ type: 'fault', fault: { type: 'timeout' } });

/** Why a fresh instance could not be made ready: `phase` is instantiate or configure. */
export class InstanceError extends Error {
  constructor(phase, failure) {
    super(`${phase} failed`);
    this.phase = phase;
    this.failure = failure;
  }
}

export class Instance {
  /** @type {Worker} */
  #worker;
  #pending = null;
  dead = false;

  constructor(worker) {
    this.#worker = worker;
    worker.on('message', (msg) => this.#settle(msg));
    worker.on('error', (err) => this.#crash(`worker thread failed: ${err?.message ?? err}`));
    worker.on('exit', (code) => this.#crash(`worker thread exited with code ${code}`));
  }

  /**
   * Starts a thread and makes the instance ready: instantiate (start function), `_initialize`,
   * `configure`, each under its own deadline as hotload-host arms one per guest call.
   * @returns {Promise<Instance>} or rejects with an InstanceError
   */
  static async start(module, config, limits) {
    const worker = new Worker(WORKER_URL, {
      workerData: { limitBytes: limits.maxMemoryBytes, limitPages: Math.floor(limits.maxMemoryBytes / 65536) },
    });
    worker.unref();
    try {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('worker thread did not start in time')), SPAWN_TIMEOUT_MS);
        worker.once('message', () => { clearTimeout(timer); resolve(); });
        worker.once('error', (e) => { clearTimeout(timer); reject(e); });
        worker.once('exit', (c) => { clearTimeout(timer); reject(new Error(`worker thread exited with code ${c}`)); });
      });
    } catch (err) {
      void worker.terminate();
      throw new InstanceError('instantiate', { type: 'fault', fault: { type: 'other', message: err.message } });
    }
    const inst = new Instance(worker);
    for (const [op, phase, payload] of [
      ['instantiate', 'instantiate', { module }],
      ['initialize', 'instantiate', {}],
      ['configure', 'configure', { config }],
    ]) {
      const r = await inst.request(op, payload, limits.callTimeoutMs);
      if (!r.ok) {
        inst.kill();
        // A start function or `_initialize` fails as a fault of instantiation.
        const f = r.failure;
        throw new InstanceError(phase, phase === 'instantiate' && f.type !== 'fault'
          ? { type: 'fault', fault: { type: 'other', message: `_initialize: returned ${f.type}` } } : f);
      }
    }
    return inst;
  }

  /**
   * Runs one guest call. Resolves {ok: true, value} or {ok: false, failure}; never rejects.
   * @returns {Promise<{ok: true, value: any} | {ok: false, failure: object}>}
   */
  request(op, payload, timeoutMs) {
    if (this.dead) {
      return Promise.resolve({ ok: false, failure: { type: 'fault', fault: { type: 'other', message: 'instance is gone' } } });
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending = null;
        this.kill();
        resolve({ ok: false, failure: TIMEOUT });
      }, timeoutMs);
      this.#pending = { resolve, timer };
      this.#worker.postMessage({ op, timeoutMs, ...payload });
    });
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
    p.resolve({ ok: false, failure: { type: 'fault', fault: { type: 'other', message } } });
  }

  /** Stops the thread (wherever its guest code is); the instance is never used again. */
  kill() {
    if (!this.dead) {
      this.dead = true;
      void this.#worker.terminate();
    }
  }
}
