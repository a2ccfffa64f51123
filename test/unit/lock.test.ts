/**
 * A held lock's life (src/lock.ts) through the public API, on fake timers
 * against the `memlock/testing` stand-in: release racing a renewal, what a
 * lost lock's release sends, the loss error's cause, caller-signal listeners,
 * handoff to a remote waiter, completed markers after a loss.
 */
import test from 'ava';
import dc from 'node:diagnostics_channel';
import { getEventListeners } from 'node:events';
import { LockLostError, MemcacheUnavailableError, type LockClient, type MemlockOptions } from '../../src/index.js';
import { decodeValue } from '../../src/protocol.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { RecordingClient } from '../faults/lib/recording.js';
import { Memlock } from '../../src/index.js';
import { fakeTime } from '../helpers/clock.js';

function setup(
  t: { teardown: (fn: () => Promise<void> | void) => void },
  options: Omit<MemlockOptions, 'lockClient'>,
  client?: (memcache: MemcacheStandIn) => LockClient,
) {
  const clock = fakeTime(t);
  const memcache = new MemcacheStandIn();
  const recorder = new RecordingClient(
    client?.(memcache) ?? memcache.client(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  );
  const memlock = new Memlock({ ...options, lockClient: recorder });
  t.teardown(() => memlock.close());
  return { clock, memcache, recorder, memlock };
}

test.serial('release while a renewal is in flight waits for it, then deletes with the renewal’s CAS', async (t) => {
  const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500, timeoutMs: 1000 });
  const lock = await memlock.acquire('k', 'A');
  memcache.slow(100);
  await clock.tickAsync(550); // the renewal sent at 500 is answered at 600
  const released = lock.release();
  await clock.tickAsync(300);
  t.true(await released, 'our entry was deleted');
  t.is(memcache.peek('memlock:k'), null);
});

test.serial('a lock lost as gone or taken releases without a request', async (t) => {
  const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
  const gone = await memlock.acquire('g', 'A');
  const taken = await memlock.acquire('t', 'A');
  memcache.evict('memlock:g');
  memcache.set('memlock:t', 'x', 30);
  await clock.tickAsync(500);
  const ops = { ...memcache.ops };
  t.false(await gone.release());
  t.false(await taken.release());
  t.deepEqual(memcache.ops, ops, 'nothing of ours is left to delete');
  t.is(memcache.peek('memlock:t')?.value.toString(), 'x');
});

test.serial('the loss error: unreachable carries the transport error as cause; gone has none', async (t) => {
  const { clock, memcache, memlock } = setup(t, { leaseMs: 2000, heartbeatMs: 500 });
  const down = await memlock.acquire('d', 'A');
  const gone = await memlock.acquire('g', 'A');
  memcache.evict('memlock:g');
  await clock.tickAsync(450);
  const goneReason = gone.signal.reason as LockLostError;
  t.is(goneReason.kind, 'gone');
  t.false('cause' in goneReason);
  memcache.unreachable(true);
  await clock.tickAsync(1000);
  const reason = down.signal.reason as LockLostError;
  t.is(reason.kind, 'unreachable');
  t.true(reason.cause instanceof MemcacheUnavailableError);
});

