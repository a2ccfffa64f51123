/**
 * The `memlock/testing` stand-in itself: memcached's semantics where memlock
 * relies on them (CAS, add, whole-second TTL on a clock that can jump 2 s, restart),
 * and its faults. Time comes from a manual clock (`now` option) or from fake
 * timers, so every bound here is exact.
 */
import test from 'ava';
import { MemcacheUnavailableError, LockLostError } from '../../src/index.js';
import { isAmbiguous } from '../../src/protocol.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime } from '../helpers/clock.js';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const v = (text: string): Buffer => Buffer.from(text);

function manualClock(): { now: () => number; set: (ms: number) => void } {
  let time = 0;
  return {
    now: () => time,
    set: (ms) => {
      time = ms;
    },
  };
}

test('add, get with CAS, CAS-checked set and delete; one CAS counter from 1', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const added = await c.add('k', v('v1'), 10);
  t.deepEqual(added, { status: 'ok', cas: 1n, conn: 1 });
  t.deepEqual(await c.add('k', v('v2'), 10), { status: 'exists' });
  const entry = await c.get('k');
  t.is(entry?.value.toString(), 'v1');
  t.is(entry?.cas, 1n);
  t.deepEqual(await c.casSet('k', v('bad'), 10, 7n), { status: 'exists' });
  t.deepEqual(await c.casSet('k', v('v3'), 10, 1n), { status: 'ok', cas: 2n, conn: 1 });
  t.deepEqual(await c.casDelete('k', 1n), { status: 'exists' }, 'a stale CAS cannot delete');
  t.deepEqual(await c.casDelete('k', 2n), { status: 'ok', cas: 0n, conn: 1 });
  t.is(await c.get('k'), null);
  t.deepEqual(await c.casSet('k', v('x'), 10, 2n), { status: 'not_found' });
  t.deepEqual(await c.casDelete('k', 2n), { status: 'not_found' });
  t.deepEqual(
    await c.add('other', v('o'), 10),
    { status: 'ok', cas: 3n, conn: 1 },
    'the counter is per server, not per key',
  );
  t.deepEqual(memcache.ops, { add: 3, get: 2, set: 3, delete: 3 });
});

test('CAS 0 makes a write unconditional, as in memcached', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  t.deepEqual(await c.casSet('k', v('a'), 0, 0n), { status: 'ok', cas: 1n, conn: 1 }, 'stores a missing key');
  t.deepEqual(await c.casSet('k', v('b'), 0, 0n), { status: 'ok', cas: 2n, conn: 1 }, 'overwrites whatever CAS');
  t.deepEqual(await c.casDelete('k', 0n), { status: 'ok', cas: 0n, conn: 1 });
});

test('addThenGet: one request, the add then the read', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const first = await c.addThenGet('k', v('mine'), 10);
  t.is(first.add.status, 'ok');
  t.is(first.entry?.value.toString(), 'mine');
  const second = await c.addThenGet('k', v('theirs'), 10);
  t.deepEqual(second.add, { status: 'exists' });
  t.is(second.entry?.value.toString(), 'mine');
  t.deepEqual(memcache.ops, { add: 2, get: 2, set: 0, delete: 0 });
});

test('values are copied in and out', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const value = v('abc');
  await c.add('k', value, 10);
  value.write('x');
  const entry = await c.get('k');
  t.is(entry?.value.toString(), 'abc');
  entry!.value.write('y');
  t.is(memcache.peek('k')?.value.toString(), 'abc');
});

test('TTL n with ticks on time: the entry may expire n-1 s after the write (whole-second clock), never later than n s', async (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  const c = memcache.client();
  // Written just before the server's clock ticks: gone 1001 ms later.
  clock.set(999);
  await c.add('late', v('x'), 2);
  t.is(memcache.peek('late')?.ttlSeconds, 2);
  t.is(memcache.peek('late')?.expiresAt, 2000);
  clock.set(1999);
  t.truthy(await c.get('late'));
  t.is(memcache.peek('late')?.ttlSeconds, 1);
  clock.set(2000);
  t.is(await c.get('late'), null);
  // Written just after a tick: lasts the full 2 s.
  clock.set(3000);
  await c.add('early', v('x'), 2);
  clock.set(4999);
  t.truthy(await c.get('early'));
  clock.set(5000);
  t.is(await c.get('early'), null);
  t.deepEqual(
    await c.add('early', v('again'), 2),
    { status: 'ok', cas: 3n, conn: 1 },
    'an expired key can be added again',
  );
});

