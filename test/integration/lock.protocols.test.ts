import test from 'ava';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Memlock,
  LockNotAcquiredError,
  LockLostError,
  MemcacheUnavailableError,
  EmptyClientIdError,
  MemlockError,
} from '../../src/index.js';
import { startMemcached, freePort } from '../helpers/memcached.js';
import { testProtocol } from '../helpers/protocol.js';
import { sharedServer } from '../helpers/shared.js';
import { waitFor } from '../helpers/resources.js';

const shared = sharedServer(test);
const memlock = shared.memlock.bind(shared);

test('runs fn under the lock, returns its result and releases', async (t) => {
  const a = memlock();
  let seen: AbortSignal | undefined;
  const result = await a.tryWithLock('job', 'A', async (signal) => {
    seen = signal;
    t.true(signal instanceof AbortSignal);
    t.false(signal.aborted);
    const info = await a.inspect('job');
    t.is(info?.clientId, 'A');
    t.true(info!.acquiredAt instanceof Date);
    t.true(Math.abs(info!.acquiredAt.getTime() - Date.now()) < 5000);
    return 42;
  });
  t.is(result, 42);
  t.false(seen!.aborted);
  t.is(await a.inspect('job'), null);
  t.is(a.heldCount, 0);
});

test('writes the entry with add under prefix + key, expiry = lease rounded up + 1 s', async (t) => {
  const prefix = `p${randomUUID().slice(0, 6)}:`;
  const a = memlock({ leaseMs: 2500, heartbeatMs: 1000 }, prefix);
  await a.tryWithLock('k', 'client-1', async () => {
    const raw = await shared.mc.rawGet(prefix + 'k');
    t.truthy(raw);
    t.regex(raw!.value.toString(), /client-1$/);
    // ceil(2500 / 1000) + 1 = 4 s as the server counts it (its clock may have ticked once since):
    // memcached's clock can jump 2 s at once, the extra second keeps the 2 s the lease promises.
    const ttl = await shared.mc.rawTtl(prefix + 'k');
    t.true(ttl === 4 || ttl === 3, `expiry ${ttl} s`);
  });
  t.is(await shared.mc.rawGet(prefix + 'k'), null);
  // An add: an entry that is already there (whoever wrote it) is never overwritten.
  await shared.mc.rawSet(prefix + 'k', 'not memlock', 30);
  await t.throwsAsync(
    a.tryWithLock('k', 'client-1', () => 1),
    { instanceOf: LockNotAcquiredError },
  );
  t.is((await shared.mc.rawGet(prefix + 'k'))?.value.toString(), 'not memlock');
});

test('a second client is refused while the first holds the key; fn is not called', async (t) => {
  const a = memlock();
  const b = new Memlock({
    protocol: testProtocol,
    servers: shared.mc.address,
    prefix: (a as unknown as { x: string }).x ?? 'shared1:',
  });
  shared.track(b);
  const a2 = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'shared1:' });
  shared.track(a2);
  let called = false;
  await a2.tryWithLock('contended', 'A', async () => {
    const error = await t.throwsAsync(
      b.tryWithLock('contended', 'B', () => {
        called = true;
      }),
      { instanceOf: LockNotAcquiredError },
    );
    t.is(error?.code, 'ERR_MEMLOCK_NOT_ACQUIRED');
    t.is((error as LockNotAcquiredError).holder, 'A');
    t.true(error instanceof MemlockError);
    // Refused again: the second attempt pipelines the read (contested key).
    await t.throwsAsync(
      b.tryWithLock('contended', 'B', () => {
        called = true;
      }),
      { instanceOf: LockNotAcquiredError },
    );
  });
  t.false(called);
  t.is(await b.tryWithLock('contended', 'B', () => 'now mine'), 'now mine');
});

test('empty clientId rejects with EmptyClientIdError before any traffic', async (t) => {
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const prefix = 'e:';
  const a = new Memlock({ protocol: testProtocol, servers: own.address, prefix });
  shared.track(a);
  const before = Number((await own.stats()).cmd_set) + Number((await own.stats()).cmd_get);
  let called = false;
  const error = await t.throwsAsync(
    a.tryWithLock('k', '', () => {
      called = true;
    }),
    { instanceOf: EmptyClientIdError },
  );
  t.is(error?.code, 'ERR_MEMLOCK_EMPTY_CLIENT_ID');
  t.false(called);
  const after = await own.stats();
  t.is(Number(after.cmd_set) + Number(after.cmd_get), before);
  t.is(await own.rawGet(prefix + 'k'), null);
});

