// Compiled modules by digest, in the host's memory, so that a revision loaded again (a
// rollback, a rollout that goes back and forth, one module under two plugin names) skips
// the compile: a hit costs a map lookup, and the WebAssembly.Module is posted to the
// instance threads as it is (V8 shares its compiled code between the threads of a process).
//
// What it holds: per digest, the module as compiled by this host (memory.grow rewritten for
// this host's maxMemoryBytes, so a cache belongs to one host) and the ABI capabilities found
// when it was compiled. The digest was checked against the delivered bytes before every
// lookup, so a hit is the same bytes. Modules that failed to compile are not kept.
//
// Bounds: a module that a revision still uses (serving, pinned, or still finishing calls)
// is always kept, since the revision holds it anyway. Of the others, at most `maxEntries`
// and at most `maxBytes` of wasm (the delivered size: the machine code V8 keeps for a module
// is larger, by a factor that depends on the module) stay, least recently used out first.
//
// Not across processes: Node 20 gives an embedder no way to serialize compiled Wasm
// (V8's WasmModuleObject serialization is not exposed), so each process compiles each
// revision once.

class Entry {
  users = 0;

  constructor(digest, module, caps, bytes) {
    this.digest = digest;
    this.module = module;
    this.caps = caps;
    this.bytes = bytes;
  }
}

/** A use of a cached module, held by one revision; release() once it is gone. */
export class ModuleLease {
  #cache;
  #entry;
  #released = false;

  constructor(cache, entry) {
    this.#cache = cache;
    this.#entry = entry;
    entry.users++;
  }

  get module() {
    return this.#entry.module;
  }

  get caps() {
    return this.#entry.caps;
  }

  /** The revision is gone: the module may be evicted from now on. Idempotent. */
  release() {
    if (this.#released) return;
    this.#released = true;
    this.#entry.users--;
    this.#cache.trim();
  }
}

export class ModuleCache {
  /** Insertion order is recency: the first entry is the least recently used. */
  #entries = new Map();

  /**
   * @param {number} maxEntries most modules kept that no revision uses
   * @param {number} maxBytes most wasm bytes of such modules
   */
  constructor(maxEntries, maxBytes) {
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes;
  }

  /** A lease on the module compiled from `digest`, or null (a miss). */
  lease(digest) {
    const e = this.#entries.get(digest);
    if (!e) return null;
    this.#entries.delete(digest);
    this.#entries.set(digest, e);
    return new ModuleLease(this, e);
  }

  /**
   * Keeps a freshly compiled module and leases it. If another load compiled the same digest
   * meanwhile, that one is kept and leased instead.
   * @param {number} bytes the module's wasm size
   */
  add(digest, module, caps, bytes) {
    const had = this.lease(digest);
    if (had) return had;
    const e = new Entry(digest, module, caps, bytes);
    this.#entries.set(digest, e);
    const lease = new ModuleLease(this, e);
    this.trim();
    return lease;
  }

  /** Evicts unused modules, least recently used first, until the unused ones fit the bounds. */
  trim() {
    let count = 0;
    let bytes = 0;
    for (const e of this.#entries.values()) {
      if (e.users === 0) {
        count++;
        bytes += e.bytes;
      }
    }
    for (const [digest, e] of this.#entries) {
      if (count <= this.maxEntries && bytes <= this.maxBytes) break;
      if (e.users > 0) continue;
      this.#entries.delete(digest);
      count--;
      bytes -= e.bytes;
    }
  }

  /** Digests held, least recently used first, with how many revisions use each. */
  entries() {
    return [...this.#entries.values()].map((e) => ({ digest: e.digest, users: e.users, bytes: e.bytes }));
  }
}
