/**
 * Input that used to pass silently and fail later (or never): a `servers`
 * value that is not 'host:port' (a URL, a `;`-separated list) and misspelled
 * option names. Both throw at once, naming the option, and touch nothing.
 * The same against a real memcached: test/integration/validation.test.ts.
 */
import test from 'ava';
import { Memlock } from '../../src/index.js';
import { resolveLockOptions, resolveMemlockOptions } from '../../src/options.js';
import { parseServer } from '../../src/transport/servers.js';
import { MemcacheStandIn } from '../../src/testing.js';

const HOST_PORT =
  /Expected `servers` entries to look like 'host:port' \(e\.g\. 'localhost:11211'; several: 'a:11211,b:11211'\)/;

test('servers: a URL or a ;-separated list throws a RangeError naming `servers` and the host:port form', (t) => {
  for (const [servers, hint] of [
    ['http://localhost:11211', /got "http:\/\/localhost:11211": a host and port, not a URL \(no scheme\)$/],
    ['memcache://cache-1:11211', /not a URL/],
    ['a:11211;b:11211', /got "a:11211;b:11211": separate servers with commas, not semicolons$/],
    ['a:11211 b:11211', /separate servers with commas, not spaces$/],
    ['host:99999', /got "host:99999"$/],
    ['host:+5', /got "host:\+5"$/],
    ['host:', /got "host:"$/],
    ['-x:1', /got "-x:1"$/],
    ['a/b:1', /got "a\/b:1"$/],
  ] as const) {
    const error = t.throws(() => new Memlock({ servers }), { instanceOf: RangeError }, servers);
    t.regex(error?.message ?? '', HOST_PORT, servers);
    t.regex(error?.message ?? '', hint, servers);
    t.throws(() => new Memlock({ servers: ['localhost:11211', servers] }), {
      instanceOf: RangeError,
      message: HOST_PORT,
    });
  }
});

test('servers: the forms memjs reads stay accepted', (t) => {
  t.deepEqual(parseServer('localhost'), { host: 'localhost', port: 11_211 });
  t.deepEqual(parseServer('cache-1.example.com.:11212'), { host: 'cache-1.example.com.', port: 11_212 });
  t.deepEqual(parseServer('my_cache:1'), { host: 'my_cache', port: 1 });
  t.deepEqual(parseServer('10.0.0.7:65535'), { host: '10.0.0.7', port: 65_535 });
  t.deepEqual(parseServer('[::1]:11211'), { host: '::1', port: 11_211 });
  t.deepEqual(parseServer('[::1]'), { host: '::1', port: 11_211 });
  t.deepEqual(parseServer('::1:11211'), { host: '::1', port: 11_211 });
  t.deepEqual(parseServer('user:p@ss:word@h:2'), { host: 'h', port: 2, username: 'user', password: 'p@ss:word' });
  t.deepEqual(resolveMemlockOptions({ servers: ' a:1 , b:2 ' }).servers, ['a:1', 'b:2']);
});

test.serial('servers from MEMCACHE_SERVERS: a bad value says where it came from', (t) => {
  const saved = process.env.MEMCACHE_SERVERS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_SERVERS;
    else process.env.MEMCACHE_SERVERS = saved;
  });
  process.env.MEMCACHE_SERVERS = 'http://cache:11211';
  t.throws(() => new Memlock(), {
    instanceOf: RangeError,
    message: /^Expected `servers` \(from MEMCACHE_SERVERS\) entries to look like 'host:port'.*not a URL/,
  });
  t.notThrows(() => resolveMemlockOptions({ servers: 'cache:11211' }), 'an explicit `servers` wins');
});

test('a misspelled Memlock option throws a TypeError naming it and the closest known one', (t) => {
  t.throws(() => new Memlock({ sever: 'x:1' } as never), {
    instanceOf: TypeError,
    message: /^Unknown option `sever` in Memlock options \(did you mean `servers`\?\); known: servers, client, /,
  });
  t.throws(() => new Memlock({ servers: 'x:1', leaseMS: 5000 } as never), {
    instanceOf: TypeError,
    message: /`leaseMS` .*did you mean `leaseMs`/,
  });
  t.throws(() => new Memlock({ servers: 'x:1', heartbeat: 500 } as never), { message: /did you mean `heartbeatMs`/ });
  const far = t.throws(() => new Memlock({ servers: 'x:1', colour: 'blue' } as never), { instanceOf: TypeError });
  t.regex(far?.message ?? '', /^Unknown option `colour` in Memlock options; known: /, 'nothing close: no suggestion');
  t.notThrows(() => new Memlock({ servers: 'x:1', prefix: 'p:', ref: false, tls: false, protocol: 'meta' }));
  t.notThrows(() => new Memlock({ servers: 'x:1', leaseMs: undefined }), 'a known option set to undefined is fine');
});

test('misspelled per-call, wait and wrap options throw before any request', async (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  t.teardown(() => memlock.close());
  const fn = (): number => 1;
  await t.throwsAsync(memlock.tryWithLock('k', 'A', fn, { waitt: true } as never), {
    instanceOf: TypeError,
    message: /^Unknown option `waitt` in lock options \(did you mean `wait`\?\)/,
  });
  await t.throwsAsync(memlock.acquire('k', 'A', { holdAfter: 1000 } as never), {
    instanceOf: TypeError,
    message: /`holdAfter` .*did you mean `holdAfterMs`/,
  });
  await t.throwsAsync(memlock.tryWithLock('k', 'A', fn, { wait: { timeout: 100 } } as never), {
    instanceOf: TypeError,
    message:
      /^Unknown option `timeout` in the `wait` options \(did you mean `timeoutMs`\?\); known: timeoutMs, minDelayMs, maxDelayMs$/,
  });
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', onNotAquired: () => 0 } as never), {
    instanceOf: TypeError,
    message: /^Unknown option `onNotAquired` in wrap options \(did you mean `onNotAcquired`\?\)/,
  });
  t.throws(() => memlock.wrap(async () => 1, { key: () => 'k', stealAfter: 5 } as never), {
    message: /did you mean `stealAfterMs`/,
  });
  t.deepEqual(memcache.ops, { add: 0, get: 0, set: 0, delete: 0 }, 'nothing was sent');
  const instance = resolveMemlockOptions({ servers: 'x:1' });
  t.notThrows(() =>
    resolveLockOptions({ wait: { timeoutMs: 5, minDelayMs: 1, maxDelayMs: 2 }, failOpen: true }, instance),
  );
  t.is(await memlock.tryWithLock('k', 'A', fn, { wait: true, leaseMs: 4000 }), 1, 'known options work');
});
