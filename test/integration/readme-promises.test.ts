/**
 * One test per README.md promise that no other test file covered (the audit
 * of issue 7). Each test is named after the README section and the sentence it
 * checks, quoted, so a failure points at the promise that is not kept.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import dc from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';
import memjs from 'memjs';
import {
  Memlock,
  LockNotAcquiredError,
  LockLostError,
  MemcacheUnavailableError,
  MemlockError,
  defaults,
  defaultMemlock,
  tryWithLock,
} from '../../src/index.js';
import { startMemcached, freePort, type MemcachedProcess } from '../helpers/memcached.js';
import { sharedServer } from '../helpers/shared.js';
import { activeHandles, settledLeaks, waitFor } from '../helpers/resources.js';

const shared = sharedServer(test);
const memlock = shared.memlock.bind(shared);

/** Operations memcached counted (reads, writes incl. add/CAS, touches, deletes). */
async function ops(mc: MemcachedProcess): Promise<number> {
  const s = await mc.stats();
  return ['cmd_get', 'cmd_set', 'cmd_touch', 'delete_hits', 'delete_misses'].reduce(
    (sum, k) => sum + Number(s[k] ?? 0),
    0,
  );
}

const quickWait = (timeoutMs: number): { timeoutMs: number; minDelayMs: number; maxDelayMs: number } => ({
  timeoutMs,
  minDelayMs: 20,
  maxDelayMs: 50,
});

// ----------------------------------------------------------------- new Memlock

test.serial('new Memlock: "Validates every option first ... and opens nothing until the first call"', async (t) => {
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const before = activeHandles();
  const connsBefore = Number((await own.stats()).curr_connections);
  const m = new Memlock({ servers: own.address });
  await sleep(100);
  t.deepEqual(await settledLeaks(before, 200), [], 'no socket or timer opened by the constructor');
  t.is(Number((await own.stats()).curr_connections), connsBefore, 'no connection reached memcached');
  await m.close();
});

test.serial(
  'servers: "Default: process.env.MEMCACHE_SERVERS"; tryWithLock: "a shared default instance, created on first use from the environment"',
  async (t) => {
    const saved = process.env.MEMCACHE_SERVERS;
    process.env.MEMCACHE_SERVERS = shared.mc.address;
    t.teardown(() => {
      if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
      else process.env.MEMCACHE_SERVERS = saved;
    });
    const m = new Memlock({ prefix: 'env-default:' });
    shared.track(m);
    await m.tryWithLock('k', 'A', async () => {
      t.truthy(await shared.mc.rawGet('env-default:k'), 'the entry is on the MEMCACHE_SERVERS server');
    });
    const result = await tryWithLock('shared-default', 'A', async () => {
      t.is(
        (await defaultMemlock().inspect('shared-default'))?.clientId,
        'A',
        'defaultMemlock() is the instance tryWithLock used',
      );
      t.truthy(await shared.mc.rawGet('memlock:shared-default'));
      return 'ran';
    });
    t.is(result, 'ran');
    t.is(defaultMemlock(), defaultMemlock());
    await defaultMemlock().close();
  },
);

test('prefix: "No whitespace or control characters, at most 179 bytes"', (t) => {
  t.notThrows(() => new Memlock({ servers: 'x:1', prefix: 'p'.repeat(179) }));
  t.throws(() => new Memlock({ servers: 'x:1', prefix: 'p'.repeat(180) }), {
    instanceOf: RangeError,
    message: /`prefix`/,
  });
  t.throws(() => new Memlock({ servers: 'x:1', prefix: 'a\tb' }), { instanceOf: RangeError, message: /`prefix`/ });
  t.throws(() => new Memlock({ servers: 'x:1', prefix: 'a\u0001b' }), { instanceOf: RangeError, message: /`prefix`/ });
});

