// uncontended: lock/unlock cycles on distinct keys, one at a time and 64 in
// flight. What a lock costs when nobody else wants it; memjs add+delete is the
// floor the transport allows.

import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import { lockValue, type Resources } from '../clients.js';
import type { LoopSubject } from '../measure.js';
import { loopResult } from '../fold.js';
import { fmtRatio, ratioOf } from '../report.js';
import { latencyColumns, loopCostColumns, ratePrimary } from '../columns.js';
import {
  LOOP_VARIANTS,
  compareVariants,
  defineScenario,
  findResult,
  keySequence,
  pairedNote,
  scenarioReport,
  skip,
  targetNote,
} from '../scenario-kit.js';

const NAME = 'uncontended';
// Advisory locks are per session, so the pg subject needs a connection per cycle: a pool of 8.
const PG_POOL = 8;

export const uncontended: Scenario = defineScenario({
  name: NAME,
  summary:
    'lock/unlock cycles on distinct keys, sequential and 64 in flight (memlock, memjs-raw, redlock, pg-advisory)',
  needs: ['memcache', 'memlock', 'redis', 'pg'],
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  const subjects: LoopSubject[] = [];
  // Every cycle uses a key never used before, so no cycle can meet another's entry.
  const key = keySequence(ctx, 'u');

  if (ctx.memcache.ok) {
    const mc = ctx.memcache.value;
    if (ctx.memlock.ok) {
      const memlock = res.memlock(ctx.memlock.value, { servers: mc.servers });
      const noop = (): void => undefined;
      subjects.push({ name: 'memlock', op: () => memlock.tryWithLock(key(), 'bench', noop), serverOps: mc.ops });
      const meta = res.memlock(ctx.memlock.value, { servers: mc.servers, protocol: 'meta' });
      subjects.push({ name: 'memlock (meta)', op: () => meta.tryWithLock(key(), 'bench', noop), serverOps: mc.ops });
      const tlsServer = await res.tlsMemcached();
      const overTls = res.memlock(ctx.memlock.value, { servers: tlsServer.servers, tls: { ca: tlsServer.ca } });
      subjects.push({ name: 'memlock (tls)', op: () => overTls.tryWithLock(key(), 'bench', noop) });
    } else skip(report, ctx.memlock.reason, 'memlock', 'memlock (meta)', 'memlock (tls)');

    const floor = await res.rawSocket(mc.servers);
    subjects.push({
      name: 'raw-socket',
      op: async () => {
        const k = key();
        if ((await floor.add(k, lockValue('bench'), 16)) !== 0) throw new Error(`add ${k} refused`);
        await floor.delete(k);
      },
      serverOps: mc.ops,
    });

    const memjs = res.memjs(mc.servers);
    subjects.push({
      name: 'memjs-raw',
      op: async () => {
        const k = key();
        if (!(await memjs.add(k, lockValue('bench'), { expires: 16 }))) throw new Error(`add ${k} refused`);
        await memjs.delete(k);
      },
      serverOps: mc.ops,
    });
  } else skip(report, ctx.memcache.reason, 'memlock', 'memlock (meta)', 'memlock (tls)', 'raw-socket', 'memjs-raw');

  if (ctx.redis.ok) {
    const { redlock } = await res.redlock(ctx.redis.value.url, { retryCount: 0 });
    subjects.push({
      name: 'redlock',
      op: async () => {
        const lock = await redlock.acquire([key()], 16_000);
        await lock.release();
      },
      serverOps: ctx.redis.value.ops,
    });
  } else skip(report, ctx.redis.reason, 'redlock');

  if (ctx.pg.ok) {
    const pool = res.pool(ctx.pg.value, PG_POOL);
    let lockId = Date.now() % 1_000_000_000; // advisory lock ids of this run, unlikely to meet another run's
    subjects.push({
      name: 'pg-advisory',
      op: async () => {
        const id = lockId++;
        const client = await pool.connect();
        try {
          const got = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [id]);
          if (!got.rows[0]?.ok) throw new Error(`advisory lock ${id} refused`);
          await client.query('SELECT pg_advisory_unlock($1)', [id]);
        } finally {
          client.release();
        }
      },
      // Two statements per cycle, counted by us: PostgreSQL has no cheap per-statement counter for one pool.
    });
  } else skip(report, ctx.pg.reason, 'pg-advisory');

  const results = await compareVariants(ctx, NAME, subjects, LOOP_VARIANTS, (variant, subject, rs) => {
    const r = loopResult(NAME, variant, subject, rs);
    if (subject === 'pg-advisory') r.metrics.serverOpsPerOp = 2;
    return r;
  });
  report.results.push(...results);
  report.notes.push(...targets(report.results));
  return report;
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: 'Uncontended lock/unlock cycles (distinct keys)',
    baseline: 'memjs-raw',
    primary: ratePrimary('cycles/s'),
    columns: [...latencyColumns(), ...loopCostColumns('cycle')],
    notes: [
      'raw-socket: add + delete on one socket with a minimal hand-written binary client, corked writes (the floor); ' +
        "memlock (meta): protocol 'meta'; memlock (tls): TLS to a private memcached -Z (its own server, 1 thread). " +
        'memjs-raw: add + delete on one memjs client; redlock: acquire + release, retryCount 0, one Redis; ' +
        `pg-advisory: pg_try_advisory_lock + pg_advisory_unlock on a pool of ${PG_POOL}. Server ops: memcached stats / Redis script calls.`,
    ],
  });
}

function targets(results: Result[]): string[] {
  const check = (a: string, b: string, variant: string, min: number): string | null => {
    const ra = findResult(results, a, variant);
    const rb = findResult(results, b, variant);
    const ratio = ratioOf(ra?.opsPerSec, rb?.opsPerSec);
    return ratio === null
      ? null
      : targetNote(`${a}/${b} ${variant} >= ${min}x`, fmtRatio(ratio) + pairedNote(ra, rb), ratio >= min);
  };
  const floor = (subject: string, variant: string): string | null => {
    const ra = findResult(results, subject, variant);
    const rb = findResult(results, 'raw-socket', variant);
    const ratio = ratioOf(ra?.opsPerSec, rb?.opsPerSec);
    return ratio === null ? null : `${subject}/raw-socket ${variant}: ${fmtRatio(ratio)}${pairedNote(ra, rb)}`;
  };
  return [
    ...['memlock', 'memlock (meta)', 'memlock (tls)'].flatMap((subject) =>
      LOOP_VARIANTS.map((v) => floor(subject, v.label)),
    ),
    check('memlock', 'raw-socket', 'sequential', 0.95),
    check('memlock', 'raw-socket', '64 in flight', 0.85),
    check('memlock (meta)', 'raw-socket', 'sequential', 0.95),
    check('memlock (meta)', 'raw-socket', '64 in flight', 0.85),
    check('memlock', 'memjs-raw', 'sequential', 0.95),
    check('memlock', 'memjs-raw', '64 in flight', 0.9),
    check('memlock', 'redlock', '64 in flight', 1.4),
  ].filter((s): s is string => s !== null);
}
