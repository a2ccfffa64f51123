/**
 * The chained example end to end, without faults: three chains of four
 * steps go through the outbox relay, RabbitMQ and one consumer.
 */
import amqp from 'amqplib';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock } from '../../src/index.js';
import { Tasks } from '../../src/tasks/index.js';
import { startMemcached } from '../../test/helpers/memcached.js';
import { chainStep, createEffectsTable, startChains } from './chain.js';
import { amqpUrl, examplePool } from './env.js';

/** Runs the demo and prints each chain's effects. */
export async function runDemo(log: (line: string) => void): Promise<void> {
  const id = randomBytes(4).toString('hex');
  const schema = `memlock_tasks_${id}`;
  const queue = `memlock-tasks-${id}`;
  const steps = 4;
  const mc = await startMemcached();
  const pool = examplePool();
  const memlock = new Memlock({ servers: mc.address });
  const tasks = new Tasks({ pool, memlock, schema });
  const conn = await amqp.connect(amqpUrl);
  try {
    await tasks.migrate();
    await createEffectsTable(pool, schema);
    const channel = await conn.createChannel();
    await channel.assertQueue(queue);
    const relay = tasks.relay(await conn.createConfirmChannel(), { routingKey: queue });
    relay.start();
    const consumer = await tasks.consume(channel, queue, chainStep({ schema, steps }), {
      onResult: (r) => log(`${r.task?.entityId} seq ${r.task?.seq}: ${r.reason}`),
    });
    await startChains(tasks, pool, ['order-a', 'order-b', 'order-c']);
    for (;;) {
      const { rows } = await pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM "${schema}".entities WHERE seq < $1`,
        [steps],
      );
      if (Number(rows[0]!.n) === 0) break;
      await sleep(100);
    }
    await consumer.stop();
    await relay.stop();
    const { rows } = await pool.query<{ entity_id: string; steps: number[] }>(
      `SELECT entity_id, array_agg(step ORDER BY step) AS steps FROM "${schema}".effects GROUP BY entity_id ORDER BY entity_id`,
    );
    for (const r of rows) log(`${r.entity_id}: steps ${r.steps.join(', ')} applied`);
    await channel.deleteQueue(queue);
  } finally {
    await conn.close();
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await pool.end();
    await memlock.close();
    await mc.stop();
  }
}
