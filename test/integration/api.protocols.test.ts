/** acquire/await using, wrap, diagnostics, polyfilled signals, close(). */
import test from 'ava';
import { spyOnPublish } from '../helpers/publish-spy.js';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import dc from 'node:diagnostics_channel';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortController as PolyfillController } from 'abort-controller';
import { Memlock, LockNotAcquiredError, LockLostError, channels } from '../../src/index.js';
import { startMemcached } from '../helpers/memcached.js';
import { testProtocol } from '../helpers/protocol.js';
import { sharedServer } from '../helpers/shared.js';
import { waitFor } from '../helpers/resources.js';

const shared = sharedServer(test);
const memlock = shared.memlock.bind(shared);

test('acquire returns a handle; await using releases it', async (t) => {
  const m = memlock();
  {
    await using lock = await m.acquire('h', 'A');
    t.is(lock.key, 'h');
    t.is(lock.clientId, 'A');
    t.false(lock.signal.aborted);
    t.is((await m.inspect('h'))?.clientId, 'A');
  }
  t.is(await m.inspect('h'), null);
  const lock = await m.acquire('h', 'A');
  const first = lock.release();
  t.is(lock.release(), first, 'release is idempotent');
  t.true(await first);
});

test('wrap: key from arguments, signal as the last argument, refusal rejects or falls back', async (t) => {
  const m = memlock();
  const other = memlock();
  const handler = m.wrap(
    async (invoice: number, amount: number, signal: AbortSignal) => {
      t.true(signal instanceof AbortSignal);
      t.is((await m.inspect(`invoice:${invoice}`)) !== null, true);
      return invoice * amount;
    },
    { key: (invoice) => `invoice:${invoice}` },
  );
  t.is(await handler(42, 2), 84);

  const blocked = m.wrap(async () => 'ran', { key: (id: string) => id, clientId: 'B' });
  const fallback = m.wrap(async () => 'ran', {
    key: (id: string) => id,
    clientId: 'B',
    onNotAcquired: (error, id) => `skipped ${id} (${error.code})`,
  });
  const held = await m.acquire('busy', 'A');
  await t.throwsAsync(blocked('busy'), { instanceOf: LockNotAcquiredError });
  t.is(await fallback('busy'), 'skipped busy (ERR_MEMLOCK_NOT_ACQUIRED)');
  await held.release();
  t.is(await blocked('busy'), 'ran');
  t.is(other.heldCount, 0);
});

test('dedupe: 32 concurrent deliveries of one job run it once', async (t) => {
  const m = memlock();
  let runs = 0;
  const handle = m.wrap(
    async (_job: string, _signal: AbortSignal) => {
      runs++;
      await sleep(50);
      return 'done';
    },
    { key: (job) => `job:${job}`, onNotAcquired: () => 'duplicate' },
  );
  const results = await Promise.all(Array.from({ length: 32 }, () => handle('j1')));
  t.is(runs, 1);
  t.is(results.filter((r) => r === 'done').length, 1);
  t.is(results.filter((r) => r === 'duplicate').length, 31);
});

test('signals from the abort-controller package work, before and during', async (t) => {
  const m = memlock();
  const before = new PolyfillController();
  before.abort();
  let error: unknown;
  await m
    .tryWithLock('p', 'A', () => 1, { signal: before.signal as unknown as AbortSignal })
    .catch((e: unknown) => {
      error = e;
    });
  t.is((error as Error).name, 'AbortError');
  t.is(await m.inspect('p'), null);

  const during = new PolyfillController();
  const reason = await m.tryWithLock(
    'p',
    'A',
    async (signal) => {
      during.abort();
      await waitFor(() => signal.aborted, 1000);
      return signal.reason as Error;
    },
    { signal: during.signal as unknown as AbortSignal },
  );
  t.is(reason.name, 'AbortError');
  t.is(await m.inspect('p'), null);
});