test('skipSecond(): the clock misses a tick and jumps 2 s at the next; an entry written just before lives TTL - 2 s', async (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  const c = memcache.client();
  clock.set(500);
  memcache.skipSecond();
  // The tick at 1000 is missed: the clock reads 1 until 2000, then 3.
  clock.set(1999);
  await c.add('stale', v('x'), 3);
  t.is(memcache.peek('stale')?.ttlSeconds, 3);
  t.is(memcache.peek('stale')?.expiresAt, 3000, 'expires 1001 ms after a TTL-3 write');
  clock.set(2000);
  t.is(memcache.peek('stale')?.ttlSeconds, 1, 'the clock jumped by 2');
  clock.set(2999);
  t.truthy(await c.get('stale'));
  clock.set(3000);
  t.is(await c.get('stale'), null);
  // Afterwards the clock ticks as before.
  await c.add('after', v('x'), 2);
  clock.set(4999);
  t.truthy(await c.get('after'));
  clock.set(5000);
  t.is(await c.get('after'), null);
});

test('tickDriftMs: late ticks make the clock jump 2 s now and then, and never run behind by more than a tick', async (t) => {
  t.throws(() => new MemcacheStandIn({ tickDriftMs: -1 }), { instanceOf: RangeError, message: /tickDriftMs/ });
  t.throws(() => new MemcacheStandIn({ tickDriftMs: 1001 }), { instanceOf: RangeError, message: /tickDriftMs/ });
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now, tickDriftMs: 50 });
  const c = memcache.client();
  // Ticks every 1050 ms: after 20 of them (21 s) the phase has crossed a whole
  // second and the clock moves from 20 to 22 at once. A TTL-3 entry lives
  // about 2 s (n - 1) when written away from a jump, but only about 1 s
  // (n - 2) when written just before one; never less than that less the drift.
  let shortest = Infinity;
  for (let start = 0; start < 45_000; start += 10) {
    clock.set(start);
    await c.add(`k${start}`, v('x'), 3);
    const lives = memcache.peek(`k${start}`)!.expiresAt - start;
    shortest = Math.min(shortest, lives);
    if (!(lives > 1000 - 50)) t.fail(`written at ${start}: lives ${lives} ms`);
  }
  t.true(shortest < 1100, `a jump cut some TTL-3 entry to about 1 s (shortest ${shortest} ms)`);
  // The bound is what memlock's lease relies on: TTL n + 1 keeps n - 1 s.
  t.true(shortest > 950);
});

test('TTL 0 never expires; a negative TTL expires at once; above 30 days a TTL is a unix time', async (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  memcache.set('forever', 'x', 0);
  memcache.set('gone', 'x', -1);
  memcache.set('absolute', 'x', Math.floor(Date.now() / 1000) + 5);
  memcache.set('past', 'x', 30 * 24 * 3600 + 1);
  t.is(memcache.peek('gone'), null);
  t.is(memcache.peek('past'), null, 'an absolute time in the past');
  t.is(memcache.peek('forever')?.ttlSeconds, -1);
  t.is(memcache.peek('forever')?.expiresAt, Infinity);
  const absolute = memcache.peek('absolute')?.ttlSeconds ?? 0;
  t.true(absolute >= 4 && absolute <= 5, `absolute expiry in ${absolute} s`);
  t.deepEqual(memcache.keys().sort(), ['absolute', 'forever']);
  clock.set(10 * 86_400_000);
  t.deepEqual(memcache.keys(), ['forever']);
});

