/**
 * The classic text protocol (`protocol: 'text'`) against memcached 1.6.18,
 * directly and through twemproxy (nutcracker 0.5.0) started here: interop
 * with the binary protocol, the CAS-checked delete as a `cas` with an expiry
 * in the past, only classic commands on the wire for every lock step (a
 * recording proxy), round trips per lock/unlock against binary and meta, the
 * option rules, and what a proxy costs (a hidden restart, failover).
 */
import test from 'ava';
import memjs from 'memjs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  LockNotAcquiredError,
  MemcacheLockClient,
  MemcacheUnavailableError,
  Memlock,
  type ProtocolName,
} from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startRecordingProxy, type RecordingProxy } from '../helpers/recording-proxy.js';
import { waitFor } from '../helpers/resources.js';
import { startTwemproxy, type Twemproxy } from '../helpers/twemproxy.js';

let mc: MemcachedProcess;
let twemproxy: Twemproxy;
test.before(async () => {
  // Fronts are built here explicitly, whatever MEMLOCK_TEST_* asks for.
  mc = await startMemcached({ direct: true });
  twemproxy = await startTwemproxy([mc]);
});
test.after.always(async () => {
  await twemproxy?.stop();
  await mc?.stop();
});

function client(server: string, protocol: ProtocolName = 'text', timeoutMs = 2000): MemcacheLockClient {
  return new MemcacheLockClient({ servers: [server], protocol, timeoutMs });
}

for (const route of ['memcached', 'twemproxy'] as const) {
  test(`${route}: text and binary see the same items and CAS; a CAS-checked delete is a cas with an expiry in the past`, async (t) => {
    const text = client(route === 'memcached' ? mc.address : twemproxy.address);
    const binary = client(mc.address, 'binary');
    t.teardown(() => Promise.all([text.close(), binary.close()]));
    const key = `interop-${route}`;
    const added = await text.add(key, Buffer.from('via text'), 30);
    if (added.status !== 'ok') return t.fail();
    const read = await binary.get(key);
    t.is(read?.value.toString(), 'via text');
    t.is(read?.cas, added.cas, 'the add learned its CAS from the gets pipelined after it');
    t.true(text.isCurrent(key, added.conn));
    const set = await binary.casSet(key, Buffer.from('via binary'), 30, added.cas);
    if (set.status !== 'ok') return t.fail();
    t.is((await text.casSet(key, Buffer.from('stale'), 30, added.cas)).status, 'exists');
    t.is((await text.add(key, Buffer.from('again'), 30)).status, 'exists');
    const renewed = await text.casSet(key, Buffer.from('via binary'), 30, set.cas);
    if (renewed.status !== 'ok') return t.fail();
    const after = await binary.get(key);
    t.is(after?.cas, renewed.cas, 'a CAS write learns its new CAS too');
    t.is((await text.casDelete(key, set.cas)).status, 'exists', 'a stale CAS deletes nothing');
    t.is((await binary.get(key))?.value.toString(), 'via binary');
    t.is((await text.casDelete(key, renewed.cas)).status, 'ok');
    // Stored already expired: gone on the next read, through every protocol.
    t.is(await text.get(key), null);
    t.is(await binary.get(key), null);
    t.is(await mc.rawGet(key), null);
    t.is(await mc.rawTtl(key), null);
    t.is((await text.casDelete(key, renewed.cas)).status, 'not_found');
    t.is((await text.casSet(key, Buffer.from('x'), 30, renewed.cas)).status, 'not_found');
    t.is((await text.add(key, Buffer.from('free again'), 30)).status, 'ok', 'the key is free for the next add');
  });
}

