/**
 * memlock's core semantics (acquire, refuse, takeover, steal, renew, release,
 * loss) as one suite, run against a real memcached (test/integration/core-memcached.protocols.test.ts)
 * and against the `memlock/testing` stand-in (test/unit/core-standin.test.ts):
 * the same assertions on both, so the stand-in cannot drift from the server.
 * Real time on both; bounds follow the configured lease and heartbeat.
 */
import type { TestFn } from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Memlock,
  EmptyClientIdError,
  LockLostError,
  LockNotAcquiredError,
  MemcacheUnavailableError,
  type MemlockOptions,
} from '../../src/index.js';
import { waitFor } from './resources.js';

/** One memcache server (real or stand-in) and the faults the suite needs. */
export interface CoreBackend {
  /** A Memlock on this server (closed by `close()`). */
  memlock(options?: Omit<MemlockOptions, 'servers' | 'client' | 'lockClient'>): Memlock;
  /** The raw entry under a memcache key, with its CAS and remaining TTL (whole seconds, as the server counts them). */
  peek(memcacheKey: string): Promise<{ value: Buffer; cas: bigint; ttlSeconds: number } | null>;
  /** Deletes an entry behind memlock's back (eviction). */
  evict(memcacheKey: string): Promise<boolean>;
  /** Overwrites an entry behind memlock's back (another party's write). */
  overwrite(memcacheKey: string, value: string): Promise<void>;
  /** Makes the server unreachable from now on (killed / connection refused). */
  down(): Promise<void>;
  /** Closes every Memlock and the server. */
  close(): Promise<void>;
}