test('advance() moves the server clock only', async (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  memcache.set('k', 'x', 3);
  memcache.advance(2999);
  t.is(memcache.time, 2999);
  t.truthy(memcache.peek('k'));
  memcache.advance(1);
  t.is(memcache.peek('k'), null);
  t.throws(() => memcache.advance(-1), { instanceOf: RangeError, message: /`ms`/ });
  t.throws(() => memcache.advance(Number.NaN), { instanceOf: RangeError });
});

test('evict, flush, set and peek', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  await c.add('a', v('1'), 10);
  await c.add('b', v('2'), 10);
  t.true(memcache.evict('a'));
  t.false(memcache.evict('a'));
  t.is(await c.get('a'), null);
  const cas = memcache.set('b', 'foreign', 10);
  t.is(cas, 3n);
  t.is((await c.get('b'))?.value.toString(), 'foreign');
  memcache.flush();
  t.deepEqual(memcache.keys(), []);
  t.deepEqual(await c.add('c', v('3'), 10), { status: 'ok', cas: 4n, conn: 1 }, 'flush keeps the CAS counter');
});

test('restart: entries gone, CAS counter back to 1, every connection gets a new generation', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const other = memcache.client();
  for (let i = 0; i < 5; i++) await c.add(`k${i}`, v('x'), 10);
  const before = await c.add('k', v('x'), 10);
  t.deepEqual(before, { status: 'ok', cas: 6n, conn: 1 });
  t.true(c.isCurrent('k', 1));
  memcache.restart();
  t.false(c.isCurrent('k', 1), 'a CAS from before the restart is from an old connection');
  t.false(other.isCurrent('k', 1));
  t.is(await c.get('k'), null);
  t.deepEqual(await other.add('k', v('y'), 10), { status: 'ok', cas: 1n, conn: 2 });
  t.true(other.isCurrent('k', 2));
});

test('unreachable: requests are refused as not applied (ECONNREFUSED convention); reachable again, entries are kept', async (t) => {
  const memcache = new MemcacheStandIn({ name: 'cache-1:11211' });
  const c = memcache.client();
  await c.add('k', v('x'), 10);
  memcache.unreachable(true);
  const ops = { ...memcache.ops };
  for (const call of [
    () => c.add('n', v('x'), 10),
    () => c.get('k'),
    () => c.casSet('k', v('y'), 10, 1n),
    () => c.casDelete('k', 1n),
    () => c.addThenGet('n', v('x'), 10),
  ]) {
    const error = await t.throwsAsync(call(), { instanceOf: MemcacheUnavailableError });
    t.is(error?.server, 'cache-1:11211');
    t.false(isAmbiguous(error), 'a refused request was not applied');
  }
  t.deepEqual(memcache.ops, ops, 'nothing reached the server');
  memcache.unreachable(false);
  t.is((await c.get('k'))?.value.toString(), 'x');
  t.is(await c.get('n'), null);
  t.false(c.isCurrent('k', 1), 'the connection was replaced');
  t.throws(() => memcache.unreachable('yes' as unknown as boolean), { instanceOf: TypeError });
});

test.serial(
  'slow: answered late but within timeoutMs is fine; past it the request fails as maybe applied, and is applied when the server gets to it',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    const memcache = new MemcacheStandIn();
    const c = memcache.client({ timeoutMs: 200 });
    memcache.slow(150);
    let settled: unknown;
    void c.add('k', v('x'), 10).then((r) => {
      settled = r;
    });
    await clock.tickAsync(149);
    t.is(settled, undefined);
    t.is(memcache.peek('k'), null, 'applied when answered');
    await clock.tickAsync(1);
    t.deepEqual(settled, { status: 'ok', cas: 1n, conn: 1 });

    memcache.slow(500);
    let failure: unknown;
    const late = c.add('late', v('x'), 10).catch((error: unknown) => {
      failure = error;
    });
    await clock.tickAsync(199);
    t.is(failure, undefined);
    await clock.tickAsync(1);
    await late;
    t.true(failure instanceof MemcacheUnavailableError);
    t.regex((failure as Error).message, /timed out after 200 ms/);
    t.true(isAmbiguous(failure), 'a timed-out write may have been applied');
    t.false(c.isCurrent('late', 1), 'a timeout drops the connection, like memlock’s transport');
    t.is(memcache.peek('late'), null);
    await clock.tickAsync(300);
    t.truthy(memcache.peek('late'), 'the write landed after the client gave up');
    t.throws(() => memcache.slow(-5), { instanceOf: RangeError });
  },
);

