/**
 * Scenario 8: mutual exclusion across processes. 4 processes x 25 workers on
 * 10 keys, every critical section and loss signal recorded in PostgreSQL,
 * stamped in the worker on one host-wide clock (see lib/exclusion.ts,
 * lib/sections.ts). Each run owns its memcached; runs are serial (each
 * starts 4 processes). Each run logs a `figures:` line that
 * test/faults/repeat.sh adds up.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { leaseTtlSeconds } from '../../src/protocol.js';
import { startMemcached } from '../helpers/memcached.js';
import { describeExclusion, figuresLine, runExclusion, tallyOverlaps } from './lib/exclusion.js';
import {
  LossStamps,
  createHistoryTables,
  dropHistoryTables,
  hostNow,
  insertLoss,
  insertSection,
  readHistory,
} from './lib/sections.js';

const DB = { host: '127.0.0.1', port: 5432, user: 'root', database: 'test' };

test.serial(
  'oracle self-test on PostgreSQL: a loss written while the pool is busy counts when it was told; a planted late one is reported',
  async (t) => {
    const table = `memlock_mx_self_${randomBytes(4).toString('hex')}`;
    const db = new pg.Client(DB);
    await db.connect();
    // The workers' loss pool: 2 connections, here both busy for BUSY_MS, so a
    // loss's INSERT runs BUSY_MS after it was told.
    const abortPool = new pg.Pool({ ...DB, max: 2 });
    t.teardown(async () => {
      await dropHistoryTables(db, table).catch(() => undefined);
      await db.end();
      await abortPool.end();
    });
    await createHistoryTables(db, table);
    const errors: unknown[] = [];
    const losses = new LossStamps(
      (stamp) => insertLoss(abortPool, table, stamp),
      (error) => errors.push(error),
    );
    const BUSY_MS = 300;
    const grant = async (id: string, key: string, proc: number): Promise<number> => {
      const started = hostNow();
      await insertSection(db, table, { id, key, proc, worker: 0, started });
      return started;
    };

    // k1: A is told 20 ms before B is granted, while the pool is busy.
    await grant('A', 'k1', 0);
    const busy = [0, 1].map(() => abortPool.query(`SELECT pg_sleep(${BUSY_MS / 1000})`));
    await sleep(20); // both queries hold their connection
    const toldA = losses.told('A', 'unreachable').at;
    await sleep(20);
    await grant('B', 'k1', 1);
    // k2: D is granted, C is told 50 ms later (planted lateness).
    await grant('C', 'k2', 0);
    await sleep(5);
    const grantedD = await grant('D', 'k2', 1);
    await sleep(50);
    const toldC = losses.told('C', 'unreachable').at;
    await Promise.all(busy);
    const poolFreed = hostNow();
    await losses.settled();
    t.deepEqual(errors, []);
    // The condition under test: A's row could not be written until the pool freed.
    t.true(
      poolFreed - toldA >= BUSY_MS - 60,
      `the pool was busy ${(poolFreed - toldA).toFixed(0)} ms after A was told`,
    );

    const history = await readHistory(db, table);
    const a = history.losses.find((l) => l.id === 'A');
    t.true(a !== undefined && Math.abs(a.at - toldA) < 1, 'the stored stamp is the moment A was told');
    const tally = tallyOverlaps(history.sections, history.losses);
    t.log(JSON.stringify(tally));
    t.is(tally.overlaps, 2, 'A/B and C/D overlap (both sections are still open)');
    t.is(tally.toldBefore, 1, 'A: told before B was granted, although its row was written later');
    t.is(tally.toldAfter, 1, 'C: told after D was granted');
    t.true(tally.maxSignalLagMs >= 50, `lag ${tally.maxSignalLagMs} ms`);
    t.true(Math.abs(tally.maxSignalLagMs - (toldC - grantedD)) < 1, "the lag is C's told time minus D's grant");
    t.is(tally.silent, 0);
  },
);

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
  t.log(figuresLine(f));
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
    t.log(figuresLine(f));
    t.log(JSON.stringify(f.sample));
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
      // The partition must start while process 0 holds a key, at the latest lease + 2 s before the end.
      durationMs: 6000,
      leaseMs,
      heartbeatMs: 250,
      timeoutMs: 200,
      holdMs: [2, 10],
      holdMsProc0: [1500, 2000],
      // A stubborn section must outlast the partitioned entry, which lives up to
      // its TTL after the last renewal (TTL ceil(lease) + 1 since issue 16):
      // shorter, and it ends before anyone else can get the key.
      afterAbortMs: leaseTtlSeconds(leaseMs) * 1000,
    });
    t.log(describeExclusion(f));
    t.log(figuresLine(f));
    t.log(JSON.stringify(f.sample));
    t.deepEqual(f.unexpected, []);
    t.true(f.faults >= 1, 'process 0 was partitioned while it held a key');
    t.true((f.lost.unreachable ?? 0) + (f.lost.deadline ?? 0) > 0, 'the partitioned holders were told');
    t.true(f.overlaps > 0, 'stubborn holders were overlapped');
    t.is(f.silent + f.toldByRelease, 0, 'every overlap had a loss signal');
    t.is(f.toldAfter, 0, 'the signal always came before the other process got the key');
  },
);
