// AppClient against a fake sidecar on a real Unix socket: back-off and hello on every
// connection, a `cluster` app whose every worker connects and answers on its own, and
// JavaScript modules and Wasm plugins side by side on one connection.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AppClient, ModuleHost, PluginHost, sha256Digest } from '../index.js';
import { LineSplitter } from '../src/protocol.js';
import { PLUGINS, pluginBytes } from './helpers.js';

const CLUSTER_APP = fileURLToPath(new URL('./fixtures/cluster-app.js', import.meta.url));

/** Accepts connections; each yields its lines as parsed JSON through next(). */
function fakeSidecar(sock) {
  const conns = [];
  const waiting = [];
  const server = net.createServer((socket) => {
    const lines = [];
    const readers = [];
    const split = new LineSplitter();
    socket.on('data', (d) => {
      for (const l of split.push(d)) {
        const msg = JSON.parse(l.toString());
        const r = readers.shift();
        if (r) r(msg);
        else lines.push(msg);
      }
    });
    socket.on('error', () => {});
    const conn = {
      socket,
      send: (m) => socket.write(`${JSON.stringify(m)}\n`),
      next: () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((r) => readers.push(r))),
    };
    const w = waiting.shift();
    if (w) w(conn);
    else conns.push(conn);
  });
  return {
    listen: () => new Promise((r) => server.listen(sock, r)),
    accept: () => (conns.length ? Promise.resolve(conns.shift()) : new Promise((r) => waiting.push(r))),
    close: () => server.close(),
  };
}

const tmpdir = () => mkdtempSync(path.join(os.tmpdir(), 'hotload-client-'));
const loadMsg = (plugin, revision, file) => ({
  type: 'load', plugin, revision, path: path.join(PLUGINS, file), digest: sha256Digest(pluginBytes(file)), config: null,
});

test('connects with back-off once the socket appears, and says hello on every connection', async () => {
  const dir = tmpdir();
  const sock = path.join(dir, 'app.sock');
  const host = new PluginHost({ instancesPerRevision: 1 });
  const started = performance.now();
  const client = new AppClient({ host, socket: sock, app: 'unit' }).start();
  await new Promise((r) => setTimeout(r, 300));
  const side = fakeSidecar(sock);
  await side.listen();
  let conn = await side.accept();
  const waited = performance.now() - started;
  // Attempts at 0, 50, 150, 350, 750 ms: the socket appeared at 300 ms, so the attempt at
  // 350 ms connects; the bound leaves room for a busy machine, not for a 2 s back-off.
  assert.ok(waited < 1800, `connected after ${waited.toFixed(0)} ms`);
  assert.deepEqual(await conn.next(), { type: 'hello', app: 'unit', worker: String(process.pid), protocol: 2 });
  conn.send(loadMsg('auth', 'r1', 'tagger-v1.wasm'));
  assert.equal((await conn.next()).type, 'loaded');
  conn.socket.destroy();
  conn = await side.accept();
  assert.deepEqual(await conn.next(), { type: 'hello', app: 'unit', worker: String(process.pid), protocol: 2 });
  conn.send(loadMsg('auth', 'r1', 'tagger-v1.wasm'));
  const again = await conn.next();
  assert.equal(again.type, 'loaded');
  assert.match(again.health, /already serving/);
  await client.close();
  await host.close();
  side.close();
  rmSync(dir, { recursive: true, force: true });
});

test('JavaScript modules and Wasm plugins on one connection, routed by content', async () => {
  const dir = tmpdir();
  const sock = path.join(dir, 'app.sock');
  const side = fakeSidecar(sock);
  await side.listen();
  const host = new PluginHost({ instancesPerRevision: 1 });
  const modules = new ModuleHost({ dir });
  const client = new AppClient({ host, modules, socket: sock }).start();
  const conn = await side.accept();
  await conn.next();
  const js = path.join(dir, 'blob-greet');
  writeFileSync(js, 'export function handle(name) { return `hello ${name}`; }');
  conn.send({ type: 'load', plugin: 'greet', revision: 'g1', path: js, digest: sha256Digest(Buffer.from('export function handle(name) { return `hello ${name}`; }')), config: null });
  assert.equal((await conn.next()).type, 'loaded');
  conn.send(loadMsg('auth', 'r1', 'tagger-v1.wasm'));
  assert.equal((await conn.next()).type, 'loaded');
  assert.equal(await modules.call('greet', 'ada'), 'hello ada');
  assert.equal((await host.call('auth', 'x')).toString(), 'v01:xv01:');
  writeFileSync(js, 'export function handle( {');
  conn.send({ type: 'load', plugin: 'greet', revision: 'g2', path: js, digest: sha256Digest(Buffer.from('export function handle( {')), config: null });
  const refused = await conn.next();
  assert.equal(refused.type, 'failed');
  assert.match(refused.reason, /^plugin greet revision g2: import failed: SyntaxError/);
  assert.equal(await modules.call('greet', 'bob'), 'hello bob', 'the old module serves');
  conn.send({ type: 'unload', plugin: 'greet' });
  assert.deepEqual(await conn.next(), { type: 'unloaded', plugin: 'greet' });
  await client.close();
  await host.close();
  side.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a cluster app: each of 3 workers connects on its own, named by its pid, and answers', { timeout: 60_000 }, async () => {
  const dir = tmpdir();
  const sock = path.join(dir, 'app.sock');
  const side = fakeSidecar(sock);
  await side.listen();
  const app = spawn(process.execPath, [CLUSTER_APP], {
    env: { ...process.env, WORKERS: '3', HOTLOAD_APP_SOCKET: sock }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const port = await new Promise((resolve) => {
      createInterface({ input: app.stdout }).on('line', (l) => {
        const m = /port=(\d+)/.exec(l);
        if (m) resolve(m[1]);
      });
    });
    const conns = [await side.accept(), await side.accept(), await side.accept()];
    const hellos = await Promise.all(conns.map((c) => c.next()));
    const pids = hellos.map((h) => h.worker);
    assert.equal(new Set(pids).size, 3, `three distinct workers: ${pids}`);
    assert.ok(!pids.includes(String(app.pid)), 'the primary opens no connection');
    for (const h of hellos) assert.equal(h.protocol, 2);
    for (const c of conns) c.send(loadMsg('auth', 'r1', 'tagger-v1.wasm'));
    for (const a of await Promise.all(conns.map((c) => c.next()))) assert.equal(a.type, 'loaded');
    const seen = new Set();
    for (let i = 0; i < 100 && seen.size < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/call?input=q`, { headers: { connection: 'close' } });
      const [pid, revision, output] = (await res.text()).split(' ');
      assert.deepEqual([revision, output], ['r1', 'v01:qv01:']);
      seen.add(pid);
    }
    assert.deepEqual([...seen].sort(), [...pids].sort(), 'every worker serves');
  } finally {
    app.kill('SIGTERM');
    await new Promise((r) => app.once('exit', r));
    side.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
