/**
 * The lock protocol's steps (src/protocol.ts) over the `memlock/testing`
 * stand-in: value encoding, lease arithmetic, acquisition modes and their
 * operation counts, ambiguity recovery, renew/release after a reconnect.
 */
import test from 'ava';
import { MemcacheUnavailableError, type LockClient } from '../../src/index.js';
import {
  acquireEntry,
  decodeValue,
  encodeValue,
  isAmbiguous,
  guaranteedMs,
  holdTtlSeconds,
  leaseDeadline,
  leaseMargin,
  leaseTtlSeconds,
  RESERVATION_TTL_SECONDS,
  readHolder,
  releaseEntry,
  renewEntry,
  replaceEntry,
  transferEntry,
  type Held,
} from '../../src/protocol.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime } from '../helpers/clock.js';

const held = (value: Buffer, fields: Partial<Held> = {}): Held => ({
  memcacheKey: 'k',
  value,
  ttlSeconds: 5,
  cas: 1n,
  conn: 1,
  sentAt: 0,
  verify: false,
  ...fields,
});

test('values: encode/decode round trip, clientId last (may hold colons), tagged by state', (t) => {
  const value = encodeValue('host:1:worker', 1234, 'tok');
  t.is(value.toString(), 'ml1:1234:tok:host:1:worker');
  t.deepEqual(decodeValue(value), { acquiredAt: 1234, token: 'tok', clientId: 'host:1:worker', state: 'held' });
  t.is(encodeValue('A', 1, 't', 'done').toString(), 'ml1d:1:t:A');
  t.is(encodeValue('A', 1, 't', 'reserved').toString(), 'ml1r:1:t:A');
  t.is(decodeValue(encodeValue('A', 1, 't', 'done'))?.state, 'done');
  t.is(decodeValue(encodeValue('A', 1, 't', 'reserved'))?.state, 'reserved');
  t.is(decodeValue(encodeValue('', 1, 't'))?.clientId, '');
  t.not(encodeValue('A', 1).toString(), encodeValue('A', 1).toString(), 'a random token per acquisition');
  // The generated token must survive the value format (no ':'), and stay unique over many locks.
  const tokens = new Set<string>();
  for (let i = 0; i < 10_000; i++) {
    const decoded = decodeValue(encodeValue('host:1:worker', 1));
    t.is(decoded?.clientId, 'host:1:worker');
    tokens.add(decoded?.token ?? '');
  }
  t.is(tokens.size, 10_000);
  for (const bad of [
    '',
    'ml1',
    'ml1:1',
    'ml1:1:t',
    'xx1:1:t:A',
    'ml1:NaN:t:A',
    'ml1:abc:t:A',
    'ml2:1:t:A',
    'ml1:Infinity:t:A',
  ]) {
    t.is(decodeValue(Buffer.from(bad)), null, bad);
  }
  t.deepEqual(decodeValue(Buffer.from('ml1:5::')), { acquiredAt: 5, token: '', clientId: '', state: 'held' });
});

test('lease arithmetic: TTL n + 1, guaranteed (n-1) s after the send, minus min(100 ms, a tenth) and the loop delay', (t) => {
  // The written TTL: whole seconds rounded up, plus 1 s for memcached's 2 s clock jump.
  t.is(leaseTtlSeconds(2000), 3);
  t.is(leaseTtlSeconds(2001), 4);
  t.is(leaseTtlSeconds(16_000), 17);
  // Past 30 days memcached reads an absolute time: capped.
  t.is(leaseTtlSeconds(30 * 24 * 3600 * 1000), 30 * 24 * 3600);
  // A completed marker is not renewed: it gets the whole 2 s jump on top.
  t.is(holdTtlSeconds(0), 0);
  t.is(holdTtlSeconds(1), 3);
  t.is(holdTtlSeconds(60_000), 62);
  t.is(RESERVATION_TTL_SECONDS, 3);
  // TTL t is guaranteed for t - 2 s after the send.
  t.is(guaranteedMs(3), 1000);
  t.is(guaranteedMs(17), 15_000);
  t.is(leaseMargin(3), 100);
  t.is(leaseMargin(17), 100);
  t.is(leaseMargin(2.5), 50);
  t.is(leaseDeadline(0, 3), 900);
  t.is(leaseDeadline(1000, 4), 2900);
  t.is(leaseDeadline(500, 17), 500 + 15_000 - 100);
  // The loop delay widens the margin, by at most a quarter of the guaranteed lease.
  t.is(leaseMargin(3, 40), 140);
  t.is(leaseMargin(3, 1000), 100 + 250);
  t.is(leaseMargin(17, -5), 100);
  t.is(leaseDeadline(0, 17, 200), 15_000 - 300);
});