test.serial('restart with slow requests in flight: they fail as maybe applied and are never applied', async (t) => {
  const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
  const memcache = new MemcacheStandIn();
  const c = memcache.client({ timeoutMs: 100 });
  memcache.slow(300);
  const inFlight = c.add('a', v('x'), 10).catch((error: unknown) => error);
  const timedOut = c.add('b', v('x'), 10).catch((error: unknown) => error);
  await clock.tickAsync(100);
  t.true(isAmbiguous(await timedOut));
  memcache.restart();
  t.true(isAmbiguous(await inFlight));
  await clock.tickAsync(1000);
  t.deepEqual(memcache.keys(), [], 'a restart loses what the server had not applied');
});

test('close(): pending requests fail, later ones too', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client({ timeoutMs: 10_000 });
  memcache.slow(5000);
  const pending = c.get('k');
  await c.close();
  await t.throwsAsync(pending, { instanceOf: MemcacheUnavailableError });
  await t.throwsAsync(c.get('k'), { instanceOf: MemcacheUnavailableError, message: /closed/ });
});

test('keys longer than 250 bytes and values over 1 MB are refused with a server status (not applied)', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const long = await t.throwsAsync(c.add('k'.repeat(251), v('x'), 10), { instanceOf: MemcacheUnavailableError });
  t.false(isAmbiguous(long));
  t.truthy(await c.add('k'.repeat(250), v('x'), 10));
  const big = await t.throwsAsync(c.add('big', Buffer.alloc(1024 * 1024), 10), {
    instanceOf: MemcacheUnavailableError,
  });
  t.false(isAmbiguous(big));
  t.is(memcache.peek('big'), null);
});

test('bad options are typed errors naming the option', (t) => {
  t.throws(() => new MemcacheStandIn({ now: 5 as unknown as () => number }), {
    instanceOf: TypeError,
    message: /`now`/,
  });
  t.throws(() => new MemcacheStandIn({ name: 5 as unknown as string }), { instanceOf: TypeError, message: /`name`/ });
  t.throws(() => new MemcacheStandIn(null as never), { instanceOf: TypeError, message: /`options`/ });
  t.throws(() => new MemcacheStandIn().client({ timeoutMs: 0 }), { instanceOf: RangeError, message: /`timeoutMs`/ });
  t.is(new MemcacheStandIn().client().serverOf('k'), 'stand-in:11211');
});

test.serial(
  'memlock(): a slow server past timeoutMs makes renewals time out, and the holder loses the lock at its deadline',
  async (t) => {
    const clock = fakeTime(t, {
      toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'performance', 'Date'],
    });
    const memcache = new MemcacheStandIn();
    const memlock = memcache.memlock({ leaseMs: 4000, heartbeatMs: 500, timeoutMs: 100 });
    const lock = await memlock.acquire('job', 'A');
    memcache.slow(1000);
    await clock.tickAsync(2899);
    t.false(lock.signal.aborted, 'still inside the guaranteed lease (3 s - 100 ms margin)');
    await clock.tickAsync(1);
    t.true(lock.signal.aborted);
    const reason = lock.signal.reason as LockLostError;
    t.is(reason.kind, 'unreachable');
    t.regex((reason.cause as Error).message, /timed out after 100 ms/);
    memcache.slow(0);
    await memlock.close();
  },
);