/** A lock's whole life over `server`: every step the lock protocol has. */
async function lockLife(
  t: { is: (a: unknown, b: unknown, m?: string) => void },
  server: string,
  protocol: ProtocolName,
) {
  const prefix = `life-${protocol}:`;
  const make = (): Memlock =>
    new Memlock({ servers: server, protocol, prefix, leaseMs: 4000, heartbeatMs: 200, timeoutMs: 2000 });
  const [a, a2, b] = [make(), make(), make()];
  try {
    // Acquire, renew (a heartbeat every 200 ms), refuse, same-clientId takeover.
    const first = await a.acquire('k', 'A');
    await sleep(3500); // longer than the guaranteed 3 s
    t.is(first.signal.reason, undefined, 'renewed');
    const refused = await b.acquire('k', 'B').catch((e: unknown) => e);
    t.is(refused instanceof LockNotAcquiredError, true, 'refused');
    const again = await a2.acquire('k', 'A');
    await waitFor(() => first.signal.aborted, 2000, 10, 'the earlier hold learns of the takeover');
    // Steal from a holder older than stealAfterMs.
    await sleep(50);
    const stolen = await b.acquire('k', 'B', { stealAfterMs: 10 });
    await waitFor(() => again.signal.aborted, 2000, 10, 'the robbed holder learns it');
    t.is(await stolen.release(), true, 'CAS-checked release');
    t.is(await a.inspect('k'), null);
    // holdAfterMs leaves a completed marker.
    await a.tryWithLock('done', 'A', () => 1, { holdAfterMs: 1000 });
    const done = await b.acquire('done', 'B').catch((e: unknown) => e);
    t.is(done instanceof LockNotAcquiredError && done.done, true, 'completed marker');
    // A waiter in another instance gets the key by reservation when it is released.
    const held = await a.acquire('q', 'A');
    const waiter = b.tryWithLock('q', 'B', () => 'B ran', { wait: { timeoutMs: 10_000 } });
    await sleep(300);
    await held.release();
    t.is(await waiter, 'B ran');
  } finally {
    await Promise.all([a.close(), a2.close(), b.close()]);
  }
}

test('only classic commands go on the wire (add, gets, cas), through twemproxy, for every lock step', async (t) => {
  const recorder = await startRecordingProxy(twemproxy);
  t.teardown(() => recorder.close());
  await lockLife(t, recorder.address, 'text');
  t.deepEqual(recorder.violations, []);
  const names = new Set(recorder.commands.map((c) => c.name));
  t.deepEqual([...names].sort(), ['add', 'cas', 'gets']);
  t.true(
    recorder.commands.some((c) => / 2592001 0 \d+$/.test(c.line)),
    'a CAS-checked delete: cas with an expiry in the past',
  );
  t.false(
    recorder.commands.some((c) => / -\d+ /.test(c.line)),
    'no negative expiry (twemproxy drops the connection on one)',
  );
});

test('the recording proxy sees the other protocols: meta commands and binary requests are violations', async (t) => {
  const recorder = await startRecordingProxy(mc);
  t.teardown(() => recorder.close());
  for (const protocol of ['meta', 'binary'] as const) {
    const m = new Memlock({ servers: recorder.address, protocol, prefix: 'other:' });
    await m.tryWithLock(protocol, 'A', () => 1);
    await m.close();
  }
  t.true(recorder.violations.some((v) => v.startsWith('meta command: ms ')));
  t.true(recorder.violations.some((v) => v.startsWith('meta command: md ')));
  t.true(recorder.violations.some((v) => v.includes('magic 0x80')));
});

/** Flights (round trips) and commands per cycle of `fn`, through a recording proxy straight to memcached. */
async function perCycle(
  recorder: RecordingProxy,
  fn: () => Promise<unknown>,
  cycles: number,
): Promise<{ roundTrips: number; commands: number }> {
  recorder.reset();
  for (let i = 0; i < cycles; i++) await fn();
  return { roundTrips: recorder.flights / cycles, commands: recorder.commands.length / cycles };
}

test('round trips per lock/unlock and per renewal: text as binary and meta (one more command each, no more round trips)', async (t) => {
  const recorder = await startRecordingProxy(mc);
  t.teardown(() => recorder.close());
  const figures: Record<string, unknown> = {};
  for (const protocol of ['binary', 'meta', 'text'] as const) {
    const m = new Memlock({
      servers: recorder.address,
      protocol,
      prefix: 'rt:',
      leaseMs: 4000,
      heartbeatMs: 1000,
      timeoutMs: 3000,
    });
    t.teardown(() => m.close());
    await m.inspect('warm'); // connect first
    const lockUnlock = await perCycle(recorder, () => m.tryWithLock(`rt-${protocol}`, 'A', () => 1), 20);
    const lock = await m.acquire(`renew-${protocol}`, 'A');
    recorder.reset();
    await waitFor(() => recorder.commands.length > 0, 3000, 5, 'a renewal');
    await sleep(100); // its read-back, if any
    const renewal = { roundTrips: recorder.flights, commands: recorder.commands.length };
    await lock.release();
    figures[protocol] = { lockUnlock, renewal };
    t.is(lockUnlock.roundTrips, 2, `${protocol}: lock and unlock, one round trip each`);
    t.is(renewal.roundTrips, 1, `${protocol}: a renewal is one round trip`);
    // Text: add + gets (the add's CAS), cas (the release); a renewal is cas + gets.
    t.is(lockUnlock.commands, protocol === 'text' ? 3 : 2);
    t.is(renewal.commands, protocol === 'text' ? 2 : 1);
  }
  t.log(JSON.stringify(figures));
});

