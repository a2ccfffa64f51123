// heartbeat: N locks (default 10,000) held at once for the whole measurement.
// What holding costs: renewals the server saw per second (the target is one
// per lock per interval), process CPU share, event-loop delay, and heap per
// held lock.

import { performance, monitorEventLoopDelay } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { BenchContext, Result, Scenario, ScenarioReport } from '../types.js';
import type { Resources } from '../clients.js';
import { describeError, interleave, sleep, spread, withDeadline, type Contestant } from '../measure.js';
import { roundsResult, total } from '../fold.js';
import { fmt } from '../report.js';
import { latencyColumns, metricColumn, metricPrimary } from '../columns.js';
import { contestant, defineScenario, findResult, missing, scenarioReport, skip, targetNote } from '../scenario-kit.js';

const NAME = 'heartbeat';
const HEARTBEAT_MS = 1000;
// Short enough that the lease matters, long enough for 10,000 renewals per interval on a busy 2-core box.
const LEASE_MS = 5000;
// Acquisitions in flight while setting up the held locks: a burst of 10,000 would only measure queueing.
const SETUP_CONCURRENCY = 256;
const ELD_RESOLUTION_MS = 10;

/** Holds one lock until `done` resolves; `entered` settles once the lock is held (or the attempt failed). */
type Hold = (
  index: number,
  done: Promise<void>,
  onLost: () => void,
) => { entered: Promise<void>; finished: Promise<void> };

interface HeartbeatRound {
  locks: number;
  held: number;
  setupMs: number;
  heapPerLockBytes: number;
  windowMs: number;
  renewals: number | null;
  serverOps: number | null;
  cpuUs: number;
  eldP50Ms: number;
  eldP99Ms: number;
  eldMaxMs: number;
  lost: number;
  errors: number;
  firstError: string | null;
}

export const heartbeat: Scenario = defineScenario({
  name: NAME,
  summary: 'N locks (--locks, default 10,000) held at once: renewals/s, CPU share, event-loop delay, heap per lock',
  needs: ['memcache', 'memlock', 'redis'],
  run,
});

/** A full GC before each heap reading, so the figure is live memory, not garbage not yet collected. */
function gcFunction(): () => void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as unknown;
  return typeof gc === 'function' ? (gc as () => void) : () => undefined;
}

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const report = newReport(ctx.locks);
  const gc = gcFunction();
  // Each round acquires and releases N locks, so at most 3 rounds; a window shorter than two intervals would catch a partial cycle.
  const rounds = Math.min(ctx.rounds, 3);
  const window = Math.max(ctx.durationMs / rounds, 2 * HEARTBEAT_MS);
  let roundSeq = 0;
  const contestants: Contestant<HeartbeatRound>[] = [];

  // The benchmark's own per-lock bookkeeping (closures, promises, key strings,
  // the abort listener), held the same way through a "lock" that does nothing:
  // subtracted from the heap per lock, so the figure is the library's alone.
  const never = new AbortController().signal;
  const nullLock = holdWith(async (_key, fn) => fn(never));
  // A fresh listener per lock, as in the rounds (one shared function would be registered only once).
  const control = await holdMany(ctx.locks, gc, (i, done) =>
    nullLock(`bench:${ctx.runId}:hb:control:${i}`, done, () => undefined),
  );
  const overhead = control.heapPerLockBytes;
  await control.release();
  report.notes.push(
    `heap/lock is net of the benchmark's own bookkeeping per held lock (${fmt(overhead, 'bytes')}, measured with a no-op lock).`,
  );

  const add = (name: string, hold: Hold, counters: () => Promise<{ renewals: number; ops: number }>): void => {
    contestants.push(
      contestant(ctx, NAME, name, {
        rounds,
        round: async () => {
          const round = await heartbeatRound(ctx, name, hold, counters, gc, window, roundSeq++);
          round.heapPerLockBytes -= overhead;
          return round;
        },
        describe: (round) => {
          const renewalsPerSec = round.renewals === null ? null : round.renewals / (round.windowMs / 1000);
          return (
            `${round.held} held, ${renewalsPerSec === null ? '-' : Math.round(renewalsPerSec)} renewals/s, ` +
            `CPU ${((round.cpuUs / (round.windowMs * 1000)) * 100).toFixed(1)}%, ELD p99 ${round.eldP99Ms.toFixed(1)} ms, ` +
            `${fmt(round.heapPerLockBytes, 'bytes')}/lock, lost ${round.lost}`
          );
        },
      }),
    );
  };

  if (ctx.memcache.ok && ctx.memlock.ok) {
    const mc = ctx.memcache.value;
    const memlock = res.memlock(ctx.memlock.value, {
      servers: mc.servers,
      leaseMs: LEASE_MS,
      heartbeatMs: HEARTBEAT_MS,
    });
    const hold = holdWith((key, fn) => memlock.tryWithLock(key, 'holder', fn));
    // A renewal is a write (CAS set, or touch); reads and deletes are counted in ops but are not renewals.
    const counters = async (): Promise<{ renewals: number; ops: number }> => {
      const s = await mc.stats();
      const renewals = (s.cmd_set ?? 0) + (s.cmd_touch ?? 0);
      return { renewals, ops: renewals + (s.cmd_get ?? 0) + (s.delete_hits ?? 0) + (s.delete_misses ?? 0) };
    };
    add('memlock', (i, done, onLost) => hold(`bench:${ctx.runId}:hb:${roundSeq}:${i}`, done, onLost), counters);
  } else skip(report, missing(ctx.memcache, ctx.memlock), 'memlock');

  if (ctx.redis.ok) {
    const redis = ctx.redis.value;
    const { redlock } = await res.redlock(redis.url);
    // Same lease and renewal interval as memlock: redlock extends when less than the threshold is left.
    const settings = { automaticExtensionThreshold: LEASE_MS - HEARTBEAT_MS };
    const hold = holdWith((key, fn) => redlock.using([key], LEASE_MS, settings, fn));
    // Every redlock operation is one script call: during the hold they are all extensions.
    const counters = async (): Promise<{ renewals: number; ops: number }> => {
      const ops = await redis.ops();
      return { renewals: ops, ops };
    };
    add('redlock', (i, done, onLost) => hold(`bench:${ctx.runId}:hb:${roundSeq}:${i}`, done, onLost), counters);
  } else skip(report, ctx.redis.reason, 'redlock');

  const measured = await interleave(contestants, rounds);
  for (const [subject, rs] of measured) report.results.push(toResult(subject, rs));

  const memlock = findResult(report.results, 'memlock');
  if (memlock) {
    const perInterval = memlock.metrics.renewalsPerLockPerInterval;
    const cpu = memlock.metrics.cpuPct;
    const heap = memlock.metrics.heapPerLockBytes;
    if (typeof perInterval === 'number') {
      report.notes.push(
        targetNote('one renewal per lock per interval', perInterval.toFixed(2), Math.abs(perInterval - 1) <= 0.1),
      );
    }
    if (typeof cpu === 'number') report.notes.push(targetNote('< 10% of one core', `${cpu.toFixed(1)}%`, cpu < 10));
    if (typeof heap === 'number')
      report.notes.push(targetNote('< 2 KB per held lock', fmt(heap, 'bytes'), heap < 2048));
  }
  return report;
}