test('isAmbiguous: a MemcacheUnavailableError whose request may have been applied (the transport says so)', (t) => {
  t.true(isAmbiguous(new MemcacheUnavailableError('x')), 'unknown means it may have been applied');
  t.true(isAmbiguous(new MemcacheUnavailableError('x', { mayHaveApplied: true })));
  t.false(isAmbiguous(new MemcacheUnavailableError('x', { mayHaveApplied: false })));
  t.false(isAmbiguous(new Error('plain')));
  t.false(isAmbiguous(undefined));
});

function standIn(): { memcache: MemcacheStandIn; client: LockClient } {
  const memcache = new MemcacheStandIn();
  return { memcache, client: memcache.client() };
}

test('acquire, add mode: one add on a free key; on a held one, one read decides', async (t) => {
  const { memcache, client } = standIn();
  const first = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  t.true(first.acquired);
  if (!first.acquired) return;
  t.is(first.how, 'added');
  t.is(first.previous, null);
  t.is(first.held.cas, 1n);
  t.is(first.held.ttlSeconds, 5);
  t.false(first.held.verify);
  t.deepEqual(memcache.ops, { add: 1, get: 0, set: 0, delete: 0 });
  t.is(memcache.peek('k')?.ttlSeconds, 5);
  const refused = await acquireEntry(client, 'k', 'B', 5, undefined, 'add');
  t.false(refused.acquired);
  if (refused.acquired) return;
  t.is(refused.holder?.clientId, 'A');
  t.deepEqual(memcache.ops, { add: 2, get: 1, set: 0, delete: 0 });
});

test('acquire, probe mode: a held key costs one read; a free key a read and an add', async (t) => {
  const { memcache, client } = standIn();
  await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  const refused = await acquireEntry(client, 'k', 'B', 5, undefined, 'probe');
  t.false(refused.acquired);
  t.deepEqual(memcache.ops, { add: 1, get: 1, set: 0, delete: 0 });
  const free = await acquireEntry(client, 'free', 'B', 5, undefined, 'probe');
  t.true(free.acquired);
  t.deepEqual(memcache.ops, { add: 2, get: 2, set: 0, delete: 0 });
});

test('acquire, pipelined mode: add and read in one request', async (t) => {
  const { memcache, client } = standIn();
  const first = await acquireEntry(client, 'k', 'A', 5, undefined, 'pipelined');
  t.true(first.acquired);
  const refused = await acquireEntry(client, 'k', 'B', 5, undefined, 'pipelined');
  t.false(refused.acquired);
  if (!refused.acquired) t.is(refused.holder?.clientId, 'A');
  t.deepEqual(memcache.ops, { add: 2, get: 2, set: 0, delete: 0 });
});

test('acquire: same clientId takes over by CAS with a new value; a steal needs an older holder', async (t) => {
  const { memcache, client } = standIn();
  const first = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!first.acquired) return t.fail();
  const again = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!again.acquired) return t.fail();
  t.is(again.how, 'takeover');
  t.is(again.previous?.clientId, 'A');
  t.false(again.held.value.equals(first.held.value));
  t.is(again.held.cas, 2n);
  t.true(memcache.peek('k')!.value.equals(again.held.value));
  // A holder acquired in the past: stealable once older than stealAfterMs.
  memcache.set('old', encodeValue('X', Date.now() - 10_000), 30);
  const young = await acquireEntry(client, 'old', 'B', 5, 20_000, 'add');
  t.false(young.acquired);
  const exact = await acquireEntry(client, 'old', 'B', 5, 10_000 + 60_000, 'add');
  t.false(exact.acquired);
  const stolen = await acquireEntry(client, 'old', 'B', 5, 5000, 'add');
  if (!stolen.acquired) return t.fail();
  t.is(stolen.how, 'stolen');
  t.is(stolen.previous?.clientId, 'X');
  t.is(decodeValue(memcache.peek('old')!.value)?.clientId, 'B');
});

