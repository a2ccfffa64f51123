/**
 * Scenario 2: a slow server. The fault proxy adds latency in both directions,
 * so a round trip takes longer than `timeoutMs` while a request still reaches
 * memcached (and may be applied) before the client gives up on it. Each test
 * owns its memcached.
 */
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Memlock,
  MemcacheLockClient,
  LockNotAcquiredError,
  MemcacheUnavailableError,
  LockLostError,
} from '../../src/index.js';
import { testProtocol } from '../helpers/protocol.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startProxy, type FaultProxy } from '../helpers/proxy.js';
import { RecordingClient } from './lib/recording.js';
import { SectionMonitor, runControl } from './lib/monitor.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

interface Counters {
  set: number;
  get: number;
  del: number;
}
async function counters(mc: MemcachedProcess): Promise<Counters> {
  const s = await mc.stats();
  return { set: Number(s.cmd_set), get: Number(s.cmd_get), del: Number(s.delete_hits) + Number(s.delete_misses) };
}

async function setup(t: { teardown(fn: () => unknown): void }): Promise<{ mc: MemcachedProcess; proxy: FaultProxy }> {
  const mc = await startMemcached();
  const proxy = await startProxy(mc.endpoint);
  t.teardown(async () => {
    await proxy.close();
    await mc.stop();
  });
  return { mc, proxy };
}

test('latency above timeoutMs: every acquire fails with MemcacheUnavailableError in bounded time, nothing is granted, nothing is sent twice', async (t) => {
  const { mc, proxy } = await setup(t);
  const timeoutMs = 200;
  const leaseMs = 3000;
  const recorders = [0, 1].map(
    () => new RecordingClient(new MemcacheLockClient({ servers: [proxy.address], timeoutMs, protocol: testProtocol })),
  );
  const instances = recorders.map((lockClient) => new Memlock({ lockClient, prefix: 's:', leaseMs, timeoutMs }));
  t.teardown(async () => {
    await Promise.all(instances.map((m) => m.close()));
    await Promise.all(recorders.map((r) => r.close()));
  });
  // Warm the connections, so the slow part is the request, not the connect.
  await Promise.all(instances.map((m, i) => m.tryWithLock(`warm${i}`, 'W', () => 1)));
  const before = await counters(mc);
  const sentBefore = recorders.map((r) => ({ ...r.sent }));
  const wireBefore = recorders.map((r) => ({ ...r.wire }));

  // One way takes 3/4 of the deadline: a request reaches memcached (and is
  // applied) but its reply comes back too late.
  proxy.setLatency(timeoutMs * 0.75);
  let called = 0;
  const attempts = [
    ...['c0', 'c1', 'c2', 'c3'].map((id, i) => ({ m: instances[i % 2]!, key: 'same', id })),
    ...[0, 1, 2, 3].map((i) => ({ m: instances[i % 2]!, key: `own${i}`, id: `d${i}` })),
  ];
  for (let round = 0; round < 2; round++) {
    const results = await Promise.all(
      attempts.map(async ({ m, key, id }) => {
        const start = performance.now();
        const error = await m
          .tryWithLock(key, id, () => {
            called++;
          })
          .then(
            () => undefined,
            (e: unknown) => e,
          );
        return { error, ms: performance.now() - start };
      }),
    );
    for (const { error, ms } of results) {
      t.true(error instanceof MemcacheUnavailableError, `rejects with MemcacheUnavailableError, got ${String(error)}`);
      t.truthy((error as MemcacheUnavailableError).cause);
      // An add, its read-back, and their timeouts: a few deadlines, never a hang.
      t.true(ms <= timeoutMs * 4 + 1000, `settled after ${ms.toFixed(0)} ms`);
    }
  }
  t.is(called, 0, 'fn never ran');
  proxy.setLatency(0);
  await sleep(timeoutMs * 2); // let delayed bytes drain
  const after = await counters(mc);
  const sent = recorders.map((r, i) => ({
    add: r.sent.add - sentBefore[i]!.add,
    get: r.sent.get - sentBefore[i]!.get,
    casSet: r.sent.casSet - sentBefore[i]!.casSet,
    casDelete: r.sent.casDelete - sentBefore[i]!.casDelete,
  }));
  const sentWrites = sent.reduce((n, s) => n + s.add + s.casSet, 0);
  const sentReads = sent.reduce((n, s) => n + s.get, 0);
  const sentDeletes = sent.reduce((n, s) => n + s.casDelete, 0);
  // As memcached counts them (the text protocol reads back after each write).
  const wire = recorders.map((r, i) => ({
    set: r.wire.set - wireBefore[i]!.set,
    get: r.wire.get - wireBefore[i]!.get,
  }));
  t.log(
    `attempts ${attempts.length * 2}; sent ${sentWrites} writes, ${sentReads} reads, ${sentDeletes} deletes; ` +
      `memcached applied ${after.set - before.set} writes, ${after.get - before.get} reads, ${after.del - before.del} deletes`,
  );
  // Every storage command memcached saw was sent once by the library: no transport retry.
  t.true(after.set - before.set <= wire.reduce((n, w) => n + w.set, 0), 'memcached saw no more writes than were sent');
  t.true(after.get - before.get <= wire.reduce((n, w) => n + w.get, 0), 'memcached saw no more reads than were sent');
  t.true(sentWrites <= attempts.length * 2, 'at most one add per attempt (no blind re-send)');
  // The contended key holds at most one (late-applied) entry, from one of the contenders.
  const same = await mc.rawGet('s:same');
  if (same !== null) t.regex(same.value.toString(), /:c[0-3]$/);
  // Such an orphan blocks the key until its lease runs out, then the key is free again.
  const m = instances[0]!;
  const start = performance.now();
  t.is(
    await m.tryWithLock('same', 'later', () => 'ok', {
      wait: { timeoutMs: leaseMs + 3000, minDelayMs: 20, maxDelayMs: 200 },
    }),
    'ok',
  );
  t.true(performance.now() - start <= leaseMs + 2000);
});

