/**
 * How scenario 8 (lib/exclusion.ts) records its history in PostgreSQL: one
 * row per critical section (granted, work ended) and one per loss signal (a
 * holder was told it lost its lock). The worker processes write the rows; the
 * oracle reads them back and compares times across processes.
 *
 * Every time in the history is stamped in the worker, at the moment of the
 * event, on one clock: {@link hostNow}. Nothing is stamped by the database
 * on arrival: a loss signal's INSERT goes through a small pool and can wait
 * hundreds of ms for a connection, and a stamp taken by PostgreSQL
 * (`clock_timestamp()`) when the INSERT finally ran made the signal look
 * late (`toldAfter`) when it was not (issue 16, finding 8).
 */
import type pg from 'pg';

/**
 * Wall-clock ms that stamps from different processes on one host can be
 * compared by: `performance.timeOrigin` is the wall-clock time (sub-ms) at
 * which this process started, `performance.now()` the monotonic time since.
 * Unlike `Date.now()` it has sub-ms resolution and never steps during the
 * process's life (an NTP step after the start does not move it); unlike
 * `performance.now()` alone it does not count from each process's own
 * start. Processes of one run live seconds, so their readings agree to
 * within the error of reading the wall clock at each start.
 */
export function hostNow(): number {
  return performance.timeOrigin + performance.now();
}

/** A holder was told it lost its lock: how (a LockLostError kind, or 'release') and when ({@link hostNow}). */
export interface LossStamp {
  readonly id: string;
  readonly kind: string;
  readonly at: number;
}

/** One critical section as recorded (ms on {@link hostNow}'s clock; `ended` Infinity while unfinished). */
export interface Row {
  id: string;
  key: string;
  proc: number;
  started: number;
  ended: number;
}

/**
 * Loss signals of one process. {@link told} takes the time at once and
 * queues the write; the write may run much later (it waits for a pooled
 * connection) without moving the stamp.
 */
export class LossStamps {
  readonly #pending: Array<Promise<void>> = [];

  constructor(
    private readonly write: (stamp: LossStamp) => Promise<unknown>,
    private readonly onError: (error: unknown) => void,
    private readonly now: () => number = hostNow,
  ) {}

  /** Records that section `id` was told, now; the write happens in the background. */
  told(id: string, kind: string): LossStamp {
    const stamp: LossStamp = { id, kind, at: this.now() };
    this.#pending.push(
      this.write(stamp).then(
        () => undefined,
        (error: unknown) => this.onError(error),
      ),
    );
    return stamp;
  }

  /** Resolves once every queued write finished (failed writes went to `onError`). */
  async settled(): Promise<void> {
    await Promise.all(this.#pending);
  }
}

/** Creates the two tables of one run: `table` (sections) and `table_aborts` (loss signals). */
export async function createHistoryTables(db: pg.ClientBase | pg.Pool, table: string): Promise<void> {
  await db.query(`CREATE TABLE ${table} (id text PRIMARY KEY, key text NOT NULL, proc int NOT NULL, worker int NOT NULL,
      started timestamptz NOT NULL, ended timestamptz)`);
  // No default: a row without the worker's own stamp is a bug, not "now".
  await db.query(`CREATE TABLE ${table}_aborts (id text NOT NULL, kind text NOT NULL, at timestamptz NOT NULL)`);
}

/** Drops the tables of {@link createHistoryTables}. */
export async function dropHistoryTables(db: pg.ClientBase | pg.Pool, table: string): Promise<void> {
  await db.query(`DROP TABLE IF EXISTS ${table}`);
  await db.query(`DROP TABLE IF EXISTS ${table}_aborts`);
}

/** The section `id` was granted at `started` ({@link hostNow}). */
export async function insertSection(
  db: pg.ClientBase | pg.Pool,
  table: string,
  section: {
    readonly id: string;
    readonly key: string;
    readonly proc: number;
    readonly worker: number;
    readonly started: number;
  },
): Promise<void> {
  await db.query(
    `INSERT INTO ${table} (id, key, proc, worker, started) VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000))`,
    [section.id, section.key, section.proc, section.worker, section.started],
  );
}

/** The work of section `id` ended at `ended` ({@link hostNow}). */
export async function endSection(db: pg.ClientBase | pg.Pool, table: string, id: string, ended: number): Promise<void> {
  await db.query(`UPDATE ${table} SET ended = to_timestamp($2::float8 / 1000) WHERE id = $1`, [id, ended]);
}

/** Writes one loss stamp, with the time it was taken. */
export async function insertLoss(db: pg.ClientBase | pg.Pool, table: string, stamp: LossStamp): Promise<void> {
  await db.query(`INSERT INTO ${table}_aborts (id, kind, at) VALUES ($1, $2, to_timestamp($3::float8 / 1000))`, [
    stamp.id,
    stamp.kind,
    stamp.at,
  ]);
}

/** Reads a run back: sections ordered by key, then start (what the sweep needs); losses by time. */
export async function readHistory(
  db: pg.ClientBase | pg.Pool,
  table: string,
): Promise<{ sections: Row[]; losses: LossStamp[] }> {
  const sections = (
    await db.query(`SELECT id, key, proc,
        (extract(epoch FROM started) * 1000)::float8 AS started,
        COALESCE((extract(epoch FROM ended) * 1000)::float8, 'Infinity'::float8) AS ended
      FROM ${table} ORDER BY key, started`)
  ).rows as Row[];
  const losses = (
    await db.query(`SELECT id, kind, (extract(epoch FROM at) * 1000)::float8 AS at FROM ${table}_aborts ORDER BY at`)
  ).rows as LossStamp[];
  return { sections, losses };
}
