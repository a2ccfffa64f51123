/**
 * Self-test of the test harness: real memcached processes, the raw protocol
 * helpers, the fault proxy and the leak helpers must do what the library
 * tests rely on.
 */
import test from 'ava';
import memjs from 'memjs';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startMemcached, stopAll } from '../helpers/memcached.js';
import { startProxy } from '../helpers/proxy.js';
import { textClient } from '../helpers/raw-protocol.js';
import { activeHandles, leakedHandles, settledLeaks, waitFor } from '../helpers/resources.js';

test.after.always(async () => {
  await stopAll();
});

/** Resolves 'timeout' if `p` has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** A persistent text-protocol connection, to observe one connection across proxy modes. */
async function openRaw(port: number): Promise<{
  socket: net.Socket;
  closed: Promise<void>;
  request: (line: string) => Promise<string>;
}> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  let buf = '';
  const waiters: ((line: string) => void)[] = [];
  socket.setEncoding('latin1');
  socket.on('data', (s: string) => {
    buf += s;
    let i: number;
    while ((i = buf.indexOf('\r\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      waiters.shift()?.(line);
    }
  });
  return {
    socket,
    closed,
    request: (line) =>
      new Promise<string>((resolve) => {
        waiters.push(resolve);
        socket.write(`${line}\r\n`);
      }),
  };
}

function memjsClient(servers: string): memjs.Client {
  return memjs.Client.create(servers, { retries: 0, timeout: 0.5, conntimeout: 1, logger: { log: () => undefined } });
}

test.serial('stopAll kills every started server', async (t) => {
  const a = await startMemcached();
  const b = await startMemcached();
  t.true(a.running && b.running);
  await stopAll();
  t.false(a.running);
  t.false(b.running);
  const err = await t.throwsAsync(a.stats({ timeoutMs: 500 }));
  t.regex(err?.message ?? '', /ECONNREFUSED/);
});

test('start: address, pid and stats match the spawned process', async (t) => {
  const m = await startMemcached({ memoryMb: 16 });
  t.is(m.host, '127.0.0.1');
  t.is(m.address, `127.0.0.1:${m.port}`);
  t.true(typeof m.pid === 'number');
  const stats = await m.stats();
  t.is(stats['pid'], String(m.pid));
  t.is(stats['limit_maxbytes'], String(16 * 1024 * 1024));
  t.is(stats['threads'], '1');
  await m.stop();
  t.false(m.running);
});

test('a fixed port that is taken fails with memcached stderr', async (t) => {
  const m = await startMemcached();
  const err = await t.throwsAsync(startMemcached({ port: m.port, startTimeoutMs: 2000 }));
  t.regex(err?.message ?? '', /in use/i);
});

test('raw set/get/delete and flush via the text protocol', async (t) => {
  const m = await startMemcached();
  t.is(await m.rawGet('absent'), null);
  await m.rawSet('k1', 'hello', 60);
  const e1 = await m.rawGet('k1');
  t.is(e1?.value.toString(), 'hello');
  t.true(typeof e1?.cas === 'bigint' && e1.cas > 0n);
  // binary-safe value, including CRLF and "END"
  const bin = Buffer.from('a\r\nEND\r\n\0\xff', 'latin1');
  await m.rawSet('k2', bin, 0);
  t.deepEqual((await m.rawGet('k2'))?.value, bin);
  // CAS changes on every write
  await m.rawSet('k1', 'again', 60);
  const e1b = await m.rawGet('k1');
  t.true((e1b?.cas ?? 0n) > (e1?.cas ?? 0n));
  // memjs sees what the raw helper wrote
  const c = memjsClient(m.address);
  t.is((await c.get('k1')).value?.toString(), 'again');
  c.close();

  t.true(await m.rawDelete('k1'));
  t.false(await m.rawDelete('k1'));
  t.is(await m.rawGet('k1'), null);

  await m.flush();
  t.is(await m.rawGet('k2'), null);
  await t.throwsAsync(m.rawGet('has space'), { instanceOf: RangeError });
});

test('ttl is honoured by rawSet', async (t) => {
  const m = await startMemcached();
  await m.rawSet('short', 'x', 1);
  t.not(await m.rawGet('short'), null);
  await waitFor(async () => (await m.rawGet('short')) === null, 3000, 100, 'entry expiry');
  t.pass();
});

test('kill + restart on the same port: entries gone, CAS counter restarts', async (t) => {
  const m = await startMemcached();
  const { port } = m;
  const pid1 = m.pid;
  for (let i = 0; i < 20; i++) await m.rawSet('k', `v${i}`, 0);
  const before = await m.rawGet('k');
  t.true((before?.cas ?? 0n) >= 20n);

  await m.kill();
  t.false(m.running);
  await t.throwsAsync(m.rawGet('k', { timeoutMs: 500 }));

  await m.restart();
  t.true(m.running);
  t.is(m.port, port);
  t.not(m.pid, pid1);
  t.is(await m.rawGet('k'), null);
  await m.rawSet('fresh', 'x', 0);
  const fresh = await m.rawGet('fresh');
  t.true(fresh !== null && fresh.cas < (before?.cas ?? 0n) && fresh.cas <= 2n, `fresh cas ${fresh?.cas}`);

  // restart straight away again, while the old socket may linger
  await m.restart();
  t.is(m.port, port);
  t.is(await m.rawGet('fresh'), null);
});

test('pause holds requests, resume answers them', async (t) => {
  const m = await startMemcached();
  await m.rawSet('k', 'v', 0);
  await m.pause();
  const pending = m.rawGet('k');
  t.is(await within(pending, 300), 'timeout');
  await m.resume();
  const got = await within(pending, 1000);
  t.not(got, 'timeout');
  t.is(got === 'timeout' ? undefined : got?.value.toString(), 'v');
  // a paused server can still be stopped gracefully
  await m.pause();
  await m.stop();
  t.false(m.running);
});

for (const how of ['process.exit(0)', "process.kill(process.pid, 'SIGKILL')"]) {
  test(`servers die with the test process: ${how}`, async (t) => {
    // SIGKILL skips the 'exit' hook; then setpriv's parent-death signal does the job.
    const script = `
      import { startMemcached } from './test/helpers/memcached.ts';
      const m = await startMemcached();
      console.log(m.pid);
      ${how};
    `;
    const out = await new Promise<string>((resolve) => {
      execFile(
        process.execPath,
        ['--import=tsx', '--input-type=module', '-e', script],
        { cwd: process.cwd(), timeout: 10_000 },
        (_err, stdout) => resolve(stdout),
      );
    });
    const pid = Number(out.trim());
    t.true(pid > 0, `child printed ${JSON.stringify(out)}`);
    const alive = (): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor(() => !alive(), 2000, 20, `memcached ${pid} to be gone`);
    t.false(alive());
  });
}

test.serial('proxy forwards memjs traffic both ways and closes cleanly', async (t) => {
  const m = await startMemcached();
  const before = activeHandles();
  const proxy = await startProxy(m);
  t.is(proxy.address, `127.0.0.1:${proxy.port}`);
  const c = memjsClient(proxy.address);
  await c.set('pk', 'pv', { expires: 60 });
  t.is((await c.get('pk')).value?.toString(), 'pv');
  t.is((await m.rawGet('pk'))?.value.toString(), 'pv');
  t.is(proxy.connections, 1);
  t.is(proxy.accepted, 1);
  c.close();
  await waitFor(() => proxy.connections === 0, 1000, 10, 'proxy connection closed');
  await proxy.close();
  t.deepEqual(await settledLeaks(before), []);
});

test('latency delays each direction by the configured ms, preserving order', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const conn = await openRaw(proxy.port);
  let start = performance.now();
  t.is(await conn.request('version'), 'VERSION 1.6.18');
  const baseline = performance.now() - start;

  proxy.setLatency(100);
  start = performance.now();
  t.is(await conn.request('version'), 'VERSION 1.6.18');
  const delayed = performance.now() - start;
  t.log(`round trip: ${baseline.toFixed(1)} ms plain, ${delayed.toFixed(1)} ms with 100 ms latency`);
  t.true(delayed >= 195, `round trip ${delayed} ms`); // 100 up + 100 down
  t.true(delayed < 400, `round trip ${delayed} ms`);

  // pipelined requests reach the server, and replies come back, in order
  await conn.request('set ord 0 0 1\r\n-');
  const replies = await Promise.all(
    Array.from({ length: 20 }, (_, i) => conn.request(`append ord 0 0 1\r\n${i % 10}`)),
  );
  t.deepEqual(
    replies,
    Array.from({ length: 20 }, () => 'STORED'),
  );
  t.is((await m.rawGet('ord'))?.value.toString(), '-01234567890123456789');
  conn.socket.destroy();
});