test('flapping latency around timeoutMs: contenders through the slow path and a direct one never share a key unless the earlier holder was told first', async (t) => {
  const { mc, proxy } = await setup(t);
  const timeoutMs = 300;
  const leaseMs = 2000;
  const heartbeatMs = 250;
  const recorders = [0, 1].map(
    () => new RecordingClient(new MemcacheLockClient({ servers: [proxy.address], timeoutMs, protocol: testProtocol })),
  );
  const direct = new RecordingClient(
    new MemcacheLockClient({ servers: [mc.address], timeoutMs, protocol: testProtocol }),
  );
  const instances = [...recorders, direct].map(
    (lockClient) => new Memlock({ lockClient, prefix: 'f:', leaseMs, heartbeatMs, timeoutMs }),
  );
  t.teardown(async () => {
    await Promise.all(instances.map((m) => m.close()));
    await Promise.all([...recorders, direct].map((r) => r.close()));
  });
  const before = await counters(mc);
  const monitor = new SectionMonitor();
  const outcomes = { ok: 0, refused: 0, unavailable: 0, lost: 0, other: [] as string[] };
  let flapping = true;
  const flap = (async () => {
    // Round trips of 0 to 1.6 x timeoutMs.
    while (flapping) {
      proxy.setLatency(Math.random() * timeoutMs * 0.8);
      await sleep(100);
    }
    proxy.setLatency(0);
  })();
  const until = performance.now() + 3000;
  // Positive control: an unlocked worker beside a locked one on key 'control'
  // (see runControl): the monitor must report its overlaps as silent.
  const control = runControl(monitor, instances[0]!, until);
  await Promise.all(
    Array.from({ length: 12 }, async (_, w) => {
      const m = instances[w % 3]!;
      while (performance.now() < until) {
        const key = `k${w % 2}`;
        try {
          await m.tryWithLock(key, `w${w}`, async (signal) => {
            const section = monitor.enter(key, `w${w}`, signal);
            try {
              await sleep(20 + Math.random() * 60); // ignores the signal on purpose: overlaps must still be signalled first
            } finally {
              monitor.exit(section);
              if (signal.reason instanceof LockLostError) outcomes.lost++;
            }
          });
          outcomes.ok++;
        } catch (error) {
          if (error instanceof LockNotAcquiredError) outcomes.refused++;
          else if (error instanceof MemcacheUnavailableError) outcomes.unavailable++;
          else outcomes.other.push(String(error));
          await sleep(5);
        }
      }
    }),
  );
  await control;
  flapping = false;
  await flap;
  await sleep(timeoutMs * 2);
  const after = await counters(mc);
  const all = [...recorders, direct];
  const sentWrites = all.reduce((n, r) => n + r.sent.add + r.sent.casSet, 0);
  const sentReads = all.reduce((n, r) => n + r.sent.get, 0);
  const sentDeletes = all.reduce((n, r) => n + r.sent.casDelete, 0);
  t.log(
    `sections ${outcomes.ok}, refused ${outcomes.refused}, unavailable ${outcomes.unavailable}, lost while held ${outcomes.lost}; ` +
      `overlaps ${monitor.overlaps.length} (control ${monitor.overlaps.filter((o) => o.key === 'control').length}); ` +
      `sent ${sentWrites} writes / ${sentReads} reads / ${sentDeletes} deletes, memcached saw ${after.set - before.set} / ${after.get - before.get} / ${after.del - before.del}`,
  );
  t.deepEqual(outcomes.other, [], 'only typed errors');
  t.true(outcomes.ok > 10, 'the lock kept working');
  t.true(
    monitor.silent().some((o) => o.key === 'control'),
    "positive control: an unlocked worker's overlaps are reported",
  );
  t.deepEqual(
    monitor
      .silent()
      .map((o) => o.key)
      .filter((k) => k !== 'control'),
    [],
    'no overlap without a loss signal',
  );
  t.deepEqual(
    monitor
      .late()
      .map((o) => o.key)
      .filter((k) => k !== 'control'),
    [],
    'every overlap came after the earlier holder was told',
  );
  // As memcached counts them (the text protocol reads back after each write, and deletes with a CAS write).
  const wire = all.reduce((n, r) => ({ set: n.set + r.wire.set, get: n.get + r.wire.get, del: n.del + r.wire.del }), {
    set: 0,
    get: 0,
    del: 0,
  });
  t.true(after.set - before.set <= wire.set, 'no write applied more often than sent');
  t.true(after.get - before.get <= wire.get, 'no read more often than sent');
  t.true(after.del - before.del <= wire.del, 'no delete more often than sent');
});
