/**
 * The chained example: a chain of `steps` tasks on one entity, where step n
 * writes its effect and schedules step n + 1 in the same transaction (so the
 * next step exists exactly when this one committed). Used by the demo, the
 * verifier and the tests.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Queryable, TaskHandler, Tasks } from '../../src/tasks/index.js';

/** Creates `<schema>.effects`: one row per applied step, deliberately without a unique constraint, so a double apply would show. */
export async function createEffectsTable(db: Queryable, schema: string): Promise<void> {
  await db.query(
    `CREATE TABLE IF NOT EXISTS "${schema}".effects (entity_id text NOT NULL, step integer NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())`,
  );
}

/** Options of {@link chainStep}. */
export interface ChainOptions {
  /** Schema holding the effects table. */
  readonly schema: string;
  /** Steps per chain. */
  readonly steps: number;
  /** Upper bound of a random pause inside each step (ms), to widen the windows faults land in. @default 0 */
  readonly workMs?: number;
  /** Called inside each step after its effect was written and before it commits (fault injection). */
  readonly inside?: (() => void | Promise<void>) | undefined;
}

/** The step handler: effect row, then the next step, in the handler's transaction. */
export function chainStep(options: ChainOptions): TaskHandler<number> {
  const { schema, steps, workMs = 0 } = options;
  return async ({ tx, task, signal, schedule, setState }) => {
    const step = (task.payload as { step: number }).step;
    await tx.query(`INSERT INTO "${schema}".effects (entity_id, step, seq) VALUES ($1, $2, $3)`, [
      task.entityId,
      step,
      task.seq,
    ]);
    // Work that honours the lock's signal: if memlock loses the lock, stop early (the commit is guarded anyway).
    if (workMs > 0) await sleep(Math.random() * workMs, undefined, { signal });
    await options.inside?.();
    if (step + 1 < steps) await schedule({ id: task.entityId }, { name: 'chain-step', payload: { step: step + 1 } });
    setState({ step, done: step + 1 === steps });
    return step;
  };
}

/** Starts `chains` chains (step 0 of each), `perTransaction` chains per committed transaction. */
export async function startChains(
  tasks: Tasks,
  pool: { connect(): Promise<Queryable & { release(): void }> },
  ids: readonly string[],
  perTransaction = 50,
): Promise<void> {
  for (let i = 0; i < ids.length; i += perTransaction) {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      for (const id of ids.slice(i, i + perTransaction)) {
        await tasks.schedule(
          client,
          { id, state: { step: -1, done: false } },
          { name: 'chain-step', payload: { step: 0 } },
        );
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }
}
