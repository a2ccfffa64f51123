/**
 * The public Memlock surface against the `memlock/testing` stand-in, on fake
 * timers where time matters: tryWithLock/acquire/wrap/inspect/close, caller
 * signals, waiting, holdAfterMs, failOpen, diagnostics. The same behaviour
 * against real memcached is in test/integration/lock.protocols.test.ts,
 * test/integration/api.protocols.test.ts, test/integration/deploy.test.ts and
 * the core suite.
 */
import test from 'ava';
import dc from 'node:diagnostics_channel';
import { getEventListeners } from 'node:events';
import {
  LockLostError,
  LockNotAcquiredError,
  Memlock,
  MemcacheUnavailableError,
  MemlockError,
  channels,
} from '../../src/index.js';
import { decodeValue, encodeValue } from '../../src/protocol.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime } from '../helpers/clock.js';

function setup(
  t: { teardown: (fn: () => Promise<void> | void) => void },
  options: Parameters<MemcacheStandIn['memlock']>[0] = {},
) {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock(options);
  t.teardown(() => memlock.close());
  return { memcache, memlock };
}

/** Records every memlock diagnostics message by channel name. */
function listen(t: { teardown: (fn: () => void) => void }): Record<string, Array<Record<string, unknown>>> {
  const seen: Record<string, Array<Record<string, unknown>>> = {};
  for (const channel of Object.values(channels)) {
    const name = channel.name as string;
    const fn = (message: unknown): void => {
      (seen[name] ??= []).push(message as Record<string, unknown>);
    };
    dc.subscribe(name, fn);
    t.teardown(() => dc.unsubscribe(name, fn));
  }
  return seen;
}

test('tryWithLock: fn runs with a live signal while the entry names it; resolves with its result; releases', async (t) => {
  const { memcache, memlock } = setup(t, { prefix: 'p:' });
  const result = await memlock.tryWithLock('job', 'A', async (signal) => {
    t.false(signal.aborted);
    t.is(memlock.heldCount, 1);
    t.is(decodeValue(memcache.peek('p:job')!.value)?.clientId, 'A');
    const info = await memlock.inspect('job');
    t.is(info?.clientId, 'A');
    t.true(info!.acquiredAt instanceof Date);
    t.true(Math.abs(info!.acquiredAt.getTime() - Date.now()) < 1000);
    return 42;
  });
  t.is(result, 42);
  t.is(memcache.peek('p:job'), null);
  t.is(memlock.heldCount, 0);
  t.is(await memlock.inspect('job'), null);
  t.deepEqual(memcache.ops, { add: 1, get: 2, set: 0, delete: 1 });
});

test('tryWithLock: fn throwing (sync or async) rejects with that error; released', async (t) => {
  const { memcache, memlock } = setup(t);
  const boom = new Error('boom');
  t.is(
    await t.throwsAsync(
      memlock.tryWithLock('k', 'A', async () => {
        throw boom;
      }),
    ),
    boom,
  );
  t.is(
    await t.throwsAsync(
      memlock.tryWithLock('k', 'A', () => {
        throw boom;
      }),
    ),
    boom,
  );
  t.deepEqual(memcache.keys(), []);
});

test('bad arguments are TypeErrors before any traffic', async (t) => {
  const { memcache, memlock } = setup(t);
  await t.throwsAsync(memlock.tryWithLock('k', 'A', null as never), {
    instanceOf: TypeError,
    message: 'Expected `fn` to be a function, got null',
  });
  await t.throwsAsync(memlock.tryWithLock('k', 'A', 5 as never), {
    instanceOf: TypeError,
    message: 'Expected `fn` to be a function, got number',
  });
  await t.throwsAsync(memlock.acquire('', 'A'), { instanceOf: TypeError });
  await t.throwsAsync(memlock.inspect(''), { instanceOf: TypeError, message: /`key`/ });
  await t.throwsAsync(memlock.inspect(5 as never), {
    instanceOf: TypeError,
    message: 'Expected `key` to be a string, got number',
  });
  await t.throwsAsync(
    memlock.tryWithLock('k', 'A', () => 1, { leaseMs: 5 }),
    { instanceOf: RangeError },
  );
  t.deepEqual(memcache.ops, { add: 0, get: 0, set: 0, delete: 0 });
});