test("latency in one direction: 'down' applies the request at once and delays only its reply", async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const conn = await openRaw(proxy.port);
  t.is(await conn.request('version'), 'VERSION 1.6.18');
  const latencyMs = 1000;
  proxy.setLatency(latencyMs, 'down');
  const start = performance.now();
  let replied = false;
  const reply = conn.request('set dir 0 0 1\r\nx').finally(() => {
    replied = true;
  });
  await waitFor(async () => (await m.rawGet('dir')) !== null, 10_000, 5, 'the set reached the server');
  const appliedAfter = performance.now() - start;
  t.true(appliedAfter < latencyMs, `the set was applied ${appliedAfter.toFixed(0)} ms after it was sent`);
  t.false(replied, 'its reply was still held');
  t.is(await reply, 'STORED');
  const roundTrip = performance.now() - start;
  t.true(roundTrip >= latencyMs - 5, `round trip ${roundTrip.toFixed(1)} ms`);
  t.throws(() => proxy.setLatency(10, 'sideways' as 'up'), { instanceOf: RangeError, message: /direction/ });
  conn.socket.destroy();
});

test('stall answers nothing but keeps the connection; heal resumes on it', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const conn = await openRaw(proxy.port);
  t.is(await conn.request('version'), 'VERSION 1.6.18');

  proxy.stall();
  const lost = conn.request('set stalled 0 0 1\r\nx');
  t.is(await within(lost, 300), 'timeout');
  t.is(proxy.connections, 1);
  t.false(conn.socket.destroyed);
  // the request was discarded, not delayed: the server never saw it
  t.is(await m.rawGet('stalled'), null);
  // new connections are accepted but equally silent
  const fresh = textClient(proxy);
  await t.throwsAsync(fresh.stats({ timeoutMs: 200 }), { message: /no complete reply/ });

  proxy.heal();
  // the reply for the discarded request never comes; the next reply answers
  // the first waiter, which is how a client that ignores a lost reply would
  // see it - so use a fresh connection for real work after heal
  t.is(await within(lost, 200), 'timeout');
  t.is((await fresh.stats({ timeoutMs: 1000 }))['pid'], String(m.pid));
  conn.socket.destroy();
});

