// fleet: memlock as it is deployed, on many processes. P child processes, each
// with one lock client (one Memlock, or one redlock) and W async workers, all
// incrementing R hot PostgreSQL rows with REPEATABLE READ read-then-update
// transactions retried on serialization failure (40001). The one-process
// prefilter scenario cannot show what this shows: whether waiting is fair
// across processes (per-process share), what the tails are, and whether the
// lock still keeps every transaction from aborting.

import { fork, type ChildProcess } from 'node:child_process';
import type { Settings as RedlockSettings } from '@sesamecare-oss/redlock';
import { fileURLToPath } from 'node:url';
import type { BenchContext, Result, ScenarioReport } from '../types.js';
import { emptyResult } from '../types.js';
import type { Resources } from '../clients.js';
import type { FleetPrepare, FleetProcessResult, FleetReply, FleetRequest, FleetSubject } from '../fleet-protocol.js';
import { Samples, withDeadline } from '../measure.js';
import { fmt, fmtRatio, ratioOf } from '../report.js';
import { latencyColumns, metricColumn, ratePrimary } from '../columns.js';
import { defineScenario, findResult, missing, scenarioReport, skip, targetNote } from '../scenario-kit.js';

const NAME = 'fleet';
export const FLEET_SUBJECTS: readonly FleetSubject[] = ['no-lock', 'memlock', 'redlock', 'redlock-200ms'];
/** The three shapes of issue 7: processes x workers per process x hot rows. */
export const FLEET_SHAPES: readonly string[] = ['4x8x1', '8x2x4', '16x1x1'];
export const FLEET_DEFAULT_DURATION_MS = 10_000;
const WAIT_TIMEOUT_MS = 10_000;
const LEASE_MS = 16_000;
/**
 * redlock's retry, with as many retries as fill memlock's 10 s wait on
 * average: the "equivalent" of wait {timeoutMs: 10000}. The headline rival
 * retries every 10 ms +- 10 ms, which suits a hot key far better than
 * redlock's default (200 ms +- 100 ms, kept as the extra 'redlock-200ms' row).
 */
function redlockRetry(retryDelay: number, retryJitter: number): RedlockSettings {
  return { retryDelay, retryJitter, retryCount: Math.ceil(WAIT_TIMEOUT_MS / (retryDelay + retryJitter / 2)) };
}
const REDLOCK_RETRY: Readonly<Record<'redlock' | 'redlock-200ms', RedlockSettings>> = {
  redlock: redlockRetry(10, 10),
  'redlock-200ms': redlockRetry(200, 100),
};
/** Delay between `go` and the workers' start, so every process starts together. */
const START_DELAY_MS = 300;
const WORKER = fileURLToPath(new URL('../fixtures/fleet-worker.ts', import.meta.url));

export interface Shape {
  label: string;
  processes: number;
  workers: number;
  rows: number;
}

/** Parses 'PxWxR' (processes x workers per process x hot rows); null when malformed or out of bounds. */
export function parseShape(text: string): Shape | null {
  const m = /^(\d+)x(\d+)x(\d+)$/.exec(text.trim());
  if (!m) return null;
  const [processes, workers, rows] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (
    processes < 1 ||
    processes > 64 ||
    workers < 1 ||
    workers > 64 ||
    rows < 1 ||
    rows > 1000 ||
    processes * workers > 256
  )
    return null;
  return { label: `${processes}x${workers}x${rows}`, processes, workers, rows };
}

function variantOf(s: Shape): string {
  return `${s.label}: ${s.processes} proc x ${s.workers} worker${s.workers === 1 ? '' : 's'}, ${s.rows} row${s.rows === 1 ? '' : 's'}`;
}

export const fleet = defineScenario({
  name: NAME,
  summary:
    'P processes x W workers on R hot PostgreSQL rows: no lock vs memlock (one per process) vs redlock; fairness and tails',
  needs: ['pg', 'memcache', 'memlock', 'redis'],
  deadlineMs: (ctx) => {
    const perSubject = ctx.fleet.warmupMs + ctx.fleet.durationMs + WAIT_TIMEOUT_MS + 60_000;
    return ctx.fleet.shapes.length * (120_000 + ctx.fleet.subjects.length * perSubject);
  },
  run,
});