test('refused: LockNotAcquiredError naming the holder; the next attempt on a contested key only reads', async (t) => {
  const { memcache, memlock } = setup(t);
  const other = memcache.memlock();
  t.teardown(() => other.close());
  const lock = await memlock.acquire('k', 'A');
  const error = await t.throwsAsync(other.acquire('k', 'B'), { instanceOf: LockNotAcquiredError });
  t.like(error, { holder: 'A', done: false, key: 'k' });
  const ops = { ...memcache.ops };
  await t.throwsAsync(other.acquire('k', 'B'), { instanceOf: LockNotAcquiredError });
  t.deepEqual(memcache.ops, { ...ops, get: ops.get + 1 }, 'a probe: one read, no add');
  await lock.release();
  const mine = await other.acquire('k', 'B');
  t.true(await mine.release());
});

test('a refusal says who holds the key (or completed it) in its message, and has a stack reaching the caller', async (t) => {
  const { memcache, memlock } = setup(t);
  const other = memcache.memlock();
  t.teardown(() => other.close());
  const lock = await memlock.acquire('k', 'host:1:abc');
  async function theCallersOwnFunction(): Promise<unknown> {
    return await other.tryWithLock('k', 'B', () => 1);
  }
  const held = await t.throwsAsync(theCallersOwnFunction(), { instanceOf: LockNotAcquiredError });
  t.is(held?.message, 'Lock "k" is held by "host:1:abc"');
  t.regex(
    held?.stack ?? '',
    /^LockNotAcquiredError: Lock "k" is held by "host:1:abc"\n\s+at /,
    'a stack, not just a line',
  );
  t.regex(held?.stack ?? '', /theCallersOwnFunction/, 'down to the caller (async stack trace)');
  await lock.release();
  await memlock.tryWithLock('k', 'host:2:def', () => 'done', { holdAfterMs: 5000 });
  const done = await t.throwsAsync(
    other.tryWithLock('k', 'B', () => 1),
    { instanceOf: LockNotAcquiredError },
  );
  t.like(done, { done: true, holder: 'host:2:def', message: 'Lock "k" was completed by "host:2:def" (holdAfterMs)' });
  const again = await memlock.acquire('w', 'host:3:ghi');
  t.teardown(() => again.release());
  const waited = await t.throwsAsync(
    other.tryWithLock('w', 'B', () => 1, { wait: { timeoutMs: 50 } }),
    {
      instanceOf: LockNotAcquiredError,
    },
  );
  t.is(waited?.message, 'Timed out after 50 ms waiting for lock "w" (last held by "host:3:ghi")');
  t.regex(waited?.stack ?? '', /\n\s+at /);
});

test('acquire: a handle for await using; release is idempotent and says whether it deleted our entry', async (t) => {
  const { memcache, memlock } = setup(t);
  {
    await using lock = await memlock.acquire('k', 'A');
    t.is(lock.key, 'k');
    t.is(lock.clientId, 'A');
    t.truthy(memcache.peek('memlock:k'));
  }
  t.is(memcache.peek('memlock:k'), null);
  const lock = await memlock.acquire('k', 'A');
  const first = lock.release();
  t.is(lock.release(), first);
  t.true(await first);
  const lost = await memlock.acquire('k', 'A');
  memcache.evict('memlock:k');
  t.false(await lost.release());
});

test.serial(
  'same clientId in the same instance: takeover aborts the earlier holder (taken) before the new acquisition resolves',
  async (t) => {
    const { memcache, memlock } = setup(t);
    const seen = listen(t);
    const first = await memlock.acquire('k', 'W');
    const second = await memlock.acquire('k', 'W');
    t.true(first.signal.aborted);
    t.is((first.signal.reason as LockLostError).kind, 'taken');
    t.false(second.signal.aborted);
    t.false(await first.release());
    t.truthy(memcache.peek('memlock:k'));
    t.true(await second.release());
    t.like(seen['memlock:stolen']?.[0], { key: 'k', clientId: 'W', how: 'takeover', previousClientId: 'W' });
    t.true(seen['memlock:stolen']?.[0]?.previousAcquiredAt instanceof Date);
    t.like(seen['memlock:acquired']?.[1], { key: 'k', how: 'takeover', server: 'stand-in:11211' });
  },
);

