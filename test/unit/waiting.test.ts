/**
 * Waiting across processes (waiting.ts's wait loop, pacing.ts, fleet-queue.ts,
 * local-waiters.ts) on fake timers: each `standIn.memlock()` is its own
 * Memlock instance with its own waiter-queue token, as a process is. A
 * recording client logs every request by kind and key, so a test can say
 * which key a waiter polls and how often.
 */
import test from 'ava';
import type { Entry, LockClient, WriteResult } from '../../src/client.js';
import { LockNotAcquiredError, Memlock, type LockOptions, type MemlockOptions } from '../../src/index.js';
import { memcacheKeyOf, queueKeyOf } from '../../src/keys.js';
import { decodeValue, encodeValue, RESERVATION_TTL_SECONDS } from '../../src/protocol.js';
import { decodeQueue, encodeQueue } from '../../src/fleet-queue.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { PARK_MS } from '../../src/waiting.js';
import { EPOCH, fakeTime, type Clock } from '../helpers/clock.js';

const MKEY = memcacheKeyOf('memlock:', 'k');
const QKEY = queueKeyOf('memlock:', MKEY);

interface Sent {
  op: string;
  key: string;
  at: number;
}

/** A LockClient that logs each request (op, key, fake time) and passes it on. */
function recording(inner: LockClient, log: Sent[]): LockClient {
  const note = (op: string, key: string): void => {
    log.push({ op, key: key === MKEY ? 'entry' : key === QKEY ? 'queue' : key, at: performance.now() - EPOCH });
  };
  return {
    add: (key: string, value: Buffer, ttl: number): Promise<WriteResult> => {
      note('add', key);
      return inner.add(key, value, ttl);
    },
    addThenGet: (key: string, value: Buffer, ttl: number) => {
      note('addThenGet', key);
      return inner.addThenGet(key, value, ttl);
    },
    get: (key: string): Promise<Entry | null> => {
      note('get', key);
      return inner.get(key);
    },
    casSet: (key: string, value: Buffer, ttl: number, cas: bigint): Promise<WriteResult> => {
      note('casSet', key);
      return inner.casSet(key, value, ttl, cas);
    },
    casDelete: (key: string, cas: bigint): Promise<WriteResult> => {
      note('casDelete', key);
      return inner.casDelete(key, cas);
    },
    isCurrent: (key: string, conn: number) => inner.isCurrent(key, conn),
    serverOf: (key: string) => inner.serverOf(key),
    close: () => inner.close(),
  };
}

interface Proc {
  memlock: Memlock;
  log: Sent[];
}

function processes(
  t: { teardown: (fn: () => Promise<unknown>) => void },
  memcache: MemcacheStandIn,
  count: number,
  options: MemlockOptions = {},
): Proc[] {
  return Array.from({ length: count }, () => {
    const log: Sent[] = [];
    const client = memcache.client();
    const memlock = new Memlock({ ...options, lockClient: recording(client, log) });
    t.teardown(async () => {
      await memlock.close();
      await client.close();
    });
    return { memlock, log };
  });
}

const WAIT: LockOptions = { wait: { timeoutMs: 30_000, minDelayMs: 5, maxDelayMs: 1000 } };

function queueTokens(memcache: MemcacheStandIn): string[] {
  const entry = memcache.peek(QKEY);
  return entry === null ? [] : decodeQueue(entry.value).map((w) => w.token);
}

/** Fake-time ms between consecutive requests of `op` on `key` in `log`, from `from` to `to`. */
function gaps(log: Sent[], key: string, from: number, to: number): number[] {
  const times = log.filter((s) => s.key === key && s.at >= from && s.at <= to).map((s) => s.at);
  return times.slice(1).map((at, i) => at - times[i]!);
}

