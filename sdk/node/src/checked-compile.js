// One compile with every check a load makes before instantiating: parse the module, check
// its memory against the limit, instrument it (wasm-binary.js: memory.grow past the limit
// traps and, for calls inline, the guest looks at the clock every TICK_EVERY steps), compile,
// check the ABI and the imports. Runs inside a pooled worker thread (instance-worker.js, op `compile`), so
// nothing of it runs on the app's event loop; the main thread bounds it by compileTimeoutMs.
//
// Resolves {module, caps} (a WebAssembly.Module crosses threads without a copy of its code)
// or {refused: {kind, detail}} with the words of hotload-host.

import * as abi from './abi.js';
import { WASI_FUNCTIONS, WASI_MODULE } from './wasi.js';
import { TICK_EVERY } from './guest.js';
import { WasmFormatError, instrument, parseModule } from './wasm-binary.js';

const refuse = (kind, detail) => ({ refused: { kind, detail } });

/** V8's words for why `bytes` do not validate (WebAssembly.validate gives only false). */
function validationError(bytes) {
  try {
    new WebAssembly.Module(bytes);
  } catch (err) {
    return err.message;
  }
  return 'module does not validate';
}

/**
 * @param {Uint8Array} bytes the module as delivered
 * @param {number} limit the host's maxMemoryBytes
 * @param {boolean} checks deadline checks in the guest's code (calls inline; see wasm-binary.js)
 * @returns {Promise<{module: WebAssembly.Module, caps: object} | {refused: {kind: string, detail: string}}>}
 */
export async function checkedCompile(bytes, limit, checks) {
  let info;
  let instrumented;
  try {
    info = parseModule(bytes);
    const mems = info.memories;
    if (mems.length > 1) throw new WasmFormatError(`module declares ${mems.length} memories, at most 1 is allowed`);
    // Shared memory is the threads proposal, which hotload-host's wasmtime is built without;
    // an atomic wait on it would block the guest where no deadline check runs.
    if (mems.some((m) => m.shared)) throw new WasmFormatError('shared memory is not supported (threads)');
    if (mems.length === 1 && mems[0].min * 65536 > limit) {
      throw new WasmFormatError(`memory minimum of ${mems[0].min} pages (${mems[0].min * 65536} bytes) exceeds the limit of ${limit} bytes`);
    }
    // The module as delivered must be valid by itself: the rewrite appends globals, a type and
    // a function, and an invalid module that names them (`global.set` of the budget) would
    // become valid and could turn its deadline off.
    if (!WebAssembly.validate(bytes)) throw new WasmFormatError(validationError(bytes));
    instrumented = instrument(bytes, info, { limitPages: Math.floor(limit / 65536), tickEvery: TICK_EVERY, checks });
  } catch (err) {
    if (err instanceof WasmFormatError) return refuse('invalid_wasm', `invalid wasm: ${err.message}`);
    throw err;
  }
  let module;
  try {
    module = await WebAssembly.compile(instrumented);
  } catch (err) {
    return refuse('invalid_wasm', `invalid wasm: ${err.message}`);
  }
  let caps;
  try {
    caps = abi.checkExports(info.exports);
  } catch (err) {
    return refuse('abi', `ABI violation: ${err.message}`);
  }
  const bad = info.imports.find((i) => i.module !== WASI_MODULE || i.kind !== 'func' || !WASI_FUNCTIONS.has(i.name));
  if (bad) {
    return refuse('abi',
      `ABI violation: imports cannot be satisfied (plugins get none): unknown import: \`${bad.module}::${bad.name}\` has not been defined`);
  }
  return { module, caps };
}
