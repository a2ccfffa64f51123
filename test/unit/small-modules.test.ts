/**
 * Keys, options, errors and diagnostics: pure functions, no server.
 */
import test from 'ava';
import { spyOnPublish } from '../helpers/publish-spy.js';
import dc from 'node:diagnostics_channel';
import { createHash } from 'node:crypto';
import {
  MemlockError,
  LockNotAcquiredError,
  EmptyClientIdError,
  LockLostError,
  MemcacheUnavailableError,
  channels,
  defaults,
} from '../../src/index.js';
import { publish } from '../../src/diagnostics.js';
import { MAX_KEY_BYTES, memcacheKeyOf, queueKeyOf } from '../../src/keys.js';
import {
  MAX_CLIENT_ID_BYTES,
  MAX_LEASE_MS,
  MIN_LEASE_MS,
  checkCallArgs,
  checkLease,
  checkNumber,
  isSignalLike,
  reasonOf,
  resolveLockOptions,
  resolveMemlockOptions,
} from '../../src/options.js';
import { MemcacheStandIn } from '../../src/testing.js';

const sha = (prefix: string, key: string, encoding: BufferEncoding = 'utf8'): string =>
  prefix + 'sha256:' + createHash('sha256').update(key, encoding).digest('hex');

test('keys: prefix + key when it fits and is clean, else prefix + sha256:hex', (t) => {
  t.is(MAX_KEY_BYTES, 250);
  t.is(memcacheKeyOf('p:', 'plain'), 'p:plain');
  t.is(memcacheKeyOf('p:', 'ключ-🔒'), 'p:ключ-🔒');
  for (const dirty of [
    'has space',
    'tab\tkey',
    'nl\n',
    'ctl\u0001',
    'del\u007f',
    'c1\u0085',
    'nbsp\u00a0',
    'ideo\u3000',
  ]) {
    t.is(memcacheKeyOf('p:', dirty), sha('p:', dirty), JSON.stringify(dirty));
  }
  t.is(memcacheKeyOf('p:', 'x'.repeat(248)), 'p:' + 'x'.repeat(248), 'exactly 250 bytes fits');
  t.is(memcacheKeyOf('p:', 'x'.repeat(249)), sha('p:', 'x'.repeat(249)), '251 bytes is hashed');
  t.is(memcacheKeyOf('p:', 'é'.repeat(124)), 'p:' + 'é'.repeat(124), '248 bytes of 2-byte characters fit');
  t.is(memcacheKeyOf('p:', 'é'.repeat(125)), sha('p:', 'é'.repeat(125)));
  t.is(memcacheKeyOf('p:', '€'.repeat(82)), 'p:' + '€'.repeat(82), '3-byte characters counted in bytes');
  t.is(memcacheKeyOf('p:', '€'.repeat(83)), sha('p:', '€'.repeat(83)));
  // Lone surrogates hash from UTF-16 code units, so distinct strings stay distinct.
  t.is(memcacheKeyOf('p:', '\uD800'), sha('p:', '\uD800', 'utf16le'));
  t.not(memcacheKeyOf('p:', '\uD800'), memcacheKeyOf('p:', '\uDBFF'));
  t.is(sha('p:', 'x').length, 'p:sha256:'.length + 64);
  t.regex(queueKeyOf('p:', 'p:k'), /^p:sha256q:[0-9a-f]{64}$/);
  t.is(queueKeyOf('p:', 'p:k'), 'p:sha256q:' + createHash('sha256').update('p:k').digest('hex'));
});

