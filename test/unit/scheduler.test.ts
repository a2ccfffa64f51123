/**
 * The heartbeat: the scheduler (one timer for all locks) and the renewal
 * schedule of a held lock, on fake timers (`performance.now()` and
 * `setTimeout` faked) against the `memlock/testing` stand-in. Time only moves
 * when a test moves it, so renewal counts and times are exact: a lease of
 * n = ceil(leaseMs / 1000) s is written with TTL n + 1 and guaranteed for
 * n-1 s after a write was sent, the deadline sits min(100, (n-1) s / 10) ms
 * (plus the recent event-loop delay) before that, and renewals come every
 * min(heartbeatMs, half the time to the deadline).
 */
import test from 'ava';
import dc from 'node:diagnostics_channel';
import { COALESCE_MS, Scheduler, type Scheduled } from '../../src/scheduler.js';
import { Memlock, LockLostError, type MemlockOptions } from '../../src/index.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { RecordingClient } from '../faults/lib/recording.js';
import { fakeTime } from '../helpers/clock.js';

function node(onFire: (now: number) => void): Scheduled {
  return { due: 0, heapIndex: -1, fire: onFire };
}

// ---------------------------------------------------------------- scheduler

test.serial('scheduler: fires each node once at its due time, earliest first, on one timer', async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  const fired: Array<[number, number]> = [];
  const base = performance.now();
  const dues = [50, 10, 40, 20, 30, 70, 60];
  for (const due of dues)
    scheduler.schedule(
      node((now) => fired.push([due, now - base])),
      base + due,
    );
  t.is(scheduler.size, dues.length);
  t.true(scheduler.armed);
  t.is(clock.countTimers(), 1, 'one timer for all nodes');
  await clock.tickAsync(9);
  t.deepEqual(fired, []);
  await clock.tickAsync(61);
  t.deepEqual(fired, [
    [10, 10],
    [20, 20],
    [30, 30],
    [40, 40],
    [50, 50],
    [60, 60],
    [70, 70],
  ]);
  t.is(scheduler.size, 0);
});

test.serial(`scheduler: nodes due within ${COALESCE_MS} ms of the earliest fire in the same tick`, async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  const fired: Array<[string, number]> = [];
  const base = performance.now();
  scheduler.schedule(
    node((now) => fired.push(['a', now - base])),
    base + 100,
  );
  scheduler.schedule(
    node((now) => fired.push(['b', now - base])),
    base + 100 + COALESCE_MS,
  );
  scheduler.schedule(
    node((now) => fired.push(['c', now - base])),
    base + 100 + COALESCE_MS + 1,
  );
  await clock.tickAsync(100);
  t.deepEqual(fired, [
    ['a', 100],
    ['b', 100],
  ]);
  await clock.tickAsync(COALESCE_MS + 1);
  t.deepEqual(fired, [
    ['a', 100],
    ['b', 100],
    ['c', 100 + COALESCE_MS + 1],
  ]);
});

test.serial('scheduler: cancel, reschedule earlier and later, stop', async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  const fired: Array<[string, number]> = [];
  const base = performance.now();
  const make = (name: string): Scheduled => node((now) => fired.push([name, now - base]));
  const [a, b, c, d] = [make('a'), make('b'), make('c'), make('d')];
  scheduler.schedule(a, base + 30);
  scheduler.schedule(b, base + 10);
  scheduler.schedule(c, base + 20);
  scheduler.schedule(d, base + 40);
  scheduler.cancel(c);
  scheduler.cancel(c); // twice is harmless
  t.is(c.heapIndex, -1);
  scheduler.schedule(a, base + 5); // earlier
  scheduler.schedule(b, base + 50); // later
  t.is(scheduler.size, 3);
  await clock.tickAsync(60);
  t.deepEqual(fired, [
    ['a', 5],
    ['d', 40],
    ['b', 50],
  ]);
  scheduler.schedule(a, base + 100);
  scheduler.stop();
  t.false(scheduler.armed);
  t.is(scheduler.size, 0);
  t.is(a.heapIndex, -1);
  await clock.tickAsync(100);
  t.is(fired.length, 3);
});

test.serial('scheduler: a node rescheduling itself inside the coalescing window waits for the next tick', async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  let fires = 0;
  const self: Scheduled = node((now) => {
    fires++;
    if (fires < 3) scheduler.schedule(self, now + 1);
  });
  scheduler.schedule(self, performance.now() + 10);
  await clock.tickAsync(10);
  t.is(fires, 1);
  await clock.tickAsync(1);
  t.is(fires, 2);
  await clock.tickAsync(1);
  t.is(fires, 3);
});

