// dedupe: at-least-once delivery hands the same job to 32 workers at once.
// The job's transaction is idempotent (it checks a done flag under REPEATABLE
// READ), so the outcome is right either way; what the lock saves is the
// database work: with memlock's refusal only one worker runs the transaction.

import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import { repeatableRead, type Resources, type TxCounters } from '../clients.js';
import { NOT_ACQUIRED, type MemlockInstance } from '../lib.js';
import { Samples, describeError, errorCode, interleave, spread, withDeadline, type Contestant } from '../measure.js';
import { perUnit, roundsResult, total, totalOrNull } from '../fold.js';
import { latencyColumns, metricColumn, metricPrimary } from '../columns.js';
import { contestant, defineScenario, findResult, missing, scenarioReport, skip, targetNote } from '../scenario-kit.js';
import type { Redlock } from '@sesamecare-oss/redlock';

const NAME = 'dedupe';
const WORKERS = 32;

/** Delivers the job to worker `w`; resolves 'ran' when the worker ran the job's transaction, 'refused' when a lock turned it away. */
type Deliver = (w: number, jobId: number, tx: () => Promise<void>) => Promise<'ran' | 'refused'>;

interface DedupeRound {
  jobs: number;
  elapsedMs: number;
  tx: TxCounters;
  /** Transactions that found the job not done and did it. */
  executions: number;
  refused: number;
  latencies: Samples;
  cacheOps: number | null;
  /** Every job of the round is done and was done exactly once. */
  exactlyOnce: boolean;
  errors: number;
  firstError: string | null;
}