test.serial(
  'stealAfterMs: takes over a holder acquired longer ago; the stolen-from instance learns at its next renewal',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t, { heartbeatMs: 500 });
    const thief = memcache.memlock();
    t.teardown(() => thief.close());
    const seen = listen(t);
    const old = await memlock.acquire('k', 'A');
    await clock.tickAsync(1000);
    await t.throwsAsync(thief.acquire('k', 'B', { stealAfterMs: 1000 }), { instanceOf: LockNotAcquiredError });
    await clock.tickAsync(1);
    const stolen = await thief.acquire('k', 'B', { stealAfterMs: 1000 });
    t.like(seen['memlock:stolen']?.[0], { how: 'stolen', previousClientId: 'A', clientId: 'B' });
    t.false(old.signal.aborted);
    await clock.tickAsync(500);
    t.is((old.signal.reason as LockLostError).kind, 'taken');
    t.false(await old.release());
    t.true(await stolen.release());
  },
);

test('caller signal: already aborted rejects with its reason and writes nothing; aborting later aborts fn’s signal with the same reason', async (t) => {
  const { memcache, memlock } = setup(t);
  const controller = new AbortController();
  const reason = new Error('stop');
  controller.abort(reason);
  let called = false;
  t.is(
    await t.throwsAsync(
      memlock.tryWithLock(
        'k',
        'A',
        () => {
          called = true;
        },
        { signal: controller.signal },
      ),
    ),
    reason,
  );
  t.false(called);
  t.is(memcache.ops.add, 0);
  const later = new AbortController();
  const got = await memlock.tryWithLock(
    'k',
    'A',
    async (signal) => {
      later.abort(reason);
      return signal.reason;
    },
    { signal: later.signal },
  );
  t.is(got, reason);
  t.deepEqual(memcache.keys(), []);
});

test.serial(
  'fn rejecting after its lock was lost: tryWithLock rejects with the LockLostError, fn’s error kept as fnError',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t, { heartbeatMs: 50, leaseMs: 4000 });
    const own = new Error('driver aborted');
    void clock.tickAsync(1000);
    const error = await t.throwsAsync(
      memlock.tryWithLock('k', 'A', async (signal) => {
        memcache.evict('memlock:k');
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        throw own;
      }),
    );
    t.true(error instanceof LockLostError);
    t.is((error as LockLostError).kind, 'gone');
    t.is((error as LockLostError).fnError, own);
    void clock.tickAsync(1000);
    // fn rejecting with the signal's own reason: that very error.
    const same = await t.throwsAsync(
      memlock.tryWithLock('k', 'A', async (signal) => {
        memcache.evict('memlock:k');
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        throw signal.reason;
      }),
    );
    t.is((same as LockLostError).fnError, undefined);
  },
);

test.serial(
  'wait: acquires when the holder releases; times out with LockNotAcquiredError; the caller signal cancels',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t);
    const holder = memcache.memlock();
    t.teardown(() => holder.close());
    const held = await holder.acquire('k', 'A');
    setTimeout(() => void held.release(), 300);
    let acquiredAt = 0;
    const start = performance.now();
    const waiting = memlock.tryWithLock(
      'k',
      'B',
      () => {
        acquiredAt = performance.now() - start;
        return 'B ran';
      },
      { wait: { timeoutMs: 5000, minDelayMs: 5, maxDelayMs: 50 } },
    );
    await clock.tickAsync(1000);
    t.is(await waiting, 'B ran');
    t.true(acquiredAt >= 300 && acquiredAt <= 400, `acquired ${acquiredAt} ms after it began waiting`);

    const again = await holder.acquire('k', 'A');
    const timedOut = memlock
      .tryWithLock('k', 'B', () => 1, { wait: { timeoutMs: 300, minDelayMs: 5, maxDelayMs: 50 } })
      .catch((e: unknown) => e);
    await clock.tickAsync(299);
    let settled = false;
    void timedOut.then(() => {
      settled = true;
    });
    await clock.tickAsync(0);
    t.false(settled);
    await clock.tickAsync(400);
    const error = await timedOut;
    t.true(error instanceof LockNotAcquiredError);
    t.regex((error as Error).message, /300 ms/);

    const controller = new AbortController();
    const cancelled = memlock
      .tryWithLock('k', 'B', () => 1, { wait: true, signal: controller.signal })
      .catch((e: unknown) => e);
    await clock.tickAsync(100);
    const reason = new Error('cancelled');
    controller.abort(reason);
    await clock.tickAsync(10);
    t.is(await cancelled, reason);
    await again.release();
  },
);

