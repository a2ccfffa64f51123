/**
 * Scenario 10: hostile input. Property-based (fast-check) over keys, client
 * ids, options, signals and fns: every call ends in success or a typed error
 * (TypeError, RangeError, a MemlockError subclass), or in exactly what the
 * caller's own fn threw or the caller's own signal carried — never an
 * unhandled rejection or an uncaught exception — and locks held meanwhile by
 * other clients are untouched. Owns its memcached.
 */
import test from 'ava';
import fc from 'fast-check';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortController as PolyfillController } from 'abort-controller';
import {
  Memlock,
  MemcacheLockClient,
  MemlockError,
  type Lock,
  type LockOptions,
  type WrapOptions,
} from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { RecordingClient } from './lib/recording.js';
import { trackUnhandled } from '../helpers/unhandled.js';

const unhandled = trackUnhandled();

let mc: MemcachedProcess;
let m: Memlock;
let other: Memlock;
const prefix = 'h:';
/** Locks held by other clients during the properties; keys nobody will generate. */
const sentinels: Array<{ lock: Lock; memcacheKey: string; value: string }> = [];

test.before(async () => {
  mc = await startMemcached();
  m = new Memlock({ servers: mc.address, prefix, leaseMs: 3000, heartbeatMs: 500, timeoutMs: 500 });
  other = new Memlock({ servers: mc.address, prefix, leaseMs: 3000, heartbeatMs: 500 });
  for (const [instance, i] of [
    [m, 0],
    [other, 1],
    [other, 2],
  ] as const) {
    const key = `sentinel-${randomUUID()}`;
    const lock = await instance.acquire(key, `sentinel-holder-${randomUUID()}`);
    const entry = await mc.rawGet(prefix + key);
    sentinels.push({ lock, memcacheKey: prefix + key, value: entry!.value.toString() });
    void i;
  }
});
test.after.always(async () => {
  await m?.close();
  await other?.close();
  await mc?.stop();
});

// --- arbitraries -----------------------------------------------------------

const loneSurrogates = fc.string({
  unit: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)),
  minLength: 1,
  maxLength: 4,
});
const text = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'grapheme', maxLength: 30 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 30 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 200, maxLength: 400 }) },
  { weight: 1, arbitrary: loneSurrogates },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '',
      ' ',
      'a b',
      '\t',
      '\n',
      '\r\n',
      '\u0000',
      '\u0085',
      '\u00a0',
      '\u2028',
      '\ufeff',
      'é'.repeat(125),
      'x'.repeat(251),
      'memlock:',
      'sha256:',
      ':',
      '::',
      'ml1:1:2:3',
    ),
  },
);
const notAString = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.bigInt(),
  fc.object(),
  fc.array(fc.string()),
  fc.constant(Symbol('s')),
);
const keyArb = fc.oneof({ weight: 8, arbitrary: text }, { weight: 1, arbitrary: notAString });
const clientIdArb = fc.oneof(
  { weight: 8, arbitrary: text },
  { weight: 1, arbitrary: notAString },
  // Larger than memcached's 1 MB item limit.
  { weight: 1, arbitrary: fc.constant('c'.repeat(1_100_000)) },
);
const numberish = fc.oneof(
  fc.integer({ min: -10_000, max: 100_000 }),
  fc.double(),
  fc.constantFrom(
    0,
    -1,
    1,
    1999,
    2000,
    2001,
    2500,
    4000,
    30 * 86_400_000,
    30 * 86_400_000 + 1,
    Number.NaN,
    Infinity,
    -Infinity,
    1e-9,
    Number.MAX_VALUE,
    Number.MIN_VALUE,
  ),
  fc.constantFrom('5000', null, true, {}, [] as unknown),
);
const waitArb = fc.oneof(
  fc.boolean(),
  fc.constant(undefined),
  fc.record({ timeoutMs: numberish, minDelayMs: numberish, maxDelayMs: numberish }, { requiredKeys: [] }),
  notAString,
);
type SignalSpec =
  | { kind: 'none' }
  | { kind: 'aborted' | 'during' | 'soon'; reason: unknown; withReason: boolean }
  | { kind: 'polyfill-aborted' | 'polyfill-during' }
  | { kind: 'garbage'; value: unknown };
