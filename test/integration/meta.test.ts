/**
 * The meta protocol against a real memcached: interop with the binary
 * protocol (same items, same CAS), base64 keys, server errors that leave the
 * connection usable, locks end to end, and the option rules (SASL is
 * binary-only; a memjs client is binary-only and has no TLS).
 */
import test from 'ava';
import memjs from 'memjs';
import { Memlock, MemcacheLockClient, MemcacheUnavailableError, LockNotAcquiredError } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';

let mc: MemcachedProcess;
let meta: MemcacheLockClient;
let binary: MemcacheLockClient;
test.before(async () => {
  mc = await startMemcached();
  meta = new MemcacheLockClient({ servers: [mc.address], protocol: 'meta', timeoutMs: 1000 });
  binary = new MemcacheLockClient({ servers: [mc.address], protocol: 'binary', timeoutMs: 1000 });
});
test.after.always(async () => {
  await meta?.close();
  await binary?.close();
  await mc?.stop();
});

test('meta and binary see the same items with the same CAS', async (t) => {
  const added = await meta.add('interop:1', Buffer.from('via meta'), 30);
  if (added.status !== 'ok') return t.fail();
  const read = await binary.get('interop:1');
  t.is(read?.value.toString(), 'via meta');
  t.is(read?.cas, added.cas);
  t.is((await mc.rawGet('interop:1'))?.cas, added.cas, 'the text protocol agrees');
  const set = await binary.casSet('interop:1', Buffer.from('via binary'), 30, added.cas);
  if (set.status !== 'ok') return t.fail();
  t.is((await meta.casSet('interop:1', Buffer.from('stale'), 30, added.cas)).status, 'exists');
  const back = await meta.get('interop:1');
  t.is(back?.value.toString(), 'via binary');
  t.is(back?.cas, set.cas);
  t.is((await meta.casDelete('interop:1', added.cas)).status, 'exists');
  t.is((await meta.casDelete('interop:1', set.cas)).status, 'ok');
  t.is(await binary.get('interop:1'), null);
  t.is((await meta.casSet('interop:1', Buffer.from('x'), 30, set.cas)).status, 'not_found');
  t.is((await meta.casDelete('interop:1', set.cas)).status, 'not_found');
});

test('a key with whitespace goes base64 (b flag) and names the same item as the raw key', async (t) => {
  const key = 'odd key\twith spaces';
  t.is((await meta.add(key, Buffer.from('b64'), 30)).status, 'ok');
  t.is((await binary.get(key))?.value.toString(), 'b64', 'the binary protocol carries the raw bytes');
  t.is((await meta.add(key, Buffer.from('again'), 30)).status, 'exists');
  t.is((await meta.get(key))?.value.toString(), 'b64');
});

test('a server error fails that request as not applied and keeps the connection', async (t) => {
  const warm = await meta.add('meta:warm', Buffer.from('w'), 30);
  if (warm.status !== 'ok') return t.fail();
  // Larger than memcached's default 1 MB item limit.
  const error = await t.throwsAsync(meta.add('meta:huge', Buffer.alloc(2 * 1024 * 1024, 120), 30), {
    instanceOf: MemcacheUnavailableError,
  });
  t.false(error?.mayHaveApplied);
  t.regex(error?.message ?? '', /SERVER_ERROR/);
  t.regex(error?.message ?? '', /meta/, 'the error names the protocol');
  t.true(meta.isCurrent('meta:warm', warm.conn), 'same connection: the stream stayed in step');
  t.is((await meta.get('meta:warm'))?.value.toString(), 'w');
});

test('locks over meta: acquire, refuse, renew, release', async (t) => {
  const a = new Memlock({ servers: mc.address, protocol: 'meta', prefix: 'ml-meta:', leaseMs: 2000, heartbeatMs: 200 });
  const b = new Memlock({ servers: mc.address, protocol: 'meta', prefix: 'ml-meta:', leaseMs: 2000, heartbeatMs: 200 });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  await a.tryWithLock('k', 'A', async (signal) => {
    const before = await mc.rawGet('ml-meta:k');
    await t.throwsAsync(
      b.tryWithLock('k', 'B', () => 1),
      { instanceOf: LockNotAcquiredError },
    );
    // Past the whole lease: only renewals keep it.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    t.false(signal.aborted);
    const after = await mc.rawGet('ml-meta:k');
    t.not(after?.cas, before?.cas, 'renewed by CAS writes');
    t.is(after?.value.toString(), before?.value.toString());
  });
  t.is(await mc.rawGet('ml-meta:k'), null, 'released');
});

test('SASL credentials with the meta protocol are a RangeError naming `protocol`, whichever way they come', (t) => {
  const saved = process.env.MEMCACHE_USERNAME;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_USERNAME;
    else process.env.MEMCACHE_USERNAME = saved;
  });
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'meta', username: 'u', password: 'p' }), {
    instanceOf: RangeError,
    message: /`protocol`/,
  });
  t.throws(() => new Memlock({ servers: 'u:p@h:1', protocol: 'meta' }), {
    instanceOf: RangeError,
    message: /`protocol`/,
  });
  process.env.MEMCACHE_USERNAME = 'u';
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'meta' }), {
    instanceOf: RangeError,
    message: /`protocol`.*MEMCACHE_USERNAME/,
  });
});

test('protocol and tls are validated; a memjs client is binary-only and has no TLS', (t) => {
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'ascii' as never }), {
    instanceOf: RangeError,
    message: /`protocol`/,
  });
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 1 as never }), {
    instanceOf: TypeError,
    message: /`protocol`/,
  });
  t.throws(() => new Memlock({ servers: 'h:1', tls: 'yes' as never }), { instanceOf: TypeError, message: /`tls`/ });
  const client = memjs.Client.create('127.0.0.1:1', { logger: { log: () => undefined } });
  t.teardown(() => client.close());
  t.throws(() => new Memlock({ client, protocol: 'meta' }), { instanceOf: RangeError, message: /`protocol`/ });
  t.throws(() => new Memlock({ client, tls: true }), { instanceOf: RangeError, message: /`tls`/ });
});
