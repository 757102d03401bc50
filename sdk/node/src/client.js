// AppClient: the app side of the sidecar's socket (protocol v2, docs/protocol.md).
//
//  connect ── hello {worker: pid, protocol: 2} ── lines ── load ─► read file ─► Wasm host or
//     ▲                                              │             JS module host ─► loaded/failed
//     └── back-off 50 ms … 2 s ◄── close/error       ├─ unload ─► both hosts ─► unloaded
//                                                    └─ every second: host.takeHealth() ─► health
//
// One client per process: in a `cluster` app, create it in each worker (never in the
// primary); each worker is one of the pod's workers and is acknowledged on its own.
// Messages are handled one at a time in the order they came, so answers come in that order
// too; a message of a connection that has since dropped is not acted on (the sidecar sends
// the whole set again on the next connection, and a revision already serving is answered
// at once).

import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

import { LoadError } from './errors.js';
import { HEALTH_INTERVAL_MS } from './health.js';
import * as proto from './protocol.js';

/** The socket's default path, as the injection webhook mounts it. */
export const DEFAULT_SOCKET = '/var/run/hotload/app.sock';

function isWasm(bytes) {
  return bytes.length >= 4 && bytes[0] === 0 && bytes[1] === 0x61 && bytes[2] === 0x73 && bytes[3] === 0x6d;
}

/**
 * Events: `connected` (worker), `disconnected` (reason), `loaded` (answer), `failed` (answer),
 * `unloaded` (answer), `ignored` (why), `sidecar-error` (reason).
 */
export class AppClient extends EventEmitter {
  #socket = null;
  #generation = 0;
  #attempt = 0;
  #timer = null;
  #closed = false;
  #queue = Promise.resolve();
  #healthTimer = null;

  /**
   * @param {object} opts
   * @param {import('./host.js').PluginHost} [opts.host] Wasm plugins go here
   * @param {import('./modules.js').ModuleHost} [opts.modules] files that are not Wasm go here
   * @param {string} [opts.socket] default $HOTLOAD_APP_SOCKET or /var/run/hotload/app.sock
   * @param {string} [opts.app] default $HOTLOAD_APP or the script's name
   * @param {string} [opts.worker] default the process id
   * @param {number} [opts.healthIntervalMs] how often the host's call counts go to the
   *   sidecar (a `health` message, only when calls happened); default 1000
   */
  constructor(opts = {}) {
    super();
    if (!opts.host && !opts.modules) throw new TypeError('AppClient needs a host, a modules host, or both');
    this.host = opts.host ?? null;
    this.modules = opts.modules ?? null;
    this.socketPath = opts.socket ?? process.env.HOTLOAD_APP_SOCKET ?? DEFAULT_SOCKET;
    this.app = opts.app ?? process.env.HOTLOAD_APP ?? path.basename(process.argv[1] ?? 'node', '.js');
    this.worker = String(opts.worker ?? process.pid);
    this.healthIntervalMs = opts.healthIntervalMs ?? HEALTH_INTERVAL_MS;
  }

  /** Whether a connection is open right now. */
  get connected() {
    return this.#socket !== null;
  }

  /** Starts connecting (and reconnecting, until close()). Returns this. */
  start() {
    this.#connect();
    return this;
  }

  /** Stops for good: closes the connection and cancels any reconnect. */
  async close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#healthTimer);
    this.#socket?.destroy();
    this.#socket = null;
    await this.#queue;
  }

  #connect() {
    if (this.#closed) return;
    const generation = ++this.#generation;
    const socket = net.createConnection(this.socketPath);
    const lines = new proto.LineSplitter();
    let open = false;
    socket.on('connect', () => {
      open = true;
      this.#attempt = 0;
      this.#socket = socket;
      // Before anything else, on every connection.
      socket.write(`${JSON.stringify(proto.hello(this.app, this.worker))}\n`);
      this.emit('connected', this.worker);
      clearInterval(this.#healthTimer);
      this.#healthTimer = setInterval(() => this.#reportHealth(generation), this.healthIntervalMs);
      this.#healthTimer.unref();
    });
    socket.on('data', (chunk) => {
      for (const line of lines.push(chunk)) this.#receive(line, generation);
    });
    socket.on('error', () => {}); // 'close' follows; the reason is not needed to retry
    socket.on('close', () => {
      if (this.#socket === socket) this.#socket = null;
      if (generation === this.#generation) clearInterval(this.#healthTimer);
      if (open) this.emit('disconnected', 'connection closed');
      if (this.#closed) return;
      const wait = proto.backoffMs(this.#attempt++);
      this.#timer = setTimeout(() => this.#connect(), wait);
    });
  }

  #send(msg, generation) {
    if (generation !== this.#generation || !this.#socket) return false;
    this.#socket.write(`${JSON.stringify(msg)}\n`);
    return true;
  }

  /**
   * Sends the host's counts since the last report, if any call happened. Counts taken for a
   * connection that drops with them are lost, as the protocol says (never re-sent).
   */
  #reportHealth(generation) {
    if (!this.host || generation !== this.#generation || !this.#socket) return;
    const plugins = this.host.takeHealth();
    if (plugins.length > 0) this.#send(proto.health(plugins), generation);
  }

  #receive(line, generation) {
    const m = proto.parseLine(line);
    if (m.kind === 'ignore') {
      this.emit('ignored', m.why);
      return;
    }
    if (m.kind === 'error') {
      this.emit('sidecar-error', m.reason);
      return;
    }
    this.#queue = this.#queue.then(async () => {
      if (generation !== this.#generation || this.#closed) return;
      const answer = m.kind === 'load' ? await this.#load(m.msg) : await this.#unload(m.plugin);
      if (this.#send(answer, generation)) this.emit(answer.type, answer);
    }).catch((err) => this.emit('ignored', `internal error: ${err?.message ?? err}`));
  }

  async #load(msg) {
    const { plugin, revision, digest } = msg;
    if (typeof msg.path !== 'string' || msg.path === '') {
      return proto.failed(plugin, revision, `plugin ${plugin} revision ${revision}: no path in the load message`);
    }
    const config = proto.configBytes(msg.config);
    try {
      let bytes;
      try {
        bytes = await readFile(msg.path);
      } catch (err) {
        throw LoadError.of('read', plugin, revision, `cannot read ${msg.path}: ${err.message}`);
      }
      let result;
      if (this.host && (isWasm(bytes) || !this.modules)) {
        result = await this.host.load({ plugin, revision, digest, config, wasm: bytes });
        await this.modules?.unload(plugin);
      } else {
        result = await this.modules.load({ plugin, revision, digest, config, source: bytes });
        await this.host?.unload(plugin);
      }
      return proto.loaded(plugin, revision, proto.healthOf(result));
    } catch (err) {
      return proto.failed(plugin, revision, err instanceof LoadError ? err.message
        : `plugin ${plugin} revision ${revision}: ${err?.message ?? err}`);
    }
  }

  async #unload(plugin) {
    await Promise.all([this.host?.unload(plugin), this.modules?.unload(plugin)]);
    return proto.unloaded(plugin);
  }
}