const signalArb: fc.Arbitrary<SignalSpec> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ kind: 'none' as const }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constantFrom('aborted' as const, 'during' as const, 'soon' as const),
      reason: fc.anything(),
      withReason: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constantFrom('polyfill-aborted' as const, 'polyfill-during' as const) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('garbage' as const),
      value: fc.oneof(fc.object(), fc.integer(), fc.string(), fc.constant({ aborted: false })),
    }),
  },
);
type FnSpec =
  { kind: 'value' | 'async' | 'throws' | 'rejects'; value: unknown } | { kind: 'not-a-function'; value: unknown };
const fnArb: fc.Arbitrary<FnSpec> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constantFrom('value' as const, 'async' as const, 'throws' as const, 'rejects' as const),
      value: fc.anything(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('not-a-function' as const), value: fc.anything() }) },
);
/** Mostly plausible values, sometimes anything: both paths get exercised. */
const mostly = <T>(plausible: fc.Arbitrary<T>): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 4, arbitrary: plausible }, { weight: 1, arbitrary: numberish });
const optionsArb = fc.oneof(
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: notAString },
  {
    weight: 8,
    arbitrary: fc.record(
      {
        leaseMs: mostly(fc.integer({ min: 2000, max: 60_000 })),
        heartbeatMs: mostly(fc.integer({ min: 1, max: 1000 })),
        stealAfterMs: mostly(fc.integer({ min: 0, max: 100_000 })),
        wait: fc.oneof(
          {
            weight: 3,
            arbitrary: fc.record(
              { timeoutMs: fc.integer({ min: 0, max: 200 }), minDelayMs: fc.integer({ min: 0, max: 20 }) },
              { requiredKeys: [] },
            ),
          },
          { weight: 2, arbitrary: waitArb },
        ),
      },
      { requiredKeys: [] },
    ),
  },
);

// --- harness ---------------------------------------------------------------

interface Built {
  fn: unknown;
  options: unknown;
  /** Values the call may legitimately reject with besides typed errors (fn's throw, caller's reason). */
  own: Set<unknown>;
  expectAbortError: boolean;
  fnValue: unknown;
  cleanup: () => void;
}

function build(fnSpec: FnSpec, signalSpec: SignalSpec, options: unknown): Built {
  const own = new Set<unknown>();
  let expectAbortError = false;
  const timers: NodeJS.Timeout[] = [];
  let signal: unknown;
  let abortDuring: (() => void) | undefined;
  switch (signalSpec.kind) {
    case 'none':
      break;
    case 'aborted':
    case 'during':
    case 'soon': {
      const c = new AbortController();
      if (signalSpec.withReason && signalSpec.reason !== undefined) own.add(signalSpec.reason);
      else expectAbortError = true;
      const abort = (): void => (signalSpec.withReason ? c.abort(signalSpec.reason) : c.abort());
      if (signalSpec.kind === 'aborted') abort();
      if (signalSpec.kind === 'during') abortDuring = abort;
      if (signalSpec.kind === 'soon') timers.push(setTimeout(abort, Math.random() * 5));
      signal = c.signal;
      break;
    }
    case 'polyfill-aborted':
    case 'polyfill-during': {
      const c = new PolyfillController();
      expectAbortError = true;
      if (signalSpec.kind === 'polyfill-aborted') c.abort();
      else abortDuring = () => c.abort();
      signal = c.signal;
      break;
    }
    case 'garbage':
      signal = signalSpec.value;
      break;
  }
  let fn: unknown;
  switch (fnSpec.kind) {
    case 'value':
      fn = () => {
        abortDuring?.();
        return fnSpec.value;
      };
      break;
    case 'async':
      fn = async (s: AbortSignal) => {
        abortDuring?.();
        await sleep(1);
        void s.aborted;
        return fnSpec.value;
      };
      break;
    case 'throws':
      own.add(fnSpec.value);
      fn = () => {
        abortDuring?.();
        throw fnSpec.value;
      };
      break;
    case 'rejects':
      own.add(fnSpec.value);
      fn = async () => {
        abortDuring?.();
        await sleep(1);
        throw fnSpec.value;
      };
      break;
    case 'not-a-function':
      fn = fnSpec.value;
      break;
  }
  const withSignal =
    signalSpec.kind === 'none'
      ? options
      : options !== null && typeof options === 'object' && !Array.isArray(options)
        ? { ...options, signal }
        : options;
  return {
    fn,
    options: withSignal,
    own,
    expectAbortError,
    fnValue: fnSpec.kind === 'value' || fnSpec.kind === 'async' ? fnSpec.value : undefined,
    cleanup: () => timers.forEach((timer) => clearTimeout(timer)),
  };
}

