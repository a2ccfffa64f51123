// `npm run bench`: parses options, finds (or starts) the servers, runs the
// selected scenarios one after another and prints/writes the results.
// Progress goes to stderr so stdout stays a clean table or JSON document.

import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadMemlock } from './lib.js';
import { describeError, withDeadline } from './measure.js';
import { applyRatios, jsonDocument, renderSvg, renderTable, systemLine, type SystemInfo } from './report.js';
import { describePg, probeMemcache, probePg, probeRedis, redisUrl, startMemcached } from './servers.js';
import { scenarioReport } from './scenario-kit.js';
import type { BenchContext, Scenario, ScenarioReport, ServerKind } from './types.js';
import { uncontended } from './scenarios/uncontended.js';
import { refused } from './scenarios/refused.js';
import { handoff } from './scenarios/handoff.js';
import { heartbeat } from './scenarios/heartbeat.js';
import { lossDetection } from './scenarios/loss-detection.js';
import { prefilter } from './scenarios/prefilter.js';
import { dedupe } from './scenarios/dedupe.js';
import { FLEET_DEFAULT_DURATION_MS, FLEET_SHAPES, FLEET_SUBJECTS, fleet, parseShape } from './scenarios/fleet.js';

const SCENARIOS: readonly Scenario[] = [
  uncontended,
  refused,
  handoff,
  heartbeat,
  lossDetection,
  prefilter,
  dedupe,
  fleet,
];

const HELP = `Usage: npm run bench -- [SCENARIO...] [options]

Benchmarks memlock against raw memcache (memjs), redlock (Redis) and
PostgreSQL, and measures what memlock saves in front of a database.

Options:
  --scenario NAME   run only this scenario; repeatable (default: all, in the order below);
                    a scenario name without --scenario does the same
  --duration S      seconds per measurement, split over the rounds (default 3;
                    fleet: measured seconds per shape and subject, default ${FLEET_DEFAULT_DURATION_MS / 1000})
  --rounds N        interleaved rounds per measurement, A B A B ... (default 5; fleet runs once)
  --locks N         locks held at once in the heartbeat scenario (default 10000)
  --shape PxWxR     fleet: processes x workers per process x hot rows; repeatable
                    (default: ${FLEET_SHAPES.join(', ')})
  --subject NAME    fleet: run only this subject; repeatable (${FLEET_SUBJECTS.join(', ')}; default: all)
  --json            print one JSON document on stdout instead of tables
  --help            show this help

Scenarios:
${SCENARIOS.map((s) => `  ${s.name.padEnd(15)} ${s.summary}`).join('\n')}

Environment:
  MEMCACHE_SERVERS  memcached to use ('host:port,...'); unset: start a private
                    memcached (from PATH) on a free port, stopped on exit
  REDIS_URL         Redis for the redlock subjects (default redis://127.0.0.1:6379)
  PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
                    PostgreSQL for pg-advisory, prefilter and dedupe (pg defaults)
  CI=true           an unreachable server is an error instead of a skipped subject
  MEMLOCK_BENCH_MODULE
                    bench another build of the library (default: dist/index.js, built by npm run bench)

Each measurement runs after a warm-up; subjects are interleaved over the
rounds and the tables show the median, ± half the range of the rounds relative
to it, and the ratio to the scenario's baseline in the same run. Results are
written to bench/results/latest.json and bench/results/latest.svg.
`;

interface Options {
  scenarios: Scenario[];
  durationMs: number;
  rounds: number;
  locks: number;
  json: boolean;
  fleetShapes: string[];
  fleetSubjects: string[];
  fleetDurationMs: number;
}

class UsageError extends Error {}

