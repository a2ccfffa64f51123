// prefilter: the reason memlock exists. 32 workers increment 4 hot counters in
// PostgreSQL with REPEATABLE READ read-then-update transactions, retried on
// serialization failure. Without a lock in front most attempts abort; with a
// lock per row in front, the database sees (almost) only transactions that
// commit. The database stays the guard: the transaction is unchanged.

import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import { redlockSection, repeatableRead, type Resources, type TxCounters } from '../clients.js';
import type { MemlockInstance } from '../lib.js';
import { Samples, describeError, interleave, withDeadline, type Contestant } from '../measure.js';
import { perUnit, rateFigures, roundsResult, total, totalOrNull } from '../fold.js';
import { fmtRatio, ratioOf } from '../report.js';
import { latencyColumns, metricColumn, ratePrimary } from '../columns.js';
import { contestant, defineScenario, findResult, missing, scenarioReport, skip, targetNote } from '../scenario-kit.js';

const NAME = 'prefilter';
const WORKERS = 32;
const HOT_ROWS = 4;
const TABLE_ROWS = 1000;
const WAIT = { timeoutMs: 10_000 };
// Polling as fast as memlock's backoff may: redlock's default 200 ms retry delay would mostly measure sleeping.
const REDLOCK_RETRY = { retryCount: 1000, retryDelay: 10, retryJitter: 10 };

/** Runs the increment of `row` for worker `w`, behind whatever lock the subject puts in front. */
type Guard = (w: number, row: number, tx: () => Promise<void>) => Promise<void>;

interface PrefilterRound {
  commits: number;
  elapsedMs: number;
  tx: TxCounters;
  latencies: Samples;
  cacheOps: number | null;
  sumMatches: boolean;
  errors: number;
  firstError: string | null;
}

