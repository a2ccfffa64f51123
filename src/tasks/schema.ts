/**
 * Tables of the task module and their migrations. Everything lives in one
 * PostgreSQL schema the caller names, so several independent installations
 * (or test runs) can share a database without colliding.
 *
 * - `entities`: the rows tasks work on. `seq` counts the tasks applied to the
 *   entity, `scheduled` the tasks issued for it; a task carries the value of
 *   `scheduled` at the time it was issued and runs only when `seq` equals it.
 *   `lease_owner`/`lease_until` is the row lease a worker takes (and commits)
 *   before running a task; `attempts` counts tries of the task at `seq`;
 *   `failed_at` marks that task as permanently failed.
 * - `outbox`: one row per issued task, written in the scheduling
 *   transaction, published by the relay after commit, then marked `sent_at`.
 */
import type { PoolLike } from './ports.js';

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/** Validates a PostgreSQL schema name (lower case, unquoted identifier rules). */
export function checkSchemaName(schema: unknown): string {
  if (typeof schema !== 'string') throw new TypeError(`Expected \`schema\` to be a string, got ${typeof schema}`);
  if (!IDENTIFIER.test(schema)) {
    throw new RangeError(
      `Expected \`schema\` to be a lower-case SQL identifier (a-z, 0-9, _; at most 63 characters), got ${JSON.stringify(schema)}`,
    );
  }
  return schema;
}

/** Fully qualified table names of one installation. */
export interface Tables {
  readonly schema: string;
  readonly entities: string;
  readonly outbox: string;
  readonly migrations: string;
}

/** Table names for a (validated) schema. */
export function tables(schema: string): Tables {
  const s = `"${checkSchemaName(schema)}"`;
  return { schema, entities: `${s}.entities`, outbox: `${s}.outbox`, migrations: `${s}.migrations` };
}

/**
 * Ordered migrations. Append only: a released migration is never edited,
 * because installations record the ones they ran by index.
 */
const migrations: ReadonlyArray<(t: Tables) => string> = [
  (t) => `
    CREATE TABLE ${t.entities} (
      id          text PRIMARY KEY,
      seq         bigint NOT NULL DEFAULT 0,
      scheduled   bigint NOT NULL DEFAULT 0,
      state       jsonb,
      lease_owner text,
      lease_until timestamptz,
      attempts    integer NOT NULL DEFAULT 0,
      last_error  text,
      failed_at   timestamptz,
      updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE ${t.outbox} (
      id         bigserial PRIMARY KEY,
      entity_id  text NOT NULL,
      seq        bigint NOT NULL,
      name       text NOT NULL,
      payload    jsonb,
      created_at timestamptz NOT NULL DEFAULT now(),
      sent_at    timestamptz
    );
    -- The relay scans unsent rows in id order; keep that scan off sent history.
    CREATE INDEX ON ${t.outbox} (id) WHERE sent_at IS NULL;
    CREATE INDEX ON ${t.outbox} (entity_id, seq);
  `,
];

/**
 * Creates the schema and runs the migrations it has not run yet. Safe to
 * call from several processes at once: a transaction-scoped advisory lock
 * on the schema name serialises them.
 */
export async function migrate(pool: PoolLike, schema: string): Promise<void> {
  const t = tables(schema);
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`memlock_tasks:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${t.migrations} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${t.migrations}`);
    const done = rows[0]?.v ?? 0;
    for (let i = done; i < migrations.length; i++) {
      await client.query(migrations[i]!(t));
      await client.query(`INSERT INTO ${t.migrations} (version) VALUES ($1)`, [i + 1]);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Drops the whole schema (tests, throw-away runs). */
export async function dropSchema(pool: PoolLike, schema: string): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS "${checkSchemaName(schema)}" CASCADE`);
}
