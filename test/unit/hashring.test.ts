/**
 * The consistent hash ring. About 400 ms of synchronous hashing: it runs in
 * this file's own process (ava runs each file in one), never in a file that
 * measures time.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { HashRing } from '../../src/transport/hashring.js';

test('hash ring: even spread, and adding a 4th server moves about a quarter of keys, only to the new server', (t) => {
  const three = new HashRing(['a:1', 'b:1', 'c:1']);
  const four = new HashRing(['a:1', 'b:1', 'c:1', 'd:1']);
  const counts = [0, 0, 0];
  let moved = 0;
  let wrongTarget = 0;
  const n = 20_000;
  for (let i = 0; i < n; i++) {
    const key = `memlock:key-${i}`;
    const before = three.lookup(key);
    counts[before]!++;
    const after = four.lookup(key);
    if (after !== before) {
      moved++;
      if (after !== 3) wrongTarget++;
    }
  }
  t.is(wrongTarget, 0, 'a key only ever moves to the new server');
  for (const c of counts) t.true(c > (n / 3) * 0.75 && c < (n / 3) * 1.25, `spread ${counts.join('/')}`);
  t.true(moved / n > 0.15 && moved / n < 0.35, `moved ${((100 * moved) / n).toFixed(1)}%`);
});

test('hash ring: deterministic, order of the list matters only for indexes, one server takes everything', (t) => {
  const ring = new HashRing(['a:1', 'b:1']);
  const again = new HashRing(['a:1', 'b:1']);
  const swapped = new HashRing(['b:1', 'a:1']);
  const seen = new Set<number>();
  for (let i = 0; i < 200; i++) {
    const key = `k${i}`;
    const index = ring.lookup(key);
    seen.add(index);
    t.is(again.lookup(key), index);
    t.is(swapped.lookup(key), 1 - index, 'the same server, named by its new index');
  }
  t.deepEqual([...seen].sort(), [0, 1]);
  const single = new HashRing(['only:1']);
  t.is(single.lookup('anything'), 0);
  t.throws(() => new HashRing([]), { instanceOf: RangeError, message: /at least one/ });
  t.throws(() => new HashRing(Array.from({ length: 65_536 }, (_, i) => `s${i}`)), {
    instanceOf: RangeError,
    message: /65535/,
  });
});

test('hash ring: a key maps to the first point at or after its hash, wrapping past the last (ketama: 160 points per server)', (t) => {
  const names = ['a:1', 'b:1', 'c:1'];
  const ring = new HashRing(names);
  const md5 = (text: string): Buffer => createHash('md5').update(text).digest();
  const points: Array<[number, number]> = [];
  names.forEach((name, index) => {
    for (let d = 0; d < 40; d++)
      for (let p = 0; p < 4; p++) points.push([md5(`${name}-${d}`).readUInt32LE(p * 4), index]);
  });
  points.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  t.is(points.length, 480);
  const owner = (h: number): number => (points.find(([point]) => point >= h) ?? points[0]!)[1];
  let wrapped = 0;
  for (let i = 0; i < 3000; i++) {
    const key = `key-${i}`;
    const h = md5(key).readUInt32LE(0);
    if (h > points.at(-1)![0]) wrapped++;
    t.is(ring.lookup(key), owner(h), key);
  }
  t.log(`${wrapped} keys wrapped around`);
});