async function run(ctx: BenchContext, res: Resources): Promise<ScenarioReport> {
  const shapes = ctx.fleet.shapes.map((s) => {
    const shape = parseShape(s);
    if (!shape) throw new Error(`bad fleet shape '${s}'`);
    return shape;
  });
  const subjects = FLEET_SUBJECTS.filter((s) => ctx.fleet.subjects.includes(s));
  const report = newReport(ctx);
  if (!ctx.pg.ok) {
    skip(report, ctx.pg.reason, ...subjects);
    return report;
  }
  const pool = res.pool(ctx.pg.value, 1);
  const table = `memlock_bench_fleet_${ctx.runId}`;
  const rows = Math.max(...shapes.map((s) => s.rows));
  await pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`);
  res.defer(() => pool.query(`DROP TABLE IF EXISTS ${table}`));
  await pool.query(`INSERT INTO ${table} (id) SELECT generate_series(1, ${rows})`);

  const available = (subject: FleetSubject): string => {
    if (subject === 'memlock') return missing(ctx.memcache, ctx.memlock);
    if (subject === 'redlock' || subject === 'redlock-200ms') return missing(ctx.redis);
    return '';
  };
  for (const subject of subjects) {
    const reason = available(subject);
    if (reason) skip(report, reason, subject);
  }
  const runnable = subjects.filter((s) => !available(s));

  for (const shape of shapes) {
    const label = `[${NAME}] ${shape.label}`;
    ctx.progress(`${label}: starting ${shape.processes} processes`);
    const procs = await startFleet(shape.processes, res);
    try {
      for (const subject of runnable) {
        await pool.query(`UPDATE ${table} SET n = 0`);
        const server = lockServer(ctx, subject);
        const ops0 = server ? await server.ops() : null;
        const serverCpu0 = server ? await server.cpuMs() : null;
        const base: Omit<FleetPrepare, 'processIndex'> = {
          type: 'prepare',
          subject,
          workers: shape.workers,
          rows: shape.rows,
          table,
          pg: ctx.pg.value,
          memcacheServers: ctx.memcache.ok ? ctx.memcache.value.servers : null,
          redisUrl: ctx.redis.ok ? ctx.redis.value.url : null,
          redlockSettings: subject === 'redlock-200ms' ? REDLOCK_RETRY['redlock-200ms'] : REDLOCK_RETRY.redlock,
          waitTimeoutMs: WAIT_TIMEOUT_MS,
          leaseMs: LEASE_MS,
        };
        await Promise.all(procs.map((p, i) => p.request({ ...base, processIndex: i }, 'ready', 60_000)));
        const startAt = Date.now() + START_DELAY_MS;
        const measureFrom = startAt + ctx.fleet.warmupMs;
        const measureUntil = measureFrom + ctx.fleet.durationMs;
        ctx.progress(
          `${label} ${subject}: ${(ctx.fleet.warmupMs / 1000).toFixed(1)} s warm-up + ${(ctx.fleet.durationMs / 1000).toFixed(1)} s`,
        );
        const go: FleetRequest = { type: 'go', startAt, measureFrom, measureUntil };
        const budget = measureUntil - Date.now() + WAIT_TIMEOUT_MS + 30_000;
        const replies = await Promise.all(procs.map((p) => p.request(go, 'result', budget)));
        const perProcess = replies.map((r) => (r as Extract<FleetReply, { type: 'result' }>).result);
        const ops1 = server ? await server.ops() : null;
        const serverCpu1 = server ? await server.cpuMs() : null;
        const sum = await pool.query<{ s: string | null }>(`SELECT sum(n) AS s FROM ${table}`);
        const result = toResult({
          shape,
          subject,
          durationMs: ctx.fleet.durationMs,
          procs: perProcess,
          lockOps: ops0 !== null && ops1 !== null ? ops1 - ops0 : null,
          // No lock server for no-lock; one we cannot read (MEMCACHE_SERVERS) is left out, and the notes say so.
          lockServerCpuMs: !server ? 0 : serverCpu0 !== null && serverCpu1 !== null ? serverCpu1 - serverCpu0 : null,
          rowSum: Number(sum.rows[0]?.s ?? 0),
        });
        report.results.push(result);
        ctx.progress(`${label} ${subject}: ${describe(result)}`);
      }
    } catch (err) {
      report.notes.push(
        `${shape.label}: FAILED, remaining subjects of this shape not run: ${err instanceof Error ? err.message : String(err)}`,
      );
      ctx.progress(`${label}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      await Promise.all(procs.map((p) => p.stop()));
    }
    report.notes.push(...targets(shape, report.results));
  }
  return report;
}

