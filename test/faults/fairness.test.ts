/**
 * Waiting across processes (API.md 13): no process starves, and a waiter
 * that crashed while queued delays the key by a bounded time only.
 */
import test from 'ava';
import { Memlock } from '../../src/index.js';
import { RESERVATION_TTL_SECONDS } from '../../src/protocol.js';
import { QUEUE_ALIVE_MS } from '../../src/fleet-queue.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startFixture, type Fixture } from './lib/child.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

let mc: MemcachedProcess;
const fixtures: Fixture[] = [];
const instances: Memlock[] = [];
test.before(async () => {
  mc = await startMemcached();
});
test.after.always(async () => {
  await Promise.all(fixtures.map((f) => f.kill()));
  await Promise.all(instances.map((m) => m.close()));
  await mc.stop();
});
failOnUnhandled(test);

interface Done {
  commits: number;
  timeouts: number;
  errors: number;
}

test('several processes contending for one key each get a fair share, without wait timeouts', async (t) => {
  const processes = 4;
  const prefix = 'fair:';
  const runs = Array.from({ length: processes }, () =>
    startFixture('fair-waiter.mts', {
      SERVERS: mc.address,
      PREFIX: prefix,
      KEY: 'hot',
      WORKERS: '4',
      HOLD_MS: '2',
      DURATION_MS: '4000',
    }),
  );
  fixtures.push(...runs);
  await Promise.all(runs.map((f) => f.next('ready', 60_000)));
  for (const f of runs) f.send('go');
  const results = await Promise.all(runs.map(async (f) => (await f.next('done', 60_000)) as unknown as Done));
  const commits = results.map((r) => r.commits);
  t.log(`commits per process: ${commits.join(', ')}`);
  t.deepEqual(
    results.map((r) => r.errors),
    [0, 0, 0, 0],
  );
  t.deepEqual(
    results.map((r) => r.timeouts),
    [0, 0, 0, 0],
    'no waiter ran out its 10 s',
  );
  t.true(Math.min(...commits) > 0, 'a process starved');
  // Before the waiter queue, a releasing process re-took the key ahead of
  // remote waiters: the least served process got ~0.5% of the busiest one.
  t.true(Math.min(...commits) / Math.max(...commits) >= 0.5, `share ${commits.join('/')}`);
});

test('a waiter killed while queued delays the key by at most the reservation and liveness bounds', async (t) => {
  const prefix = 'crash:';
  const holder = new Memlock({ servers: mc.address, prefix });
  const survivor = new Memlock({ servers: mc.address, prefix });
  instances.push(holder, survivor);
  const lock = await holder.acquire('k', 'holder', { wait: true });
  const doomed = startFixture('fair-waiter.mts', {
    SERVERS: mc.address,
    PREFIX: prefix,
    KEY: 'k',
    WORKERS: '1',
    HOLD_MS: '0',
    DURATION_MS: '0',
    JUST_WAIT: '1',
  });
  fixtures.push(doomed);
  await doomed.next('waiting', 30_000);
  await doomed.kill();
  // The survivor queues behind the dead waiter.
  const waiting = survivor.tryWithLock('k', 'survivor', () => performance.now(), { wait: { timeoutMs: 30_000 } });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const released = performance.now();
  // The release reserves the key for the queue's head: the dead waiter.
  await lock.release();
  const acquiredAt = await waiting;
  const delay = acquiredAt - released;
  t.log(`survivor acquired ${delay.toFixed(0)} ms after the release`);
  // The dead waiter was the queue's head: the key was reserved for it, and the
  // reservation expires after RESERVATION_TTL_SECONDS (+1 s for memcached's
  // whole-second clock), long before its queue entry would (QUEUE_ALIVE_MS).
  t.true(QUEUE_ALIVE_MS > (RESERVATION_TTL_SECONDS + 1) * 1000);
  t.true(delay <= (RESERVATION_TTL_SECONDS + 1) * 1000 + 500, `${delay} ms`);
});