test.serial(
  'holdAfterMs: the entry becomes a completed marker refusing everyone (done, holder) until it expires',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t);
    await memlock.tryWithLock('k', 'A', () => 1, { holdAfterMs: 2500 });
    const marker = memcache.peek('memlock:k')!;
    t.is(decodeValue(marker.value)?.state, 'done');
    // ceil(2.5) + 2: memcached's clock can jump 2 s, the marker must still last 2.5 s.
    t.is(marker.ttlSeconds, 5);
    const error = await t.throwsAsync(memlock.acquire('k', 'B'), { instanceOf: LockNotAcquiredError });
    t.like(error, { done: true, holder: 'A' });
    await t.throwsAsync(memlock.acquire('k', 'A', { stealAfterMs: 0 }), {
      instanceOf: LockNotAcquiredError,
      message: /completed/,
    });
    // A waiter may queue up first (the key is known contested), then sees the marker within a poll.
    const waited = t.throwsAsync(
      memlock.acquire('k', 'B', { wait: { timeoutMs: 10_000 } }),
      { instanceOf: LockNotAcquiredError, message: /completed/ },
      'waiting does not wait out a completed run',
    );
    await clock.tickAsync(100);
    await waited;
    memcache.advance(3000);
    await t.throwsAsync(memlock.acquire('k', 'B'), { instanceOf: LockNotAcquiredError }, 'blocked 3 s on');
    memcache.advance(2000);
    t.is(await memlock.tryWithLock('k', 'B', () => 'again'), 'again');
    // fn rejecting: deleted as usual, no marker.
    await t.throwsAsync(
      memlock.tryWithLock(
        'k',
        'A',
        () => {
          throw new Error('x');
        },
        { holdAfterMs: 2500 },
      ),
    );
    t.is(memcache.peek('memlock:k'), null);
    await clock.tickAsync(0);
  },
);

test.serial(
  'failOpen: memcache unreachable at acquire runs fn unlocked, published on memlock:fail-open; contention still refuses',
  async (t) => {
    const { memcache, memlock } = setup(t);
    const seen = listen(t);
    memcache.unreachable(true);
    await t.throwsAsync(
      memlock.tryWithLock('k', 'A', () => 1),
      { instanceOf: MemcacheUnavailableError },
    );
    const controller = new AbortController();
    const result = await memlock.tryWithLock(
      'k',
      'A',
      (signal) => {
        t.false(signal.aborted);
        controller.abort('caller');
        return signal.reason as unknown;
      },
      { failOpen: true, signal: controller.signal },
    );
    t.is(result, 'caller', 'the unlocked signal follows the caller’s');
    t.is(await memlock.tryWithLock('k', 'A', (signal) => signal.aborted, { failOpen: true }), false);
    t.like(seen['memlock:fail-open']?.[0], { key: 'k', clientId: 'A' });
    t.true(seen['memlock:fail-open']?.[0]?.error instanceof MemcacheUnavailableError);
    memcache.unreachable(false);
    const other = memcache.memlock();
    t.teardown(() => other.close());
    const held = await other.acquire('k', 'B');
    await t.throwsAsync(
      memlock.tryWithLock('k', 'A', () => 1, { failOpen: true }),
      { instanceOf: LockNotAcquiredError },
    );
    await held.release();
  },
);

test('wrap: key and clientId from the arguments, the signal last; onNotAcquired instead of rejecting', async (t) => {
  const { memcache, memlock } = setup(t);
  const handler = memlock.wrap(
    async (invoice: number, amount: number, signal: AbortSignal) => {
      t.true(signal instanceof AbortSignal);
      t.is((await memlock.inspect(`invoice:${invoice}`))?.clientId, `payer-${invoice}`);
      return invoice * amount;
    },
    { key: (invoice) => `invoice:${invoice}`, clientId: (invoice) => `payer-${invoice}` },
  );
  t.is(await handler(42, 2), 84);
  const fixed = memlock.wrap(async () => 'ran', { key: (id: string) => id, clientId: 'B' });
  const fallback = memlock.wrap(async () => 'ran', {
    key: (id: string) => id,
    clientId: 'B',
    onNotAcquired: (error, id) => `skipped ${id} (${error.holder})`,
  });
  const anonymous = memlock.wrap(async (_id: string, signal: AbortSignal) => signal.aborted, { key: (id) => id });
  const held = await memlock.acquire('busy', 'A');
  await t.throwsAsync(fixed('busy'), { instanceOf: LockNotAcquiredError });
  t.is(await fallback('busy'), 'skipped busy (A)');
  await held.release();
  t.is(await fixed('busy'), 'ran');
  t.false(await anonymous('x'));
  t.deepEqual(memcache.keys(), []);
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', clientId: 5 as never }), {
    instanceOf: TypeError,
    message: /`clientId`/,
  });
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', onNotAcquired: 'x' as never }), {
    instanceOf: TypeError,
    message: /`onNotAcquired`/,
  });
  t.throws(() => memlock.wrap(async () => 1, null as never), { instanceOf: TypeError, message: /`options`/ });
});

