/**
 * The README's "Exactly-once tasks" code block, type-checked by `npm run
 * typecheck` (test/tasks/readme.test.ts checks the README still matches
 * this file, with `memlock` / `memlock/tasks` for the source paths). Not run.
 */
// README-BEGIN
import pg from 'pg';
import amqp from 'amqplib';
import { Memlock } from '../../src/index.js';
import { Tasks } from '../../src/tasks/index.js';

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
const memlock = new Memlock({ servers: process.env.MEMCACHE_SERVERS ?? 'localhost:11211' });
const tasks = new Tasks({
  pool,
  memlock,
  schema: 'memlock_tasks',
  leaseMs: 60_000,
  maxAttempts: 5,
  hooks: {
    onLeaseOverwritten: (e) =>
      console.warn(`${e.entityId}#${e.seq}: took over the expired lease of ${e.previousOwner}`),
    onPermanentlyFailed: (e) => console.error(`${e.entityId}#${e.seq} failed ${e.attempts} times`, e.error),
  },
});
await tasks.migrate();

// Producer: the order and its first task commit together, or neither does.
const client = await pool.connect();
try {
  await client.query('BEGIN');
  await tasks.schedule(client, { id: 'order-42', state: { status: 'paid' } }, { name: 'ship', payload: { step: 0 } });
  await client.query('COMMIT');
} catch (error) {
  await client.query('ROLLBACK');
  throw error;
} finally {
  client.release();
}

// Relay: publishes committed outbox rows with publisher confirms, then marks them sent.
const conn = await amqp.connect('amqp://localhost');
const channel = await conn.createChannel();
await channel.assertQueue('tasks');
const relay = tasks.relay(await conn.createConfirmChannel(), { routingKey: 'tasks' });
relay.start();

// Worker: a step writes its effect with ctx.tx and schedules the next step in the same transaction.
const consumer = await tasks.consume(channel, 'tasks', async ({ tx, task, schedule, setState }) => {
  const { step } = task.payload as { step: number };
  await tx.query('INSERT INTO shipments (order_id, step) VALUES ($1, $2)', [task.entityId, step]);
  if (step < 2) await schedule({ id: task.entityId }, { name: 'ship', payload: { step: step + 1 } });
  setState({ status: step < 2 ? 'shipping' : 'shipped' });
});

// Shutdown: stop taking deliveries, stop the relay, then close the connections.
await consumer.stop();
await relay.stop();
await conn.close();
await memlock.close();
await pool.end();
// README-END
