// The layout of the memory a pooled worker thread shares with the main thread
// (worker-pool.js ⇄ instance-worker.js): one SharedArrayBuffer per thread, through which every
// request is rung and answered without a message, a structured clone or a wake-up of the
// other thread's event loop.
//
//   words (Int32)   REQ   the sequence number of the request posted last (main writes)
//                   RESP  the sequence number of the request answered last (worker writes)
//                   OP, LEN, TIMEOUT            the request: its op, the length of its bytes in
//                                               DATA (LEN_MESSAGE: its payload is a message on
//                                               the thread's port), its deadline in ms
//                   ANSWER, ALEN                how it was answered: ANSWER_BYTES (ALEN bytes in
//                                               DATA), ANSWER_NULL, or ANSWER_MESSAGE (a message
//                                               on the port: failures, compiled modules, large
//                                               outputs)
//                   HOLDING                     the thread holds an instance (worker writes)
//                   POOLED                      the thread is idle in the pool (main writes)
//                   HAS_MESSAGE                 a message on the port comes with the request
//                   BROKEN                      a request of a chain whose earlier request
//                                               failed: not run, answered as such
//                   BEGUN                       the sequence number of the request the thread
//                                               took up last (worker writes)
//   clock (BigInt64) STEP, STEP_BEGAN  the step of a `start` running and process.hrtime when
//                                      it began (worker writes; the deadline reads it)
//                    IDLE_SINCE        process.hrtime when the thread was given back (main)
//   DATA            the bytes of a request (input, state) and of its answer (output, state)
//
// A request: main writes the payload and OP/LEN/TIMEOUT, then Atomics.store(REQ) and notify;
// the worker, asleep in Atomics.wait on REQ, runs it, writes the answer, then
// Atomics.store(RESP) and notify; main waits for RESP with Atomics.waitAsync (the promise
// settles as a task of the event loop). One request at a time per thread. A payload or an
// answer that does not fit DATA, and anything not bytes, travels as a message on a port the
// other side reads synchronously (receiveMessageOnPort) once the doorbell rang.
//
// A chain: the requests of one step of a load, one per thread (start every instance a load
// builds, restore the state into each), set up by the main thread at once and rung by it
// only at the head: each thread, done, rings the next itself (its SharedArrayBuffer and
// sequence number come in the request's message), with BROKEN set if it failed, and only the
// last rings the main thread. Waking a sleeping thread costs the waker a system call (10-100 µs
// on a busy 2-core VM), so the main thread rings once per step instead of once per instance.

export const REQ = 0;
export const RESP = 1;
export const OP = 2;
export const LEN = 3;
export const TIMEOUT = 4;
export const ANSWER = 5;
export const ALEN = 6;
export const HOLDING = 7;
export const POOLED = 8;
export const HAS_MESSAGE = 9;
export const BROKEN = 10;
export const BEGUN = 11;
export const WORDS = 16;

export const STEP = 0;
export const STEP_BEGAN = 1;
export const IDLE_SINCE = 2;
export const CLOCKS = 4;

const CLOCK_OFFSET = WORDS * 4;
export const DATA_OFFSET = CLOCK_OFFSET + CLOCKS * 8;
/** Bytes of a request or an answer that travel in shared memory; larger ones go as messages. */
export const DATA_BYTES = 64 * 1024;

export const OP_HANDLE = 1;
export const OP_SAVE_STATE = 2;
export const OP_RESTORE_STATE = 3;
export const OP_START = 4;
export const OP_COMPILE = 5;

/** BROKEN: an earlier request of the chain failed; its state was too large to hand on. */
export const BROKEN_FAILED = 1;
export const BROKEN_TOO_LARGE = 2;

/** LEN of a request whose payload is a message on the port. */
export const LEN_MESSAGE = -1;

export const ANSWER_BYTES = 1;
export const ANSWER_NULL = 2;
export const ANSWER_MESSAGE = 3;

/** The three views of one thread's shared memory. */
export function views(shared) {
  return {
    words: new Int32Array(shared, 0, WORDS),
    clocks: new BigInt64Array(shared, CLOCK_OFFSET, CLOCKS),
    data: new Uint8Array(shared, DATA_OFFSET, DATA_BYTES),
  };
}

export function allocate() {
  return new SharedArrayBuffer(DATA_OFFSET + DATA_BYTES);
}