test('timeoutMs: "Deadline of each memcache operation (1 ms to 60 s)"', (t) => {
  t.notThrows(() => new Memlock({ servers: 'x:1', timeoutMs: 1 }));
  t.notThrows(() => new Memlock({ servers: 'x:1', timeoutMs: 60_000 }));
  t.throws(() => new Memlock({ servers: 'x:1', timeoutMs: 60_001 }), {
    instanceOf: RangeError,
    message: /`timeoutMs`/,
  });
});

test('client: "memlock uses its server connections ... and does not close it"', async (t) => {
  const client = memjs.Client.create(shared.mc.address, { retries: 0, logger: { log: () => undefined } });
  t.teardown(() => client.close());
  const m = new Memlock({ client, prefix: 'byo:' });
  t.is(await m.tryWithLock('k', 'A', async () => (await m.inspect('k'))?.clientId), 'A');
  await m.close();
  await client.set('byo:still-open', 'yes', { expires: 10 });
  const { value } = await client.get('byo:still-open');
  t.is(value?.toString(), 'yes', "the caller's memjs client still works after close()");
});

// ----------------------------------------------------------------- tryWithLock

test('tryWithLock: "A failed release never replaces `fn`\'s result or error"', async (t) => {
  const prefix = 'relfail:';
  const m = memlock({}, prefix);
  // fn resolves, then the release finds another party's entry: the result still comes back.
  const result = await m.tryWithLock('k', 'A', async () => {
    await shared.mc.rawSet(prefix + 'k', 'someone else', 30);
    return 'result';
  });
  t.is(result, 'result');
  t.is(
    (await shared.mc.rawGet(prefix + 'k'))?.value.toString(),
    'someone else',
    'the release left the other entry alone',
  );
  // fn throws, and the release fails: fn's error, not the release's.
  const boom = new Error('boom');
  await shared.mc.rawDelete(prefix + 'k');
  const error = await t.throwsAsync(
    m.tryWithLock('k', 'A', async () => {
      await shared.mc.rawDelete(prefix + 'k');
      throw boom;
    }),
  );
  t.is(error, boom);
});

test('leaseMs / heartbeatMs: "A per-call `leaseMs` without `heartbeatMs` uses `min(instance heartbeatMs, leaseMs / 2)`"', async (t) => {
  // Instance heartbeat 3 s is more than half of a 2 s per-call lease: it must be lowered, not rejected.
  const m = memlock({ leaseMs: 16_000, heartbeatMs: 3000 });
  const aborted = await m.tryWithLock(
    'per-call-lease',
    'A',
    async (signal) => {
      await sleep(2500); // longer than the 2 s lease: only renewals keep it
      return signal.aborted;
    },
    { leaseMs: 2000 },
  );
  t.false(aborted, 'renewed within the 2 s lease');
});

// ---------------------------------------------------------------------- wait

test('wait: "`true` means `{ timeoutMs: 30000, minDelayMs: 2, maxDelayMs: 500 }`"', (t) => {
  t.deepEqual({ ...defaults.wait }, { timeoutMs: 30_000, minDelayMs: 2, maxDelayMs: 500 });
});

test('wait: "`Infinity` waits until the signal aborts"', async (t) => {
  const holder = memlock({}, 'inf:');
  const waiter = memlock({}, 'inf:');
  const held = await holder.acquire('k', 'holder');
  t.teardown(() => held.release());
  const controller = new AbortController();
  const reason = new Error('caller gave up');
  let settled: { value?: unknown; error?: unknown } | undefined;
  const waiting = waiter
    .tryWithLock('k', 'waiter', () => 'ran', {
      wait: { timeoutMs: Number.POSITIVE_INFINITY, minDelayMs: 20, maxDelayMs: 50 },
      signal: controller.signal,
    })
    .then(
      (value) => {
        settled = { value };
      },
      (error: unknown) => {
        settled = { error };
      },
    );
  await sleep(1000); // many polls (every <= 50 ms) later, it still waits
  t.is(settled, undefined, `still waiting (settled with ${String(settled?.error ?? settled?.value)})`);
  controller.abort(reason);
  await waiting;
  t.is(settled?.error, reason, 'rejects with signal.reason unchanged');
});

