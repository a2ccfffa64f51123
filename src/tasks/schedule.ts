/**
 * Issuing tasks: `schedule()` writes the entity and an outbox row in the
 * caller's transaction, so the task exists exactly when the transaction
 * commits (never before, never without it). The relay publishes it later.
 * Also the wire format of task messages, shared by the relay and `handle`.
 */
import type { Queryable } from './ports.js';
import type { Tables } from './schema.js';

/** JSON-serialisable value (what a `jsonb` column stores). */
export type Json = null | boolean | number | string | readonly Json[] | { readonly [key: string]: Json | undefined };

/** The entity a task works on. */
export interface EntityInput {
  /** Entity id (non-empty string). Tasks of one entity run one at a time, in the order issued. */
  readonly id: string;
  /** New state to store with the entity; omitted: an existing entity keeps its state (a new one gets `null`). */
  readonly state?: Json | undefined;
}

/** A task to issue. */
export interface TaskInput {
  /** Task name (what the handler dispatches on). */
  readonly name: string;
  /** Task arguments. @default null */
  readonly payload?: Json | undefined;
}

/** What `schedule()` issued. */
export interface ScheduledTask {
  readonly entityId: string;
  /** The task's sequence number: it runs when the entity's `seq` reaches it. */
  readonly seq: number;
  /** The outbox row carrying it. */
  readonly outboxId: string;
}

/** A task as carried by a message. */
export interface TaskMessage {
  readonly entityId: string;
  readonly seq: number;
  readonly name: string;
  readonly payload: Json;
}

/** Checks the arguments of `schedule()` before touching the database. */
function checkInput(entity: EntityInput, task: TaskInput): void {
  if (typeof entity !== 'object' || entity === null) throw new TypeError('Expected `entity` to be an object');
  if (typeof entity.id !== 'string' || entity.id === '')
    throw new TypeError('Expected `entity.id` to be a non-empty string');
  if (typeof task !== 'object' || task === null) throw new TypeError('Expected `task` to be an object');
  if (typeof task.name !== 'string' || task.name === '')
    throw new TypeError('Expected `task.name` to be a non-empty string');
}

/**
 * Writes `entity` and an outbox row for `task` with `tx`, which must be a
 * connection inside the caller's open transaction (BEGIN ... COMMIT): the
 * task is published only after that transaction commits, and not at all if
 * it rolls back. Bumps the entity's `scheduled` counter under its row lock,
 * so concurrent `schedule()` calls on one entity get consecutive numbers.
 */
export async function scheduleTask(
  t: Tables,
  tx: Queryable,
  entity: EntityInput,
  task: TaskInput,
): Promise<ScheduledTask> {
  checkInput(entity, task);
  const hasState = entity.state !== undefined;
  // One statement, so that even outside a transaction the counter never advances without its outbox row
  // (a number issued without a task would leave the entity's later tasks waiting forever).
  const { rows } = await tx.query<{ id: string; seq: string }>(
    `WITH e AS (
       INSERT INTO ${t.entities} AS e (id, state, scheduled) VALUES ($1, $2::jsonb, 1)
       ON CONFLICT (id) DO UPDATE SET scheduled = e.scheduled + 1, updated_at = now(),
         state = CASE WHEN $3::boolean THEN EXCLUDED.state ELSE e.state END
       RETURNING e.scheduled - 1 AS seq
     )
     INSERT INTO ${t.outbox} (entity_id, seq, name, payload) SELECT $1, e.seq, $4, $5::jsonb FROM e RETURNING id, seq`,
    [
      entity.id,
      hasState ? JSON.stringify(entity.state) : null,
      hasState,
      task.name,
      JSON.stringify(task.payload ?? null),
    ],
  );
  const row = rows[0]!;
  return { entityId: entity.id, seq: Number(row.seq), outboxId: row.id };
}

/** Message body of a task (JSON). */
export function encodeTask(task: TaskMessage): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, e: task.entityId, s: task.seq, n: task.name, p: task.payload }));
}

/** Parses a message body; `undefined` when it is not a task message. */
export function decodeTask(content: Buffer): TaskMessage | undefined {
  let body: unknown;
  try {
    body = JSON.parse(content.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  const b = body as Record<string, unknown>;
  if (
    b['v'] !== 1 ||
    typeof b['e'] !== 'string' ||
    b['e'] === '' ||
    !Number.isSafeInteger(b['s']) ||
    (b['s'] as number) < 0 ||
    typeof b['n'] !== 'string'
  ) {
    return undefined;
  }
  return { entityId: b['e'], seq: b['s'] as number, name: b['n'], payload: (b['p'] ?? null) as Json };
}

/**
 * Re-issues a permanently failed entity's pending tasks: clears the failure
 * and its attempt count, and marks the outbox rows of the failed task and its
 * successors unsent so the relay publishes them again. Resolves with how many
 * tasks were re-issued (0 when the entity had not failed).
 */
export async function retryFailedTasks(t: Tables, tx: Queryable, entityId: string): Promise<number> {
  // One statement: clearing the failure and re-issuing its tasks happen together even outside a transaction.
  const out = await tx.query(
    `WITH f AS (
       UPDATE ${t.entities} SET failed_at = NULL, attempts = 0, lease_owner = NULL, lease_until = NULL, updated_at = now()
       WHERE id = $1 AND failed_at IS NOT NULL RETURNING seq
     )
     UPDATE ${t.outbox} o SET sent_at = NULL FROM f
     WHERE o.entity_id = $1 AND o.seq >= f.seq
       AND o.id IN (SELECT max(id) FROM ${t.outbox} WHERE entity_id = $1 GROUP BY seq)
     RETURNING o.id`,
    [entityId],
  );
  return out.rowCount ?? 0;
}
