// Warm worker threads (instance-worker.js, one V8 isolate each), shared by every revision of
// one host. Starting a thread costs tens of milliseconds of CPU (an isolate, a module graph);
// a load borrows threads that are already running instead, and a revision that goes away
// gives its threads back, so swapping v1 → v2 → v1 starts no thread at all once warm.
//
//   lease()        an idle thread, else one started in the background, else a new one
//   reserve(n)     threads started in the background until n are idle or starting: those a
//                  revision leases when calls first need its later instances (revision.js)
//   giveBack(t)    t waits, idle, for the next revision; past `spare` idle threads it is
//                  stopped instead. The instance it held is dropped by its next `start`, or by
//                  the thread itself once it has waited IDLE_RESET_MS: not at once, so that a
//                  swap does not wake four threads just to clear them
//   a dead thread  (terminated at a deadline, or crashed) is replaced in the background, so
//                  the next checkout finds a warm thread instead of starting one on the
//                  request path
//
// Requests travel through memory shared with each thread (channel.js), not as messages: a
// call is a copy into shared memory, one futex wake of the thread and, for the answer, one
// task on the event loop. The steps of a load run as chains (WorkerThread.chain): the main
// thread sets up every thread's request and wakes the first; each thread wakes the next.
// Waking a sleeping thread is the dearest thing the main thread does (a system call, 10 µs to
// several hundred on a busy 2-core VM), so a load wakes two threads, not nine.
//
// A thread is what the deadline acts on: past a request's deadline it is terminated, which
// stops guest code wherever it is. One timer per pool (Watchdog) keeps every deadline. The
// memory limit travels in workerData, so a pool serves the one host (and limits) that made it.

import { MessageChannel, Worker, receiveMessageOnPort } from 'node:worker_threads';

import * as ch from './channel.js';

const WORKER_URL = new URL('./instance-worker.js', import.meta.url);
/** How long a thread may take to start (not guest code: no plugin deadline applies). */
const SPAWN_TIMEOUT_MS = 30_000;
/** How long an idle thread keeps the instance it held (its memory) before dropping it. */
export const IDLE_RESET_MS = 1000;
/**
 * A deadline timer fires on the event loop's millisecond clock, up to a millisecond before
 * performance.now() reaches the deadline: within this, a request counts as expired.
 */
const SLACK_MS = 1;

const TIMEOUT = Object.freeze({ type: 'fault', fault: { type: 'timeout' } });
const GONE = Object.freeze({ ok: false, failure: { type: 'fault', fault: { type: 'other', message: 'instance is gone' } }, step: 0 });
const OK_NULL = Object.freeze({ ok: true, value: null });
const MAX_TIMEOUT_MS = 0x7fffffff;

const OPS = { handle: ch.OP_HANDLE, save_state: ch.OP_SAVE_STATE, restore_state: ch.OP_RESTORE_STATE, start: ch.OP_START, compile: ch.OP_COMPILE };

/** One request set up on a thread: how it settles and when it expires. */
class Pending {
  resolve = null;
  promise = new Promise((resolve) => { this.resolve = resolve; });
  settled = false;
  step = 0;
  /** The chain it belongs to, if any, and the request after it there (which it rings). */
  chain = null;
  next = null;
  /** In a chain, after its first request: rung by the thread before it, not by this one. */
  chained = false;
  /** Seen taken up by its thread (a request of a chain). */
  begun = false;

  constructor(thread, seq, before, timeoutMs, multiStep) {
    this.thread = thread;
    this.seq = seq;
    /** RESP while this request was unanswered. */
    this.before = before;
    this.timeoutMs = timeoutMs;
    this.deadline = performance.now() + timeoutMs;
    this.multiStep = multiStep;
  }
}

/**
 * The deadlines of every request in flight on one pool's threads, on one timer: a request
 * costs no timer of its own (a call adds itself to a set and removes itself), the timer fires
 * at the earliest deadline and is re-armed for the next. It keeps the process alive while a
 * request is in flight, and only then.
 */
class Watchdog {
  /** @type {Set<Pending>} */
  #pending = new Set();
  #timer = null;
  #at = Infinity;
  #refed = false;