test.serial(
  'a remote waiter queues once refused; the release reserves the key for it (nobody else may take it); the head polls at most every 500 ms, slower as the hold goes on',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b, c] = processes(t, memcache, 3) as [Proc, Proc, Proc];
    const held = await a.memlock.acquire('k', 'A', WAIT);
    let gotAt = -1;
    const waiting = b.memlock.acquire('k', 'B', WAIT).then((lock) => {
      gotAt = performance.now();
      return lock;
    });
    await clock.tickAsync(100);
    t.is(queueTokens(memcache).length, 1, 'queued in memcache after its first refusal');
    await clock.tickAsync(5900);
    const polls = gaps(b.log, 'entry', 100, 6000);
    t.true(Math.max(...polls) <= 500, `the head never sleeps past 500 ms: ${Math.max(...polls)}`);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    t.true(
      mean(polls.slice(-5)) > 4 * mean(polls.slice(0, 5)),
      `polls slow down as the hold goes on: ${polls.join(' ')}`,
    );
    t.true(polls.length < 100, `${polls.length} polls in 6 s at minDelayMs 5`);
    const [token] = queueTokens(memcache);
    const releasedAt = performance.now();
    t.true(await held.release());
    const reserved = decodeValue(memcache.peek(MKEY)!.value);
    t.like(reserved, { state: 'reserved', clientId: token });
    t.deepEqual(queueTokens(memcache), [], 'the releaser took the head out of the queue');
    const refused = await t.throwsAsync(c.memlock.acquire('k', 'C'), { instanceOf: LockNotAcquiredError });
    t.is(refused?.holder, undefined, 'a reservation names no holder');
    t.is(gotAt, -1);
    await clock.tickAsync(500);
    t.true(gotAt > releasedAt, 'acquired within 500 ms of the release');
    const lock = await waiting;
    t.like(decodeValue(memcache.peek(MKEY)!.value), { state: 'held', clientId: 'B' });
    t.true(await lock.release());
    t.is(memcache.peek(MKEY), null, 'nobody waits: deleted');
  },
);

test.serial(
  'places 0 and 1 poll the entry, places further back only re-read the queue; the key goes round in queue order',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b, c, d] = processes(t, memcache, 4) as [Proc, Proc, Proc, Proc];
    const order: string[] = [];
    const hold = (p: Proc, id: string) =>
      p.memlock.tryWithLock(
        'k',
        id,
        async () => {
          order.push(id);
          await new Promise((resolve) => setTimeout(resolve, 3000));
        },
        WAIT,
      );
    const done = [hold(a, 'A')];
    await clock.tickAsync(10);
    for (const [p, id] of [
      [b, 'B'],
      [c, 'C'],
      [d, 'D'],
    ] as const) {
      done.push(hold(p, id));
      await clock.tickAsync(10);
    }
    t.is(queueTokens(memcache).length, 3);
    await clock.tickAsync(2900);
    const afterFirstAttempt = (p: Proc): Sent[] => p.log.slice(p.log.findIndex((s) => s.key === 'entry') + 1);
    t.true(gaps(b.log, 'entry', 0, 2900).length > 5, 'the head polls the entry');
    t.true(gaps(c.log, 'entry', 0, 2900).length > 5, 'the next one too');
    t.deepEqual(
      afterFirstAttempt(d)
        .filter((s) => s.key === 'entry')
        .map((s) => s.op),
      [],
      'place 2 never touches the entry',
    );
    t.true(
      afterFirstAttempt(d).some((s) => s.key === 'queue' && s.op === 'get'),
      'place 2 re-reads the queue',
    );
    // Both slow down as the hold goes on, and never sleep past 500 ms.
    for (const [who, gapsOf] of [
      ['place 1 (entry polls)', gaps(c.log, 'entry', 100, 2900)],
      ['place 2 (queue reads)', gaps(afterFirstAttempt(d), 'queue', 100, 2900)],
    ] as const) {
      const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
      t.true(gapsOf.length < 100, `${who}: ${gapsOf.length} requests during a 3 s hold`);
      t.true(mean(gapsOf.slice(-5)) > 4 * mean(gapsOf.slice(0, 5)), `${who} slows down: ${gapsOf.join(' ')}`);
      t.true(Math.max(...gapsOf) <= 500, `${who}: ${Math.max(...gapsOf)}`);
    }
    await clock.tickAsync(12_000);
    await Promise.all(done);
    t.deepEqual(order, ['A', 'B', 'C', 'D']);
    t.deepEqual(queueTokens(memcache), []);
    t.is(memcache.peek(MKEY), null);
  },
);

test.serial(
  'a reservation for a waiter that died expires within its TTL and the next waiter takes the key',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b] = processes(t, memcache, 2) as [Proc, Proc];
    const held = await a.memlock.acquire('k', 'A', WAIT);
    // A waiter that queued and then crashed: still alive in the queue, never polls.
    memcache.set(QKEY, encodeQueue([{ token: 'ghost', joinedAt: Date.now(), expiresAt: Date.now() + 60_000 }]), 30);
    let gotAt = -1;
    const waiting = b.memlock.acquire('k', 'B', WAIT).then((lock) => {
      gotAt = performance.now();
      return lock;
    });
    await clock.tickAsync(1000);
    t.is(queueTokens(memcache).length, 2);
    const releasedAt = performance.now();
    await held.release();
    t.like(decodeValue(memcache.peek(MKEY)!.value), { state: 'reserved', clientId: 'ghost' });
    await clock.tickAsync((RESERVATION_TTL_SECONDS - 1) * 1000 - 1);
    t.is(gotAt, -1, 'the reservation holds for at least its TTL minus one second');
    await clock.tickAsync(1000 + 500 + 1);
    t.true(
      gotAt !== -1,
      `acquired within the reservation's TTL and one poll (${gotAt - releasedAt} ms after the release)`,
    );
    t.is((await waiting).clientId, 'B');
  },
);