test.serial('released: heldMs is how long the lock was held', async (t) => {
  const { clock, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
  const seen: Array<{ heldMs: number }> = [];
  const fn = (message: unknown): void => {
    seen.push(message as { heldMs: number });
  };
  dc.subscribe('memlock:released', fn);
  t.teardown(() => dc.unsubscribe('memlock:released', fn));
  await clock.tickAsync(100); // acquired at a non-zero time
  const lock = await memlock.acquire('k', 'A');
  await clock.tickAsync(1234);
  await lock.release();
  t.deepEqual(
    seen.map((m) => m.heldMs),
    [1234],
  );
});

test.serial('one caller signal, many locks: one abort listener, removed when the last lock lets go', async (t) => {
  const { memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
  const caller = new AbortController();
  const a = await memlock.acquire('a', 'A', { signal: caller.signal });
  const b = await memlock.acquire('b', 'A', { signal: caller.signal });
  t.is(getEventListeners(caller.signal, 'abort').length, 1);
  await a.release();
  t.is(getEventListeners(caller.signal, 'abort').length, 1, 'b still follows it');
  await b.release();
  t.is(getEventListeners(caller.signal, 'abort').length, 0);
  const c = await memlock.acquire('c', 'A', { signal: caller.signal });
  const d = await memlock.acquire('d', 'A', { signal: caller.signal });
  const reason = new Error('shutdown');
  caller.abort(reason);
  t.is(c.signal.reason, reason);
  t.is(d.signal.reason, reason);
  t.is(getEventListeners(caller.signal, 'abort').length, 0);
  await Promise.all([c.release(), d.release()]);
});

test.serial('a release with a remote waiter queued reserves the key for it (handoff)', async (t) => {
  const clock = fakeTime(t);
  const memcache = new MemcacheStandIn();
  const holder = memcache.memlock();
  const waiter = memcache.memlock();
  t.teardown(() => Promise.all([holder.close(), waiter.close()]));
  const how: string[] = [];
  const fn = (message: unknown): void => {
    how.push((message as { how: string }).how);
  };
  dc.subscribe('memlock:acquired', fn);
  t.teardown(() => dc.unsubscribe('memlock:acquired', fn));
  // The holder learns of remote waiters by having waited itself.
  const first = await waiter.acquire('k', 'X');
  const holding = holder.acquire('k', 'A', { wait: { timeoutMs: 10_000, minDelayMs: 50, maxDelayMs: 200 } });
  await clock.tickAsync(300);
  await first.release();
  await clock.tickAsync(300);
  const held = await holding;
  const waiting = waiter.acquire('k', 'B', { wait: { timeoutMs: 10_000, minDelayMs: 50, maxDelayMs: 200 } });
  await clock.tickAsync(300); // refused, queued
  t.true(await held.release());
  await clock.tickAsync(1000);
  const lock = await waiting;
  t.is(how.at(-1), 'handoff');
  t.is(decodeValue(memcache.peek('memlock:k')!.value)?.clientId, 'B');
  t.true(await lock.release());
});

test.serial(
  'holdAfterMs after an unreachable loss: fn resolved, the entry is still ours, so it becomes the completed marker (CAS-checked)',
  async (t) => {
    const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
    const run = memlock.tryWithLock(
      'k',
      'A',
      async (signal) => {
        memcache.unreachable(true);
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        memcache.unreachable(false);
        return (signal.reason as LockLostError).kind;
      },
      { holdAfterMs: 60_000 },
    );
    await clock.tickAsync(3000);
    t.is(await run, 'unreachable');
    // The lease ran out only locally (no renewal confirmed): the entry may well
    // still be ours, and a late copy of the job must still be refused (API.md 10).
    t.is(decodeValue(memcache.peek('memlock:k')!.value)?.state, 'done', 'marked done, not deleted');
  },
);

test.serial('a release racing a renewal that fails past the deadline does not abort the released lock', async (t) => {
  const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500, timeoutMs: 2500 });
  const lock = await memlock.acquire('k', 'A');
  memcache.slow(5000);
  await clock.tickAsync(600); // renewal sent at 500, times out at 3000 (after the 2900 deadline)
  const released = lock.release();
  await clock.tickAsync(6000);
  await released;
  t.false(lock.signal.aborted, 'released before the lease could run out: not a loss');
  memcache.slow(0);
});

/** A stand-in client whose next CAS write is applied but reported as timed out (no reconnect). */
function flaky(memcache: MemcacheStandIn): LockClient & { failNextWrite: () => void } {
  const inner = memcache.client();
  let fail = false;
  const ambiguous = (): MemcacheUnavailableError =>
    new MemcacheUnavailableError('timed out', { cause: Object.assign(new Error('t'), { code: 'ETIMEDOUT' }) });
  return {
    add: (...a) => inner.add(...a),
    addThenGet: (...a) => inner.addThenGet(...a),
    get: (k) => inner.get(k),
    casSet: async (...a) => {
      const result = await inner.casSet(...a);
      if (fail) {
        fail = false;
        throw ambiguous();
      }
      return result;
    },
    casDelete: async (...a) => {
      const result = await inner.casDelete(...a);
      if (fail) {
        fail = false;
        throw ambiguous();
      }
      return result;
    },
    isCurrent: (k, c) => inner.isCurrent(k, c),
    serverOf: (k) => inner.serverOf(k),
    close: () => inner.close(),
    failNextWrite: () => {
      fail = true;
    },
  };
}

test.serial(
  'after an ambiguous renewal on the same connection, the next one reads back and adopts the fresh CAS',
  async (t) => {
    let client: ReturnType<typeof flaky> | undefined;
    const { clock, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 }, (memcache) => (client = flaky(memcache)));
    const lock = await memlock.acquire('k', 'A');
    client!.failNextWrite();
    await clock.tickAsync(500); // applied, reported as a timeout: our CAS is stale now
    await clock.tickAsync(100); // retry: read back, then renew
    await clock.tickAsync(1000);
    t.false(lock.signal.aborted, 'not mistaken for a takeover');
    t.true(await lock.release());
  },
);

