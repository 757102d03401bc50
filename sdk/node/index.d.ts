// Types of @hotload/sdk (hand-written; the package is plain ESM JavaScript).
import { EventEmitter } from 'node:events';

/** Limits and knobs of a PluginHost; every field has hotload-host's production default. */
export interface HostConfig {
  /** Ceiling of one instance's linear memory, in bytes (whole 64 KiB pages). Default 64 MiB. */
  maxMemoryBytes?: number;
  /** Longest one guest call (request, self-check, state hand-over, start-up) may run. Default 500. */
  callTimeoutMs?: number;
  /**
   * Where guest calls run: 'inline' on the event loop (no thread hop; a call blocks the loop
   * while the guest runs, at most callTimeoutMs), or 'threads' in pooled worker threads (calls
   * of one plugin in parallel, two thread wake-ups each). Default 'inline'.
   */
  calls?: 'inline' | 'threads';
  /**
   * Warm instances per revision. With calls in 'threads', the calls one plugin runs in
   * parallel; inline a call holds its instance only while the guest runs, so one serves all.
   * Default 4.
   */
  instancesPerRevision?: number;
  /**
   * Instances a load builds, self-checks and hands the state to before the swap (at most
   * instancesPerRevision); the others are built the same way when calls first need them, and
   * one that fails a step then fails that call (`reinstantiate`) instead of the load. Default 1.
   */
  instancesAtLoad?: number;
  /** How long a call waits for a free instance before it fails `busy`. Default 2000. */
  checkoutTimeoutMs?: number;
  /** Most named plugins one host holds. Default 16. */
  maxPlugins?: number;
  /** Largest module a load accepts, refused before hashing. Default 64 MiB. */
  maxModuleBytes?: number;
  /** Longest a compile may take before the load fails. Default 120000. */
  compileTimeoutMs?: number;
  /**
   * Compiled modules kept by digest that no revision uses, so a revision loaded again skips
   * the compile (modules of revisions in use are kept besides). Default 8; 0 keeps none.
   */
  moduleCacheEntries?: number;
  /** Most wasm bytes of the kept modules that no revision uses. Default 64 MiB. */
  moduleCacheBytes?: number;
  /**
   * Idle worker threads kept warm for the next load or a replaced instance. Default (null):
   * instancesPerRevision with calls in 'threads', 1 (for compiles) inline.
   */
  spareThreads?: number | null;
}

export const DEFAULTS: Readonly<Required<HostConfig>>;

/** Identity of a revision: what a repeated load is compared against. */
export interface RevisionId {
  plugin: string;
  revision: string;
  digest: string;
  config: Uint8Array;
}

export interface LoadEvent {
  plugin: string;
  revision: string;
  previous: string | null;
  swapMs: number;
}

export interface UnloadEvent {
  plugin: string;
  revision: string;
  /** The revision replacing it; null when the plugin is removed. */
  next: string | null;
}

/** Callbacks around swaps; run on the loading path, never on a request. */
export interface HostHooks {
  /** Right before `revision` stops taking new calls (the swap will happen). */
  beforeUnload?(event: UnloadEvent): void;
  /** Right after a new revision started taking calls. */
  afterLoad?(event: LoadEvent): void;
  /** A load was refused; the old revision keeps serving. */
  loadFailed?(plugin: string, revision: string, error: LoadError): void;
}

export interface LoadRequest {
  plugin: string;
  revision: string;
  /** `sha256:<64 lowercase hex>` of `wasm`. */
  digest: string;
  /** Bytes handed to the plugin's `configure`; null is zero bytes. */
  config?: Uint8Array | string | null;
  wasm: Uint8Array;
}

export interface Loaded {
  revision: string;
  /** false when the request named the revision already serving (nothing was done). */
  swapped: boolean;
  /** The plugin exported a self-check and passed it. */
  selfChecked: boolean;
  /** Bytes of state handed over, or null when none was. */
  stateBytes: number | null;
  /** PluginHost: the compiled module came from the host's cache (compileMs is then 0). */
  cached?: boolean;
  compileMs?: number;
  totalMs: number;
  /** Time of the swap itself. */
  swapMs: number;
}

/** The class of a guest failure. */
export type FaultKind = 'status' | 'bad_range' | 'timeout' | 'memory_limit' | 'trap' | 'other';

/** A load that did not happen; the previous revision keeps serving. */
export class LoadError extends Error {
  kind:
    | 'read' | 'module_too_large' | 'bad_digest' | 'digest_mismatch' | 'compile_timeout' | 'invalid_wasm'
    | 'abi' | 'instantiate' | 'configure' | 'self_check' | 'save_state' | 'restore_state'
    | 'too_many_plugins' | 'import' | 'closed';
  plugin: string;
  revision: string;
  fault?: FaultKind;
}

/** A request the serving revision could not serve. */
export class CallError extends Error {
  kind: 'not_loaded' | 'busy' | 'handle' | 'reinstantiate';
  plugin: string;
  revision: string | null;
  fault?: FaultKind;
}