test.serial(
  'wait: "Waiters in the same `Memlock` instance queue locally: only the head of the queue asks memcache"',
  async (t) => {
    const own = await startMemcached();
    t.teardown(() => own.stop());
    const holder = new Memlock({ servers: own.address });
    const waiters = new Memlock({ servers: own.address });
    t.teardown(() => Promise.all([holder.close(), waiters.close()]));
    const held = await holder.acquire('k', 'holder');
    // Five waiters polling every 50 ms at most: if all asked memcache, 5x the traffic of one.
    const wait = { timeoutMs: 1000, minDelayMs: 50, maxDelayMs: 50 };
    const before = await ops(own);
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, (_, i) => waiters.tryWithLock('k', `w${i}`, () => 1, { wait })),
    );
    const spent = (await ops(own)) - before;
    await held.release();
    t.true(results.every((r) => r.status === 'rejected' && r.reason instanceof LockNotAcquiredError));
    // The head over 1 s: at most 1000 / 50 + 1 = 21 attempts of at most 2 ops (add + read); each other
    // waiter may try once as it leaves the queue at its timeout. Five pollers would spend about 5 x 42.
    t.log(`${spent} memcache ops for 5 local waiters over 1 s`);
    t.true(spent <= 2 * (21 + 4) + 10, `only the head polled (${spent} ops)`);
  },
);

test.serial('wait: "... and only while no lock of this instance holds the key"', async (t) => {
  const own = await startMemcached();
  t.teardown(() => own.stop());
  const m = new Memlock({ servers: own.address });
  t.teardown(() => m.close());
  const held = await m.acquire('k', 'holder');
  const before = await ops(own);
  const waiting = Promise.all(
    Array.from({ length: 3 }, (_, i) => m.tryWithLock('k', `w${i}`, () => i, { wait: quickWait(5000) })),
  );
  await sleep(500); // 10+ backoff periods
  t.is((await ops(own)) - before, 0, 'no memcache traffic while a lock of this instance holds the key');
  await held.release();
  t.deepEqual(await waiting, [0, 1, 2]);
});

test('tryWithLock: "The same clientId takes an existing lock over" (also with `wait`, in the same instance)', async (t) => {
  const m = memlock({ leaseMs: 4000, heartbeatMs: 200 });
  const first = await m.acquire('same-id-wait', 'worker-1');
  t.teardown(() => first.release());
  const start = performance.now();
  // Without wait this is a takeover at once; a waiting call must not queue behind its own clientId and time out.
  const second = await m.acquire('same-id-wait', 'worker-1', { wait: quickWait(2000) });
  t.teardown(() => second.release());
  t.true(performance.now() - start < 1500, 'took over instead of waiting out the timeout');
  await waitFor(() => first.signal.aborted, 2000, 10, 'earlier holder aborted');
  t.is((first.signal.reason as LockLostError).kind, 'taken');
});

// --------------------------------------------------------------------- errors

test('Errors: "`LockNotAcquiredError` ... held by another client; or `wait.timeoutMs` passed. `holder` is the holder\'s clientId when readable"', async (t) => {
  const a = memlock({}, 'holder-known:');
  const b = memlock({}, 'holder-known:');
  const held = await a.acquire('k', 'A');
  t.teardown(() => held.release());
  // Another instance times out waiting: holder read from memcache.
  const remote = await t.throwsAsync(
    b.tryWithLock('k', 'B', () => 1, { wait: quickWait(300) }),
    { instanceOf: LockNotAcquiredError },
  );
  t.is((remote as LockNotAcquiredError).holder, 'A', 'another instance');
  // The same instance times out waiting in its local queue: the holder is just as readable (and known locally).
  const local = await t.throwsAsync(
    a.tryWithLock('k', 'B', () => 1, { wait: quickWait(300) }),
    { instanceOf: LockNotAcquiredError },
  );
  t.is((local as LockNotAcquiredError).holder, 'A', 'same instance (local queue)');
});