test.serial('scheduler: a throwing node is reported and does not stop the others', async (t) => {
  const clock = fakeTime(t);
  const errors: unknown[] = [];
  const scheduler = new Scheduler((error) => errors.push(error));
  let ran = 0;
  const boom = new Error('x');
  scheduler.schedule(
    node(() => {
      throw boom;
    }),
    performance.now(),
  );
  scheduler.schedule(
    node(() => {
      ran++;
    }),
    performance.now(),
  );
  await clock.tickAsync(0);
  t.is(ran, 1);
  t.deepEqual(errors, [boom]);
  // Without an onError, a throwing node is swallowed.
  const quiet = new Scheduler();
  quiet.schedule(
    node(() => {
      throw boom;
    }),
    performance.now(),
  );
  quiet.schedule(
    node(() => {
      ran++;
    }),
    performance.now(),
  );
  await clock.tickAsync(0);
  t.is(ran, 2);
});

test.serial('scheduler: 10,000 nodes in a heap fire in due order', async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  const fired: number[] = [];
  const base = performance.now();
  // A shuffled order, some rescheduled and some cancelled, so the heap has work to do.
  const nodes = Array.from({ length: 10_000 }, (_, i) => node(() => fired.push(i)));
  for (let i = 0; i < nodes.length; i++)
    scheduler.schedule(nodes[(i * 7919) % nodes.length]!, base + 10 * ((i * 7919) % nodes.length) + 1000);
  for (let i = 0; i < nodes.length; i += 3) scheduler.schedule(nodes[i]!, base + 10 * i + 1);
  for (let i = 1; i < nodes.length; i += 5) scheduler.cancel(nodes[i]!);
  await clock.tickAsync(10 * 10_000 + 1000);
  const expected = nodes
    .map((_, i) => ({ i, due: i % 3 === 0 ? 10 * i + 1 : 10 * i + 1000 }))
    .filter(({ i }) => i % 5 !== 1)
    .sort((x, y) => x.due - y.due)
    .map(({ i }) => i);
  t.deepEqual(fired, expected);
});

test.serial('scheduler: stop() clears its timer; a later node does not re-arm it, an equal one neither', async (t) => {
  const clock = fakeTime(t);
  const scheduler = new Scheduler();
  const timerId = (): number => {
    const id = setTimeout(() => {}, 0) as unknown as number;
    clearTimeout(id);
    return Number(id);
  };
  const base = performance.now();
  const start = timerId();
  scheduler.schedule(
    node(() => {}),
    base + 100,
  );
  scheduler.schedule(
    node(() => {}),
    base + 200,
  ); // later: the armed timer stays
  scheduler.schedule(
    node(() => {}),
    base + 100,
  ); // equal: stays too
  t.is(timerId() - start, 2, 'one timer created in between');
  scheduler.schedule(
    node(() => {}),
    base + 50,
  ); // earlier: re-armed
  t.is(clock.countTimers(), 1);
  scheduler.stop();
  t.is(clock.countTimers(), 0, 'no timer left after stop()');
});

test.serial('scheduler: its timer is unref’d (held locks never keep the process alive)', (t) => {
  const timeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timeouts();
  const scheduler = new Scheduler();
  scheduler.schedule(
    node(() => {}),
    performance.now() + 60_000,
  );
  t.true(scheduler.armed);
  t.is(timeouts(), before);
  scheduler.stop();
});

// -------------------------------------------------------- renewal schedule

