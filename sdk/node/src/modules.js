// ModuleHost: hot-loads JavaScript (ESM) modules the way PluginHost loads Wasm: verify the
// digest, import, self-check, hand state over, swap one reference; on any failure the old
// module keeps serving.
//
// The verified bytes are written to a private directory and imported from there with a
// cache-busting query (`?revision=…&n=…`): ESM caches by URL, so each revision is a fresh
// module with fresh state, and the bytes imported are the bytes verified (the shared volume
// is writable by other containers of the pod, so re-reading it after the check would not be).
//
// A delivered module must be self-contained (one file, bundled): it is imported from that
// private copy, so relative imports have nothing beside them to find.
//
// A JavaScript module runs in the app's own thread with the app's rights: it is trusted
// code. There is no time or memory limit (that is what the Wasm host is for), and Node
// cannot unload an imported module: every revision stays in memory until the process ends.
//
// A module exports `handle(...args)` and optionally `configure(config)` (the release's
// config, parsed JSON or null), `selfCheck()` (throws, or returns false, to refuse),
// `saveState()` (any value) and `restoreState(state)` (throws to refuse).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { parseSha256, sha256Digest } from './digest.js';
import { CallError, LoadError } from './errors.js';

function describe(err) {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Size of the state as JSON, for the health summary; null when it is not JSON. */
function jsonSize(state) {
  try {
    return Buffer.byteLength(JSON.stringify(state) ?? '');
  } catch {
    return null;
  }
}

export class ModuleHost {
  /** @type {Map<string, {id: object, ns: object}>} */
  #slots = new Map();
  #tails = new Map();
  #dir = null;
  #n = 0;

  /**
   * @param {{dir?: string, maxPlugins?: number}} [config]
   * @param {{beforeUnload?: Function, afterLoad?: Function, loadFailed?: Function}} [hooks]
   */
  constructor(config = {}, hooks = {}) {
    this.config = { maxPlugins: 16, ...config };
    this.hooks = hooks;
  }

  #hook(name, ...args) {
    try {
      this.hooks[name]?.(...args);
    } catch {
      // The app's hook failing must not fail a swap.
    }
  }

  #serial(plugin, fn) {
    const run = (this.#tails.get(plugin) ?? Promise.resolve()).then(fn);
    const tail = run.catch(() => {});
    this.#tails.set(plugin, tail);
    void tail.then(() => {
      if (this.#tails.get(plugin) === tail) this.#tails.delete(plugin);
    });
    return run;
  }

  /** The serving module's namespace; throws not_loaded. */
  module(plugin) {
    const s = this.#slots.get(plugin);
    if (!s) throw CallError.notLoaded(plugin);
    return s.ns;
  }

  /** Calls the serving module's `handle(...args)`. */
  async call(plugin, ...args) {
    return this.module(plugin).handle(...args);
  }

  /** The revision serving `plugin`, or null. */
  serving(plugin) {
    return this.#slots.get(plugin)?.id ?? null;
  }

  /** Names of the plugins with a serving module, sorted. */
  plugins() {
    return [...this.#slots.keys()].sort();
  }

  /**
   * Imports a revision and swaps it in; rejects with a LoadError and keeps the old one on
   * any failure.
   * @param {{plugin: string, revision: string, digest: string, config?: Uint8Array|string|null, source: Uint8Array}} req
   */
  async load(req) {
    try {
      return await this.#serial(req.plugin, () => this.#load(req));
    } catch (err) {
      if (err instanceof LoadError) this.#hook('loadFailed', req.plugin, req.revision, err);
      throw err;
    }
  }

  async #load({ plugin, revision, digest, config, source }) {
    const start = performance.now();
    const fail = (kind, detail) => LoadError.of(kind, plugin, revision, detail);
    const hex = parseSha256(digest);
    if (!hex) throw fail('bad_digest', `malformed digest ${JSON.stringify(String(digest))}: want sha256:<64 lowercase hex>`);
    const actual = sha256Digest(source);
    if (actual !== digest) throw fail('digest_mismatch', `digest mismatch: expected ${digest}, got ${actual}`);
    const cfgText = config == null ? '' : Buffer.from(config).toString('utf8');
    const old = this.#slots.get(plugin);
    if (old && old.id.revision === revision && old.id.digest === digest && old.id.configText === cfgText) {
      return { revision, swapped: false, selfChecked: false, stateBytes: null, totalMs: performance.now() - start, swapMs: 0 };
    }
    if (!old && this.#slots.size >= this.config.maxPlugins) {
      throw new LoadError('too_many_plugins', plugin, revision, `plugin ${plugin}: cannot load more than ${this.config.maxPlugins} plugins`);
    }
    this.#dir ??= this.config.dir ?? mkdtempSync(path.join(os.tmpdir(), 'hotload-modules-'));
    const file = path.join(this.#dir, `${hex}.mjs`);
    writeFileSync(file, source, { mode: 0o600 });
    const url = `${pathToFileURL(file).href}?revision=${encodeURIComponent(revision)}&n=${++this.#n}`;
    let ns;
    try {
      ns = await import(url);
    } catch (err) {
      throw fail('import', `import failed: ${describe(err)}`);
    } finally {
      // Evaluated (or refused) once and for all: the copy is not needed any more.
      rmSync(file, { force: true });
    }
    if (typeof ns.handle !== 'function') throw fail('abi', 'module does not export a function `handle`');
    let parsed = null;
    if (cfgText !== '') {
      try {
        parsed = JSON.parse(cfgText);
      } catch (err) {
        throw fail('configure', `configure failed: config is not JSON: ${err.message}`);
      }
    }
    const step = async (kind, words, fn) => {
      try {
        const r = await fn();
        if (r === false) throw new Error('returned false');
      } catch (err) {
        throw fail(kind, `${words} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    if (typeof ns.configure === 'function') await step('configure', 'configure', () => ns.configure(parsed));
    const selfChecked = typeof ns.selfCheck === 'function';
    if (selfChecked) await step('self_check', 'self-check', () => ns.selfCheck());
    let stateBytes = null;
    if (old && typeof old.ns.saveState === 'function' && typeof ns.restoreState === 'function') {
      let state;
      await step('save_state', 'save-state', async () => {
        state = await old.ns.saveState();
      });
      await step('restore_state', 'restore-state', async () => {
        await ns.restoreState(state);
      });
      stateBytes = jsonSize(state);
    }
    if (old) this.#hook('beforeUnload', { plugin, revision: old.id.revision, next: revision });
    const s = performance.now();
    this.#slots.set(plugin, { id: { plugin, revision, digest, configText: cfgText }, ns });
    const swapMs = performance.now() - s;
    this.#hook('afterLoad', { plugin, revision, previous: old?.id.revision ?? null, swapMs });
    return { revision, swapped: true, selfChecked, stateBytes, totalMs: performance.now() - start, swapMs };
  }

  /** Reads the module from `path` and loads it. */
  async loadFile(plugin, revision, file, digest, config) {
    let source;
    try {
      source = await readFile(file);
    } catch (err) {
      throw LoadError.of('read', plugin, revision, `cannot read ${file}: ${err.message}`);
    }
    return this.load({ plugin, revision, digest, config, source });
  }

  /** Unloads every module and removes the private directory this host made. */
  async close() {
    await Promise.all(this.plugins().map((p) => this.unload(p)));
    if (this.#dir && !this.config.dir) rmSync(this.#dir, { recursive: true, force: true });
    this.#dir = null;
  }

  /** Stops serving `plugin`; returns whether it was there. */
  async unload(plugin) {
    return this.#serial(plugin, () => {
      const old = this.#slots.get(plugin);
      if (!old) return false;
      this.#hook('beforeUnload', { plugin, revision: old.id.revision, next: null });
      this.#slots.delete(plugin);
      return true;
    });
  }
}
