/**
 * Scenario 8, mutual exclusion across processes, as a reusable run (the ava
 * test asserts on a short run, the soak runner does long ones). Child
 * processes (fixtures/exclusion-worker.mts) contend for a few keys and record
 * every critical section and every loss signal in PostgreSQL, each stamped
 * in the worker when it happened on a clock shared by the processes of one
 * host (lib/sections.ts); this module creates uniquely named tables, injects
 * faults, and counts overlaps: two sections on one key whose recorded
 * intervals intersect. Recorded intervals lie inside the real critical
 * sections (the start is stamped after the lock is taken, the end when the
 * work ended, before the lock is released), so an overlap in the table is a
 * real one.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { startProxy, type FaultProxy } from '../../helpers/proxy.js';
import { startFixture, type Fixture } from './child.js';
import { createHistoryTables, dropHistoryTables, readHistory, type LossStamp, type Row } from './sections.js';

export type { Row } from './sections.js';

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
  readonly earlier: string;
  readonly later: string;
  /** When the earlier holder was told minus when the later one was granted (ms); NaN when never. */
  readonly lagMs: number;
  /** How it was told: a LockLostError kind, 'release', or undefined. */
  readonly toldBy: string | undefined;
  /**
   * How long both were in their sections (the earlier's end minus the later's
   * start, ms; Infinity while unfinished): a few ms would be a clock-reading
   * artefact, hundreds of ms a real double grant.
   */
  readonly overlapMs: number;
  /**
   * How the later holder was told it lost its lock, if it was. An untold
   * earlier holder with a told later one suggests the two starts are stamped
   * in the wrong order: a grant is stamped when the worker's code runs after
   * it, which a loaded process can delay by hundreds of ms.
   */
  readonly laterToldBy: string | undefined;
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
  /** Never told (see {@link isInverted} for the one exception). */
  readonly silent: number;
  /** Untold earlier holder, later one told 'taken': the starts were stamped in the wrong order. */
  readonly inverted: number;
  /** Largest lag of a signal after the later start (ms), 0 if none. */
  readonly maxSignalLagMs: number;
  readonly unfinished: number;
  readonly unexpected: string[];
  /** Up to 5 overlaps, the worst first (see {@link OverlapTally}). */
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

/**
 * The oracle of scenario 8: every pair of sections on one key where the later
 * started before the earlier ended, with when (and how) the earlier holder was
 * told. `sections` must be ordered by key, then start; `told` maps a section
 * id to its first loss signal (a LockLostError kind, or 'release').
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
    for (const earlier of active) {
      const t = told.get(earlier.id);
      overlaps.push({
        key: row.key,
        earlier: earlier.id,
        later: row.id,
        lagMs: t ? t.at - row.started : Number.NaN,
        toldBy: t?.kind,
        overlapMs: Math.min(earlier.ended, row.ended) - row.started,
        laterToldBy: told.get(row.id)?.kind,
      });
    }
    active.push(row);
  }
  return overlaps;
}

/** What the oracle makes of a history (the overlap part of {@link ExclusionFigures}). */
export interface OverlapTally {
  readonly overlaps: number;
  readonly toldBefore: number;
  readonly toldAfter: number;
  readonly toldByRelease: number;
  readonly silent: number;
  readonly inverted: number;
  readonly maxSignalLagMs: number;
  /** Up to 5 overlaps, the worst first: silent ones, then those told late, then inverted ones, then the rest. */
  readonly sample: OverlapRecord[];
}

/**
 * An overlap whose earlier-stamped holder was never told while the later
 * one was told 'taken' (its entry was replaced by another acquisition): the
 * later one really was granted first, its start was stamped late.
 *
 * A grant is stamped when the worker's code runs after acquire() resolves,
 * which a process starved of CPU does hundreds of ms after memcached
 * granted the add (seen under two CPU hogs: 133 and 143 ms). Read in stamp
 * order, the holder whose entry was deleted behind its back looks like the
 * later one, and the other holder, which lost nothing, looks silent. A
 * holder that lost its entry and is never told is not hidden by this: its
 * release cannot delete its entry once another add succeeded, so it is told
 * at its release at the latest; an earlier holder stays untold only if its
 * entry survived, that is if it took the key after the later-stamped one.
 * Only 'taken' is read this way: a later holder told 'gone' or by its
 * release may have lost its entry to a release that deleted the wrong one,
 * which must stay silent.
 */