test('the same clientId takes the lock over (re-entry); the earlier hold learns it was taken', async (t) => {
  const a = memlock({ leaseMs: 4000, heartbeatMs: 200 });
  const first = await a.acquire('reentry', 'worker-1');
  const second = await a.acquire('reentry', 'worker-1');
  t.is((await a.inspect('reentry'))?.clientId, 'worker-1');
  await waitFor(() => first.signal.aborted, 3000, 10, 'first hold aborted');
  t.true(first.signal.reason instanceof LockLostError);
  t.is((first.signal.reason as LockLostError).kind, 'taken');
  t.false(second.signal.aborted);
  // The earlier holder's release must not delete the new acquisition.
  t.false(await first.release());
  t.is((await a.inspect('reentry'))?.clientId, 'worker-1');
  t.true(await second.release());
  t.is(await a.inspect('reentry'), null);
});

test('fn throwing: tryWithLock rejects with that error and the lock is released', async (t) => {
  const a = memlock();
  const boom = new Error('boom');
  const error = await t.throwsAsync(
    a.tryWithLock('throws', 'A', async () => {
      throw boom;
    }),
  );
  t.is(error, boom);
  t.is(await a.inspect('throws'), null);
  // A synchronous throw too.
  const sync = await t.throwsAsync(
    a.tryWithLock('throws', 'A', () => {
      throw boom;
    }),
  );
  t.is(sync, boom);
  t.is(await a.inspect('throws'), null);
});

test('entry deleted behind our back (eviction/flush): signal aborts with kind gone', async (t) => {
  const prefix = `d${randomUUID().slice(0, 6)}:`;
  const a = memlock({ leaseMs: 4000, heartbeatMs: 200 }, prefix);
  const start = performance.now();
  const reason = await a.tryWithLock('evicted', 'A', async (signal) => {
    t.true(await shared.mc.rawDelete(prefix + 'evicted'));
    await waitFor(() => signal.aborted, 4000, 10, 'signal aborted');
    return signal.reason as LockLostError;
  });
  t.true(reason instanceof LockLostError);
  t.is(reason.code, 'ERR_MEMLOCK_LOST');
  t.is(reason.kind, 'gone');
  // Detected by the next heartbeat: well within a couple of heartbeats.
  t.true(performance.now() - start < 200 * 5 + 1000);
});

test('entry overwritten by another party: signal aborts with kind taken; our release leaves theirs', async (t) => {
  const prefix = `o${randomUUID().slice(0, 6)}:`;
  const a = memlock({ leaseMs: 4000, heartbeatMs: 200 }, prefix);
  await a.tryWithLock('over', 'A', async (signal) => {
    await shared.mc.rawSet(prefix + 'over', 'someone else', 30);
    await waitFor(() => signal.aborted, 4000, 10, 'signal aborted');
    t.is((signal.reason as LockLostError).kind, 'taken');
  });
  t.is((await shared.mc.rawGet(prefix + 'over'))?.value.toString(), 'someone else');
});

test('flush_all while held is detected as gone', async (t) => {
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const a = new Memlock({ protocol: testProtocol, servers: own.address, leaseMs: 4000, heartbeatMs: 200 });
  shared.track(a);
  const lock = await a.acquire('flushed', 'A');
  await own.flush();
  await waitFor(() => lock.signal.aborted, 4000, 10, 'signal aborted');
  t.is((lock.signal.reason as LockLostError).kind, 'gone');
  t.false(await lock.release());
});

test('caller signal already aborted: rejects with its reason, nothing written', async (t) => {
  const prefix = `s${randomUUID().slice(0, 6)}:`;
  const a = memlock({}, prefix);
  const controller = new AbortController();
  const reason = new Error('caller gave up');
  controller.abort(reason);
  let called = false;
  const error = await t.throwsAsync(
    a.tryWithLock(
      'sig',
      'A',
      () => {
        called = true;
      },
      { signal: controller.signal },
    ),
  );
  t.is(error, reason);
  t.false(called);
  t.is(await shared.mc.rawGet(prefix + 'sig'), null);
});

test('caller signal aborting during fn aborts the fn signal with the same reason', async (t) => {
  const a = memlock();
  const controller = new AbortController();
  const reason = new Error('stop now');
  const got = await a.tryWithLock(
    'sig2',
    'A',
    async (signal) => {
      setTimeout(() => controller.abort(reason), 20);
      await waitFor(() => signal.aborted, 2000);
      return signal.reason;
    },
    { signal: controller.signal },
  );
  t.is(got, reason);
  t.is(await a.inspect('sig2'), null);
});

