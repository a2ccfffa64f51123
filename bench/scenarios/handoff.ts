// handoff: 16 waiters queue for one key in wait mode; each holds it ~1 ms.
// Measures how quickly the lock passes from one holder to the next (the gap
// between one critical section's end and the next one's start) and how many
// memcache operations each acquisition costs: polling shows up here.

import { performance } from 'node:perf_hooks';
import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import { redlockSection, type Resources } from '../clients.js';
import type { MemlockInstance } from '../lib.js';
import { Samples, describeError, interleave, sleep, withDeadline, type Contestant } from '../measure.js';
import { perUnit, rateFigures, roundsResult, total, totalOrNull } from '../fold.js';
import { latencyColumns, metricColumn, ratePrimary } from '../columns.js';
import { contestant, defineScenario, keySequence, missing, scenarioReport, skip } from '../scenario-kit.js';

const NAME = 'handoff';
const WAITERS = 16;
const HOLD_MS = 1;
// Bounds every wait: a waiter that has not got the lock in this time counts as an error.
const WAIT_TIMEOUT_MS = 10_000;
// redlock's defaults (retryDelay 200 ms ± 100 ms, 10 retries) would measure its sleep; polling every 0-20 ms is the fair comparison.
const REDLOCK_RETRY = { retryCount: Math.ceil(WAIT_TIMEOUT_MS / 10), retryDelay: 10, retryJitter: 10 };

type Acquire = (waiter: number, fn: () => Promise<void>) => Promise<void>;

interface HandoffRound {
  acquisitions: number;
  spanMs: number;
  gaps: Samples;
  waits: Samples;
  overlaps: number;
  errors: number;
  firstError: string | null;
  serverOps: number | null;
}

