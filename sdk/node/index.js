// @hotload/sdk: hot-load Wasm plugins (and JavaScript modules) handed to a Node app by the
// Hotload sidecar. See README.md.
export { PluginHost, Pinned, DEFAULTS } from './src/host.js';
export { ModuleHost } from './src/modules.js';
export { AppClient, DEFAULT_SOCKET } from './src/client.js';
export { LoadError, CallError } from './src/errors.js';
export { HEALTH_INTERVAL_MS, LATENCY_BOUNDS_US, latencyBucket } from './src/health.js';
export { parseSha256, sha256Digest } from './src/digest.js';
export * as abi from './src/abi.js';
export * as protocol from './src/protocol.js';
