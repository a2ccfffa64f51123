/**
 * Bad input gets a clear, typed error naming the option, and touches nothing:
 * every case runs against a server whose command counters must not move.
 */
import test from 'ava';
import { Memlock, EmptyClientIdError, defaults } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';

let mc: MemcachedProcess;
let m: Memlock;

test.before(async () => {
  mc = await startMemcached();
  m = new Memlock({ servers: mc.address });
});
test.after.always(async () => {
  await m?.close();
  await mc?.stop();
});

async function counters(): Promise<number> {
  const s = await mc.stats();
  return Number(s.cmd_get) + Number(s.cmd_set) + Number(s.cmd_touch) + Number(s.delete_hits) + Number(s.delete_misses);
}

const fn = (): number => 1;
type Case = [
  title: string,
  call: () => Promise<unknown>,
  type: typeof TypeError | typeof RangeError | typeof EmptyClientIdError,
  mention: RegExp,
];

const callCases: Case[] = [
  ['non-string key', () => m.tryWithLock(42 as unknown as string, 'A', fn), TypeError, /`key`/],
  ['empty key', () => m.tryWithLock('', 'A', fn), TypeError, /`key`/],
  ['non-string clientId', () => m.tryWithLock('k', undefined as unknown as string, fn), TypeError, /`clientId`/],
  ['empty clientId', () => m.tryWithLock('k', '', fn), EmptyClientIdError, /clientId/],
  ['non-function fn', () => m.tryWithLock('k', 'A', 'nope' as unknown as () => void), TypeError, /`fn`/],
  ['leaseMs below 2 s', () => m.tryWithLock('k', 'A', fn, { leaseMs: 1999 }), RangeError, /`leaseMs`/],
  [
    'leaseMs above 30 days',
    () => m.tryWithLock('k', 'A', fn, { leaseMs: 30 * 86_400_000 + 1 }),
    RangeError,
    /`leaseMs`/,
  ],
  ['leaseMs NaN', () => m.tryWithLock('k', 'A', fn, { leaseMs: Number.NaN }), TypeError, /`leaseMs`/],
  [
    'leaseMs Infinity',
    () => m.tryWithLock('k', 'A', fn, { leaseMs: Number.POSITIVE_INFINITY }),
    RangeError,
    /`leaseMs`/,
  ],
  [
    'leaseMs string',
    () => m.tryWithLock('k', 'A', fn, { leaseMs: '5000' as unknown as number }),
    TypeError,
    /`leaseMs`/,
  ],
  [
    'heartbeatMs above leaseMs / 2',
    () => m.tryWithLock('k', 'A', fn, { leaseMs: 4000, heartbeatMs: 2001 }),
    RangeError,
    /`heartbeatMs`/,
  ],
  ['heartbeatMs zero', () => m.tryWithLock('k', 'A', fn, { heartbeatMs: 0 }), RangeError, /`heartbeatMs`/],
  ['heartbeatMs negative', () => m.tryWithLock('k', 'A', fn, { heartbeatMs: -5 }), RangeError, /`heartbeatMs`/],
  ['stealAfterMs negative', () => m.tryWithLock('k', 'A', fn, { stealAfterMs: -1 }), RangeError, /`stealAfterMs`/],
  ['stealAfterMs NaN', () => m.tryWithLock('k', 'A', fn, { stealAfterMs: Number.NaN }), TypeError, /`stealAfterMs`/],
  [
    'wait not boolean/object',
    () => m.tryWithLock('k', 'A', fn, { wait: 'yes' as unknown as boolean }),
    TypeError,
    /`wait`/,
  ],
  [
    'wait.timeoutMs negative',
    () => m.tryWithLock('k', 'A', fn, { wait: { timeoutMs: -1 } }),
    RangeError,
    /`wait.timeoutMs`/,
  ],
  [
    'wait.maxDelayMs < minDelayMs',
    () => m.tryWithLock('k', 'A', fn, { wait: { minDelayMs: 100, maxDelayMs: 10 } }),
    RangeError,
    /`wait.maxDelayMs`/,
  ],
  ['signal not a signal', () => m.tryWithLock('k', 'A', fn, { signal: {} as AbortSignal }), TypeError, /`signal`/],
  ['options not an object', () => m.tryWithLock('k', 'A', fn, 7 as unknown as object), TypeError, /`options`/],
  ['acquire with empty clientId', () => m.acquire('k', ''), EmptyClientIdError, /clientId/],
  ['acquire with non-string key', () => m.acquire(null as unknown as string, 'A'), TypeError, /`key`/],
  ['inspect with empty key', () => m.inspect(''), TypeError, /`key`/],
  ['a misspelled option', () => m.tryWithLock('k', 'A', fn, { waitt: true } as never), TypeError, /`waitt`.*`wait`/],
  [
    'a misspelled wait option',
    () => m.tryWithLock('k', 'A', fn, { wait: { timeout: 5 } } as never),
    TypeError,
    /`timeout` in the `wait` options.*`timeoutMs`/,
  ],
  ['a misspelled acquire option', () => m.acquire('k', 'A', { lease: 5000 } as never), TypeError, /`lease`.*`leaseMs`/],
  [
    'a wrapped call with a misspelled option',
    async () => m.wrap(async () => 1, { key: () => 'k', failopen: true } as never)(),
    TypeError,
    /`failopen`.*`failOpen`/,
  ],
];