export const prefilter: Scenario = defineScenario({
  name: NAME,
  summary: `${WORKERS} workers, ${HOT_ROWS} hot PostgreSQL rows, REPEATABLE READ + retry: no pre-filter vs memlock (wait) vs redlock`,
  needs: ['pg', 'memcache', 'memlock', 'redis'],
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  if (!ctx.pg.ok) {
    skip(report, ctx.pg.reason, 'no-prefilter', 'memlock', 'memlock-32-instances', 'redlock');
    return report;
  }
  // One connection per worker, plus one for setup and checks.
  const pool = res.pool(ctx.pg.value, WORKERS + 1);
  const table = `memlock_bench_counters_${ctx.runId}`;
  await pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`);
  res.defer(() => pool.query(`DROP TABLE IF EXISTS ${table}`));
  await pool.query(`INSERT INTO ${table} (id) SELECT generate_series(1, ${TABLE_ROWS})`);

  const window = ctx.durationMs / ctx.rounds;
  const contestants: Contestant<PrefilterRound>[] = [];
  const add = (name: string, guard: Guard, cacheOps?: () => Promise<number>): void => {
    const once = (ms: number): Promise<PrefilterRound> => prefilterRound(pool, table, guard, ms, cacheOps);
    contestants.push(
      contestant(ctx, NAME, name, {
        warmUp: () => once(ctx.warmupMs),
        round: () => once(window),
        describe: (round) =>
          `${Math.round(round.commits / (round.elapsedMs / 1000))} commits/s, ${round.tx.aborts} aborted of ${round.tx.dbTx} tx, ` +
          `cache ops/commit ${round.cacheOps === null ? '-' : (round.cacheOps / Math.max(1, round.commits)).toFixed(2)}, sums ${round.sumMatches ? 'ok' : 'MISMATCH'}`,
      }),
    );
  };

  add('no-prefilter', (_w, _row, tx) => tx());

  if (ctx.memcache.ok && ctx.memlock.ok) {
    const mc = ctx.memcache.value;
    const mod = ctx.memlock.value;
    const shared = res.memlock(mod, { servers: mc.servers });
    add('memlock', (w, row, tx) => shared.tryWithLock(`${table}:${row}`, `worker-${w}`, tx, { wait: WAIT }), mc.ops);
    // Each worker with its own instance and connection, as if every worker were its own process.
    const own: MemlockInstance[] = Array.from({ length: WORKERS }, () => res.memlock(mod, { servers: mc.servers }));
    add(
      'memlock-32-instances',
      (w, row, tx) => (own[w] as MemlockInstance).tryWithLock(`${table}:${row}`, `worker-${w}`, tx, { wait: WAIT }),
      mc.ops,
    );
  } else skip(report, missing(ctx.memcache, ctx.memlock), 'memlock', 'memlock-32-instances');

  if (ctx.redis.ok) {
    const { redlock } = await res.redlock(ctx.redis.value.url, REDLOCK_RETRY);
    add('redlock', (_w, row, tx) => redlockSection(redlock, `${table}:${row}`, 16_000, tx), ctx.redis.value.ops);
  } else skip(report, ctx.redis.reason, 'redlock');

  const rounds = await interleave(contestants, ctx.rounds);
  for (const [subject, rs] of rounds) report.results.push(toResult(subject, rs));
  report.notes.push(...targets(report.results));
  return report;
}

async function prefilterRound(
  pool: pg.Pool,
  table: string,
  guard: Guard,
  windowMs: number,
  cacheOps?: () => Promise<number>,
): Promise<PrefilterRound> {
  await pool.query(`UPDATE ${table} SET n = 0 WHERE id <= ${HOT_ROWS}`);
  const clients = await Promise.all(Array.from({ length: WORKERS }, () => pool.connect()));
  const tx: TxCounters = { dbTx: 0, aborts: 0 };
  const latencies = new Samples();
  let commits = 0;
  let errors = 0;
  let firstError: string | null = null;
  const ops0 = cacheOps ? await cacheOps() : null;
  const start = performance.now();
  const deadline = start + windowMs;
  try {
    const worker = async (w: number): Promise<void> => {
      const client = clients[w] as pg.PoolClient;
      while (performance.now() < deadline && errors < 100) {
        const row = 1 + Math.floor(Math.random() * HOT_ROWS);
        const t0 = performance.now();
        try {
          await guard(w, row, () =>
            repeatableRead(client, tx, async (c) => {
              // Read, then write what was read plus one: the pattern that loses under concurrency.
              const read = await c.query<{ n: string }>(`SELECT n FROM ${table} WHERE id = $1`, [row]);
              await c.query(`UPDATE ${table} SET n = $2 WHERE id = $1`, [row, Number(read.rows[0]?.n ?? 0) + 1]);
            }),
          );
          commits++;
          latencies.push(performance.now() - t0);
        } catch (err) {
          errors++;
          firstError ??= describeError(err);
        }
      }
    };
    await withDeadline(
      Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w))),
      windowMs + 60_000,
      'prefilter round',
    );
  } finally {
    clients.forEach((c) => c.release());
  }
  const elapsedMs = performance.now() - start;
  const ops1 = cacheOps ? await cacheOps() : null;
  // Every commit added exactly one: the hot rows must sum to the commits counted.
  const sum = await pool.query<{ s: string | null }>(`SELECT sum(n) AS s FROM ${table} WHERE id <= ${HOT_ROWS}`);
  return {
    commits,
    elapsedMs,
    tx,
    latencies,
    cacheOps: ops0 !== null && ops1 !== null ? ops1 - ops0 : null,
    sumMatches: Number(sum.rows[0]?.s ?? 0) === commits,
    errors,
    firstError,
  };
}

function toResult(subject: string, rounds: PrefilterRound[]): Result {
  const rates = rounds.map((r) => r.commits / (r.elapsedMs / 1000));
  const l = Samples.pooled(rounds.map((r) => r.latencies)).summary();
  const commits = total(rounds, (r) => r.commits);
  const dbTx = total(rounds, (r) => r.tx.dbTx);
  const aborts = total(rounds, (r) => r.tx.aborts);
  const cacheOps = totalOrNull(rounds, (r) => r.cacheOps);
  return roundsResult(NAME, subject, rounds, {
    ...rateFigures(rates, l),
    samples: commits,
    metrics: {
      commits,
      abortedTx: aborts,
      abortRatePct: dbTx > 0 ? (aborts / dbTx) * 100 : null,
      abortsPerCommit: perUnit(aborts, commits),
      dbTxPerCommit: perUnit(dbTx, commits),
      cacheOpsPerCommit: perUnit(cacheOps, commits),
      sumsVerified: rounds.every((r) => r.sumMatches),
    },
  });
}

function targets(results: Result[]): string[] {
  const base = findResult(results, 'no-prefilter');
  const mem = findResult(results, 'memlock');
  if (!base || !mem) return [];
  const out: string[] = [];
  const bAborts = base.metrics.abortsPerCommit;
  const mAborts = mem.metrics.abortsPerCommit;
  if (typeof bAborts === 'number' && typeof mAborts === 'number' && bAborts > 0) {
    const fewer = (1 - mAborts / bAborts) * 100;
    out.push(
      targetNote(
        '>= 99% fewer aborted transactions (per commit) than no-prefilter',
        `${fewer.toFixed(1)}% fewer`,
        fewer >= 99,
      ),
    );
  }
  const ratio = ratioOf(mem.opsPerSec, base.opsPerSec);
  if (ratio !== null) out.push(targetNote('>= 1.3x committed tx/s', fmtRatio(ratio), ratio >= 1.3));
  const ops = mem.metrics.cacheOpsPerCommit;
  if (typeof ops === 'number') out.push(targetNote('<= 4 memcache ops per commit', ops.toFixed(2), ops <= 4));
  return out;
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: `Pre-filter: ${WORKERS} workers on ${HOT_ROWS} hot rows, REPEATABLE READ read-then-update, retried on 40001`,
    baseline: 'no-prefilter',
    primary: ratePrimary('commits/s'),
    columns: [
      metricColumn('aborted tx', 'abortedTx', 'int'),
      metricColumn('abort rate', 'abortRatePct', 'pct'),
      metricColumn('db tx/commit', 'dbTxPerCommit', 'num'),
      metricColumn('cache ops/commit', 'cacheOpsPerCommit', 'num'),
      ...latencyColumns(),
      metricColumn('sums = commits', 'sumsVerified', 'text'),
    ],
    notes: [
      `a table of ${TABLE_ROWS} counters, workers pick one of ${HOT_ROWS} hot rows at random; one pg connection per worker. ` +
        'memlock: tryWithLock per row with wait {timeoutMs: 10000}, one shared instance; memlock-32-instances: one instance per worker; ' +
        `redlock: acquire polling every 0-20 ms + release. cache ops: memcached stats / Redis script calls. Latency: per committed increment, lock wait included.`,
    ],
  });
}
