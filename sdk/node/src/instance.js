// One plugin instance: a revision's module instantiated where the host runs calls, in a
// worker thread borrowed from the host's pool (worker-pool.js) or on the event loop
// (inline.js, an InlineThread standing in for the thread). Requests run one at a time, each
// under a deadline; past it the guest is stopped (guest.js; a worker thread that does not
// answer is terminated), the request fails with a timeout and the instance is never used
// again. Discarding an instance gives its thread back: reset for the next revision if it is
// alive, replaced in the background if it is not.

import { chain } from './inline.js';

/** The phase of each step of the worker's `start`: instantiate, initialize, configure, self_check. */
const START_PHASES = ['instantiate', 'instantiate', 'configure', 'self_check'];

/** Why a fresh instance could not be made ready: `phase` is instantiate, configure or self_check. */
export class InstanceError extends Error {
  constructor(phase, failure) {
    super(`${phase} failed`);
    this.phase = phase;
    this.failure = failure;
  }
}

export class Instance {
  #thread;
  #pool;
  #discarded = false;

  constructor(thread, pool) {
    this.#thread = thread;
    this.#pool = pool;
  }

  /** The thread was terminated (deadline) or crashed. */
  get dead() {
    return this.#thread.dead;
  }

  /**
   * Borrows a thread and makes the instance ready: instantiate (start function), `_initialize`,
   * `configure` and, when `selfCheck`, `self_check`, each under its own deadline as hotload-host
   * arms one per guest call (in one request to the thread: see instance-worker.js).
   * @param {import('./worker-pool.js').WorkerPool} pool
   * @returns {Promise<Instance>} or rejects with an InstanceError
   */
  static async start(pool, module, config, limits, selfCheck = false) {
    return Instance.startOn(await Instance.thread(pool), pool, module, config, limits, selfCheck);
  }

  /** A thread from `pool`, or an InstanceError saying why none could be started. */
  static async thread(pool) {
    try {
      return await pool.lease();
    } catch (err) {
      throw new InstanceError('instantiate', { type: 'fault', fault: { type: 'other', message: err.message } });
    }
  }

  /** start() on a thread already leased from `pool` (given back on failure). */
  static async startOn(thread, pool, module, config, limits, selfCheck = false) {
    const r = await thread.request(Instance.#startMessage(module, config, limits, selfCheck), limits.callTimeoutMs);
    const made = Instance.made(r, thread, pool);
    if (made instanceof InstanceError) throw made;
    return made;
  }

  /**
   * start() on each of `threads` (leased from `pool`), as one chain of requests: the main
   * thread rings the first thread only, each rings the next (worker-pool.js); after a failure
   * the rest are not started. Resolves, per thread in order, its Instance or the
   * InstanceError saying why it is not (its thread given back).
   * @returns {Promise<Array<Instance | InstanceError>>}
   */
  static async startAll(threads, pool, module, config, limits, selfCheck = false) {
    const results = await chain(Instance.startEntries(threads, module, config, limits, selfCheck));
    return results.map((r, i) => Instance.made(r, threads[i], pool));
  }

  /**
   * The requests that start an instance on each of `threads` (leased from the pool), for a
   * chain of requests (worker-pool.js); Instance.made() turns each result into an Instance.
   */
  static startEntries(threads, module, config, limits, selfCheck = false) {
    const msg = Instance.#startMessage(module, config, limits, selfCheck);
    return threads.map((thread) => ({ thread, msg, timeoutMs: limits.callTimeoutMs }));
  }

  static #startMessage(module, config, limits, selfCheck) {
    return { op: 'start', timeoutMs: limits.callTimeoutMs, module, config, selfCheck };
  }

  /** The Instance a start request made on `thread`, or the InstanceError saying why not (its thread given back). */
  static made(r, thread, pool) {
    const inst = new Instance(thread, pool);
    if (r.ok) return inst;
    inst.discard();
    const phase = START_PHASES[r.step] ?? 'instantiate';
    const f = r.failure;
    // A start function or `_initialize` fails as a fault of instantiation.
    return new InstanceError(phase, phase === 'instantiate' && f.type !== 'fault'
      ? { type: 'fault', fault: { type: 'other', message: `_initialize: returned ${f.type}` } } : f);
  }

  /** The thread it lives in (for a chain of requests over several instances). */
  get thread() {
    return this.#thread;
  }

  /**
   * Runs one guest call, `msg` = {op, timeoutMs, ...payload}. Resolves {ok: true, value} or
   * {ok: false, failure}; never rejects.
   * @returns {Promise<{ok: true, value: any} | {ok: false, failure: object}>}
   */
  request(msg, timeoutMs) {
    return this.#thread.request(msg, timeoutMs);
  }

  /**
   * The instance is never used again (faulted, or its revision is gone); its thread goes back
   * to the pool. Idempotent.
   */
  discard() {
    if (this.#discarded) return;
    this.#discarded = true;
    this.#pool.giveBack(this.#thread);
  }
}