/** Registers the core suite on `test`; `open` makes a fresh server per test. */
export function coreSemantics(test: TestFn, open: () => Promise<CoreBackend>): void {
  const setup = async (t: { teardown: (fn: () => Promise<void>) => void }): Promise<CoreBackend> => {
    const backend = await open();
    t.teardown(() => backend.close());
    return backend;
  };

  test('acquire: fn runs while prefix + key holds our clientId, written with expiry = lease rounded up + 1 s; released after', async (t) => {
    const b = await setup(t);
    const m = b.memlock({ prefix: 'core:', leaseMs: 2500, heartbeatMs: 1000 });
    const result = await m.tryWithLock('job', 'client-1', async (signal) => {
      t.false(signal.aborted);
      const entry = await b.peek('core:job');
      t.truthy(entry, 'the entry exists under prefix + key');
      t.regex(entry!.value.toString(), /:client-1$/);
      // ceil(2500 / 1000) + 1 = 4 s (memcached's clock can jump 2 s at once);
      // the server's clock may have ticked once since the add.
      t.true(entry!.ttlSeconds === 4 || entry!.ttlSeconds === 3, `ttl ${entry!.ttlSeconds} s`);
      t.deepEqual(await m.inspect('job').then((info) => info?.clientId), 'client-1');
      return 42;
    });
    t.is(result, 42);
    t.is(await b.peek('core:job'), null, 'deleted on release');
    t.is(m.heldCount, 0);
  });

  test('refuse: another client gets LockNotAcquiredError naming the holder; fn is not called; the entry is untouched', async (t) => {
    const b = await setup(t);
    const a = b.memlock({ prefix: 'core:' });
    const other = b.memlock({ prefix: 'core:' });
    const lock = await a.acquire('k', 'A');
    const before = await b.peek('core:k');
    let called = false;
    const error = await t.throwsAsync(
      other.tryWithLock('k', 'B', () => {
        called = true;
      }),
      { instanceOf: LockNotAcquiredError },
    );
    t.is(error?.holder, 'A');
    t.is(error?.code, 'ERR_MEMLOCK_NOT_ACQUIRED');
    // Refused again: the second attempt reads first (a contested key).
    await t.throwsAsync(
      other.tryWithLock('k', 'B', () => {
        called = true;
      }),
      { instanceOf: LockNotAcquiredError },
    );
    t.false(called);
    const after = await b.peek('core:k');
    t.is(after?.cas, before?.cas, 'a refusal writes nothing');
    t.true(await lock.release());
    t.is(await other.tryWithLock('k', 'B', () => 'B ran'), 'B ran');
  });

  test('empty clientId: EmptyClientIdError before any traffic; nothing written', async (t) => {
    const b = await setup(t);
    const m = b.memlock({ prefix: 'core:' });
    let called = false;
    await t.throwsAsync(
      m.tryWithLock('k', '', () => {
        called = true;
      }),
      { instanceOf: EmptyClientIdError },
    );
    t.false(called);
    t.is(await b.peek('core:k'), null);
  });

  test('takeover: the same clientId in another process takes the key over by CAS; the earlier hold aborts (taken) and its release leaves the new entry', async (t) => {
    const b = await setup(t);
    const heartbeatMs = 100;
    const first = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs });
    const second = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs });
    const old = await first.acquire('k', 'W');
    const oldValue = (await b.peek('core:k'))!.value;
    const now = await second.acquire('k', 'W');
    const entry = await b.peek('core:k');
    t.false(entry!.value.equals(oldValue), 'a takeover writes a new value');
    t.regex(entry!.value.toString(), /:W$/);
    await waitFor(() => old.signal.aborted, heartbeatMs * 10, 5, 'earlier hold aborted');
    t.is((old.signal.reason as LockLostError).kind, 'taken');
    t.false(await old.release());
    t.true((await b.peek('core:k'))!.value.equals(entry!.value), 'the earlier release deleted nothing');
    t.false(now.signal.aborted);
    t.true(await now.release());
    t.is(await b.peek('core:k'), null);
  });

  test('steal: stealAfterMs takes over a holder first acquired longer ago, never a younger one', async (t) => {
    const b = await setup(t);
    const a = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs: 100 });
    const thief = b.memlock({ prefix: 'core:' });
    const old = await a.acquire('k', 'A');
    await t.throwsAsync(thief.acquire('k', 'B', { stealAfterMs: 60_000 }), { instanceOf: LockNotAcquiredError });
    t.regex((await b.peek('core:k'))!.value.toString(), /:A$/);
    await sleep(150);
    const stolen = await thief.acquire('k', 'B', { stealAfterMs: 100 });
    t.regex((await b.peek('core:k'))!.value.toString(), /:B$/);
    await waitFor(() => old.signal.aborted, 1000, 5, 'old holder aborted');
    t.is((old.signal.reason as LockLostError).kind, 'taken');
    t.false(await old.release());
    t.regex((await b.peek('core:k'))!.value.toString(), /:B$/);
    t.true(await stolen.release());
  });

  test('renew: heartbeats keep a 2 s lease (1 s guaranteed) alive for 2.5 s, each renewal a new CAS', async (t) => {
    const b = await setup(t);
    const m = b.memlock({ prefix: 'core:', leaseMs: 2000, heartbeatMs: 250 });
    const lock = await m.acquire('k', 'A');
    const cas = new Set<bigint>();
    const until = performance.now() + 2500;
    while (performance.now() < until) {
      const entry = await b.peek('core:k');
      t.truthy(entry, 'the entry never expires while held');
      if (entry !== null) cas.add(entry.cas);
      await sleep(100);
    }
    t.false(lock.signal.aborted, 'no loss while renewals succeed');
    // Renewing at least every 450 ms (half the guaranteed second) for 2.5 s: 5 renewals, 6 values.
    t.true(cas.size >= 4, `${cas.size} distinct CAS values`);
    t.true(await lock.release());
  });

  test('release: CAS-checked delete; never removes an entry someone else wrote after us', async (t) => {
    const b = await setup(t);
    const m = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs: 1000 });
    const lock = await m.acquire('k', 'A');
    await b.overwrite('core:k', 'someone else');
    t.false(await lock.release(), 'release reports that nothing of ours was deleted');
    t.is((await b.peek('core:k'))?.value.toString(), 'someone else');
    const mine = await m.acquire('other', 'A');
    t.true(await mine.release());
    t.is(await b.peek('core:other'), null);
  });

  test('loss (gone): an evicted entry aborts the signal with kind gone within a couple of heartbeats', async (t) => {
    const b = await setup(t);
    const heartbeatMs = 100;
    const m = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs });
    const lock = await m.acquire('k', 'A');
    t.true(await b.evict('core:k'));
    const start = performance.now();
    await waitFor(() => lock.signal.aborted, heartbeatMs * 10, 5, 'signal aborted');
    t.true(performance.now() - start < heartbeatMs * 10);
    t.true(lock.signal.reason instanceof LockLostError);
    t.is((lock.signal.reason as LockLostError).kind, 'gone');
    t.false(await lock.release());
  });

  test('loss (taken): an overwritten entry aborts the signal with kind taken; the foreign entry stays', async (t) => {
    const b = await setup(t);
    const heartbeatMs = 100;
    const m = b.memlock({ prefix: 'core:', leaseMs: 4000, heartbeatMs });
    const reason = await m
      .tryWithLock('k', 'A', async (signal) => {
        await b.overwrite('core:k', 'foreign');
        await waitFor(() => signal.aborted, heartbeatMs * 10, 5, 'signal aborted');
        return signal.reason as LockLostError;
      })
      .catch((error: unknown) => error as LockLostError);
    t.true(reason instanceof LockLostError);
    t.is(reason.kind, 'taken');
    t.is((await b.peek('core:k'))?.value.toString(), 'foreign');
  });

  test('loss (unreachable): the server going away aborts the signal before the lease could have run out', async (t) => {
    const b = await setup(t);
    const leaseMs = 2000;
    const m = b.memlock({ prefix: 'core:', leaseMs, heartbeatMs: 200, timeoutMs: 200 });
    // The lease counts from when the add was sent: after `sentBefore`, before `acquiredAt`.
    const sentBefore = performance.now();
    const lock = await m.acquire('k', 'A');
    const acquiredAt = performance.now();
    await b.down();
    await waitFor(() => lock.signal.aborted, leaseMs, 5, 'signal aborted');
    const abortedAt = performance.now();
    const after = abortedAt - acquiredAt;
    const reason = lock.signal.reason as LockLostError;
    t.is(reason.kind, 'unreachable');
    t.true(reason.cause instanceof MemcacheUnavailableError);
    // The add was confirmed at acquire; the server may drop a 2 s entry 1 s later.
    t.true(after <= (Math.ceil(leaseMs / 1000) - 1) * 1000, `aborted ${after.toFixed(0)} ms after the acquire`);
    // Not much before it either: the signal waits for the lease deadline, 1 s
    // after the add was sent less a 100 ms margin. Counted from before the
    // acquire call (a slow acquire once put the abort 841 ms after it returned).
    t.true(abortedAt - sentBefore >= 890, `aborted ${(abortedAt - sentBefore).toFixed(0)} ms after the add was sent`);
    t.false(await lock.release());
  });

  test('acquire while unreachable: MemcacheUnavailableError with a cause, fn not called', async (t) => {
    const b = await setup(t);
    const m = b.memlock({ prefix: 'core:', timeoutMs: 200 });
    await b.down();
    let called = false;
    const error = await t.throwsAsync(
      m.tryWithLock('k', 'A', () => {
        called = true;
      }),
      { instanceOf: MemcacheUnavailableError },
    );
    t.truthy(error?.cause);
    t.false(called);
  });
}