export const dedupe: Scenario = defineScenario({
  name: NAME,
  summary: `the same job delivered to ${WORKERS} workers at once: database transactions per job without a lock, with memlock, with redlock`,
  needs: ['pg', 'memcache', 'memlock', 'redis'],
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  if (!ctx.pg.ok) {
    skip(report, ctx.pg.reason, 'no-lock', 'memlock', 'redlock');
    return report;
  }
  const pool = res.pool(ctx.pg.value, WORKERS + 1);
  const table = `memlock_bench_jobs_${ctx.runId}`;
  await pool.query(
    `CREATE TABLE ${table} (id bigint PRIMARY KEY, done boolean NOT NULL DEFAULT false, runs int NOT NULL DEFAULT 0)`,
  );
  res.defer(() => pool.query(`DROP TABLE IF EXISTS ${table}`));
  let nextJob = 1;

  const window = ctx.durationMs / ctx.rounds;
  const contestants: Contestant<DedupeRound>[] = [];
  const add = (name: string, deliver: Deliver, cacheOps?: () => Promise<number>): void => {
    const once = (ms: number): Promise<DedupeRound> => dedupeRound(pool, table, () => nextJob++, deliver, ms, cacheOps);
    contestants.push(
      contestant(ctx, NAME, name, {
        warmUp: () => once(ctx.warmupMs),
        round: () => once(window),
        describe: (round) =>
          `${round.jobs} jobs, ${(round.tx.dbTx / Math.max(1, round.jobs)).toFixed(2)} db tx/job, ` +
          `${round.tx.aborts} aborted, exactly once ${round.exactlyOnce ? 'yes' : 'NO'}`,
      }),
    );
  };

  add('no-lock', async (_w, _job, tx) => {
    await tx();
    return 'ran';
  });

  if (ctx.memcache.ok && ctx.memlock.ok) {
    const mc = ctx.memcache.value;
    const mod = ctx.memlock.value;
    // Consumers of a queue are separate processes: one instance (one connection) per worker.
    const own: MemlockInstance[] = Array.from({ length: WORKERS }, () => res.memlock(mod, { servers: mc.servers }));
    add(
      'memlock',
      async (w, job, tx) => {
        try {
          await (own[w] as MemlockInstance).tryWithLock(`${table}:${job}`, `worker-${w}`, tx);
          return 'ran';
        } catch (err) {
          if (errorCode(err) === NOT_ACQUIRED) return 'refused';
          throw err;
        }
      },
      mc.ops,
    );
  } else skip(report, missing(ctx.memcache, ctx.memlock), 'memlock');

  if (ctx.redis.ok) {
    const url = ctx.redis.value.url;
    const own: Redlock[] = [];
    for (let w = 0; w < WORKERS; w++) own.push((await res.redlock(url, { retryCount: 0 })).redlock);
    add(
      'redlock',
      async (w, job, tx) => {
        let lock;
        try {
          lock = await (own[w] as Redlock).acquire([`${table}:${job}`], 16_000);
        } catch {
          return 'refused';
        }
        try {
          await tx();
        } finally {
          await lock.release();
        }
        return 'ran';
      },
      ctx.redis.value.ops,
    );
  } else skip(report, ctx.redis.reason, 'redlock');

  const rounds = await interleave(contestants, ctx.rounds);
  for (const [subject, rs] of rounds) report.results.push(toResult(subject, rs));
  const mem = findResult(report.results, 'memlock');
  const perJob = mem?.metrics.dbTxPerJob;
  const jobs = mem?.metrics.jobs;
  if (typeof perJob === 'number' && typeof jobs === 'number') {
    // Exactly one transaction for every job is the target; say how many jobs needed more, not just the mean.
    const extra = Math.round((perJob - 1) * jobs);
    report.notes.push(
      targetNote(
        'one database transaction per job',
        `${perJob.toFixed(3)} (${extra} extra in ${jobs} jobs)`,
        extra === 0,
      ),
    );
  }
  return report;
}

async function dedupeRound(
  pool: pg.Pool,
  table: string,
  newJobId: () => number,
  deliver: Deliver,
  windowMs: number,
  cacheOps?: () => Promise<number>,
): Promise<DedupeRound> {
  const clients = await Promise.all(Array.from({ length: WORKERS }, () => pool.connect()));
  const tx: TxCounters = { dbTx: 0, aborts: 0 };
  const latencies = new Samples();
  const round: DedupeRound = {
    jobs: 0,
    elapsedMs: 0,
    tx,
    executions: 0,
    refused: 0,
    latencies,
    cacheOps: null,
    exactlyOnce: true,
    errors: 0,
    firstError: null,
  };
  const firstJob = newJobId();
  let lastJob = firstJob;
  const ops0 = cacheOps ? await cacheOps() : null;
  const start = performance.now();
  try {
    const runJob = async (jobId: number): Promise<void> => {
      // The job arrives in the database before it is delivered (the producer's insert is not counted).
      await pool.query(`INSERT INTO ${table} (id) VALUES ($1)`, [jobId]);
      const t0 = performance.now();
      const deliveries = clients.map((client, w) =>
        deliver(w, jobId, () =>
          repeatableRead(client, tx, async (c) => {
            const row = await c.query<{ done: boolean }>(`SELECT done FROM ${table} WHERE id = $1`, [jobId]);
            if (row.rows[0]?.done) return; // already done by another delivery: nothing to do
            await c.query(`UPDATE ${table} SET done = true, runs = runs + 1 WHERE id = $1`, [jobId]);
            round.executions++;
          }),
        ),
      );
      for (const d of await Promise.allSettled(deliveries)) {
        if (d.status === 'fulfilled') {
          if (d.value === 'refused') round.refused++;
        } else {
          round.errors++;
          round.firstError ??= describeError(d.reason);
        }
      }
      latencies.push(performance.now() - t0);
      round.jobs++;
    };
    const work = async (): Promise<void> => {
      let jobId = firstJob;
      while (performance.now() < start + windowMs && round.errors < 100) {
        lastJob = jobId;
        await runJob(jobId);
        jobId = newJobId();
      }
    };
    await withDeadline(work(), windowMs + 60_000, 'dedupe round');
  } finally {
    clients.forEach((c) => c.release());
  }
  round.elapsedMs = performance.now() - start;
  const ops1 = cacheOps ? await cacheOps() : null;
  round.cacheOps = ops0 !== null && ops1 !== null ? ops1 - ops0 : null;
  const check = await pool.query<{ bad: string }>(
    `SELECT count(*) AS bad FROM ${table} WHERE id BETWEEN $1 AND $2 AND (NOT done OR runs <> 1)`,
    [firstJob, lastJob],
  );
  round.exactlyOnce = Number(check.rows[0]?.bad ?? 1) === 0;
  return round;
}

function toResult(subject: string, rounds: DedupeRound[]): Result {
  const jobs = total(rounds, (r) => r.jobs);
  const per = (f: (r: DedupeRound) => number): number | null => perUnit(total(rounds, f), jobs);
  const l = Samples.pooled(rounds.map((r) => r.latencies)).summary();
  const cacheOps = totalOrNull(rounds, (r) => r.cacheOps);
  const perRound = rounds.map((r) => r.tx.dbTx / Math.max(1, r.jobs));
  return roundsResult(NAME, subject, rounds, {
    opsPerSec: spread(rounds.map((r) => r.jobs / (r.elapsedMs / 1000))).median,
    p50Ms: l.p50Ms,
    p99Ms: l.p99Ms,
    spreadPct: spread(perRound).spreadPct,
    samples: jobs,
    metrics: {
      jobs,
      dbTxPerJob: per((r) => r.tx.dbTx),
      abortedTxPerJob: per((r) => r.tx.aborts),
      executionsPerJob: per((r) => r.executions),
      refusedPerJob: per((r) => r.refused),
      cacheOpsPerJob: perUnit(cacheOps, jobs),
      exactlyOnce: rounds.every((r) => r.exactlyOnce),
    },
  });
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: `Dedupe: each job delivered to ${WORKERS} workers at once`,
    baseline: 'no-lock',
    primary: metricPrimary('db tx/job', 'dbTxPerJob', false),
    columns: [
      { header: 'jobs/s', value: (r) => r.opsPerSec, format: 'rate' },
      metricColumn('aborted tx/job', 'abortedTxPerJob', 'num'),
      metricColumn('refused/job', 'refusedPerJob', 'num'),
      metricColumn('cache ops/job', 'cacheOpsPerJob', 'num'),
      ...latencyColumns('job'),
      metricColumn('done exactly once', 'exactlyOnce', 'text'),
    ],
    notes: [
      'the job transaction (REPEATABLE READ, retried on 40001) reads a done flag and sets it if unset, so every job is done exactly once in all ' +
        'subjects; db tx counts every BEGIN. memlock: tryWithLock without wait, one instance per worker, refused workers drop the delivery; ' +
        'redlock: acquire with retryCount 0, one client per worker. Job latency: delivery to the last worker settling.',
    ],
  });
}