test('SASL credentials with the text protocol are a RangeError naming `protocol`, whichever way they come; a memjs client cannot speak text', (t) => {
  const saved = process.env.MEMCACHE_USERNAME;
  t.teardown(() => {
    if (saved === undefined) delete process.env.MEMCACHE_USERNAME;
    else process.env.MEMCACHE_USERNAME = saved;
  });
  delete process.env.MEMCACHE_USERNAME;
  const sasl = { instanceOf: RangeError, message: /`protocol`/ };
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'text', username: 'u', password: 'p' }), sasl);
  t.throws(() => new Memlock({ servers: 'u:p@h:1', protocol: 'text' }), sasl);
  t.throws(() => new MemcacheLockClient({ servers: ['h:1'], protocol: 'text', username: 'u', timeoutMs: 100 }), sasl);
  process.env.MEMCACHE_USERNAME = 'u';
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'text' }), {
    instanceOf: RangeError,
    message: /`protocol`.*MEMCACHE_USERNAME/,
  });
  delete process.env.MEMCACHE_USERNAME;
  t.notThrows(() => new Memlock({ servers: 'h:1', protocol: 'text' }));
  const memjsClient = memjs.Client.create('127.0.0.1:1', { logger: { log: () => undefined } });
  t.teardown(() => memjsClient.close());
  t.throws(() => new Memlock({ client: memjsClient, protocol: 'text' }), {
    instanceOf: RangeError,
    message: /`protocol`/,
  });
  t.throws(() => new Memlock({ servers: 'h:1', protocol: 'ascii' as never }), {
    instanceOf: RangeError,
    message: /Expected `protocol` to be 'binary', 'meta' or 'text', got .*ascii/,
  });
});

test('through twemproxy: a forwarded write whose server died answers SERVER_ERROR, which may have been applied; the connection is dropped', async (t) => {
  const own = await startMemcached({ direct: true });
  const proxy = await startTwemproxy([own]);
  const c = client(proxy.address, 'text', 5000);
  t.teardown(async () => {
    await c.close();
    await proxy.stop();
    await own.stop();
  });
  const warm = await c.add('warm', Buffer.from('w'), 30);
  if (warm.status !== 'ok') return t.fail();
  await own.pause(); // twemproxy forwards the add; memcached never answers it
  const pending = c.add('k', Buffer.from('v'), 30);
  await sleep(200);
  await own.restart();
  const error = await t.throwsAsync(pending, { instanceOf: MemcacheUnavailableError });
  t.regex(error?.message ?? '', /SERVER_ERROR/);
  t.regex(error?.message ?? '', /text/, 'the error names the protocol');
  t.true(error?.mayHaveApplied, 'twemproxy had forwarded it: the lock protocol reads it back');
  t.false(c.isCurrent('warm', warm.conn), 'dropped: a CAS from before is read back before it is used');
  t.is(await c.get('k'), null, 'a new connection works');
});

test('twemproxy drops the connection on a meta command and on a negative expiry: through it only the text protocol works', async (t) => {
  const meta = client(twemproxy.address, 'meta', 2000);
  t.teardown(() => meta.close());
  const error = await t.throwsAsync(meta.get('k'), { instanceOf: MemcacheUnavailableError });
  t.regex(error?.message ?? '', /closed/);
  const reply = await rawExchange(twemproxy, 'set k 0 -1 1\r\nx\r\n');
  t.is(reply, '<closed>', 'negative expiry: connection dropped');
  t.is(await rawExchange(twemproxy, 'add neg-ok 0 30 1\r\nx\r\n'), 'STORED\r\n');
});

/** One request on a fresh socket: the reply, or '<closed>' when the peer closed without one. */
function rawExchange(target: { host: string; port: number }, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(target);
    let reply = '';
    const timer = setTimeout(() => socket.destroy(new Error('no reply')), 3000);
    socket.on('connect', () => socket.write(request));
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (reply.endsWith('\r\n')) socket.destroy();
    });
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(reply === '' ? '<closed>' : reply);
    });
  });
}

test.serial(
  'what a proxy costs (README): a memcached restart hidden by twemproxy lets a stale CAS delete a new holder',
  async (t) => {
    const own = await startMemcached({ direct: true });
    const proxy = await startTwemproxy([own]);
    t.teardown(async () => {
      await proxy.stop();
      await own.stop();
    });
    const make = (): Memlock =>
      new Memlock({ servers: proxy.address, protocol: 'text', prefix: 'aba:', leaseMs: 30_000, heartbeatMs: 10_000 });
    const a = make();
    const b = make();
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const held = await a.acquire('k', 'A');
    const casA = (await own.rawGet('aba:k'))!.cas;
    await own.restart();
    const heldB = await b.acquire('k', 'B');
    t.is((await own.rawGet('aba:k'))!.cas, casA, 'the new entry has the CAS A kept (the counter restarted)');
    // A's connection (to twemproxy) never closed: A cannot tell, and its release deletes B's entry.
    t.true(await held.release(), "A's stale CAS matched");
    t.is(await own.rawGet('aba:k'), null, "B's entry is gone although B holds the lock");
    t.false(heldB.signal.aborted, 'B learns only at its next renewal');
    await heldB.release();
  },
);

