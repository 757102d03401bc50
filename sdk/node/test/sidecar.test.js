// The protocol against the REAL hotload-sidecar (set HOTLOAD_SIDECAR_BIN; otherwise these
// tests skip): artifacts served over HTTPS with a CA made by the openssl CLI, loads through
// `hotload-sidecar load`, the app's answers read back from the sidecar's /status and /ready.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AppClient, PluginHost, sha256Digest } from '../index.js';
import { pluginBytes } from './helpers.js';

const BIN = process.env.HOTLOAD_SIDECAR_BIN;
const skip = BIN ? false : 'HOTLOAD_SIDECAR_BIN is not set: the tests against the real sidecar are skipped';
const STEP_MS = 15_000;
const CLUSTER_APP = fileURLToPath(new URL('./fixtures/cluster-app.js', import.meta.url));

/** A CA and a leaf for 127.0.0.1 signed by it (rustls refuses a CA certificate as a leaf). */
function makePki(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=hotload test CA');
  run('req', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(path.join(dir, 'leaf.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'leaf.pem', '-days', '1', '-extfile', 'leaf.ext');
  return {
    ca: path.join(dir, 'ca.pem'),
    key: readFileSync(path.join(dir, 'leaf.key')),
    cert: readFileSync(path.join(dir, 'leaf.pem')),
  };
}

/** An HTTPS server of artifacts: put(name, bytes) returns its URL; hits counts downloads. */
async function artifactServer(pki) {
  const files = new Map();
  let hits = 0;
  const server = https.createServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    const body = files.get(req.url);
    if (!body) {
      res.statusCode = 404;
      res.end();
      return;
    }
    hits++;
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `https://127.0.0.1:${server.address().port}`;
  return {
    put(name, bytes) {
      files.set(`/${name}`, bytes);
      return `${base}/${name}`;
    },
    get hits() {
      return hits;
    },
    close: () => server.close(),
  };
}

/** Reads lines from a child's stdout until one matches. */
function waitForLine(child, re, what) {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${what}: nothing matching ${re} within ${STEP_MS} ms`)), STEP_MS);
    rl.on('line', (line) => {
      const m = re.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code} before printing ${re}`)));
  });
}

async function startSidecar(state, ca) {
  const child = spawn(BIN, ['run', '--state-dir', state, '--admin-addr', '127.0.0.1:0', '--ca-bundle', ca,
    '--ack-timeout-ms', '15000'], { env: { ...process.env, RUST_LOG: 'error' }, stdio: ['ignore', 'pipe', 'inherit'] });
  const m = await waitForLine(child, /admin=(\S+)/, 'hotload-sidecar run');
  return { child, admin: m[1] };
}

function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 5000).unref();
  });
}

/** Runs `hotload-sidecar load`; resolves {ok, outcome}. */
function load(state, plugin, url, digest) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['load', '--state-dir', state, '--plugin', plugin, '--artifact', url, '--digest', digest],
      { env: { ...process.env, RUST_LOG: 'error' }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      try {
        resolve({ ok: code === 0, outcome: JSON.parse(out.trim()) });
      } catch {
        reject(new Error(`load printed ${JSON.stringify(out)} (exit ${code})`));
      }
    });
  });
}

async function get(admin, p) {
  const res = await fetch(`http://${admin}${p}`);
  return { code: res.status, body: await res.text() };
}

