/**
 * One abort listener per caller signal (src/abort-listeners.ts): the module
 * itself, and Memlock's calls that follow a caller's signal. An app passing
 * one shutdown signal to many concurrent calls must not add a listener per
 * call: waiting calls and fail-open runs each did, which set off Node's
 * MaxListenersExceededWarning past 10 (held locks already shared one).
 */
import test from 'ava';
import { getEventListeners, setMaxListeners } from 'node:events';
import { AbortController as PolyfilledAbortController } from 'abort-controller';
import { onAbort } from '../../src/abort-listeners.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime } from '../helpers/clock.js';
import { captureWarnings } from '../helpers/warnings.js';

const listeners = (signal: AbortSignal): number => getEventListeners(signal, 'abort').length;

test('onAbort: one listener for every follower; each stop removes its own follower, the last one the listener', (t) => {
  const controller = new AbortController();
  const calls: string[] = [];
  const fn = (reason: unknown): void => {
    calls.push(`fn ${String(reason)}`);
  };
  const stopFirst = onAbort(controller.signal, fn);
  const stopSecond = onAbort(controller.signal, fn); // the same function twice: two followers
  const stopOther = onAbort(controller.signal, (reason) => calls.push(`other ${String(reason)}`));
  t.is(listeners(controller.signal), 1);
  stopFirst();
  stopFirst(); // a second stop is a no-op, not the other follower's
  t.is(listeners(controller.signal), 1);
  stopOther();
  t.is(listeners(controller.signal), 1, 'one follower left');
  controller.abort('bye');
  t.deepEqual(calls, ['fn bye']);
  t.is(listeners(controller.signal), 0);
  stopSecond(); // after the abort: nothing left to remove
  t.is(listeners(controller.signal), 0);
});

test('onAbort: the last stop removes the listener, and a signal followed again gets a new one', (t) => {
  const controller = new AbortController();
  const calls: unknown[] = [];
  onAbort(controller.signal, () => calls.push('stopped'))();
  t.is(listeners(controller.signal), 0);
  const stop = onAbort(controller.signal, (reason) => calls.push(reason));
  t.is(listeners(controller.signal), 1);
  controller.abort('again');
  stop();
  t.deepEqual(calls, ['again']);
});

test('onAbort: a polyfilled signal without reason aborts its followers with an AbortError', (t) => {
  const controller = new PolyfilledAbortController();
  const signal = controller.signal as unknown as AbortSignal;
  const reasons: unknown[] = [];
  onAbort(signal, (reason) => reasons.push(reason));
  onAbort(signal, (reason) => reasons.push(reason));
  controller.abort();
  t.is(reasons.length, 2);
  t.true(reasons.every((r) => r instanceof DOMException && r.name === 'AbortError'));
});

test.serial(
  'one caller signal for 20 waiting calls, 20 fail-open runs and 20 held locks: one listener on it, no warning',
  async (t) => {
    const warnings = captureWarnings(t, 'MaxListenersExceededWarning');
    const clock = fakeTime(t);
    const memcache = new MemcacheStandIn();
    const memlock = memcache.memlock();
    t.teardown(() => memlock.close());
    const shutdown = new AbortController();
    // Node 20 warns past 10 listeners on an AbortSignal, Node 24 by default not: the same limit on both.
    setMaxListeners(10, shutdown.signal);
    const signal = shutdown.signal;

    const holder = await memlock.acquire('k', 'H');
    const waiting = Array.from({ length: 20 }, (_, i) =>
      memlock.tryWithLock('k', `w${i}`, () => 'ran', { wait: { timeoutMs: 60_000 }, signal }),
    );
    await clock.tickAsync(500);
    t.is(listeners(signal), 1, '20 waiting calls');

    const other = memcache.memlock();
    t.teardown(() => other.close());
    memcache.unreachable(true);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const unlocked = Array.from({ length: 20 }, (_, i) =>
      other.tryWithLock(`u${i}`, 'A', () => released, { failOpen: true, signal }),
    );
    await clock.tickAsync(1000);
    t.is(listeners(signal), 1, '20 waiting calls and 20 fail-open runs');
    memcache.unreachable(false);

    const held = await Promise.all(Array.from({ length: 20 }, (_, i) => other.acquire(`h${i}`, 'A', { signal })));
    t.is(listeners(signal), 1, 'and 20 held locks');

    shutdown.abort('shutting down');
    t.deepEqual(
      await Promise.all(waiting.map((call) => call.catch((reason: unknown) => reason))),
      Array.from({ length: 20 }, () => 'shutting down'),
      'every waiting call stops with the caller’s reason',
    );
    t.true(held.every((lock) => lock.signal.reason === 'shutting down'));
    release();
    await Promise.all(unlocked);
    await Promise.all(held.map((lock) => lock.release()));
    await holder.release();
    t.is(listeners(signal), 0);
    await clock.tickAsync(0); // warnings are emitted on process.nextTick
    await new Promise<void>((resolve) => process.nextTick(resolve));
    t.deepEqual(warnings, []);
  },
);
