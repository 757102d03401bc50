// The WASI preview1 a plugin gets, as hotload-host gives it: clocks and randomness only. No
// files, no preopened directories, no environment, no arguments, no sockets; stdin reads
// end of file, stdout and stderr are discarded. Enough for the runtimes of compiled
// languages (Go, Rust, C via wasi-libc) to start, nothing to escape with.
//
// The one call that can block, poll_oneoff (every language's sleep), sleeps no later than
// the call's deadline and then throws TimeoutSignal, so a sleeping plugin ends at the
// deadline like a looping one (Atomics.wait: with calls inline, the sleep blocks the event
// loop, at most until the deadline).

import { webcrypto } from 'node:crypto';

/** Every function of wasi_snapshot_preview1; a plugin may import any of them, nothing else. */
export const WASI_FUNCTIONS = new Set([
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get', 'clock_time_get',
  'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get', 'fd_fdstat_set_flags',
  'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size', 'fd_filestat_set_times', 'fd_pread',
  'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite', 'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek',
  'fd_sync', 'fd_tell', 'fd_write', 'path_create_directory', 'path_filestat_get', 'path_filestat_set_times',
  'path_link', 'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get', 'sock_accept',
  'sock_recv', 'sock_send', 'sock_shutdown',
]);

export const WASI_MODULE = 'wasi_snapshot_preview1';

const ESUCCESS = 0;
const EBADF = 8;
const EINVAL = 28;
const ENOTSUP = 58;
const ESPIPE = 70;

/** Thrown by a sleep that reached the call's deadline. */
export class TimeoutSignal extends Error {}

/** Thrown by proc_exit. */
export class ExitSignal extends Error {
  constructor(code) {
    super(`exited with status ${code}`);
    this.code = code;
  }
}

/**
 * Builds the import object for one instance.
 * @param {() => WebAssembly.Memory | undefined} memory the instance's memory, once it exists
 * @param {() => number} deadline when the guest call in progress must end (performance.now() ms)
 */
export function sandboxedWasi(memory, deadline) {
  const origin = process.hrtime.bigint();
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const view = () => new DataView(memory().buffer);
  const monotonic = () => process.hrtime.bigint() - origin;
  const realtime = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
  const fns = {
    args_sizes_get(argc, bufSize) {
      const v = view();
      v.setUint32(argc, 0, true);
      v.setUint32(bufSize, 0, true);
      return ESUCCESS;
    },
    args_get: () => ESUCCESS,
    environ_get: () => ESUCCESS,
    clock_res_get(id, out) {
      if (id > 1) return ENOTSUP;
      view().setBigUint64(out, id === 0 ? 1000n : 1n, true);
      return ESUCCESS;
    },
    clock_time_get(id, _precision, out) {
      if (id === 0) view().setBigUint64(out, realtime(), true);
      else if (id === 1) view().setBigUint64(out, monotonic(), true);
      else return ENOTSUP;
      return ESUCCESS;
    },
    random_get(ptr, len) {
      const bytes = new Uint8Array(memory().buffer, ptr, len);
      for (let i = 0; i < len; i += 65536) webcrypto.getRandomValues(bytes.subarray(i, Math.min(len, i + 65536)));
      return ESUCCESS;
    },
    fd_write(fd, iovs, iovsLen, nwritten) {
      if (fd !== 1 && fd !== 2) return EBADF;
      const v = view();
      let total = 0;
      for (let i = 0; i < iovsLen; i++) total += v.getUint32(iovs + 8 * i + 4, true);
      v.setUint32(nwritten, total, true);
      return ESUCCESS;
    },
    fd_read(fd, _iovs, _iovsLen, nread) {
      if (fd !== 0) return EBADF;
      view().setUint32(nread, 0, true);
      return ESUCCESS;
    },
    fd_fdstat_get(fd, out) {
      if (fd > 2) return EBADF;
      const v = view();
      for (let i = 0; i < 24; i++) v.setUint8(out + i, 0);
      v.setUint8(out, 2); // character device
      return ESUCCESS;
    },
    fd_close: (fd) => (fd > 2 ? EBADF : ESUCCESS),
    fd_seek: (fd) => (fd > 2 ? EBADF : ESPIPE),
    fd_tell: (fd) => (fd > 2 ? EBADF : ESPIPE),
    sched_yield: () => ESUCCESS,
    proc_exit(code) {
      throw new ExitSignal(code);
    },
    proc_raise: () => ENOTSUP,
    poll_oneoff(inPtr, outPtr, nsubs, neventsPtr) {
      if (nsubs === 0) return EINVAL;
      const v = view();
      const now = monotonic();
      let wake = null;
      const ready = [];
      const clocks = [];
      for (let i = 0; i < nsubs; i++) {
        const s = inPtr + 48 * i;
        const userdata = v.getBigUint64(s, true);
        const tag = v.getUint8(s + 8);
        if (tag === 0) {
          const id = v.getUint32(s + 16, true);
          const timeout = v.getBigUint64(s + 24, true);
          const abs = (v.getUint16(s + 40, true) & 1) === 1;
          let at;
          if (!abs) at = now + timeout;
          else if (id === 1) at = timeout;
          else at = now + (timeout > realtime() ? timeout - realtime() : 0n);
          clocks.push({ userdata, at });
          if (wake === null || at < wake) wake = at;
        } else {
          // fd_read / fd_write: stdio is always ready, anything else is a bad descriptor.
          const fd = v.getUint32(s + 16, true);
          ready.push({ userdata, tag, error: fd <= 2 ? ESUCCESS : EBADF });
        }
      }
      if (ready.length === 0 && wake !== null) {
        const waitMs = Number(wake - now) / 1e6;
        const leftMs = deadline() - performance.now();
        if (waitMs >= leftMs) {
          if (leftMs > 0) Atomics.wait(sleeper, 0, 0, leftMs);
          throw new TimeoutSignal('sleep past the deadline');
        }
        if (waitMs > 0) Atomics.wait(sleeper, 0, 0, waitMs);
        const t = monotonic();
        for (const c of clocks) if (c.at <= t) ready.push({ userdata: c.userdata, tag: 0, error: ESUCCESS });
      }
      const mv = view();
      ready.forEach((e, i) => {
        const o = outPtr + 32 * i;
        for (let k = 0; k < 32; k++) mv.setUint8(o + k, 0);
        mv.setBigUint64(o, e.userdata, true);
        mv.setUint16(o + 8, e.error, true);
        mv.setUint8(o + 10, e.tag);
      });
      mv.setUint32(neventsPtr, ready.length, true);
      return ESUCCESS;
    },
  };
  const imports = {};
  for (const name of WASI_FUNCTIONS) imports[name] = fns[name] ?? (() => EBADF);
  imports.environ_sizes_get = imports.args_sizes_get;
  return imports;
}
