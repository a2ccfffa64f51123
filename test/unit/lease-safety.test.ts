/**
 * Lease safety against memcached's real clock, slow replies and stalls
 * (API.md semantics 14), on the stand-in with fake timers so every bound is
 * exact: memcached's clock can jump 2 s at once (`skipSecond()`), a grant
 * confirmed after its deadline is never handed out, a host suspend moves the
 * deadline, a waiter that gives up frees a reservation made for it, and the
 * lease margin follows the event-loop delay. The same against real
 * memcached is in test/faults/ (clock skip, late grant).
 */
import test from 'ava';
import { LockLostError, Memlock } from '../../src/index.js';
import { HeldLock } from '../../src/lock.js';
import { LoopDelay, RESOLUTION_MS, WINDOW_MS } from '../../src/loop-delay.js';
import { decodeValue, leaseDeadline } from '../../src/protocol.js';
import { Scheduler } from '../../src/scheduler.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime, type Clock } from '../helpers/clock.js';

// Not at 0 (test/helpers/clock.ts) and on a whole second of the stand-in's clock; intervals stay real.
const fakeLeaseTime = (t: { teardown: (fn: () => void) => void }): Clock =>
  fakeTime(t, { toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'performance', 'Date'] });

const state = (memcache: MemcacheStandIn, key: string): string | undefined => {
  const entry = memcache.peek(key);
  return entry === null ? undefined : decodeValue(entry.value)?.state;
};

test.serial(
  "clock skip: a partitioned holder's signal aborts before memcached's jumping clock lets anyone else in",
  async (t) => {
    const clock = fakeLeaseTime(t);
    const memcache = new MemcacheStandIn();
    const holder = new Memlock({ lockClient: memcache.client(), leaseMs: 2000, heartbeatMs: 500 });
    const other = new Memlock({ lockClient: memcache.client(), leaseMs: 2000 });
    t.teardown(() => Promise.all([holder.close(), other.close()]).then(() => undefined));
    // The server's next tick is missed (a late tick across a whole second):
    // its clock stays at 1 for 2 s, then jumps to 3. The add comes at the
    // last moment before the jump, so it is stamped almost 2 s stale.
    memcache.skipSecond();
    await clock.tickAsync(1999);
    const lock = await holder.acquire('k', 'A');
    let abortedAt: number | undefined;
    lock.signal.addEventListener('abort', () => (abortedAt = performance.now()));
    // A is partitioned: the server is unreachable whenever A's timers run
    // (fake time only moves in tickAsync), reachable for B's attempts, which
    // poll every 5 ms.
    let grantedAt: number | undefined;
    memcache.unreachable(true);
    const start = performance.now();
    while (grantedAt === undefined && performance.now() - start < 4000) {
      memcache.unreachable(false);
      const got = await other.acquire('k', 'B').catch(() => undefined);
      memcache.unreachable(true);
      if (got !== undefined) {
        grantedAt = performance.now();
        memcache.unreachable(false);
        await got.release();
        break;
      }
      await clock.tickAsync(5);
    }
    t.not(grantedAt, undefined, 'the entry does expire: B gets it once A is told');
    t.not(abortedAt, undefined, "A's signal aborted");
    t.true(abortedAt! <= grantedAt!, `A told at ${abortedAt! - start} ms, B granted at ${grantedAt! - start} ms`);
    t.true(lock.signal.reason instanceof LockLostError);
  },
);

test.serial(
  'late grant: a grant confirmed after its lease deadline never reaches fn; the call fails as a loss and the entry is deleted',
  async (t) => {
    const clock = fakeLeaseTime(t);
    const memcache = new MemcacheStandIn();
    // timeoutMs 1500 lets a reply come later than the 900 ms the lease guarantees.
    const memlock = new Memlock({ lockClient: memcache.client({ timeoutMs: 1500 }), leaseMs: 2000 });
    t.teardown(() => memlock.close());
    memcache.slow(1000);
    let ran = false;
    const call = memlock.tryWithLock('k', 'A', () => {
      ran = true;
    });
    const rejected = t.throwsAsync(call, { instanceOf: LockLostError, code: 'ERR_MEMLOCK_LOST' });
    await clock.tickAsync(0); // the add is out, to be answered in 1000 ms
    memcache.slow(0);
    await clock.tickAsync(1010);
    const error = (await rejected) as LockLostError;
    t.is(error.kind, 'deadline');
    t.false(ran, 'fn never ran');
    t.is(memcache.peek('memlock:k'), null, 'the entry was deleted (CAS)');
    t.is(memlock.heldCount, 0);
    // acquire() the same way: no handle is returned.
    memcache.slow(1000);
    const acquiring = t.throwsAsync(memlock.acquire('k', 'A'), { instanceOf: LockLostError });
    await clock.tickAsync(0);
    memcache.slow(0);
    await clock.tickAsync(1010);
    t.is(((await acquiring) as LockLostError).kind, 'deadline');
    t.is(memcache.peek('memlock:k'), null);
    // A reply within the deadline is a grant as usual.
    memcache.slow(800);
    const ok = memlock.tryWithLock('k', 'A', () => 'ran');
    await clock.tickAsync(0);
    memcache.slow(0);
    await clock.tickAsync(820);
    t.is(await ok, 'ran');
  },
);