function parseOptions(argv: string[]): Options | 'help' {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      scenario: { type: 'string', multiple: true },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      locks: { type: 'string' },
      shape: { type: 'string', multiple: true },
      subject: { type: 'string', multiple: true },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: true,
  });
  if (values.help) return 'help';
  const number = (
    name: string,
    raw: string | undefined,
    fallback: number,
    min: number,
    max: number,
    integer: boolean,
  ): number => {
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new UsageError(
        `--${name} must be ${integer ? 'an integer' : 'a number'} between ${min} and ${max}, got '${raw}'`,
      );
    }
    return n;
  };
  const names = [...(values.scenario ?? []), ...positionals];
  const scenarios =
    names.length === 0
      ? [...SCENARIOS]
      : names.map((name) => {
          const s = SCENARIOS.find((x) => x.name === name);
          if (!s)
            throw new UsageError(`unknown scenario '${name}' (one of: ${SCENARIOS.map((x) => x.name).join(', ')})`);
          return s;
        });
  const shapes = values.shape ?? [...FLEET_SHAPES];
  for (const shape of shapes) {
    if (!parseShape(shape))
      throw new UsageError(
        `--shape must be PxWxR (processes x workers x rows, e.g. 4x8x1, at most 256 workers), got '${shape}'`,
      );
  }
  const subjects = values.subject ?? [...FLEET_SUBJECTS];
  for (const subject of subjects) {
    if (!(FLEET_SUBJECTS as readonly string[]).includes(subject))
      throw new UsageError(`--subject must be one of ${FLEET_SUBJECTS.join(', ')}, got '${subject}'`);
  }
  return {
    fleetShapes: [...new Set(shapes.map((x) => parseShape(x)?.label ?? x))],
    fleetSubjects: subjects,
    fleetDurationMs:
      values.duration === undefined
        ? FLEET_DEFAULT_DURATION_MS
        : number('duration', values.duration, 3, 0.1, 3600, false) * 1000,
    scenarios: [...new Set(scenarios)],
    durationMs: number('duration', values.duration, 3, 0.1, 3600, false) * 1000,
    rounds: number('rounds', values.rounds, 5, 1, 100, true),
    locks: number('locks', values.locks, 10_000, 1, 1_000_000, true),
    json: values.json,
  };
}

// Synchronous cleanups (killing our memcached) run on every way out: normal
// exit, a thrown error, Ctrl-C or a termination signal.
const exitCleanups: (() => void)[] = [];
function runExitCleanups(): void {
  while (exitCleanups.length > 0) {
    try {
      exitCleanups.pop()?.();
    } catch {
      // best effort on the way out
    }
  }
}
process.on('exit', runExitCleanups);
for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
] as const) {
  process.once(signal, () => {
    process.stderr.write(`\n${signal}: stopping\n`);
    runExitCleanups();
    process.exit(code);
  });
}

const started = performance.now();
function progress(message: string): void {
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}