/** Runs `workers` looping callers per process (3 calls each, holding 10 ms); resolves with the order of processes served. */
async function alternate(
  t: { teardown: (fn: () => Promise<unknown>) => void },
  clock: Clock,
  options: MemlockOptions,
  workers: number,
): Promise<{ turns: number[]; order: string; requests: number }> {
  const memcache = new MemcacheStandIn();
  const procs = processes(t, memcache, 2, options);
  const order: number[] = [];
  const run = async (p: number, w: number): Promise<void> => {
    for (let i = 0; i < 3; i++) {
      await procs[p]!.memlock.tryWithLock(
        'k',
        `p${p}w${w}`,
        async () => {
          order.push(p);
          await new Promise((resolve) => setTimeout(resolve, 10));
        },
        WAIT,
      );
    }
  };
  const all = Promise.all([0, 1].flatMap((p) => Array.from({ length: workers }, (_, w) => run(p, w))));
  await clock.tickAsync(30_000);
  await all;
  const turns = order
    .join('')
    .match(/0+|1+/g)!
    .map((turn) => turn.length);
  return { turns, order: order.join(''), requests: procs.reduce((n, p) => n + p.log.length, 0) };
}

test.serial('a turn ends at its handoff bound: then the remote head gets the key', async (t) => {
  const clock = fakeTime(t);
  const { turns, order, requests } = await alternate(t, clock, { turn: { maxMs: 60_000, maxHandoffs: 3 } }, 6);
  t.is(Math.max(...turns), 4, order);
  // Every turn but the last of each process is a full one: the bound is used, and holds.
  t.true(
    turns.slice(0, -2).every((n) => n === 4),
    order,
  );
  t.is(order.length, 36);
  t.true(requests / order.length < 5, `${requests / order.length} requests per acquisition`);
});

test.serial('a turn ends at its time bound: then the remote head gets the key', async (t) => {
  const clock = fakeTime(t);
  // Holds of 10 ms: releases at 10 and 20 ms into the turn hand on locally, the one at 30 ms does not.
  const { turns, order } = await alternate(t, clock, { turn: { maxMs: 25, maxHandoffs: 1000 } }, 6);
  t.is(Math.max(...turns), 3, order);
  t.true(
    turns.slice(0, -2).every((n) => n === 3),
    order,
  );
});

test.serial('callers that arrive during the turn are served in it (a worker calling again at once)', async (t) => {
  const clock = fakeTime(t);
  // Three workers, three calls each: each worker's next call arrives while
  // another worker of its process holds the key. A long turn serves them all.
  const { turns, order } = await alternate(t, clock, { turn: { maxMs: 60_000, maxHandoffs: 1000 } }, 3);
  t.deepEqual(turns, [9, 9], order);
});

test.serial('strict turns (maxHandoffs 0): the key alternates between processes at every release', async (t) => {
  const clock = fakeTime(t);
  const { turns, order } = await alternate(t, clock, { turn: { maxMs: 60_000, maxHandoffs: 0 } }, 3);
  t.true(
    turns.slice(1, -1).every((n) => n === 1),
    order,
  );
});

/** Two processes of one worker each, looping on the key (hold 1 ms) for `ms`: the order in which the processes were served. */
async function singleWorkers(
  t: { teardown: (fn: () => Promise<unknown>) => void },
  clock: Clock,
  options: MemlockOptions,
  ms: number,
): Promise<{ turns: number[]; order: string; requests: number }> {
  const memcache = new MemcacheStandIn();
  const procs = processes(t, memcache, 2, options);
  const order: number[] = [];
  let stop = false;
  const run = async (p: number): Promise<void> => {
    while (!stop)
      await procs[p]!.memlock.tryWithLock(
        'k',
        `p${p}`,
        async () => {
          order.push(p);
          await new Promise((resolve) => setTimeout(resolve, 1));
        },
        WAIT,
      );
  };
  const all = Promise.all([run(0), run(1)]);
  await clock.tickAsync(ms);
  stop = true;
  await clock.tickAsync(1000);
  await all;
  const turns = order
    .join('')
    .match(/0+|1+/g)!
    .map((turn) => turn.length);
  return { turns, order: order.join(''), requests: procs.reduce((n, p) => n + p.log.length, 0) };
}

