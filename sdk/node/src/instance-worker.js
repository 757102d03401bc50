// A pooled worker thread (worker-pool.js), for a host whose calls run in threads and for
// every host's compiles: it holds at most one plugin instance at a time (guest.js), and
// serves one revision after another (`start` drops the instance it held), or compiles a
// module for a load. The main thread times every request and terminates this thread when a
// request outlives its deadline: that is what bounds a plugin that loops forever here, and a
// compile (V8 has no epoch interruption that an embedder in JavaScript can use, but
// Worker.terminate() stops a thread wherever it is, and wakes it from Atomics.wait). Modules
// for calls in threads are compiled without the deadline checks of calls inline
// (wasm-binary.js), which cost a tight loop up to twice its time.
//
// Requests come through the memory shared with the main thread (channel.js): the thread
// sleeps in Atomics.wait until the main thread rings, runs the request, writes the answer
// and rings back. No message, no structured clone and no turn of this thread's event loop
// for a call; `start` and `compile` carry a message (the compiled module, the bytes), read
// here synchronously. Answers are {ok: true, value} or {ok: false, failure} with a
// GuestFailure (errors.js). `start` runs several steps in one request, each under a deadline
// of its own: as step i begins it writes (i, now) into the shared clocks (no message), where
// the main thread's deadline looks before it terminates the thread; a failure names its step.
//
// The thread leaves Atomics.wait for its event loop after a `start` or a `compile`, and
// when it has waited POLL_MS for a request: V8 runs its own tasks for this isolate (garbage
// collection of dropped instances) there. An instance idle in the pool (POOLED) for
// idleResetMs is dropped then, without a request: a swap wakes no thread to clear it.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';

import * as ch from './channel.js';
import { checkedCompile } from './checked-compile.js';
import { Guest, StepFailure } from './guest.js';

const { limitBytes, limitPages, port, idleResetMs } = workerData;
const { words, clocks, data } = ch.views(workerData.shared);
const POLL_MS = Math.max(10, idleResetMs / 2);
const IDLE_RESET_NS = BigInt(Math.round(idleResetMs * 1e6));
const guest = new Guest({ limitBytes, limitPages });
/** The sequence number of the request handled last. */
let seen = 0;

/** The request's bytes: in shared memory, or in the message that came with it. */
function payload(msg, key) {
  const len = words[ch.LEN];
  return len === ch.LEN_MESSAGE ? msg[key] : data.subarray(0, len);
}

function message() {
  const m = receiveMessageOnPort(port);
  if (!m) throw new Error('request without its message');
  return m.message;
}

/** Not run: an earlier request of its chain failed (the load fails with that one). */
class Broken extends Error {}

function drop() {
  // The instance (and its memory) becomes garbage; the next revision instantiates afresh.
  guest.drop();
  Atomics.store(words, ch.HOLDING, 0);
}

const ops = {
  [ch.OP_HANDLE](msg) {
    return guest.handle(payload(msg, 'input'));
  },
  [ch.OP_SAVE_STATE]() {
    return guest.saveState();
  },
  [ch.OP_RESTORE_STATE](msg) {
    guest.restoreState(payload(msg, 'state'));
    return null;
  },
  // One request, one wake-up of this thread, instead of one per step.
  [ch.OP_START](msg) {
    drop();
    Atomics.store(words, ch.HOLDING, 1);
    guest.start(msg.module, msg.config, msg.selfCheck, msg.timeoutMs, (i) => {
      Atomics.store(clocks, ch.STEP_BEGAN, process.hrtime.bigint());
      Atomics.store(clocks, ch.STEP, BigInt(i));
    });
    return null;
  },
  [ch.OP_COMPILE]({ bytes, checks }) {
    drop();
    Atomics.store(words, ch.HOLDING, 1);
    return checkedCompile(new Uint8Array(bytes), limitBytes, checks);
  },
};

/** Rings back: the answer of request `seen` is in place. */
function ring() {
  Atomics.store(words, ch.RESP, seen);
  Atomics.notify(words, ch.RESP);
}