/** The server that counts a subject's lock operations and CPU: memcached for memlock, Redis for redlock, none for no-lock. */
function lockServer(
  ctx: BenchContext,
  subject: FleetSubject,
): { ops: () => Promise<number>; cpuMs: () => Promise<number | null> } | null {
  if (subject === 'memlock' && ctx.memcache.ok) {
    const mc = ctx.memcache.value;
    return { ops: mc.ops, cpuMs: () => Promise.resolve(mc.cpuMs()) };
  }
  if ((subject === 'redlock' || subject === 'redlock-200ms') && ctx.redis.ok) return ctx.redis.value;
  return null;
}

function describe(r: Result): string {
  const m = r.metrics;
  return (
    `${fmt(r.opsPerSec, 'rate')} commits/s, ${fmt(m.abortedTx ?? null, 'int')} aborted, share ${fmt(m.shareLeastMost ?? null, 'num')}, ` +
    `p50/p99/max ${fmt(r.p50Ms, 'ms')}/${fmt(r.p99Ms, 'ms')}/${fmt(m.maxMs ?? null, 'ms')} ms, ${fmt(m.waitTimeouts ?? null, 'int')} timeouts, ` +
    `ops/commit ${fmt(m.lockOpsPerCommit ?? null, 'num')}, CPU ms/commit ${fmt(m.cpuMsPerCommit ?? null, 'num')}, ` +
    `db tx/commit ${fmt(m.dbTxPerCommit ?? null, 'num')}, per process ${String(m.perProcessCommits)}, sums ${m.sumsVerified ? 'ok' : 'MISMATCH'}` +
    (r.errors ? `, ${r.errors} errors (${r.firstError ?? ''})` : '')
  );
}

/** What one (shape, subject) run measured, for toResult. */
interface FleetRun {
  shape: Shape;
  subject: FleetSubject;
  durationMs: number;
  procs: FleetProcessResult[];
  /** Operations the lock server counted over the run (warm-up included); null when not counted. */
  lockOps: number | null;
  /** CPU ms the lock server used over the run; 0 without one, null when it cannot be read. */
  lockServerCpuMs: number | null;
  /** Sum of the hot rows after the run: must equal the commits. */
  rowSum: number;
}

function toResult({ shape, subject, durationMs, procs, lockOps, lockServerCpuMs, rowSum }: FleetRun): Result {
  const lat = new Samples();
  for (const p of procs) for (const v of p.latencies) lat.push(v);
  const l = lat.summary();
  const commits = procs.reduce((s, p) => s + p.commits, 0);
  const commitsTotal = procs.reduce((s, p) => s + p.commitsTotal, 0);
  const per = procs.map((p) => p.commits);
  const most = Math.max(...per);
  const errors = procs.reduce((s, p) => s + p.errors, 0);
  const processCpuMs = procs.reduce((s, p) => s + p.cpuMs, 0);
  const pendingAges = procs.flatMap((p) => p.pendingAgesMs);
  // Attempts cut at the end never committed: their age so far is a lower bound on their latency.
  const censored = new Samples();
  censored.addAll(lat);
  for (const v of pendingAges) censored.push(v);
  return {
    ...emptyResult(NAME, subject, variantOf(shape)),
    opsPerSec: commits / (durationMs / 1000),
    p50Ms: l.p50Ms,
    p99Ms: l.p99Ms,
    rounds: 1,
    samples: commits,
    errors,
    firstError: procs.find((p) => p.firstError)?.firstError ?? null,
    metrics: {
      commits,
      abortedTx: procs.reduce((s, p) => s + p.abortedTx, 0),
      shareLeastMost: most > 0 ? Math.min(...per) / most : null,
      perProcessCommits: per.join('/'),
      maxMs: l.maxMs,
      waitTimeouts: subject === 'no-lock' ? null : procs.reduce((s, p) => s + p.waitTimeouts, 0),
      lockOpsPerCommit: lockOps !== null && commitsTotal > 0 ? lockOps / commitsTotal : null,
      // Warm-up, window and stragglers alike: the same span as commitsTotal, the lock server's ops and its CPU.
      cpuMsPerCommit: commitsTotal > 0 ? (processCpuMs + (lockServerCpuMs ?? 0)) / commitsTotal : null,
      processCpuMsPerCommit: commitsTotal > 0 ? processCpuMs / commitsTotal : null,
      lockServerCpuMsPerCommit: lockServerCpuMs !== null && commitsTotal > 0 ? lockServerCpuMs / commitsTotal : null,
      lockServerCpuCounted: lockServerCpuMs !== null,
      dbTxPerCommit: commitsTotal > 0 ? procs.reduce((s, p) => s + p.dbTxTotal, 0) / commitsTotal : null,
      pendingAtEnd: pendingAges.length,
      oldestPendingMs: pendingAges.length > 0 ? Math.max(...pendingAges) : null,
      p99WithPendingMs: censored.summary().p99Ms,
      sumsVerified: rowSum === commitsTotal,
    },
  };
}

