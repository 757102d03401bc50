// PluginHost: named plugin slots, each holding its serving revision; the Node counterpart
// of hotload-host's PluginHost, held to the same conformance cases (sdk/conformance/).
//
//  load(req) ── size, digest (libuv's pool) ─ compiled module by digest (module-cache.js), or a
//      │        compile on a pooled thread: parse, instrument, compile, ABI check ─ instances
//      │        (instancesAtLoad): instantiate, configure, self_check, on the event loop
//      │        (inline.js) or in warm pooled threads (worker-pool.js) ─ state hand-over ─
//      │        beforeUnload
//      └──────────────── slot.current = next   ◄── the only critical section (one assignment)
//  call(name) ── slot.current, acquire ── check out an instance ── handle ── release
//  pin(name)  ── slot.current, acquire ── Pinned ── call, call, … ── release()
//
// Hashing runs in libuv's thread pool and compiling on a thread of its own, off the request
// path; a failure anywhere leaves the slot as it was. A call holds a reference on the revision
// it started on, so it finishes there. A load of a revision whose module this host compiled
// before compiles nothing: the module comes from the cache. With calls in threads, the threads
// come from the pool and the swapped-out revision gives its threads back for the next load.

import { readFile } from 'node:fs/promises';

import { compileModule } from './compile.js';
import { parseSha256, sha256DigestAsync } from './digest.js';
import { CallError, LoadError } from './errors.js';
import { HealthTable } from './health.js';
import { InlinePool } from './inline.js';
import { ModuleCache } from './module-cache.js';
import { Revision } from './revision.js';
import { WorkerPool } from './worker-pool.js';

/** Limits and knobs of a host; every field has a production default (hotload-host's). */
export const DEFAULTS = Object.freeze({
  /** Ceiling of one instance's linear memory, in bytes (a whole number of 64 KiB pages). */
  maxMemoryBytes: 64 << 20,
  /** Longest one guest call (request, self-check, state hand-over, start-up) may run. */
  callTimeoutMs: 500,
  /**
   * Where guest calls run: 'inline', on the app's event loop (a call costs what the guest
   * does, and blocks the loop while it runs, like any synchronous function), or 'threads', in
   * pooled worker threads (calls of one plugin run in parallel, each paying two thread
   * wake-ups). Either way a call ends at callTimeoutMs (see inline.js).
   */
  calls: 'inline',
  /**
   * Instances per revision: with calls in 'threads', the most calls a plugin runs in
   * parallel; inline a call holds its instance only while the guest runs, so one serves all.
   */
  instancesPerRevision: 4,
  /**
   * Instances a load builds, self-checks and hands the state to before the swap (at most
   * instancesPerRevision); the others are built the same way when calls first need them (see
   * revision.js). Each is a start on a worker thread that competes with the calls running
   * meanwhile for the cores.
   */
  instancesAtLoad: 1,
  /** How long a call waits for a free instance before it fails `busy`. */
  checkoutTimeoutMs: 2000,
  /** Most named plugins one host holds. */
  maxPlugins: 16,
  /** Largest module a load accepts, refused before it is hashed. */
  maxModuleBytes: 64 << 20,
  /** Longest a compile may take; past it the load fails and the old revision serves. */
  compileTimeoutMs: 120_000,
  /**
   * Compiled modules kept by digest that no revision uses (a revision loaded again skips the
   * compile); modules of revisions in use are kept besides, always.
   */
  moduleCacheEntries: 8,
  /** Most wasm bytes of the modules kept that no revision uses. */
  moduleCacheBytes: 64 << 20,
  /**
   * Idle worker threads the host keeps warm for the next load or for a replaced instance;
   * null: instancesPerRevision (so a swap starts no thread) with calls in 'threads', 1 (for
   * compiles) inline.
   */
  spareThreads: null,
});

const RETRY = Symbol('retry');
const EMPTY_STATE = new Uint8Array(0);

function toBytes(v) {
  if (v == null) return new Uint8Array(0);
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return v;
  throw new TypeError('expected a string or a Uint8Array');
}

function sameBytes(a, b) {
  const view = (x) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return a.length === b.length && Buffer.compare(view(a), view(b)) === 0;
}

