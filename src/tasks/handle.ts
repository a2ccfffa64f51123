/**
 * Running a delivered task exactly once: the memlock pre-filter, then the
 * sequence check and row lease in PostgreSQL.
 *
 * Correctness rests on the database alone. The effect transaction locks the
 * entity row, checks that the entity's `seq` still equals the task's, runs
 * the handler's writes and advances `seq` in the same commit: a task whose
 * effect committed can never commit again, whatever memcache, the broker or
 * the workers do. Everything else is cost and liveness:
 *
 * - memlock (key = entity + sequence, clientId per delivery) stops
 *   concurrent copies of one task with a single memcache round trip, before
 *   they take a database connection. A refused copy is handed back, never
 *   dropped: its holder may crash before committing.
 * - The row lease (owner + expiry, committed before the handler runs) is the
 *   crash evidence: a worker that dies mid-task leaves it behind, the next
 *   delivery takes it over once it expired (the overwrite alert), and the
 *   attempt it recorded counts towards `maxAttempts`, so a task that kills
 *   its worker every time still ends as permanently failed instead of
 *   looping forever.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { LockNotAcquiredError, MemcacheUnavailableError, type Memlock, type LockOptions } from '../index.js';
import { callHook, publish, taskChannels, type TaskHooks } from './hooks.js';
import {
  decodeTask,
  scheduleTask,
  type EntityInput,
  type Json,
  type ScheduledTask,
  type TaskInput,
  type TaskMessage,
} from './schedule.js';
import type { MessageLike, PoolClientLike, PoolLike, Queryable } from './ports.js';
import type { Tables } from './schema.js';

/** What a handler gets. */
export interface TaskContext {
  /** The effect transaction: write the task's effect with it, so it commits with the sequence advance or not at all. */
  readonly tx: Queryable;
  /** The task being run. */
  readonly task: TaskMessage;
  /** 1-based attempt number of this task (attempts by crashed workers included). */
  readonly attempt: number;
  /** The entity's state as committed before this task (the row is locked while the handler runs). */
  readonly state: Json;
  /**
   * Aborts when the memlock lock is lost (memcache restarted, evicted, ...)
   * or the `Memlock` is closed. Stopping early is an optimisation: the commit
   * is still guarded by the sequence check.
   */
  readonly signal: AbortSignal;
  /** Replaces the entity's state when the task commits. */
  setState(state: Json): void;
  /**
   * Issues a task in this transaction (the next step of a chain): it is
   * published only if this task commits. On the same entity it gets the
   * next sequence number, so it runs after this one.
   */
  schedule(entity: EntityInput, task: TaskInput): Promise<ScheduledTask>;
}

/** A task handler. Throwing (or rejecting) rolls the effect back and counts as a failed attempt. */
export type TaskHandler<T = unknown> = (ctx: TaskContext) => T | Promise<T>;

/** Why a delivery was acknowledged without running. */
export type DropReason =
  /** memlock's completed marker (`holdAfterMs`): this task already ran. */
  | 'duplicate'
  /** The entity's sequence is past the task's: it already ran (a late or repeated copy). */
  | 'stale'
  /** Another delivery took over this one's expired lease and carries the task now. */
  | 'lease-lost'
  /** The task used up its attempts (now, or earlier). */
  | 'permanently-failed'
  /** An earlier task of the entity failed permanently; this one waits for `retryFailed()`, which re-issues it. */
  | 'blocked'
  /** Not a task message. */
  | 'malformed'
  /** The entity row does not exist (deleted). */
  | 'unknown-entity';

/** Why a delivery was handed back to be tried again. */
export type DeferReason =
  /** Another delivery of the task holds the memlock lock. */
  | 'locked'
  /** Another worker holds the row lease (or the row lock) and it has not expired. */
  | 'leased'
  /** An earlier task of the entity has not run yet. */
  | 'early'
  /** The handler failed; attempts remain. */
  | 'failed'
  /** The database failed (connection, commit); no attempt was counted unless the claim committed. */
  | 'error';

/** Outcome of `handle()`. */
export interface HandleResult<T = unknown> {
  /** `applied`: the handler ran and committed. `dropped`: acknowledge, it will never run from this copy. `deferred`: hand it back. */
  readonly status: 'applied' | 'dropped' | 'deferred';
  /** Why (`'applied'` when applied). */
  readonly reason: 'applied' | DropReason | DeferReason;
  /** Acknowledge the message (`true`) or requeue it after a delay (`false`). */
  readonly ack: boolean;
  /** Which guard stopped a copy that was not applied: `memlock` (no database work), `sequence`, or neither. */
  readonly stoppedBy: 'memlock' | 'sequence' | undefined;
  /** The decoded task (`undefined` when malformed). */
  readonly task: TaskMessage | undefined;
  /** What the handler resolved with (applied only). */
  readonly value: T | undefined;
  /** The handler's or database's error (failed, error, permanently-failed). */
  readonly error: unknown;
  /** Attempt number, when a lease was taken. */
  readonly attempt: number | undefined;
  /** Database transactions this delivery used. */
  readonly dbTransactions: number;
  /** `false` when the delivery went to the database without the memlock pre-filter (memcache unavailable, or no `memlock` configured). */
  readonly filtered: boolean;
}

