/**
 * Consistent hash ring (ketama-style: 160 points per server from md5), so
 * adding a server to a list of n moves about 1/(n+1) of the keys instead of
 * most of them, as memjs's default `hash % n` would. No failover: a key's
 * server never changes while another is down, because moving a lock key to
 * another server can grant the lock twice.
 */
import { createHash } from 'node:crypto';

const POINTS_PER_DIGEST = 4;
const DIGESTS_PER_SERVER = 40;

/** Maps keys to one of a fixed list of server names. */
export class HashRing {
  readonly #points: Uint32Array;
  readonly #owners: Uint16Array;
  readonly #size: number;

  constructor(names: readonly string[]) {
    if (names.length === 0) throw new RangeError('HashRing needs at least one server');
    if (names.length > 65_535) throw new RangeError('HashRing supports at most 65535 servers');
    this.#size = names.length;
    const pairs: Array<[number, number]> = [];
    names.forEach((name, index) => {
      for (let d = 0; d < DIGESTS_PER_SERVER; d++) {
        const digest = createHash('md5').update(`${name}-${d}`).digest();
        for (let p = 0; p < POINTS_PER_DIGEST; p++) pairs.push([digest.readUInt32LE(p * 4), index]);
      }
    });
    pairs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    this.#points = Uint32Array.from(pairs, (pair) => pair[0]);
    this.#owners = Uint16Array.from(pairs, (pair) => pair[1]);
  }

  /** Index (into the constructor's list) of the server owning `key`. */
  lookup(key: string): number {
    if (this.#size === 1) return 0;
    const h = createHash('md5').update(key).digest().readUInt32LE(0);
    const points = this.#points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((points[mid] as number) < h) lo = mid + 1;
      else hi = mid;
    }
    return this.#owners[lo === points.length ? 0 : lo] as number;
  }
}