function typed(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError || error instanceof MemlockError;
}

function acceptable(error: unknown, built: Built): boolean {
  if (typed(error) || built.own.has(error)) return true;
  if (built.expectAbortError && error instanceof DOMException && error.name === 'AbortError') return true;
  return false;
}

async function sentinelsIntact(): Promise<boolean> {
  for (const s of sentinels) {
    if (s.lock.signal.aborted) return false;
    const entry = await mc.rawGet(s.memcacheKey);
    if (entry?.value.toString() !== s.value) return false;
  }
  return true;
}

const failures: string[] = [];
const outcomes = new Map<string, number>();
function count(label: string): void {
  outcomes.set(label, (outcomes.get(label) ?? 0) + 1);
}
function describe(value: unknown): string {
  try {
    return `${typeof value} ${String(value).slice(0, 80)}`;
  } catch {
    return typeof value;
  }
}

// --- properties ------------------------------------------------------------

// Positive control for the property tests below, whose pass condition is an
// empty failure list: the oracle rejects what a broken library would produce.
test.serial(
  'positive control: the oracle flags an untyped rejection, a stray AbortError and a wrong value',
  async (t) => {
    const built = build({ kind: 'value', value: 7 }, { kind: 'none' }, undefined);
    t.false(acceptable(new Error('plain'), built), 'an untyped error is a failure');
    t.false(acceptable('a string', built));
    t.false(acceptable(new DOMException('x', 'AbortError'), built), 'an AbortError nobody asked for is a failure');
    t.true(acceptable(new TypeError('x'), built));
    t.true(acceptable(new MemlockError('x', 'ERR_MEMLOCK_CLOSED'), built));
    const throwing = build({ kind: 'throws', value: 'mine' }, { kind: 'none' }, undefined);
    t.true(acceptable('mine', throwing), "fn's own throw is acceptable");
    t.false(acceptable('mine', built));
    // The count of the held sentinel: a lock left behind is seen.
    const extra = await m.acquire('positive-control', 'X');
    t.is(m.heldCount, 2);
    await extra.release();
    t.is(m.heldCount, 1);
    built.cleanup();
    throwing.cleanup();
  },
);