/** Resolved settings the handler needs. */
export interface HandleConfig {
  readonly pool: PoolLike;
  readonly t: Tables;
  readonly memlock: Memlock | undefined;
  readonly keyPrefix: string;
  readonly leaseMs: number;
  readonly maxAttempts: number;
  readonly holdAfterMs: number;
  readonly lockOptions: LockOptions;
  readonly hooks: TaskHooks;
}

const host = hostname();
/** A signal that never aborts, for runs without a memlock lock (memcache unavailable). */
const unlockedSignal = new AbortController().signal;

interface Outcome<T> {
  status: HandleResult['status'];
  reason: HandleResult['reason'];
  stoppedBy?: HandleResult['stoppedBy'];
  value?: T;
  error?: unknown;
  attempt?: number;
}

function result<T>(
  task: TaskMessage | undefined,
  o: Outcome<T>,
  dbTransactions: number,
  filtered: boolean,
): HandleResult<T> {
  return {
    status: o.status,
    reason: o.reason,
    ack: o.status !== 'deferred',
    stoppedBy: o.stoppedBy,
    task,
    value: o.value,
    error: o.error,
    attempt: o.attempt,
    dbTransactions,
    filtered,
  };
}

function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, 2000);
}

/** True for outcomes after which a copy of the task can never apply again (safe for memlock's completed marker). */
function finished(o: Outcome<unknown>): boolean {
  return o.reason === 'applied' || o.reason === 'stale';
}

/** Carries a non-finished outcome out of `tryWithLock` as a rejection, so memlock releases instead of marking done. */
class NotFinished {
  constructor(readonly outcome: Outcome<unknown>) {}
}

/**
 * Handles one delivery: see the module comment. Never rejects for a task or
 * database failure (those are outcomes); rejects only on bad arguments.
 */
export async function handleDelivery<T>(
  cfg: HandleConfig,
  message: MessageLike,
  fn: TaskHandler<T>,
): Promise<HandleResult<T>> {
  if (typeof fn !== 'function') throw new TypeError('Expected `fn` to be a function');
  if (
    typeof message !== 'object' ||
    message === null ||
    !Buffer.isBuffer(message.content) ||
    typeof message.fields?.deliveryTag !== 'number'
  ) {
    throw new TypeError('Expected `message` to be a delivered message (a Buffer `content` and `fields.deliveryTag`)');
  }
  const task = decodeTask(message.content);
  if (task === undefined) {
    publish(taskChannels.dropped, () => ({ entityId: undefined, seq: undefined, reason: 'malformed' }));
    return result(undefined, { status: 'dropped', reason: 'malformed' }, 0, true);
  }
  const owner = `${host}:${process.pid}:${message.fields.deliveryTag}:${randomBytes(6).toString('hex')}`;
  const key = `${cfg.keyPrefix}${cfg.t.schema}:${task.entityId}:${task.seq}`;
  const counter = { tx: 0 };
  if (cfg.memlock === undefined)
    return finish(task, await run(cfg, task, owner, unlockedSignal, fn, counter), counter.tx, false);
  const memlock = cfg.memlock;
  let entered = false;
  let outcome: Outcome<T> | undefined;
  const options: LockOptions =
    cfg.holdAfterMs > 0 ? ({ ...cfg.lockOptions, holdAfterMs: cfg.holdAfterMs } as LockOptions) : cfg.lockOptions;
  try {
    await memlock.tryWithLock(
      key,
      owner,
      async (signal) => {
        entered = true;
        outcome = await run(cfg, task, owner, signal, fn, counter);
        if (cfg.holdAfterMs > 0 && !finished(outcome)) throw new NotFinished(outcome);
      },
      options,
    );
  } catch (err) {
    if (!entered && err instanceof LockNotAcquiredError) {
      // `done` (memlock's completed marker) exists from the memlock release that added holdAfterMs on.
      const done = (err as { done?: unknown }).done === true;
      outcome = done
        ? { status: 'dropped', reason: 'duplicate', stoppedBy: 'memlock' }
        : { status: 'deferred', reason: 'locked', stoppedBy: 'memlock' };
    } else if (!entered && err instanceof MemcacheUnavailableError) {
      // memlock is only the pre-filter: without it the sequence check still decides.
      publish(taskChannels.memlockUnavailable, () => ({ entityId: task.entityId, seq: task.seq, error: err }));
      const o = await run(cfg, task, owner, unlockedSignal, fn, counter);
      return finish(task, o, counter.tx, false);
    } else if (outcome === undefined) {
      // Not a refusal and the run never produced an outcome: memlock itself failed.
      outcome = { status: 'deferred', reason: 'error', error: err };
    }
    // Otherwise the run finished (a NotFinished rejection, possibly wrapped in LockLostError): keep its outcome.
  }
  return finish(task, outcome!, counter.tx, true);
}