test('close(): held locks abort (closed) and are deleted; later calls reject with ERR_MEMLOCK_CLOSED; idempotent', async (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  const lock = await memlock.acquire('k', 'A');
  const closing = memlock.close();
  t.is(memlock.close(), closing);
  await closing;
  t.true(lock.signal.aborted);
  t.is((lock.signal.reason as LockLostError).kind, 'closed');
  t.is(memcache.peek('memlock:k'), null);
  const error = await t.throwsAsync(memlock.acquire('k', 'A'), { instanceOf: MemlockError });
  t.is(error?.code, 'ERR_MEMLOCK_CLOSED');
  await t.throwsAsync(memlock.inspect('k'), { message: /closed/ });
});

test.serial(
  'close() with an acquisition in flight: it rejects with ERR_MEMLOCK_CLOSED and the granted entry is deleted before close() resolves',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const memlock = memcache.memlock({ timeoutMs: 1000 });
    memcache.slow(100);
    const acquiring = memlock.acquire('k', 'A').catch((e: unknown) => e);
    await clock.tickAsync(10);
    let closed = false;
    const closing = memlock.close().then(() => {
      closed = true;
    });
    await clock.tickAsync(100);
    await clock.tickAsync(200);
    await closing;
    t.true(closed);
    const error = await acquiring;
    t.is((error as MemlockError).code, 'ERR_MEMLOCK_CLOSED');
    t.is(memcache.peek('memlock:k'), null);
  },
);

test.serial(
  'close() while an add is in flight and the server then fails: ERR_MEMLOCK_CLOSED with the transport error as its cause',
  async (t) => {
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const memlock = memcache.memlock({ timeoutMs: 1000 });
    memcache.slow(100);
    const acquiring = memlock.acquire('k', 'A').catch((e: unknown) => e);
    await clock.tickAsync(10);
    const closing = memlock.close();
    memcache.restart(); // the add in flight fails as "maybe applied"
    await clock.tickAsync(500);
    await closing;
    const error = (await acquiring) as { code?: string; cause?: unknown };
    t.is(error.code, 'ERR_MEMLOCK_CLOSED');
    t.true(error.cause instanceof Error && (error.cause as { code?: string }).code === 'ERR_MEMLOCK_UNAVAILABLE');
    const plain = (await memlock.acquire('k', 'A').catch((e: unknown) => e)) as { code?: string; cause?: unknown };
    t.is(plain.code, 'ERR_MEMLOCK_CLOSED');
    t.is(plain.cause, undefined, 'closed before the call: no cause');
  },
);

test.serial('diagnostics: acquired, refused, lost, released and release-failed carry what they name', async (t) => {
  const clock = fakeTime(t);
  const { memcache, memlock } = setup(t, { heartbeatMs: 50, leaseMs: 4000 });
  const seen = listen(t);
  await memlock.tryWithLock('a', 'A', () => 1);
  const held = await memlock.acquire('b', 'A');
  const other = memcache.memlock();
  t.teardown(() => other.close());
  await t.throwsAsync(other.acquire('b', 'B'));
  memcache.evict('memlock:b');
  await clock.tickAsync(50);
  t.true(held.signal.aborted);
  await held.release();
  const taken = await memlock.acquire('c', 'A');
  memcache.set('memlock:c', 'x', 10);
  await taken.release();
  const failing = await memlock.acquire('d', 'A');
  memcache.unreachable(true);
  await failing.release();
  memcache.unreachable(false);
  t.like(seen['memlock:acquired']?.[0], { key: 'a', clientId: 'A', how: 'added', server: 'stand-in:11211' });
  t.is(typeof seen['memlock:acquired']?.[0]?.durationMs, 'number');
  t.like(seen['memlock:released']?.[0], { key: 'a', clientId: 'A' });
  t.is(typeof seen['memlock:released']?.[0]?.heldMs, 'number');
  t.like(seen['memlock:refused']?.[0], { key: 'b', clientId: 'B', holder: 'A', server: 'stand-in:11211' });
  t.like(seen['memlock:lost']?.[0], { key: 'b', clientId: 'A', kind: 'gone' });
  t.true(seen['memlock:lost']?.[0]?.error instanceof LockLostError);
  t.deepEqual(
    seen['memlock:release-failed']?.map((m) => [m.key, m.reason]),
    [
      ['b', 'gone'],
      ['c', 'taken'],
      ['d', 'error'],
    ],
  );
  t.true(seen['memlock:release-failed']?.[2]?.error instanceof MemcacheUnavailableError);
});