test('options: defaults and bounds', (t) => {
  t.deepEqual(
    { ...defaults, wait: { ...defaults.wait }, turn: { ...defaults.turn } },
    {
      prefix: 'memlock:',
      leaseMs: 16_000,
      heartbeatMs: 1000,
      timeoutMs: 500,
      servers: 'localhost:11211',
      wait: { timeoutMs: 30_000, minDelayMs: 2, maxDelayMs: 500 },
      turn: { maxMs: 5, maxHandoffs: 16 },
    },
  );
  t.true(Object.isFrozen(defaults) && Object.isFrozen(defaults.wait) && Object.isFrozen(defaults.turn));
  t.is(MIN_LEASE_MS, 2000);
  t.is(MAX_LEASE_MS, 30 * 24 * 3600 * 1000);
  t.is(MAX_CLIENT_ID_BYTES, 4096);
  const saved = process.env.MEMCACHE_SERVERS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  });
  delete process.env.MEMCACHE_SERVERS;
  const resolved = resolveMemlockOptions(undefined);
  t.deepEqual(resolved, {
    ...resolved,
    prefix: 'memlock:',
    leaseMs: 16_000,
    heartbeatMs: 1000,
    timeoutMs: 500,
    servers: ['localhost:11211'],
    ref: true,
    turn: { maxMs: 5, maxHandoffs: 16 },
  });
  t.deepEqual(resolveMemlockOptions({ turn: { maxMs: 0 } }).turn, { maxMs: 0, maxHandoffs: 16 });
  t.deepEqual(resolveMemlockOptions({ turn: { maxHandoffs: 0 } }).turn, { maxMs: 5, maxHandoffs: 0 });
  for (const [turn, error, pattern] of [
    [3, TypeError, /`turn` to be an object/],
    [{ maxMs: '5' }, TypeError, /`turn.maxMs` to be a number/],
    [{ maxMs: -1 }, RangeError, /`turn.maxMs`/],
    [{ maxMs: Infinity }, RangeError, /`turn.maxMs`/],
    [{ maxHandoffs: 1.5 }, RangeError, /`turn.maxHandoffs` to be an integer/],
    [{ maxHandoffs: -1 }, RangeError, /`turn.maxHandoffs`/],
  ] as const)
    t.throws(() => resolveMemlockOptions({ turn } as never), { instanceOf: error, message: pattern });
  process.env.MEMCACHE_SERVERS = ' a:1 , b:2 ,';
  t.deepEqual(resolveMemlockOptions({}).servers, ['a:1', 'b:2']);
  t.deepEqual(resolveMemlockOptions({ servers: 'x:1,y:2' }).servers, ['x:1', 'y:2']);
  t.deepEqual(resolveMemlockOptions({ servers: [' x:1 '] }).servers, ['x:1']);
  t.deepEqual(
    resolveMemlockOptions({ lockClient: new MemcacheStandIn().client() }).servers,
    [],
    'a lockClient needs no servers',
  );
  t.is(resolveMemlockOptions({ ref: false }).ref, false);
  t.is(resolveMemlockOptions({ prefix: 'p'.repeat(179) }).prefix.length, 179);
  t.throws(() => resolveMemlockOptions({ prefix: 'p'.repeat(180) }), { instanceOf: RangeError, message: /`prefix`/ });
  t.throws(() => resolveMemlockOptions({ ref: 1 as never }), { instanceOf: TypeError, message: /`ref`/ });
  t.throws(() => resolveMemlockOptions({ username: 1 as never }), { instanceOf: TypeError, message: /`username`/ });
  t.throws(() => resolveMemlockOptions({ password: {} as never }), { instanceOf: TypeError, message: /`password`/ });
  t.throws(() => resolveMemlockOptions({ servers: ' , ' }), { instanceOf: RangeError, message: /`servers`/ });
  t.throws(() => resolveMemlockOptions({ timeoutMs: 60_001 }), { instanceOf: RangeError, message: /`timeoutMs`/ });
  t.is(resolveMemlockOptions({ timeoutMs: 60_000 }).timeoutMs, 60_000);
  t.is(resolveMemlockOptions({ timeoutMs: 1 }).timeoutMs, 1);
  t.throws(() => resolveMemlockOptions([] as never), { instanceOf: TypeError, message: /`options`/ });
  t.throws(() => resolveMemlockOptions(null), { instanceOf: TypeError, message: /got null/ });
});