test('Errors: "`MemcacheUnavailableError` ... `cause` and `server` set"', async (t) => {
  const port = await freePort();
  const m = new Memlock({ servers: `127.0.0.1:${port}`, timeoutMs: 300 });
  t.teardown(() => m.close());
  const error = await t.throwsAsync(
    m.tryWithLock('k', 'A', () => 1),
    { instanceOf: MemcacheUnavailableError },
  );
  t.is(error?.code, 'ERR_MEMLOCK_UNAVAILABLE');
  t.truthy(error?.cause, 'cause set');
  t.is((error as MemcacheUnavailableError).server, `127.0.0.1:${port}`);
});

// ------------------------------------------------------------- acquire / wrap

test('acquire: "`release()` never rejects: `true` when our entry was deleted, `false` when it was already gone or taken or memcache failed"', async (t) => {
  const prefix = 'rel:';
  const m = memlock({}, prefix);
  const gone = await m.acquire('gone', 'A');
  await shared.mc.rawDelete(prefix + 'gone');
  t.false(await gone.release(), 'gone');
  const taken = await m.acquire('taken', 'A');
  await shared.mc.rawSet(prefix + 'taken', 'other', 30);
  t.false(await taken.release(), 'taken');
  t.is((await shared.mc.rawGet(prefix + 'taken'))?.value.toString(), 'other');

  const own = await startMemcached();
  const o = new Memlock({ servers: own.address, timeoutMs: 200 });
  t.teardown(() => o.close());
  const failed = await o.acquire('k', 'A');
  await own.stop();
  const published: Array<{ reason?: string; error?: unknown }> = [];
  const onFailed = (message: unknown): void => {
    published.push(message as { reason?: string; error?: unknown });
  };
  dc.subscribe('memlock:release-failed', onFailed);
  t.teardown(() => dc.unsubscribe('memlock:release-failed', onFailed));
  t.false(await failed.release(), 'memcache failed: false, not a rejection');
  // Diagnostics: "`memlock:release-failed` `{ key, clientId, reason: 'gone' | 'taken' | 'error', error }`"
  t.true(
    published.some((m) => m.reason === 'error' && m.error instanceof Error),
    'published with reason error',
  );
});

test('Keys: "Keys are case-sensitive Unicode"', async (t) => {
  const m = memlock();
  await m.tryWithLock('Invoice', 'A', async () => {
    t.is(await m.tryWithLock('invoice', 'B', () => 'other key'), 'other key');
    t.is(await m.tryWithLock('İnvoice', 'B', () => 'other key too'), 'other key too');
  });
});

// Serial: it counts the server's operations, which concurrent tests would change.
test.serial('wrap: "Options are validated when `wrap` is called" (clientId too)', async (t) => {
  const m = memlock();
  const before = await ops(shared.mc);
  const fn = async (_id: string, _signal: AbortSignal): Promise<number> => 1;
  const key = (id: string): string => id;
  // Each of these is rejected by tryWithLock before any traffic; wrap must say so when it is called, not on every call.
  const empty = t.throws(() => m.wrap(fn, { key, clientId: '' }));
  t.regex(String(empty?.message), /clientId/);
  t.throws(() => m.wrap(fn, { key, clientId: 'x'.repeat(5000) }), { instanceOf: RangeError, message: /`clientId`/ });
  t.throws(() => m.wrap(fn, { key, clientId: 'bad\uD800' }), { instanceOf: TypeError, message: /`clientId`/ });
  t.is(await ops(shared.mc), before, 'touching nothing');
});

test('wrap: "every `tryWithLock` option except `signal`" (a `signal` option is refused when `wrap` is called)', (t) => {
  const m = memlock();
  const controller = new AbortController();
  const options = { key: (id: string) => id, signal: controller.signal } as unknown as Parameters<
    typeof m.wrap<[string], number>
  >[1];
  t.throws(() => m.wrap(async (_id: string, _signal: AbortSignal) => 1, options), {
    instanceOf: TypeError,
    message: /`signal`/,
  });
});

// -------------------------------------------------------------------- inspect

