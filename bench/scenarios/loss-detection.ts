// loss-detection: while a lock is held, its entry is deleted behind the
// holder's back (as eviction or a flush would); how long until the holder's
// signal aborts? memlock renews every heartbeatMs and should notice at the
// next beat; redlock's using() aborts only once its own lease has run out.

import { performance } from 'node:perf_hooks';
import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import type { Resources } from '../clients.js';
import {
  Samples,
  abortedWithin,
  describeError,
  interleave,
  sleep,
  spread,
  timedLoop,
  withDeadline,
  type Contestant,
} from '../measure.js';
import { roundsResult, total } from '../fold.js';
import { fmt } from '../report.js';
import { latencyColumn, latencyPrimary, metricColumn } from '../columns.js';
import {
  contestant,
  defineScenario,
  findResult,
  keySequence,
  scenarioReport,
  skip,
  targetNote,
} from '../scenario-kit.js';

const NAME = 'loss-detection';
const HEARTBEAT_MS = 250;
const LEASE_MS = 2000; // the library's minimum lease
// Signal not aborted this long after the deletion: counted as missed.
const GIVE_UP_MS = LEASE_MS + 2000;
const WORKERS = 32;
const PREFIX = 'mlbench:';

interface Outcome {
  /** ms from the delete's reply to the abort; null when missed or aborted early. */
  detectMs: number | null;
  missed: boolean;
  /** Aborted before we deleted anything: a false alarm. */
  early: boolean;
  reason: string | null;
}

interface LossRound {
  detections: Samples;
  missed: number;
  early: number;
  errors: number;
  firstError: string | null;
  reasons: Map<string, number>;
}

/** Holds a fresh lock, deletes it from the server after a random part of an interval, and reports the outcome. */
type Trial = (key: string) => Promise<Outcome>;

export const lossDetection: Scenario = defineScenario({
  name: NAME,
  summary: "entries deleted behind the holder's back: time until the signal aborts (memlock vs redlock using)",
  needs: ['memcache', 'memlock', 'redis'],
  run,
});

/** What the holder sees once the entry is gone: wait for the abort, bounded. */
async function observe(signal: AbortSignal, deleted: () => Promise<void>): Promise<Outcome> {
  // A random phase within the renewal interval, so the figure covers every point of the cycle.
  await sleep(Math.random() * HEARTBEAT_MS);
  if (signal.aborted) return { detectMs: null, missed: false, early: true, reason: reasonOf(signal.reason) };
  await deleted();
  const t0 = performance.now();
  const aborted = await abortedWithin(signal, GIVE_UP_MS);
  return aborted
    ? { detectMs: performance.now() - t0, missed: false, early: false, reason: reasonOf(signal.reason) }
    : { detectMs: null, missed: true, early: false, reason: null };
}

function reasonOf(reason: unknown): string {
  if (reason instanceof Error) {
    const code = (reason as { code?: unknown }).code;
    return typeof code === 'string' ? code : reason.name;
  }
  return reason === undefined ? 'undefined' : typeof reason;
}

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport();
  const contestants: Contestant<LossRound>[] = [];
  const nextKey = keySequence(ctx, 'loss');
  const window = ctx.durationMs / ctx.rounds;
  // redlock's using() keeps releasing (and retrying) after the routine returns; those tails are awaited at the end.
  const tails: Promise<unknown>[] = [];

  const add = (name: string, trial: Trial): void => {
    contestants.push(
      contestant(ctx, NAME, name, {
        round: () => lossRound(trial, nextKey, window),
        describe: (round) => {
          const s = round.detections.summary();
          return `${round.detections.count} detections, p50 ${fmt(s.p50Ms, 'ms')} ms, p99 ${fmt(s.p99Ms, 'ms')} ms, missed ${round.missed}, early ${round.early}`;
        },
      }),
    );
  };

  let rttMs: number | null = null;
  if (ctx.memcache.ok) {
    const mc = ctx.memcache.value;
    // One memcache round trip on this machine, for the target (heartbeatMs + 2 round trips).
    const memjs = res.memjs(mc.servers);
    const probe = await timedLoop({
      durationMs: 300,
      concurrency: 1,
      op: async () => void (await memjs.get(`bench:${ctx.runId}:rtt`)),
    });
    rttMs = probe.latencies.summary().p50Ms;
    if (ctx.memlock.ok) {
      const memlock = res.memlock(ctx.memlock.value, {
        servers: mc.servers,
        leaseMs: LEASE_MS,
        heartbeatMs: HEARTBEAT_MS,
        prefix: PREFIX,
      });
      add('memlock', (key) =>
        memlock.tryWithLock(key, 'victim', (signal) =>
          observe(signal, async () => {
            if (!(await mc.deleteRaw(PREFIX + key))) throw new Error(`entry ${PREFIX + key} was not there to delete`);
          }),
        ),
      );
    } else skip(report, ctx.memlock.reason, 'memlock');
  } else skip(report, ctx.memcache.reason, 'memlock');

  if (ctx.redis.ok) {
    const { redlock, client } = await res.redlock(ctx.redis.value.url);
    // Same lease and renewal interval as memlock: extend whenever less than LEASE - HEARTBEAT is left.
    const settings = { automaticExtensionThreshold: LEASE_MS - HEARTBEAT_MS };
    add('redlock', (key) => {
      // Resolved from inside the routine: after an abort, using() still spends seconds retrying its release.
      return new Promise<Outcome>((resolve, reject) => {
        const using = redlock.using([key], LEASE_MS, settings, async (signal) => {
          resolve(
            await observe(signal, async () => {
              if ((await client.del(key)) !== 1) throw new Error(`key ${key} was not there to delete`);
            }),
          );
        });
        tails.push(using.then(() => undefined, reject));
      });
    });
  } else skip(report, ctx.redis.reason, 'redlock');

  const rounds = await interleave(contestants, ctx.rounds);
  ctx.progress(`[${NAME}] waiting for ${tails.length} redlock releases to give up`);
  await withDeadline(Promise.allSettled(tails), 60_000, 'redlock tails');
  for (const [subject, rs] of rounds) report.results.push(toResult(subject, rs));

  const memlock = findResult(report.results, 'memlock');
  if (memlock?.p99Ms != null && rttMs !== null) {
    const target = HEARTBEAT_MS + 2 * rttMs;
    report.notes.push(
      targetNote(
        `memlock p99 <= heartbeatMs + 2 round trips = ${fmt(target, 'ms')} ms (round trip ${fmt(rttMs, 'ms')} ms)`,
        `${fmt(memlock.p99Ms, 'ms')} ms`,
        memlock.p99Ms <= target,
      ),
    );
  }
  return report;
}