test('options: numbers and lease pairs name the option and the value', (t) => {
  t.is(checkNumber('x', 5, 0, 10), 5);
  t.is(checkNumber('x', 0, 0, 10), 0);
  t.is(checkNumber('x', 10, 0, 10), 10);
  t.throws(() => checkNumber('x', 11, 0, 10), {
    instanceOf: RangeError,
    message: 'Expected `x` to be between 0 and 10, got 11',
  });
  t.throws(() => checkNumber('x', -1, 0, 10), { instanceOf: RangeError });
  t.throws(() => checkNumber('x', Number.NaN, 0, 10), {
    instanceOf: TypeError,
    message: 'Expected `x` to be a number, got number',
  });
  t.throws(() => checkNumber('x', '5', 0, 10), {
    instanceOf: TypeError,
    message: 'Expected `x` to be a number, got string "5"',
  });
  t.throws(() => checkNumber('x', 'y'.repeat(50), 0, 10), { message: new RegExp(`got string "${'y'.repeat(40)}…"`) });
  t.throws(() => checkNumber('x', null, 0, 10), { message: /got null/ });
  t.throws(() => checkNumber('x', Infinity, 0, 10), {
    instanceOf: RangeError,
    message: 'Expected `x` to be finite, got Infinity',
  });
  t.is(checkNumber('x', Infinity, 0, Infinity, true), Infinity);
  t.deepEqual(checkLease(4000, 2000), { leaseMs: 4000, heartbeatMs: 2000 });
  t.throws(() => checkLease(4000, 2000.5), { instanceOf: RangeError, message: /at most leaseMs \/ 2 \(2000\)/ });
  t.throws(() => checkLease(4000, 0), { instanceOf: RangeError, message: /`heartbeatMs` to be > 0/ });
  t.throws(() => checkLease(1999, 500), { instanceOf: RangeError, message: /`leaseMs`/ });
  t.deepEqual(checkLease(2000, 1000), { leaseMs: 2000, heartbeatMs: 1000 });
  t.deepEqual(checkLease(MAX_LEASE_MS, 1), { leaseMs: MAX_LEASE_MS, heartbeatMs: 1 });
  t.throws(() => checkLease(MAX_LEASE_MS + 1, 1), { instanceOf: RangeError });
});