test('acquire: a completed marker and a foreign value are never taken over; a reservation only by its token', async (t) => {
  const { memcache, client } = standIn();
  memcache.set('done', encodeValue('A', 0, 't', 'done'), 30);
  t.false((await acquireEntry(client, 'done', 'A', 5, 0, 'add')).acquired, 'not even by the same clientId or a steal');
  memcache.set('foreign', 'not memlock', 30);
  const foreign = await acquireEntry(client, 'foreign', 'A', 5, 0, 'add');
  t.false(foreign.acquired);
  if (!foreign.acquired) t.is(foreign.holder, null);
  memcache.set('res', encodeValue('queue-token', 0, 't', 'reserved'), 30);
  t.false((await acquireEntry(client, 'res', 'queue-token', 5, 0, 'add')).acquired, 'a clientId is not a queue token');
  t.false((await acquireEntry(client, 'res', 'A', 5, 0, 'add', 'other-token')).acquired);
  const handoff = await acquireEntry(client, 'res', 'A', 5, undefined, 'add', 'queue-token');
  if (!handoff.acquired) return t.fail();
  t.is(handoff.how, 'handoff');
  t.is(handoff.previous, null);
});

test('acquire: a CAS from a replaced connection is not used; the next round reads again', async (t) => {
  const { memcache, client } = standIn();
  await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  // The other client read the entry on connection 1, then every connection broke.
  const slowClient: LockClient = {
    ...client,
    add: (...args) => client.add(...args),
    addThenGet: (...args) => client.addThenGet(...args),
    get: async (key) => {
      const entry = await client.get(key);
      memcache.unreachable(true);
      memcache.unreachable(false);
      return entry;
    },
    casSet: (...args) => client.casSet(...args),
    casDelete: (...args) => client.casDelete(...args),
    isCurrent: (key, conn) => client.isCurrent(key, conn),
    serverOf: (key) => client.serverOf(key),
    close: () => client.close(),
  };
  const outcome = await acquireEntry(slowClient, 'k', 'A', 5, undefined, 'add');
  t.false(outcome.acquired, 'both rounds saw a CAS from a replaced connection');
  t.is(memcache.ops.set, 0, 'no CAS write with a stale CAS');
  t.deepEqual(memcache.ops, { add: 3, get: 2, set: 0, delete: 0 }, 'two rounds of add + read, no third');
});

test('acquire: the entry vanishing between the add and the read is retried once', async (t) => {
  const { memcache, client } = standIn();
  memcache.set('k', encodeValue('B', 0), 30);
  let adds = 0;
  const racing: LockClient = Object.assign(Object.create(Object.getPrototypeOf(client)) as LockClient, client, {
    add: async (key: string, value: Buffer, ttl: number) => {
      const result = await client.add(key, value, ttl);
      if (++adds === 1) memcache.evict(key); // the holder released right after our add was refused
      return result;
    },
  });
  racing.get = (key) => client.get(key);
  racing.isCurrent = (key, conn) => client.isCurrent(key, conn);
  const outcome = await acquireEntry(racing, 'k', 'A', 5, undefined, 'add');
  t.true(outcome.acquired);
  t.is(adds, 2);
});

