// One loaded revision of a plugin: a pool of up to `instancesPerRevision` warm instances
// (each in a worker thread borrowed from the host's pool, or inline) that calls check out, as
// hotload-host's revision.rs. An instance that faulted (trap, deadline, memory limit) is
// discarded, never reused, and a fresh one is made on the next checkout, in a thread the pool
// has ready. A call or a pin holds a reference on the revision it started on; a revision that
// was swapped out gives its threads back when the last reference is released, which is how a
// swap never cuts a call off.
//
// A load builds only `instancesAtLoad` instances (one by default), which run the self-check
// and take the handed-over state before the revision is published. The rest of the pool is
// built when a checkout first finds every built instance lent out, and each passes the same
// steps (configure, self-check, the load's snapshot) before it serves: it is the instance the
// load would have built, kept unbuilt until needed (as the Python SDK does). Why: every
// instance a load builds is a start on a worker thread that competes for the cores with the
// calls running meanwhile (a cached load of one costs a third of a load of four:
// docs/benchmarks.md, "App SDKs"), and an app that never has two calls of a plugin in flight
// at once never needs a second instance. A later instance that fails one of those steps
// fails the call that needed it (`reinstantiate`) and never serves; the revision serves on
// from the others, and the next checkout that needs one tries again.

import { CallError, PHASE_WORDS, failureText as failureWords } from './errors.js';
import { errorKindOf } from './health.js';
import { Instance, InstanceError } from './instance.js';
import { DATA_BYTES } from './channel.js';
import { InlineThread, chain } from './inline.js';

