/**
 * Scenario 8, mutual exclusion across processes, as a reusable run (the ava
 * test asserts on a short run, the soak runner does long ones). Child
 * processes (fixtures/exclusion-worker.mts) contend for a few keys and record
 * every critical section in PostgreSQL on the database clock; this module
 * creates a uniquely named table, injects faults, and counts overlaps:
 * two sections on one key whose recorded intervals intersect. Recorded
 * intervals lie inside the real critical sections (the start is stamped
 * after the lock is taken, the end before it is released), so an overlap in
 * the table is a real one.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { startProxy, type FaultProxy } from '../../helpers/proxy.js';
import { startFixture, type Fixture } from './child.js';

/**
 * - none: no faults;
 * - delete: entries disappear behind the holders' backs (flush_all and
 *   deletes, as eviction would), so the lock CAN be granted twice; each
 *   earlier holder must still be told, within about a heartbeat;
 * - partition: process 0 talks through the fault proxy, which stalls for
 *   longer than the lease while it holds keys; its sections carry on for a
 *   while after the loss (stubborn work), so others overlap them — and each
 *   such overlap must come after the stubborn holder was told.
 */
export type FaultMode = 'none' | 'delete' | 'partition';

export interface ExclusionOptions {
  readonly mode: FaultMode;
  readonly durationMs: number;
  readonly processes?: number;
  readonly workers?: number;
  readonly keys?: number;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  readonly holdMs?: readonly [number, number];
  /** Hold times of process 0 (default: holdMs). In partition mode its sections must outlast a heartbeat to be caught. */
  readonly holdMsProc0?: readonly [number, number];
  /** partition: how long a section carries on after its signal aborted. */
  readonly afterAbortMs?: number;
  /** delete: time between faults. */
  readonly faultEveryMs?: number;
  readonly log?: (line: string) => void;
}

export interface OverlapRecord {
  readonly key: string;
  /** The holder whose grant came first on the server: the one that must be told. */
  readonly earlier: string;
  readonly later: string;
  /** When the earlier holder was told (ms, database clock), minus the start of the overlap; NaN when never. */
  readonly lagMs: number;
  /** How it was told: a LockLostError kind, 'release', or undefined. */
  readonly toldBy: string | undefined;
}

export interface ExclusionFigures {
  readonly mode: FaultMode;
  readonly durationMs: number;
  readonly processes: number;
  readonly workers: number;
  readonly keys: number;
  readonly sections: number;
  readonly sectionsPerSecond: number;
  readonly notAcquired: number;
  readonly unavailable: number;
  /** Loss signals by kind (all processes). */
  readonly lost: Record<string, number>;
  readonly releaseFailed: number;
  readonly faults: number;
  readonly overlaps: number;
  /** The earlier holder's signal had aborted before the later section started. */
  readonly toldBefore: number;
  /** Told by its signal, after the later section had started (lag below). */
  readonly toldAfter: number;
  /** Told only by its release (a section shorter than a heartbeat). */
  readonly toldByRelease: number;
  /** Never told. */
  readonly silent: number;
  /** Largest lag of a signal after the later start (ms), 0 if none. */
  readonly maxSignalLagMs: number;
  readonly unfinished: number;
  readonly unexpected: string[];
  readonly sample: OverlapRecord[];
}

// The usual PG* variables, else this machine kind's local server (trust auth).
const DB = {
  host: process.env.PGHOST ?? '127.0.0.1',
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'root',
  password: process.env.PGPASSWORD,
  database: process.env.PGDATABASE ?? 'test',
};

/** One critical section as recorded (ms on the database clock; `ended` Infinity while unfinished). */
export interface Row {
  id: string;
  key: string;
  proc: number;
  started: number;
  ended: number;
  /**
   * CAS of the entry the grant wrote, when the worker learned it: memcached
   * numbers writes in the order it applies them, so it orders two grants
   * even when their replies arrived the other way round.
   */
  grantCas?: bigint | null | undefined;
}

/**
 * The oracle of scenario 8: every pair of sections on one key where the later
 * started before the earlier ended, with when (and how) the earlier holder was
 * told. "Earlier" is the holder whose grant memcached applied first (by grant
 * CAS, when both are known), else the one that started first: a grant whose
 * write landed just before a flush and whose reply came after another
 * holder's fresh add started later, but it is that grant's entry the flush
 * took, and its holder that must be told. `sections` must be ordered by key,
 * then start; `told` maps a section id to its first loss signal (a
 * LockLostError kind, or 'release').
 */
