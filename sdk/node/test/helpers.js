// Shared by the tests: where the conformance suite lives and how its host settings map to
// this SDK's config.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const CONFORMANCE = fileURLToPath(new URL('../../conformance/', import.meta.url));
export const PLUGINS = path.join(CONFORMANCE, 'plugins');

/** A conformance plugin's bytes; the .wasm files are built from the .wat, not committed. */
export function pluginBytes(file) {
  const p = path.join(PLUGINS, file);
  if (!existsSync(p)) {
    throw new Error(`${p} is missing: build the conformance plugins first (make conformance-plugins, or sdk/conformance/build.sh)`);
  }
  return readFileSync(p);
}

export function suite() {
  return JSON.parse(readFileSync(path.join(CONFORMANCE, 'cases.json'), 'utf8'));
}

/** The suite's host settings (snake_case, as in cases.json) as a PluginHost config. */
export function hostConfig(...layers) {
  const h = Object.assign({}, ...layers);
  const out = {};
  if (h.max_memory_bytes !== undefined) out.maxMemoryBytes = h.max_memory_bytes;
  if (h.call_timeout_ms !== undefined) out.callTimeoutMs = h.call_timeout_ms;
  if (h.instances_per_revision !== undefined) out.instancesPerRevision = h.instances_per_revision;
  if (h.checkout_timeout_ms !== undefined) out.checkoutTimeoutMs = h.checkout_timeout_ms;
  if (h.max_plugins !== undefined) out.maxPlugins = h.max_plugins;
  return out;
}

/** Input bytes of a step: `input` (UTF-8 text) or `input_b64`. */
export function inputOf(step) {
  return step.input_b64 !== undefined ? Buffer.from(step.input_b64, 'base64') : Buffer.from(step.input ?? '', 'utf8');
}

/** Checks a call's outcome against an `expect` of the suite; returns an error text or null. */
export function checkOutcome(out, err, expect) {
  if (expect.error) {
    if (!err) return `want error ${JSON.stringify(expect.error)}, got output ${JSON.stringify(out?.toString())}`;
    return checkError(err, expect.error);
  }
  if (err) return `want output, got error: ${err.message}`;
  if (expect.output !== undefined && out.toString('utf8') !== expect.output) {
    return `output ${JSON.stringify(out.toString('utf8'))}, want ${JSON.stringify(expect.output)}`;
  }
  if (expect.output_b64 !== undefined && out.toString('base64') !== expect.output_b64) {
    return `output (b64) ${out.toString('base64')}, want ${expect.output_b64}`;
  }
  return null;
}

export function checkError(err, want) {
  const kinds = want.kind === undefined ? null : [].concat(want.kind);
  if (kinds && !kinds.includes(err.kind)) return `error kind ${err.kind} (${err.message}), want ${kinds.join(' or ')}`;
  if (want.fault !== undefined && err.fault !== want.fault) return `fault ${err.fault} (${err.message}), want ${want.fault}`;
  for (const part of want.reason ?? []) {
    if (!err.message.includes(part)) return `reason ${JSON.stringify(err.message)} lacks ${JSON.stringify(part)}`;
  }
  return null;
}
