/**
 * Scenario 8: mutual exclusion across processes. 4 processes x 25 workers on
 * 10 keys, every critical section stamped in PostgreSQL on the database clock
 * (see lib/exclusion.ts). Each run owns its memcached; runs are serial (each
 * starts 4 processes).
 */
import test from 'ava';
import { startMemcached } from '../helpers/memcached.js';
import { describeExclusion, runExclusion } from './lib/exclusion.js';

test.serial('no faults: zero overlaps, no lost lock', async (t) => {
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const f = await runExclusion(mc, {
    mode: 'none',
    durationMs: 3000,
    leaseMs: 10_000,
    heartbeatMs: 1000,
    timeoutMs: 500,
  });
  t.log(describeExclusion(f));
  t.deepEqual(f.unexpected, []);
  t.true(f.sections > 200, 'enough critical sections ran');
  t.is(f.unfinished, 0);
  t.is(f.overlaps, 0, 'zero overlaps');
  t.deepEqual(f.lost, {}, 'no lock lost');
  t.is(f.unavailable, 0);
});

test.serial(
  "entries deleted and flushed behind the holders' backs: every overlap's earlier holder is told, within about a heartbeat",
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    const heartbeatMs = 200;
    const f = await runExclusion(mc, {
      mode: 'delete',
      durationMs: 3000,
      leaseMs: 3000,
      heartbeatMs,
      timeoutMs: 300,
      holdMs: [5, 400],
      faultEveryMs: 150,
    });
    t.log(describeExclusion(f));
    t.deepEqual(f.unexpected, []);
    t.true(f.faults > 5);
    t.true(f.overlaps > 0, 'the faults did cause double grants (memcache cannot prevent them)');
    t.is(f.silent, 0, 'no overlap without the earlier holder being told');
    // Told at its next renewal: within a heartbeat (renewals run at most heartbeatMs apart) and a round trip.
    t.true(f.maxSignalLagMs <= heartbeatMs + 500, `told ${f.maxSignalLagMs.toFixed(0)} ms after the overlap began`);
    t.true((f.lost.gone ?? 0) + (f.lost.taken ?? 0) > 0);
  },
);

test.serial(
  'partition of one process while it holds keys: every overlap comes after the partitioned holder was told',
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    const leaseMs = 2000;
    const f = await runExclusion(mc, {
      mode: 'partition',
      durationMs: 4500,
      leaseMs,
      heartbeatMs: 250,
      timeoutMs: 200,
      holdMs: [2, 10],
      holdMsProc0: [1500, 2000],
      afterAbortMs: 2000,
    });
    t.log(describeExclusion(f));
    t.log(JSON.stringify(f.sample));
    t.deepEqual(f.unexpected, []);
    t.true(f.faults >= 1);
    t.true((f.lost.unreachable ?? 0) + (f.lost.deadline ?? 0) > 0, 'the partitioned holders were told');
    t.true(f.overlaps > 0, 'stubborn holders were overlapped');
    t.is(f.silent + f.toldByRelease, 0, 'every overlap had a loss signal');
    t.is(f.toldAfter, 0, 'the signal always came before the other process got the key');
  },
);
