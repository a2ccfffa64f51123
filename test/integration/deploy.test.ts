/**
 * Behaviour that matters once memlock is deployed (API.md 8-12): same-instance
 * takeover, completed markers (holdAfterMs), fail-open, loss visible at the
 * call site, close() during an acquisition, wrap's clientId and caller signal.
 */
import test from 'ava';
import dc from 'node:diagnostics_channel';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Memlock,
  LockLostError,
  LockNotAcquiredError,
  MemcacheUnavailableError,
  type LockInfo,
} from '../../src/index.js';
import { freePort } from '../helpers/memcached.js';
import { startProxy } from '../helpers/proxy.js';
import { sharedServer } from '../helpers/shared.js';
import { failOnUnhandled } from '../helpers/unhandled.js';
import { waitFor } from '../helpers/resources.js';

const shared = sharedServer(test);
const memlock = shared.memlock.bind(shared);
failOnUnhandled(test);

test('same-clientId takeover in one instance aborts the earlier holder before the new acquisition resolves', async (t) => {
  const m = memlock();
  const first = await m.acquire('k', 'host-1');
  const second = await m.acquire('k', 'host-1');
  // Checked synchronously after the second acquire resolved: no heartbeat involved.
  t.true(first.signal.aborted);
  t.true(first.signal.reason instanceof LockLostError);
  t.is((first.signal.reason as LockLostError).kind, 'taken');
  t.false(second.signal.aborted);
  t.false(await first.release(), 'the earlier holder must not delete the new entry');
  t.is((await m.inspect('k'))?.clientId, 'host-1');
  t.true(await second.release());
  t.is(await m.inspect('k'), null);
});

test('same-clientId concurrent tryWithLock calls never run inside the lock together', async (t) => {
  const m = memlock();
  const inside = new Set<AbortSignal>();
  let worst = 0;
  const check = (): void => {
    // Holders whose signal is not aborted believe they hold the lock: never more than one.
    worst = Math.max(worst, [...inside].filter((s) => !s.aborted).length);
  };
  const run = (): Promise<unknown> =>
    m
      .tryWithLock('shared-id', 'one-host', async (signal) => {
        inside.add(signal);
        check();
        await sleep(30);
        check();
        inside.delete(signal);
      })
      .catch((error: unknown) => error);
  await Promise.all([run(), sleep(5).then(run), sleep(10).then(run)]);
  t.is(worst, 1, 'two holders believed they held the lock at once');
});

test('holdAfterMs: after fn resolves the key stays blocked (done, holder) and frees itself after the hold', async (t) => {
  const m = memlock({}, 'hold:');
  const other = memlock({}, 'hold:');
  t.is(await m.tryWithLock('job', 'worker-a', () => 'ok', { holdAfterMs: 2000 }), 'ok');
  const markedAt = performance.now();
  const refused = await t.throwsAsync(
    other.tryWithLock('job', 'worker-b', () => 'again'),
    { instanceOf: LockNotAcquiredError },
  );
  t.true(refused.done);
  t.is(refused.holder, 'worker-a');
  // The same clientId does not take a completed marker over either.
  const same = await t.throwsAsync(
    m.tryWithLock('job', 'worker-a', () => 'again'),
    { instanceOf: LockNotAcquiredError },
  );
  t.true(same.done);
  // A waiting call is told at once: waiting out the hold would defeat it.
  const started = performance.now();
  const waited = await t.throwsAsync(
    other.tryWithLock('job', 'worker-c', () => 'again', { wait: { timeoutMs: 10_000 } }),
    { instanceOf: LockNotAcquiredError },
  );
  t.true(waited.done);
  t.true(performance.now() - started < 1000, 'a waiter must not wait for a completed marker');
  // TTL = ceil(2000 / 1000) + 2 = 4 s (memcached's clock can jump 2 s, and the
  // marker must block at least holdAfterMs): gone within 4 s (+ a tick).
  await waitFor(async () => await other.tryWithLock('job', 'worker-b', () => true).catch(() => false), 6000, 100);
  const blockedMs = performance.now() - markedAt;
  // At least holdAfterMs (less memcached's few ms of tick lateness and a poll).
  t.true(blockedMs >= 1900, `blocked ${blockedMs.toFixed(0)} ms`);
});