test.serial(
  'ref: standIn.memlock() holds the process while it holds a lock, ref: true until close(); a bare client only with ref: true',
  async (t) => {
    const timeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timeouts();
    const memcache = new MemcacheStandIn();
    const bare = memcache.client();
    t.is(timeouts(), before, 'a bare client holds nothing');
    const held = memcache.client({ ref: true });
    t.is(timeouts(), before + 1);
    await held.close();
    t.is(timeouts(), before);
    const memlock = memcache.memlock();
    t.is(timeouts(), before, 'idle: holds nothing (a forgotten close() does not hang the process)');
    const lock = await memlock.acquire('k', 'A');
    const holding = timeouts();
    t.true(holding > before, 'holding a lock: held (the heartbeat timer is unref’d)');
    await sleep(300); // several checks
    t.is(timeouts(), holding, 'still held while the lock is');
    await lock.release();
    await sleep(300);
    t.is(timeouts(), before, 'released: idle again');
    const closing = memlock.close();
    t.is(memlock.close(), closing, 'close() is idempotent');
    await closing;
    t.is(timeouts(), before);
    const connection = memcache.memlock({ ref: true });
    t.is(timeouts(), before + 1, 'ref: true, like an open connection');
    await connection.close();
    t.is(timeouts(), before);
    const unref = memcache.memlock({ ref: false });
    await unref.acquire('k2', 'A');
    t.is(timeouts(), before, 'ref: false holds nothing, even while holding');
    await unref.close();
    t.is(await bare.get('k'), null);
    t.throws(() => memcache.client({ ref: 1 as never }), { instanceOf: TypeError, message: /`ref`/ });
  },
);

test('the errors follow memlock’s transport: message, server, mayHaveApplied and a cause with the socket code or server status', async (t) => {
  const memcache = new MemcacheStandIn({ name: 'cache-1:11211' });
  const c = memcache.client({ timeoutMs: 10_000 });
  memcache.unreachable(true);
  const refused = await t.throwsAsync(c.get('k'), { instanceOf: MemcacheUnavailableError });
  t.is(refused?.message, 'memcache get failed (cache-1:11211): connect ECONNREFUSED');
  t.like(refused, { server: 'cache-1:11211', mayHaveApplied: false });
  t.like(refused?.cause, { code: 'ECONNREFUSED', message: 'connect ECONNREFUSED cache-1:11211' });
  memcache.unreachable(false);
  memcache.slow(1000);
  const pending = c.casSet('k', v('x'), 10, 1n);
  memcache.restart();
  const reset = await t.throwsAsync(pending, { instanceOf: MemcacheUnavailableError });
  t.is(reset?.message, 'memcache set failed (cache-1:11211): connection reset');
  t.like(reset, { server: 'cache-1:11211', mayHaveApplied: true });
  t.like(reset?.cause, { code: 'ECONNRESET', message: 'read ECONNRESET' });
  memcache.slow(0);
  await c.close();
  const closed = await t.throwsAsync(c.casDelete('k', 1n), { instanceOf: MemcacheUnavailableError });
  t.is(closed?.message, 'memlock client is closed');
  t.like(closed, { server: 'cache-1:11211', mayHaveApplied: false, cause: undefined });
  const d = memcache.client();
  const invalid = await t.throwsAsync(d.add('', v('x'), 10), { instanceOf: MemcacheUnavailableError });
  t.is(invalid?.message, 'memcache add failed with status 0x4 (cache-1:11211): Invalid arguments');
  t.like(invalid, { server: 'cache-1:11211', mayHaveApplied: false });
  t.like(invalid?.cause, { status: 4, message: 'Invalid arguments' });
  const big = await t.throwsAsync(d.casSet('k', Buffer.alloc(1024 * 1024), 10, 0n), {
    instanceOf: MemcacheUnavailableError,
  });
  t.is(big?.message, 'memcache set failed with status 0x3 (cache-1:11211): Too large.');
  t.like(big?.cause, { status: 3 });
  t.deepEqual(
    memcache.ops,
    { add: 1, get: 0, set: 2, delete: 0 },
    'refused by the server still reached it; refused connections did not',
  );
});