function finish<T>(task: TaskMessage, o: Outcome<T>, tx: number, filtered: boolean): HandleResult<T> {
  if (o.status === 'dropped')
    publish(taskChannels.dropped, () => ({ entityId: task.entityId, seq: task.seq, reason: o.reason }));
  else if (o.status === 'deferred')
    publish(taskChannels.deferred, () => ({ entityId: task.entityId, seq: task.seq, reason: o.reason }));
  return result(task, o, tx, filtered);
}

interface EntityRow {
  seq: string;
  lease_owner: string | null;
  lease_until: Date | null;
  expired: boolean | null;
  attempts: number;
  failed: boolean;
}

/** The database part: claim (sequence check + lease), then the effect transaction. */
async function run<T>(
  cfg: HandleConfig,
  task: TaskMessage,
  owner: string,
  signal: AbortSignal,
  fn: TaskHandler<T>,
  counter: { tx: number },
): Promise<Outcome<T>> {
  let client: PoolClientLike;
  try {
    client = await cfg.pool.connect();
  } catch (error) {
    return { status: 'deferred', reason: 'error', error };
  }
  let discard: Error | undefined;
  const rollback = async (): Promise<void> => {
    await client.query('ROLLBACK').catch((e: unknown) => {
      discard = e instanceof Error ? e : new Error(String(e));
    });
  };
  try {
    const claimed = await claim(cfg, client, task, owner, counter, rollback);
    if ('status' in claimed) return claimed;
    return await apply(cfg, client, task, owner, claimed.attempt, signal, fn, counter, rollback);
  } catch (error) {
    await rollback();
    // Best effort: hand the lease back so the next delivery need not wait for it to expire (and raise a false overwrite alert).
    if (discard === undefined) {
      await client
        .query(
          `UPDATE ${cfg.t.entities} SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2`,
          [task.entityId, owner],
        )
        .catch(() => undefined);
    }
    return { status: 'deferred', reason: 'error', error };
  } finally {
    client.release(discard);
  }
}

/** Transaction 1: check the sequence and take the row lease (committed, so a crash leaves it behind). */
async function claim(
  cfg: HandleConfig,
  client: PoolClientLike,
  task: TaskMessage,
  owner: string,
  counter: { tx: number },
  rollback: () => Promise<void>,
): Promise<Outcome<never> | { attempt: number }> {
  const t = cfg.t;
  counter.tx++;
  await client.query('BEGIN');
  let row: EntityRow | undefined;
  try {
    // NOWAIT: a row locked by a running effect transaction means "busy", not "queue up behind it".
    const res = await client.query<EntityRow>(
      `SELECT seq, lease_owner, lease_until, lease_until <= clock_timestamp() AS expired, attempts, failed_at IS NOT NULL AS failed
       FROM ${t.entities} WHERE id = $1 FOR UPDATE NOWAIT`,
      [task.entityId],
    );
    row = res.rows[0];
  } catch (error) {
    await rollback();
    if ((error as { code?: unknown }).code === '55P03') return { status: 'deferred', reason: 'leased' };
    throw error;
  }
  if (row === undefined) {
    await rollback();
    return { status: 'dropped', reason: 'unknown-entity' };
  }
  const seq = Number(row.seq);
  let verdict: Outcome<never> | undefined;
  if (seq > task.seq) verdict = { status: 'dropped', reason: 'stale', stoppedBy: 'sequence' };
  else if (row.failed) verdict = { status: 'dropped', reason: seq === task.seq ? 'permanently-failed' : 'blocked' };
  else if (seq < task.seq) verdict = { status: 'deferred', reason: 'early' };
  else if (row.lease_owner !== null && row.expired !== true) verdict = { status: 'deferred', reason: 'leased' };
  if (verdict !== undefined) {
    await rollback();
    return verdict;
  }
  if (row.attempts >= cfg.maxAttempts) {
    // The attempts were used up by workers that died holding the lease.
    await client.query(
      `UPDATE ${t.entities} SET failed_at = now(), lease_owner = NULL, lease_until = NULL, updated_at = now() WHERE id = $1`,
      [task.entityId],
    );
    await client.query('COMMIT');
    const event = { entityId: task.entityId, seq, name: task.name, attempts: row.attempts, error: undefined };
    publish(taskChannels.permanentlyFailed, () => event);
    callHook('onPermanentlyFailed', cfg.hooks.onPermanentlyFailed, event);
    return { status: 'dropped', reason: 'permanently-failed' };
  }
  const attempt = row.attempts + 1;
  await client.query(
    `UPDATE ${t.entities} SET lease_owner = $2, lease_until = clock_timestamp() + $3 * interval '1 millisecond',
       attempts = $4, updated_at = now() WHERE id = $1`,
    [task.entityId, owner, cfg.leaseMs, attempt],
  );
  await client.query('COMMIT');
  if (row.lease_owner !== null) {
    const event = {
      entityId: task.entityId,
      seq,
      name: task.name,
      previousOwner: row.lease_owner,
      expiredAt: row.lease_until ?? new Date(0),
      owner,
      attempt,
    };
    publish(taskChannels.leaseOverwritten, () => event);
    callHook('onLeaseOverwritten', cfg.hooks.onLeaseOverwritten, event);
  }
  return { attempt };
}