  add(p) {
    this.#pending.add(p);
    if (p.deadline < this.#at) this.#arm(p.deadline);
    else if (!this.#refed) {
      this.#timer.ref();
      this.#refed = true;
    }
  }

  remove(p) {
    this.#pending.delete(p);
    if (this.#pending.size === 0 && this.#refed) {
      this.#timer.unref();
      this.#refed = false;
    }
  }

  #arm(at) {
    clearTimeout(this.#timer);
    this.#at = at;
    this.#timer = setTimeout(this.#fire, Math.max(1, Math.ceil(at - performance.now())));
    this.#refed = true;
  }

  #fire = () => {
    this.#timer = null;
    this.#at = Infinity;
    this.#refed = false;
    let next = Infinity;
    for (const p of this.#pending) {
      if (p.deadline <= performance.now() + SLACK_MS) p.thread.expire(p);
      if (this.#pending.has(p) && p.deadline < next) next = p.deadline;
    }
    if (next < Infinity) this.#arm(next);
  };
}

/** One worker thread, running one request at a time under a deadline. */
export class WorkerThread {
  /** @type {Worker} */
  #worker;
  /** The main thread's end of the thread's port (never started: read synchronously). */
  #port;
  #shared;
  #words;
  #clocks;
  #data;
  #watchdog;
  /** @type {Pending | null} */
  #pending = null;
  #seq = 0;
  dead = false;