test('holdAfterMs: when fn rejects, the entry is deleted as usual', async (t) => {
  const m = memlock();
  await t.throwsAsync(
    m.tryWithLock(
      'job2',
      'w',
      () => {
        throw new Error('boom');
      },
      { holdAfterMs: 60_000 },
    ),
    { message: 'boom' },
  );
  t.is(await m.inspect('job2'), null);
  t.is(await m.tryWithLock('job2', 'w2', () => 'free'), 'free');
});

test('holdAfterMs: a refusal that is not a completed marker has done false', async (t) => {
  const m = memlock();
  const lock = await m.acquire('plain', 'a');
  const error = await t.throwsAsync(
    m.tryWithLock('plain', 'b', () => 1),
    { instanceOf: LockNotAcquiredError },
  );
  t.false(error.done);
  await lock.release();
});

test('holdAfterMs is validated (RangeError naming it) before any traffic', async (t) => {
  const m = memlock();
  let ran = false;
  await t.throwsAsync(
    m.tryWithLock('v', 'a', () => (ran = true), { holdAfterMs: -1 }),
    { instanceOf: RangeError, message: /holdAfterMs/ },
  );
  await t.throwsAsync(
    m.tryWithLock('v', 'a', () => (ran = true), { failOpen: 'yes' as unknown as boolean }),
    { instanceOf: TypeError, message: /failOpen/ },
  );
  t.false(ran);
  await t.throwsAsync(m.acquire('v', 'a', { holdAfterMs: 1000 }), { instanceOf: TypeError, message: /holdAfterMs/ });
  await t.throwsAsync(m.acquire('v', 'a', { failOpen: true }), { instanceOf: TypeError, message: /failOpen/ });
  t.is(await m.inspect('v'), null);
});

test('failOpen: memcache down runs fn unlocked with a signal that follows only the caller, published on memlock:fail-open', async (t) => {
  const down = `127.0.0.1:${await freePort()}`;
  const m = new Memlock({ servers: down, timeoutMs: 200 });
  shared.track(m);
  const seen: unknown[] = [];
  const onFailOpen = (message: unknown): void => {
    seen.push(message);
  };
  dc.subscribe('memlock:fail-open', onFailOpen);
  try {
    // Without failOpen: rejects, fn not called.
    let ran = false;
    await t.throwsAsync(
      m.tryWithLock('k', 'a', () => (ran = true)),
      { instanceOf: MemcacheUnavailableError },
    );
    t.false(ran);
    const caller = new AbortController();
    const result = await m.tryWithLock(
      'k',
      'a',
      async (signal) => {
        t.false(signal.aborted);
        caller.abort(new Error('client went away'));
        t.true(signal.aborted);
        t.is((signal.reason as Error).message, 'client went away');
        return 'ran unlocked';
      },
      { failOpen: true, signal: caller.signal },
    );
    t.is(result, 'ran unlocked');
    t.is(seen.length, 1);
    t.like(seen[0], { key: 'k', clientId: 'a' });
    t.true((seen[0] as { error: unknown }).error instanceof MemcacheUnavailableError);
  } finally {
    dc.unsubscribe('memlock:fail-open', onFailOpen);
  }
});

test('failOpen does not run fn on contention', async (t) => {
  const m = memlock();
  const lock = await m.acquire('busy', 'a');
  let ran = false;
  await t.throwsAsync(
    m.tryWithLock('busy', 'b', () => (ran = true), { failOpen: true }),
    { instanceOf: LockNotAcquiredError },
  );
  t.false(ran);
  await lock.release();
});