/** Transaction 2: re-check sequence and lease under the row lock, run the handler, advance the sequence. */
async function apply<T>(
  cfg: HandleConfig,
  client: PoolClientLike,
  task: TaskMessage,
  owner: string,
  attempt: number,
  signal: AbortSignal,
  fn: TaskHandler<T>,
  counter: { tx: number },
  rollback: () => Promise<void>,
): Promise<Outcome<T>> {
  const t = cfg.t;
  const started = performance.now();
  counter.tx++;
  await client.query('BEGIN');
  const { rows } = await client.query<{ seq: string; lease_owner: string | null; state: Json }>(
    `SELECT seq, lease_owner, state FROM ${t.entities} WHERE id = $1 FOR UPDATE`,
    [task.entityId],
  );
  const row = rows[0];
  if (row === undefined) {
    await rollback();
    return { status: 'dropped', reason: 'unknown-entity', attempt };
  }
  if (Number(row.seq) !== task.seq) {
    // Our lease expired and another delivery applied the task meanwhile.
    await rollback();
    return { status: 'dropped', reason: 'stale', stoppedBy: 'sequence', attempt };
  }
  if (row.lease_owner !== owner) {
    await rollback();
    return { status: 'dropped', reason: 'lease-lost', attempt };
  }
  let newState: { value: Json } | undefined;
  const ctx: TaskContext = {
    tx: client,
    task,
    attempt,
    state: row.state,
    signal,
    setState(state) {
      newState = { value: state };
    },
    schedule: (entity, next) => scheduleTask(t, client, entity, next),
  };
  let value: T;
  try {
    value = await fn(ctx);
  } catch (error) {
    await rollback();
    return failed(cfg, client, task, owner, attempt, error, counter);
  }
  await client.query(
    `UPDATE ${t.entities} SET seq = seq + 1, lease_owner = NULL, lease_until = NULL, attempts = 0, last_error = NULL,
       state = CASE WHEN $2::boolean THEN $3::jsonb ELSE state END, updated_at = now() WHERE id = $1`,
    [task.entityId, newState !== undefined, newState === undefined ? null : JSON.stringify(newState.value)],
  );
  await client.query('COMMIT');
  const durationMs = performance.now() - started;
  publish(taskChannels.applied, () => ({
    entityId: task.entityId,
    seq: task.seq,
    name: task.name,
    attempt,
    durationMs,
  }));
  return { status: 'applied', reason: 'applied', value, attempt };
}

/** Records a failed attempt (its own transaction) and decides between retry and permanent failure. */
async function failed(
  cfg: HandleConfig,
  client: PoolClientLike,
  task: TaskMessage,
  owner: string,
  attempt: number,
  error: unknown,
  counter: { tx: number },
): Promise<Outcome<never>> {
  counter.tx++;
  const { rows } = await client.query<{ attempts: number; failed: boolean }>(
    `UPDATE ${cfg.t.entities} SET lease_owner = NULL, lease_until = NULL, last_error = $4, updated_at = now(),
       failed_at = CASE WHEN attempts >= $5 THEN now() ELSE NULL END
     WHERE id = $1 AND seq = $2 AND lease_owner = $3 RETURNING attempts, failed_at IS NOT NULL AS failed`,
    [task.entityId, task.seq, owner, errorText(error), cfg.maxAttempts],
  );
  const row = rows[0];
  if (row?.failed === true) {
    const event = { entityId: task.entityId, seq: task.seq, name: task.name, attempts: row.attempts, error };
    publish(taskChannels.permanentlyFailed, () => event);
    callHook('onPermanentlyFailed', cfg.hooks.onPermanentlyFailed, event);
    return { status: 'dropped', reason: 'permanently-failed', error, attempt };
  }
  // No row: our lease was taken over meanwhile; handing the copy back is always safe.
  return { status: 'deferred', reason: 'failed', error, attempt };
}