test('options: per-call resolution', (t) => {
  const instance = resolveMemlockOptions({ servers: 'x:1', leaseMs: 10_000, heartbeatMs: 3000 });
  const base = resolveLockOptions(undefined, instance);
  t.like(base, {
    leaseMs: 10_000,
    heartbeatMs: 3000,
    ttlSeconds: 11,
    stealAfterMs: undefined,
    wait: undefined,
    signal: undefined,
    holdTtlSeconds: 0,
    failOpen: false,
  });
  t.deepEqual(resolveLockOptions(null, instance), base);
  // A shorter per-call lease lowers the instance heartbeat to fit.
  t.like(resolveLockOptions({ leaseMs: 4000 }, instance), { leaseMs: 4000, heartbeatMs: 2000, ttlSeconds: 5 });
  t.like(resolveLockOptions({ leaseMs: 8000 }, instance), { heartbeatMs: 3000 });
  t.like(resolveLockOptions({ leaseMs: 2001 }, instance), { ttlSeconds: 4 });
  t.like(resolveLockOptions({ heartbeatMs: 100 }, instance), { heartbeatMs: 100 });
  t.like(resolveLockOptions({ stealAfterMs: 0 }, instance), { stealAfterMs: 0 });
  t.like(resolveLockOptions({ holdAfterMs: 1001 }, instance), { holdTtlSeconds: 4 });
  t.like(resolveLockOptions({ failOpen: true }, instance), { failOpen: true });
  t.throws(() => resolveLockOptions({ failOpen: 1 as never }, instance), {
    instanceOf: TypeError,
    message: /`failOpen`/,
  });
  t.throws(() => resolveLockOptions({ holdAfterMs: -1 }, instance), {
    instanceOf: RangeError,
    message: /`holdAfterMs`/,
  });
  t.deepEqual(resolveLockOptions({ wait: true }, instance).wait, { timeoutMs: 30_000, minDelayMs: 2, maxDelayMs: 500 });
  t.is(resolveLockOptions({ wait: false }, instance).wait, undefined);
  t.deepEqual(resolveLockOptions({ wait: {} }, instance).wait, { timeoutMs: 30_000, minDelayMs: 2, maxDelayMs: 500 });
  t.deepEqual(resolveLockOptions({ wait: { minDelayMs: 800 } }, instance).wait, {
    timeoutMs: 30_000,
    minDelayMs: 800,
    maxDelayMs: 800,
  });
  t.deepEqual(resolveLockOptions({ wait: { timeoutMs: 0, minDelayMs: 5, maxDelayMs: 5 } }, instance).wait, {
    timeoutMs: 0,
    minDelayMs: 5,
    maxDelayMs: 5,
  });
  t.throws(() => resolveLockOptions({ wait: { minDelayMs: 3_600_001 } }, instance), {
    instanceOf: RangeError,
    message: /`wait.minDelayMs`/,
  });
  t.throws(() => resolveLockOptions({ wait: { maxDelayMs: 3_600_001 } }, instance), {
    instanceOf: RangeError,
    message: /`wait.maxDelayMs`/,
  });
  t.throws(() => resolveLockOptions({ wait: [] as never }, instance), { instanceOf: TypeError, message: /`wait`/ });
  const signal = new AbortController().signal;
  t.is(resolveLockOptions({ signal }, instance).signal, signal);
  t.is(resolveLockOptions({ signal: null as never }, instance).signal, undefined);
});

// API.md 3: "`Infinity` waits until the signal aborts" (it was once a RangeError).
test('options: wait.timeoutMs Infinity is accepted (API.md 3)', (t) => {
  const instance = resolveMemlockOptions({ servers: 'x:1' });
  t.is(resolveLockOptions({ wait: { timeoutMs: Infinity } }, instance).wait?.timeoutMs, Infinity);
});

test('options: call arguments and signals', (t) => {
  t.notThrows(() => checkCallArgs('k', 'A'));
  t.throws(() => checkCallArgs(1, 'A'), {
    instanceOf: TypeError,
    message: 'Expected `key` to be a string, got number',
  });
  t.throws(() => checkCallArgs('k', ''), { instanceOf: EmptyClientIdError });
  t.notThrows(() => checkCallArgs('k', 'x'.repeat(MAX_CLIENT_ID_BYTES)));
  t.notThrows(() => checkCallArgs('k', 'é'.repeat(MAX_CLIENT_ID_BYTES / 2)));
  t.throws(() => checkCallArgs('k', 'x'.repeat(MAX_CLIENT_ID_BYTES + 1)), {
    instanceOf: RangeError,
    message: /`clientId`.*4096.*4097/,
  });
  t.throws(() => checkCallArgs('k', 'é'.repeat(MAX_CLIENT_ID_BYTES / 2 + 1)), {
    instanceOf: RangeError,
    message: /got 4098/,
  });
  t.throws(() => checkCallArgs('k', 'a\uD800'), { instanceOf: TypeError, message: /lone surrogate/ });
  t.true(isSignalLike(new AbortController().signal));
  t.true(isSignalLike({ aborted: false, addEventListener() {}, removeEventListener() {} }));
  t.false(isSignalLike({ aborted: false, addEventListener() {} }));
  t.false(isSignalLike({ aborted: 'no', addEventListener() {}, removeEventListener() {} }));
  t.false(isSignalLike({ addEventListener() {}, removeEventListener() {} }));
  t.false(isSignalLike(null));
  const controller = new AbortController();
  controller.abort('why');
  t.is(reasonOf(controller.signal), 'why');
  const polyfilled = { aborted: true } as AbortSignal;
  const reason = reasonOf(polyfilled) as DOMException;
  t.is(reason.name, 'AbortError');
  t.is(reason.message, 'This operation was aborted');
});

