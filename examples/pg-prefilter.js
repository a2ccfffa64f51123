// node-postgres pre-filter: many workers get the same "pay invoice" job. The
// memcache lock makes overlapping attempts rare and cheap; the transaction
// (row lock + `paid` check) stays the real guard. node-postgres has no
// `{ signal }` option for transactions, so the lock's signal is checked
// before COMMIT: a lost lock rolls the work back instead of racing a new holder.
//
//   MEMCACHE_SERVERS=localhost:11211 PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=test node examples/pg-prefilter.js
import os from 'node:os';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { Memlock, LockNotAcquiredError } from 'memlock';

export const table = process.env.EXAMPLE_TABLE ?? 'memlock_example_invoices';

/** Pays invoice `id` once. Resolves 'paid', 'already-paid' or 'busy' (another worker has it). */
export async function payInvoice(memlock, pool, id, { workMs = 20 } = {}) {
  const clientId = `${os.hostname()}:${process.pid}:${randomUUID()}`;
  try {
    return await memlock.tryWithLock(`invoice:${id}`, clientId, async (signal) => {
      const db = await pool.connect();
      try {
        await db.query('BEGIN');
        const { rows } = await db.query(`SELECT paid FROM ${table} WHERE id = $1 FOR UPDATE`, [id]);
        if (rows[0]?.paid) {
          await db.query('ROLLBACK');
          return 'already-paid';
        }
        await new Promise((resolve) => setTimeout(resolve, workMs)); // call the payment provider...
        await db.query(`UPDATE ${table} SET paid = true, payments = payments + 1 WHERE id = $1`, [id]);
        signal.throwIfAborted(); // lock lost meanwhile: do not COMMIT
        await db.query('COMMIT');
        return 'paid';
      } catch (error) {
        await db.query('ROLLBACK');
        throw error;
      } finally {
        db.release();
      }
    });
  } catch (error) {
    if (error instanceof LockNotAcquiredError) return 'busy';
    throw error;
  }
}

export async function setUp(pool, invoices) {
  await pool.query(
    `CREATE TABLE IF NOT EXISTS ${table} (id int PRIMARY KEY, paid boolean NOT NULL DEFAULT false, payments int NOT NULL DEFAULT 0)`,
  );
  await pool.query(`TRUNCATE ${table}`);
  await pool.query(`INSERT INTO ${table} (id) SELECT generate_series(1, $1::int)`, [invoices]);
}

async function main() {
  const memlock = new Memlock({ servers: process.env.MEMCACHE_SERVERS });
  const pool = new pg.Pool({ database: process.env.PGDATABASE ?? 'test', max: 8 });
  await setUp(pool, 10);
  // 8 workers, each job delivered 4 times, in overlapping bursts.
  const jobs = Array.from({ length: 40 }, (_, i) => (i % 10) + 1);
  const outcomes = await Promise.all(jobs.map((id) => payInvoice(memlock, pool, id)));
  const counts = {};
  for (const outcome of outcomes) counts[outcome] = (counts[outcome] ?? 0) + 1;
  const { rows } = await pool.query(`SELECT count(*)::int AS paid, sum(payments)::int AS payments FROM ${table}`);
  console.log(JSON.stringify({ outcomes: counts, ...rows[0] }));
  await Promise.all([memlock.close(), pool.end()]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