const EMPTY = new Uint8Array(0);

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

  #compiled;
  #threads;
  /**
   * Instances of the first pool not built yet: each is built as the load builds its own
   * (self-check, snapshot); a replacement for a faulted instance only configures.
   */
  #unbuilt;
  /** The state handed over at load (null: none), for the instances built after it. */
  #snapshot = null;

  /**
   * @param {RevisionId} id
   * @param {import('./module-cache.js').ModuleLease} compiled its module and ABI capabilities,
   *   released when the revision is destroyed
   * @param {import('./worker-pool.js').WorkerPool} threads the host's
   * @param {object} cfg the host's resolved config
   */
  constructor(id, compiled, threads, cfg) {
    this.id = id;
    /** @type {{configure: boolean, selfCheck: boolean, saveState: boolean, restoreState: boolean}} */
    this.caps = compiled.caps;
    this.#compiled = compiled;
    this.#threads = threads;
    this.cfg = cfg;
    this.target = Math.max(1, cfg.instancesPerRevision);
    this.#unbuilt = this.target - Math.min(this.target, Math.max(1, cfg.instancesAtLoad));
  }

  /**
   * Makes the instances a load builds ready, each self-checked if the plugin has a
   * self-check; rejects with an InstanceError. The threads are borrowed together (any that
   * must be started start in parallel: that is the slow part), then the instances are made
   * one after the other, as one chain of requests (worker-pool.js): one loading thread at a
   * time leaves the cores to the threads serving calls, and the main thread rings only the
   * first. Then the pool starts, in the background, the threads the rest of the instances
   * will need, so that a call that builds one does not wait for a thread to start.
   */
  async fill() {
    const threads = await Promise.allSettled(Array.from({ length: this.target - this.#unbuilt },
      () => Instance.thread(this.#threads)));
    let failure = null;
    const leased = [];
    for (const t of threads) {
      if (t.status === 'rejected') failure ??= t.reason;
      else leased.push(t.value);
    }
    if (failure) {
      for (const t of leased) this.#threads.giveBack(t);
    } else {
      const made = await Instance.startAll(leased, this.#threads, this.#compiled.module, this.id.config, this.cfg,
        this.caps.selfCheck);
      for (const m of made) {
        if (m instanceof Instance) this.idle.push(m);
        else failure ??= m;
      }
    }
    this.live = this.idle.length;
    if (failure) {
      this.destroy();
      throw failure;
    }
    this.#threads.reserve(this.#unbuilt);
  }

  /** A replacement for a faulted instance: configured. Rejects with an InstanceError. */
  #instantiate() {
    return Instance.start(this.#threads, this.#compiled.module, this.id.config, this.cfg);
  }

  /**
   * An instance of the first pool built after the load, as the load would have built it:
   * configured, self-checked, given the load's snapshot. Rejects with an InstanceError.
   */
  async #prepared() {
    const inst = await Instance.start(this.#threads, this.#compiled.module, this.id.config, this.cfg, this.caps.selfCheck);
    if (this.#snapshot === null) return inst;
    const timeoutMs = this.cfg.callTimeoutMs;
    const r = await inst.request({ op: 'restore_state', timeoutMs, state: this.#snapshot }, timeoutMs);
    if (r.ok) return inst;
    // Its memory may be half-written: it never serves.
    inst.discard();
    throw new InstanceError('restore_state', r.failure);
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

  /** Gives every idle thread back now, and every busy one as it comes back. */
  destroy() {
    if (!this.destroyed) {
      if (this.health) this.health.users--;
      this.#compiled.release();
    }
    this.destroyed = true;
    for (const inst of this.idle) inst.discard();
    this.idle = [];
  }

  /** Borrows an instance, making one if every one built is lent out or faults cost some. */
  async checkout() {
    const deadline = performance.now() + this.cfg.checkoutTimeoutMs;
    for (;;) {
      const inst = this.idle.pop();
      if (inst) return inst;
      if (this.live < this.target) {
        this.live++;
        const first = this.#unbuilt > 0;
        if (first) this.#unbuilt--;
        try {
          return await (first ? this.#prepared() : this.#instantiate());
        } catch (err) {
          this.live--;
          if (first) this.#unbuilt++;
          this.#wakeOne('retry');
          const f = err.failure;
          const text = err.phase === 'instantiate' ? failureWords(f) : `${PHASE_WORDS[err.phase]}: ${failureWords(f)}`;
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
      inst.discard();
      this.live--;
      if (!this.destroyed) this.#wakeOne('retry');
      return;
    }
    if (!this.#wakeOne(inst)) this.idle.push(inst);
  }

  /**
   * Runs one guest operation (`{op, ...payload}`) on a checked-out instance, under the call
   * deadline; a failure discards the instance.
   */
  run(msg) {
    const inst = this.#idleInline();
    if (inst === null) return this.#runLater(msg);
    const r = inst.thread.run(msg, this.cfg.callTimeoutMs);
    this.checkin(inst, !r.ok);
    return r;
  }

  async #runLater(msg) {
    const inst = await this.checkout();
    const t = inst.thread;
    const r = t instanceof InlineThread ? t.run(msg, this.cfg.callTimeoutMs) : await inst.request(msg, this.cfg.callTimeoutMs);
    this.checkin(inst, !r.ok);
    return r;
  }

  /**
   * An idle inline instance, taken now, or null. Inline, a guest call runs at once on an
   * instance taken at once and given back before anything else runs, so calls made in the
   * same turn of the event loop never find it lent out and build more.
   */
  #idleInline() {
    const inst = this.idle.at(-1);
    if (!(inst?.thread instanceof InlineThread)) return null;
    return this.idle.pop();
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
    const r = await this.run({ op: 'handle', timeoutMs: this.cfg.callTimeoutMs, input });
    if (r.ok) return Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    throw new CallError('handle', this.id.plugin, this.id.revision,
      `plugin ${this.id.plugin} revision ${this.id.revision}: handle failed: ${failureWords(r.failure)}`, r.failure);
  }

  /**
   * The state hand-over from this (old) revision to `next` (not published yet, so all of its
   * instances are idle): `save_state` on one instance of this revision, then `restore_state`
   * of that snapshot on every instance `next` has built, as one chain of requests that hands
   * the snapshot from thread to thread (worker-pool.js): the main thread rings once; `next`
   * keeps the snapshot for the instances it builds later. Resolves {saved, failure}: the
   * save's result, and null or the first restore's GuestFailure. A snapshot too large to hand
   * on in shared memory is restored by the main thread instead. Rejects (a CallError) if no
   * instance of this revision is free in time.
   */
  async handOverTo(next) {
    const inst = this.#idleInline() ?? await this.checkout();
    const timeoutMs = this.cfg.callTimeoutMs;
    const restore = { op: 'restore_state', timeoutMs, state: EMPTY };
    const entries = [{ thread: inst.thread, msg: { op: 'save_state', timeoutMs }, timeoutMs, pipe: true }];
    for (const i of next.idle) entries.push({ thread: i.thread, msg: restore, timeoutMs, pipe: true });
    // Inline, the chain has run when chain() returns (any size of snapshot handed on), and
    // the instance goes back at once.
    const ran = chain(entries);
    const inline = Array.isArray(ran);
    const [saved, ...restored] = inline ? ran : await ran;
    this.checkin(inst, !saved.ok);
    if (!saved.ok) return { saved, failure: null };
    const snapshot = saved.value ?? EMPTY;
    next.#snapshot = snapshot;
    if (!inline && snapshot.length > DATA_BYTES) {
      return { saved, failure: await next.forEachInstance({ op: 'restore_state', state: snapshot }) };
    }
    return { saved, failure: restored.find((r) => !r.ok)?.failure ?? null };
  }

  /**
   * Runs one guest operation (`{op, ...payload}`) on every instance (before the revision is
   * published, so all are idle), one after the other, as one chain of requests: the main
   * thread rings the first instance's thread only. Resolves null, or the first GuestFailure.
   */
  async forEachInstance(msg) {
    const timeoutMs = this.cfg.callTimeoutMs;
    const one = { ...msg, timeoutMs };
    const results = await chain(this.idle.map((inst) => ({ thread: inst.thread, msg: one, timeoutMs })));
    return results.find((r) => !r.ok)?.failure ?? null;
  }
}