test('errors: one base class, stable codes, names, messages', (t) => {
  const base = new MemlockError('m', 'ERR_MEMLOCK_CLOSED', { cause: 1 });
  t.is(base.code, 'ERR_MEMLOCK_CLOSED');
  t.is(base.name, 'MemlockError');
  t.is(base.cause, 1);
  const refused = new LockNotAcquiredError('k', 'A');
  t.true(refused instanceof MemlockError);
  t.like(refused, {
    code: 'ERR_MEMLOCK_NOT_ACQUIRED',
    name: 'LockNotAcquiredError',
    key: 'k',
    holder: 'A',
    done: false,
    message: 'Lock "k" is held by "A"',
  });
  t.like(new LockNotAcquiredError('k', 'host:1:abc', { done: true }), {
    done: true,
    message: 'Lock "k" was completed by "host:1:abc" (holdAfterMs)',
  });
  t.is(new LockNotAcquiredError('k').message, 'Lock "k" is held by another client', 'holder unknown');
  t.is(
    new LockNotAcquiredError('k', undefined, { done: true }).message,
    'Lock "k" was completed recently (holdAfterMs)',
  );
  t.is(new LockNotAcquiredError('k"\n', 'x').message, 'Lock "k\\"\\n" is held by "x"', 'quoted as JSON strings');
  t.is(
    new LockNotAcquiredError('k', 'h'.repeat(4096)).message,
    `Lock "k" is held by "${'h'.repeat(200)}…"`,
    'a long clientId is cut at 200 characters',
  );
  t.is(new LockNotAcquiredError('k', undefined, { message: 'custom' }).message, 'custom');
  t.like(new EmptyClientIdError(), {
    code: 'ERR_MEMLOCK_EMPTY_CLIENT_ID',
    name: 'EmptyClientIdError',
    message: 'clientId must be a non-empty string',
  });
  for (const [kind, text] of [
    ['gone', /evicted, flushed or deleted/],
    ['taken', /taken by another acquisition/],
    ['unreachable', /unreachable/],
    ['deadline', /event loop stalled/],
    ['closed', /close\(\)/],
  ] as const) {
    const lost = new LockLostError('k', kind);
    t.like(lost, { code: 'ERR_MEMLOCK_LOST', name: 'LockLostError', kind, key: 'k', fnError: undefined });
    t.regex(lost.message, text);
    t.regex(lost.message, /^Lock "k" was lost: /);
  }
  const down = new MemcacheUnavailableError('down', { server: 'h:1', cause: 'c' });
  t.like(down, { code: 'ERR_MEMLOCK_UNAVAILABLE', name: 'MemcacheUnavailableError', server: 'h:1', cause: 'c' });
  t.is(new MemcacheUnavailableError('down').server, undefined);
  t.true(new MemcacheUnavailableError('down').mayHaveApplied, 'unknown means it may have been applied');
  t.false(new MemcacheUnavailableError('down', { mayHaveApplied: false }).mayHaveApplied);
});

test.serial('diagnostics: publish builds the message only when someone listens', (t) => {
  const channel = dc.channel('memlock:test-only') as unknown as Parameters<typeof publish>[0];
  let built = 0;
  const build = (): { n: number } => ({ n: ++built });
  publish(channel, build);
  t.is(built, 0, 'no subscriber: the message is never built');
  const seen: unknown[] = [];
  const listener = (message: unknown): void => {
    seen.push(message);
  };
  channel.subscribe(listener);
  publish(channel, build);
  t.is(built, 1);
  t.deepEqual(seen, [{ n: 1 }]);
  channel.unsubscribe(listener);
  t.deepEqual(Object.keys(channels).sort(), [
    'acquired',
    'failOpen',
    'heartbeatError',
    'lost',
    'refused',
    'releaseFailed',
    'released',
    'stolen',
  ]);
  t.deepEqual(
    Object.values(channels)
      .map((c) => c.name)
      .sort(),
    [
      'memlock:acquired',
      'memlock:fail-open',
      'memlock:heartbeat-error',
      'memlock:lost',
      'memlock:refused',
      'memlock:release-failed',
      'memlock:released',
      'memlock:stolen',
    ],
  );
});