test.serial(
  'acquire after an ambiguous add: read back; ours -> recovered (lease from the first send); someone else -> refused; missing -> the error',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    const memcache = new MemcacheStandIn();
    // Writes time out at 100 ms; the read-back goes over a patient connection.
    const writer = memcache.client({ timeoutMs: 100 });
    const reader = memcache.client({ timeoutMs: 1000 });
    const client: LockClient = {
      add: (...a) => writer.add(...a),
      addThenGet: (...a) => writer.addThenGet(...a),
      casSet: (...a) => writer.casSet(...a),
      casDelete: (...a) => writer.casDelete(...a),
      get: (key) => reader.get(key),
      isCurrent: () => true,
      serverOf: (key) => writer.serverOf(key),
      close: async () => {},
    };
    // The add times out at 100 ms; the server applies it at 150 ms; the read-back is answered at 250 ms.
    memcache.slow(150);
    const start = performance.now();
    const pending = acquireEntry(client, 'k', 'A', 5, undefined, 'add');
    await clock.tickAsync(250);
    const outcome = await pending;
    if (!outcome.acquired) return t.fail();
    t.is(outcome.how, 'recovered');
    t.is(outcome.held.sentAt, start, 'the lease counts from the add, not the read-back');
    t.is(outcome.held.cas, 1n);
    t.is(decodeValue(memcache.peek('k')!.value)?.clientId, 'A');

    // The read-back finds someone else's entry: refused with that holder.
    memcache.set('other', encodeValue('B', Date.now()), 30);
    const refusedP = acquireEntry(client, 'other', 'A', 5, undefined, 'add');
    await clock.tickAsync(250);
    const refused = await refusedP;
    t.false(refused.acquired);
    if (!refused.acquired) t.is(refused.holder?.clientId, 'B');

    // Nothing there after the read-back (the add never landed): the add's own error.
    memcache.slow(1000);
    const gone = acquireEntry(client, 'gone', 'A', 5, undefined, 'add').catch((e: unknown) => e);
    await clock.tickAsync(100);
    memcache.restart(); // the server dies before applying the add
    memcache.slow(0);
    await clock.tickAsync(10);
    const error = await gone;
    t.true(error instanceof MemcacheUnavailableError);
    t.regex((error as Error).message, /timed out/);
    t.deepEqual(memcache.keys(), []);
  },
);

test('acquire: an add the server refused with a status (not applied) rejects without a read-back', async (t) => {
  const { memcache, client } = standIn();
  const error = await t.throwsAsync(acquireEntry(client, 'k'.repeat(251), 'A', 5, undefined, 'add'), {
    instanceOf: MemcacheUnavailableError,
  });
  t.false(isAmbiguous(error));
  t.deepEqual(memcache.ops, { add: 1, get: 0, set: 0, delete: 0 });
});

test('acquire: a refused add (not applied) rejects at once, without a read-back', async (t) => {
  const { memcache, client } = standIn();
  memcache.unreachable(true);
  const error = await t.throwsAsync(acquireEntry(client, 'k', 'A', 5, undefined, 'add'), {
    instanceOf: MemcacheUnavailableError,
  });
  t.false(isAmbiguous(error));
  memcache.unreachable(false);
  t.is(memcache.ops.get, 0);
});

test('renew: one CAS write; the new CAS and send time are kept; gone and taken are told apart', async (t) => {
  const { memcache, client } = standIn();
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  const h = outcome.held;
  t.is(await renewEntry(client, h), 'renewed');
  t.is(h.cas, 2n);
  t.deepEqual(memcache.ops, { add: 1, get: 0, set: 1, delete: 0 });
  memcache.set('k', 'foreign', 30);
  t.is(await renewEntry(client, h), 'taken');
  memcache.evict('k');
  t.is(await renewEntry(client, h), 'gone');
});