export const handoff: Scenario = defineScenario({
  name: NAME,
  summary: `${WAITERS} waiters on one key with wait: release-to-next-acquire gap, memcache ops per acquisition`,
  needs: ['memcache', 'memlock', 'redis'],
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  const contestants: Contestant<HandoffRound>[] = [];
  // A fresh key per round and subject, so no round inherits another's entry.
  const nextKey = keySequence(ctx, 'handoff');
  const window = ctx.durationMs / ctx.rounds;

  const add = (name: string, acquire: (key: string) => Acquire, serverOps?: () => Promise<number>): void => {
    contestants.push(
      contestant(ctx, NAME, name, {
        warmUp: () => handoffRound(acquire(nextKey()), ctx.warmupMs),
        round: async () => {
          const before = serverOps ? await serverOps() : null;
          const round = await handoffRound(acquire(nextKey()), window);
          const after = serverOps ? await serverOps() : null;
          round.serverOps = before !== null && after !== null ? after - before : null;
          return round;
        },
        describe: (round) =>
          `${Math.round(round.acquisitions / (round.spanMs / 1000))} acquisitions/s, gap p50 ${round.gaps.summary().p50Ms?.toFixed(2) ?? '-'} ms`,
      }),
    );
  };

  if (ctx.memcache.ok && ctx.memlock.ok) {
    const mc = ctx.memcache.value;
    const mod = ctx.memlock.value;
    // All 16 waiters in one process sharing one instance: same-process waiters can be queued locally.
    const shared = res.memlock(mod, { servers: mc.servers });
    add(
      'memlock',
      (key) => (w, fn) => shared.tryWithLock(key, `waiter-${w}`, fn, { wait: { timeoutMs: WAIT_TIMEOUT_MS } }),
      mc.ops,
    );
    // One instance (one connection) per waiter: the waiters might as well be 16 processes.
    const separate: MemlockInstance[] = Array.from({ length: WAITERS }, () =>
      res.memlock(mod, { servers: mc.servers }),
    );
    add(
      'memlock-16-instances',
      (key) => (w, fn) =>
        (separate[w] as MemlockInstance).tryWithLock(key, `waiter-${w}`, fn, { wait: { timeoutMs: WAIT_TIMEOUT_MS } }),
      mc.ops,
    );
  } else skip(report, missing(ctx.memcache, ctx.memlock), 'memlock', 'memlock-16-instances');

  if (ctx.redis.ok) {
    const { redlock } = await res.redlock(ctx.redis.value.url, REDLOCK_RETRY);
    add('redlock', (key) => (_w, fn) => redlockSection(redlock, key, 16_000, fn), ctx.redis.value.ops);
  } else skip(report, ctx.redis.reason, 'redlock');

  const rounds = await interleave(contestants, ctx.rounds);
  for (const [subject, rs] of rounds) report.results.push(toResult(subject, rs));
  const overlaps = report.results.filter((r) => (r.metrics.overlaps as number) > 0);
  if (overlaps.length > 0)
    report.notes.push(
      `MUTUAL EXCLUSION VIOLATED: ${overlaps.map((r) => `${r.subject} ${String(r.metrics.overlaps)}`).join(', ')}`,
    );
  return report;
}

/** 16 waiters loop on one key until `windowMs` has passed; every critical section is logged with its start and end. */
async function handoffRound(acquire: Acquire, windowMs: number): Promise<HandoffRound> {
  const sections: { start: number; end: number }[] = [];
  const waits = new Samples();
  let inside = 0;
  let overlaps = 0;
  let errors = 0;
  let firstError: string | null = null;
  const deadline = performance.now() + windowMs;

  const waiter = async (w: number): Promise<void> => {
    while (performance.now() < deadline && errors < 100) {
      const asked = performance.now();
      try {
        await acquire(w, async () => {
          const start = performance.now();
          waits.push(start - asked);
          if (++inside > 1) overlaps++;
          await sleep(HOLD_MS);
          inside--;
          sections.push({ start, end: performance.now() });
        });
      } catch (err) {
        errors++;
        firstError ??= describeError(err);
      }
    }
  };
  await withDeadline(
    Promise.all(Array.from({ length: WAITERS }, (_, w) => waiter(w))),
    windowMs + WAIT_TIMEOUT_MS * 2,
    'handoff round',
  );

  sections.sort((a, b) => a.start - b.start);
  const gaps = new Samples();
  for (let i = 1; i < sections.length; i++) {
    const gap = (sections[i]?.start ?? 0) - (sections[i - 1]?.end ?? 0);
    if (gap >= 0) gaps.push(gap);
  }
  const spanMs = sections.length > 1 ? (sections[sections.length - 1]?.end ?? 0) - (sections[0]?.start ?? 0) : windowMs;
  return { acquisitions: sections.length, spanMs, gaps, waits, overlaps, errors, firstError, serverOps: null };
}

function toResult(subject: string, rounds: HandoffRound[]): Result {
  const rates = rounds.map((r) => r.acquisitions / (r.spanMs / 1000));
  const g = Samples.pooled(rounds.map((r) => r.gaps)).summary();
  const w = Samples.pooled(rounds.map((r) => r.waits)).summary();
  const acquisitions = total(rounds, (r) => r.acquisitions);
  const serverOps = totalOrNull(rounds, (r) => r.serverOps);
  return roundsResult(NAME, subject, rounds, {
    ...rateFigures(rates, g),
    samples: acquisitions,
    metrics: {
      serverOpsPerAcquisition: perUnit(serverOps, acquisitions),
      waitP99Ms: w.p99Ms,
      waitMaxMs: w.maxMs,
      overlaps: total(rounds, (r) => r.overlaps),
    },
  });
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: `Handoff: ${WAITERS} waiters on one key, wait mode, ~${HOLD_MS} ms held`,
    baseline: 'redlock',
    primary: ratePrimary('acquisitions/s'),
    columns: [
      ...latencyColumns('gap'),
      metricColumn('server ops/acq.', 'serverOpsPerAcquisition', 'num'),
      metricColumn('wait p99 ms', 'waitP99Ms', 'ms'),
      metricColumn('overlaps', 'overlaps', 'int'),
    ],
    notes: [
      'gap: from the end of one critical section to the start of the next (release + the next waiter noticing); ' +
        'wait: from asking to entering. memlock: tryWithLock with wait {timeoutMs: 10000}, default backoff; ' +
        `redlock: acquire polling every 0-20 ms (retryDelay ${REDLOCK_RETRY.retryDelay}, retryJitter ${REDLOCK_RETRY.retryJitter}) + release.`,
    ],
  });
}