async function lossRound(trial: Trial, nextKey: () => string, windowMs: number): Promise<LossRound> {
  const round: LossRound = {
    detections: new Samples(),
    missed: 0,
    early: 0,
    errors: 0,
    firstError: null,
    reasons: new Map(),
  };
  const deadline = performance.now() + windowMs;
  const worker = async (): Promise<void> => {
    // Every worker runs at least one trial, so slow detectors still give a sample per worker and round.
    do {
      try {
        const o = await trial(nextKey());
        if (o.detectMs !== null) round.detections.push(o.detectMs);
        if (o.missed) round.missed++;
        if (o.early) round.early++;
        if (o.reason) round.reasons.set(o.reason, (round.reasons.get(o.reason) ?? 0) + 1);
      } catch (err) {
        round.errors++;
        round.firstError ??= describeError(err);
      }
    } while (performance.now() < deadline && round.errors < 50);
  };
  await withDeadline(
    Promise.all(Array.from({ length: WORKERS }, () => worker())),
    windowMs + GIVE_UP_MS * 3 + 10_000,
    'loss round',
  );
  return round;
}

function toResult(subject: string, rounds: LossRound[]): Result {
  const all = Samples.pooled(rounds.map((r) => r.detections));
  const reasons = new Map<string, number>();
  rounds.forEach((r) => r.reasons.forEach((n, k) => reasons.set(k, (reasons.get(k) ?? 0) + n)));
  const s = all.summary();
  const p99s = rounds.map((r) => r.detections.summary().p99Ms).filter((x): x is number => x !== null);
  return roundsResult(NAME, subject, rounds, {
    opsPerSec: null,
    p50Ms: s.p50Ms,
    p99Ms: s.p99Ms,
    spreadPct: spread(p99s).spreadPct,
    samples: all.count,
    metrics: {
      maxMs: s.maxMs,
      missed: total(rounds, (r) => r.missed),
      early: total(rounds, (r) => r.early),
      reasons: [...reasons].map(([k, n]) => `${k} ${n}`).join(', '),
      heartbeatMs: HEARTBEAT_MS,
      leaseMs: LEASE_MS,
    },
  });
}

function newReport(): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: `Loss detection: entry deleted while held (lease ${LEASE_MS} ms, renewal every ${HEARTBEAT_MS} ms)`,
    baseline: 'redlock',
    primary: latencyPrimary('p99'),
    columns: [
      latencyColumn('p50'),
      metricColumn('max ms', 'maxMs', 'ms'),
      { header: 'samples', value: (r) => r.samples, format: 'int' },
      metricColumn('missed', 'missed', 'int'),
      metricColumn('false alarms', 'early', 'int'),
      metricColumn('abort reasons', 'reasons', 'text'),
    ],
    notes: [
      "time from the raw delete's reply to the holder's signal aborting; the delete comes at a random point of a renewal interval. " +
        `memlock: leaseMs ${LEASE_MS}, heartbeatMs ${HEARTBEAT_MS}; redlock: using() with the same lease and automaticExtensionThreshold ` +
        `${LEASE_MS - HEARTBEAT_MS} (extends every ~${HEARTBEAT_MS} ms, default retries). missed: no abort within ${GIVE_UP_MS} ms.`,
    ],
  });
}