test('renew after a failed write: reads back first, adopts the fresh CAS when the value is ours', async (t) => {
  const { memcache, client } = standIn();
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  const h = outcome.held;
  memcache.unreachable(true);
  await t.throwsAsync(renewEntry(client, h), { instanceOf: MemcacheUnavailableError });
  memcache.unreachable(false);
  const gets = memcache.ops.get;
  t.is(await renewEntry(client, h), 'renewed');
  t.is(memcache.ops.get, gets + 1);
  t.false(h.verify);
  t.true(client.isCurrent('k', h.conn));
  // After a restart the entry is gone: the read tells, no write is sent.
  memcache.restart();
  const sets = memcache.ops.set;
  t.is(await renewEntry(client, h), 'gone');
  t.is(memcache.ops.set, sets);
  // Restarted and someone else wrote CAS 1: taken, never overwritten.
  memcache.set('k', 'other', 30);
  t.is(await renewEntry(client, held(h.value, { cas: 1n, conn: 1 })), 'taken');
  t.is(memcache.peek('k')?.value.toString(), 'other');
});

test('release: CAS-checked delete; a stale CAS from before a restart never deletes', async (t) => {
  const { memcache, client } = standIn();
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  t.is(await releaseEntry(client, outcome.held), 'released');
  t.is(memcache.peek('k'), null);
  t.is(await releaseEntry(client, outcome.held), 'gone');

  const second = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!second.acquired) return t.fail();
  memcache.restart();
  memcache.set('k', encodeValue('B', 0), 30); // CAS 1 on the fresh server
  t.is(await releaseEntry(client, second.held), 'taken');
  t.is(decodeValue(memcache.peek('k')!.value)?.clientId, 'B');

  memcache.unreachable(true);
  await t.throwsAsync(releaseEntry(client, held(Buffer.from('x'), { conn: 99 })), {
    instanceOf: MemcacheUnavailableError,
  });
});

test('release on the same connection with a wrong CAS: taken, nothing deleted', async (t) => {
  const { memcache, client } = standIn();
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  memcache.set('k', 'foreign', 30);
  t.is(await releaseEntry(client, outcome.held), 'taken');
  t.is(memcache.peek('k')?.value.toString(), 'foreign');
  const failing = held(outcome.held.value, { cas: 1n, conn: 1 });
  memcache.unreachable(true);
  await t.throwsAsync(releaseEntry(client, failing));
});

test('replace: a completed marker with its own TTL; a lost entry is not replaced', async (t) => {
  const { memcache, client } = standIn();
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  t.is(await replaceEntry(client, outcome.held, 'done', 'A', 60), 'replaced');
  const marker = memcache.peek('k')!;
  t.is(decodeValue(marker.value)?.state, 'done');
  t.is(marker.ttlSeconds, 60);
  t.is(await replaceEntry(client, outcome.held, 'done', 'A', 60), 'taken');
  memcache.evict('k');
  t.is(await replaceEntry(client, outcome.held, 'done', 'A', 60), 'gone');
  const again = await acquireEntry(client, 'k2', 'A', 5, undefined, 'add');
  if (!again.acquired) return t.fail();
  memcache.unreachable(true);
  await t.throwsAsync(replaceEntry(client, again.held, 'done', 'A', 60));
});

test('readHolder: the decoded holder, or null', async (t) => {
  const { memcache, client } = standIn();
  t.is(await readHolder(client, 'k'), null);
  memcache.set('k', encodeValue('A', 7, 'tok'), 30);
  t.deepEqual(await readHolder(client, 'k'), { clientId: 'A', acquiredAt: 7, token: 'tok', state: 'held' });
  memcache.set('k', 'junk', 30);
  t.is(await readHolder(client, 'k'), null);
});