function setup(t: { teardown: (fn: () => void) => void }, options: Omit<MemlockOptions, 'lockClient'>) {
  const clock = fakeTime(t);
  const memcache = new MemcacheStandIn();
  const recorder = new RecordingClient(
    memcache.client(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  );
  const memlock = new Memlock({ ...options, lockClient: recorder });
  const start = performance.now();
  /** Send times (ms after `start`) of the operations of `op` on `memcacheKey`. */
  const sent = (op: string, memcacheKey = 'memlock:k'): number[] =>
    recorder
      .opsOn(memcacheKey)
      .filter((r) => r.op === op)
      .map((r) => r.sentAt - start);
  return { clock, memcache, recorder, memlock, start, sent };
}

const every = (step: number, to: number, from = step): number[] =>
  Array.from({ length: Math.floor((to - from) / step) + 1 }, (_, i) => from + i * step);

test.serial(
  'renews exactly every heartbeatMs: 10 renewals in 1 s at 100 ms; one add before, one delete after, no reads',
  async (t) => {
    const { clock, memlock, recorder, sent } = setup(t, { leaseMs: 10_000, heartbeatMs: 100 });
    const run = memlock.tryWithLock('k', 'A', () => new Promise((resolve) => setTimeout(resolve, 1050)));
    await clock.tickAsync(1050);
    await run;
    t.deepEqual(sent('add'), [0]);
    t.deepEqual(sent('casSet'), every(100, 1000));
    t.deepEqual(sent('casDelete'), [1050]);
    t.deepEqual(
      recorder.ops.map((r) => r.op).filter((op) => op === 'get' || op === 'addThenGet'),
      [],
    );
    await memlock.close();
  },
);

test.serial(
  'renewal interval = min(heartbeatMs, half the guaranteed lease minus margin): 2 s lease renews every 450 ms, 2.5 s every 950 ms',
  async (t) => {
    const { clock, memlock, sent } = setup(t, { leaseMs: 2000, heartbeatMs: 1000 });
    const lock = await memlock.acquire('k', 'A');
    // n = 2: guaranteed 1000 ms, deadline 900 ms after each send, renew at half of that.
    await clock.tickAsync(2000);
    t.deepEqual(sent('casSet'), every(450, 2000));
    t.false(lock.signal.aborted);
    const long = await memlock.acquire('k2', 'A', { leaseMs: 2500, heartbeatMs: 1000 });
    const from = performance.now() - (performance.now() - 2000); // acquired at 2000
    await clock.tickAsync(2000);
    // n = 3: deadline 1900 ms after each send; 950 < heartbeatMs.
    t.deepEqual(sent('casSet', 'memlock:k2'), [from + 950, from + 1900]);
    const defaults = await memlock.acquire('k3', 'A', { leaseMs: 16_000 });
    await clock.tickAsync(3000);
    t.deepEqual(sent('casSet', 'memlock:k3'), [5000, 6000, 7000]);
    await Promise.all([lock.release(), long.release(), defaults.release()]);
  },
);

for (const [leaseMs, deadline] of [
  [2000, 900],
  [4000, 2900],
  [16_000, 14_900],
  [2001, 1900],
] as const) {
  test.serial(
    `deadline: unreachable right after acquire with leaseMs ${leaseMs}: the signal aborts (unreachable) exactly ${deadline} ms after the add was sent`,
    async (t) => {
      const heartbeatMs = Math.min(500, leaseMs / 2);
      const { clock, memcache, memlock, sent } = setup(t, { leaseMs, heartbeatMs });
      const lock = await memlock.acquire('k', 'A');
      memcache.unreachable(true);
      await clock.tickAsync(deadline - 1);
      t.false(lock.signal.aborted);
      await clock.tickAsync(1);
      t.true(lock.signal.aborted);
      const reason = lock.signal.reason as LockLostError;
      t.true(reason instanceof LockLostError);
      t.is(reason.kind, 'unreachable');
      // First renewal at heartbeatMs, then a retry every 100 ms until the deadline.
      const attempts = [...sent('casSet'), ...sent('get')].sort((a, b) => a - b);
      const first = Math.min(heartbeatMs, deadline / 2);
      t.deepEqual(attempts, every(100, deadline - 1, first));
      t.false(await lock.release());
      await memlock.close();
    },
  );
}

test.serial('the lease counts from when a renewal was sent, not when it was answered', async (t) => {
  const { clock, memcache, memlock, sent } = setup(t, { leaseMs: 4000, heartbeatMs: 500, timeoutMs: 400 });
  memcache.slow(150);
  const acquiring = memlock.acquire('k', 'A');
  await clock.tickAsync(150); // the add is answered 150 ms after it was sent
  const lock = await acquiring;
  await clock.tickAsync(1349);
  t.deepEqual(sent('casSet'), [500, 1000], 'next renewal one heartbeat after the previous was sent');
  memcache.unreachable(true);
  // Last confirmed renewal was sent at 1000 (answered at 1150): deadline 1000 + 2900.
  await clock.tickAsync(3900 - 1499 - 1);
  t.false(lock.signal.aborted);
  await clock.tickAsync(1);
  t.true(lock.signal.aborted);
  await memlock.close();
});

test.serial('a renewal still in flight at the deadline does not hold the signal back (kind deadline)', async (t) => {
  const { clock, memcache, memlock, sent } = setup(t, { leaseMs: 4000, heartbeatMs: 500, timeoutMs: 10_000 });
  const lock = await memlock.acquire('k', 'A');
  memcache.slow(5000);
  await clock.tickAsync(2899);
  t.deepEqual(sent('casSet'), [500]);
  t.false(lock.signal.aborted);
  await clock.tickAsync(1);
  t.true(lock.signal.aborted);
  t.is((lock.signal.reason as LockLostError).kind, 'deadline');
  memcache.slow(0);
  await clock.tickAsync(5000);
  await memlock.close();
});

test.serial(
  'an event-loop stall past the deadline: the first timer to run aborts the signal (deadline) without renewing',
  async (t) => {
    const { clock, memlock, sent } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
    const lock = await memlock.acquire('k', 'A');
    clock.jump(3000); // the loop was blocked for 3 s: due timers run once, late
    await clock.tickAsync(0);
    t.true(lock.signal.aborted);
    t.is((lock.signal.reason as LockLostError).kind, 'deadline');
    t.deepEqual(sent('casSet'), [], 'no renewal after the lease could have run out');
    await memlock.close();
  },
);

test.serial('a stall shorter than the deadline: renewed at once when the loop runs again, lock kept', async (t) => {
  const { clock, memlock, sent } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
  const lock = await memlock.acquire('k', 'A');
  clock.jump(2500);
  await clock.tickAsync(0);
  t.false(lock.signal.aborted);
  t.deepEqual(sent('casSet'), [2500]);
  await clock.tickAsync(500);
  t.deepEqual(sent('casSet'), [2500, 3000]);
  await memlock.close();
});

test.serial('eviction is found by the next renewal (kind gone); an overwrite (kind taken)', async (t) => {
  const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
  const gone = await memlock.acquire('k', 'A');
  const taken = await memlock.acquire('k2', 'A');
  memcache.evict('memlock:k');
  memcache.set('memlock:k2', 'other', 30);
  await clock.tickAsync(499);
  t.false(gone.signal.aborted);
  t.false(taken.signal.aborted);
  await clock.tickAsync(1);
  t.is((gone.signal.reason as LockLostError).kind, 'gone');
  t.is((taken.signal.reason as LockLostError).kind, 'taken');
  await memlock.close();
});

test.serial(
  'a restart while held: the next renewal reads back first (new connection) and finds the entry gone',
  async (t) => {
    const { clock, memcache, memlock, sent } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
    const lock = await memlock.acquire('k', 'A');
    memcache.restart();
    // Another client takes the key on the fresh server: its CAS is 1, as ours was.
    const other = await memcache.client().add('memlock:k', Buffer.from('ml1:0:x:B'), 10);
    t.deepEqual(other, { status: 'ok', cas: 1n, conn: 1 });
    await clock.tickAsync(500);
    t.deepEqual(sent('get'), [500], 'read back instead of a CAS write with a CAS from before the restart');
    t.deepEqual(sent('casSet'), []);
    t.is((lock.signal.reason as LockLostError).kind, 'taken');
    t.false(await lock.release());
    t.regex(memcache.peek('memlock:k')!.value.toString(), /:B$/);
    await memlock.close();
  },
);

test.serial(
  'heartbeat-error during an outage: the first failure, then at most once a second per lock, with the streak count',
  async (t) => {
    const { clock, memcache, memlock } = setup(t, { leaseMs: 4000, heartbeatMs: 500 });
    const seen: Array<{ failures: number; at: number }> = [];
    const start = performance.now();
    const onError = (message: unknown): void => {
      seen.push({ failures: (message as { failures: number }).failures, at: performance.now() - start });
    };
    dc.subscribe('memlock:heartbeat-error', onError);
    t.teardown(() => dc.unsubscribe('memlock:heartbeat-error', onError));
    const lock = await memlock.acquire('k', 'A');
    memcache.unreachable(true);
    await clock.tickAsync(3000);
    t.true(lock.signal.aborted);
    t.deepEqual(seen, [
      { failures: 1, at: 500 },
      { failures: 11, at: 1500 },
      { failures: 21, at: 2500 },
    ]);
    await memlock.close();
  },
);