function targets(shape: Shape, results: Result[]): string[] {
  const variant = variantOf(shape);
  const mem = findResult(results, 'memlock', variant);
  if (!mem) return [];
  const red = findResult(results, 'redlock', variant);
  const none = findResult(results, 'no-lock', variant);
  const out: string[] = [];
  const t = (label: string, shown: string, met: boolean): void =>
    void out.push(targetNote(`${shape.label} ${label}`, shown, met));
  const share = mem.metrics.shareLeastMost;
  if (typeof share === 'number') t('least/most per-process share >= 0.6', share.toFixed(2), share >= 0.6);
  if (red && mem.p99Ms !== null && red.p99Ms !== null)
    t("p99 <= redlock's", `${fmt(mem.p99Ms, 'ms')} vs ${fmt(red.p99Ms, 'ms')} ms`, mem.p99Ms <= red.p99Ms);
  // The committed-only p99 hides a starved waiter that never commits; this one counts it at its age when the window closed.
  const mp = mem.metrics.p99WithPendingMs;
  const rp = red?.metrics.p99WithPendingMs;
  if (typeof mp === 'number' && typeof rp === 'number') {
    t(
      "(extra, not an issue target) p99 counting attempts still waiting at the end <= redlock's",
      `${fmt(mp, 'ms')} vs ${fmt(rp, 'ms')} ms`,
      mp <= rp,
    );
  }
  const vsRed = ratioOf(mem.opsPerSec, red?.opsPerSec);
  if (vsRed !== null) t('commits/s >= 1.2x redlock', fmtRatio(vsRed), vsRed >= 1.2);
  // One worker per process leaves no local batching, and P processes share the cores: the issue asks 1.0x there.
  const need = shape.workers === 1 ? 1.0 : 1.3;
  const vsNone = ratioOf(mem.opsPerSec, none?.opsPerSec);
  if (vsNone !== null) t(`commits/s >= ${need.toFixed(1)}x no-lock`, fmtRatio(vsNone), vsNone >= need);
  const aborted = mem.metrics.abortedTx;
  if (typeof aborted === 'number') t('0 aborted transactions', String(aborted), aborted === 0);
  const ops = mem.metrics.lockOpsPerCommit;
  if (typeof ops === 'number') t('<= 10 memcache ops per commit', ops.toFixed(2), ops <= 10);
  return out;
}

function newReport(ctx: BenchContext): ScenarioReport {
  return scenarioReport({
    scenario: NAME,
    title: 'Fleet: P processes x W workers on R hot rows, REPEATABLE READ read-then-update, retried on 40001',
    baseline: 'no-lock',
    primary: ratePrimary('commits/s'),
    columns: [
      metricColumn('aborted tx', 'abortedTx', 'int'),
      metricColumn('share least/most', 'shareLeastMost', 'num'),
      ...latencyColumns(),
      metricColumn('max ms', 'maxMs', 'ms'),
      metricColumn('wait timeouts', 'waitTimeouts', 'int'),
      metricColumn('lock ops/commit', 'lockOpsPerCommit', 'num'),
      { header: 'CPU ms/commit', value: cpuCell, format: 'text' },
      metricColumn('db tx/commit', 'dbTxPerCommit', 'num'),
      metricColumn('oldest at end ms', 'oldestPendingMs', 'ms'),
      metricColumn('sums = commits', 'sumsVerified', 'text'),
    ],
    notes: [
      `one run per shape and subject (not interleaved rounds): ${(ctx.fleet.warmupMs / 1000).toFixed(1)} s warm-up, then ${(ctx.fleet.durationMs / 1000).toFixed(1)} s measured; ` +
        'subjects back to back in the same child processes (node --import=tsx, forked), on the same servers. ' +
        'Each worker has its own pg connection and walks the hot rows round-robin from a random start.',
      `memlock: one Memlock per process (default lease), tryWithLock(row key, clientId unique per worker, wait {timeoutMs: ${WAIT_TIMEOUT_MS}}); ` +
        `redlock: one client per process, acquire/release, ${LEASE_MS} ms TTL, retrying every ${retryText('redlock')} ` +
        `(redlock-200ms: redlock's default, ${retryText('redlock-200ms')}), about the same 10 s window on average.`,
      'latency: start of the lock attempt to COMMIT, per transaction committed in the window (lock wait and retried transactions included). ' +
        'share: least / most commits of one process in the window. lock ops/commit: memcached `stats` (cmd_get + cmd_set + cmd_touch + ' +
        'delete hits/misses + incr/decr) or Redis script calls, read by the parent before and after the run (warm-up included), per commit of the run. ' +
        "CPU ms/commit: CPU time of every worker process (process.cpuUsage() from the workers' start to their end) plus the lock server's " +
        '(memcached from /proc/PID/stat when the bench started it, else left out and marked "excl. memcached"; Redis from INFO cpu, ' +
        "server-wide), in brackets the lock server's part; PostgreSQL's and the parent bench process's CPU are not counted. " +
        'db tx/commit: transactions begun (serialization retries and failures included) per commit. ' +
        'Both, like lock ops/commit, over the whole run (warm-up and stragglers included) per commit of the run. ' +
        'oldest at end: age of the oldest attempt still in progress when the window closed (a starved waiter that never committed ' +
        'shows here, not in the latency columns); memlock waits are then cut with the caller signal.',
    ],
  });
}

