/**
 * The CAS transport (MemcacheLockClient) against a real server and the
 * request-id overflow. (The consistent hash ring is in
 * test/unit/hashring.test.ts: its ~400 ms of synchronous hashing must not
 * share an event loop with the timeouts measured here.)
 */
import test from 'ava';
import memjs from 'memjs';
import { MemcacheLockClient, MemjsClientAdapter, MemcacheUnavailableError } from '../../src/index.js';
import { testProtocol, viaTwemproxy } from '../helpers/protocol.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startProxy } from '../helpers/proxy.js';

let mc: MemcachedProcess;
let client: MemcacheLockClient;

test.before(async () => {
  mc = await startMemcached();
  client = new MemcacheLockClient({ servers: [mc.address], timeoutMs: 500, protocol: testProtocol });
});
test.after.always(async () => {
  await client?.close();
  await mc?.stop();
});

test('add, get with CAS, CAS-checked set and delete', async (t) => {
  const key = 'cas:basic';
  const added = await client.add(key, Buffer.from('v1'), 10);
  t.is(added.status, 'ok');
  if (added.status !== 'ok') return;
  t.is((await client.add(key, Buffer.from('v2'), 10)).status, 'exists');
  const entry = await client.get(key);
  t.is(entry?.value.toString(), 'v1');
  t.is(entry?.cas, added.cas);
  t.is((await mc.rawGet(key))?.cas, added.cas, 'same CAS as the text protocol reports');

  t.is((await client.casSet(key, Buffer.from('bad'), 10, added.cas + 1000n)).status, 'exists', 'wrong CAS refused');
  t.is((await client.get(key))?.value.toString(), 'v1');
  const set = await client.casSet(key, Buffer.from('v3'), 10, added.cas);
  t.is(set.status, 'ok', 'right CAS accepted');
  if (set.status !== 'ok') return;
  t.not(set.cas, added.cas);
  t.is((await client.get(key))?.value.toString(), 'v3');

  t.is((await client.casDelete(key, added.cas)).status, 'exists', 'stale CAS cannot delete');
  t.truthy(await client.get(key));
  t.is((await client.casDelete(key, set.cas)).status, 'ok');
  t.is(await client.get(key), null);
  t.is((await client.casSet(key, Buffer.from('x'), 10, set.cas)).status, 'not_found');
  t.is((await client.casDelete(key, set.cas)).status, 'not_found');
});

test('addThenGet: a granted add stands when the connection drops before the pipelined read is answered', async (t) => {
  const proxy = await startProxy(mc.endpoint);
  const c = new MemcacheLockClient({ servers: [proxy.address], timeoutMs: 2000, protocol: testProtocol });
  t.teardown(async () => {
    await c.close();
    await proxy.close();
  });
  await c.get('warm');
  // Only the add's reply gets through (binary: a 24-byte header; meta, text: one line).
  proxy.cutAfter((chunk) => (testProtocol === 'binary' ? 24 : chunk.indexOf('\r\n') + 2));
  const key = 'cut:pipelined';
  const both = await c.addThenGet(key, Buffer.from('mine'), 10);
  t.is(both.add.status, 'ok', 'the add was granted: the call says so instead of failing');
  t.is(both.entry, null);
  // Our entry is there: the caller holds it (and can release it).
  t.is((await c.get(key))?.value.toString(), 'mine');
});

test('addThenGet answers both in one round trip', async (t) => {
  // Through a proxy that delays each direction by L ms, one round trip takes
  // 2L and two take 4L: the bound 3L tells them apart whatever the machine.
  const latencyMs = 150;
  const proxy = await startProxy(mc.endpoint);
  const c = new MemcacheLockClient({ servers: [proxy.address], timeoutMs: 10 * latencyMs, protocol: testProtocol });
  t.teardown(async () => {
    await c.close();
    await proxy.close();
  });
  await c.get('warm'); // connect first: the handshake is not what is measured
  proxy.setLatency(latencyMs);
  const key = 'cas:pipelined';
  let start = performance.now();
  const first = await c.addThenGet(key, Buffer.from('mine'), 10);
  let elapsed = performance.now() - start;
  t.is(first.add.status, 'ok');
  t.is(first.entry?.value.toString(), 'mine');
  t.true(
    elapsed >= 2 * latencyMs - 5 && elapsed < 3 * latencyMs,
    `add + get took ${elapsed.toFixed(0)} ms (one round trip: ${2 * latencyMs} ms)`,
  );
  start = performance.now();
  const second = await c.addThenGet(key, Buffer.from('theirs'), 10);
  elapsed = performance.now() - start;
  t.is(second.add.status, 'exists');
  t.is(second.entry?.value.toString(), 'mine');
  t.true(elapsed < 3 * latencyMs, `refused add + get took ${elapsed.toFixed(0)} ms`);
});

test('the expiry is applied in seconds', async (t) => {
  const key = 'cas:ttl';
  await client.add(key, Buffer.from('short'), 1);
  t.truthy(await client.get(key));
  await new Promise((resolve) => setTimeout(resolve, 2100));
  t.is(await client.get(key), null);
});

