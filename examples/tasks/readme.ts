/**
 * The code block of docs/tasks.md, type-checked by `npm run typecheck` and
 * run against PostgreSQL, RabbitMQ and memcached by test/tasks/readme.test.ts
 * (which also checks that docs/tasks.md still shows this code, with `memlock`
 * / `memlock/tasks` for the source paths). It prints the shipped order and
 * exits 0, or fails loudly (exit 1) when a step fails or nothing happens.
 */
// README-BEGIN
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import amqp from 'amqplib';
import { Memlock } from '../../src/index.js';
import { Tasks, type HandleResult } from '../../src/tasks/index.js';

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL }); // unset: the PG* variables
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
// The application's own table, which the task writes its effect to.
await pool.query('CREATE TABLE IF NOT EXISTS shipments (order_id text NOT NULL, step int NOT NULL)');

// Producer: the order and its first task commit together, or neither does.
const orderId = `order-${randomUUID()}`;
const client = await pool.connect();
try {
  await client.query('BEGIN');
  await tasks.schedule(client, { id: orderId, state: { status: 'paid' } }, { name: 'ship', payload: { step: 0 } });
  await client.query('COMMIT');
} catch (error) {
  await client.query('ROLLBACK');
  throw error;
} finally {
  client.release();
}

// Relay: publishes committed outbox rows with publisher confirms, then marks them sent.
const conn = await amqp.connect(process.env.AMQP_URL ?? 'amqp://localhost');
const channel = await conn.createChannel();
await channel.assertQueue('tasks');
const relay = tasks.relay(await conn.createConfirmChannel(), { routingKey: 'tasks' });
relay.start();

// This demo waits for the last step, and fails loudly when a step fails or nothing happens in 30 s.
let finish: (error?: unknown) => void = () => undefined;
const shipped = new Promise<void>((resolve, reject) => {
  finish = (error) => (error === undefined ? resolve() : reject(error));
});
const timer = setTimeout(() => finish(new Error(`${orderId} not shipped within 30 s`)), 30_000);
const onResult = ({ status, reason, task, error }: HandleResult): void => {
  if (task?.entityId !== orderId) return;
  if (reason === 'failed' || reason === 'error' || reason === 'permanently-failed') finish(error ?? new Error(reason));
  else if (status === 'applied' && (task.payload as { step: number }).step === 2) finish();
};

// Worker: a step writes its effect with ctx.tx and schedules the next step in the same transaction.
const consumer = await tasks.consume(
  channel,
  'tasks',
  async ({ tx, task, schedule, setState }) => {
    const { step } = task.payload as { step: number };
    await tx.query('INSERT INTO shipments (order_id, step) VALUES ($1, $2)', [task.entityId, step]);
    if (step < 2) await schedule({ id: task.entityId }, { name: 'ship', payload: { step: step + 1 } });
    setState({ status: step < 2 ? 'shipping' : 'shipped' });
  },
  { onResult },
);

try {
  await shipped;
  const { rowCount } = await pool.query('SELECT 1 FROM shipments WHERE order_id = $1', [orderId]);
  console.log(`${orderId} shipped: ${rowCount} steps applied`);
} finally {
  // Shutdown: stop taking deliveries, stop the relay, then close the connections.
  clearTimeout(timer);
  await consumer.stop();
  await relay.stop();
  await conn.close();
  await memlock.close();
  await pool.end();
}
// README-END