test('limits at their edges: a 250-byte key and a 1 MB item (key and value together) are accepted; one byte more is not; gets and deletes check the key', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  const key = 'é'.repeat(125); // 250 bytes in 125 characters
  t.is((await c.add(key, v('x'), 10)).status, 'ok');
  await t.throwsAsync(c.add(`${key}x`, v('x'), 10), { message: /Invalid arguments/ });
  await t.throwsAsync(c.get(`${key}x`), { message: /Invalid arguments/ });
  await t.throwsAsync(c.casDelete('', 1n), { message: /Invalid arguments/ });
  t.is((await c.add('big', Buffer.alloc(1024 * 1024 - 3), 10)).status, 'ok', 'key + value = 1 MB exactly');
  await t.throwsAsync(c.add('big2', Buffer.alloc(1024 * 1024 - 3), 10), { message: /Too large/ });
  await t.throwsAsync(c.addThenGet('big', Buffer.alloc(1024 * 1024 - 2), 10), { message: /Too large/ });
});

test('expiry edges: 30 days exactly is still relative; an absolute time now or earlier expires at once; peek reports the expiry on the stand-in clock', (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  const month = 30 * 24 * 3600;
  clock.set(1500); // server second 2
  memcache.set('month', 'x', month);
  t.is(memcache.peek('month')?.ttlSeconds, month);
  t.is(memcache.peek('month')?.expiresAt, (1 + month) * 1000, 'expires when the server second reaches 2 + ttl');
  memcache.set('now', 'x', Math.floor(Date.now() / 1000));
  t.is(memcache.peek('now'), null, 'an absolute time of now has passed');
  memcache.set('soon', 'x', Math.floor(Date.now() / 1000) + 100);
  const soon = memcache.peek('soon')?.ttlSeconds ?? 0;
  t.true(soon >= 99 && soon <= 100, `${soon}`);
  memcache.set('neg', 'x', -5);
  t.is(memcache.peek('neg'), null);
});

test('restart restarts the whole-second clock: an entry written just after it lasts its full TTL', (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  clock.set(700);
  memcache.restart(); // the server's second 1 starts at 700
  memcache.set('k', 'x', 2);
  clock.set(2699);
  t.truthy(memcache.peek('k'));
  t.is(memcache.peek('k')?.expiresAt, 2700);
  clock.set(2700);
  t.is(memcache.peek('k'), null);
  memcache.advance(500);
  memcache.restart();
  t.is(memcache.time, 3200);
  memcache.set('j', 'x', 1);
  t.is(memcache.peek('j')?.expiresAt, 4200, 'the clock restarts at the stand-in time, advance() included');
});

test('unreachable() twice breaks connections once; unreachable() without an argument means true', async (t) => {
  const memcache = new MemcacheStandIn();
  const c = memcache.client();
  await c.get('k');
  memcache.unreachable();
  await t.throwsAsync(c.get('k'), { instanceOf: MemcacheUnavailableError });
  memcache.unreachable(true);
  memcache.unreachable(false);
  t.is(await c.get('k'), null);
  t.true(c.isCurrent('k', 2), 'one new generation, not two');
  memcache.unreachable(false);
  t.true(c.isCurrent('k', 2), 'reachable again changes no connection');
});

test.serial(
  'slow: a write whose client timed out lands (delay - timeoutMs) after the timeout, unless a restart comes first; a server error in a slow answer rejects',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    const memcache = new MemcacheStandIn();
    const c = memcache.client({ timeoutMs: 100 });
    memcache.slow(400);
    const late = c.add('late', v('x'), 10).catch((error: unknown) => error);
    await clock.tickAsync(100);
    t.true(isAmbiguous(await late));
    await clock.tickAsync(299);
    t.is(memcache.peek('late'), null, 'not before the server gets to it');
    await clock.tickAsync(1);
    t.truthy(memcache.peek('late'), 'applied 400 ms after the send');
    const lost = c.add('lost', v('x'), 10).catch((error: unknown) => error);
    await clock.tickAsync(100);
    await lost;
    memcache.restart();
    await clock.tickAsync(1000);
    t.is(memcache.peek('lost'), null, 'a restart before it was applied: never applied');
    const d = memcache.client({ timeoutMs: 1000 });
    const invalid = d.get('').catch((error: unknown) => error);
    await clock.tickAsync(400);
    const error = await invalid;
    t.true(error instanceof MemcacheUnavailableError);
    t.regex((error as Error).message, /Invalid arguments/);
    t.false(isAmbiguous(error), 'the server answered: not applied');
    const answered = d.add('ok', v('x'), 10);
    await clock.tickAsync(400);
    t.is((await answered).status, 'ok');
    t.deepEqual(memcache.keys(), ['ok'], 'the restart took late with it');
  },
);

