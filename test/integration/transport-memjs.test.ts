/**
 * The bring-your-own memjs client path (`client` option): locks work on the
 * caller's connections, and memlock is a guest there: when its operations
 * time out, the caller's own requests on the same connection keep
 * succeeding (memlock never resets, closes or re-sends on them). Also: the
 * published build neither imports memjs nor needs its types.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import memjs from 'memjs';
import { Memlock, MemjsClientAdapter, MemcacheUnavailableError, LockNotAcquiredError } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startProxy } from '../helpers/proxy.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

const quiet = { log: (): void => undefined };
let mc: MemcachedProcess;
test.before(async () => {
  mc = await startMemcached();
});
test.after.always(() => mc?.stop());

test.serial("locks on a caller's memjs client: acquire, refuse, renew, release; the client stays open", async (t) => {
  const client = memjs.Client.create(mc.address, { retries: 1, logger: quiet });
  t.teardown(() => client.close());
  const a = new Memlock({ client, prefix: 'byo:', leaseMs: 2000, heartbeatMs: 200 });
  const b = new Memlock({ client, prefix: 'byo:', leaseMs: 2000, heartbeatMs: 200 });
  await a.tryWithLock('k', 'A', async (signal) => {
    const first = await mc.rawGet('byo:k');
    await t.throwsAsync(
      b.tryWithLock('k', 'B', () => 1),
      { instanceOf: LockNotAcquiredError },
    );
    await new Promise((resolve) => setTimeout(resolve, 2500));
    t.false(signal.aborted);
    t.not((await mc.rawGet('byo:k'))?.cas, first?.cas, "renewed by CAS on the caller's connection");
  });
  t.is(await mc.rawGet('byo:k'), null, 'released');
  const server = client.servers[0]!;
  const listeners = server.listenerCount('authenticated');
  await a.close();
  await b.close();
  t.is(server.listenerCount('authenticated'), listeners - 2, "close() removes memlock's listeners");
  await client.set('byo:after-close', 'still open', {});
  t.is(
    (await client.get('byo:after-close')).value?.toString(),
    'still open',
    "close() leaves the caller's client working",
  );
});

test.serial(
  "hazard: while memlock's operations time out, the caller's own memjs requests on the same connection keep succeeding",
  async (t) => {
    const proxy = await startProxy(mc);
    // retries: 1 = memjs sends each request once, so a failure would show.
    const client = memjs.Client.create(proxy.address, { retries: 1, timeout: 5, logger: quiet });
    const memlock = new Memlock({ client, prefix: 'hazard:', timeoutMs: 100 });
    t.teardown(async () => {
      await memlock.close();
      client.close();
      await proxy.close();
    });
    await client.set('hazard:app', 'app value', {});
    // Every reply now takes 300 ms: memlock's 100 ms deadline passes, memjs's 5 s does not.
    proxy.setLatency(300);
    const appRequests = Array.from({ length: 5 }, () => client.get('hazard:app'));
    const lockAttempts = Array.from({ length: 5 }, (_, i) => memlock.tryWithLock(`k${i}`, 'A', () => 'ran'));
    const moreApp = client.set('hazard:app2', 'written meanwhile', {});
    const locks = await Promise.allSettled(lockAttempts);
    for (const outcome of locks) {
      t.is(outcome.status, 'rejected');
      if (outcome.status === 'rejected') {
        t.true(outcome.reason instanceof MemcacheUnavailableError, String(outcome.reason));
        t.true((outcome.reason as MemcacheUnavailableError).mayHaveApplied, 'a timed-out add may have been applied');
      }
    }
    for (const result of await Promise.all(appRequests)) t.is(result.value?.toString(), 'app value');
    t.true(await moreApp);
    proxy.setLatency(0);
    // Late replies to memlock's requests were consumed without harm; the app's connection is the same one.
    t.is((await client.get('hazard:app2')).value?.toString(), 'written meanwhile');
    t.is(proxy.accepted, 1, "the caller's connection was never reset or replaced");
    t.is(proxy.connections, 1);
    // And memlock works again on it once the server is fast.
    t.is(
      await memlock.tryWithLock('k0', 'A', () => 'ran', { stealAfterMs: 0 }).catch((e: unknown) => String(e)),
      'ran',
    );
  },
);

test.serial("request ids share the caller's counter and wrap before 2^31", async (t) => {
  const client = memjs.Client.create(mc.address, { retries: 1, logger: quiet });
  t.teardown(() => client.close());
  (client as unknown as { seq: number }).seq = 2 ** 31 - 3;
  const adapter = new MemjsClientAdapter(client, { timeoutMs: 500 });
  t.teardown(() => adapter.close());
  for (let i = 0; i < 6; i++) t.is((await adapter.add(`wrap:${i}`, Buffer.from('v'), 10)).status, 'ok');
  t.true(client.seq >= 1 && client.seq < 10, `counter wrapped to ${client.seq}`);
  t.is((await client.get('wrap:0')).value?.toString(), 'v');
});

test.serial('the published build imports no memjs and its types need no @types/memjs', async (t) => {
  const out = mkdtempSync(path.join(os.tmpdir(), 'memlock-dts-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  await promisify(execFile)(process.execPath, [
    path.resolve('node_modules/typescript/bin/tsc'),
    '-p',
    'tsconfig.build.json',
    '--outDir',
    out,
  ]);
  const files = readdirSync(out, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.js') || f.endsWith('.d.ts'));
  t.true(files.includes('index.d.ts'));
  for (const file of files) {
    t.notRegex(readFileSync(path.join(out, file), 'utf8'), /(from|import\()\s*['"]memjs['"]/, `${file} imports memjs`);
  }
});

test.serial(
  "a connection memjs drops is no longer current at once, though memjs's `connected` flag still says true",
  async (t) => {
    const client = memjs.Client.create(mc.address, { retries: 1, logger: quiet });
    t.teardown(() => client.close());
    const adapter = new MemjsClientAdapter(client, { timeoutMs: 2000 });
    t.teardown(() => adapter.close());
    const key = 'byo:generation';
    const added = await adapter.add(key, Buffer.from('mine'), 10);
    if (added.status !== 'ok') throw new Error(`add: ${added.status}`);
    t.true(adapter.isCurrent(key, added.conn));
    // memjs drops the connection (its own socket timeout or error path) while
    // a request of ours is out: until the socket's 'close' event, `connected`
    // stays true, yet a CAS from that connection may predate a restart.
    const server = client.servers[0]!;
    const pending = adapter.get(key);
    server.error(new Error('socket timed out waiting on response.'));
    t.true(server.connected, 'memjs still reports the dead connection as connected');
    t.false(adapter.isCurrent(key, added.conn), 'the CAS from the dropped connection is stale');
    await t.throwsAsync(pending, { instanceOf: MemcacheUnavailableError });
  },
);