export function sweepOverlaps(
  sections: readonly Row[],
  told: ReadonlyMap<string, { kind: string; at: number }>,
): OverlapRecord[] {
  // Sweep each key in start order, keeping the sections still running.
  const overlaps: OverlapRecord[] = [];
  let active: Row[] = [];
  let currentKey = '';
  for (const row of sections) {
    if (row.key !== currentKey) {
      currentKey = row.key;
      active = [];
    }
    active = active.filter((a) => a.ended > row.started);
    for (const before of active) {
      const flipped = before.grantCas != null && row.grantCas != null && row.grantCas < before.grantCas;
      const [earlier, later] = flipped ? [row, before] : [before, row];
      const t = told.get(earlier.id);
      overlaps.push({
        key: row.key,
        earlier: earlier.id,
        later: later.id,
        // The overlap starts when the second section does.
        lagMs: t ? t.at - row.started : Number.NaN,
        toldBy: t?.kind,
      });
    }
    active.push(row);
  }
  return overlaps;
}

export async function runExclusion(mc: MemcachedProcess, options: ExclusionOptions): Promise<ExclusionFigures> {
  const processes = options.processes ?? 4;
  const workers = options.workers ?? 25;
  const keys = options.keys ?? 10;
  const hold = options.holdMs ?? [2, 10];
  const log = options.log ?? (() => undefined);
  const table = `memlock_mx_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  const prefix = `${table}:`;
  const db = new pg.Client(DB);
  try {
    await db.connect();
  } catch (error) {
    throw new Error(
      `scenario 8 records critical sections in PostgreSQL: it needs a server on ${DB.host}:${DB.port} (trust auth, user ${DB.user}, database ${DB.database})`,
      { cause: error },
    );
  }
  const children: Fixture[] = [];
  let proxy: FaultProxy | undefined;
  try {
    await db.query(`CREATE TABLE ${table} (id text PRIMARY KEY, key text NOT NULL, proc int NOT NULL, worker int NOT NULL,
      started timestamptz NOT NULL DEFAULT clock_timestamp(), ended timestamptz, grant_cas numeric)`);
    await db.query(
      `CREATE TABLE ${table}_aborts (id text NOT NULL, kind text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
    );
    if (options.mode === 'partition') proxy = await startProxy(mc.endpoint);
    for (let p = 0; p < processes; p++) {
      children.push(
        startFixture('exclusion-worker.mts', {
          MEMCACHE_SERVERS: p === 0 && proxy ? proxy.address : mc.address,
          PREFIX: prefix,
          TABLE: table,
          PROC: String(p),
          WORKERS: String(workers),
          KEYS: String(keys),
          LEASE_MS: String(options.leaseMs),
          HEARTBEAT_MS: String(options.heartbeatMs),
          TIMEOUT_MS: String(options.timeoutMs),
          HOLD_MIN_MS: String((p === 0 ? (options.holdMsProc0 ?? hold) : hold)[0]),
          HOLD_MAX_MS: String((p === 0 ? (options.holdMsProc0 ?? hold) : hold)[1]),
          AFTER_ABORT_MS: String(options.mode === 'partition' ? (options.afterAbortMs ?? options.leaseMs) : 0),
        }),
      );
    }
    await Promise.all(children.map((c) => c.next('ready', 30_000)));
    for (const c of children) c.send(`go ${options.durationMs}`);
    const start = performance.now();
    const until = start + options.durationMs;
    let faults = 0;
    if (options.mode === 'delete') {
      const every = options.faultEveryMs ?? 150;
      while (performance.now() + every < until) {
        await sleep(every * (0.5 + Math.random()));
        if (faults % 4 === 3) await mc.flush();
        else await mc.rawDelete(`${prefix}k${Math.floor(Math.random() * keys)}`);
        faults++;
      }
    } else if (options.mode === 'partition' && proxy) {
      const stallMs = options.leaseMs + 1500;
      const settle = options.afterAbortMs ?? options.leaseMs;
      while (performance.now() + stallMs + 500 < until) {
        // Partition process 0 while it holds a key it took moments ago (so its section
        // outlasts the lease deadline; see holdMsProc0).
        const open = async (): Promise<number> =>
          Number(
            (
              await db.query(`SELECT count(*) AS n FROM ${table}
          WHERE proc = 0 AND ended IS NULL AND started > clock_timestamp() - interval '300 milliseconds'`)
            ).rows[0].n,
          );
        while ((await open()) === 0 && performance.now() + stallMs < until) await sleep(20);
        proxy.stall();
        faults++;
        log(`partition ${faults}: process 0 stalled for ${stallMs} ms`);
        await sleep(stallMs);
        proxy.heal();
        await sleep(settle + 500);
      }
    }
    const done = await Promise.all(children.map((c) => c.next('done', options.durationMs + 60_000)));
    await Promise.all(children.map((c) => c.exited));
    const elapsedMs = performance.now() - start;

    const sections = (
      await db.query(`SELECT id, key, proc,
        (extract(epoch FROM started) * 1000)::float8 AS started,
        COALESCE((extract(epoch FROM ended) * 1000)::float8, 'Infinity'::float8) AS ended,
        grant_cas::text AS grant_cas
      FROM ${table} ORDER BY key, started`)
    ).rows.map((r: Row & { grant_cas: string | null }) => ({
      ...r,
      grantCas: r.grant_cas === null ? null : BigInt(r.grant_cas),
    })) as Row[];
    const aborts = (
      await db.query(`SELECT id, kind, (extract(epoch FROM at) * 1000)::float8 AS at FROM ${table}_aborts ORDER BY at`)
    ).rows as Array<{ id: string; kind: string; at: number }>;
    const told = new Map<string, { kind: string; at: number }>();
    for (const a of aborts) if (!told.has(a.id)) told.set(a.id, { kind: a.kind, at: a.at });

    const overlaps = sweepOverlaps(sections, told);
    const sum = (f: (d: Record<string, unknown>) => number): number => done.reduce((n, d) => n + f(d), 0);
    const lost: Record<string, number> = {};
    for (const d of done)
      for (const [k, v] of Object.entries(d.lost as Record<string, number>)) lost[k] = (lost[k] ?? 0) + v;
    const signalled = overlaps.filter((o) => o.toldBy !== undefined && o.toldBy !== 'release');
    return {
      mode: options.mode,
      durationMs: elapsedMs,
      processes,
      workers,
      keys,
      sections: sections.length,
      sectionsPerSecond: sections.length / (elapsedMs / 1000),
      notAcquired: sum((d) => d.notAcquired as number),
      unavailable: sum((d) => d.unavailable as number),
      lost,
      releaseFailed: sum((d) => d.releaseFailed as number),
      faults,
      overlaps: overlaps.length,
      toldBefore: signalled.filter((o) => o.lagMs <= 0).length,
      toldAfter: signalled.filter((o) => o.lagMs > 0).length,
      toldByRelease: overlaps.filter((o) => o.toldBy === 'release').length,
      silent: overlaps.filter((o) => o.toldBy === undefined).length,
      maxSignalLagMs: Math.max(0, ...signalled.map((o) => o.lagMs)),
      unfinished: sections.filter((s) => s.ended === Infinity).length,
      unexpected: [
        ...done.flatMap((d) => d.unexpected as string[]),
        ...children.filter((c) => c.child.exitCode !== 0).map((c) => `exit ${c.child.exitCode}: ${c.stderr()}`),
      ],
      sample: overlaps.slice(0, 5),
    };
  } finally {
    await Promise.all(children.map((c) => c.kill()));
    await proxy?.close();
    await db.query(`DROP TABLE IF EXISTS ${table}`).catch(() => undefined);
    await db.query(`DROP TABLE IF EXISTS ${table}_aborts`).catch(() => undefined);
    await db.end();
  }
}

/** One line of figures, for logs. */
export function describeExclusion(f: ExclusionFigures): string {
  const lost =
    Object.entries(f.lost)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none';
  return (
    `${f.mode}: ${f.processes}x${f.workers} workers on ${f.keys} keys for ${(f.durationMs / 1000).toFixed(1)} s: ` +
    `${f.sections} sections (${f.sectionsPerSecond.toFixed(0)}/s), refused ${f.notAcquired}, unavailable ${f.unavailable}, ` +
    `faults ${f.faults}, lost signals: ${lost}, failed releases ${f.releaseFailed}; overlaps ${f.overlaps} ` +
    `(told before ${f.toldBefore}, after ${f.toldAfter} [max lag ${f.maxSignalLagMs.toFixed(1)} ms], by release ${f.toldByRelease}, silent ${f.silent})`
  );
}