test.serial(
  'suspend: the wall clock running ahead of the monotonic clock (a host suspend) aborts the lease at the next check, before it renews',
  async (t) => {
    const clock = fakeLeaseTime(t);
    const memcache = new MemcacheStandIn();
    const memlock = new Memlock({ lockClient: memcache.client(), leaseMs: 16_000, heartbeatMs: 1000 });
    t.teardown(() => memlock.close());
    const lock = await memlock.acquire('k', 'A');
    const sets = memcache.ops.set;
    await clock.tickAsync(1000);
    t.is(memcache.ops.set, sets + 1, 'renewed once');
    t.false(lock.signal.aborted);
    // A small step of the wall clock (NTP) changes nothing.
    clock.setSystemTime(Date.now() + 50);
    await clock.tickAsync(1000);
    t.false(lock.signal.aborted, 'a 50 ms step is not a suspend');
    // The host sleeps 20 s: memcached's clock went on, performance.now() did not.
    clock.setSystemTime(Date.now() + 20_000);
    memcache.advance(20_000);
    const before = memcache.ops.set;
    await clock.tickAsync(1000);
    t.true(lock.signal.aborted, 'aborted at the first heartbeat after the suspend');
    t.is((lock.signal.reason as LockLostError).kind, 'deadline');
    t.is(memcache.ops.set, before, 'no renewal was sent for a lease that may have run out');
    // A shorter suspend only moves the deadline: 3 s of a 15 s lease.
    const second = await memlock.acquire('k2', 'A');
    clock.setSystemTime(Date.now() + 3000);
    await clock.tickAsync(1000);
    t.false(second.signal.aborted, 'a 3 s suspend leaves most of a 15 s lease');
    await second.release();
  },
);

test.serial(
  'a waiter that gives up deletes a reservation made for it: the key is not blocked until the reservation expires',
  async (t) => {
    const clock = fakeLeaseTime(t);
    const memcache = new MemcacheStandIn();
    const holder = new Memlock({ lockClient: memcache.client(), leaseMs: 16_000 });
    const waiter = new Memlock({ lockClient: memcache.client(), leaseMs: 16_000 });
    t.teardown(() => Promise.all([holder.close(), waiter.close()]).then(() => undefined));
    // A waiting caller's release reads the waiter queue (a plain one just deletes).
    const lock = await holder.acquire('k', 'A', { wait: { timeoutMs: 1000 } });
    const controller = new AbortController();
    const waiting = t.throwsAsync(
      waiter.acquire('k', 'B', { wait: { timeoutMs: 60_000 }, signal: controller.signal }),
      { message: 'gave up' },
    );
    // A long hold: the waiter queues up and slows its polls to an eighth of the hold.
    await clock.tickAsync(8000);
    await lock.release();
    t.is(state(memcache, 'memlock:k'), 'reserved', 'the release reserved the key for the queued waiter');
    controller.abort(new Error('gave up'));
    await clock.tickAsync(1);
    await waiting;
    await clock.tickAsync(1);
    t.is(memcache.peek('memlock:k'), null, 'the reservation was deleted when the waiter gave up');
    const next = await holder.acquire('k', 'C');
    await next.release();
  },
);

test('the lease margin follows the event-loop delay, bounded by a quarter of the guaranteed lease', (t) => {
  let delay = 0;
  const source = { p99Ms: () => delay, start: () => undefined, stop: () => undefined };
  const scheduler = new Scheduler(undefined, source);
  t.is(scheduler.loopDelayMs(0), 0);
  delay = 40;
  t.is(scheduler.loopDelayMs(0), 40);
  // What a held lock computes from it (lock.ts #leaseDeadline):
  t.is(leaseDeadline(0, 3, scheduler.loopDelayMs(0)), 1000 - 100 - 40);
  delay = 5000;
  t.is(leaseDeadline(0, 3, scheduler.loopDelayMs(0)), 1000 - 100 - 250);
  // A held lock takes its deadline from the scheduler's reading.
  delay = 40;
  const memcache = new MemcacheStandIn();
  const held = {
    memcacheKey: 'k',
    value: Buffer.from('v'),
    ttlSeconds: 3,
    cas: 1n,
    conn: 1,
    sentAt: 1000,
    verify: false,
  };
  const context = { client: memcache.client(), scheduler, onDone: () => undefined, planRelease: () => undefined };
  const lock = new HeldLock(context, 'k', 'A', held, 500, undefined);
  t.is(lock.deadline, 1000 + 1000 - 100 - 40);
  scheduler.stop();
});

test('loop delay: the p99 less the sampling interval, over the last one to two windows; 0 when stopped', (t) => {
  let p99Ns = 0;
  let count = 0;
  let resets = 0;
  let enabled = 0;
  const histogram = {
    enable: () => (enabled++, true),
    disable: () => (enabled--, true),
    reset: () => {
      resets++;
      count = 0;
    },
    percentile: () => p99Ns,
    get count() {
      return count;
    },
  };
  const delay = new LoopDelay(() => histogram);
  t.is(delay.p99Ms(0), 0, 'not started');
  delay.start(0);
  delay.start(0);
  t.is(enabled, 1, 'started once');
  count = 5;
  p99Ns = (RESOLUTION_MS + 70) * 1e6;
  t.is(delay.p99Ms(0), 0, 'too few samples to count');
  count = 100;
  t.is(delay.p99Ms(0), 0, 'a reading is reused for a moment');
  t.is(delay.p99Ms(300), 70);
  // The window rolls: its reading is kept for one more window.
  t.is(delay.p99Ms(WINDOW_MS), 70);
  t.is(resets, 1);
  p99Ns = (RESOLUTION_MS + 5) * 1e6;
  count = 100;
  t.is(delay.p99Ms(WINDOW_MS + 300), 70, 'the last full window still counts');
  t.is(delay.p99Ms(2 * WINDOW_MS), 5, 'a stall two windows ago no longer does');
  p99Ns = RESOLUTION_MS * 0.5 * 1e6;
  t.is(delay.p99Ms(3 * WINDOW_MS), 0, 'never below 0');
  delay.stop();
  t.is(enabled, 0);
  t.is(delay.p99Ms(3 * WINDOW_MS + 1000), 0, 'stopped: 0');
});