test('loss at the call site: fn rejecting after the loss rejects tryWithLock with the LockLostError, fn error kept', async (t) => {
  const m = memlock({ leaseMs: 4000, heartbeatMs: 200 }, 'loss1:');
  const error = await t.throwsAsync(
    m.tryWithLock('lost', 'a', async (signal) => {
      t.true(await shared.mc.rawDelete('loss1:lost'));
      // What a driver does with the signal: reject with an AbortError.
      await sleep(10_000, undefined, { signal });
    }),
    { instanceOf: LockLostError },
  );
  t.is(error.kind, 'gone');
  t.true(error.fnError instanceof Error);
  t.is((error.fnError as Error).name, 'AbortError');
});

test('loss at the call site: fn rethrowing the signal reason rejects with that same error', async (t) => {
  const m = memlock({ leaseMs: 4000, heartbeatMs: 200 }, 'loss2:');
  let reason: unknown;
  const error = await t.throwsAsync(
    m.tryWithLock('lost2', 'a', async (signal) => {
      t.true(await shared.mc.rawDelete('loss2:lost2'));
      await waitFor(() => signal.aborted, 2000, 10);
      reason = signal.reason;
      signal.throwIfAborted();
    }),
    { instanceOf: LockLostError },
  );
  t.is(error, reason as LockLostError);
  t.is(error.fnError, undefined);
});

test('loss at the call site: fn error is passed through when the lock was not lost', async (t) => {
  const m = memlock();
  await t.throwsAsync(
    m.tryWithLock('fine', 'a', () => {
      throw new TypeError('mine');
    }),
    { instanceOf: TypeError, message: 'mine' },
  );
});

test('close() while an acquisition is in flight: ERR_MEMLOCK_CLOSED, and the granted entry is deleted before close resolves', async (t) => {
  const proxy = await startProxy({ host: '127.0.0.1', port: shared.mc.port });
  try {
    const m = new Memlock({ servers: proxy.address, prefix: 'inflight:', timeoutMs: 2000 });
    // Connect first so the in-flight request is the add itself.
    await m.inspect('warm');
    proxy.setLatency(150);
    const attempt = m.tryWithLock('deploy', 'a', () => 'ran');
    const settled = attempt.then(
      () => 'resolved',
      (error: unknown) => error,
    );
    await sleep(40); // the add is on the wire (the proxy holds it back)
    await m.close();
    const outcome = await settled;
    t.true(outcome instanceof Error);
    t.is((outcome as { code?: string }).code, 'ERR_MEMLOCK_CLOSED');
    // The server applied the add; close() must have deleted it.
    t.is(await shared.mc.rawGet('inflight:deploy'), null);
  } finally {
    await proxy.close();
  }
});

test('wrap: default clientId names the host and process; a per-call caller signal reaches the handler', async (t) => {
  const m = memlock();
  const infos: Array<LockInfo | null> = [];
  const handler = m.wrap(
    async (id: string, request: { signal: AbortSignal }, signal: AbortSignal) => {
      infos.push(await m.inspect(id));
      t.false(signal.aborted);
      (request as { abort?: () => void }).abort?.();
      t.true(signal.aborted, 'the caller signal from the arguments aborts the lock signal');
      t.is((signal.reason as Error).message, 'request closed');
      return 'handled';
    },
    { key: (id) => id, signal: (_id, request) => request.signal },
  );
  const controller = new AbortController();
  const request = { signal: controller.signal, abort: () => controller.abort(new Error('request closed')) };
  t.is(await handler('w1', request), 'handled');
  const id = infos[0]?.clientId ?? '';
  t.true(id.startsWith(`${hostname()}:${process.pid}:`), id);
  t.true(id.length > `${hostname()}:${process.pid}:`.length + 8, 'a random part keeps calls apart');
});

test('wrap: onNotAcquired result type joins fn result type', async (t) => {
  const m = memlock();
  const handler = m.wrap(async (_id: string, _signal: AbortSignal) => 1, {
    key: (id) => id,
    onNotAcquired: () => 'duplicate' as const,
  });
  const held = await m.acquire('dup', 'other');
  const result: number | 'duplicate' = await handler('dup');
  t.is(result, 'duplicate');
  await held.release();
});