test('transfer: one CAS write of the new holder’s value; gone and taken told apart; an ambiguous write is read back, never re-sent', async (t) => {
  const memcache = new MemcacheStandIn();
  const inner = memcache.client();
  /** 'apply': the write lands but its answer is lost; 'drop': it never lands and its answer is lost. */
  let fault: 'apply' | 'drop' | undefined;
  const client: LockClient = {
    add: (...args) => inner.add(...args),
    addThenGet: (...args) => inner.addThenGet(...args),
    get: (key) => inner.get(key),
    casDelete: (...args) => inner.casDelete(...args),
    isCurrent: (key, conn) => inner.isCurrent(key, conn),
    serverOf: (key) => inner.serverOf(key),
    close: () => inner.close(),
    casSet: async (...args) => {
      if (fault === 'apply') await inner.casSet(...args);
      if (fault !== undefined) throw new MemcacheUnavailableError('timed out', { mayHaveApplied: true });
      return inner.casSet(...args);
    },
  };
  const take = async (key: string): Promise<Held> => {
    const outcome = await acquireEntry(client, key, 'A', 5, undefined, 'add');
    if (!outcome.acquired) throw new Error('not acquired');
    return outcome.held;
  };
  const h = await take('k');
  const before = performance.now();
  const next = await transferEntry(client, h, 'B', 9);
  if (typeof next === 'string') return t.fail(next);
  t.like(decodeValue(memcache.peek('k')!.value), { clientId: 'B', state: 'held' });
  t.is(memcache.peek('k')?.ttlSeconds, 9);
  t.like(next, { memcacheKey: 'k', ttlSeconds: 9, cas: memcache.peek('k')!.cas, verify: false });
  t.true(next.sentAt >= before && next.sentAt <= performance.now());
  t.true(next.value.equals(memcache.peek('k')!.value));
  t.deepEqual(memcache.ops, { add: 1, get: 0, set: 1, delete: 0 }, 'one write, no read');
  t.is(await transferEntry(client, h, 'C', 9), 'taken', 'the old CAS no longer matches');
  memcache.evict('k');
  t.is(await transferEntry(client, next, 'C', 9), 'gone');
  const s = await take('s');
  fault = 'apply';
  const adopted = await transferEntry(client, s, 'B', 9);
  if (typeof adopted === 'string') return t.fail(adopted);
  t.like(decodeValue(adopted.value), { clientId: 'B' });
  t.is(adopted.cas, memcache.peek('s')!.cas, 'the read-back CAS');
  t.is(memcache.ops.set, 4, 'four transfers, four writes: the ambiguous one was not sent again');
  t.true(s.verify, 'the old holder’s CAS is not to be trusted any more');
  const u = await take('u');
  fault = 'drop';
  await t.throwsAsync(
    transferEntry(client, u, 'B', 9),
    { message: 'timed out' },
    'the read-back shows the old value: the write did not land',
  );
  t.like(decodeValue(memcache.peek('u')!.value), { clientId: 'A' });
  fault = undefined;
  const w = await take('w');
  memcache.unreachable(true);
  await t.throwsAsync(transferEntry(client, { ...w, conn: w.conn }, 'B', 9), { instanceOf: MemcacheUnavailableError });
  memcache.unreachable(false);
  const x = await take('x');
  const refusing: LockClient = {
    ...client,
    casSet: async () => {
      throw new MemcacheUnavailableError('refused', { mayHaveApplied: false });
    },
    get: async () => {
      throw new Error('no read-back expected');
    },
  };
  await t.throwsAsync(transferEntry(refusing, x, 'B', 9), { message: 'refused' }, 'not applied: no read-back');
});

test('freshCas after a reconnect: a read whose answer comes on yet another connection is itself unusable', async (t) => {
  const memcache = new MemcacheStandIn();
  const inner = memcache.client();
  let reconnectOnGet = false;
  const client: LockClient = {
    ...inner,
    add: (...args) => inner.add(...args),
    addThenGet: (...args) => inner.addThenGet(...args),
    casSet: (...args) => inner.casSet(...args),
    casDelete: (...args) => inner.casDelete(...args),
    isCurrent: (key, conn) => inner.isCurrent(key, conn),
    serverOf: (key) => inner.serverOf(key),
    close: () => inner.close(),
    get: async (key) => {
      const entry = await inner.get(key);
      if (reconnectOnGet) memcache.restart();
      return entry;
    },
  };
  const outcome = await acquireEntry(client, 'k', 'A', 5, undefined, 'add');
  if (!outcome.acquired) return t.fail();
  outcome.held.verify = true;
  reconnectOnGet = true;
  await t.throwsAsync(renewEntry(client, outcome.held), {
    instanceOf: MemcacheUnavailableError,
    message: 'memcache connection changed during a renewal',
  });
});