async function main(): Promise<number> {
  let options: Options | 'help';
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n\n${HELP}`);
    return 2;
  }
  if (options === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const ci = process.env.CI === 'true' || process.env.CI === '1';
  const needs = new Set<ServerKind>(options.scenarios.flatMap((s) => s.needs));
  const asyncCleanups: (() => Promise<void> | void)[] = [];

  try {
    // memcached: the given servers, or our own on a free port.
    progress('checking servers');
    let memcacheServers = process.env.MEMCACHE_SERVERS?.trim() || null;
    let memcachedStartedWith: string | null = null;
    let memcachedPid: number | null = null;
    let memcacheReason: string | null = null;
    if (!memcacheServers && needs.has('memcache')) {
      const own = await startMemcached();
      if (own.ok) {
        exitCleanups.push(own.value.stop);
        memcacheServers = own.value.servers;
        memcachedStartedWith = own.value.args.join(' ');
        memcachedPid = own.value.pid;
        progress(`started memcached on ${memcacheServers}`);
      } else memcacheReason = own.reason;
    }
    const [mc, redis, pgProbe, memlock] = await Promise.all([
      memcacheServers ? probeMemcache(memcacheServers, memcachedPid) : Promise.resolve(null),
      needs.has('redis') ? probeRedis() : Promise.resolve(null),
      needs.has('pg') ? probePg() : Promise.resolve(null),
      needs.has('memlock') ? loadMemlock() : Promise.resolve(null),
    ]);
    if (mc?.ok) asyncCleanups.push(mc.value.close);
    if (redis?.ok) asyncCleanups.push(redis.value.close);

    const unavailable: string[] = [];
    const reasonOf = <T>(
      kind: ServerKind,
      probe: { ok: true; value: T } | { ok: false; reason: string } | null,
      fallback: string,
    ): string | null => {
      if (!needs.has(kind) || probe?.ok) return null;
      const reason = probe ? probe.reason : fallback;
      unavailable.push(reason);
      return reason;
    };
    const mcReason = reasonOf('memcache', mc, memcacheReason ?? 'memcache not configured');
    const redisReason = reasonOf('redis', redis, `Redis not checked (${redisUrl()})`);
    const pgReason = reasonOf('pg', pgProbe, `PostgreSQL not checked (${describePg()})`);
    const memlockReason = reasonOf('memlock', memlock, 'library not loaded');
    for (const reason of unavailable) progress(`${ci ? 'ERROR' : 'skipping'}: ${reason}`);
    if (ci && unavailable.length > 0) {
      process.stderr.write(
        `bench: CI=true and ${unavailable.length} required server(s) or the library are unavailable\n`,
      );
      return 1;
    }

    const onlyFleet = options.scenarios.every((s) => s === fleet);
    const system: SystemInfo = {
      node: process.version,
      platform: `${os.type()} ${os.release()} ${os.arch()}`,
      cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
      cores: os.availableParallelism(),
      memoryGb: Math.round(os.totalmem() / 2 ** 30),
      // Other work on the machine moves the figures; the 1-minute load at the start says whether there was any.
      loadAverage: Math.round((os.loadavg()[0] ?? 0) * 100) / 100,
      memcached: mc?.ok ? [...new Set(mc.value.versions)].join('/') : null,
      redis: redis?.ok ? redis.value.version : null,
      postgres: pgProbe?.ok ? pgProbe.value.version : null,
      memcacheServers,
      memcachedStartedWith,
      // A fleet-only run measures once per shape and subject for its own duration.
      durationSeconds: (onlyFleet ? options.fleetDurationMs : options.durationMs) / 1000,
      rounds: onlyFleet ? 1 : options.rounds,
      date: new Date().toISOString(),
    };
    progress(systemLine(system));

    const ctx: BenchContext = {
      durationMs: options.durationMs,
      rounds: options.rounds,
      // Long enough for the JIT and connection pools, short next to the measurement.
      warmupMs: Math.min(1000, Math.max(200, options.durationMs * 0.1)),
      locks: options.locks,
      fleet: {
        shapes: options.fleetShapes,
        subjects: options.fleetSubjects,
        durationMs: options.fleetDurationMs,
        warmupMs: Math.min(1000, Math.max(200, options.fleetDurationMs * 0.1)),
      },
      runId: `${Date.now().toString(36)}${process.pid.toString(36)}`,
      memcache: mc?.ok
        ? { ok: true, value: mc.value.target }
        : { ok: false, reason: mcReason ?? 'memcache not needed' },
      redis: redis?.ok
        ? { ok: true, value: redis.value.target }
        : { ok: false, reason: redisReason ?? 'Redis not needed' },
      pg: pgProbe?.ok
        ? { ok: true, value: pgProbe.value.config }
        : { ok: false, reason: pgReason ?? 'PostgreSQL not needed' },
      memlock: memlock?.ok
        ? { ok: true, value: memlock.value }
        : { ok: false, reason: memlockReason ?? 'library not needed' },
      progress,
    };

    const reports: ScenarioReport[] = [];
    let failed = 0;
    for (const scenario of options.scenarios) {
      progress(`[${scenario.name}] start`);
      const t0 = performance.now();
      let report: ScenarioReport;
      try {
        // A hung subject must not hold the whole run hostage.
        report = await withDeadline(
          scenario.run(ctx),
          scenario.deadlineMs?.(ctx) ?? Math.max(180_000, options.durationMs * 40),
          scenario.name,
        );
      } catch (err) {
        failed++;
        progress(`[${scenario.name}] FAILED: ${describeError(err)}`);
        report = {
          ...scenarioReport({
            scenario: scenario.name,
            title: scenario.summary,
            baseline: '',
            primary: { header: '', value: () => null, higherIsBetter: true, format: 'num' },
            columns: [],
          }),
          error: describeError(err),
        };
      }
      applyRatios(report);
      reports.push(report);
      progress(`[${scenario.name}] done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      if (!options.json) process.stdout.write(`${renderTable(report)}\n\n`);
    }

    if (options.json) process.stdout.write(`${JSON.stringify(jsonDocument(system, reports), null, 2)}\n`);
    else process.stdout.write(`${systemLine(system)}\n`);

    const dir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${dir}latest.json`, `${JSON.stringify(jsonDocument(system, reports), null, 2)}\n`);
    writeFileSync(`${dir}latest.svg`, renderSvg(system, reports));
    // The Markdown tables as printed, with the command and the system line: what docs/benchmarks.md and the README quote.
    writeFileSync(
      `${dir}latest.md`,
      `Run of ${system.date}: \`npm run bench -- ${process.argv.slice(2).join(' ')}\`\n\n` +
        `${reports.map((r) => renderTable(r)).join('\n\n')}\n\n${systemLine(system)}\n`,
    );
    progress(`wrote bench/results/latest.json, latest.md and latest.svg`);
    return failed > 0 ? 1 : 0;
  } finally {
    for (const close of asyncCleanups.reverse()) await Promise.resolve(close()).catch(() => undefined);
    runExitCleanups();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
    // Everything is closed by now; if a client still holds the loop open, say so and leave anyway.
    setTimeout(() => {
      process.stderr.write('bench: handles still open after cleanup; exiting\n');
      process.exit(code);
    }, 3000).unref();
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${describeError(err)}\n`);
    runExitCleanups();
    process.exit(1);
  },
);