test.serial(
  'close() of a client fails its own pending requests only; a timed-out request’s connection is replaced',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    const memcache = new MemcacheStandIn();
    const a = memcache.client({ timeoutMs: 10_000 });
    const b = memcache.client({ timeoutMs: 10_000 });
    memcache.slow(50);
    const mine = a.add('a', v('x'), 10).catch((error: unknown) => error);
    const theirs = b.add('b', v('x'), 10);
    await a.close();
    t.true(isAmbiguous(await mine), 'sent, then the connection closed: maybe applied');
    await clock.tickAsync(50);
    t.is((await theirs).status, 'ok');
    t.true(b.isCurrent('b', 1));
    const c = memcache.client({ timeoutMs: 20 });
    const timedOut = c.get('x').catch((error: unknown) => error);
    await clock.tickAsync(20);
    await timedOut;
    t.false(c.isCurrent('x', 1));
    t.true(c.isCurrent('x', 2));
    await clock.tickAsync(100);
  },
);

test('option and argument checks: non-object options, non-number timeoutMs, advance(0) and slow(0) allowed, odd slow() values refused', (t) => {
  t.throws(() => new MemcacheStandIn(5 as never), {
    instanceOf: TypeError,
    message: 'Expected `options` to be an object',
  });
  t.throws(() => new MemcacheStandIn().client({ timeoutMs: '5' as never }), {
    instanceOf: RangeError,
    message: 'Expected `timeoutMs` to be a number > 0, got 5',
  });
  t.throws(() => new MemcacheStandIn().client({ timeoutMs: Number.NaN }), { instanceOf: RangeError });
  const memcache = new MemcacheStandIn();
  t.notThrows(() => memcache.advance(0));
  t.notThrows(() => memcache.slow(0));
  t.throws(() => memcache.slow(Number.POSITIVE_INFINITY), {
    instanceOf: RangeError,
    message: 'Expected `ms` to be a finite number >= 0, got Infinity',
  });
  t.throws(() => memcache.slow('5' as never), { instanceOf: RangeError });
  t.throws(() => memcache.advance(Number.POSITIVE_INFINITY), {
    instanceOf: RangeError,
    message: 'Expected `ms` to be a finite number >= 0, got Infinity',
  });
  t.throws(() => memcache.unreachable('yes' as never), {
    instanceOf: TypeError,
    message: 'Expected `on` to be a boolean',
  });
});

test('every request names its operation in errors', async (t) => {
  const memcache = new MemcacheStandIn({ name: 's:1' });
  const c = memcache.client();
  for (const [op, call] of [
    ['add', () => c.add('', v('x'), 1)],
    ['add', () => c.addThenGet('', v('x'), 1)],
    ['get', () => c.get('')],
    ['set', () => c.casSet('', v('x'), 1, 0n)],
    ['delete', () => c.casDelete('', 0n)],
  ] as const) {
    await t.throwsAsync(call(), { message: `memcache ${op} failed with status 0x4 (s:1): Invalid arguments` });
  }
  memcache.unreachable(true);
  for (const [op, call] of [
    ['add', () => c.add('k', v('x'), 1)],
    ['add', () => c.addThenGet('k', v('x'), 1)],
    ['get', () => c.get('k')],
    ['set', () => c.casSet('k', v('x'), 1, 0n)],
    ['delete', () => c.casDelete('k', 0n)],
  ] as const) {
    await t.throwsAsync(call(), { message: `memcache ${op} failed (s:1): connect ECONNREFUSED` });
  }
});

