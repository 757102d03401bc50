// The app protocol v2 (docs/protocol.md), as pure functions: how a line from the sidecar
// reads, what the app answers. No I/O here; the client (client.js) does the socket.

/** Protocol version this SDK speaks. */
export const PROTOCOL = 2;
/** Longest line this client buffers; a longer one is skipped up to its newline. */
export const MAX_LINE_BYTES = 1 << 20;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The first line of every connection. */
export function hello(app, worker) {
  return { type: 'hello', app, worker: String(worker), protocol: PROTOCOL };
}

/**
 * Reads one line from the sidecar: a `load` or an `unload` to act on, an `error` report,
 * or `ignore` (not UTF-8, not JSON, an unknown type, a load or unload missing its names).
 * @param {Uint8Array} line without its newline
 * @returns {{kind: 'load', msg: object} | {kind: 'unload', plugin: string} | {kind: 'error', reason: string} | {kind: 'ignore', why: string}}
 */
export function parseLine(line) {
  let text;
  try {
    text = utf8.decode(line);
  } catch {
    return { kind: 'ignore', why: 'not UTF-8' };
  }
  if (text.trim() === '') return { kind: 'ignore', why: 'empty line' };
  let msg;
  try {
    msg = JSON.parse(text);
  } catch (err) {
    return { kind: 'ignore', why: `not JSON: ${err.message}` };
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return { kind: 'ignore', why: 'not a JSON object' };
  switch (msg.type) {
    case 'load':
      if (typeof msg.plugin !== 'string' || typeof msg.revision !== 'string') {
        return { kind: 'ignore', why: 'load without plugin or revision' };
      }
      return { kind: 'load', msg };
    case 'unload':
      if (typeof msg.plugin !== 'string') return { kind: 'ignore', why: 'unload without plugin' };
      return { kind: 'unload', plugin: msg.plugin };
    case 'error':
      return { kind: 'error', reason: String(msg.reason ?? '') };
    default:
      return { kind: 'ignore', why: `unknown message type ${JSON.stringify(msg.type)}` };
  }
}

/** The config bytes a load hands the plugin: compact JSON text; null or absent is zero bytes. */
export function configBytes(config) {
  return config === null || config === undefined ? new Uint8Array(0) : Buffer.from(JSON.stringify(config), 'utf8');
}

/** The answer to a load that worked. */
export function loaded(plugin, revision, health) {
  return { type: 'loaded', plugin, revision, health };
}

/** The answer to a load that did not: the previous revision still serves. */
export function failed(plugin, revision, reason) {
  return { type: 'failed', plugin, revision, reason };
}

/** The answer to every unload. */
/** How the worker's plugins ran since its previous report (see health.js). */
export function health(plugins) {
  return { type: 'health', plugins };
}

export function unloaded(plugin) {
  return { type: 'unloaded', plugin };
}

/** The health summary of a load, shown to operators. */
export function healthOf(result) {
  const parts = [result.selfChecked ? 'self-check passed' : 'loaded'];
  if (!result.swapped) parts.push('already serving');
  if (result.stateBytes !== null && result.stateBytes !== undefined) parts.push(`state ${result.stateBytes} bytes handed over`);
  return parts.join('; ');
}

/** Back-off before reconnect attempt `n` (0-based): 50 ms doubling to 2 s. */
export function backoffMs(n) {
  return Math.min(2000, 50 * 2 ** Math.min(n, 6));
}

/**
 * Splits a byte stream into lines, skipping (not buffering) any line over `max` bytes.
 * `push(chunk)` returns the complete lines the chunk finished.
 */
export class LineSplitter {
  #parts = [];
  #size = 0;
  #skipping = false;

  constructor(max = MAX_LINE_BYTES) {
    this.max = max;
  }

  /** @param {Buffer} chunk @returns {Buffer[]} */
  push(chunk) {
    const lines = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl < 0) break;
      if (!this.#skipping && this.#size + (nl - start) <= this.max) {
        this.#parts.push(chunk.subarray(start, nl));
        lines.push(Buffer.concat(this.#parts));
      }
      this.#parts = [];
      this.#size = 0;
      this.#skipping = false;
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (!this.#skipping && rest.length > 0) {
      this.#size += rest.length;
      if (this.#size > this.max) {
        this.#skipping = true;
        this.#parts = [];
      } else {
        this.#parts.push(Buffer.from(rest));
      }
    }
    return lines;
  }
}