function answer(value) {
  if (value === null || value === undefined) {
    words[ch.ANSWER] = ch.ANSWER_NULL;
  } else if (value instanceof Uint8Array && value.length <= data.length) {
    data.set(value);
    words[ch.ALEN] = value.length;
    words[ch.ANSWER] = ch.ANSWER_BYTES;
  } else if (value instanceof Uint8Array) {
    const own = value.slice();
    port.postMessage({ ok: true, value: own }, [own.buffer]);
    words[ch.ANSWER] = ch.ANSWER_MESSAGE;
  } else {
    port.postMessage({ ok: true, value });
    words[ch.ANSWER] = ch.ANSWER_MESSAGE;
  }
  ring();
}

function fail(err) {
  if (err instanceof Broken) {
    port.postMessage({ ok: false, failure: { type: 'fault', fault: { type: 'other', message: 'not run: an earlier request of its chain failed' } }, step: 0, broken: true });
  }
  else if (err instanceof StepFailure) port.postMessage({ ok: false, failure: guest.failureOf(err.cause), step: err.step });
  else port.postMessage({ ok: false, failure: guest.failureOf(err) });
  words[ch.ANSWER] = ch.ANSWER_MESSAGE;
  ring();
}

/** Drops the instance of a thread idle in the pool for idleResetMs. */
function dropIfIdle() {
  if (Atomics.load(words, ch.HOLDING) !== 1 || Atomics.load(words, ch.POOLED) !== 1) return;
  if (process.hrtime.bigint() - Atomics.load(clocks, ch.IDLE_SINCE) >= IDLE_RESET_NS) drop();
}

/**
 * Rings the next request of a chain, marked broken if this one failed or was. A piped chain
 * (a state hand-over: save_state, then restore_state on every new instance) hands on the
 * state, written into the next thread's shared memory as its request's bytes; a state too
 * large for it breaks the chain (BROKEN_TOO_LARGE), and the main thread hands it over itself.
 */
function ringNext(next, broken, bytes) {
  const w = new Int32Array(next.shared, 0, ch.WORDS);
  if (broken) w[ch.BROKEN] = ch.BROKEN_FAILED;
  else if (next.pipe) {
    if (bytes.length > ch.DATA_BYTES) w[ch.BROKEN] = ch.BROKEN_TOO_LARGE;
    else {
      new Uint8Array(next.shared, ch.DATA_OFFSET, bytes.length).set(bytes);
      w[ch.LEN] = bytes.length;
    }
  }
  Atomics.store(w, ch.REQ, next.seq);
  Atomics.notify(w, ch.REQ);
}

const EMPTY = new Uint8Array(0);

/** What a request of a piped chain hands on: the state it saved, or the state it restored. */
function forwarded(op, msg, value) {
  if (op === ch.OP_SAVE_STATE) return value ?? EMPTY;
  return payload(msg, 'state');
}

const again = () => setImmediate(serve);

/** Runs requests as they are rung, until one that leaves for the event loop. */
function serve() {
  for (;;) {
    const req = Atomics.load(words, ch.REQ);
    if (req === seen) {
      if (Atomics.wait(words, ch.REQ, seen, POLL_MS) === 'timed-out') {
        dropIfIdle();
        again();
        return;
      }
      continue;
    }
    seen = req;
    const op = words[ch.OP];
    // When a request other than a call began (its step 0), for the deadline of a request of
    // a chain, which the main thread did not ring itself.
    if (op !== ch.OP_HANDLE) {
      Atomics.store(clocks, ch.STEP_BEGAN, process.hrtime.bigint());
      Atomics.store(clocks, ch.STEP, 0n);
    }
    Atomics.store(words, ch.BEGUN, seen);
    guest.deadline = performance.now() + words[ch.TIMEOUT];
    let msg = null;
    let value;
    let failed = false;
    try {
      if (words[ch.HAS_MESSAGE] === 1) msg = message();
      if (words[ch.BROKEN] !== 0) throw new Broken();
      value = ops[op](msg);
    } catch (err) {
      fail(err);
      failed = true;
    }
    if (!failed) {
      // Only `compile` is asynchronous (and never chained); guest calls answer without a
      // trip through a promise.
      if (value instanceof Promise) {
        value.then(answer, fail).then(again);
        return;
      }
      answer(value);
    }
    if (msg?.next) ringNext(msg.next, failed, failed || !msg.next.pipe ? null : forwarded(op, msg, value));
    if (op === ch.OP_START) break;
  }
  again();
}

parentPort.postMessage({ ready: true });
serve();