test('wait: acquires once the holder releases', async (t) => {
  const a = memlock();
  const b = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitshared:' });
  const a2 = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitshared:' });
  shared.track(a, b, a2);
  const held = await a2.acquire('w', 'A');
  const released = sleep(300).then(() => held.release());
  const start = performance.now();
  const result = await b.tryWithLock('w', 'B', () => 'B ran', {
    wait: { timeoutMs: 5000, minDelayMs: 5, maxDelayMs: 50 },
  });
  t.is(result, 'B ran');
  t.true(performance.now() - start >= 250);
  t.true(await released);
});

test('wait: times out with LockNotAcquiredError', async (t) => {
  const a = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitto:' });
  const b = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitto:' });
  shared.track(a, b);
  const held = await a.acquire('w', 'A');
  const start = performance.now();
  let called = false;
  await t.throwsAsync(
    b.tryWithLock(
      'w',
      'B',
      () => {
        called = true;
      },
      { wait: { timeoutMs: 300, minDelayMs: 5, maxDelayMs: 50 } },
    ),
    { instanceOf: LockNotAcquiredError },
  );
  const elapsed = performance.now() - start;
  t.true(elapsed >= 280 && elapsed < 3000, `elapsed ${elapsed}`);
  t.false(called);
  await held.release();
});

test('wait: the caller signal cancels waiting with its reason', async (t) => {
  const a = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitsig:' });
  const b = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'waitsig:' });
  shared.track(a, b);
  const held = await a.acquire('w', 'A');
  const controller = new AbortController();
  const reason = new Error('cancelled');
  setTimeout(() => controller.abort(reason), 100);
  const error = await t.throwsAsync(
    b.tryWithLock('w', 'B', () => 1, { wait: { timeoutMs: 10_000 }, signal: controller.signal }),
  );
  t.is(error, reason);
  await held.release();
  t.is(b.heldCount, 0);
});

test('wait: same-process waiters queue locally and run one at a time, in arrival order, without polling memcache', async (t) => {
  // Its own server: the test counts the server's commands.
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const a = new Memlock({ protocol: testProtocol, servers: own.address });
  shared.track(a);
  let inside = 0;
  let maxInside = 0;
  const order: number[] = [];
  const before = await own.stats();
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      a.tryWithLock(
        'queue',
        `w${i}`,
        async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await sleep(5);
          order.push(i);
          inside--;
        },
        { wait: { timeoutMs: 10_000 } },
      ),
    ),
  );
  const after = await own.stats();
  t.is(maxInside, 1);
  t.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7], 'first come, first served');
  // One add or local handoff per waiter (memcached counts both under
  // cmd_set): nobody was refused and polled. The text protocol releases with
  // a cas write (an expiry in the past), which counts too.
  t.is(Number(after.cmd_set) - Number(before.cmd_set), testProtocol === 'text' ? 9 : 8);
});

test('stealAfterMs takes over a holder older than the threshold, not a younger one', async (t) => {
  const a = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'steal:' });
  const b = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'steal:' });
  shared.track(a, b);
  const old = await a.acquire('s', 'A', { leaseMs: 10_000, heartbeatMs: 200 });
  await t.throwsAsync(b.acquire('s', 'B', { stealAfterMs: 5000 }), { instanceOf: LockNotAcquiredError });
  await sleep(250);
  const stolen = await b.acquire('s', 'B', { stealAfterMs: 100 });
  t.is((await b.inspect('s'))?.clientId, 'B');
  await waitFor(() => old.signal.aborted, 3000);
  t.is((old.signal.reason as LockLostError).kind, 'taken');
  t.false(await old.release());
  t.is((await b.inspect('s'))?.clientId, 'B');
  t.true(await stolen.release());
});

test('long, unicode and whitespace keys are hashed or kept as API.md says', async (t) => {
  const prefix = `k${randomUUID().slice(0, 6)}:`;
  const a = memlock({}, prefix);
  const { createHash } = await import('node:crypto');
  const sha = (k: string) => prefix + 'sha256:' + createHash('sha256').update(k).digest('hex');
  const cases: Array<[string, string]> = [
    ['plain', prefix + 'plain'],
    ['ключ-🔒', prefix + 'ключ-🔒'],
    ['has space', sha('has space')],
    ['tab\tkey', sha('tab\tkey')],
    ['nl\n', sha('nl\n')],
    ['ctl\u0001', sha('ctl\u0001')],
    ['x'.repeat(300), sha('x'.repeat(300))],
    ['é'.repeat(120), prefix + 'é'.repeat(120)], // 240 bytes + 8-byte prefix: fits
    ['é'.repeat(125), sha('é'.repeat(125))], // 250 bytes + prefix: too long
  ];
  for (const [key, expected] of cases) {
    await a.tryWithLock(key, 'A', async () => {
      const raw = await shared.mc.rawGet(expected).catch(() => null);
      // The text protocol cannot send whitespace keys; everything we expect to
      // read is whitespace-free by construction.
      t.truthy(raw, `entry for ${JSON.stringify(key.slice(0, 20))}`);
      t.is((await a.inspect(key))?.clientId, 'A');
    });
    t.is(await a.inspect(key), null);
  }
});

