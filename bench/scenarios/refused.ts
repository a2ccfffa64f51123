// refused: the key is held by someone else; what does a refused attempt cost
// and how long does the caller wait for the "no"? The floor is one memcache
// round trip, which a raw get measures.

import type { BenchContext, Scenario, ScenarioReport } from '../types.js';
import { lockValue, type Resources } from '../clients.js';
import { NOT_ACQUIRED, type MemlockInstance } from '../lib.js';
import { errorCode, type LoopSubject } from '../measure.js';
import { loopResult } from '../fold.js';
import { fmtRatio, ratioOf } from '../report.js';
import { latencyColumn, latencyPrimary, loopCostColumns } from '../columns.js';
import {
  LOOP_VARIANTS,
  compareVariants,
  defineScenario,
  findResult,
  pairedNote,
  scenarioReport,
  skip,
  targetNote,
} from '../scenario-kit.js';

const NAME = 'refused';

export const refused: Scenario = defineScenario({
  name: NAME,
  summary: 'latency and cost of a refused attempt on a held key (memlock, memjs-raw get, redlock without retries)',
  needs: ['memcache', 'memlock', 'redis'],
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  const subjects: LoopSubject[] = [];
  const key = `bench:${ctx.runId}:refused`;

  if (ctx.memcache.ok) {
    const mc = ctx.memcache.value;
    if (ctx.memlock.ok) {
      // The holder is another instance (its own connection and heartbeat), as another process would be.
      const holder = res.memlock(ctx.memlock.value, { servers: mc.servers });
      const held = await holder.acquire(key, 'holder');
      res.defer(() => held.release());
      const memlock = res.memlock(ctx.memlock.value, { servers: mc.servers });
      const mustNotRun = (): void => {
        throw new Error('fn ran although the key is held');
      };
      const refusedBy = async (instance: MemlockInstance): Promise<void> => {
        try {
          await instance.tryWithLock(key, 'contender', mustNotRun);
        } catch (err) {
          if (errorCode(err) === NOT_ACQUIRED) return;
          throw err;
        }
        throw new Error('tryWithLock resolved although the key is held');
      };
      subjects.push({ name: 'memlock', op: () => refusedBy(memlock), serverOps: mc.ops });
      const meta = res.memlock(ctx.memlock.value, { servers: mc.servers, protocol: 'meta' });
      subjects.push({ name: 'memlock (meta)', op: () => refusedBy(meta), serverOps: mc.ops });
      const tlsServer = await res.tlsMemcached();
      const tlsHolder = res.memlock(ctx.memlock.value, { servers: tlsServer.servers, tls: { ca: tlsServer.ca } });
      const tlsHeld = await tlsHolder.acquire(key, 'holder');
      res.defer(() => tlsHeld.release());
      const overTls = res.memlock(ctx.memlock.value, { servers: tlsServer.servers, tls: { ca: tlsServer.ca } });
      subjects.push({ name: 'memlock (tls)', op: () => refusedBy(overTls) });
    } else skip(report, ctx.memlock.reason, 'memlock', 'memlock (meta)', 'memlock (tls)');

    // The floor: one get of a held entry on a raw socket, the least a refusal can cost.
    const floor = await res.rawSocket(mc.servers);
    const floorKey = `${key}:floor`;
    if ((await floor.add(floorKey, lockValue('holder'), 600)) !== 0) throw new Error('floor entry not stored');
    res.defer(() => floor.delete(floorKey));
    subjects.push({
      name: 'raw-socket',
      op: async () => {
        if ((await floor.get(floorKey)) !== 0) throw new Error('held floor entry vanished');
      },
      serverOps: mc.ops,
    });

    // The raw floor: one get of a held entry, the least a refusal can cost.
    const memjs = res.memjs(mc.servers);
    const rawKey = `${key}:raw`;
    await memjs.set(rawKey, lockValue('holder'), { expires: 600 });
    res.defer(() => memjs.delete(rawKey));
    subjects.push({
      name: 'memjs-raw',
      op: async () => {
        const { value } = await memjs.get(rawKey);
        if (value === null) throw new Error('held raw entry vanished');
      },
      serverOps: mc.ops,
    });
  } else skip(report, ctx.memcache.reason, 'memlock', 'memlock (meta)', 'memlock (tls)', 'raw-socket', 'memjs-raw');

  if (ctx.redis.ok) {
    const { redlock } = await res.redlock(ctx.redis.value.url, { retryCount: 0 });
    const held = await redlock.acquire([key], 600_000);
    res.defer(() => held.release());
    subjects.push({
      name: 'redlock',
      op: async () => {
        try {
          await redlock.acquire([key], 16_000);
        } catch {
          // ExecutionError: refused (redlock then also sends a release script for any partial state).
          return;
        }
        throw new Error('redlock acquired a held key');
      },
      serverOps: ctx.redis.value.ops,
    });
  } else skip(report, ctx.redis.reason, 'redlock');

  report.results.push(
    ...(await compareVariants(ctx, NAME, subjects, LOOP_VARIANTS, (variant, subject, rs) =>
      loopResult(NAME, variant, subject, rs, 'p50'),
    )),
  );

  for (const subject of ['memlock', 'memlock (meta)', 'memlock (tls)']) {
    for (const v of LOOP_VARIANTS) {
      const mine = findResult(report.results, subject, v.label);
      const floor = findResult(report.results, 'raw-socket', v.label);
      const rate = ratioOf(mine?.opsPerSec, floor?.opsPerSec);
      const p50 = ratioOf(mine?.p50Ms, floor?.p50Ms);
      if (rate !== null && p50 !== null) {
        report.notes.push(`${subject}/raw-socket ${v.label}: attempts/s ${fmtRatio(rate)}, p50 ${fmtRatio(p50)}`);
      }
    }
  }
  for (const v of LOOP_VARIANTS) {
    const mine = findResult(report.results, 'memlock', v.label);
    const raw = findResult(report.results, 'memjs-raw', v.label);
    const ratio = ratioOf(mine?.p50Ms, raw?.p50Ms);
    if (ratio !== null)
      report.notes.push(
        targetNote(`memlock p50 <= 1.1x a raw get (${v.label})`, fmtRatio(ratio) + pairedNote(mine, raw), ratio <= 1.1),
      );
  }
  return report;
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: 'Refused attempt on a held key',
    baseline: 'memjs-raw',
    primary: latencyPrimary('p50'),
    columns: [
      latencyColumn('p99'),
      { header: 'attempts/s', value: (r) => r.opsPerSec, format: 'rate' },
      ...loopCostColumns('attempt'),
    ],
    notes: [
      'memlock: tryWithLock on a key another instance holds (rejects with LockNotAcquiredError); memlock (meta) / (tls): the same over ' +
        'the meta protocol / over TLS to a private memcached -Z; raw-socket: one get on a socket with a minimal hand-written binary client (the floor); memjs-raw: one get of a held entry; ' +
        'redlock: acquire with retryCount 0 on a held key. Ratio: p50 relative to memjs-raw (lower is better); ± is the spread of the per-round p50.',
    ],
  });
}
