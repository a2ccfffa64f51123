/**
 * Shared set-up of the task tests: a pg pool on the machine's PostgreSQL
 * (PG* variables honoured, default 127.0.0.1:5432 db `test`), a schema and a
 * RabbitMQ queue unique to the run, and an effects table the handlers write.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { MessageLike, Queryable } from '../../src/tasks/index.js';

/** A pool on the test database. */
export function testPool(max = 10): pg.Pool {
  return new pg.Pool({
    host: process.env['PGHOST'] ?? '127.0.0.1',
    port: Number(process.env['PGPORT'] ?? 5432),
    database: process.env['PGDATABASE'] ?? 'test',
    user: process.env['PGUSER'] ?? 'postgres',
    password: process.env['PGPASSWORD'],
    max,
  });
}

/** AMQP URL of the test broker. */
export const amqpUrl = process.env['AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';

/** A name unique to this run, e.g. `memlock_tasks_3f9a1c2b`. */
export function uniqueName(base = 'memlock_tasks'): string {
  return `${base}_${randomBytes(4).toString('hex')}`;
}

/** Creates `<schema>.effects`: one row per applied effect, no unique constraint (so a double apply shows). */
export async function createEffects(db: Queryable, schema: string): Promise<void> {
  await db.query(
    `CREATE TABLE "${schema}".effects (entity_id text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())`,
  );
}

/** Writes one effect row in the handler's transaction. */
export async function recordEffect(tx: Queryable, schema: string, entityId: string, seq: number): Promise<void> {
  await tx.query(`INSERT INTO "${schema}".effects (entity_id, seq) VALUES ($1, $2)`, [entityId, seq]);
}

let tag = 0;
/** A delivery as amqplib hands it over (for tests that call handle() directly). */
export function delivery(content: Buffer): MessageLike {
  return { content, fields: { deliveryTag: ++tag, redelivered: false } };
}