test.serial(
  'one worker per process: its next call, right after its release, is served in the same turn (the entry is parked for it)',
  async (t) => {
    const clock = fakeTime(t);
    const { turns, order, requests } = await singleWorkers(t, clock, { turn: { maxMs: 5, maxHandoffs: 16 } }, 2000);
    const middle = turns.slice(2, -2);
    t.true(middle.length > 10, order);
    // Holds of 1 ms in a 5 ms turn: several calls per turn, never more than the bounds allow.
    t.true(
      middle.every((n) => n >= 2 && n <= 6),
      `turns ${middle.join(',')}`,
    );
    t.true(requests / order.length < 4, `${(requests / order.length).toFixed(2)} requests per acquisition`);
  },
);

test.serial('one worker per process: the handoff bound also ends a turn of parked re-takes', async (t) => {
  const clock = fakeTime(t);
  const { turns, order } = await singleWorkers(t, clock, { turn: { maxMs: 1000, maxHandoffs: 2 } }, 2000);
  const middle = turns.slice(2, -2);
  t.true(middle.length > 10, order);
  t.true(
    middle.every((n) => n === 3),
    `turns ${middle.join(',')}`,
  );
});

for (const how of ['stops calling', 'closes'] as const) {
  test.serial(
    `a process with an entry parked for its worker ${how}: the other process gets the key within PARK_MS and a poll`,
    async (t) => {
      const clock = fakeTime(t);
      const memcache = new MemcacheStandIn();
      const [a, b] = processes(t, memcache, 2, { turn: { maxMs: 20, maxHandoffs: 1000 } }) as [Proc, Proc];
      const wait: LockOptions = { wait: { timeoutMs: 30_000, minDelayMs: 1, maxDelayMs: 10 } };
      let stopA = false;
      let stopB = false;
      let releasedAt = -1;
      const bGot: number[] = [];
      const loopA = (async (): Promise<void> => {
        while (!stopA) {
          await a.memlock
            .tryWithLock('k', 'A', () => new Promise((resolve) => setTimeout(resolve, 1)), wait)
            .catch(() => undefined);
          releasedAt = performance.now();
        }
      })();
      const loopB = (async (): Promise<void> => {
        while (!stopB)
          await b.memlock.tryWithLock(
            'k',
            'B',
            () => {
              bGot.push(performance.now());
              return new Promise((resolve) => setTimeout(resolve, 1));
            },
            wait,
          );
      })();
      await clock.tickAsync(200);
      // A parks the entry between its calls: it is A's most of the time.
      t.like(decodeValue(memcache.peek(MKEY)!.value), { state: 'held' });
      stopA = true;
      const closing = how === 'closes' ? a.memlock.close() : undefined;
      await clock.tickAsync(100);
      await loopA;
      await closing;
      const stoppedAt = releasedAt;
      stopB = true;
      await clock.tickAsync(1000);
      await loopB;
      const next = bGot.find((at) => at >= stoppedAt);
      t.true(next !== undefined);
      t.true(next! - stoppedAt <= PARK_MS + 10 + 5, `B got the key ${next! - stoppedAt} ms after A's last release`);
    },
  );
}

test.serial(
  'a remote waiter is not starved by a busy process: it waits at most about one turn and one poll',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const turn = { maxMs: 20, maxHandoffs: 1000 };
    const [a, b] = processes(t, memcache, 2, { turn }) as [Proc, Proc];
    const wait: LockOptions = { wait: { timeoutMs: 30_000, minDelayMs: 1, maxDelayMs: 10 } };
    let stop = false;
    const holdMs = 2;
    const loop = async (w: number): Promise<void> => {
      while (!stop)
        await a.memlock.tryWithLock('k', `a${w}`, () => new Promise((resolve) => setTimeout(resolve, holdMs)), wait);
    };
    const workers = Promise.all([0, 1, 2, 3].map(loop));
    await clock.tickAsync(100);
    const waits: number[] = [];
    for (let i = 0; i < 5; i++) {
      const asked = performance.now();
      let got = -1;
      const call = b.memlock.tryWithLock('k', 'B', () => void (got = performance.now()), wait);
      await clock.tickAsync(1000);
      await call;
      waits.push(got - asked);
      await clock.tickAsync(37);
    }
    stop = true;
    await clock.tickAsync(1000);
    await workers;
    // The turn in progress, the hold at its end, the reservation's write and one poll of the head.
    const bound = turn.maxMs + holdMs + 10 + 5;
    t.true(
      waits.every((ms) => ms >= 0 && ms <= bound),
      `waits ${waits.join(', ')} ms, bound ${bound} ms`,
    );
  },
);