test('evict() of an entry that already expired says false; peek of a TTL-0 entry says -1 whatever the clock', (t) => {
  const clock = manualClock();
  const memcache = new MemcacheStandIn({ now: clock.now });
  memcache.set('short', 'x', 1);
  memcache.set('forever', 'x', 0);
  clock.set(5000);
  t.false(memcache.evict('short'));
  t.is(memcache.peek('forever')?.ttlSeconds, -1);
  t.true(memcache.evict('forever'));
});

test.serial(
  'connection generations never come back: a timeout, an outage and a restart each move a client on',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    const memcache = new MemcacheStandIn();
    const c = memcache.client({ timeoutMs: 10 });
    await c.get('k');
    t.true(c.isCurrent('k', 1));
    memcache.unreachable(true);
    memcache.unreachable(false);
    memcache.restart();
    t.false(c.isCurrent('k', 1), 'an outage then a restart: still a new connection');
    const current = (): number => {
      const gens = [1, 2, 3, 4, 5, 6].filter((gen) => c.isCurrent('k', gen));
      t.is(gens.length, 1, `exactly one current generation: ${gens.join()}`);
      return gens[0] ?? Number.NaN;
    };
    const afterRestart = current();
    memcache.slow(50);
    const timedOut = c.get('k').catch(() => 'timeout');
    await clock.tickAsync(10);
    t.is(await timedOut, 'timeout');
    const afterTimeout = current();
    t.true(afterTimeout > afterRestart, 'a timeout drops the connection');
    memcache.restart();
    t.true(current() > afterTimeout, 'and the next restart moves on again, never back');
    await clock.tickAsync(100);
  },
);

test.serial('ref: true holds the process with one long interval, without a timeout-overflow warning', async (t) => {
  const warnings: string[] = [];
  const onWarning = (warning: Error): void => {
    warnings.push(warning.name);
  };
  process.on('warning', onWarning);
  const timeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timeouts();
  const c = new MemcacheStandIn().client({ ref: true });
  t.is(timeouts(), before + 1, 'one timer holds the process');
  await new Promise((resolve) => setImmediate(resolve));
  await c.close();
  await new Promise((resolve) => setImmediate(resolve));
  process.off('warning', onWarning);
  t.deepEqual(warnings, []);
});

test.serial('memlock({ timeoutMs }) becomes the stand-in client’s operation deadline', async (t) => {
  const clock = fakeTime(t, {
    toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'performance', 'Date'],
  });
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock({ timeoutMs: 50 });
  memcache.slow(80);
  let failedAt = -1;
  const start = performance.now();
  const failing = memlock.acquire('k', 'A').catch((e: unknown) => {
    failedAt = performance.now();
    return e;
  });
  await clock.tickAsync(1000);
  const error = await failing;
  t.is(failedAt - start, 100, 'the add, then its read-back (the add may have landed), each gave up after 50 ms');
  t.true(error instanceof MemcacheUnavailableError);
  t.regex((error as Error).message, /timed out after 50 ms/);
  await clock.tickAsync(200);
  memcache.slow(0);
  await memlock.close();
});

/** Runs test/fixtures/standin-forgets-close.mts; rejects if it has not exited on its own within 20 s. */
function forgetsClose(mode: string): Promise<string> {
  const script = fileURLToPath(new URL('../fixtures/standin-forgets-close.mts', import.meta.url));
  return new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--import=tsx', script, mode], { timeout: 20_000 }, (error, out, err) =>
      error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out),
    );
  });
}

test('a process that forgets close() on the stand-in’s memlock exits on its own', async (t) => {
  t.deepEqual(JSON.parse(await forgetsClose('idle')), { result: 42 });
});

test('a process awaiting a held lock’s signal on the stand-in lives until it aborts, then exits without close()', async (t) => {
  t.deepEqual(JSON.parse(await forgetsClose('await-signal')), { lost: 'gone' });
});