test.serial('diagnostics: acquired, refused, stolen, lost, released, release-failed, heartbeat-error', async (t) => {
  const prefix = `dg${randomUUID().slice(0, 6)}:`;
  const m = memlock({ leaseMs: 4000, heartbeatMs: 150 }, prefix);
  const seen: Record<string, unknown[]> = {};
  const subs = Object.entries(channels).map(([name, channel]) => {
    const fn = (message: unknown): void => {
      if ((message as { key?: string }).key?.startsWith('dg-')) (seen[name] ??= []).push(message);
    };
    dc.subscribe(channel.name as string, fn);
    return () => dc.unsubscribe(channel.name as string, fn);
  });
  t.teardown(() => subs.forEach((off) => off()));

  await m.tryWithLock('dg-1', 'A', () => 1);
  const held = await m.acquire('dg-2', 'A');
  await t.throwsAsync(m.acquire('dg-2', 'B'));
  const again = await m.acquire('dg-2', 'A'); // takeover
  await waitFor(() => held.signal.aborted, 2000);
  await held.release();
  await again.release();
  const lost = await m.acquire('dg-3', 'A');
  await shared.mc.rawDelete(prefix + 'dg-3');
  await waitFor(() => lost.signal.aborted, 2000);
  await lost.release();

  t.like(seen.acquired?.[0], { key: 'dg-1', clientId: 'A', how: 'added', server: shared.mc.address });
  t.like(seen.refused?.[0], { key: 'dg-2', clientId: 'B', holder: 'A' });
  t.like(seen.stolen?.[0], { key: 'dg-2', clientId: 'A', how: 'takeover', previousClientId: 'A' });
  t.true(seen.lost?.some((msg) => (msg as { kind: string }).kind === 'taken'));
  t.true(
    seen.lost?.some(
      (msg) =>
        (msg as { kind: string; error: unknown }).kind === 'gone' &&
        (msg as { error: unknown }).error instanceof LockLostError,
    ),
  );
  t.like(seen.released?.[0], { key: 'dg-1', clientId: 'A' });
  t.true(seen.releaseFailed?.some((msg) => (msg as { reason: string }).reason === 'taken'));
  t.true(seen.releaseFailed?.some((msg) => (msg as { reason: string }).reason === 'gone'));

  // Heartbeat errors: pause the server while holding.
  const own = await startMemcached();
  const p = new Memlock({
    protocol: testProtocol,
    servers: own.address,
    prefix: 'dg-',
    leaseMs: 3000,
    heartbeatMs: 200,
    timeoutMs: 100,
  });
  const errors: unknown[] = [];
  const onError = (msg: unknown): void => {
    errors.push(msg);
  };
  dc.subscribe('memlock:heartbeat-error', onError);
  try {
    const lock = await p.acquire('hb', 'A');
    await own.pause();
    await waitFor(() => errors.length > 0, 2000);
    await waitFor(() => lock.signal.aborted, 3000);
    t.is((lock.signal.reason as LockLostError).kind, 'unreachable');
    await own.resume();
    // Release never throws. If it reports success, our entry is gone; if not
    // (the entry expired when memcached's clock caught up after SIGCONT, or
    // the first request after the resume timed out), nothing of ours was deleted.
    const released = await lock.release();
    const entry = await own.rawGet('dg-hb');
    if (released) t.is(entry, null);
    else t.true(entry === null || entry.value.toString().endsWith(':A'));
  } finally {
    dc.unsubscribe('memlock:heartbeat-error', onError);
    await p.close();
    await own.stop();
  }
});

test.serial('nothing is published without subscribers (no work for an unobserved lock)', async (t) => {
  for (const channel of Object.values(channels)) t.false(channel.hasSubscribers);
  // Count publish() calls on every channel through a full cycle: acquire,
  // refusal, takeover, loss, release and a failed release.
  const calls = spyOnPublish(t);
  const prefix = `np${randomUUID().slice(0, 6)}:`;
  const m = memlock({ leaseMs: 4000, heartbeatMs: 100 }, prefix);
  await m.tryWithLock('k', 'A', () => 1);
  const held = await m.acquire('k', 'A');
  await t.throwsAsync(memlock({}, prefix).acquire('k', 'B'));
  const again = await m.acquire('k', 'A');
  await shared.mc.rawDelete(prefix + 'k');
  await waitFor(() => again.signal.aborted, 2000);
  await held.release();
  await again.release();
  t.deepEqual(calls, []);
});

test('close() releases held locks, aborts their signals, and later calls fail', async (t) => {
  const m = new Memlock({ protocol: testProtocol, servers: shared.mc.address, prefix: 'close:' });
  const lock = await m.acquire('k', 'A');
  await m.close();
  t.true(lock.signal.aborted);
  t.is((lock.signal.reason as LockLostError).kind, 'closed');
  t.is(await shared.mc.rawGet('close:k'), null);
  await t.throwsAsync(m.acquire('k', 'A'), { message: /closed/ });
  await m.close(); // idempotent
});

function runFixture(mode: string): Promise<string> {
  const script = fileURLToPath(new URL('../fixtures/exit-after-close.mts', import.meta.url));
  return new Promise<string>((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import=tsx', script, mode],
      {
        // The default instance speaks binary: memcached itself, not a text-only front.
        env: { ...process.env, MEMCACHE_SERVERS: shared.mc.serverAddress },
        timeout: 15_000,
      },
      (error, out, err) => (error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out)),
    );
  });
}

test('after close() no timer or socket is left', async (t) => {
  const stdout = await runFixture('close-default');
  const report = JSON.parse(stdout.trim()) as { viaDefault: string; aborted: boolean; resources: string[] };
  t.is(report.viaDefault, 'default ok');
  t.true(report.aborted);
  t.deepEqual(
    report.resources.filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap' && r !== 'Immediate'),
    [],
  );
});

test('the process exits on its own with the shared default instance still open', async (t) => {
  const start = performance.now();
  const report = JSON.parse((await runFixture('keep-default')).trim()) as { viaDefault: string };
  t.is(report.viaDefault, 'default ok');
  t.true(performance.now() - start < 15_000);
});
