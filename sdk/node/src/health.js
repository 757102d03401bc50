// Health per plugin revision (docs/protocol.md, `health`), counted as hotload-host counts it
// (plugin-sidecar/protocol/src/health.rs): every call counts on the revision it started on,
// with its wall time in the host (instance checkout included) in fixed latency buckets and,
// if it failed, its kind:
//
//   trap     the guest trapped, answered out of range, or the runtime stopped it
//   timeout  the call ran past callTimeoutMs
//   memory   the guest grew past maxMemoryBytes
//   failed   no instance free within checkoutTimeoutMs, none could be re-created, or the app
//            marked a returned call failed (markFailed)
//
// takeHealth() drains: it returns what happened since the previous takeHealth(). A revision
// that was swapped out keeps its counts until they are taken. One thread: no locks needed.

/** How often an AppClient sends the counts while calls happen. */
export const HEALTH_INTERVAL_MS = 1000;

/** Upper bounds (µs) of every latency bucket but the last: 1-2-5 steps, 10 µs to 10 s. */
export const LATENCY_BOUNDS_US = Object.freeze([
  10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
  500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
]);

/** Buckets in a report: one per bound, one for slower calls. */
export const LATENCY_BUCKETS = LATENCY_BOUNDS_US.length + 1;

/** The bucket of a call that took `micros` µs (whole µs): the first bound ≥ it, else the last. */
export function latencyBucket(micros) {
  const us = Math.max(0, Math.floor(micros));
  let lo = 0;
  let hi = LATENCY_BOUNDS_US.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (LATENCY_BOUNDS_US[mid] < us) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** How a call's error counts: null (no error), 'trap', 'timeout', 'memory' or 'failed'. */
export function errorKindOf(err) {
  if (err === undefined || err === null) return null;
  if (err.kind !== 'handle') return 'failed'; // busy, reinstantiate, closed
  switch (err.fault) {
    case 'timeout': return 'timeout';
    case 'memory_limit': return 'memory';
    case 'trap': case 'bad_range': case 'other': return 'trap';
    default: return 'failed';
  }
}

function emptyCounts(plugin, revision) {
  return {
    plugin, revision, calls: 0,
    errors: { trap: 0, timeout: 0, memory: 0, failed: 0 },
    latency_us: new Array(LATENCY_BUCKETS).fill(0),
  };
}

/** One (plugin, revision)'s counts, shared by every Revision object of that pair. */
class Entry {
  users = 0;

  constructor(plugin, revision) {
    this.counts = emptyCounts(plugin, revision);
  }

  record(elapsedMs, kind) {
    const c = this.counts;
    c.calls++;
    if (kind) c.errors[kind]++;
    c.latency_us[latencyBucket(elapsedMs * 1000)]++;
  }

  markFailed() {
    this.counts.errors.failed++;
  }

  /**
   * Drains the counts. A report never has more failed calls than calls (the sidecar refuses
   * one): marks beyond that wait for the next report with calls.
   */
  take() {
    const out = this.counts;
    const e = out.errors;
    const room = Math.max(0, out.calls - e.trap - e.timeout - e.memory);
    const failed = Math.min(e.failed, room);
    this.counts = emptyCounts(out.plugin, out.revision);
    this.counts.errors.failed = e.failed - failed;
    e.failed = failed;
    return out;
  }
}

/** A host's counts per (plugin, revision). */
export class HealthTable {
  /** @type {Map<string, Entry>} */
  #entries = new Map();

  /** The entry a revision that starts serving counts in. */
  join(plugin, revision) {
    const key = `${plugin}\0${revision}`;
    let e = this.#entries.get(key);
    if (!e) {
      e = new Entry(plugin, revision);
      this.#entries.set(key, e);
    }
    e.users++;
    return e;
  }

  /** Drains every entry (those with calls, sorted by plugin and revision); closed ones go. */
  take() {
    const out = [];
    for (const [key, e] of this.#entries) {
      const c = e.take();
      if (c.calls > 0) out.push(c);
      if (e.users === 0 && e.counts.errors.failed === 0) this.#entries.delete(key);
    }
    const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
    return out.sort((a, b) => cmp(a.plugin, b.plugin) || cmp(a.revision, b.revision));
  }
}
