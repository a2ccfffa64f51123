/**
 * The cross-process waiter queue's steps (src/fleet-queue.ts) over the
 * `memlock/testing` stand-in: encoding, liveness, CAS-checked changes.
 */
import test from 'ava';
import {
  QUEUE_ALIVE_MS,
  QUEUE_TTL_SECONDS,
  decodeQueue,
  encodeQueue,
  joined,
  liveOthers,
  readQueue,
  updateQueue,
  without,
} from '../../src/fleet-queue.js';
import { MemcacheStandIn } from '../../src/testing.js';

const w = (token: string, joinedAt: number, expiresAt: number) => ({ token, joinedAt, expiresAt });

test('encode/decode: mq1|token,joinedAt,expiresAt|…; junk entries and foreign values are dropped', (t) => {
  t.is(QUEUE_ALIVE_MS, 10_000);
  t.is(QUEUE_TTL_SECONDS, 30);
  const list = [w('a', 1, 2), w('b', 3, 4)];
  t.is(encodeQueue(list).toString(), 'mq1|a,1,2|b,3,4');
  t.is(encodeQueue([]).toString(), 'mq1');
  t.deepEqual(decodeQueue(encodeQueue(list)), list);
  t.deepEqual(decodeQueue(Buffer.from('mq1')), []);
  t.deepEqual(decodeQueue(Buffer.from('xx1|a,1,2')), []);
  t.deepEqual(decodeQueue(Buffer.from('mq1|,1,2|a,x,2|b,1,y|c,1|d,5,6')), [w('d', 5, 6)]);
});

test('liveOthers: live waiters other than self, in order', (t) => {
  const list = [w('a', 1, 100), w('self', 2, 100), w('dead', 3, 50), w('b', 4, 51)];
  t.deepEqual(liveOthers(list, 'self', 50), [w('a', 1, 100), w('b', 4, 51)]);
  t.deepEqual(liveOthers(list, 'self', 51), [w('a', 1, 100)]);
});

test('joined: appends at the tail, or refreshes in place keeping joinedAt; drops expired waiters', (t) => {
  const list = [w('a', 1, 1000), w('dead', 2, 10), w('b', 3, 1000)];
  t.deepEqual(joined('c', 100)(list), [w('a', 1, 1000), w('b', 3, 1000), w('c', 100, 100 + QUEUE_ALIVE_MS)]);
  t.deepEqual(joined('a', 100)(list), [w('a', 1, 100 + QUEUE_ALIVE_MS), w('b', 3, 1000)]);
  t.deepEqual(joined('a', 10)([w('x', 0, 10)]), [w('a', 10, 10 + QUEUE_ALIVE_MS)], 'expiresAt == now is expired');
});

test('without: removes tokens and expired waiters; undefined when nothing changes', (t) => {
  const list = [w('a', 1, 1000), w('b', 2, 1000), w('dead', 3, 10)];
  t.deepEqual(without(['a'], 100)(list), [w('b', 2, 1000)]);
  t.deepEqual(without([], 100)(list), [w('a', 1, 1000), w('b', 2, 1000)]);
  t.is(without(['zz'], 5)(list), undefined);
  t.deepEqual(without(['dead'], 5)(list), [w('a', 1, 1000), w('b', 2, 1000)]);
});

test('updateQueue: add when missing, CAS set when present, CAS delete when emptied; conflicts re-read', async (t) => {
  const memcache = new MemcacheStandIn();
  const client = memcache.client();
  t.deepEqual(await readQueue(client, 'q'), { entry: null, waiters: [] });
  t.deepEqual(await updateQueue(client, 'q', () => []), [], 'an empty change on a missing queue writes nothing');
  t.deepEqual(memcache.ops, { add: 0, get: 2, set: 0, delete: 0 });
  t.deepEqual(await updateQueue(client, 'q', joined('a', 1)), [w('a', 1, 1 + QUEUE_ALIVE_MS)]);
  t.is(memcache.peek('q')?.ttlSeconds, QUEUE_TTL_SECONDS);
  t.is(memcache.ops.add, 1);
  await updateQueue(client, 'q', joined('b', 2));
  t.is(memcache.ops.set, 1);
  t.deepEqual(
    (await readQueue(client, 'q')).waiters.map((x) => x.token),
    ['a', 'b'],
  );
  t.deepEqual(
    await updateQueue(client, 'q', () => undefined),
    (await readQueue(client, 'q')).waiters,
    'no change: the list as read',
  );
  // A concurrent change between our read and our write: the CAS fails, we re-read and apply again.
  const state = await readQueue(client, 'q');
  memcache.set('q', encodeQueue([w('a', 1, 99_999), w('b', 2, 99_999), w('c', 3, 99_999)]), 30);
  const next = await updateQueue(client, 'q', joined('d', 4), state);
  t.deepEqual(
    next?.map((x) => x.token),
    ['a', 'b', 'c', 'd'],
  );
  t.deepEqual(await updateQueue(client, 'q', without(['a', 'b', 'c', 'd'], 5)), []);
  t.is(memcache.peek('q'), null, 'an emptied queue is deleted');
  t.is(memcache.ops.delete, 1);
});

test('updateQueue: gives up with undefined after 8 conflicting rounds', async (t) => {
  const memcache = new MemcacheStandIn();
  const client = memcache.client();
  memcache.set('q', encodeQueue([w('a', 1, 99_999)]), 30);
  let rounds = 0;
  const result = await updateQueue(client, 'q', (waiters) => {
    rounds++;
    memcache.set('q', encodeQueue([...waiters]), 30); // someone else writes every time
    return [...waiters, w(`x${rounds}`, 2, 99_999)];
  });
  t.is(result, undefined);
  t.is(rounds, 8);
});

test('updateQueue: a CAS read before a restart is never used after it (memcached counts CAS from 1 again)', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const now = Date.now();
  await updateQueue(c, 'q', joined('a', now));
  const before = await readQueue(c, 'q');
  t.is(before.entry?.cas, 1n);
  // The server restarts; another process queues first and gets CAS 1 again.
  memcache.restart();
  const other = memcache.client();
  await updateQueue(other, 'q', joined('b', now));
  t.is((await readQueue(other, 'q')).entry?.cas, 1n, 'the same CAS value, a different entry');
  // Our change starts from the stale read: it must re-read, not overwrite b's queue.
  await updateQueue(c, 'q', joined('c', now), before);
  t.deepEqual(
    (await readQueue(c, 'q')).waiters.map((waiter) => waiter.token),
    ['b', 'c'],
  );
});
