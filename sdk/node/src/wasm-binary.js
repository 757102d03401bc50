// The Wasm binary format, only as far as the host needs it: the signatures of exports and
// imports (the ABI check; Node 20's WebAssembly.Module.exports() gives kinds, not types), the
// declared memories (the memory limit), and one rewrite, instrument(): every `memory.grow`
// past the limit becomes a trap the host can name, and every function entry and loop header
// counts down to a deadline check (an imported `hotload.tick`).
//
// Pure functions over bytes; nothing here runs guest code.

/** Raised for bytes that are not a module this host accepts; becomes `invalid wasm`. */
export class WasmFormatError extends Error {}

const VALTYPES = new Map([
  [0x7f, 'i32'], [0x7e, 'i64'], [0x7d, 'f32'], [0x7c, 'f64'],
  [0x7b, 'v128'], [0x70, 'funcref'], [0x6f, 'externref'],
]);
const EXPORT_KINDS = ['func', 'table', 'memory', 'global', 'tag'];

class Reader {
  constructor(bytes, pos = 0, end = bytes.length) {
    this.b = bytes;
    this.pos = pos;
    this.end = end;
  }
  fail(what) {
    throw new WasmFormatError(`${what} at byte ${this.pos}`);
  }
  byte() {
    if (this.pos >= this.end) this.fail('unexpected end');
    return this.b[this.pos++];
  }
  u32() {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = this.byte();
      if (shift === 28 && (byte & 0x70) !== 0) this.fail('integer too large');
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
      if (shift > 28) this.fail('integer representation too long');
    }
  }
  /** Skips a signed or unsigned LEB128 of at most `maxBytes` bytes. */
  skipLeb(maxBytes) {
    for (let i = 0; i < maxBytes; i++) {
      if ((this.byte() & 0x80) === 0) return;
    }
    this.fail('integer representation too long');
  }
  skip(n) {
    if (this.pos + n > this.end) this.fail('unexpected end');
    this.pos += n;
  }
  name() {
    const len = this.u32();
    this.skip(len);
    return Buffer.from(this.b.buffer, this.b.byteOffset + this.pos - len, len).toString('utf8');
  }
  valtype() {
    const t = this.byte();
    const name = VALTYPES.get(t);
    if (!name) this.fail(`unsupported value type 0x${t.toString(16)}`);
    return name;
  }
  limits() {
    const flags = this.byte();
    if (flags > 0x03) this.fail(`unsupported limits flags 0x${flags.toString(16)} (memory64)`);
    const min = this.u32();
    const max = flags & 1 ? this.u32() : null;
    return { min, max, shared: (flags & 2) !== 0 };
  }
}

/**
 * @typedef {{ name: string, kind: 'func'|'table'|'memory'|'global'|'tag', signature?: string }} ExportInfo
 * @typedef {{ module: string, name: string, kind: string }} ImportInfo
 * @typedef {{ exports: ExportInfo[], imports: ImportInfo[], memories: {min:number,max:number|null}[],
 *   sections: {id:number,start:number,end:number,contentStart:number}[], types: {params:string[],results:string[]}[],
 *   funcTypes: number[], importedFuncs: number, importedGlobals: number }} ModuleInfo
 */

function signature(type) {
  return `(${type.params.join(',')})->${type.results.join(',')}`;
}

/**
 * Reads what the host needs from a module. Throws WasmFormatError on malformed bytes.
 * @param {Uint8Array} bytes
 * @returns {ModuleInfo}
 */