test.serial(
  'a release reads the waiter queue only while other processes were seen wanting the key (10 s); otherwise it just deletes',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b] = processes(t, memcache, 2) as [Proc, Proc];
    const queueReads = (): number => a.log.filter((s) => s.key === 'queue').length;
    // Never refused, never waited: the uncontended path is add + delete.
    await a.memlock.tryWithLock('k', 'A', () => {});
    t.deepEqual(
      a.log.map((s) => s.op),
      ['add', 'casDelete'],
    );
    const theirs = await b.memlock.acquire('k', 'B');
    await t.throwsAsync(a.memlock.acquire('k', 'A'), { instanceOf: LockNotAcquiredError });
    await theirs.release();
    await a.memlock.tryWithLock('k', 'A', () => {});
    t.is(queueReads(), 1, 'refused by another process moments ago: the release looks for waiters');
    await clock.tickAsync(9000);
    await a.memlock.tryWithLock('k', 'A', () => {});
    t.is(queueReads(), 2, 'still within 10 s of the refusal');
    await clock.tickAsync(1001);
    await a.memlock.tryWithLock('k', 'A', () => {});
    t.is(queueReads(), 2, 'more than 10 s ago: delete without a read');
  },
);

test.serial(
  'a new waiter goes to the back of the queue (no first attempt) within a second of being refused by another process',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b, c, d] = processes(t, memcache, 4) as [Proc, Proc, Proc, Proc];
    const held = await a.memlock.acquire('k', 'A', WAIT);
    const order: string[] = [];
    const first = b.memlock.tryWithLock(
      'k',
      'B',
      () => {
        order.push('B');
      },
      WAIT,
    );
    await clock.tickAsync(50);
    // c and d are refused: other processes want k.
    await t.throwsAsync(c.memlock.acquire('k', 'C'), { instanceOf: LockNotAcquiredError });
    await t.throwsAsync(d.memlock.acquire('k', 'D'), { instanceOf: LockNotAcquiredError });
    const cBefore = c.log.length;
    const second = c.memlock.tryWithLock(
      'k',
      'C',
      () => {
        order.push('C');
      },
      WAIT,
    );
    await clock.tickAsync(0);
    t.deepEqual(
      c.log.slice(cBefore).map((s) => `${s.op}:${s.key}`),
      ['get:queue', 'casSet:queue'],
      'joins the queue before touching the entry',
    );
    await clock.tickAsync(1000);
    const dBefore = d.log.length;
    const third = d.memlock.tryWithLock(
      'k',
      'D',
      () => {
        order.push('D');
      },
      WAIT,
    );
    await clock.tickAsync(0);
    t.is(d.log[dBefore]?.key, 'entry', 'a second later: tries the entry first');
    await held.release();
    await clock.tickAsync(5000);
    await Promise.all([first, second, third]);
    t.deepEqual(order, ['B', 'C', 'D']);
  },
);

test.serial(
  'a queued waiter refreshes its liveness every 3 s; one that gives up (timeout, close) leaves the queue',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b, c, d] = processes(t, memcache, 4) as [Proc, Proc, Proc, Proc];
    const held = await a.memlock.acquire('k', 'A', WAIT);
    const head = b.memlock.acquire('k', 'B', WAIT);
    await clock.tickAsync(10);
    const next = c.memlock.acquire('k', 'C', WAIT);
    await clock.tickAsync(10);
    const timingOut = d.memlock.acquire('k', 'D', { wait: { timeoutMs: 5000 } }).catch((error: unknown) => error);
    await clock.tickAsync(10);
    t.is(queueTokens(memcache).length, 3);
    const start = performance.now() - EPOCH;
    const writes = (p: Proc): number[] =>
      p.log.filter((s) => s.key === 'queue' && s.op === 'casSet' && s.at >= start).map((s) => s.at);
    await clock.tickAsync(4990);
    const error = await timingOut;
    t.true(error instanceof LockNotAcquiredError);
    t.regex((error as Error).message, /Timed out after 5000 ms/);
    t.is((error as LockNotAcquiredError).holder, 'A');
    await clock.tickAsync(10);
    t.is(queueTokens(memcache).length, 2, 'the waiter that timed out left the queue');
    await clock.tickAsync(10_000);
    // b waits 15 s: about five refreshes, each at least 3 s after the last.
    const refreshes = writes(b);
    t.true(refreshes.length >= 4 && refreshes.length <= 6, `${refreshes.length} refreshes`);
    t.true(
      refreshes.slice(1).every((at, i) => at - refreshes[i]! >= 3000),
      refreshes.join(' '),
    );
    const alive = decodeQueue(memcache.peek(QKEY)!.value);
    t.true(
      alive.every((w) => w.expiresAt > Date.now()),
      'nobody in the queue looks dead',
    );
    const closing = c.memlock.close();
    await clock.tickAsync(0);
    const closed = await next.catch((e: unknown) => e);
    t.is((closed as { code?: string }).code, 'ERR_MEMLOCK_CLOSED', 'close() stops a waiting call at once');
    await closing;
    t.is(queueTokens(memcache).length, 1, 'and it left the queue before close() resolved');
    await held.release();
    await clock.tickAsync(1000);
    t.is((await head).clientId, 'B');
  },
);