// Through twemproxy the connection is to the proxy, which hides the restart (see restart.protocols.test.ts).
(viaTwemproxy ? test.skip : test)('connection generation changes after a reconnect', async (t) => {
  const own = await startMemcached();
  const c = new MemcacheLockClient({ servers: [own.address], timeoutMs: 300, protocol: testProtocol });
  t.teardown(async () => {
    await c.close();
    await own.stop();
  });
  const added = await c.add('g', Buffer.from('x'), 10);
  if (added.status !== 'ok') return t.fail();
  t.true(c.isCurrent('g', added.conn));
  await own.restart();
  // The restart closed the socket; a request may fail once while memjs notices.
  const entry = await c.get('g').catch(() => c.get('g'));
  t.is(entry, null);
  t.false(c.isCurrent('g', added.conn));
});

test('request ids stay in range past 2^31 requests on a shared memjs client', async (t) => {
  // memjs speaks binary: memcached itself, not a text-only front.
  const shared = memjs.Client.create(mc.serverAddress, { retries: 1, logger: { log: () => {} } });
  // Reproduce memjs's own overflow first, so this test can tell the difference.
  (shared as unknown as { seq: number }).seq = 2 ** 31 - 1;
  await t.throwsAsync(shared.get('x'), { instanceOf: RangeError });

  (shared as unknown as { seq: number }).seq = 2 ** 31 - 20;
  const c = new MemjsClientAdapter(shared, { timeoutMs: 500 });
  for (let i = 0; i < 60; i++) {
    const r = await c.add(`seq:${i}`, Buffer.from('v'), 10);
    t.is(r.status, 'ok');
  }
  const seq = (shared as unknown as { seq: number }).seq;
  t.true(seq >= 1 && seq < 100, `counter wrapped to ${seq}`);
  // memjs's own calls keep working on the shared client.
  const { value } = await shared.get('seq:0');
  t.is(value?.toString(), 'v');
  await c.close();
  shared.close();
});

test('an unreachable server fails fast with MemcacheUnavailableError', async (t) => {
  const c = new MemcacheLockClient({ servers: ['127.0.0.1:1'], timeoutMs: 300, protocol: testProtocol });
  t.teardown(() => c.close());
  const error = await t.throwsAsync(c.add('k', Buffer.from('v'), 10), { instanceOf: MemcacheUnavailableError });
  t.is(error?.server, '127.0.0.1:1');
  t.truthy(error?.cause);
});

test('a stalled server times out at the deadline (no request hangs)', async (t) => {
  const own = await startMemcached();
  const c = new MemcacheLockClient({ servers: [own.address], timeoutMs: 200, protocol: testProtocol });
  t.teardown(async () => {
    await c.close();
    await own.resume();
    await own.stop();
  });
  await c.get('warm');
  await own.pause();
  const start = performance.now();
  const error = await t.throwsAsync(c.get('k'), { instanceOf: MemcacheUnavailableError });
  t.regex(error!.message, /timed out/);
  t.true(performance.now() - start < 1000);
});

test('a timeout followed at once by a new request leaves one open connection, and close() leaves none', async (t) => {
  const { startProxy } = await import('../helpers/proxy.js');
  const own = await startMemcached();
  const proxy = await startProxy(own.endpoint);
  const c = new MemcacheLockClient({ servers: [proxy.address], timeoutMs: 150, protocol: testProtocol });
  t.teardown(async () => {
    await c.close();
    await proxy.close();
    await own.stop();
  });
  for (let round = 0; round < 3; round++) {
    await c.get('warm');
    proxy.stall();
    const stalled = c.get('k');
    // The request after the timeout goes out in the same tick the old socket is destroyed.
    const next = stalled.catch(() => {
      proxy.heal();
      return c.get('k');
    });
    await t.throwsAsync(stalled, { instanceOf: MemcacheUnavailableError });
    t.is(await next, null);
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(proxy.connections, 1, 'old connections are closed, the current one is kept');
  t.is(await c.get('k'), null);
  await c.close();
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(proxy.connections, 0, 'close() closes every connection it opened');
});

test('responses split into tiny chunks and batched many per chunk are framed right', async (t) => {
  // The server's bytes reach the client 1-7 bytes at a time, so every
  // response header and value straddles 'data' events.
  const proxy = await startProxy(mc.endpoint);
  proxy.fragment(7);
  const split = new MemcacheLockClient({ servers: [proxy.address], timeoutMs: 5000, protocol: testProtocol });
  t.teardown(async () => {
    await split.close();
    await proxy.close();
  });

  const value = (i: number): Buffer => Buffer.from(`value-${i}-`.padEnd(300 + i, 'x'));
  // 50 at once: replies come back-to-back in the byte stream, then cut into pieces.
  const added = await Promise.all(Array.from({ length: 50 }, (_, i) => split.add(`frame:${i}`, value(i), 30)));
  t.true(added.every((r) => r.status === 'ok'));
  const entries = await Promise.all(Array.from({ length: 50 }, (_, i) => split.get(`frame:${i}`)));
  for (const [i, entry] of entries.entries()) {
    t.true(entry?.value.equals(value(i)), `value ${i} intact`);
    t.is(entry?.cas, added[i]?.status === 'ok' ? added[i].cas : undefined, `CAS ${i} intact`);
  }
  const both = await split.addThenGet('frame:0', Buffer.from('other'), 30);
  t.is(both.add.status, 'exists');
  t.true(both.entry?.value.equals(value(0)));
  const deleted = await Promise.all(entries.map((entry, i) => split.casDelete(`frame:${i}`, entry!.cas)));
  t.true(deleted.every((r) => r.status === 'ok'));
  t.is(await client.get('frame:7'), null, 'deleted on the server');
});