test.serial('after an ambiguous write, release reads back before deleting', async (t) => {
  let client: ReturnType<typeof flaky> | undefined;
  const { clock, memcache, memlock } = setup(
    t,
    { leaseMs: 4000, heartbeatMs: 500 },
    (memcache) => (client = flaky(memcache)),
  );
  const lock = await memlock.acquire('k', 'A');
  client!.failNextWrite();
  await clock.tickAsync(500);
  t.true(await lock.release(), 'deleted with the fresh CAS');
  t.is(memcache.peek('memlock:k'), null);
  // A completed marker written after an ambiguous renewal, too.
  const run = memlock.tryWithLock(
    'm',
    'A',
    async () => {
      client!.failNextWrite();
      await new Promise((resolve) => setTimeout(resolve, 600));
    },
    { holdAfterMs: 10_000 },
  );
  await clock.tickAsync(700);
  await run;
  t.is(decodeValue(memcache.peek('memlock:m')!.value)?.state, 'done');
});

test.serial('a reservation that fails (the entry was taken meanwhile) leaves the waiter queue as it was', async (t) => {
  const { clock, memcache, memlock } = setup(t, {});
  const waiter = memcache.memlock();
  t.teardown(() => waiter.close());
  const held = await memlock.acquire('k', 'A', { wait: { timeoutMs: 10_000 } });
  const waiting = waiter
    .acquire('k', 'B', { wait: { timeoutMs: 10_000, minDelayMs: 50, maxDelayMs: 200 } })
    .catch((e: unknown) => e);
  await clock.tickAsync(100);
  const queueKey = memcache.keys().find((k) => k.includes('sha256q:'))!;
  const queued = memcache.peek(queueKey)!.value.toString();
  memcache.set('memlock:k', 'foreign', 100);
  const writes = memcache.ops.set;
  t.false(await held.release(), 'taken: nothing reserved');
  t.is(memcache.ops.set, writes + 1, 'the release did try to reserve (one CAS write, refused)');
  t.is(memcache.peek('memlock:k')?.value.toString(), 'foreign');
  t.is(memcache.peek(queueKey)?.value.toString(), queued, 'the waiter is still queued');
  memcache.evict('memlock:k');
  await clock.tickAsync(1000);
  t.is(((await waiting) as { clientId: string }).clientId, 'B');
});

test.serial(
  'holdAfterMs: a lock given up during its add (abort) or closed while fn runs is deleted, never marked completed',
  async (t) => {
    const { clock, memcache, memlock } = setup(t, { timeoutMs: 1000 });
    memcache.slow(100);
    const controller = new AbortController();
    const aborted = memlock
      .tryWithLock('a', 'A', () => 1, { holdAfterMs: 5000, signal: controller.signal })
      .catch((e: unknown) => e);
    await clock.tickAsync(50);
    controller.abort('stop');
    await clock.tickAsync(300);
    t.is(await aborted, 'stop');
    t.is(memcache.peek('memlock:a'), null, 'deleted, no completed marker');
    memcache.slow(0);
    const closing = memlock
      .tryWithLock(
        'b',
        'A',
        async (signal) => {
          void memlock.close();
          t.true(signal.aborted, 'close() aborts held locks at once');
          return 'finished anyway';
        },
        { holdAfterMs: 5000 },
      )
      .catch((e: unknown) => e);
    await clock.tickAsync(100);
    await closing;
    t.is(memcache.peek('memlock:b'), null, 'closed: deleted, no completed marker');
  },
);

test.serial(
  'inside a process, a release hands the key to the next waiter with one CAS write (no delete, no add)',
  async (t) => {
    const { clock, memcache, recorder, memlock } = setup(t, {});
    const order: string[] = [];
    const run = (id: string) =>
      memlock.tryWithLock(
        'k',
        id,
        async () => {
          order.push(id);
          // Within the turn's default 5 ms: no release in it reads the waiter queue but the last.
          await new Promise((resolve) => setTimeout(resolve, 1));
        },
        { wait: { timeoutMs: 10_000 } },
      );
    const all = Promise.all(['A', 'B', 'C'].map(run));
    await clock.tickAsync(1000);
    await all;
    t.deepEqual(order, ['A', 'B', 'C']);
    t.deepEqual(
      recorder.sent,
      { add: 1, get: 2, casSet: 2, casDelete: 1 },
      'one add (and its pipelined read), two transfers, one read of the waiter queue and one delete at the end',
    );
    t.is(memcache.peek('memlock:k'), null);
  },
);