/** Polls an admin path until `ok(body, code)` holds. */
async function waitFor(admin, p, ok, what) {
  const deadline = performance.now() + STEP_MS;
  for (;;) {
    const r = await get(admin, p);
    if (ok(r.body, r.code)) return r.body;
    if (performance.now() > deadline) assert.fail(`${what}: ${p} is ${r.code} ${r.body}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The app's workers in the sidecar's /status. */
function workersOf(body) {
  try {
    return Object.values(JSON.parse(body).app?.workers ?? {});
  } catch {
    return [];
  }
}

function env() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hotload-node-sidecar-'));
  const pki = makePki(dir);
  return { dir, pki, state: path.join(dir, 'state') };
}

test('a cluster app with 3 workers: every worker acknowledged, all serving the new revision', { skip, timeout: 120_000 }, async () => {
  const e = env();
  const server = await artifactServer(e.pki);
  const sidecar = await startSidecar(e.state, e.pki.ca);
  const app = spawn(process.execPath, [CLUSTER_APP], {
    env: { ...process.env, WORKERS: '3', HOTLOAD_APP_SOCKET: path.join(e.state, 'app.sock') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const port = (await waitForLine(app, /listening port=(\d+)/, 'cluster app'))[1];
    await waitFor(sidecar.admin, '/status', (b) => workersOf(b).length === 3, '3 workers connect');

    /** Calls until every worker answered; returns {pid: [revision, output]}. */
    const everyWorker = async (input) => {
      const seen = new Map();
      for (let i = 0; i < 200 && seen.size < 3; i++) {
        const res = await fetch(`http://127.0.0.1:${port}/call?input=${input}`, { headers: { connection: 'close' } });
        const [pid, revision, output] = (await res.text()).split(' ');
        assert.equal(res.status, 200, `worker ${pid}: ${revision} ${output}`);
        seen.set(pid, [revision, output]);
      }
      assert.equal(seen.size, 3, `every worker answered: ${JSON.stringify([...seen])}`);
      return seen;
    };

    const versions = [['v1', 'tagger-v1.wasm', 'v01'], ['v2', 'tagger-v2.wasm', 'v02']];
    for (const [name, file, tag] of versions) {
      const bytes = pluginBytes(file);
      const { ok, outcome } = await load(e.state, 'auth', server.put(name, bytes), sha256Digest(bytes));
      assert.ok(ok, `load ${name}: ${JSON.stringify(outcome)}`);
      assert.equal(outcome.result, 'loaded');
      const status = await get(sidecar.admin, '/status');
      assert.match(status.body, /loaded by 3\/3 workers/, status.body);
      const workers = workersOf(status.body);
      const revision = workers[0]?.serving?.auth;
      assert.ok(revision, status.body);
      for (const w of workers) {
        assert.equal(w.protocol, 2, `worker ${w.name} speaks v2`);
        assert.equal(w.serving.auth, revision, `worker ${w.name} acknowledged ${revision}`);
      }
      await waitFor(sidecar.admin, '/ready', (_, code) => code === 200, 'ready');
      const seen = await everyWorker('x');
      assert.deepEqual([...seen.keys()].sort(), workers.map((w) => w.name).sort(), 'the HTTP workers are the acknowledged ones');
      for (const [pid, [served, output]] of seen) {
        assert.equal(output, `${tag}:x${tag}:`, `worker ${pid}`);
        assert.equal(served, revision, `worker ${pid} serves the new revision`);
      }
    }

    // A broken v3: refused by the workers with the precise reason; v2 keeps serving everywhere.
    const bad = pluginBytes('self-check-status-7.wasm');
    const { ok, outcome } = await load(e.state, 'auth', server.put('v3', bad), sha256Digest(bad));
    assert.ok(!ok, JSON.stringify(outcome));
    assert.match(outcome.reason, /worker \d+: plugin auth revision \S+: self-check failed: returned status 7/);
    await waitFor(sidecar.admin, '/ready', (_, code) => code === 200, 'ready again on v2');
    for (const [pid, [, output]] of await everyWorker('y')) assert.equal(output, 'v02:yv02:', `worker ${pid} still on v2`);
  } finally {
    await stop(app);
    await stop(sidecar.child);
    server.close();
    rmSync(e.dir, { recursive: true, force: true });
  }
});

test('one worker: load, then a sidecar restart recovered from disk without a download or a reload', { skip, timeout: 120_000 }, async () => {
  const e = env();
  const server = await artifactServer(e.pki);
  let sidecar = await startSidecar(e.state, e.pki.ca);
  const host = new PluginHost({ instancesPerRevision: 1, callTimeoutMs: 5000 });
  const client = new AppClient({ host, socket: path.join(e.state, 'app.sock'), app: 'node-test' }).start();
  const answers = [];
  client.on('loaded', (a) => answers.push(a));
  try {
    const bytes = pluginBytes('tagger-v1.wasm');
    const url = server.put('v1', bytes);
    const first = await load(e.state, 'auth', url, sha256Digest(bytes));
    assert.ok(first.ok, JSON.stringify(first.outcome));
    assert.match(first.outcome.health, /self-check passed/);
    assert.equal((await host.call('auth', 'a')).toString(), 'v01:av01:');
    await host.call('auth', 'b');
    const status = await get(sidecar.admin, '/status');
    assert.ok(status.body.includes(String(process.pid)), `worker named by its pid: ${status.body}`);

    // Sidecar crash: the client reconnects with back-off, says hello again, is sent the set
    // from disk and answers at once without reloading (the plugin's count survives).
    const hits = server.hits;
    sidecar.child.kill('SIGKILL');
    await new Promise((resolve) => sidecar.child.once('exit', resolve));
    const before = answers.length;
    sidecar = await startSidecar(e.state, e.pki.ca);
    await waitFor(sidecar.admin, '/ready', (_, code) => code === 200, 'ready after restart');
    assert.ok(answers.length > before, 'answered the re-sent set');
    assert.match(answers.at(-1).health, /already serving/);
    assert.equal((await host.call('auth', '')).readUInt32LE(0), 2, 'state kept: nothing reloaded');
    assert.equal(server.hits, hits, 'no download after restart');
  } finally {
    await client.close();
    await host.close();
    await stop(sidecar.child);
    server.close();
    rmSync(e.dir, { recursive: true, force: true });
  }
});

