// The Wasm binary format, only as far as the host needs it: the signatures of exports and
// imports (the ABI check; Node 20's WebAssembly.Module.exports() gives kinds, not types), the
// declared memories (the memory limit), and one rewrite of the code section that turns every
// `memory.grow` past the limit into a trap the host can name (see instrumentMemoryGrow).
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

/**
 * Walks one function body's instructions and returns the offsets of its `memory.grow`
 * opcodes. Knows the immediates of MVP, sign extension, saturating conversions, bulk memory,
 * reference types, tail calls, SIMD and threads; anything else is refused by name rather
 * than misread.
 */
function findMemoryGrows(r) {
  const grows = [];
  while (r.pos < r.end) {
    const at = r.pos;
    const op = r.byte();
    if (op <= 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a || op === 0x1b ||
        (op >= 0x45 && op <= 0xc4) || op === 0xd1 || op === 0xd3 || op === 0xd5) {
      continue;
    }
    if (op === 0x19) continue; // catch_all (legacy exceptions)
    if ((op >= 0x02 && op <= 0x04) || op === 0x06) {
      const bt = r.b[r.pos];
      if (bt === 0x40 || VALTYPES.has(bt)) r.pos++;
      else r.skipLeb(5);
    } else if (op === 0x07 || op === 0x08 || op === 0x09 || op === 0x18 ||
               op === 0x0c || op === 0x0d || op === 0x10 || op === 0x12 || op === 0x14 ||
               op === 0x15 || op === 0xd2 || op === 0xd4 || op === 0xd6 ||
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
      grows.push({ at, end: r.pos });
    } else if (op === 0x41) {
      r.skipLeb(5);
    } else if (op === 0x42) {
      r.skipLeb(10);
    } else if (op === 0x43) {
      r.skip(4);
    } else if (op === 0x44) {
      r.skip(8);
    } else if (op === 0xd0) {
      const ht = r.b[r.pos];
      if (ht === 0x70 || ht === 0x6f) r.pos++;
      else r.skipLeb(5);
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
  return grows;
}

/** Name of the global the instrumented module records a refused growth in (pages asked for). */
export const GROW_GLOBAL = '__hotload_memory_asked_pages';

/**
 * Rewrites every `memory.grow` so that growing past `limitPages` traps (`unreachable`) after
 * recording the number of pages asked for in an exported i64 global, GROW_GLOBAL: the host
 * tells a memory-limit trap from any other trap by that global. A declared maximum alone
 * would make memory.grow return -1, which a plugin may ignore and limp on (or loop on until
 * its deadline); hotload-host traps with the sizes, and so does this.
 *
 * No function, global or type index moves: the global and the export are appended, each
 * rewritten body gets one extra i32 local for the delta.
 * @param {Uint8Array} bytes
 * @param {ModuleInfo} info
 * @param {number} limitPages
 * @returns {Uint8Array}
 */
export function instrumentMemoryGrow(bytes, info, limitPages) {
  const globalIndex = info.importedGlobals + countOf(bytes, info, 6);
  const parts = [];
  let cursor = 0;
  const copyUpTo = (pos) => {
    parts.push(bytes.subarray(cursor, pos));
    cursor = pos;
  };
  const newSection = (id, content) => Uint8Array.from([id, ...encodeU32(content.length), ...content]);
  // i64, mutable, initialised with i64.const 0.
  const globalEntry = [0x7e, 0x01, 0x42, 0x00, 0x0b];
  const nameBytes = [...Buffer.from(GROW_GLOBAL)];
  const exportEntry = [...encodeU32(nameBytes.length), ...nameBytes, 0x03, ...encodeU32(globalIndex)];
  const order = { 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13 };
  let globalDone = false;
  let exportDone = false;
  for (const s of info.sections) {
    if (s.id === 0) continue;
    if (!globalDone && order[s.id] > order[6]) {
      copyUpTo(s.start);
      parts.push(newSection(6, [1, ...globalEntry]));
      globalDone = true;
    }
    if (s.id === 6 || s.id === 7) {
      copyUpTo(s.start);
      const r = new Reader(bytes, s.contentStart, s.end);
      const n = r.u32();
      const entry = s.id === 6 ? globalEntry : exportEntry;
      const content = [...encodeU32(n + 1), ...bytes.subarray(r.pos, s.end), ...entry];
      parts.push(newSection(s.id, content));
      cursor = s.end;
      if (s.id === 6) globalDone = true;
      else exportDone = true;
    } else if (!exportDone && order[s.id] > order[7]) {
      copyUpTo(s.start);
      parts.push(newSection(7, [1, ...exportEntry]));
      exportDone = true;
    }
    if (s.id === 10) {
      copyUpTo(s.start);
      parts.push(rewriteCode(bytes, s, info, globalIndex, limitPages));
      cursor = s.end;
    }
  }
  if (!globalDone) {
    copyUpTo(bytes.length);
    parts.push(newSection(6, [1, ...globalEntry]));
  }
  if (!exportDone) {
    copyUpTo(bytes.length);
    parts.push(newSection(7, [1, ...exportEntry]));
  }
  copyUpTo(bytes.length);
  return Buffer.concat(parts);
}

function countOf(bytes, info, id) {
  const s = info.sections.find((x) => x.id === id);
  return s ? new Reader(bytes, s.contentStart, s.end).u32() : 0;
}

function rewriteCode(bytes, section, info, globalIndex, limitPages) {
  const r = new Reader(bytes, section.contentStart, section.end);
  const count = r.u32();
  const out = [Buffer.from(encodeU32(count))];
  for (let f = 0; f < count; f++) {
    const size = r.u32();
    const bodyStart = r.pos;
    const bodyEnd = bodyStart + size;
    const b = new Reader(bytes, bodyStart, bodyEnd);
    const entries = b.u32();
    let locals = info.types[info.funcTypes[f]]?.params.length ?? 0;
    for (let e = 0; e < entries; e++) {
      locals += b.u32();
      b.valtype();
    }
    const codeStart = b.pos;
    const grows = findMemoryGrows(b);
    if (grows.length === 0) {
      out.push(Buffer.from(encodeU32(size)), bytes.subarray(bodyStart, bodyEnd));
      r.pos = bodyEnd;
      continue;
    }
    const delta = encodeU32(locals);
    const g = encodeU32(globalIndex);
    const limit = BigInt(limitPages);
    // delta → local; asked = size + delta (as i64, no overflow) → global;
    // asked > limit → unreachable; else memory.grow(delta) as before.
    const check = Buffer.from([
      0x22, ...delta, 0xad, 0x3f, 0x00, 0xad, 0x7c, 0x24, ...g,
      0x23, ...g, 0x42, ...encodeS64(limit), 0x56, 0x04, 0x40, 0x00, 0x0b,
      0x20, ...delta,
    ]);
    // The local entries as they were, then one more: (1 × i32) for the delta.
    const entriesStart = bodyStart + leb32Len(bytes, bodyStart);
    const body = [Buffer.from(encodeU32(entries + 1)), bytes.subarray(entriesStart, codeStart), Buffer.from([1, 0x7f])];
    let c = codeStart;
    for (const grow of grows) {
      body.push(bytes.subarray(c, grow.at), check, Buffer.from([0x40, 0x00]));
      c = grow.end;
    }
    body.push(bytes.subarray(c, bodyEnd));
    const joined = Buffer.concat(body);
    out.push(Buffer.from(encodeU32(joined.length)), joined);
    r.pos = bodyEnd;
  }
  const content = Buffer.concat(out);
  return Buffer.concat([Buffer.from([10, ...encodeU32(content.length)]), content]);
}

function leb32Len(bytes, pos) {
  let n = 1;
  while (bytes[pos + n - 1] & 0x80) n++;
  return n;
}

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