  constructor(worker, port, shared, watchdog) {
    this.#worker = worker;
    this.#port = port;
    this.#shared = shared;
    ({ words: this.#words, clocks: this.#clocks, data: this.#data } = ch.views(shared));
    this.#watchdog = watchdog;
    worker.on('error', (err) => this.#crash(`worker thread failed: ${err?.message ?? err}`));
    worker.on('exit', (code) => this.#crash(`worker thread exited with code ${code}`));
    // A thread never keeps the process alive (a request in flight does: its deadline timer).
    worker.unref();
  }

  /** Starts a thread and waits until it listens. @returns {Promise<WorkerThread>} */
  static async spawn(workerData, watchdog = new Watchdog()) {
    const shared = ch.allocate();
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(WORKER_URL, {
      workerData: { ...workerData, idleResetMs: IDLE_RESET_MS, shared, port: port2 },
      transferList: [port2],
    });
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
    return new WorkerThread(worker, port1, shared, watchdog);
  }

  /** It may hold an instance (it ran a start or a compile, and has not dropped it since). */
  get holding() {
    return Atomics.load(this.#words, ch.HOLDING) === 1;
  }

  /** In the pool (the thread drops its instance after IDLE_RESET_MS of it), or leased. */
  set pooled(yes) {
    if (yes) Atomics.store(this.#clocks, ch.IDLE_SINCE, process.hrtime.bigint());
    Atomics.store(this.#words, ch.POOLED, yes ? 1 : 0);
  }

  /**
   * Runs one request, `msg` = {op, timeoutMs, ...payload}: `handle` {input}, `save_state`,
   * `restore_state` {state}, `start` {module, config, selfCheck}, `compile` {bytes}. Past
   * `timeoutMs` the thread is terminated. A request of several steps (`start`) has
   * `timeoutMs` for each, counted from when the step began. Resolves {ok: true, value} or
   * {ok: false, failure, step} (step: the one that failed, 0 for a request of one step);
   * never rejects. One request at a time.
   * @returns {Promise<{ok: true, value: any} | {ok: false, failure: object, step: number}>}
   */
  request(msg, timeoutMs, transfer) {
    if (this.dead) return Promise.resolve(GONE);
    const p = this.#prepare(msg, timeoutMs, transfer, null);
    this.#ring(p.seq, false);
    this.#wait(p);
    return p.promise;
  }

  /**
   * Runs requests on several threads one after the other, ringing only the first: each
   * thread rings the next when done (channel.js), and the main thread hears only from the
   * last. A request after one that failed is not run (it fails as such). Each has its own
   * deadline, counted from when its thread takes it up. Resolves like request(), one result
   * per entry, in order.
   * An entry with `pipe` hands its output (save_state), or its input (restore_state), on to
   * the next as that one's bytes (channel.js).
   * @param {{thread: WorkerThread, msg: object, timeoutMs: number, pipe?: boolean}[]} entries distinct threads
   * @returns {Promise<object[]>}
   */
  static chain(entries) {
    // One request at a time per thread: its shared memory holds one.
    if (new Set(entries.map((e) => e.thread)).size !== entries.length) throw new Error('a chain takes each thread once');
    const live = [];
    const out = entries.map((e) => {
      if (e.thread.dead) return Promise.resolve(GONE);
      live.push(e);
      return null;
    });
    if (live.length > 0) {
      const chain = { members: [] };
      let next = null;
      let after = null;
      for (let i = live.length - 1; i >= 0; i--) {
        const { thread, msg, timeoutMs, pipe = false } = live[i];
        if (next !== null) next.pipe = pipe;
        const p = thread.#prepare(msg, timeoutMs, undefined, next);
        p.chain = chain;
        p.next = after;
        p.chained = i > 0;
        chain.members[i] = p;
        next = { shared: thread.#shared, seq: p.seq };
        after = p;
      }
      const head = chain.members[0];
      head.thread.#ring(head.seq, false);
      const tail = chain.members[live.length - 1];
      tail.thread.#wait(tail);
      let j = 0;
      for (let i = 0; i < out.length; i++) if (out[i] === null) out[i] = chain.members[j++].promise;
    }
    return Promise.all(out);
  }

  /**
   * Sets a request up (its payload in shared memory or a message, its deadline with the
   * watchdog) without ringing. `next`: the request of a chain to ring when done.
   */
  #prepare(msg, timeoutMs, transfer, next) {
    const op = OPS[msg.op];
    if (op === undefined) throw new TypeError(`unknown op ${msg.op}`);
    const w = this.#words;
    let bytes = null;
    let key = null;
    if (op === ch.OP_HANDLE) {
      bytes = msg.input;
      key = 'input';
    } else if (op === ch.OP_RESTORE_STATE) {
      bytes = msg.state;
      key = 'state';
    }
    let post = op === ch.OP_START || op === ch.OP_COMPILE ? msg : null;
    if (bytes === null) {
      w[ch.LEN] = 0;
    } else if (bytes.length <= this.#data.length) {
      this.#data.set(bytes);
      w[ch.LEN] = bytes.length;
    } else {
      // A view into a larger buffer (Node's Buffer pool) would be cloned whole.
      const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : Uint8Array.prototype.slice.call(bytes);
      post = { [key]: own };
      w[ch.LEN] = ch.LEN_MESSAGE;
    }
    if (next !== null) post = { ...post, next };
    w[ch.HAS_MESSAGE] = post === null ? 0 : 1;
    if (post !== null) this.#port.postMessage(post, transfer);
    w[ch.OP] = op;
    w[ch.TIMEOUT] = Math.min(MAX_TIMEOUT_MS, Math.max(0, Math.ceil(timeoutMs)));
    w[ch.BROKEN] = 0;
    if (op === ch.OP_START) Atomics.store(this.#clocks, ch.STEP, 0n);
    this.#seq = (this.#seq + 1) | 0;
    const p = new Pending(this, this.#seq, Atomics.load(w, ch.RESP), timeoutMs, op === ch.OP_START);
    this.#pending = p;
    this.#watchdog.add(p);
    return p;
  }

  #ring(seq, broken) {
    if (broken) this.#words[ch.BROKEN] = ch.BROKEN_FAILED;
    Atomics.store(this.#words, ch.REQ, seq);
    Atomics.notify(this.#words, ch.REQ);
  }

  #wait(p) {
    const r = Atomics.waitAsync(this.#words, ch.RESP, p.before);
    if (r.async) r.value.then(() => this.#woke(p));
    else this.#woke(p);
  }

  #woke(p) {
    if (p.settled) return;
    const resp = Atomics.load(this.#words, ch.RESP);
    if (resp !== p.seq) {
      p.before = resp;
      this.#wait(p);
      return;
    }
    this.#settle(p, this.#answer());
    if (p.chain) WorkerThread.#sweep(p.chain);
  }

  /** Settles every request of a chain that has been answered (the others settle later). */
  static #sweep(chain) {
    for (const p of chain.members) {
      const t = p.thread;
      if (!p.settled && Atomics.load(t.#words, ch.RESP) === p.seq) t.#settle(p, t.#answer());
    }
  }

  #answer() {
    const w = this.#words;
    switch (w[ch.ANSWER]) {
      case ch.ANSWER_BYTES:
        return { ok: true, value: Uint8Array.prototype.slice.call(this.#data, 0, w[ch.ALEN]) };
      case ch.ANSWER_NULL:
        return OK_NULL;
      default:
        return receiveMessageOnPort(this.#port)?.message
          ?? { ok: false, failure: { type: 'fault', fault: { type: 'other', message: 'the answer was lost' } }, step: 0 };
    }
  }

  /**
   * The deadline of the step `p` was armed for has passed (the pool's watchdog): a request
   * of a chain not taken up yet waits for the one before it (which has a deadline of its
   * own), and one taken up has its deadline from then; a later step of a `start` gets its
   * own deadline; else the thread is terminated.
   */
  expire(p) {
    if (p.settled) {
      this.#watchdog.remove(p);
      return;
    }
    // Answered, the wake-up still on its way (a main thread too busy to take it): not late.
    if (Atomics.load(this.#words, ch.RESP) === p.seq) {
      this.#woke(p);
      return;
    }
    if (p.chained && !p.begun) {
      if (Atomics.load(this.#words, ch.BEGUN) !== p.seq) {
        p.deadline = performance.now() + p.timeoutMs;
        return;
      }
      p.begun = true;
      if (this.#rearm(p)) return;
    }
    if (p.multiStep) {
      const step = Number(Atomics.load(this.#clocks, ch.STEP));
      if (step > p.step) {
        p.step = step;
        if (this.#rearm(p)) return;
      }
    }
    this.kill();
    this.#lost(p, { ok: false, failure: TIMEOUT, step: p.step });
  }

  /** Moves `p`'s deadline to timeoutMs after its current step began; false if that is past. */
  #rearm(p) {
    const began = Atomics.load(this.#clocks, ch.STEP_BEGAN);
    const left = p.timeoutMs - Number(process.hrtime.bigint() - began) / 1e6;
    if (left <= SLACK_MS) return false;
    p.deadline = performance.now() + left;
    return true;
  }

  #settle(p, result) {
    p.settled = true;
    if (this.#pending === p) this.#pending = null;
    this.#watchdog.remove(p);
    p.resolve(result);
  }

  /**
   * Settles `p`, which its (dead) thread will never answer; the rest of its chain goes on,
   * broken, from the request after it.
   */
  #lost(p, result) {
    this.#settle(p, result);
    if (!p.chain) return;
    const n = p.next;
    if (n && !n.settled) {
      if (n.thread.dead) n.thread.#lost(n, GONE);
      else n.thread.#ring(n.seq, true);
    }
    WorkerThread.#sweep(p.chain);
  }

  #crash(message) {
    this.dead = true;
    this.#release();
    const p = this.#pending;
    if (!p || p.settled) return;
    this.#lost(p, { ok: false, failure: { type: 'fault', fault: { type: 'other', message } },
      step: p.multiStep ? Number(Atomics.load(this.#clocks, ch.STEP)) : 0 });
  }

  /** Wakes a wait on an answer that will never come, so V8 lets it go. */
  #release() {
    Atomics.store(this.#words, ch.RESP, (this.#seq + 1) | 0);
    Atomics.notify(this.#words, ch.RESP);
  }

  /** Stops the thread (wherever its guest code is); it is never used again. */
  kill() {
    if (!this.dead) {
      this.dead = true;
      void this.#worker.terminate();
      this.#release();
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
  #watchdog = new Watchdog();
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
      if (!t.dead) {
        t.pooled = false;
        return t;
      }
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
      // It drops the instance it holds itself, once idle for IDLE_RESET_MS (instance-worker.js).
      thread.pooled = true;
      this.#idle.push(thread);
    }
  }

  #spawn() {
    this.started++;
    return WorkerThread.spawn(this.workerData, this.#watchdog);
  }

  /** Starts a thread in the background to stand in for one that died. */
  #replace() {
    if (!this.#closed && this.#idle.length + this.#warming.length < this.spare) this.#warm();
  }

  /**
   * Starts threads in the background until `n` (at most `spare`) are idle or starting: the
   * threads a revision will lease for the instances it builds when calls need them, so that
   * such a call does not wait for a thread to start.
   */
  reserve(n) {
    while (!this.#closed && this.#idle.length + this.#warming.length < Math.min(n, this.spare)) this.#warm();
  }

  /** Starts a thread in the background; the next lease that finds no idle thread takes it. */
  #warm() {
    const p = this.#spawn();
    this.#warming.push(p);
    p.then((t) => {
      const i = this.#warming.indexOf(p);
      if (i < 0) return; // a lease claimed it
      this.#warming.splice(i, 1);
      if (this.#closed) t.kill();
      else {
        t.pooled = true;
        this.#idle.push(t);
      }
    }, () => {
      const i = this.#warming.indexOf(p);
      if (i >= 0) this.#warming.splice(i, 1);
    });
  }

  /** Stops every idle thread now; threads given back later are stopped too. */
  close() {
    this.#closed = true;
    for (const t of this.#idle) t.kill();
    this.#idle = [];
  }
}
