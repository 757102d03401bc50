// The shared protocol transcripts (sdk/conformance/transcripts/*.jsonl), replayed by a fake
// sidecar on a real Unix socket against this SDK's AppClient and PluginHost: what the app
// must send, what the sidecar sends, calls in between, dropped connections and garbage.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { AppClient, PluginHost } from '../index.js';
import { LineSplitter } from '../src/protocol.js';
import { sha256Digest } from '../src/digest.js';
import { CONFORMANCE, PLUGINS, checkOutcome, hostConfig, inputOf, pluginBytes, suite } from './helpers.js';

const STEP_MS = 10_000;
const dir = path.join(CONFORMANCE, 'transcripts');

/** A listening socket that hands out accepted connections, each with a line queue. */
class FakeSidecar {
  constructor(sock) {
    this.accepted = [];
    this.waiting = [];
    this.server = net.createServer((c) => {
      const conn = { socket: c, lines: [], readers: [], ended: false };
      const splitter = new LineSplitter(1 << 24);
      c.on('data', (chunk) => {
        for (const l of splitter.push(chunk)) {
          const r = conn.readers.shift();
          if (r) r(l);
          else conn.lines.push(l);
        }
      });
      c.on('error', () => {});
      const w = this.waiting.shift();
      if (w) w(conn);
      else this.accepted.push(conn);
    });
    this.ready = new Promise((resolve) => this.server.listen(sock, resolve));
  }

  accept() {
    const c = this.accepted.shift();
    if (c) return Promise.resolve(c);
    return withTimeout(new Promise((resolve) => this.waiting.push(resolve)), STEP_MS, 'the app did not connect');
  }

  close() {
    this.server.close();
  }
}

function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([p, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(what)), ms); })])
    .finally(() => clearTimeout(timer));
}

/** The next line from the app within `ms`, or null. */
function recv(conn, ms) {
  const l = conn.lines.shift();
  if (l) return Promise.resolve(l);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      conn.readers.splice(conn.readers.indexOf(reader), 1);
      resolve(null);
    }, ms);
    const reader = (line) => {
      clearTimeout(timer);
      resolve(line);
    };
    conn.readers.push(reader);
  });
}

function substitute(value) {
  if (typeof value === 'string') {
    return value.replace(/\{\{([^}]+)\}\}/g, (_, key) => {
      if (key === 'worker') return String(process.pid);
      if (key.startsWith('path:')) return path.join(PLUGINS, key.slice(5));
      if (key.startsWith('digest:')) return sha256Digest(pluginBytes(key.slice(7)));
      throw new Error(`unknown placeholder {{${key}}}`);
    });
  }
  if (Array.isArray(value)) return value.map(substitute);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v)]));
  return value;
}

/** The transcript matcher: `$any`, `$contains`, objects by their listed fields, else JSON equality. */
function match(want, got) {
  if (want && typeof want === 'object' && !Array.isArray(want)) {
    if ('$any' in want) return null;
    if (typeof want.$contains === 'string') {
      return typeof got === 'string' && got.includes(want.$contains) ? null : `${JSON.stringify(got)} does not contain ${JSON.stringify(want.$contains)}`;
    }
    if (!got || typeof got !== 'object') return `${JSON.stringify(got)} is not an object`;
    for (const [k, wv] of Object.entries(want)) {
      if (!(k in got)) return `field ${k} missing`;
      const bad = match(wv, got[k]);
      if (bad) return `field ${k}: ${bad}`;
    }
    return null;
  }
  if (Array.isArray(want)) {
    if (!Array.isArray(got) || got.length !== want.length) return `${JSON.stringify(got)} is not a list of ${want.length}`;
    for (const [i, wv] of want.entries()) {
      const bad = match(wv, got[i]);
      if (bad) return `item ${i}: ${bad}`;
    }
    return null;
  }
  return JSON.stringify(want) === JSON.stringify(got) ? null : `${JSON.stringify(got)}, want ${JSON.stringify(want)}`;
}

const s = suite();
for (const file of readdirSync(dir).filter((f) => f.endsWith('.jsonl')).sort()) {
  test(`transcript: ${file.replace(/\.jsonl$/, '')}`, async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'hotload-transcript-'));
    const sock = path.join(tmp, 'app.sock');
    const side = new FakeSidecar(sock);
    await side.ready;
    const host = new PluginHost(hostConfig(s.host));
    const client = new AppClient({ host, socket: sock, app: 'conformance' }).start();
    let conn = await side.accept();
    try {
      const lines = readFileSync(path.join(dir, file), 'utf8').trim().split('\n');
      for (const [n, text] of lines.entries()) {
        const where = `${file}:${n + 1}`;
        const step = JSON.parse(text);
        if (step.comment !== undefined) continue;
        if (step.app_sends) {
          // A health report may come whenever calls happened; it is skipped unless the step
          // expects one.
          let line;
          let got;
          const until = performance.now() + STEP_MS;
          do {
            line = await recv(conn, Math.max(1, until - performance.now()));
            assert.ok(line, `${where}: the app sent nothing within ${STEP_MS} ms`);
            got = JSON.parse(line.toString('utf8'));
          } while (got.type === 'health' && step.app_sends.type !== 'health');
          const bad = match(substitute(step.app_sends), got);
          assert.equal(bad, null, `${where}: the app sent ${line}: ${bad}`);
        } else if (step.sidecar_sends) {
          conn.socket.write(`${JSON.stringify(substitute(step.sidecar_sends))}\n`);
        } else if (step.sidecar_sends_raw !== undefined) {
          conn.socket.write(step.sidecar_sends_raw);
        } else if (step.sidecar_sends_b64 !== undefined) {
          conn.socket.write(Buffer.from(step.sidecar_sends_b64, 'base64'));
        } else if (step.sidecar_sends_long_line) {
          conn.socket.write(Buffer.concat([Buffer.alloc(step.sidecar_sends_long_line, 'x'), Buffer.from('\n')]));
        } else if (step.drop_connection) {
          conn.socket.destroy();
          conn = await side.accept();
        } else if (step.app_silent_ms) {
          const line = await recv(conn, step.app_silent_ms);
          assert.equal(line, null, `${where}: the app sent ${line}, want silence`);
        } else if (step.call) {
          let out;
          let err;
          try {
            out = await host.call(step.call.plugin, inputOf(step.call));
          } catch (e) {
            err = e;
          }
          const bad = checkOutcome(out, err, step.expect ?? {});
          assert.equal(bad, null, `${where}: ${bad}`);
        } else {
          assert.fail(`${where}: step without an operation`);
        }
      }
    } finally {
      await client.close();
      conn.socket.destroy();
      side.close();
      await host.close();
      rmSync(tmp, { recursive: true, force: true });
    }
  });
}
