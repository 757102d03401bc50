// Compiles a module off the app's event loop (compile-worker.js), within a time budget: a
// compile past it is abandoned by terminating its thread, and the load fails.

import { Worker } from 'node:worker_threads';

const WORKER_URL = new URL('./compile-worker.js', import.meta.url);

/**
 * @param {Uint8Array} wasm the module as delivered (not modified; copied to the thread)
 * @param {{maxMemoryBytes: number, compileTimeoutMs: number}} cfg
 * @returns {Promise<{ok: true, module: WebAssembly.Module, caps: object} | {ok: false, kind: string, detail: string}>}
 */
export function compileModule(wasm, cfg) {
  const bytes = new ArrayBuffer(wasm.byteLength);
  new Uint8Array(bytes).set(wasm);
  return new Promise((resolve) => {
    const worker = new Worker(WORKER_URL, {
      workerData: { bytes, limitBytes: cfg.maxMemoryBytes },
      transferList: [bytes],
    });
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void worker.terminate();
      resolve(r);
    };
    const timer = setTimeout(() => finish({
      ok: false, kind: 'compile_timeout', detail: `compile did not finish within its budget of ${cfg.compileTimeoutMs} ms`,
    }), cfg.compileTimeoutMs);
    worker.once('message', finish);
    worker.once('error', (err) => finish({ ok: false, kind: 'invalid_wasm', detail: `invalid wasm: ${err?.message ?? err}` }));
    worker.once('exit', (code) => finish({ ok: false, kind: 'invalid_wasm', detail: `invalid wasm: compile thread exited with code ${code}` }));
  });
}