test('inspect: "An entry not written by memlock also reads as `null` (it still blocks acquisition)"', async (t) => {
  const prefix = 'foreign:';
  const m = memlock({}, prefix);
  await shared.mc.rawSet(prefix + 'k', 'not a memlock value', 30);
  t.is(await m.inspect('k'), null);
  let called = false;
  const error = await t.throwsAsync(
    m.tryWithLock('k', 'A', () => {
      called = true;
    }),
    { instanceOf: LockNotAcquiredError },
  );
  t.is((error as LockNotAcquiredError).holder, undefined, 'no holder to name');
  t.false(called);
  t.is((await shared.mc.rawGet(prefix + 'k'))?.value.toString(), 'not a memlock value');
});

// ---------------------------------------------------------------------- close

test('close(): "Idempotent"', async (t) => {
  const m = memlock();
  await m.tryWithLock('k', 'A', () => 1);
  const first = m.close();
  t.is(m.close(), first);
  await first;
  await t.notThrowsAsync(m.close());
});

test.serial(
  'close(): "Calls still waiting for a lock (`wait`) reject at once with a `MemlockError` (`ERR_MEMLOCK_CLOSED`)" (also with its add in flight), and "Releases every lock this instance holds" (the add the server applied too)',
  async (t) => {
    const own = await startMemcached();
    t.teardown(() => own.stop());
    const prefix = 'close-inflight:';
    const m = new Memlock({ servers: own.address, prefix, timeoutMs: 3000 });
    // A stopped memcached still accepts connections (kernel backlog) and buffers requests: the add is in flight
    // until it resumes, then applied: what a rolling deploy does to a healthy server that is merely slow to answer.
    await own.pause();
    let resumed = false;
    t.teardown(async () => {
      if (!resumed) await own.resume();
    });
    const waiting = m.acquire('k', 'waiter', { wait: { timeoutMs: 10_000, minDelayMs: 10, maxDelayMs: 10 } }).then(
      (lock) => lock,
      (error: unknown) => error,
    );
    await sleep(200);
    const closing = m.close();
    const outcome = await Promise.race([waiting, sleep(100).then(() => 'still pending 100 ms after close()')]);
    await sleep(200);
    await own.resume();
    resumed = true;
    await closing;
    const settled = await waiting;
    const left = await own.rawGet(prefix + 'k');
    t.log(
      `waiter, 100 ms after close(): ${String(outcome)}; entry after close() resolved: ${left === null ? 'none' : left.value.toString()}`,
    );
    t.true(settled instanceof MemlockError && settled.code === 'ERR_MEMLOCK_CLOSED', `got ${String(settled)}`);
    t.is(left, null, 'no entry left blocking the key for the lease');
  },
);

// ------------------------------------------------------ diagnostics, guarantees

test.serial(
  'Diagnostics: payloads "`memlock:acquired` `{ key, clientId, how, server, durationMs }`", "`memlock:refused`", "`memlock:stolen` ... `previousAcquiredAt: Date`", "`memlock:released` `{ key, clientId, heldMs }`"',
  async (t) => {
    const prefix = 'payload:';
    const m = memlock({}, prefix);
    const seen: Record<string, Array<Record<string, unknown>>> = {};
    const names = ['memlock:acquired', 'memlock:stolen', 'memlock:released', 'memlock:refused'] as const;
    const subs = names.map((name) => {
      const fn = (message: unknown): void => {
        if ((message as { key?: string }).key === 'p') (seen[name] ??= []).push(message as Record<string, unknown>);
      };
      dc.subscribe(name, fn);
      return () => dc.unsubscribe(name, fn);
    });
    t.teardown(() => subs.forEach((off) => off()));
    const first = await m.acquire('p', 'A');
    await sleep(50);
    // A steal (holder older than stealAfterMs) from another client.
    const thief = await m.acquire('p', 'B', { stealAfterMs: 10 });
    await t.throwsAsync(m.acquire('p', 'C'), { instanceOf: LockNotAcquiredError });
    await first.release();
    await sleep(20);
    await thief.release();
    const acquired = seen['memlock:acquired'] ?? [];
    t.like(acquired[0], { key: 'p', clientId: 'A', how: 'added', server: shared.mc.address });
    t.is(typeof acquired[0]?.durationMs, 'number');
    t.like(acquired[1], { key: 'p', clientId: 'B', how: 'stolen' });
    // "`memlock:refused` `{ key, clientId, holder, server }`"
    t.like(seen['memlock:refused']?.[0], { key: 'p', clientId: 'C', holder: 'B', server: shared.mc.address });
    const stolen = seen['memlock:stolen']?.[0];
    t.like(stolen, { key: 'p', clientId: 'B', how: 'stolen', previousClientId: 'A' });
    t.true(stolen?.previousAcquiredAt instanceof Date);
    const released = seen['memlock:released'] ?? [];
    t.like(released.at(-1), { key: 'p', clientId: 'B' });
    t.true(typeof released.at(-1)?.heldMs === 'number' && (released.at(-1)?.heldMs as number) >= 20);
  },
);