export function parseModule(bytes) {
  const r = new Reader(bytes);
  if (bytes.length < 8 || r.byte() !== 0 || r.byte() !== 0x61 || r.byte() !== 0x73 || r.byte() !== 0x6d) {
    throw new WasmFormatError('not a wasm module: magic header \\0asm missing');
  }
  const version = r.byte() | (r.byte() << 8) | (r.byte() << 16) | (r.byte() << 24);
  if (version !== 1) throw new WasmFormatError(`unsupported wasm version ${version}`);
  const info = {
    exports: [], imports: [], memories: [], sections: [], types: [], funcTypes: [],
    importedFuncs: 0, importedGlobals: 0,
  };
  while (r.pos < bytes.length) {
    const start = r.pos;
    const id = r.byte();
    const size = r.u32();
    const contentStart = r.pos;
    const end = contentStart + size;
    if (end > bytes.length) r.fail(`section ${id} runs past the end of the module`);
    info.sections.push({ id, start, end, contentStart });
    const s = new Reader(bytes, contentStart, end);
    switch (id) {
      case 1: // type
        for (let n = s.u32(); n > 0; n--) {
          const form = s.byte();
          if (form !== 0x60) s.fail(`unsupported type form 0x${form.toString(16)}`);
          const params = [];
          for (let k = s.u32(); k > 0; k--) params.push(s.valtype());
          const results = [];
          for (let k = s.u32(); k > 0; k--) results.push(s.valtype());
          info.types.push({ params, results });
        }
        break;
      case 2: // import
        for (let n = s.u32(); n > 0; n--) {
          const module = s.name();
          const name = s.name();
          const kind = s.byte();
          if (kind === 0) {
            s.u32();
            info.importedFuncs++;
          } else if (kind === 1) {
            s.byte();
            s.limits();
          } else if (kind === 2) {
            info.memories.push({ ...s.limits(), imported: true });
          } else if (kind === 3) {
            s.valtype();
            s.byte();
            info.importedGlobals++;
          } else if (kind === 4) {
            s.byte();
            s.u32();
          } else {
            s.fail(`unknown import kind ${kind}`);
          }
          info.imports.push({ module, name, kind: EXPORT_KINDS[kind] });
        }
        break;
      case 3: // function
        for (let n = s.u32(); n > 0; n--) info.funcTypes.push(s.u32());
        break;
      case 5: // memory
        for (let n = s.u32(); n > 0; n--) info.memories.push({ ...s.limits(), imported: false });
        break;
      case 7: // export
        for (let n = s.u32(); n > 0; n--) {
          const name = s.name();
          const kind = s.byte();
          const index = s.u32();
          if (kind > 4) s.fail(`unknown export kind ${kind}`);
          info.exports.push({ name, kind: EXPORT_KINDS[kind], index });
        }
        break;
      default:
        break;
    }
    r.pos = end;
  }
  for (const e of info.exports) {
    if (e.kind !== 'func') continue;
    const typeIndex = e.index < info.importedFuncs ? null : info.funcTypes[e.index - info.importedFuncs];
    const type = typeIndex == null ? undefined : info.types[typeIndex];
    if (type) e.signature = signature(type);
  }
  return info;
}