test.serial('tryWithLock: success or a typed error (or what fn/caller supplied), never anything else', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      keyArb,
      clientIdArb,
      fnArb,
      signalArb,
      optionsArb,
      async (key, clientId, fnSpec, signalSpec, options) => {
        const built = build(fnSpec, signalSpec, options);
        try {
          const result = await m.tryWithLock(
            key as string,
            clientId as string,
            built.fn as () => unknown,
            built.options as LockOptions,
          );
          count('resolved');
          if (!Object.is(result, built.fnValue))
            failures.push(`resolved with ${describe(result)} instead of fn's value`);
        } catch (error) {
          count(typed(error) ? (error as Error).constructor.name : 'own');
          if (!acceptable(error, built)) failures.push(`rejected with ${describe(error)}`);
        } finally {
          built.cleanup();
        }
        // The one left is this instance's sentinel.
        if (m.heldCount !== 1) failures.push(`heldCount ${m.heldCount} after the call settled`);
      },
    ),
    { numRuns: 400, seed: Number(process.env.FC_SEED ?? 20_240_604) },
  );
  await sleep(50);
  t.log(`outcomes: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  t.deepEqual(failures, []);
  t.deepEqual(unhandled, [], 'no unhandled rejection or uncaught exception');
  t.true(await sentinelsIntact(), 'locks held by others are untouched');
});

test.serial('acquire/release, inspect and wrap: typed outcomes only; releases never reject', async (t) => {
  const local: string[] = [];
  await fc.assert(
    fc.asyncProperty(keyArb, clientIdArb, signalArb, optionsArb, async (key, clientId, signalSpec, options) => {
      const built = build({ kind: 'value', value: 1 }, signalSpec, options);
      try {
        const lock = await m.acquire(key as string, clientId as string, built.options as LockOptions);
        const first = lock.release();
        if (lock.release() !== first) local.push('release() not idempotent');
        await first.then(
          () => undefined,
          (e: unknown) => local.push(`release rejected: ${describe(e)}`),
        );
      } catch (error) {
        if (!acceptable(error, built)) local.push(`acquire rejected with ${describe(error)}`);
      } finally {
        built.cleanup();
      }
      try {
        const info = await m.inspect(key as string);
        if (info !== null && (typeof info.clientId !== 'string' || !(info.acquiredAt instanceof Date)))
          local.push('inspect returned junk');
      } catch (error) {
        if (!typed(error)) local.push(`inspect rejected with ${describe(error)}`);
      }
      try {
        const wrapOptions = {
          ...(typeof options === 'object' && options !== null && !Array.isArray(options) ? options : {}),
          key: () => key as string,
          clientId: clientId as string,
        } as WrapOptions<[], number>;
        const wrapped = m.wrap((...args: unknown[]) => args.length, wrapOptions);
        const value = await wrapped();
        if (value !== 1) local.push(`wrapped fn got ${value} args`);
      } catch (error) {
        if (!typed(error)) local.push(`wrap threw ${describe(error)}`);
      }
    }),
    { numRuns: 250, seed: Number(process.env.FC_SEED ?? 20_240_604) },
  );
  await sleep(50);
  t.deepEqual(local, []);
  t.is(m.heldCount, 1, 'only the sentinel lock of this instance is left');
  t.deepEqual(unhandled, []);
  t.true(await sentinelsIntact());
});

test.serial(
  'new Memlock(options): constructs or throws TypeError/RangeError synchronously, opens nothing',
  async (t) => {
    const serverish = fc.oneof(
      fc.string(),
      fc.constantFrom(
        '127.0.0.1:1',
        '127.0.0.1:0',
        '127.0.0.1:65536',
        '[::1]:11211',
        'u:p@127.0.0.1:11211',
        ',',
        ' , ',
        'host:port',
      ),
      notAString,
    );
    const local: string[] = [];
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record(
            {
              servers: fc.oneof(serverish, fc.array(serverish, { maxLength: 4 })),
              prefix: fc.oneof(text, notAString),
              leaseMs: numberish,
              heartbeatMs: numberish,
              timeoutMs: numberish,
              username: fc.oneof(fc.string(), notAString),
              password: fc.oneof(fc.string(), notAString),
              ref: fc.oneof(fc.boolean(), notAString),
              client: fc.oneof(fc.constant(undefined), fc.object(), fc.record({ servers: fc.constant('nope') })),
            },
            { requiredKeys: [] },
          ),
          notAString,
        ),
        async (options) => {
          let instance: Memlock | undefined;
          try {
            instance = new Memlock(options as ConstructorParameters<typeof Memlock>[0]);
          } catch (error) {
            if (!(error instanceof TypeError || error instanceof RangeError))
              local.push(`constructor threw ${describe(error)}`);
            return;
          }
          // Nothing was opened: close() resolves at once (no call is made, so no traffic leaves 127.0.0.1).
          await instance.close();
        },
      ),
      { numRuns: 300, seed: Number(process.env.FC_SEED ?? 20_240_604) },
    );
    t.deepEqual(local, []);
    t.deepEqual(unhandled, []);
  },
);

// --- found by the properties above (each was a library bug, now fixed) -----

// The entry value is 'ml1:<time>:<token>:' + clientId; an oversized id used to
// be sent anyway and came back as MemcacheUnavailableError (E2BIG): an input
// error reported as an outage, after a round trip.
test.serial('a clientId too large for memcached is a RangeError naming clientId, before any traffic', async (t) => {
  const { memlock, sent } = recorded(t);
  const error = await t.throwsAsync(memlock.tryWithLock('big-id', 'c'.repeat(1_100_000), () => 1));
  t.true(error instanceof RangeError, `got ${error?.constructor.name}: ${error?.message.slice(0, 80)}`);
  t.regex(error?.message ?? '', /clientId/);
  t.deepEqual(sent(), { add: 0, get: 0, casSet: 0, casDelete: 0 }, 'nothing sent');
  // The bound is on bytes, not on the request: an id at the limit works.
  t.is(await memlock.tryWithLock('big-id', 'c'.repeat(4096), () => 1), 1);
});

/** A Memlock whose every request is counted (the shared server also carries the sentinels' renewals). */
function recorded(t: { teardown: (fn: () => Promise<void>) => void }): {
  memlock: Memlock;
  sent: () => RecordingClient['sent'];
} {
  const recorder = new RecordingClient(new MemcacheLockClient({ servers: [mc.address], timeoutMs: 500 }));
  const memlock = new Memlock({ lockClient: recorder, prefix });
  t.teardown(async () => {
    await memlock.close();
    await recorder.close();
  });
  return { memlock, sent: () => ({ ...recorder.sent }) };
}

// UTF-8 encoding turns every lone surrogate into U+FFFD, so '\uD800' and
// '\uDBFF' used to be one lock. Ill-formed keys are now hashed from their
// UTF-16 code units.
test.serial('distinct keys with lone surrogates are distinct locks', async (t) => {
  const a = await m.acquire('\uD800', 'A');
  t.teardown(() => a.release());
  const b = await m.acquire('\uDBFF', 'B');
  t.teardown(() => b.release());
  t.not(await m.inspect('\uD800'), null);
  t.is((await m.inspect('\uDBFF'))?.clientId, 'B');
});

// A clientId with a lone surrogate did not survive the UTF-8 round trip, so the
// same id no longer took its own lock over (refused as held by "id\uFFFD").
// Such ids are now refused with a TypeError, before any traffic.
test.serial('a clientId with a lone surrogate is a TypeError naming clientId, before any traffic', async (t) => {
  const { memlock, sent } = recorded(t);
  const error = await t.throwsAsync(memlock.acquire('surrogate-id', 'id\uD800'));
  t.true(error instanceof TypeError, `got ${String(error)}`);
  t.regex(error?.message ?? '', /clientId/);
  t.deepEqual(sent(), { add: 0, get: 0, casSet: 0, casDelete: 0 }, 'nothing sent');
  t.is(await m.inspect('surrogate-id'), null);
});

// close() used to leave waiting calls to sleep out their backoff and then fail
// with MemcacheUnavailableError('memlock client is closed').
test.serial('close() rejects a waiting call at once with ERR_MEMLOCK_CLOSED', async (t) => {
  const holder = new Memlock({ servers: mc.address, prefix: 'close-wait:' });
  const waiter = new Memlock({ servers: mc.address, prefix: 'close-wait:' });
  t.teardown(() => holder.close());
  const held = await holder.acquire('k', 'holder');
  t.teardown(() => held.release());
  const waiting = waiter
    .acquire('k', 'waiter', { wait: { timeoutMs: 60_000, minDelayMs: 1000, maxDelayMs: 1000 } })
    .then(
      () => undefined,
      (error: unknown) => error,
    );
  await sleep(100); // refused once, now backing off
  const start = performance.now();
  await waiter.close();
  const error = await waiting;
  const ms = performance.now() - start;
  t.log(`waiter settled ${ms.toFixed(0)} ms after close() with ${String(error)}`);
  t.true(error instanceof MemlockError && error.code === 'ERR_MEMLOCK_CLOSED', `got ${String(error)}`);
  t.true(ms < 500, 'at once, not after its backoff');
});

test.serial('the sentinel locks of other clients survived everything', async (t) => {
  t.true(await sentinelsIntact());
  for (const s of sentinels) t.true(await s.lock.release());
});