export function isInverted(o: OverlapRecord): boolean {
  return o.toldBy === undefined && o.laterToldBy === 'taken';
}

/**
 * Sweeps a recorded history (`sections` ordered by key, then start; `losses`
 * in any order, a section's earliest loss counts) and sorts every overlap by
 * when its earlier holder was told.
 */
export function tallyOverlaps(sections: readonly Row[], losses: readonly LossStamp[]): OverlapTally {
  const told = new Map<string, { kind: string; at: number }>();
  for (const loss of losses) {
    const seen = told.get(loss.id);
    if (seen === undefined || loss.at < seen.at) told.set(loss.id, { kind: loss.kind, at: loss.at });
  }
  const overlaps = sweepOverlaps(sections, told);
  const signalled = overlaps.filter((o) => o.toldBy !== undefined && o.toldBy !== 'release');
  return {
    overlaps: overlaps.length,
    toldBefore: signalled.filter((o) => o.lagMs <= 0).length,
    toldAfter: signalled.filter((o) => o.lagMs > 0).length,
    toldByRelease: overlaps.filter((o) => o.toldBy === 'release').length,
    silent: overlaps.filter((o) => o.toldBy === undefined && !isInverted(o)).length,
    inverted: overlaps.filter(isInverted).length,
    maxSignalLagMs: Math.max(0, ...signalled.map((o) => o.lagMs)),
    sample: [
      ...overlaps.filter((o) => o.toldBy === undefined && !isInverted(o)),
      ...signalled.filter((o) => o.lagMs > 0),
      ...overlaps.filter(isInverted),
      ...overlaps.filter((o) => o.toldBy !== undefined && !(o.lagMs > 0 && o.toldBy !== 'release')),
    ].slice(0, 5),
  };
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
    await createHistoryTables(db, table);
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
        let holding = false;
        while (!(holding = (await open()) > 0) && performance.now() + stallMs < until) await sleep(20);
        // Too late for a partition that would catch a section (a loaded machine starts the workers late):
        // no fault rather than one that proves nothing.
        if (!holding) break;
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

    const { sections, losses } = await readHistory(db, table);
    const tally = tallyOverlaps(sections, losses);
    const sum = (f: (d: Record<string, unknown>) => number): number => done.reduce((n, d) => n + f(d), 0);
    const lost: Record<string, number> = {};
    for (const d of done)
      for (const [k, v] of Object.entries(d.lost as Record<string, number>)) lost[k] = (lost[k] ?? 0) + v;
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
      overlaps: tally.overlaps,
      toldBefore: tally.toldBefore,
      toldAfter: tally.toldAfter,
      toldByRelease: tally.toldByRelease,
      silent: tally.silent,
      inverted: tally.inverted,
      maxSignalLagMs: tally.maxSignalLagMs,
      unfinished: sections.filter((s) => s.ended === Infinity).length,
      unexpected: [
        ...done.flatMap((d) => d.unexpected as string[]),
        ...children.filter((c) => c.child.exitCode !== 0).map((c) => `exit ${c.child.exitCode}: ${c.stderr()}`),
      ],
      sample: tally.sample,
    };
  } finally {
    await Promise.all(children.map((c) => c.kill()));
    await proxy?.close();
    await dropHistoryTables(db, table).catch(() => undefined);
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
    `(told before ${f.toldBefore}, after ${f.toldAfter} [max lag ${f.maxSignalLagMs.toFixed(1)} ms], by release ${f.toldByRelease}, silent ${f.silent}, stamped out of order ${f.inverted})`
  );
}

/**
 * The counts test/faults/repeat.sh adds up over runs, as one greppable line:
 * `figures: scenario=exclusion mode=M overlaps=N toldAfter=N silent=N toldByRelease=N inverted=N maxLagMs=N`.
 */
export function figuresLine(f: ExclusionFigures): string {
  return (
    `figures: scenario=exclusion mode=${f.mode} overlaps=${f.overlaps} toldAfter=${f.toldAfter} ` +
    `silent=${f.silent} toldByRelease=${f.toldByRelease} inverted=${f.inverted} maxLagMs=${f.maxSignalLagMs.toFixed(1)}`
  );
}