class Slot {
  /** @type {Revision | null} */
  current = null;
  #tail = Promise.resolve();

  /** Runs `fn` after every earlier `serial` of this slot: loads of one plugin are serial. */
  serial(fn) {
    const run = this.#tail.then(fn);
    this.#tail = run.catch(() => {});
    return run;
  }
}

/**
 * One revision held for the length of a request: every call through it runs on that
 * revision, whatever is loaded or unloaded meanwhile. Release it when the request ends
 * (`release()`, or `using` with Symbol.dispose); a pin that is garbage-collected
 * unreleased is released then, but until then it keeps the old revision's threads alive.
 */
export class Pinned {
  #rev;
  #released = false;
  static #leaks = new FinalizationRegistry((rev) => rev.release());

  constructor(rev) {
    this.#rev = rev;
    rev.acquire();
    Pinned.#leaks.register(this, rev, this);
  }

  /** The pinned revision's identity (plugin, revision name, digest, config). */
  get revision() {
    return this.#rev.id;
  }

  /** Calls the plugin's `handle` on the pinned revision. @returns {Promise<Buffer>} */
  call(input) {
    if (this.#released) return Promise.reject(new Error('call on a released pin'));
    return this.#rev.call(toBytes(input));
  }

  /**
   * Counts one call made through this pin that returned as failed (its answer was unusable,
   * say), on the pinned revision. Does nothing after release().
   */
  markFailed() {
    if (!this.#released) this.#rev.markFailed();
  }

  /** Lets the revision go (idempotent). */
  release() {
    if (this.#released) return;
    this.#released = true;
    Pinned.#leaks.unregister(this);
    this.#rev.release();
  }

  [Symbol.dispose]() {
    this.release();
  }
}

export class PluginHost {
  /** @type {Map<string, Slot>} */
  #slots = new Map();
  #closed = false;
  #health = new HealthTable();
  /** @type {ModuleCache} */
  #modules;
  /** Threads for compiles and, with calls in 'threads', instances. @type {WorkerPool} */
  #threads;
  /** Where instances live: #threads, or an InlinePool. @type {WorkerPool | InlinePool} */
  #instances;

  /**
   * @param {Partial<typeof DEFAULTS>} [config]
   * @param {{beforeUnload?: Function, afterLoad?: Function, loadFailed?: Function}} [hooks]
   */
  constructor(config = {}, hooks = {}) {
    this.config = { ...DEFAULTS, ...config };
    if (this.config.maxMemoryBytes % 65536 !== 0) {
      throw new RangeError('maxMemoryBytes must be a whole number of 64 KiB pages');
    }
    const inline = this.config.calls === 'inline';
    if (!inline && this.config.calls !== 'threads') {
      throw new RangeError(`calls must be 'inline' or 'threads', not ${JSON.stringify(this.config.calls)}`);
    }
    this.config.spareThreads ??= inline ? 1 : Math.max(1, this.config.instancesPerRevision);
    this.hooks = hooks;
    this.#modules = new ModuleCache(this.config.moduleCacheEntries, this.config.moduleCacheBytes);
    this.#threads = new WorkerPool(this.config, this.config.spareThreads);
    this.#instances = inline ? new InlinePool(this.config) : this.#threads;
  }

  /**
   * What the host keeps warm, for tests and benchmarks: the compiled modules by digest (least
   * recently used first, with how many revisions use each), the idle threads, and how many
   * threads the host has started since it was made.
   * @returns {{modules: Array<{digest: string, users: number, bytes: number}>, idleThreads: number, threadsStarted: number}}
   */
  warm() {
    return { modules: this.#modules.entries(), idleThreads: this.#threads.idle, threadsStarted: this.#threads.started };
  }

  #hook(name, ...args) {
    try {
      this.hooks[name]?.(...args);
    } catch {
      // A hook is the app's code: its failure must not fail or half-do a swap.
    }
  }

  /** Calls `plugin`'s `handle` with `input` on the revision serving right now. @returns {Promise<Buffer>} */
  async call(plugin, input) {
    const rev = this.#slots.get(plugin)?.current;
    if (!rev) throw CallError.notLoaded(plugin);
    rev.acquire();
    try {
      return await rev.call(toBytes(input));
    } finally {
      rev.release();
    }
  }

  /**
   * Counts one call to `plugin` that returned as failed (its answer was unusable, say) on the
   * revision serving now; false when none serves. To mark the very revision a request called,
   * even across a swap, call through a pin and use its markFailed().
   */
  markFailed(plugin) {
    const rev = this.#slots.get(plugin)?.current;
    if (!rev) return false;
    rev.markFailed();
    return true;
  }

  /**
   * What each plugin revision did since the previous takeHealth() (only revisions with calls,
   * sorted by plugin and revision), in the protocol's `health` shape; counting starts afresh.
   * An AppClient sends it to the sidecar about once a second.
   * @returns {Array<{plugin: string, revision: string, calls: number,
   *   errors: {trap: number, timeout: number, memory: number, failed: number}, latency_us: number[]}>}
   */
  takeHealth() {
    return this.#health.take();
  }

  /** Pins the revision serving `plugin` now, for all the calls of one request. @returns {Pinned} */
  pin(plugin) {
    const rev = this.#slots.get(plugin)?.current;
    if (!rev) throw CallError.notLoaded(plugin);
    return new Pinned(rev);
  }

  /** The revision serving `plugin`, or null. */
  serving(plugin) {
    return this.#slots.get(plugin)?.current?.id ?? null;
  }

  /** Names of the plugins with a serving revision, sorted. */
  plugins() {
    return [...this.#slots].filter(([, s]) => s.current).map(([n]) => n).sort();
  }

  /**
   * Reads the module from `path` (the sidecar's store) and loads it.
   * @returns {Promise<object>} see load()
   */
  async loadFile(plugin, revision, path, digest, config) {
    let wasm;
    try {
      wasm = await readFile(path);
    } catch (err) {
      // Like hotload-host's LoadRequest::from_file: a read error is the caller's, no hook.
      throw LoadError.of('read', plugin, revision, `cannot read ${path}: ${err.message}`);
    }
    return this.load({ plugin, revision, digest, config, wasm });
  }

  /**
   * Loads a revision and swaps it in; on any failure the previous revision keeps serving and
   * the promise rejects with a LoadError.
   * @param {{plugin: string, revision: string, digest: string, config?: Uint8Array|string|null, wasm: Uint8Array}} req
   * @returns {Promise<{revision: string, swapped: boolean, selfChecked: boolean, stateBytes: number|null,
   *   cached: boolean, compileMs: number, totalMs: number, swapMs: number}>}
   */
  async load(req) {
    try {
      return await this.#tryLoad(req);
    } catch (err) {
      if (err instanceof LoadError) this.#hook('loadFailed', req.plugin, req.revision, err);
      throw err;
    }
  }

  async #tryLoad(req) {
    const start = performance.now();
    const { plugin, revision, digest } = req;
    const wasm = toBytes(req.wasm);
    if (this.#closed) throw LoadError.of('closed', plugin, revision, 'host is closed');
    if (wasm.length > this.config.maxModuleBytes) {
      throw LoadError.of('module_too_large', plugin, revision,
        `module is ${wasm.length} bytes, over the limit of ${this.config.maxModuleBytes} bytes`);
    }
    if (!parseSha256(digest)) {
      throw LoadError.of('bad_digest', plugin, revision,
        `malformed digest ${JSON.stringify(String(digest))}: want sha256:<64 lowercase hex>`);
    }
    const actual = await sha256DigestAsync(wasm);
    if (actual !== digest) {
      throw LoadError.of('digest_mismatch', plugin, revision, `digest mismatch: expected ${digest}, got ${actual}`);
    }
    const id = { plugin, revision, digest, config: Uint8Array.from(toBytes(req.config)) };
    for (;;) {
      const slot = this.#slotOrCreate(plugin, revision);
      const result = await slot.serial(async () => {
        // Unloaded (or given up after a failed first load) while this load waited.
        if (this.#slots.get(plugin) !== slot) return RETRY;
        try {
          return await this.#loadInto(slot, id, wasm, start);
        } catch (err) {
          // A first load that failed leaves no empty slot behind to count against maxPlugins.
          if (!slot.current && this.#slots.get(plugin) === slot) this.#slots.delete(plugin);
          throw err;
        }
      });
      if (result !== RETRY) return result;
    }
  }

  #slotOrCreate(plugin, revision) {
    let slot = this.#slots.get(plugin);
    if (slot) return slot;
    if (this.#slots.size >= this.config.maxPlugins) {
      throw new LoadError('too_many_plugins', plugin, revision,
        `plugin ${plugin}: cannot load more than ${this.config.maxPlugins} plugins`);
    }
    slot = new Slot();
    this.#slots.set(plugin, slot);
    return slot;
  }

  /**
   * The compiled module of `id.digest` from the cache, else compiled and checked on a pooled
   * thread and kept; rejects with a LoadError. The caller releases the lease.
   */
  async #compiled(id, wasm) {
    const hit = this.#modules.lease(id.digest);
    if (hit) return { compiled: hit, cached: true };
    const r = await compileModule(wasm, this.config, this.#threads);
    if (!r.ok) throw LoadError.of(r.kind, id.plugin, id.revision, r.detail);
    return { compiled: this.#modules.add(id.digest, r.module, r.caps, wasm.length), cached: false };
  }

  async #loadInto(slot, id, wasm, start) {
    const { plugin, revision } = id;
    const old = slot.current;
    if (old && old.id.revision === revision && old.id.digest === id.digest && sameBytes(old.id.config, id.config)) {
      return { revision, swapped: false, selfChecked: false, stateBytes: null, cached: false, compileMs: 0,
        totalMs: performance.now() - start, swapMs: 0 };
    }
    const t = performance.now();
    const { compiled, cached } = await this.#compiled(id, wasm);
    const compileMs = cached ? 0 : performance.now() - t;
    const { caps } = compiled;
    const next = new Revision(id, compiled, this.#instances, this.config);
    try {
      await next.fill();
    } catch (err) {
      if (err.phase === 'configure' || err.phase === 'self_check') throw LoadError.guest(err.phase, plugin, revision, err.failure);
      if (err.failure?.type === 'fault') throw LoadError.instantiate(plugin, revision, err.failure.fault);
      throw err;
    }
    try {
      let stateBytes = null;
      if (old && old.caps.saveState && caps.restoreState) {
        old.acquire();
        let handed;
        try {
          handed = await old.handOverTo(next);
        } catch (err) {
          // The old revision had no instance to save from: its pool is busy (or an instance
          // it built for this failed), not broken.
          throw LoadError.guest('save_state', plugin, revision, { type: 'fault', fault: { type: 'other', message: err.message } });
        } finally {
          old.release();
        }
        const { saved, failure } = handed;
        if (!saved.ok) throw LoadError.guest('save_state', plugin, revision, saved.failure);
        if (failure) throw LoadError.guest('restore_state', plugin, revision, failure);
        stateBytes = (saved.value ?? EMPTY_STATE).length;
      }
      if (old) this.#hook('beforeUnload', { plugin, revision: old.id.revision, next: revision });
      next.health = this.#health.join(plugin, revision);
      const s = performance.now();
      slot.current = next;
      const swapMs = performance.now() - s;
      old?.retire();
      this.#hook('afterLoad', { plugin, revision, previous: old?.id.revision ?? null, swapMs });
      return { revision, swapped: true, selfChecked: caps.selfCheck, stateBytes, cached, compileMs,
        totalMs: performance.now() - start, swapMs };
    } catch (err) {
      next.destroy();
      throw err;
    }
  }

  /**
   * Removes a plugin; calls in flight finish on the revision they started on.
   * @returns {Promise<boolean>} whether it was there
   */
  async unload(plugin) {
    const slot = this.#slots.get(plugin);
    if (!slot) return false;
    this.#slots.delete(plugin);
    await slot.serial(async () => {
      const old = slot.current;
      slot.current = null;
      if (old) {
        this.#hook('beforeUnload', { plugin, revision: old.id.revision, next: null });
        old.retire();
      }
    });
    return true;
  }

  /** Unloads everything and stops every thread once its calls are done. */
  async close() {
    this.#closed = true;
    await Promise.all([...this.#slots.keys()].map((p) => this.unload(p)));
    this.#threads.close();
    this.#instances.close();
  }
}

