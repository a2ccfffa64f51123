/**
 * memcache key derivation (API.md "Keys"): `prefix + key` when it is at most
 * 250 bytes and holds no whitespace or control characters (the text protocol
 * forbids them, and other clients may read the same keys), otherwise
 * `prefix + 'sha256:' + hex(sha256(key))`. The prefix is validated at
 * construction, so a hashed key always fits.
 *
 * A key holding a lone surrogate (not well-formed UTF-16) has no UTF-8 form:
 * encoding would turn every lone surrogate into U+FFFD and make '\uD800' and
 * '\uDBFF' one lock. Such keys are hashed from their UTF-16 code units
 * instead, so distinct strings stay distinct locks.
 */
import { createHash } from 'node:crypto';

/** memcached's key length limit in bytes. */
export const MAX_KEY_BYTES = 250;

// \s covers Unicode spaces; \p{Cc} covers C0, DEL and C1 controls.
const FORBIDDEN = /[\s\p{Cc}]/u;

/** Maps a caller's key to the memcache key. */
export function memcacheKeyOf(prefix: string, key: string): string {
  const full = prefix + key;
  // Cheap length bound first: a UTF-16 unit is at most 3 UTF-8 bytes.
  const wellFormed = key.isWellFormed();
  if (
    wellFormed &&
    (full.length * 3 <= MAX_KEY_BYTES || Buffer.byteLength(full) <= MAX_KEY_BYTES) &&
    !FORBIDDEN.test(key)
  ) {
    return full;
  }
  return (
    prefix +
    'sha256:' +
    createHash('sha256')
      .update(key, wellFormed ? 'utf8' : 'utf16le')
      .digest('hex')
  );
}

/**
 * The memcache key of the waiter queue of the entry `memcacheKey` (fleet-queue.ts). Always hashed,
 * under a tag no plain or hashed lock key produces ('sha256q:' is not
 * 'sha256:'), so a caller's key can never name another key's queue by accident.
 */
export function queueKeyOf(prefix: string, memcacheKey: string): string {
  return prefix + 'sha256q:' + createHash('sha256').update(memcacheKey).digest('hex');
}