for (const [title, call, type, mention] of callCases) {
  test.serial(`rejects ${title} with ${type.name}, touching nothing`, async (t) => {
    const before = await counters();
    const error = await t.throwsAsync(call);
    t.true(error instanceof type, `${error?.constructor.name}: ${error?.message}`);
    t.regex(error!.message, mention);
    t.is(await counters(), before);
  });
}

const ctorCases: Array<[string, () => Memlock, typeof TypeError | typeof RangeError, RegExp]> = [
  ['leaseMs too small', () => new Memlock({ servers: 'x:1', leaseMs: 1000 }), RangeError, /`leaseMs`/],
  [
    'heartbeatMs too large',
    () => new Memlock({ servers: 'x:1', leaseMs: 10_000, heartbeatMs: 6000 }),
    RangeError,
    /`heartbeatMs`/,
  ],
  ['timeoutMs zero', () => new Memlock({ servers: 'x:1', timeoutMs: 0 }), RangeError, /`timeoutMs`/],
  ['prefix with a space', () => new Memlock({ servers: 'x:1', prefix: 'a b' }), RangeError, /`prefix`/],
  ['prefix too long', () => new Memlock({ servers: 'x:1', prefix: 'p'.repeat(200) }), RangeError, /`prefix`/],
  ['prefix not a string', () => new Memlock({ servers: 'x:1', prefix: 5 as unknown as string }), TypeError, /`prefix`/],
  ['servers empty', () => new Memlock({ servers: [] }), RangeError, /`servers`/],
  ['servers not strings', () => new Memlock({ servers: [1] as unknown as string[] }), TypeError, /`servers`/],
  ['servers with a bad port', () => new Memlock({ servers: 'host:99999' }), RangeError, /`servers`/],
  ['servers as a URL', () => new Memlock({ servers: 'http://localhost:11211' }), RangeError, /`servers`.*'host:port'/],
  ['servers split by ;', () => new Memlock({ servers: 'a:11211;b:11211' }), RangeError, /`servers`.*semicolons/],
  ['a misspelled option', () => new Memlock({ sever: 'x:1' } as never), TypeError, /`sever`.*`servers`/],
  ['client not a memjs client', () => new Memlock({ client: {} as never }), TypeError, /`client`/],
  ['options not an object', () => new Memlock('localhost' as never), TypeError, /`options`/],
];

for (const [title, make, type, mention] of ctorCases) {
  test(`new Memlock throws ${type.name} for ${title}`, (t) => {
    const error = t.throws(make);
    t.true(error instanceof type, `${error?.constructor.name}: ${error?.message}`);
    t.regex(error!.message, mention);
  });
}

test('wrap validates eagerly', (t) => {
  t.throws(() => m.wrap('x' as never, { key: () => 'k' }), { instanceOf: TypeError, message: /`fn`/ });
  t.throws(() => m.wrap(async () => 1, { key: 'k' as never }), { instanceOf: TypeError, message: /`key`/ });
  t.throws(() => m.wrap(async () => 1, { key: () => 'k', leaseMs: 10 }), {
    instanceOf: RangeError,
    message: /`leaseMs`/,
  });
});

test('defaults are the documented ones', (t) => {
  t.is(defaults.leaseMs, 16_000);
  t.is(defaults.heartbeatMs, 1000);
  t.is(defaults.timeoutMs, 500);
  t.is(defaults.prefix, 'memlock:');
});