test.serial('diagnostics: an unobserved lock cycle publishes nothing', async (t) => {
  const calls = spyOnPublish(t);
  const memcache = new MemcacheStandIn();
  const m = memcache.memlock();
  await m.tryWithLock('k', 'A', () => 1);
  const held = await m.acquire('k', 'A');
  await t.throwsAsync(m.acquire('k', 'B'));
  memcache.evict('memlock:k');
  await held.release();
  await m.close();
  t.deepEqual(calls, []);
});

test('options: every validation names its option (the unit-tier twin of test/integration/validation.test.ts)', (t) => {
  const named = (fn: () => unknown, type: typeof TypeError | typeof RangeError, message: string | RegExp): void => {
    const error = t.throws(fn);
    t.true(error instanceof type, `${error?.name}: ${error?.message}`);
    if (typeof message === 'string') t.is(error?.message, message);
    else t.regex(error?.message ?? '', message);
  };
  named(() => resolveMemlockOptions({ prefix: 5 as never }), TypeError, 'Expected `prefix` to be a string, got number');
  named(
    () => resolveMemlockOptions({ prefix: 'a b' }),
    RangeError,
    'Expected `prefix` to hold no whitespace or control characters',
  );
  named(() => resolveMemlockOptions({ prefix: 'a\u0001' }), RangeError, /`prefix`/);
  named(
    () => resolveMemlockOptions({ username: 5 as never }),
    TypeError,
    'Expected `username` to be a string, got number',
  );
  t.is(resolveMemlockOptions({ servers: 'x:1', username: 'u', password: 'p' }).username, 'u');
  named(
    () => resolveMemlockOptions({ servers: ['a:1', 5] as never }),
    TypeError,
    'Expected `servers` to be a string or an array of strings, got object',
  );
  named(() => resolveMemlockOptions({ servers: 5 as never }), TypeError, /`servers`/);
  named(
    () => resolveMemlockOptions({ client: {} as never }),
    TypeError,
    'Expected `client` to be a memjs Client (with a `servers` array)',
  );
  named(() => resolveMemlockOptions({ client: { servers: 'x' } as never }), TypeError, /`client`/);
  named(() => resolveMemlockOptions({ client: 'x' as never }), TypeError, /`client`/);
  const saved = process.env.MEMCACHE_SERVERS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  });
  process.env.MEMCACHE_SERVERS = 'env:1';
  t.deepEqual(
    resolveMemlockOptions({ client: { servers: [] } as never }).servers,
    [],
    'a memjs client needs no servers',
  );
  t.deepEqual(resolveMemlockOptions({}).servers, ['env:1']);
  named(() => resolveMemlockOptions('x'), TypeError, 'Expected `options` to be an object, got string "x"');
  named(() => resolveMemlockOptions(5), TypeError, 'Expected `options` to be an object, got number');
  named(() => checkLease(4000, 'x'), TypeError, 'Expected `heartbeatMs` to be a number, got string "x"');
  named(() => checkCallArgs('', 'A'), TypeError, 'Expected `key` to be a non-empty string');
  named(() => checkCallArgs('k', 5), TypeError, 'Expected `clientId` to be a string, got number');
  // 1366 units of 3 bytes = 4098 bytes; 1365 = 4095.
  named(() => checkCallArgs('k', '€'.repeat(1366)), RangeError, /got 4098/);
  t.notThrows(() => checkCallArgs('k', '€'.repeat(1365)));
  t.notThrows(() => checkCallArgs('k', 'x'.repeat(1366)), 'a long ASCII id under the byte bound');
  const instance = resolveMemlockOptions({ servers: 'x:1' });
  named(() => resolveLockOptions('x', instance), TypeError, 'Expected `options` to be an object, got string "x"');
  named(() => resolveLockOptions([], instance), TypeError, /`options`/);
  named(() => resolveLockOptions({ stealAfterMs: -1 }, instance), RangeError, /^Expected `stealAfterMs` to be between/);
  named(
    () => resolveLockOptions({ signal: {} as never }, instance),
    TypeError,
    'Expected `signal` to be an AbortSignal, got object',
  );
  named(
    () =>
      resolveLockOptions(
        { signal: { aborted: false, addEventListener: 1, removeEventListener() {} } as never },
        instance,
      ),
    TypeError,
    /`signal`/,
  );
  named(
    () => resolveLockOptions({ wait: { minDelayMs: 100, maxDelayMs: 10 } }, instance),
    RangeError,
    'Expected `wait.maxDelayMs` (10) to be >= wait.minDelayMs (100)',
  );
  t.notThrows(() => resolveLockOptions({ wait: { minDelayMs: 10, maxDelayMs: 10 } }, instance));
  named(
    () => resolveLockOptions({ wait: { timeoutMs: -1 } }, instance),
    RangeError,
    /^Expected `wait.timeoutMs` to be between 0 and Infinity/,
  );
  named(() => resolveLockOptions({ wait: { timeoutMs: 'x' as never } }, instance), TypeError, /`wait.timeoutMs`/);
  t.is(resolveLockOptions({ wait: { timeoutMs: 0 } }, instance).wait?.timeoutMs, 0);
  t.throws(() => checkNumber('x', 'a'.repeat(41), 0, 1), {
    message: `Expected \`x\` to be a number, got string "${'a'.repeat(40)}…"`,
  });
  t.throws(() => checkNumber('x', 'a'.repeat(40), 0, 1), {
    message: `Expected \`x\` to be a number, got string "${'a'.repeat(40)}"`,
  });
});