test('drop closes every client connection', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const a = await openRaw(proxy.port);
  const b = await openRaw(proxy.port);
  await a.request('version');
  await b.request('version');
  t.is(proxy.connections, 2);
  const serverConns = Number((await m.stats())['curr_connections']);

  proxy.drop();
  t.not(await within(a.closed, 500), 'timeout');
  t.not(await within(b.closed, 500), 'timeout');
  t.is(proxy.connections, 0);
  // the upstream side is closed as well
  await waitFor(
    async () => Number((await m.stats())['curr_connections']) <= serverConns - 2,
    1000,
    10,
    'upstream close',
  );

  // the proxy keeps accepting after a drop
  t.is((await textClient(proxy).stats())['pid'], String(m.pid));
});

test('refuse closes new connections, keeps existing ones; heal accepts again', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const existing = await openRaw(proxy.port);
  proxy.refuse();
  await t.throwsAsync(textClient(proxy).stats({ timeoutMs: 1000 }), {
    message: /closed before a complete reply|ECONNRESET/,
  });
  t.is(await existing.request('version'), 'VERSION 1.6.18');
  t.is(proxy.accepted, 1);

  proxy.heal();
  t.is((await textClient(proxy).stats())['pid'], String(m.pid));
  existing.socket.destroy();
});

test('proxy to a dead server closes the client side', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  await m.kill();
  const conn = await openRaw(proxy.port);
  t.not(await within(conn.closed, 1000), 'timeout');
  await m.restart();
  t.is((await textClient(proxy).stats())['pid'], String(m.pid));
});