/** A signal as the abort-controller polyfill makes it: an EventTarget with `aborted`, no `throwIfAborted`, maybe no `reason`. */
function polyfilledSignal(): { signal: AbortSignal; abort: (reason?: unknown) => void } {
  const target = new EventTarget() as EventTarget & { aborted: boolean; reason?: unknown };
  target.aborted = false;
  return {
    signal: target as unknown as AbortSignal,
    abort: (reason?: unknown) => {
      target.aborted = true;
      if (reason !== undefined) target.reason = reason;
      target.dispatchEvent(new Event('abort'));
    },
  };
}

test('wrap: the default clientId names host and pid, new per call; the signal option cancels the call; bad options are TypeErrors', async (t) => {
  const { memlock } = setup(t);
  const { hostname } = await import('node:os');
  const ids: string[] = [];
  const handler = memlock.wrap(
    async (key: string, _signal: AbortSignal) => {
      ids.push((await memlock.inspect(key))!.clientId);
    },
    { key: (key) => key },
  );
  await handler('a');
  await handler('a');
  const prefix = `${hostname()}:${process.pid}:`;
  t.true(
    ids.every((id) => id.startsWith(prefix) && /^[\da-f-]{36}$/.test(id.slice(prefix.length))),
    ids.join(' '),
  );
  t.not(ids[0], ids[1]);
  const controller = new AbortController();
  const reason = new Error('client went away');
  const cancellable = memlock.wrap(
    async (_req: { signal: AbortSignal }, signal: AbortSignal) => {
      controller.abort(reason);
      return signal.reason as unknown;
    },
    { key: () => 'c', signal: (req) => req.signal },
  );
  t.is(await cancellable({ signal: controller.signal }), reason, 'the caller’s abort reaches the handler’s signal');
  await t.throwsAsync(
    cancellable({ signal: controller.signal }),
    { is: reason },
    'already aborted: rejects with its reason',
  );
  const none = memlock.wrap(async (_x: number, signal: AbortSignal) => signal.aborted, {
    key: () => 'n',
    signal: () => undefined,
  });
  t.false(await none(1));
  const bad = memlock.wrap(async () => 1, { key: () => 'b', signal: () => 'nope' as never });
  await t.throwsAsync(bad(), {
    instanceOf: TypeError,
    message: 'Expected `signal` to return an AbortSignal or undefined',
  });
  const badKey = memlock.wrap(async () => 1, { key: () => '' });
  await t.throwsAsync(badKey(), { instanceOf: TypeError, message: /`key`/ });
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', signal: 5 as never }), {
    instanceOf: TypeError,
    message: 'Expected `signal` to be a function returning an AbortSignal, got number',
  });
  t.throws(() => memlock.wrap('x' as never, { key: () => 'k' }), {
    instanceOf: TypeError,
    message: 'Expected `fn` to be a function, got string',
  });
  t.throws(() => memlock.wrap(async () => 1, { key: 'k' as never }), {
    instanceOf: TypeError,
    message: 'Expected `key` to be a function, got string',
  });
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', onNotAcquired: 5 as never }), {
    instanceOf: TypeError,
    message: 'Expected `onNotAcquired` to be a function, got number',
  });
  t.throws(
    () => memlock.wrap(async () => 1, { key: () => 'k', leaseMs: 1 }),
    { instanceOf: RangeError, message: /`leaseMs`/ },
    'lock options are checked up front',
  );
});