test.serial(
  'waiting with a clientId this instance already holds the key with: a takeover at once, not a wait behind ourselves; a foreign entry meanwhile means waiting like anyone',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a] = processes(t, memcache, 1) as [Proc];
    const first = await a.memlock.acquire('k', 'W');
    const second = await a.memlock.acquire('k', 'W', WAIT);
    t.is((first.signal.reason as { kind?: string } | undefined)?.kind, 'taken');
    t.false(second.signal.aborted);
    // Held by W here, but the entry now belongs to someone else (say, a steal elsewhere).
    memcache.set(MKEY, encodeValue('X', Date.now()), 30);
    let got = false;
    const third = a.memlock.acquire('k', 'W', WAIT).then((lock) => {
      got = true;
      return lock;
    });
    await clock.tickAsync(200);
    t.false(got, 'refused by the foreign entry: it waits');
    memcache.evict(MKEY);
    // second still holds it locally until its next renewal finds the entry gone (heartbeat 1 s).
    await clock.tickAsync(1600);
    t.true(got);
    t.true(second.signal.aborted);
    t.is((await third).clientId, 'W');
    memcache.set(MKEY, encodeValue('W', Date.now(), 'tok', 'done'), 30);
    const held = await a.memlock.acquire('k2', 'V');
    t.truthy(held);
    const marked = a.memlock.acquire('k', 'W', WAIT).catch((e: unknown) => e);
    await clock.tickAsync(10);
    t.true(
      (await marked) instanceof LockNotAcquiredError,
      'a completed marker: refused at once, even for its own clientId',
    );
  },
);

test.serial(
  'after a handoff by reservation the new holder does not touch the queue (the releaser took it out); a releaser with calls still waiting queues up again behind',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b] = processes(t, memcache, 2) as [Proc, Proc];
    const held = await a.memlock.acquire('k', 'A1', WAIT);
    const localWaiter = a.memlock.acquire('k', 'A2', WAIT);
    const remote = b.memlock.acquire('k', 'B', WAIT);
    await clock.tickAsync(100);
    t.is(queueTokens(memcache).length, 1, 'only b is queued (a’s own waiter waits behind its local holder)');
    const [bToken] = queueTokens(memcache);
    await held.release();
    t.like(decodeValue(memcache.peek(MKEY)!.value), { state: 'reserved', clientId: bToken });
    const queued = queueTokens(memcache);
    t.is(queued.length, 1, 'a queued up again for A2');
    t.not(queued[0], bToken);
    await clock.tickAsync(600);
    const lock = await remote;
    const since = b.log.length;
    await clock.tickAsync(1000);
    t.deepEqual(
      b.log.slice(since).filter((s) => s.key === 'queue'),
      [],
      'b no longer believes it is queued',
    );
    await lock.release();
    await clock.tickAsync(1000);
    t.is((await localWaiter).clientId, 'A2');
  },
);

test.serial(
  'close() lets queue updates in flight finish: a waiting call’s dequeue lands before close() resolves, even on a slow server',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const [a, b] = processes(t, memcache, 2) as [Proc, Proc];
    const held = await a.memlock.acquire('k', 'A');
    const waiting = b.memlock.acquire('k', 'B', WAIT).catch((e: unknown) => e);
    await clock.tickAsync(100);
    t.is(queueTokens(memcache).length, 1);
    memcache.slow(50);
    let closed = false;
    const closing = b.memlock.close().then(() => {
      closed = true;
    });
    await clock.tickAsync(60);
    t.false(closed, 'still leaving the queue');
    await clock.tickAsync(200);
    await closing;
    t.deepEqual(queueTokens(memcache), []);
    t.is(((await waiting) as { code?: string }).code, 'ERR_MEMLOCK_CLOSED');
    memcache.slow(0);
    await held.release();
  },
);