/** A sample's value in Prometheus text (labels matched as given), or null when absent. */
function metricValue(text, name, labels) {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return null;
}

test('two workers: the sidecar\'s /metrics shows the sum of both workers\' health reports per revision', { skip, timeout: 120_000 }, async () => {
  const e = env();
  const server = await artifactServer(e.pki);
  const sidecar = await startSidecar(e.state, e.pki.ca);
  const socket = path.join(e.state, 'app.sock');
  const workers = ['w1', 'w2'].map((worker) => {
    const host = new PluginHost({ instancesPerRevision: 1, callTimeoutMs: 5000 });
    return { host, client: new AppClient({ host, socket, worker, app: 'node-test' }).start() };
  });
  const [w1, w2] = workers;
  try {
    await waitFor(sidecar.admin, '/status', (body) => workersOf(body).length === 2, 'both workers connected');
    const v1 = pluginBytes('tagger-v1.wasm');
    const r1 = (await load(e.state, 'h', server.put('v1', v1), sha256Digest(v1))).outcome.revision;
    for (const [w, n] of [[w1, 5], [w2, 3]]) {
      for (let i = 0; i < n; i++) assert.equal((await w.host.call('h', 'x')).toString(), 'v01:xv01:');
    }
    assert.ok(w1.host.markFailed('h'));
    const trap = pluginBytes('handle-trap.wasm');
    const swapped = await load(e.state, 'h', server.put('trap', trap), sha256Digest(trap));
    assert.ok(swapped.ok, JSON.stringify(swapped.outcome));
    const r2 = swapped.outcome.revision;
    for (const [w, n] of [[w1, 2], [w2, 1]]) {
      for (let i = 0; i < n; i++) await assert.rejects(w.host.call('h', 'x'), { kind: 'handle', fault: 'trap' });
    }
    const want = [
      ['hotload_plugin_calls_total', { plugin: 'h', revision: r1 }, 8],
      ['hotload_plugin_errors_total', { plugin: 'h', revision: r1, kind: 'failed' }, 1],
      ['hotload_plugin_errors_total', { plugin: 'h', revision: r1, kind: 'trap' }, 0],
      ['hotload_plugin_call_duration_seconds_bucket', { plugin: 'h', revision: r1, le: '+Inf' }, 8],
      ['hotload_plugin_call_duration_seconds_count', { plugin: 'h', revision: r1 }, 8],
      ['hotload_plugin_calls_total', { plugin: 'h', revision: r2 }, 3],
      ['hotload_plugin_errors_total', { plugin: 'h', revision: r2, kind: 'trap' }, 3],
      ['hotload_plugin_errors_total', { plugin: 'h', revision: r2, kind: 'timeout' }, 0],
      ['hotload_plugin_call_duration_seconds_count', { plugin: 'h', revision: r2 }, 3],
    ];
    const wrong = (text) => want.map(([n, l, v]) => [n, l, v, metricValue(text, n, l)]).filter((x) => x[3] !== x[2]);
    await waitFor(sidecar.admin, '/metrics', (body) => wrong(body).length === 0, 'the merged totals');
    // Two more report intervals: nothing is counted twice.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const body = (await get(sidecar.admin, '/metrics')).body;
    assert.deepEqual(wrong(body), [], body);
  } finally {
    for (const w of workers) {
      await w.client.close();
      await w.host.close();
    }
    await stop(sidecar.child);
    server.close();
    rmSync(e.dir, { recursive: true, force: true });
  }
});
