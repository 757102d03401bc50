// Errors of the host, each naming the plugin, the revision and the cause in the words
// hotload-host uses (plugin-host/src/error.rs), so the `failed` reason an operator reads is
// the same whichever SDK the app uses.
//
// A guest failure travels between threads as plain data:
//   Fault        {type:'timeout'} | {type:'memory_limit', requested, limit} | {type:'trap', message} | {type:'other', message}
//   GuestFailure {type:'status', code} | {type:'fault', fault} | {type:'bad_range', ptr, len}

/** Words of a fault, as hotload-host writes them. */
export function faultText(f) {
  switch (f.type) {
    case 'timeout': return 'deadline exceeded (interrupted)';
    case 'memory_limit': return `memory limit exceeded: asked for ${f.requested} bytes, limit is ${f.limit} bytes`;
    case 'trap': return `trap: ${f.message}`;
    default: return f.message;
  }
}

/** Words of a guest failure, as hotload-host writes them. */
export function failureText(g) {
  switch (g.type) {
    case 'status': return `returned status ${g.code}`;
    case 'bad_range': return `returned range ptr=${g.ptr} len=${g.len} outside its memory`;
    default: return faultText(g.fault);
  }
}

/** The short class of a guest failure: status, bad_range, timeout, memory_limit, trap, other. */
export function failureKind(g) {
  return g.type === 'fault' ? g.fault.type : g.type;
}

/** Words of a guest step, as hotload-host writes them in a reason. */
export const PHASE_WORDS = {
  configure: 'configure', self_check: 'self-check', save_state: 'save-state', restore_state: 'restore-state',
};

/**
 * A load that did not happen; the previous revision (if any) keeps serving.
 * `kind` is one of: read, module_too_large, bad_digest, digest_mismatch, compile_timeout,
 * invalid_wasm, abi, instantiate, configure, self_check, save_state, restore_state,
 * too_many_plugins. `fault` is the guest failure's class where a guest failed.
 */
export class LoadError extends Error {
  constructor(kind, plugin, revision, message, failure) {
    super(message);
    this.name = 'LoadError';
    this.kind = kind;
    this.plugin = plugin;
    this.revision = revision;
    /** @type {object | undefined} the GuestFailure, when guest code failed */
    this.failure = failure;
    this.fault = failure ? failureKind(failure) : undefined;
  }

  static guest(phase, plugin, revision, failure) {
    return new LoadError(phase, plugin, revision,
      `plugin ${plugin} revision ${revision}: ${PHASE_WORDS[phase]} failed: ${failureText(failure)}`, failure);
  }

  static instantiate(plugin, revision, fault) {
    return new LoadError('instantiate', plugin, revision,
      `plugin ${plugin} revision ${revision}: instantiation failed: ${faultText(fault)}`, { type: 'fault', fault });
  }

  static of(kind, plugin, revision, detail) {
    return new LoadError(kind, plugin, revision, `plugin ${plugin} revision ${revision}: ${detail}`);
  }
}

/**
 * A request the serving revision could not serve. `kind`: not_loaded, busy, handle
 * (the guest failed; `fault` says how), reinstantiate, closed.
 */
export class CallError extends Error {
  constructor(kind, plugin, revision, message, failure) {
    super(message);
    this.name = 'CallError';
    this.kind = kind;
    this.plugin = plugin;
    this.revision = revision;
    this.failure = failure;
    this.fault = failure ? failureKind(failure) : undefined;
  }

  static notLoaded(plugin) {
    return new CallError('not_loaded', plugin, null, `plugin ${plugin}: not loaded`);
  }
}