test('mutual exclusion: 48 workers on 3 keys across two instances never overlap', async (t) => {
  const prefix = `mx${randomUUID().slice(0, 6)}:`;
  const a = memlock({}, prefix);
  const b = memlock({}, prefix);
  const inside = new Map<string, number>();
  let overlaps = 0;
  let entries = 0;
  const until = performance.now() + 1500;
  await Promise.all(
    Array.from({ length: 48 }, async (_, i) => {
      const m = i % 2 === 0 ? a : b;
      const key = `key${i % 3}`;
      while (performance.now() < until) {
        try {
          await m.tryWithLock(key, `worker-${i}`, async () => {
            const n = (inside.get(key) ?? 0) + 1;
            inside.set(key, n);
            if (n > 1) overlaps++;
            entries++;
            await sleep(1);
            inside.set(key, (inside.get(key) ?? 1) - 1);
          });
        } catch (error) {
          if (!(error instanceof LockNotAcquiredError)) throw error;
          await sleep(1);
        }
      }
    }),
  );
  t.is(overlaps, 0);
  t.true(entries > 30, `only ${entries} critical sections ran`);
});

test('memcache unreachable at acquire: MemcacheUnavailableError within a bounded time, fn not called', async (t) => {
  const port = await freePort(); // nothing listens here
  const a = new Memlock({ protocol: testProtocol, servers: `127.0.0.1:${port}`, timeoutMs: 300 });
  shared.track(a);
  let called = false;
  const start = performance.now();
  const error = await t.throwsAsync(
    a.tryWithLock('k', 'A', () => {
      called = true;
    }),
    { instanceOf: MemcacheUnavailableError },
  );
  t.is(error?.code, 'ERR_MEMLOCK_UNAVAILABLE');
  t.truthy(error?.cause);
  t.false(called);
  t.true(performance.now() - start < 300 * 4 + 500);
});

test('server paused (stalled) at acquire: MemcacheUnavailableError within the op deadline, no hang', async (t) => {
  const own = await startMemcached();
  const a = new Memlock({ protocol: testProtocol, servers: own.address, timeoutMs: 200 });
  shared.track(a);
  await a.tryWithLock('warm', 'A', () => 1); // connection established
  await own.pause();
  try {
    const start = performance.now();
    await t.throwsAsync(
      a.tryWithLock('k', 'A', () => 1),
      { instanceOf: MemcacheUnavailableError },
    );
    t.true(performance.now() - start < 200 * 4 + 500);
  } finally {
    await own.resume();
    await own.stop();
  }
});

for (const workers of [1, 3]) {
  // Serial: ava runs serial tests first, so the wait bound is not measured against the file's other tests.
  test.serial(
    `bounded-fair turns: 3 instances x ${workers} worker(s) on one key never overlap, share fairly, wait a bounded time`,
    async (t) => {
      const prefix = `turn${randomUUID().slice(0, 6)}:`;
      const turn = { maxMs: 5, maxHandoffs: 16 };
      const instances = [0, 1, 2].map(() => memlock({ turn }, prefix));
      const wait = { timeoutMs: 10_000, maxDelayMs: 100 };
      const holdMs = 1;
      let inside = 0;
      let overlaps = 0;
      let maxWaitMs = 0;
      const commits = [0, 0, 0];
      const until = performance.now() + 1500;
      await Promise.all(
        instances.flatMap((m, i) =>
          Array.from({ length: workers }, async (_, w) => {
            while (performance.now() < until) {
              const asked = performance.now();
              await m.tryWithLock(
                'hot',
                `i${i}w${w}`,
                async () => {
                  maxWaitMs = Math.max(maxWaitMs, performance.now() - asked);
                  if (++inside > 1) overlaps++;
                  await sleep(holdMs);
                  inside--;
                },
                { wait },
              );
              commits[i]!++;
            }
          }),
        ),
      );
      t.log(`commits ${commits.join('/')}, longest wait ${maxWaitMs.toFixed(1)} ms`);
      t.is(overlaps, 0);
      t.true(Math.min(...commits) / Math.max(...commits) >= 0.5, `share ${commits.join('/')}`);
      // A turn per instance ahead, a poll of the head, and slack for a loaded machine.
      const bound = instances.length * (turn.maxMs + holdMs * 2 + 1) + wait.maxDelayMs + 1000;
      t.true(maxWaitMs <= bound, `longest wait ${maxWaitMs} ms > ${bound} ms`);
    },
  );
}
