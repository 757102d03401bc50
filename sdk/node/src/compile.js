// Compiles a module off the app's event loop, in a thread borrowed from the host's pool
// (checked-compile.js runs there), within a time budget: a compile past it is abandoned by
// terminating its thread (the pool starts another in the background), and the load fails.

import { failureText } from './errors.js';

/**
 * @param {Uint8Array} wasm the module as delivered (not modified; copied to the thread)
 * @param {{compileTimeoutMs: number}} cfg
 * @param {import('./worker-pool.js').WorkerPool} pool
 * @returns {Promise<{ok: true, module: WebAssembly.Module, caps: object} | {ok: false, kind: string, detail: string}>}
 */
export async function compileModule(wasm, cfg, pool) {
  let thread;
  try {
    thread = await pool.lease();
  } catch (err) {
    return { ok: false, kind: 'invalid_wasm', detail: `invalid wasm: no thread to compile on: ${err.message}` };
  }
  const bytes = new ArrayBuffer(wasm.byteLength);
  new Uint8Array(bytes).set(wasm);
  // Deadline checks in the guest's code only for calls inline: a worker thread is terminated
  // at the deadline instead, and the checks cost a tight loop up to twice its time.
  const checks = cfg.calls !== 'threads';
  const r = await thread.request({ op: 'compile', timeoutMs: cfg.compileTimeoutMs, bytes, checks }, cfg.compileTimeoutMs, [bytes]);
  pool.giveBack(thread);
  if (r.ok) {
    const { module, caps, refused } = r.value;
    return refused ? { ok: false, ...refused } : { ok: true, module, caps };
  }
  if (r.failure.type === 'fault' && r.failure.fault.type === 'timeout') {
    return { ok: false, kind: 'compile_timeout', detail: `compile did not finish within its budget of ${cfg.compileTimeoutMs} ms` };
  }
  return { ok: false, kind: 'invalid_wasm', detail: `invalid wasm: ${failureText(r.failure)}` };
}