function retryText(subject: 'redlock' | 'redlock-200ms'): string {
  const r = REDLOCK_RETRY[subject];
  return `${r.retryDelay ?? '?'} ms +- ${r.retryJitter ?? '?'} ms x ${r.retryCount ?? '?'}`;
}

/** 'total (lock server)', or 'total (excl. memcached)' when the bench could not read the lock server's CPU. */
function cpuCell(r: Result): string | null {
  const total = r.metrics.cpuMsPerCommit;
  if (typeof total !== 'number') return null;
  const server = r.metrics.lockServerCpuMsPerCommit;
  if (r.subject === 'no-lock') return fmt(total, 'num');
  if (r.metrics.lockServerCpuCounted !== true)
    return `${fmt(total, 'num')} (excl. ${r.subject === 'memlock' ? 'memcached' : 'Redis'})`;
  return `${fmt(total, 'num')} (${fmt(typeof server === 'number' ? server : null, 'num')})`;
}

// ------------------------------------------------------------ child processes

interface FleetProcess {
  /** Sends `message` and resolves with the next reply of type `expect`; rejects on a `failed` reply, exit or timeout. */
  request: (message: FleetRequest, expect: FleetReply['type'], timeoutMs: number) => Promise<FleetReply>;
  stop: () => Promise<void>;
}

function startProcess(index: number): { proc: FleetProcess; hello: Promise<unknown> } {
  const child: ChildProcess = fork(WORKER, [], {
    execArgv: ['--import=tsx'],
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (s: string) => {
    stderr = (stderr + s).slice(-4000);
  });
  const inbox: FleetReply[] = [];
  let wake: (() => void) | null = null;
  child.on('message', (m: FleetReply) => {
    inbox.push(m);
    wake?.();
  });
  let exited = false;
  const onExit = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      wake?.();
      resolve();
    });
  });
  child.on('error', () => undefined);
  const whoami = (): string => `fleet process ${index} (pid ${child.pid ?? '?'})`;
  const next = async (expect: FleetReply['type'], timeoutMs: number): Promise<FleetReply> => {
    const wait = (async (): Promise<FleetReply> => {
      for (;;) {
        const m = inbox.shift();
        if (m?.type === expect) return m;
        if (m?.type === 'failed') throw new Error(`${whoami()}: ${m.error}`);
        if (m) continue;
        if (exited)
          throw new Error(`${whoami()} exited before '${expect}': ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = null;
      }
    })();
    return withDeadline(wait, timeoutMs, `${whoami()} waiting for '${expect}'`);
  };
  const proc: FleetProcess = {
    request: (message, expect, timeoutMs) => {
      child.send(message);
      return next(expect, timeoutMs);
    },
    stop: async () => {
      if (exited) return;
      if (child.connected) child.send({ type: 'exit' } satisfies FleetRequest);
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await onExit;
      clearTimeout(timer);
    },
  };
  return { proc, hello: next('hello', 120_000) };
}

/** Forks `n` worker processes and waits until each has loaded; they are stopped when `res` closes, however the run ends. */
async function startFleet(n: number, res: Resources): Promise<FleetProcess[]> {
  const started = Array.from({ length: n }, (_, i) => startProcess(i));
  const procs = started.map((s) => s.proc);
  res.defer(() => Promise.all(procs.map((p) => p.stop())));
  await Promise.all(started.map((s) => s.hello));
  return procs;
}