test('Guarantees: "each entry\'s value is unique per acquisition (clientId, acquisition time, random token)"', async (t) => {
  const prefix = 'unique:';
  const m = memlock({}, prefix);
  const values = new Set<string>();
  for (let i = 0; i < 3; i++) {
    await m.tryWithLock('k', 'same-client', async () => {
      const raw = await shared.mc.rawGet(prefix + 'k');
      t.truthy(raw);
      t.true(raw!.value.toString().includes('same-client'));
      values.add(raw!.value.toString());
    });
  }
  t.is(values.size, 3, 'three acquisitions by one clientId wrote three distinct values');
});

// ------------------------------------------------------------------------- ref

/** Runs `body` (ESM, with `Memlock` imported from src) in a child process; resolves when it printed `ready`. */
function child(body: string): { ready: Promise<void>; exited: Promise<number | null>; kill: () => void } {
  const src = new URL('../../src/index.ts', import.meta.url).href;
  const code = `import { Memlock } from ${JSON.stringify(src)};\n${body}\nconsole.log('ready');`;
  const proc = spawn(process.execPath, ['--import=tsx', '--input-type=module', '-e', code], {
    env: { ...process.env, MEMCACHE_SERVERS: shared.mc.address },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    proc.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    void exited.then(() => reject(new Error(`child exited before ready: ${stderr}`)));
  });
  return { ready, exited, kill: () => proc.kill('SIGKILL') };
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> =>
  Promise.race([p, sleep(ms).then(() => 'timeout' as const)]);

test.serial(
  'ref: "Whether idle memcache connections keep the process alive" (default `true`: they do; `false`: they do not)',
  async (t) => {
    const kept = child(
      `const m = new Memlock({ servers: process.env.MEMCACHE_SERVERS, prefix: 'ref-true:' });\nawait m.tryWithLock('k', 'A', () => 1);`,
    );
    t.teardown(kept.kill);
    await kept.ready;
    t.is(await within(kept.exited, 2000), 'timeout', 'ref: true (default): an idle connection keeps the process alive');
    const free = child(
      `const m = new Memlock({ servers: process.env.MEMCACHE_SERVERS, prefix: 'ref-false:', ref: false });\nawait m.tryWithLock('k', 'A', () => 1);`,
    );
    t.teardown(free.kill);
    await free.ready;
    t.is(await within(free.exited, 10_000), 0, 'ref: false: the process exits on its own, without close()');
  },
);

test.serial(
  'ref: "Heartbeat timers never do" (a held lock with `ref: false` does not keep the process alive)',
  async (t) => {
    const holder = child(
      `const m = new Memlock({ servers: process.env.MEMCACHE_SERVERS, prefix: 'ref-held:', ref: false, leaseMs: 2000, heartbeatMs: 200 });\nawait m.acquire('k', 'A');`,
    );
    t.teardown(holder.kill);
    await holder.ready;
    t.is(await within(holder.exited, 10_000), 0, 'exits while holding the lock');
  },
);