const noop = (): void => undefined;

/**
 * Adapts a lock call to a Hold: the locked function reports that it is in,
 * listens for loss, and stays inside until `done`. The same shape is used for
 * every subject and for the no-op control, so their bookkeeping cancels out.
 */
function holdWith(lock: (key: string, fn: (signal: AbortSignal) => Promise<void>) => Promise<unknown>) {
  return (
    key: string,
    done: Promise<void>,
    onLost: () => void,
  ): { entered: Promise<void>; finished: Promise<void> } => {
    let entered!: () => void;
    const enteredP = new Promise<void>((r) => (entered = r));
    const finished = lock(key, async (signal) => {
      signal.addEventListener('abort', onLost, { once: true });
      entered();
      await done;
    }).then(noop, (err: unknown) => {
      entered();
      throw err;
    });
    return { entered: enteredP, finished };
  };
}

/** Starts `count` holds with bounded concurrency, waits until all are held, then reads the heap. */
async function holdMany(
  count: number,
  gc: () => void,
  hold: (index: number, done: Promise<void>) => { entered: Promise<void>; finished: Promise<void> },
): Promise<{ release: () => Promise<PromiseSettledResult<void>[]>; heapPerLockBytes: number; setupMs: number }> {
  gc();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  let releaseAll!: () => void;
  const done = new Promise<void>((r) => (releaseAll = r));
  const finished: Promise<void>[] = [];
  for (let i = 0; i < count; i += SETUP_CONCURRENCY) {
    const batch: Promise<void>[] = [];
    for (let j = i; j < Math.min(count, i + SETUP_CONCURRENCY); j++) {
      const h = hold(j, done);
      finished.push(h.finished);
      batch.push(h.entered);
    }
    await Promise.all(batch);
  }
  const setupMs = performance.now() - t0;
  gc();
  const heapPerLockBytes = (process.memoryUsage().heapUsed - heap0) / count;
  return {
    heapPerLockBytes,
    setupMs,
    release: () => {
      releaseAll();
      return Promise.allSettled(finished);
    },
  };
}