test.serial(
  'what a proxy costs (README): twemproxy failing a key over to another server grants the lock twice',
  async (t) => {
    const servers = [await startMemcached({ direct: true }), await startMemcached({ direct: true })];
    const proxy = await startTwemproxy(servers, {
      autoEjectHosts: true,
      serverFailureLimit: 1,
      serverRetryTimeoutMs: 60_000,
    });
    t.teardown(async () => {
      await proxy.stop();
      await Promise.all(servers.map((s) => s.stop()));
    });
    const make = (): Memlock =>
      new Memlock({
        servers: proxy.address,
        protocol: 'text',
        prefix: 'fo:',
        leaseMs: 30_000,
        heartbeatMs: 10_000,
        timeoutMs: 1000,
      });
    const a = make();
    const b = make();
    t.teardown(() => Promise.all([a.close(), b.close()]));
    // A key twemproxy places on the first server.
    let key = '';
    let held;
    for (let i = 0; key === ''; i++) {
      const lock = await a.acquire(`k${i}`, 'A');
      if ((await servers[0]!.rawGet(`fo:k${i}`)) !== null) {
        key = `k${i}`;
        held = lock;
      } else await lock.release();
    }
    await servers[0]!.kill();
    // twemproxy ejects the dead server after a failure and sends the key to the other one.
    let granted = false;
    for (let attempt = 0; attempt < 20 && !granted; attempt++) {
      granted = await b.tryWithLock(key, 'B', () => true).catch(() => false);
      if (!granted) await sleep(100);
    }
    t.true(granted, 'B got the key from the other server');
    t.false(held!.signal.aborted, "while A's lock still stands: granted twice");
    await held!.release();
  },
);

// ------------------------------------------------- a scripted server --
//
// The text protocol's read-back of the new CAS, against a server that
// answers what the test scripts (a real socket, not a memcached): what the
// client makes of a read that finds another value, a proxy that ran the
// read first, and a connection lost after the write was stored.

/** A server that answers each chunk it reads with the next scripted reply (then closes, for one ending in `<close>`). */
async function scriptedServer(replies: string[]): Promise<{ address: string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.on('data', () => {
      const reply = replies.shift();
      if (reply === undefined) return;
      if (reply.endsWith('<close>')) socket.end(reply.slice(0, -'<close>'.length), () => socket.destroy());
      else socket.write(reply);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

test('text read-back: the new CAS is taken only from a read that finds the value written, and not the CAS it replaced', async (t) => {
  const server = await scriptedServer([
    // The add and its read, in one chunk each way.
    'STORED\r\nVALUE k 0 2 7\r\nv1\r\nEND\r\n',
    // A renewal whose read found another value (someone took the entry over in between).
    'STORED\r\nVALUE k 0 5 9\r\nother\r\nEND\r\n',
    // A renewal whose read came back with the CAS it replaced (a proxy ran the read first).
    'STORED\r\nVALUE k 0 2 7\r\nv1\r\nEND\r\n',
    // A write stored, then the connection lost before the read's answer.
    'STORED\r\n<close>',
  ]);
  const c = client(server.address);
  t.teardown(async () => {
    await c.close();
    await server.close();
  });
  const added = await c.add('k', Buffer.from('v1'), 30);
  t.like(added, { status: 'ok', cas: 7n });
  if (added.status !== 'ok') return;
  t.true(c.isCurrent('k', added.conn));
  const taken = await c.casSet('k', Buffer.from('v1'), 30, 7n);
  t.is(taken.status, 'ok', 'stored: the write happened');
  if (taken.status !== 'ok') return;
  t.false(c.isCurrent('k', taken.conn), 'its CAS is unknown: the lock protocol reads the entry back before using it');
  const early = await c.casSet('k', Buffer.from('v1'), 30, 7n);
  t.false(early.status === 'ok' && c.isCurrent('k', early.conn), 'the CAS it replaced is not the new one');
  const lost = await c.addThenGet('lost', Buffer.from('v'), 30);
  t.is(lost.add.status, 'ok', 'the add was stored: not an error, though its read failed');
  t.false(lost.add.status === 'ok' && c.isCurrent('lost', lost.add.conn));
});