function encodeU32(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

function memarg(r) {
  const align = r.u32();
  if (align & 0x40) r.u32(); // multi-memory: memory index
  r.skipLeb(10); // offset
}

// What scanBody reports, four numbers an event: kind, at, end, value.
const EV_LOOP = 1; // at = end = just past a `loop`'s blocktype
const EV_FUNC = 2; // [at, end) is a function index immediate (call, return_call, ref.func); value = the index
const EV_GROW = 3; // [at, end) is `memory.grow 0`

function blocktype(r) {
  if (r.pos >= r.end) r.fail('unexpected end');
  const bt = r.b[r.pos];
  if (bt === 0x40 || VALTYPES.has(bt)) r.pos++;
  else r.skipLeb(5);
}

/**
 * Walks one function body's instructions and pushes onto `ev` the events the rewrites need
 * (loop headers, function index immediates, memory.grow). Knows the immediates of MVP, sign
 * extension, saturating conversions, bulk memory, reference types, tail calls, SIMD and
 * threads; anything else is refused by name rather than misread.
 */
function scanBody(r, ev) {
  while (r.pos < r.end) {
    const at = r.pos;
    const op = r.b[r.pos++];
    if (op <= 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a || op === 0x1b ||
        (op >= 0x45 && op <= 0xc4) || op === 0xd1 || op === 0xd3 || op === 0xd5) {
      continue;
    }
    if (op === 0x19) continue; // catch_all (legacy exceptions)
    if ((op >= 0x02 && op <= 0x04) || op === 0x06) {
      blocktype(r);
      if (op === 0x03) ev.push(EV_LOOP, r.pos, r.pos, 0);
    } else if (op === 0x10 || op === 0x12 || op === 0xd2) {
      const s = r.pos;
      const v = r.u32();
      ev.push(EV_FUNC, s, r.pos, v);
    } else if (op === 0x07 || op === 0x08 || op === 0x09 || op === 0x18 ||
               op === 0x0c || op === 0x0d || op === 0x14 ||
               op === 0x15 || op === 0xd4 || op === 0xd6 ||
               (op >= 0x20 && op <= 0x26)) {
      r.u32();
    } else if (op === 0x0e) {
      for (let n = r.u32(); n >= 0; n--) r.u32();
    } else if (op === 0x11 || op === 0x13) {
      r.u32();
      r.u32();
    } else if (op === 0x1c) {
      for (let n = r.u32(); n > 0; n--) r.valtype();
    } else if (op >= 0x28 && op <= 0x3e) {
      memarg(r);
    } else if (op === 0x3f) {
      r.u32();
    } else if (op === 0x40) {
      const mem = r.u32();
      if (mem !== 0) r.fail('memory.grow of a memory other than 0');
      ev.push(EV_GROW, at, r.pos, 0);
    } else if (op === 0x41) {
      r.skipLeb(5);
    } else if (op === 0x42) {
      r.skipLeb(10);
    } else if (op === 0x43) {
      r.skip(4);
    } else if (op === 0x44) {
      r.skip(8);
    } else if (op === 0xd0) {
      blocktype(r); // a heap type: 0x70, 0x6f or an s33 type index
    } else if (op === 0xfc) {
      const sub = r.u32();
      if (sub <= 7) continue;
      if (sub === 8 || sub === 10 || sub === 12 || sub === 14) {
        r.u32();
        r.u32();
      } else if (sub === 9 || sub === 11 || sub === 13 || (sub >= 15 && sub <= 17)) {
        r.u32();
      } else {
        r.fail(`unsupported instruction 0xfc ${sub}`);
      }
    } else if (op === 0xfd) {
      const sub = r.u32();
      if (sub <= 0x0b || sub === 0x5c || sub === 0x5d) memarg(r);
      else if (sub === 0x0c || sub === 0x0d) r.skip(16);
      else if (sub >= 0x15 && sub <= 0x22) r.skip(1);
      else if (sub >= 0x54 && sub <= 0x5b) {
        memarg(r);
        r.skip(1);
      }
    } else if (op === 0xfe) {
      const sub = r.u32();
      if (sub === 0x03) r.skip(1);
      else memarg(r);
    } else {
      r.pos = at;
      r.fail(`unsupported instruction 0x${op.toString(16)}`);
    }
  }
}

/** Name of the global the instrumented module records a refused growth in (pages asked for). */
export const GROW_GLOBAL = '__hotload_memory_asked_pages';

function encodeS64(v) {
  const out = [];
  for (;;) {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    const done = (v === 0n && (byte & 0x40) === 0) || (v === -1n && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Deadline checks: instrument() = the memory.grow rewrite + a budget countdown at every function
// entry and loop header that calls an imported `hotload.tick` when the budget runs out.

/** Module name of the imported deadline check. */
export const TICK_MODULE = 'hotload';
/** Field name of the imported deadline check: `() -> i32`, returns the next budget (or throws). */
export const TICK_NAME = 'tick';
/** Name of the exported mutable i32 global holding what is left of the budget. */
export const BUDGET_GLOBAL = '__hotload_budget';

/** A growable byte buffer: output is built by copying subarrays, never byte by byte spreads. */
class Writer {
  constructor(capacity = 256) {
    this.buf = new Uint8Array(capacity);
    this.len = 0;
  }
  ensure(n) {
    const need = this.len + n;
    if (need <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) {
    if (this.len >= this.buf.length) this.ensure(1);
    this.buf[this.len++] = b;
  }
  bytes(a) {
    this.ensure(a.length);
    this.buf.set(a, this.len);
    this.len += a.length;
  }
  copy(src, start, end) {
    const n = end - start;
    if (n <= 0) return;
    this.ensure(n);
    if (n <= 32) { // most copies are the few bytes between two instrumented instructions
      const buf = this.buf;
      let at = this.len;
      for (let i = start; i < end; i++) buf[at++] = src[i];
      this.len = at;
    } else {
      this.buf.set(src.subarray(start, end), this.len);
      this.len += n;
    }
  }
  u32(n) {
    this.ensure(5);
    do {
      let byte = n & 0x7f;
      n = Math.floor(n / 128);
      if (n !== 0) byte |= 0x80;
      this.buf[this.len++] = byte;
    } while (n !== 0);
  }
  name(s) {
    const b = Buffer.from(s, 'utf8');
    this.u32(b.length);
    this.bytes(b);
  }
  /** Appends `id`, the size and the content of `content` as one section. */
  section(id, content) {
    this.byte(id);
    this.u32(content.len);
    this.bytes(content.buf.subarray(0, content.len));
  }
  result() {
    return this.buf.subarray(0, this.len);
  }
}

// Section order of the binary format (custom sections, id 0, may sit anywhere).
const SECTION_ORDER = { 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13 };

/**
 * Copies one constant expression (through its `end`) from `r` to `w`, shifting the index of
 * every `ref.func` by `remap`. Knows the constant instructions of MVP, reference types,
 * extended-const and SIMD; anything else is refused.
 */
function copyConstExpr(r, w, remap) {
  let cursor = r.pos;
  for (;;) {
    const op = r.byte();
    if (op === 0x0b) break;
    if (op === 0x41 || op === 0x23) r.skipLeb(5);
    else if (op === 0x42) r.skipLeb(10);
    else if (op === 0x43) r.skip(4);
    else if (op === 0x44) r.skip(8);
    else if (op === 0xd0) blocktype(r);
    else if (op === 0xd2) {
      w.copy(r.b, cursor, r.pos);
      w.u32(remap(r.u32()));
      cursor = r.pos;
    } else if (op === 0x6a || op === 0x6b || op === 0x6c || op === 0x7c || op === 0x7d || op === 0x7e) {
      // extended-const arithmetic: no immediates
    } else if (op === 0xfd) {
      if (r.u32() !== 0x0c) r.fail('unsupported instruction in a constant expression');
      r.skip(16);
    } else {
      r.pos--;
      r.fail(`unsupported instruction 0x${op.toString(16)} in a constant expression`);
    }
  }
  w.copy(r.b, cursor, r.pos);
}

function reftype(r) {
  const t = r.byte();
  if (t !== 0x70 && t !== 0x6f) {
    r.pos--;
    r.fail(`unsupported reference type 0x${t.toString(16)}`);
  }
  return t;
}

function sectionEnd(r) {
  if (r.pos !== r.end) r.fail('section size mismatch');
}

function checkOptions(limitPages, tickEvery, loopChunk) {
  if (!Number.isInteger(limitPages) || limitPages < 0 || limitPages > 65536) {
    throw new RangeError(`limitPages must be an integer in [0, 65536], got ${limitPages}`);
  }
  if (!Number.isInteger(tickEvery) || tickEvery < 1 || tickEvery > 0x7fffffff) {
    throw new RangeError(`tickEvery must be an integer in [1, 2^31-1], got ${tickEvery}`);
  }
  if (!Number.isInteger(loopChunk) || loopChunk < 1 || loopChunk > 0x7fffffff) {
    throw new RangeError(`loopChunk must be an integer in [1, 2^31-1], got ${loopChunk}`);
  }
}

/**
 * Loop iterations, counted in a local of their function, that make one unit of the budget:
 * the global (in memory) is touched once per LOOP_CHUNK iterations, not at each. Between two
 * looks at the clock run at most tickEvery × LOOP_CHUNK iterations (2.56 million with the
 * host's 10,000: a few milliseconds). What the checks cost, measured on go-upper.wasm
 * upper-casing 64 KiB (Go's loops do a few instructions per iteration): 104 µs unchecked,
 * 111 µs with the function-entry checks alone, 255-262 µs with every loop header counting in
 * the global, 240-248 µs counting in a local, and 181 µs with nothing at the loop header but
 * the local's decrement and branch. A branch per iteration is most of it; no check placed in
 * the guest's own code can avoid one (wazero's is a load and a branch too).
 */
export const LOOP_CHUNK = 256;

/**
 * One rewrite that does both host-side guards:
 *
 * - memory.grow past `limitPages` traps (`unreachable`) after recording the pages asked for
 *   in the exported i64 global GROW_GLOBAL: the host tells a memory-limit trap from any
 *   other trap by that global. A declared maximum alone would make memory.grow return -1,
 *   which a plugin may ignore and limp on (or loop on until its deadline); hotload-host traps
 *   with the sizes, and so does this. Each body with a grow gets one extra i32 local;
 * - a deadline check at every function entry, and at every `loopChunk`-th loop header a
 *   function runs (counted in an extra i32 local, set to `loopChunk` at entry):
 *     budget -= 1; if (budget <= 0) budget = hotload.tick();
 *   where budget is an exported mutable i32 global, BUDGET_GLOBAL, initialised to `tickEvery`,
 *   and `hotload.tick` (TICK_MODULE.TICK_NAME, `() -> i32`) is a new import that throws past
 *   the call's deadline or returns the next budget. (`<= 0` rather than `== 0`: a tick that
 *   returns 0 or less gets called again at the next check instead of after 2^32 of them.)
 *
 * Index changes: one type is appended (`() -> i32`), the tick import is appended after the
 * other imports, so it takes function index `info.importedFuncs` and every defined function
 * moves up by one; every function index is remapped (call, return_call, ref.func in code;
 * exports; start; element segments of all eight forms; global, table and offset
 * initialisers; the `name` section's function, local and label names). Two globals are
 * appended (GROW_GLOBAL, then BUDGET_GLOBAL): no global index moves. Other custom sections
 * are copied as they are.
 *
 * Pure; throws WasmFormatError for bytes it cannot rewrite, RangeError for bad options.
 * @param {Uint8Array} bytes
 * @param {ModuleInfo} [info] parseModule(bytes), parsed again when not given
 * With `checks: false` no check is inserted (the import, the globals and the index shift
 * stay, so that one host links either kind alike): for a host that stops a guest by other
 * means (a worker thread terminated at the deadline), so its loops run at full speed.
 * @param {{limitPages: number, tickEvery: number, loopChunk?: number, checks?: boolean}} options
 * @returns {Uint8Array}
 */
export function instrument(bytes, info, { limitPages, tickEvery, loopChunk = LOOP_CHUNK, checks = true }) {
  checkOptions(limitPages, tickEvery, loopChunk);
  if (!info) info = parseModule(bytes);
  const imp = info.importedFuncs;
  const remap = (i) => (i >= imp ? i + 1 : i);
  const tickType = info.types.length;
  const tickFunc = imp;
  let definedGlobals = 0;
  for (const e of info.exports) {
    if (e.name === GROW_GLOBAL || e.name === BUDGET_GLOBAL) {
      throw new WasmFormatError(`module already exports \`${e.name}\``);
    }
  }
  let last = 0;
  const seen = new Set();
  for (const s of info.sections) {
    if (s.id === 0) continue;
    const o = SECTION_ORDER[s.id];
    if (o === undefined) throw new WasmFormatError(`unknown section id ${s.id} at byte ${s.start}`);
    if (o <= last) throw new WasmFormatError(`section ${s.id} out of order or repeated at byte ${s.start}`);
    last = o;
    seen.add(s.id);
    if (s.id === 6) definedGlobals = new Reader(bytes, s.contentStart, s.end).u32();
  }
  const growGlobal = info.importedGlobals + definedGlobals;
  const budgetGlobal = growGlobal + 1;

  const out = new Writer(Math.ceil(bytes.length * 1.25) + 256);
  out.copy(bytes, 0, 8);

  // Sections the rewrite must add when the module has none.
  const missing = [1, 2, 6, 7].filter((id) => !seen.has(id));
  const emitMissingBefore = (order) => {
    while (missing.length && SECTION_ORDER[missing[0]] < order) {
      const id = missing.shift();
      out.section(id, rewriteVec(id));
    }
  };
  // The entries appended to a section whose existing entries are already in `w` (count
  // written by the caller as n + appended).
  const appendTo = (id, w) => {
    if (id === 1) w.bytes([0x60, 0x00, 0x01, 0x7f]);
    else if (id === 2) {
      w.name(TICK_MODULE);
      w.name(TICK_NAME);
      w.byte(0x00);
      w.u32(tickType);
    } else if (id === 6) {
      w.bytes([0x7e, 0x01, 0x42, 0x00, 0x0b]); // GROW: i64 mut = 0
      w.bytes([0x7f, 0x01, 0x41, ...encodeS64(BigInt(tickEvery)), 0x0b]); // budget: i32 mut = tickEvery
    } else if (id === 7) {
      w.name(GROW_GLOBAL);
      w.byte(0x03);
      w.u32(growGlobal);
      w.name(BUDGET_GLOBAL);
      w.byte(0x03);
      w.u32(budgetGlobal);
    }
    return w;
  };
  const appended = { 1: 1, 2: 1, 6: 2, 7: 2 };
  // For a missing section: a vector of just the appended entries.
  const rewriteVec = (id) => {
    const w = new Writer();
    w.u32(appended[id]);
    return appendTo(id, w);
  };

  for (const s of info.sections) {
    const r = new Reader(bytes, s.contentStart, s.end);
    if (s.id === 0) {
      if (r.name() === 'name') {
        const w = rewriteNames(bytes, s, remap);
        if (w) out.section(0, w);
      } else {
        out.copy(bytes, s.start, s.end);
      }
      continue;
    }
    emitMissingBefore(SECTION_ORDER[s.id]);
    const w = new Writer(Math.ceil((s.end - s.contentStart) * (s.id === 10 ? 1.25 : 1)) + 64);
    switch (s.id) {
      case 1: case 2: { // type, import: entries unchanged, one appended
        const n = r.u32();
        w.u32(n + 1);
        w.copy(bytes, r.pos, s.end);
        appendTo(s.id, w);
        break;
      }
      case 4: { // table: an initialiser expression may hold ref.func
        const n = r.u32();
        w.u32(n);
        for (let i = 0; i < n; i++) {
          const start = r.pos;
          const withInit = r.pos < r.end && bytes[r.pos] === 0x40;
          if (withInit) {
            r.byte();
            if (r.byte() !== 0x00) r.fail('bad table type');
          }
          reftype(r);
          r.limits();
          w.copy(bytes, start, r.pos);
          if (withInit) copyConstExpr(r, w, remap);
        }
        sectionEnd(r);
        break;
      }
      case 6: { // global: initialisers may hold ref.func; two appended
        const n = r.u32();
        w.u32(n + 2);
        for (let i = 0; i < n; i++) {
          const start = r.pos;
          r.valtype();
          const mut = r.byte();
          if (mut > 1) r.fail('bad global mutability');
          w.copy(bytes, start, r.pos);
          copyConstExpr(r, w, remap);
        }
        sectionEnd(r);
        appendTo(6, w);
        break;
      }
      case 7: { // export: function indices shift; two appended
        const n = r.u32();
        w.u32(n + 2);
        for (let i = 0; i < n; i++) {
          const start = r.pos;
          r.name();
          const kind = r.byte();
          if (kind > 4) r.fail(`unknown export kind ${kind}`);
          w.copy(bytes, start, r.pos);
          const index = r.u32();
          w.u32(kind === 0 ? remap(index) : index);
        }
        sectionEnd(r);
        appendTo(7, w);
        break;
      }
      case 8: // start
        w.u32(remap(r.u32()));
        sectionEnd(r);
        break;
      case 9:
        rewriteElements(r, w, remap);
        break;
      case 10:
        rewriteBodies(bytes, r, w, info, {
          remap, tickFunc, growGlobal, budgetGlobal, limitPages, loopChunk, checks,
        });
        break;
      default: // function, memory, tag, data count, data: nothing to change
        out.copy(bytes, s.start, s.end);
        continue;
    }
    out.section(s.id, w);
  }
  emitMissingBefore(Infinity);
  return out.result();
}

/** Element section: all eight segment forms (flags 0..7). */
function rewriteElements(r, w, remap) {
  const n = r.u32();
  w.u32(n);
  for (let i = 0; i < n; i++) {
    const flags = r.u32();
    if (flags > 7) r.fail(`unsupported element segment flags ${flags}`);
    w.u32(flags);
    const start = r.pos;
    if (flags === 2 || flags === 6) r.u32(); // table index
    w.copy(r.b, start, r.pos);
    if ((flags & 1) === 0) copyConstExpr(r, w, remap); // active: offset
    if (flags & 4) { // vec(expr), after a reftype unless flags == 4
      if (flags !== 4) w.byte(reftype(r));
      const k = r.u32();
      w.u32(k);
      for (let j = 0; j < k; j++) copyConstExpr(r, w, remap);
    } else { // vec(funcidx), after an elemkind unless flags == 0
      if (flags !== 0) {
        const kind = r.byte();
        if (kind !== 0x00) r.fail(`unsupported element kind ${kind}`);
        w.byte(kind);
      }
      const k = r.u32();
      w.u32(k);
      for (let j = 0; j < k; j++) w.u32(remap(r.u32()));
    }
  }
  sectionEnd(r);
}

/** Code section: every body gets the entry and loop-header checks, grows and indices rewritten. */
function rewriteBodies(bytes, r, w, info, { remap, tickFunc, growGlobal, budgetGlobal, limitPages, loopChunk, checks }) {
  const count = r.u32();
  if (count !== info.funcTypes.length) {
    r.fail(`code section has ${count} bodies for ${info.funcTypes.length} functions`);
  }
  const b = encodeU32(budgetGlobal);
  // budget -= 1; if (budget <= 0) budget = tick();  (stack-neutral; there is no global.tee)
  const check = Uint8Array.from([
    0x23, ...b, 0x41, 0x01, 0x6b, 0x24, ...b,
    0x23, ...b, 0x41, 0x00, 0x4c, 0x04, 0x40,
    0x10, ...encodeU32(tickFunc), 0x24, ...b, 0x0b,
  ]);
  const g = encodeU32(growGlobal);
  const limit = encodeS64(BigInt(limitPages));
  const chunk = encodeS64(BigInt(loopChunk));
  const body = new Writer(1 << 16);
  const ev = [];
  w.u32(count);
  for (let f = 0; f < count; f++) {
    const size = r.u32();
    const bodyStart = r.pos;
    r.skip(size);
    const bodyEnd = r.pos;
    const br = new Reader(bytes, bodyStart, bodyEnd);
    const entries = br.u32();
    const entriesStart = br.pos;
    const type = info.types[info.funcTypes[f]];
    if (!type) br.fail(`function ${f} has no type`);
    let locals = type.params.length;
    for (let e = 0; e < entries; e++) {
      locals += br.u32();
      br.valtype();
    }
    const codeStart = br.pos;
    ev.length = 0;
    scanBody(br, ev);
    let hasGrow = false;
    let hasLoop = false;
    for (let i = 0; i < ev.length; i += 4) {
      if (ev[i] === EV_GROW) hasGrow = true;
      else if (ev[i] === EV_LOOP) hasLoop = checks;
    }
    body.len = 0;
    // Extra i32 locals, after the function's own: the delta of a grow, the loop counter.
    const extra = (hasGrow ? 1 : 0) + (hasLoop ? 1 : 0);
    if (extra > 0) {
      body.u32(entries + 1);
      body.copy(bytes, entriesStart, codeStart);
      body.bytes([extra, 0x7f]);
    } else {
      body.copy(bytes, bodyStart, codeStart);
    }
    let growCheck = null;
    if (hasGrow) {
      const delta = encodeU32(locals);
      // delta → local; asked = size + delta (as i64, no overflow) → global;
      // asked > limit → unreachable; else memory.grow(delta) as before.
      growCheck = Uint8Array.from([
        0x22, ...delta, 0xad, 0x3f, 0x00, 0xad, 0x7c, 0x24, ...g,
        0x23, ...g, 0x42, ...limit, 0x56, 0x04, 0x40, 0x00, 0x0b,
        0x20, ...delta, 0x40, 0x00,
      ]);
    }
    if (checks) body.bytes(check);
    let loopCheck = null;
    if (hasLoop) {
      const c = encodeU32(locals + (hasGrow ? 1 : 0));
      // counter = loopChunk at entry; at each loop header: if (--counter == 0) { the
      // budget's check; counter = loopChunk }.
      body.bytes([0x41, ...chunk, 0x21, ...c]);
      loopCheck = Uint8Array.from([
        0x20, ...c, 0x41, 0x01, 0x6b, 0x22, ...c, 0x45, 0x04, 0x40,
        ...check, 0x41, ...chunk, 0x21, ...c, 0x0b,
      ]);
    }
    let cursor = codeStart;
    for (let i = 0; i < ev.length; i += 4) {
      const kind = ev[i];
      body.copy(bytes, cursor, ev[i + 1]);
      if (kind === EV_LOOP) {
        if (loopCheck !== null) body.bytes(loopCheck);
      }
      else if (kind === EV_FUNC) body.u32(remap(ev[i + 3]));
      else body.bytes(growCheck);
      cursor = ev[i + 2];
    }
    body.copy(bytes, cursor, bodyEnd);
    w.u32(body.len);
    w.bytes(body.buf.subarray(0, body.len));
  }
  sectionEnd(r);
}

/**
 * The `name` custom section with function indices shifted (function names, local names,
 * label names), other subsections copied; null (drop the section) when it does not parse:
 * engines ignore a malformed name section, so the rewrite must not refuse the module for it.
 */
function rewriteNames(bytes, s, remap) {
  try {
    const r = new Reader(bytes, s.contentStart, s.end);
    const start = r.pos;
    r.name();
    const w = new Writer(s.end - s.contentStart + 64);
    w.copy(bytes, start, r.pos);
    while (r.pos < r.end) {
      const headerStart = r.pos;
      const id = r.byte();
      const size = r.u32();
      const subStart = r.pos;
      r.skip(size);
      if (id !== 1 && id !== 2 && id !== 3) {
        w.copy(bytes, headerStart, r.pos);
        continue;
      }
      const sr = new Reader(bytes, subStart, r.pos);
      const sub = new Writer(size + 16);
      const n = sr.u32();
      sub.u32(n);
      for (let i = 0; i < n; i++) {
        sub.u32(remap(sr.u32()));
        const from = sr.pos;
        if (id === 1) sr.name();
        else for (let k = sr.u32(); k > 0; k--) { sr.u32(); sr.name(); }
        sub.copy(bytes, from, sr.pos);
      }
      sectionEnd(sr);
      w.section(id, sub);
    }
    return w;
  } catch (e) {
    if (e instanceof WasmFormatError) return null;
    throw e;
  }
}
