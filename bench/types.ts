// Shapes shared by the CLI, the scenarios and the report.

import type { PoolConfig } from 'pg';
import type { MemlockModule } from './lib.js';

/** A dependency that is either usable or skipped for a one-line reason. */
export type Avail<T> = { ok: true; value: T } | { ok: false; reason: string };

export type ServerKind = 'memcache' | 'redis' | 'pg' | 'memlock';

export interface MemcacheTarget {
  /** 'host:port,host:port' as memjs and Memlock take it. */
  servers: string;
  /** Operations the server(s) counted so far (see servers.ts for what counts). */
  ops: () => Promise<number>;
  /** The servers' `stats` counters, summed over the servers. */
  stats: () => Promise<Record<string, number>>;
  /** Raw text-protocol delete of a full memcache key, independent of any client library. */
  deleteRaw: (key: string) => Promise<boolean>;
  /** CPU ms the memcached has used so far: only for the one the bench started (null: not ours, or not readable). */
  cpuMs: () => number | null;
}

export interface RedisTarget {
  url: string;
  /** Lock round trips the server counted so far (script calls, see servers.ts). */
  ops: () => Promise<number>;
  /** CPU ms the Redis server has used so far (INFO cpu; server-wide, other clients included); null when not reported. */
  cpuMs: () => Promise<number | null>;
}

export interface BenchContext {
  durationMs: number;
  rounds: number;
  warmupMs: number;
  /** Locks held at once in the heartbeat scenario. */
  locks: number;
  /** Unique per run, part of every key and table name, so runs never see each other's state. */
  runId: string;
  memcache: Avail<MemcacheTarget>;
  redis: Avail<RedisTarget>;
  pg: Avail<PoolConfig>;
  memlock: Avail<MemlockModule>;
  /** Options of the fleet scenario (--shape, --subject, its own duration). */
  fleet: FleetOptions;
  progress: (message: string) => void;
}

export interface FleetOptions {
  /** 'PxWxR' shapes to run (processes x workers per process x hot rows). */
  shapes: readonly string[];
  /** Subjects to run; the targets need all three. */
  subjects: readonly string[];
  /** Measured seconds per (shape, subject), in ms: --duration when given, else 10 s. */
  durationMs: number;
  warmupMs: number;
}

export type MetricValue = number | string | boolean | null;

export interface Result {
  scenario: string;
  subject: string;
  /** Mode within the scenario ('sequential', '64 in flight'); '' when there is one. */
  variant: string;
  /** Completed operations per second: median over rounds. */
  opsPerSec: number | null;
  /** Latency percentiles in ms over all rounds' samples (what the latency means is scenario-specific). */
  p50Ms: number | null;
  p99Ms: number | null;
  /** ± half the range of the per-round primary figure relative to its median, percent. */
  spreadPct: number | null;
  /** Primary metric relative to the baseline subject in the same run and variant (filled in by the report). */
  ratio: number | null;
  baseline: boolean;
  rounds: number;
  samples: number;
  errors: number;
  firstError: string | null;
  metrics: Record<string, MetricValue>;
  /**
   * The primary figure of each round, in round order (rounds of different
   * subjects with the same index ran back to back): for paired ratios.
   */
  perRound?: number[];
}

export type Format = 'int' | 'rate' | 'ms' | 'pct' | 'x' | 'num' | 'bytes' | 'text';

export interface Column {
  header: string;
  value: (r: Result) => MetricValue;
  format: Format;
}

export interface ScenarioReport {
  scenario: string;
  title: string;
  /** Subject the ratio column divides by. */
  baseline: string;
  primary: { header: string; value: (r: Result) => number | null; higherIsBetter: boolean; format: Format };
  columns: Column[];
  results: Result[];
  skipped: { subject: string; reason: string }[];
  /** Target checks, settings and caveats printed under the table. */
  notes: string[];
  error?: string;
}

export interface Scenario {
  name: string;
  summary: string;
  needs: readonly ServerKind[];
  run: (ctx: BenchContext) => Promise<ScenarioReport>;
  /** How long the CLI lets the scenario run before failing it (default: max(180 s, 40 x --duration)). */
  deadlineMs?: (ctx: BenchContext) => number;
}

export function emptyResult(scenario: string, subject: string, variant = ''): Result {
  return {
    scenario,
    subject,
    variant,
    opsPerSec: null,
    p50Ms: null,
    p99Ms: null,
    spreadPct: null,
    ratio: null,
    baseline: false,
    rounds: 0,
    samples: 0,
    errors: 0,
    firstError: null,
    metrics: {},
  };
}
