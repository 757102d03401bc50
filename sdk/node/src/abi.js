// The plugin ABI (plugin-host/src/abi.rs), for the Node host: export names, the packed
// (ptr, len) convention, the range check and the export check, with the same wording of
// every error as hotload-host so a plugin author reads the same reason from every SDK.

/** WASI reactor initialiser, called once per instance when exported. */
export const INITIALIZE = '_initialize';
/** Name of the exported linear memory. */
export const MEMORY = 'memory';
/** Export that hands out buffers for the host to write inputs into. */
export const ALLOC = 'alloc';
/** Export that handles one request. */
export const HANDLE = 'handle';
/** Optional export that receives the plugin config. */
export const CONFIGURE = 'configure';
/** Optional export run before the swap. */
export const SELF_CHECK = 'self_check';
/** Optional export that snapshots state on the outgoing revision. */
export const SAVE_STATE = 'save_state';
/** Optional export that takes the snapshot on the incoming revision. */
export const RESTORE_STATE = 'restore_state';

/**
 * Packs a pointer and a length the way plugins return them: `(ptr << 32) | len`.
 * @param {number} ptr @param {number} len @returns {bigint}
 */
export function pack(ptr, len) {
  return BigInt.asIntN(64, (BigInt(ptr >>> 0) << 32n) | BigInt(len >>> 0));
}

/**
 * Splits a packed `(ptr, len)` returned by a plugin.
 * @param {bigint} packed @returns {[number, number]}
 */
export function unpack(packed) {
  const bits = BigInt.asUintN(64, packed);
  return [Number(bits >> 32n), Number(bits & 0xffffffffn)];
}

/**
 * `[ptr, ptr + len)` if it lies inside a memory of `memoryLen` bytes, else null: the plugin
 * is untrusted, so a bad range is an error, never an out-of-bounds read.
 * @returns {[number, number] | null}
 */
export function checkedRange(ptr, len, memoryLen) {
  const end = ptr + len; // both < 2^32: exact in a double
  return end <= memoryLen ? [ptr, end] : null;
}

function describe(e) {
  if (e.kind === 'memory') return 'Memory';
  if (e.kind === 'func') return `Func(${JSON.stringify(e.signature ?? '?')})`;
  return 'Other';
}

/**
 * Checks a module's exports against the ABI; returns the optional exports it has, or throws
 * an Error whose message names the export and what was expected.
 * @param {{name: string, kind: string, signature?: string}[]} exports
 * @returns {{configure: boolean, selfCheck: boolean, saveState: boolean, restoreState: boolean}}
 */
export function checkExports(exports) {
  const find = (name) => exports.find((e) => e.name === name);
  const mem = find(MEMORY);
  if (!mem) throw new Error(`missing export \`${MEMORY}\` (memory)`);
  if (mem.kind !== 'memory') throw new Error(`export \`${MEMORY}\` must be a memory, found ${describe(mem)}`);
  const func = (name, sig, required) => {
    const e = find(name);
    if (!e) {
      if (required) throw new Error(`missing export \`${name}\` ${sig}`);
      return false;
    }
    if (e.kind !== 'func') throw new Error(`export \`${name}\` must be a function ${sig}, found ${describe(e)}`);
    if (e.signature !== sig) throw new Error(`export \`${name}\` has signature ${e.signature}, want ${sig}`);
    return true;
  };
  func(ALLOC, '(i32)->i32', true);
  func(HANDLE, '(i32,i32)->i64', true);
  return {
    configure: func(CONFIGURE, '(i32,i32)->i32', false),
    selfCheck: func(SELF_CHECK, '()->i32', false),
    saveState: func(SAVE_STATE, '()->i64', false),
    restoreState: func(RESTORE_STATE, '(i32,i32)->i32', false),
  };
}