test.serial(
  'options: servers lists, protocol, tls and SASL credentials (own connections, a memjs client, a lockClient)',
  (t) => {
    const saved = {
      servers: process.env.MEMCACHE_SERVERS,
      user: process.env.MEMCACHE_USERNAME,
      pass: process.env.MEMCACHE_PASSWORD,
    };
    t.teardown(() => {
      for (const [name, value] of [
        ['MEMCACHE_SERVERS', saved.servers],
        ['MEMCACHE_USERNAME', saved.user],
        ['MEMCACHE_PASSWORD', saved.pass],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });
    delete process.env.MEMCACHE_USERNAME;
    delete process.env.MEMCACHE_PASSWORD;
    t.deepEqual(
      resolveMemlockOptions({ servers: ' a:1 , ,b:2 ' }).servers,
      ['a:1', 'b:2'],
      'trimmed, empty entries dropped',
    );
    t.deepEqual(resolveMemlockOptions({ servers: ['a:1', ' '] }).servers, ['a:1']);
    t.throws(() => resolveMemlockOptions({ servers: ' , ' }), {
      instanceOf: RangeError,
      message: 'Expected `servers` to name at least one server',
    });
    t.like(resolveMemlockOptions({ servers: 'a:1' }), {
      protocol: 'binary',
      tls: false,
      username: undefined,
      password: undefined,
      ref: true,
    });
    t.is(resolveMemlockOptions({ servers: 'a:1', protocol: 'meta' }).protocol, 'meta');
    t.is(resolveMemlockOptions({ servers: 'a:1', protocol: 'text' }).protocol, 'text');
    t.throws(() => resolveMemlockOptions({ servers: 'a:1', protocol: 5 as never }), {
      instanceOf: TypeError,
      message: "Expected `protocol` to be 'binary', 'meta' or 'text', got number",
    });
    t.throws(() => resolveMemlockOptions({ servers: 'a:1', protocol: 'ascii' as never }), {
      instanceOf: RangeError,
      message: "Expected `protocol` to be 'binary', 'meta' or 'text', got string \"ascii\"",
    });
    const ca = { ca: 'pem' };
    t.is(resolveMemlockOptions({ servers: 'a:1', tls: ca }).tls, ca);
    t.is(resolveMemlockOptions({ servers: 'a:1', tls: true }).tls, true);
    t.throws(() => resolveMemlockOptions({ servers: 'a:1', tls: 'yes' as never }), {
      instanceOf: TypeError,
      message: 'Expected `tls` to be a boolean or tls.connect options, got string "yes"',
    });
    t.throws(() => resolveMemlockOptions({ servers: 'a:1', tls: 5 as never }), {
      instanceOf: TypeError,
      message: /`tls`/,
    });
    // SASL credentials need the binary protocol; the error says where they came from.
    const sasl = (options: Parameters<typeof resolveMemlockOptions>[0]): string =>
      t.throws(() => resolveMemlockOptions(options), { instanceOf: RangeError })?.message ?? '';
    t.is(
      sasl({ servers: 'a:1', protocol: 'meta', username: 'u' }),
      "Expected `protocol` to be 'binary' with SASL credentials (from the `username` option): memcached has SASL only on the binary protocol",
    );
    t.is(
      sasl({ servers: 'a:1', protocol: 'text', username: 'u' }),
      "Expected `protocol` to be 'binary' with SASL credentials (from the `username` option): memcached has SASL only on the binary protocol",
    );
    t.regex(sasl({ servers: 'u:p@a:1', protocol: 'meta' }), /\(from a `servers` entry\)/);
    t.regex(sasl({ servers: 'u:p@a:1', protocol: 'text' }), /\(from a `servers` entry\)/);
    t.regex(sasl({ servers: ['a:1', 'u:p@b:2'], protocol: 'meta' }), /\(from a `servers` entry\)/, 'any entry');
    process.env.MEMCACHE_USERNAME = 'envuser';
    process.env.MEMCACHE_PASSWORD = 'envpass';
    t.regex(sasl({ servers: 'a:1', protocol: 'meta' }), /\(from MEMCACHE_USERNAME\)/);
    t.like(resolveMemlockOptions({ servers: 'a:1' }), { username: 'envuser', password: 'envpass' });
    t.like(
      resolveMemlockOptions({ servers: 'a:1', username: 'u', password: 'p' }),
      { username: 'u', password: 'p' },
      'options win over the environment',
    );
    t.throws(
      () => resolveMemlockOptions({ servers: 'bad:port:x' }),
      { instanceOf: RangeError, message: /`servers`/ },
      'own connections: every entry is parsed',
    );
    // A memjs client: binary, no TLS, its own credentials and servers.
    const client = { servers: [] } as never;
    t.notThrows(() => resolveMemlockOptions({ client, protocol: 'binary' }));
    t.throws(() => resolveMemlockOptions({ client, protocol: 'meta' }), {
      instanceOf: RangeError,
      message: "Expected `protocol` to be 'binary' with a memjs `client` (memjs speaks only the binary protocol)",
    });
    t.throws(() => resolveMemlockOptions({ client, protocol: 'text' }), {
      instanceOf: RangeError,
      message: /`protocol` to be 'binary' with a memjs `client`/,
    });
    t.throws(() => resolveMemlockOptions({ client, tls: true }), {
      instanceOf: RangeError,
      message: 'Expected `tls` to be false with a memjs `client` (memjs has no TLS)',
    });
    t.notThrows(() => resolveMemlockOptions({ client, tls: false }));
    // A lockClient: none of these apply.
    const lockClient = new MemcacheStandIn().client();
    t.notThrows(() => resolveMemlockOptions({ lockClient, protocol: 'meta', tls: true, servers: 'bad:port:x' }));
    t.deepEqual(resolveMemlockOptions({ lockClient }).servers, [], 'no servers read from the environment');
  },
);