test('wrap: onNotAcquired gets the error and the arguments; other errors still reject', async (t) => {
  const { memlock } = setup(t);
  const held = await memlock.acquire('busy', 'A');
  const seen: unknown[] = [];
  const handler = memlock.wrap(
    async (_a: number, _b: string, _signal: AbortSignal): Promise<string> => {
      throw new Error('inner');
    },
    {
      key: () => 'busy',
      onNotAcquired: (error, a, b) => {
        seen.push(error.holder, a, b);
        return 'skipped' as const;
      },
    },
  );
  t.is(await handler(1, 'x'), 'skipped');
  t.deepEqual(seen, ['A', 1, 'x']);
  await held.release();
  await t.throwsAsync(handler(1, 'x'), { message: 'inner' });
});

test('acquire(): holdAfterMs and failOpen are TypeErrors (no fn whose outcome they need), nothing sent', async (t) => {
  const { memcache, memlock } = setup(t);
  await t.throwsAsync(memlock.acquire('k', 'A', { holdAfterMs: 1000 }), {
    instanceOf: TypeError,
    message: /^Expected `holdAfterMs` only with tryWithLock or wrap/,
  });
  await t.throwsAsync(memlock.acquire('k', 'A', { failOpen: true }), {
    instanceOf: TypeError,
    message: /^Expected `failOpen` only with tryWithLock or wrap/,
  });
  t.deepEqual(memcache.ops, { add: 0, get: 0, set: 0, delete: 0 });
  const lock = await memlock.acquire('k', 'A', { holdAfterMs: 0, failOpen: false });
  t.true(await lock.release());
});

test('inspect(): null for a free key and for a reservation; the holder otherwise', async (t) => {
  const { memcache, memlock } = setup(t);
  t.is(await memlock.inspect('k'), null);
  memcache.set('memlock:k', encodeValue('someone', 1234, 'tok', 'reserved'), 10);
  t.is(await memlock.inspect('k'), null);
  memcache.set('memlock:k', encodeValue('B', 1234, 'tok'), 10);
  t.deepEqual(await memlock.inspect('k'), { clientId: 'B', acquiredAt: new Date(1234) });
});

test('a caller signal without throwIfAborted (polyfill): aborting while fn runs aborts fn’s signal; without a reason, an AbortError', async (t) => {
  const { memlock } = setup(t);
  const poly = polyfilledSignal();
  const reason = await memlock.tryWithLock(
    'k',
    'A',
    async (signal) => {
      poly.abort();
      return signal.reason as unknown;
    },
    { signal: poly.signal },
  );
  t.true(reason instanceof DOMException);
  t.is((reason as DOMException).name, 'AbortError');
  const aborted = polyfilledSignal();
  aborted.abort('why');
  t.is(await memlock.tryWithLock('k', 'A', () => 1, { signal: aborted.signal }).catch((e: unknown) => e), 'why');
  const waiting = polyfilledSignal();
  const other = await memlock.acquire('w', 'B');
  const pending = memlock.tryWithLock('w', 'A', () => 1, { signal: waiting.signal, wait: true });
  setTimeout(() => waiting.abort('stop waiting'), 20);
  t.is(await pending.catch((e: unknown) => e), 'stop waiting');
  await other.release();
});

test.serial(
  'an acquisition whose caller aborts while the add is in flight deletes the entry it got and rejects with the reason',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t, { timeoutMs: 1000 });
    memcache.slow(100);
    const controller = new AbortController();
    const acquiring = memlock.acquire('k', 'A', { signal: controller.signal }).catch((e: unknown) => e);
    await clock.tickAsync(50);
    controller.abort('changed my mind');
    await clock.tickAsync(60);
    await clock.tickAsync(200);
    t.is(await acquiring, 'changed my mind');
    t.is(memcache.peek('memlock:k'), null);
    t.is(memlock.heldCount, 0);
  },
);

test.serial('the top-level tryWithLock uses one shared instance on MEMCACHE_SERVERS', async (t) => {
  const saved = process.env.MEMCACHE_SERVERS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  });
  process.env.MEMCACHE_SERVERS = '127.0.0.1:1';
  const { defaultMemlock, tryWithLock } = await import('../../src/memlock.js');
  t.teardown(() => defaultMemlock().close());
  t.is(defaultMemlock(), defaultMemlock());
  const error = await t.throwsAsync(
    tryWithLock('k', 'A', () => 1),
    { instanceOf: MemcacheUnavailableError },
  );
  t.is(error?.server, '127.0.0.1:1');
  await defaultMemlock().close();
  const closed = await t.throwsAsync(tryWithLock('k', 'A', () => 1));
  t.is((closed as MemlockError).code, 'ERR_MEMLOCK_CLOSED', 'the same instance: closed for the top-level call too');
});