/** One revision's calls since the previous report: an entry of the protocol's `health` message. */
export interface PluginHealth {
  plugin: string;
  revision: string;
  calls: number;
  errors: { trap: number; timeout: number; memory: number; failed: number };
  /** Calls per latency bucket (20 entries; bounds in LATENCY_BOUNDS_US, then slower). */
  latency_us: number[];
}

export const HEALTH_INTERVAL_MS: number;
export const LATENCY_BOUNDS_US: readonly number[];
/** The latency bucket of a call of `micros` µs. */
export function latencyBucket(micros: number): number;

/** One revision held for all the calls of one request. */
export class Pinned {
  readonly revision: RevisionId;
  call(input: Uint8Array | string): Promise<Buffer>;
  /** Counts one call through this pin that returned as failed, on the pinned revision. */
  markFailed(): void;
  /** Lets the revision go; call it when the request ends (idempotent). */
  release(): void;
  [Symbol.dispose](): void;
}

/** Named Wasm plugins, each swapped atomically; the Node twin of hotload-host's PluginHost. */
export class PluginHost {
  constructor(config?: HostConfig, hooks?: HostHooks);
  readonly config: Required<HostConfig>;
  call(plugin: string, input: Uint8Array | string): Promise<Buffer>;
  pin(plugin: string): Pinned;
  /** Counts one call to `plugin` that returned as failed, on the revision serving now; false when none serves. */
  markFailed(plugin: string): boolean;
  /** What each plugin revision did since the previous takeHealth() (revisions with calls only); drains. */
  takeHealth(): PluginHealth[];
  serving(plugin: string): RevisionId | null;
  plugins(): string[];
  load(req: LoadRequest): Promise<Loaded>;
  loadFile(plugin: string, revision: string, path: string, digest: string, config?: Uint8Array | string | null): Promise<Loaded>;
  unload(plugin: string): Promise<boolean>;
  close(): Promise<void>;
  /** What the host keeps warm: compiled modules by digest (least recently used first), idle threads, threads started so far. */
  warm(): {
    modules: Array<{ digest: string; users: number; bytes: number }>;
    idleThreads: number;
    threadsStarted: number;
  };
}

export interface ModuleLoadRequest {
  plugin: string;
  revision: string;
  digest: string;
  /** JSON text handed (parsed) to the module's `configure`; null for none. */
  config?: Uint8Array | string | null;
  /** The module's source (ESM). */
  source: Uint8Array;
}

/** Hot-loaded JavaScript (ESM) modules: trusted code, run in-process, swapped atomically. */
export class ModuleHost {
  constructor(config?: { dir?: string; maxPlugins?: number }, hooks?: HostHooks);
  /** The serving module's namespace; throws a CallError `not_loaded`. */
  module(plugin: string): any;
  call(plugin: string, ...args: unknown[]): Promise<any>;
  serving(plugin: string): { plugin: string; revision: string; digest: string } | null;
  plugins(): string[];
  load(req: ModuleLoadRequest): Promise<Loaded>;
  loadFile(plugin: string, revision: string, path: string, digest: string, config?: Uint8Array | string | null): Promise<Loaded>;
  unload(plugin: string): Promise<boolean>;
  /** Unloads every module and removes the private directory this host made. */
  close(): Promise<void>;
}

export const DEFAULT_SOCKET: string;

export interface AppClientOptions {
  /** Wasm plugins are loaded here. */
  host?: PluginHost;
  /** Files that are not Wasm are imported here as JavaScript modules. */
  modules?: ModuleHost;
  /** Default: $HOTLOAD_APP_SOCKET, else /var/run/hotload/app.sock. */
  socket?: string;
  /** Default: $HOTLOAD_APP, else the script's name. */
  app?: string;
  /** Default: the process id. */
  worker?: string;
  /** How often the host's call counts go to the sidecar while calls happen. Default 1000. */
  healthIntervalMs?: number;
}

/** The sidecar's app protocol v2: one per process (in a cluster app, one per worker). */
export class AppClient extends EventEmitter {
  constructor(opts: AppClientOptions);
  readonly connected: boolean;
  readonly worker: string;
  start(): this;
  close(): Promise<void>;
}

export function parseSha256(digest: string): string | null;
export function sha256Digest(bytes: Uint8Array): string;

export namespace abi {
  const MEMORY: string;
  const ALLOC: string;
  const HANDLE: string;
  const CONFIGURE: string;
  const SELF_CHECK: string;
  const SAVE_STATE: string;
  const RESTORE_STATE: string;
  const INITIALIZE: string;
  function pack(ptr: number, len: number): bigint;
  function unpack(packed: bigint): [number, number];
  function checkedRange(ptr: number, len: number, memoryLen: number): [number, number] | null;
}

export namespace protocol {
  const PROTOCOL: 2;
  function backoffMs(attempt: number): number;
  function configBytes(config: unknown): Uint8Array;
  function health(plugins: PluginHealth[]): { type: 'health'; plugins: PluginHealth[] };
}
