// The `sha256:<hex>` digest form shared with the sidecar, and the check the host repeats
// before it compiles: the shared volume is writable by other containers of the pod.

import { createHash, webcrypto } from 'node:crypto';

/** The 64 hex digits of a well-formed `sha256:<64 lowercase hex>` digest, else null. */
export function parseSha256(digest) {
  const m = /^sha256:([0-9a-f]{64})$/.exec(String(digest));
  return m ? m[1] : null;
}

/** `sha256:<hex>` of `bytes`. */
export function sha256Digest(bytes) {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/**
 * Up to this size a module is hashed on the event loop: 16 KiB took ~13 µs with SHA
 * instructions (a few times that without), less than the event loop's own share of a trip to
 * the thread pool through WebCrypto (~70 µs measured).
 */
export const HASH_INLINE_MAX_BYTES = 16 << 10;

/** `sha256:<hex>` of `bytes`; past HASH_INLINE_MAX_BYTES hashed off the event loop (libuv's thread pool). */
export async function sha256DigestAsync(bytes) {
  if (bytes.byteLength <= HASH_INLINE_MAX_BYTES) return sha256Digest(bytes);
  const d = await webcrypto.subtle.digest('SHA-256', bytes);
  return `sha256:${Buffer.from(d).toString('hex')}`;
}
