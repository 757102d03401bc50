// One loaded revision of a plugin: a fixed pool of warm instances (each a worker thread)
// that calls check out, as hotload-host's revision.rs. An instance that faulted (trap,
// deadline, memory limit) is discarded, never reused, and a fresh one is made on the next
// checkout. A call or a pin holds a reference on the revision it started on; a revision
// that was swapped out stops its threads when the last reference is released, which is
// how a swap never cuts a call off.

import { CallError, failureText as failureWords } from './errors.js';
import { errorKindOf } from './health.js';
import { Instance } from './instance.js';

/**
 * @typedef {{plugin: string, revision: string, digest: string, config: Uint8Array}} RevisionId
 */

export class Revision {
  idle = [];
  live = 0;
  waiters = [];
  refs = 0;
  retired = false;
  destroyed = false;
  /** Where its calls count (set when it starts serving; see health.js). */
  health = null;

  /**
   * @param {RevisionId} id
   * @param {{configure: boolean, selfCheck: boolean, saveState: boolean, restoreState: boolean}} caps
   * @param {WebAssembly.Module} module
   * @param {object} cfg the host's resolved config
   */
  constructor(id, caps, module, cfg) {
    this.id = id;
    this.caps = caps;
    this.module = module;
    this.cfg = cfg;
    this.target = Math.max(1, cfg.instancesPerRevision);
  }

  /** Makes every instance of the pool ready; rejects with an InstanceError. */
  async fill() {
    const made = await Promise.allSettled(Array.from({ length: this.target }, () => this.#instantiate()));
    for (const m of made) if (m.status === 'fulfilled') this.idle.push(m.value);
    this.live = this.idle.length;
    const failed = made.find((m) => m.status === 'rejected');
    if (failed) {
      this.destroy();
      throw failed.reason;
    }
  }

  #instantiate() {
    return Instance.start(this.module, this.id.config, this.cfg);
  }

  /** A call or a pin starts using this revision. */
  acquire() {
    this.refs++;
  }

  /** A call or a pin is done with it; the last one out of a retired revision stops it. */
  release() {
    this.refs--;
    if (this.retired && this.refs === 0) this.destroy();
  }

  /** No new call will start here (swapped out or unloaded). */
  retire() {
    this.retired = true;
    if (this.refs === 0) this.destroy();
  }

  /** Stops every idle thread now, and every busy one as it comes back. */
  destroy() {
    if (!this.destroyed && this.health) this.health.users--;
    this.destroyed = true;
    for (const inst of this.idle) inst.kill();
    this.idle = [];
  }

  /** Borrows an instance, making one if the pool lost some to faults. */
  async checkout() {
    const deadline = performance.now() + this.cfg.checkoutTimeoutMs;
    for (;;) {
      const inst = this.idle.pop();
      if (inst) return inst;
      if (this.live < this.target) {
        this.live++;
        try {
          return await this.#instantiate();
        } catch (err) {
          this.live--;
          this.#wakeOne('retry');
          const f = err.failure;
          const text = err.phase === 'configure' ? `configure: ${failureWords(f)}` : failureWords(f);
          throw new CallError('reinstantiate', this.id.plugin, this.id.revision,
            `plugin ${this.id.plugin} revision ${this.id.revision}: re-instantiation failed: ${text}`, f);
        }
      }
      const left = deadline - performance.now();
      const got = left <= 0 ? null : await new Promise((resolve) => {
        const waiter = { resolve, timer: null };
        waiter.timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          resolve(null);
        }, left);
        this.waiters.push(waiter);
      });
      if (got === null) {
        throw new CallError('busy', this.id.plugin, this.id.revision,
          `plugin ${this.id.plugin} revision ${this.id.revision}: no free instance within ${this.cfg.checkoutTimeoutMs} ms`);
      }
      if (got !== 'retry') return got;
    }
  }

  #wakeOne(value) {
    const w = this.waiters.shift();
    if (!w) return false;
    clearTimeout(w.timer);
    w.resolve(value);
    return true;
  }

  /** Returns an instance; a faulted (or dead) one is dropped and replaced lazily. */
  checkin(inst, faulted) {
    if (faulted || inst.dead || this.destroyed) {
      inst.kill();
      this.live--;
      if (!this.destroyed) this.#wakeOne('retry');
      return;
    }
    if (!this.#wakeOne(inst)) this.idle.push(inst);
  }

  /** Runs one guest operation on a checked-out instance; a failure discards the instance. */
  async run(op, payload) {
    const inst = await this.checkout();
    const r = await inst.request(op, payload, this.cfg.callTimeoutMs);
    this.checkin(inst, !r.ok);
    return r;
  }

  /** Handles one request and counts it; rejects with a CallError. */
  async call(input) {
    const start = performance.now();
    let error = null;
    try {
      return await this.#handle(input);
    } catch (err) {
      error = err;
      throw err;
    } finally {
      this.health?.record(performance.now() - start, errorKindOf(error));
    }
  }

  /** Counts a returned call the app found failed. */
  markFailed() {
    this.health?.markFailed();
  }

  async #handle(input) {
    // A view into a larger buffer (Node's Buffer pool) would be cloned whole to the thread.
    const own = input.byteOffset === 0 && input.byteLength === input.buffer.byteLength ? input : Uint8Array.prototype.slice.call(input);
    const r = await this.run('handle', { input: own });
    if (r.ok) return Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    throw new CallError('handle', this.id.plugin, this.id.revision,
      `plugin ${this.id.plugin} revision ${this.id.revision}: handle failed: ${failureWords(r.failure)}`, r.failure);
  }

  /**
   * Runs `op` on every instance, one after the other (before the revision is published, so
   * all are idle). Resolves null, or the first GuestFailure.
   */
  async forEachInstance(op, payload) {
    for (const inst of this.idle) {
      const r = await inst.request(op, payload, this.cfg.callTimeoutMs);
      if (!r.ok) return r.failure;
    }
    return null;
  }
}