async function heartbeatRound(
  ctx: BenchContext,
  name: string,
  hold: Hold,
  counters: () => Promise<{ renewals: number; ops: number }>,
  gc: () => void,
  windowMs: number,
  seq: number,
): Promise<HeartbeatRound> {
  let lost = 0;
  ctx.progress(`[${NAME}] ${name}: acquiring ${ctx.locks.toLocaleString('en-US')} locks (round key set ${seq})`);
  const held = await holdMany(ctx.locks, gc, (i, done) => hold(i, done, () => lost++));
  // Warm-up: one interval, so every lock's renewal schedule is in its steady state.
  await sleep(HEARTBEAT_MS);
  const c0 = await counters();
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  eld.enable();
  await sleep(windowMs);
  eld.disable();
  const elapsed = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const c1 = await counters();
  const lostDuringHold = lost;
  const settled = await withDeadline(held.release(), 60_000, `${name} release`);
  const failures = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
  // The histogram counts the sampling interval itself; what matters is the delay beyond it.
  const beyond = (ns: number): number => Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS);
  return {
    locks: ctx.locks,
    held: ctx.locks - failures.length,
    setupMs: held.setupMs,
    heapPerLockBytes: held.heapPerLockBytes,
    windowMs: elapsed,
    renewals: c1.renewals - c0.renewals,
    serverOps: c1.ops - c0.ops,
    cpuUs: cpu.user + cpu.system,
    eldP50Ms: beyond(eld.percentile(50)),
    eldP99Ms: beyond(eld.percentile(99)),
    eldMaxMs: beyond(eld.max),
    lost: lostDuringHold,
    errors: failures.length,
    firstError: failures[0] ? describeError(failures[0].reason) : null,
  };
}

function toResult(subject: string, rounds: HeartbeatRound[]): Result {
  const perSec = (r: HeartbeatRound, n: number | null): number | null => (n === null ? null : n / (r.windowMs / 1000));
  const med = (f: (r: HeartbeatRound) => number | null): number | null =>
    spread(rounds.map(f).filter((x): x is number => x !== null)).median;
  const cpuPcts = rounds.map((r) => (r.cpuUs / (r.windowMs * 1000)) * 100);
  const renewalsPerSec = med((r) => perSec(r, r.renewals));
  const locks = rounds[0]?.locks ?? 0;
  const cpu = spread(cpuPcts);
  return roundsResult(NAME, subject, rounds, {
    opsPerSec: renewalsPerSec,
    // Event-loop delay beyond the sampling interval, median of the rounds' percentiles.
    p50Ms: med((r) => r.eldP50Ms),
    p99Ms: med((r) => r.eldP99Ms),
    spreadPct: cpu.spreadPct,
    samples: total(rounds, (r) => r.held),
    metrics: {
      locks,
      heartbeatMs: HEARTBEAT_MS,
      leaseMs: LEASE_MS,
      renewalsPerSec,
      renewalsPerLockPerInterval:
        renewalsPerSec === null || locks === 0 ? null : (renewalsPerSec * HEARTBEAT_MS) / 1000 / locks,
      serverOpsPerSec: med((r) => perSec(r, r.serverOps)),
      cpuPct: cpu.median,
      eldMaxMs: Math.max(...rounds.map((r) => r.eldMaxMs)),
      heapPerLockBytes: med((r) => r.heapPerLockBytes),
      setupMs: med((r) => r.setupMs),
      lost: total(rounds, (r) => r.lost),
    },
  });
}

function newReport(locks: number): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: `${locks.toLocaleString('en-US')} locks held at once (heartbeat ${HEARTBEAT_MS} ms, lease ${LEASE_MS} ms)`,
    baseline: 'redlock',
    primary: metricPrimary('CPU % of a core', 'cpuPct', false),
    columns: [
      metricColumn('renewals/s', 'renewalsPerSec', 'rate'),
      metricColumn('per lock per interval', 'renewalsPerLockPerInterval', 'num'),
      ...latencyColumns('ELD'),
      metricColumn('ELD max ms', 'eldMaxMs', 'ms'),
      metricColumn('heap/lock', 'heapPerLockBytes', 'bytes'),
      metricColumn('setup ms', 'setupMs', 'int'),
      metricColumn('lost', 'lost', 'int'),
    ],
    notes: [
      'renewals: writes the server counted during the window (memcached cmd_set + cmd_touch; Redis script calls). ' +
        'CPU: this process (user + system) over the window; ELD: event-loop delay beyond the 10 ms sampling interval. ' +
        `redlock: using() with a ${LEASE_MS} ms lease and automaticExtensionThreshold ${LEASE_MS - HEARTBEAT_MS} ms, i.e. extended every ~${HEARTBEAT_MS} ms.`,
    ],
  });
}