/**
 * The whole request schedule of one contended key, request by request: A
 * holds for 8 s; B, C and D start waiting 10, 20 and 30 ms in, each in its
 * own process, and each releases once its own `tickAsync(2000)` returns (the
 * runs tick the one clock in parallel, so holds last 4-5 s). What it pins (the
 * pacing rules (pacing.ts) of waiting.ts's wait loop and the queue upkeep around them):
 * - places 0 and 1 poll the entry, place 2 only re-reads the queue, each
 *   every max(minDelayMs, held / 8) ms while nothing is known of past holds,
 *   at most MAX_WATCH_MS (500 ms) apart;
 * - once a hold length is known (the cycle), place 0 halves the distance to
 *   the expected end, place 1 polls every half cycle, place 2 and later wait
 *   for 3/4 of a cycle per place ahead of them;
 * - a queued waiter refreshes its place every 3 s (get:queue, casSet:queue);
 * - a release reads the queue and reserves the entry for its head
 *   (casSet:entry, casSet:queue), the head adopts it at its next poll, and
 *   the last one leaves the queue empty (casDelete:queue).
 * A change to any constant or condition of that schedule changes this
 * trace: update it only together with the rule that changed.
 */
test.serial('the request schedule of three waiters through four holds, request by request', async (t) => {
  const clock = fakeTime(t);
  const memcache = new MemcacheStandIn();
  const [a, b, c, d] = processes(t, memcache, 4) as [Proc, Proc, Proc, Proc];
  const held = await a.memlock.acquire('k', 'A', WAIT);
  const runs = [b, c, d].map(async (p, i) => {
    await clock.tickAsync(10 * (i + 1));
    const lock = await p.memlock.acquire('k', `W${i}`, WAIT);
    await clock.tickAsync(2000);
    await lock.release();
  });
  await clock.tickAsync(8000);
  await held.release();
  await clock.tickAsync(20_000);
  await Promise.all(runs);
  const trace = (p: Proc): string => p.log.map((s) => `${s.at}:${s.op}:${s.key}`).join(' ');
  t.is(
    trace(a),
    '0:addThenGet:entry 1000:casSet:entry 2000:casSet:entry 3000:casSet:entry 4000:casSet:entry ' +
      '5000:casSet:entry 6000:casSet:entry 7000:casSet:entry 8000:casSet:entry 8060:get:queue ' +
      '8060:casSet:entry 8060:casSet:queue',
  );
  t.is(
    trace(b),
    '10:addThenGet:entry 10:get:queue 10:add:queue 10:get:entry 15:get:entry 20:get:entry 25:get:entry ' +
      '30:get:entry 35:get:entry 40:get:entry 45:get:entry 50:get:entry 55:get:entry 60:get:entry ' +
      '66:get:entry 73:get:entry 80:get:entry 88:get:entry 97:get:entry 107:get:entry 119:get:entry ' +
      '132:get:entry 147:get:entry 164:get:entry 183:get:entry 204:get:entry 228:get:entry 255:get:entry ' +
      '285:get:entry 319:get:entry 357:get:entry 400:get:entry 448:get:entry 502:get:entry 563:get:entry ' +
      '632:get:entry 709:get:entry 796:get:entry 894:get:entry 1004:get:entry 1128:get:entry 1267:get:entry ' +
      '1424:get:entry 1600:get:entry 1798:get:entry 2021:get:entry 2272:get:entry 2554:get:entry ' +
      '2872:get:entry 3229:get:entry 3229:get:queue 3229:casSet:queue 3631:get:entry 4083:get:entry ' +
      '4583:get:entry 5083:get:entry 5583:get:entry 6083:get:entry 6583:get:entry 6583:get:queue ' +
      '6583:casSet:queue 7083:get:entry 7583:get:entry 8083:get:entry 8083:casSet:entry 9083:casSet:entry ' +
      '10083:casSet:entry 11083:casSet:entry 12083:casSet:entry 12198:get:queue 12198:casSet:entry ' +
      '12198:casSet:queue',
  );
  t.is(
    trace(c),
    '71:addThenGet:entry 71:get:queue 71:casSet:queue 76:get:entry 81:get:entry 86:get:entry 91:get:entry ' +
      '96:get:entry 101:get:entry 106:get:entry 111:get:entry 116:get:entry 121:get:entry 127:get:entry ' +
      '134:get:entry 141:get:entry 149:get:entry 158:get:entry 168:get:entry 180:get:entry 193:get:entry ' +
      '208:get:entry 225:get:entry 244:get:entry 265:get:entry 289:get:entry 316:get:entry 346:get:entry ' +
      '380:get:entry 418:get:entry 461:get:entry 509:get:entry 563:get:entry 624:get:entry 693:get:entry ' +
      '770:get:entry 857:get:entry 955:get:entry 1065:get:entry 1189:get:entry 1328:get:entry ' +
      '1485:get:entry 1661:get:entry 1859:get:entry 2082:get:entry 2333:get:entry 2615:get:entry ' +
      '2933:get:entry 3290:get:entry 3290:get:queue 3290:casSet:queue 3692:get:entry 4144:get:entry ' +
      '4644:get:entry 5144:get:entry 5644:get:entry 6144:get:entry 6644:get:entry 6644:get:queue ' +
      '6644:casSet:queue 7144:get:entry 7644:get:entry 8144:get:entry 8644:get:entry 9144:get:entry ' +
      '9644:get:entry 9644:get:queue 9644:casSet:queue 9906:get:entry 10126:get:entry 10373:get:entry ' +
      '10651:get:entry 10964:get:entry 11316:get:entry 11712:get:entry 12158:get:entry 12658:get:entry ' +
      '12658:casSet:entry 13658:casSet:entry 14658:casSet:entry 15658:casSet:entry 16658:casSet:entry ' +
      '17329:get:queue 17329:casSet:entry 17329:casDelete:queue',
  );
  t.is(
    trace(d),
    '85:addThenGet:entry 85:get:queue 85:casSet:queue 92:get:queue 99:get:queue 106:get:queue ' +
      '113:get:queue 120:get:queue 127:get:queue 134:get:queue 141:get:queue 148:get:queue 155:get:queue ' +
      '163:get:queue 172:get:queue 182:get:queue 194:get:queue 207:get:queue 222:get:queue 239:get:queue ' +
      '258:get:queue 279:get:queue 303:get:queue 330:get:queue 360:get:queue 394:get:queue 432:get:queue ' +
      '475:get:queue 523:get:queue 577:get:queue 638:get:queue 707:get:queue 784:get:queue 871:get:queue ' +
      '969:get:queue 1079:get:queue 1203:get:queue 1342:get:queue 1499:get:queue 1675:get:queue ' +
      '1873:get:queue 2096:get:queue 2347:get:queue 2629:get:queue 2947:get:queue 3304:get:queue ' +
      '3304:casSet:queue 3706:get:queue 4158:get:queue 4658:get:queue 5158:get:queue 5658:get:queue ' +
      '6158:get:queue 6658:get:queue 6658:casSet:queue 7158:get:queue 7658:get:queue 8158:get:queue ' +
      '8224:get:entry 8281:get:entry 8310:get:entry 8324:get:entry 8336:get:entry 8350:get:entry ' +
      '8365:get:entry 8382:get:entry 8401:get:entry 8423:get:entry 8447:get:entry 8474:get:entry ' +
      '8505:get:entry 8540:get:entry 8579:get:entry 8623:get:entry 8672:get:entry 8728:get:entry ' +
      '8791:get:entry 8861:get:entry 8940:get:entry 9029:get:entry 9129:get:entry 9242:get:entry ' +
      '9369:get:entry 9512:get:entry 9673:get:entry 9673:get:queue 9673:casSet:queue 9854:get:entry ' +
      '10057:get:entry 10286:get:entry 10543:get:entry 10832:get:entry 11158:get:entry 11524:get:entry ' +
      '11936:get:entry 12400:get:entry 12900:get:entry 12900:get:queue 12900:casSet:queue 13386:get:entry ' +
      '13629:get:entry 13751:get:entry 13857:get:entry 13976:get:entry 14110:get:entry 14261:get:entry ' +
      '14431:get:entry 14622:get:entry 14837:get:entry 15079:get:entry 15351:get:entry 15657:get:entry ' +
      '16001:get:entry 16001:get:queue 16001:casSet:queue 16388:get:entry 16824:get:entry 17314:get:entry ' +
      '17814:get:entry 17814:casSet:entry 18814:casSet:entry 19814:casSet:entry 20814:casSet:entry ' +
      '21814:casSet:entry 22814:casSet:entry 22814:get:queue 22814:casDelete:entry',
  );
  t.deepEqual(queueTokens(memcache), []);
});