test.serial(
  'stealAfterMs within one instance: the earlier holder learns at once (taken); acquired’s durationMs is the attempt’s (0 on a still fake clock 1,001,001 ms in); stolen only for steals',
  async (t) => {
    const clock = fakeTime(t);
    const { memlock } = setup(t, { heartbeatMs: 500 });
    const seen = listen(t);
    const old = await memlock.acquire('k', 'A');
    t.is(seen['memlock:stolen'], undefined, 'a plain acquisition is no steal');
    t.like(seen['memlock:acquired']?.[0], { how: 'added', durationMs: 0 });
    await clock.tickAsync(1001);
    const stolen = await memlock.acquire('k', 'B', { stealAfterMs: 1000 });
    // Before any renewal of A: this instance wrote the steal itself.
    t.true(old.signal.aborted);
    t.is((old.signal.reason as LockLostError).kind, 'taken');
    t.like(seen['memlock:stolen']?.[0], { how: 'stolen', previousClientId: 'A', clientId: 'B' });
    // Fake time stood still during the attempt: 1001 ms into the test, a duration of 0.
    t.like(seen['memlock:acquired']?.[1], { how: 'stolen', durationMs: 0 });
    t.true(await stolen.release());
  },
);

test.serial(
  'a caller signal keeps no listener once calls end: waiting, refused, fail-open and held calls',
  async (t) => {
    const clock = fakeTime(t);
    const { memcache, memlock } = setup(t);
    const caller = new AbortController().signal;
    const listeners = (): number => getEventListeners(caller, 'abort').length;
    const holder = await memlock.acquire('k', 'H');
    const waiting = memlock.tryWithLock(
      'k',
      'W',
      () => {
        t.true(listeners() > 0, 'fn’s signal follows the caller while it runs');
        return 'ran';
      },
      { wait: { timeoutMs: 5000 }, signal: caller },
    );
    await clock.tickAsync(100);
    await holder.release();
    await clock.tickAsync(1000);
    t.is(await waiting, 'ran');
    t.is(listeners(), 0, 'after a waiting call');
    const other = await memlock.acquire('k', 'H');
    const refused = t.throwsAsync(
      memlock.tryWithLock('k', 'W', () => 'never', { wait: { timeoutMs: 300 }, signal: caller }),
      { instanceOf: LockNotAcquiredError },
    );
    await clock.tickAsync(1000);
    await refused;
    t.is(listeners(), 0, 'after a wait that timed out');
    await other.release();
    memcache.unreachable(true);
    t.is(await memlock.tryWithLock('k', 'W', () => 'unlocked', { failOpen: true, signal: caller }), 'unlocked');
    t.is(listeners(), 0, 'after a fail-open call');
    memcache.unreachable(false);
    t.is(await memlock.tryWithLock('k', 'W', () => 'held', { signal: caller }), 'held');
    t.is(listeners(), 0, 'after a held call');
  },
);

test('close() leaves a caller’s lockClient open (only the connections memlock opened are closed); its closed error has no cause', async (t) => {
  const memcache = new MemcacheStandIn();
  const client = memcache.client();
  const memlock = new Memlock({ lockClient: client });
  await memlock.close();
  const error = await t.throwsAsync(memlock.acquire('k', 'A'), { code: 'ERR_MEMLOCK_CLOSED' });
  t.false(error !== undefined && 'cause' in error, 'nothing failed, so no cause');
  // The client still serves its owner.
  t.is((await client.add('memlock:k', Buffer.from('v'), 10)).status, 'ok');
  await client.close();
});

test('wrap(fn, options) with options that are not an object: a TypeError naming options', (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  t.teardown(() => memlock.close());
  for (const options of [null, 'key', 42]) {
    // @ts-expect-error -- bad input on purpose
    t.throws(() => memlock.wrap(() => 1, options), {
      instanceOf: TypeError,
      message: 'Expected `options` to be an object with a `key` function',
    });
  }
});