test('SASL: memjs with the right password works, a wrong one fails', async (t) => {
  const m = await startMemcached({ sasl: { username: 'alice', password: 's3cret' } });
  t.deepEqual(m.sasl, { username: 'alice', password: 's3cret' });
  const good = memjsClient(`alice:s3cret@${m.address}`);
  t.teardown(() => good.close());
  await good.set('sk', 'sv', { expires: 60 });
  t.is((await good.get('sk')).value?.toString(), 'sv');

  // memjs rejects with a plain string here, not an Error, hence `any`
  const bad = memjsClient(`alice:wrong@${m.address}`);
  t.teardown(() => bad.close());
  const badErr: unknown = await t.throwsAsync(bad.get('sk'), { any: true });
  t.regex(String(badErr), /authentication failed/i);
  const anon = memjsClient(m.address);
  t.teardown(() => anon.close());
  await t.throwsAsync(anon.get('sk'), { any: true });

  // raw helpers authenticate over the binary protocol
  const e = await m.rawGet('sk');
  t.is(e?.value.toString(), 'sv');
  t.true((e?.cas ?? 0n) > 0n);
  await m.rawSet('sk', 'tampered', 0);
  t.true(await m.rawDelete('sk'));
  t.false(await m.rawDelete('sk'));
  await m.rawSet('sk2', 'y', 0);
  await m.flush();
  t.is(await m.rawGet('sk2'), null);

  await m.restart();
  const again = memjsClient(`alice:s3cret@${m.address}`);
  t.teardown(() => again.close());
  await again.set('sk', 'after-restart', { expires: 60 });
  t.is((await m.rawGet('sk'))?.value.toString(), 'after-restart');
});

// Resource snapshots are process-wide: leak checks must not overlap other tests.
test.serial("activeHandles/leakedHandles see ref'd timers and servers, not unref'd ones", async (t) => {
  const before = activeHandles();
  const timer = setTimeout(() => undefined, 10_000);
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  t.deepEqual(leakedHandles(before).sort(), ['TCPServerWrap', 'Timeout']);
  timer.unref();
  t.deepEqual(leakedHandles(before), ['TCPServerWrap']);
  clearTimeout(timer);
  await new Promise((resolve) => server.close(resolve));
  t.deepEqual(await settledLeaks(before), []);
  // a running memcached (unref'd child) is not a leak of the code under test
  const m = await startMemcached();
  t.true(m.running);
  t.deepEqual(leakedHandles(before), []);
});

test('waitFor resolves when the condition holds and rejects clearly on timeout', async (t) => {
  let flag = false;
  setTimeout(() => {
    flag = true;
  }, 50);
  await waitFor(() => flag, 1000);
  t.true(flag);
  await waitFor(async () => {
    await sleep(1);
    return true;
  }, 100);
  const start = Date.now();
  await t.throwsAsync(
    waitFor(() => false, 100, 10, 'never'),
    { message: 'waitFor: never not met within 100 ms' },
  );
  t.true(Date.now() - start >= 95);
});

// Not a harness feature: documents how memjs 1.3.2 reacts to the proxy's
// faults, because the library has to compensate (contract rule 6).
test('memjs: a request whose connection is closed by the peer never settles', async (t) => {
  const m = await startMemcached();
  const proxy = await startProxy(m);
  t.teardown(() => proxy.close());
  const c = memjsClient(proxy.address); // timeout 0.5 s, conntimeout 1 s
  t.teardown(() => c.close());
  await c.set('k', 'v', { expires: 60 });

  // stall: memjs' own request timeout fires
  proxy.stall();
  const stalled = c.get('k').then(
    () => 'resolved',
    (e: unknown) => `rejected: ${String(e)}`,
  );
  t.regex(String(await within(stalled, 2000)), /rejected: .*timed out/);

  // stall, then drop while the request is in flight: memjs' 'close' handler
  // disarms the request timeout without failing the request
  const c2 = memjsClient(proxy.address);
  t.teardown(() => c2.close());
  proxy.heal();
  await c2.get('k');
  proxy.stall();
  const dropped = c2.get('k').then(
    () => 'resolved',
    (e: unknown) => `rejected: ${String(e)}`,
  );
  await sleep(50);
  proxy.drop();
  t.is(await within(dropped, 1500), 'timeout');

  // refuse (accept then close): same, the request hangs
  proxy.heal();
  proxy.refuse();
  const c3 = memjsClient(proxy.address);
  t.teardown(() => c3.close());
  const refused = c3.get('k').then(
    () => 'resolved',
    (e: unknown) => `rejected: ${String(e)}`,
  );
  t.is(await within(refused, 1500), 'timeout');
});
