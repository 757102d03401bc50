// One compile, alone in a worker thread, so that nothing of it runs on the app's event loop:
// parse the module, check its memory against the limit, rewrite memory.grow
// (wasm-binary.js), compile, check the ABI and the imports. Answers
// {ok: true, module, caps} (a WebAssembly.Module crosses threads without a copy of its
// code) or {ok: false, kind, detail} with the words of hotload-host.

import { parentPort, workerData } from 'node:worker_threads';

import * as abi from './abi.js';
import { WASI_FUNCTIONS, WASI_MODULE } from './wasi.js';
import { WasmFormatError, instrumentMemoryGrow, parseModule } from './wasm-binary.js';

async function compile(bytes, limit) {
  let info;
  let instrumented;
  try {
    info = parseModule(bytes);
    const mems = info.memories;
    if (mems.length > 1) throw new WasmFormatError(`module declares ${mems.length} memories, at most 1 is allowed`);
    if (mems.length === 1 && mems[0].min * 65536 > limit) {
      throw new WasmFormatError(`memory minimum of ${mems[0].min} pages (${mems[0].min * 65536} bytes) exceeds the limit of ${limit} bytes`);
    }
    instrumented = instrumentMemoryGrow(bytes, info, Math.floor(limit / 65536));
  } catch (err) {
    if (err instanceof WasmFormatError) return { ok: false, kind: 'invalid_wasm', detail: `invalid wasm: ${err.message}` };
    throw err;
  }
  let module;
  try {
    module = await WebAssembly.compile(instrumented);
  } catch (err) {
    return { ok: false, kind: 'invalid_wasm', detail: `invalid wasm: ${err.message}` };
  }
  let caps;
  try {
    caps = abi.checkExports(info.exports);
  } catch (err) {
    return { ok: false, kind: 'abi', detail: `ABI violation: ${err.message}` };
  }
  const bad = info.imports.find((i) => i.module !== WASI_MODULE || i.kind !== 'func' || !WASI_FUNCTIONS.has(i.name));
  if (bad) {
    return {
      ok: false,
      kind: 'abi',
      detail: `ABI violation: imports cannot be satisfied (plugins get none): unknown import: \`${bad.module}::${bad.name}\` has not been defined`,
    };
  }
  return { ok: true, module, caps };
}

compile(new Uint8Array(workerData.bytes), workerData.limitBytes)
  .then((r) => parentPort.postMessage(r))
  .catch((err) => parentPort.postMessage({ ok: false, kind: 'invalid_wasm', detail: `invalid wasm: ${err?.message ?? err}` }));
