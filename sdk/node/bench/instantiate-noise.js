// How much instantiating Wasm elsewhere in the process costs the calls of a host, with no
// load of the SDK's own: 20,000 single calls of tagger-v1 (one awaited at a time), quiet,
// then while another worker thread of this process instantiates four tagger instances every
// 10 ms and drops older ones (the garbage a load leaves), then while a child process does the
// same. Prints one line per phase: p50, p99, and how many calls took over 100 µs.
// Run from sdk/node after sdk/conformance/build.sh: node bench/instantiate-noise.js
import { fork } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { PluginHost, sha256Digest } from '../index.js';

const taggerPath = new URL('../../conformance/plugins/tagger-v1.wasm', import.meta.url);
const wasm = readFileSync(taggerPath);
const host = new PluginHost();
await host.load({ plugin: 't', revision: 'a', digest: sha256Digest(wasm), wasm });
const input = Buffer.from('hello');
for (let i = 0; i < 5000; i++) await host.call('t', input);

const instantiator = `const m = new WebAssembly.Module(require('fs').readFileSync(${JSON.stringify(taggerPath.pathname)}));
const keep = []; const nap = new Int32Array(new SharedArrayBuffer(4));
for (;;) {
  for (let i = 0; i < 4; i++) { keep.push(new WebAssembly.Instance(m, {})); if (keep.length > 8) keep.shift(); }
  Atomics.wait(nap, 0, 0, 10);
}`;

async function measure(label) {
  const lat = [];
  for (let i = 0; i < 20000; i++) {
    const t = performance.now();
    await host.call('t', input);
    lat.push(performance.now() - t);
  }
  lat.sort((a, b) => a - b);
  const us = (x) => (x * 1000).toFixed(1);
  console.log(`${label.padEnd(12)} p50 ${us(lat[10000])} µs  p99 ${us(lat[19800])} µs  over 100 µs: ${lat.filter((x) => x > 0.1).length}`);
}

try {
  await measure('quiet');
  const w = new Worker(instantiator, { eval: true });
  await new Promise((r) => setTimeout(r, 300));
  await measure('thread');
  await w.terminate();
  const file = path.join(tmpdir(), `instantiate-noise-${process.pid}.cjs`);
  writeFileSync(file, instantiator);
  const child = fork(file);
  await new Promise((r) => setTimeout(r, 300));
  await measure('process');
  child.kill();
  await measure('quiet');
} finally {
  await host.close();
}
