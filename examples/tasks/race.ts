/**
 * The enqueue-before-commit race, measured. The same consumer reads the
 * entity a task names and works only if the entity is ready, else it
 * acknowledges with "nothing to do" (the silent exit of the App Engine
 * story). Producers make the entity ready and issue the task in one
 * transaction, with a pause before COMMIT standing in for the rest of the
 * transaction's work:
 *
 * - naive: publish to RabbitMQ inside the transaction, before COMMIT. The
 *   consumer can read the entity before the commit: the work is lost.
 * - outbox: `tasks.schedule()` in the transaction; the relay publishes after
 *   COMMIT, so the consumer always sees the committed entity.
 */
import amqp from 'amqplib';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Tasks, decodeTask } from '../../src/tasks/index.js';
import { amqpUrl, examplePool } from './env.js';

/** Options of {@link runRace}. */
export interface RaceOptions {
  /** Tasks per variant. @default 200 */
  readonly tasks?: number;
  /** The pause before COMMIT is random in [0, pauseMs]. @default 40 */
  readonly pauseMs?: number;
  /** Producers running at once. @default 8 */
  readonly concurrency?: number;
  readonly log?: ((line: string) => void) | undefined;
}

/** Result of one variant. */
export interface RaceVariant {
  tasks: number;
  /** Tasks whose consumer found the entity not ready (work silently skipped). */
  lost: number;
  lost_fraction: number;
}

/** Result of {@link runRace}. */
export interface RaceReport {
  naive: RaceVariant;
  outbox: RaceVariant;
}

/** Runs both variants against real PostgreSQL and RabbitMQ. */
export async function runRace(options: RaceOptions = {}): Promise<RaceReport> {
  const n = options.tasks ?? 200;
  const pauseMs = options.pauseMs ?? 40;
  const concurrency = options.concurrency ?? 8;
  const id = randomBytes(4).toString('hex');
  const schema = `memlock_tasks_${id}`;
  const queue = `memlock-tasks-race-${id}`;
  const pool = examplePool(concurrency + 4);
  // Only schedule() and the relay are used here: no memlock needed.
  const tasks = new Tasks({ pool, schema });
  const conn = await amqp.connect(amqpUrl);
  try {
    await tasks.migrate();
    await pool.query(`CREATE TABLE "${schema}".work (entity_id text NOT NULL, outcome text NOT NULL)`);
    const consumeChannel = await conn.createChannel();
    await consumeChannel.assertQueue(queue, { durable: false });
    await consumeChannel.prefetch(16);
    // The consumer: reads the entity's committed state and works only if it is ready.
    await consumeChannel.consume(queue, (msg) => {
      if (msg === null) return;
      const entityId =
        decodeTask(msg.content)?.entityId ?? (JSON.parse(msg.content.toString()) as { entityId: string }).entityId;
      void (async () => {
        const { rows } = await pool.query<{ state: { ready?: boolean } | null }>(
          `SELECT state FROM "${schema}".entities WHERE id = $1`,
          [entityId],
        );
        const ready = rows[0]?.state?.ready === true;
        await pool.query(`INSERT INTO "${schema}".work (entity_id, outcome) VALUES ($1, $2)`, [
          entityId,
          ready ? 'done' : 'nothing-to-do',
        ]);
        consumeChannel.ack(msg);
      })().catch(() => consumeChannel.nack(msg));
    });
    const publishChannel = await conn.createConfirmChannel();

    const runVariant = async (variant: 'naive' | 'outbox'): Promise<RaceVariant> => {
      const ids = Array.from({ length: n }, (_, i) => `${variant}-${i}`);
      const produce = async (entityId: string): Promise<void> => {
        const client = await pool.connect();
        try {
          await client.query('BEGIN');
          if (variant === 'naive') {
            await client.query(`INSERT INTO "${schema}".entities (id, state) VALUES ($1, '{"ready": true}')`, [
              entityId,
            ]);
            publishChannel.publish('', queue, Buffer.from(JSON.stringify({ entityId })));
            await publishChannel.waitForConfirms();
          } else {
            await tasks.schedule(client, { id: entityId, state: { ready: true } }, { name: 'race' });
          }
          await sleep(Math.random() * pauseMs); // the rest of the transaction
          await client.query('COMMIT');
        } finally {
          client.release();
        }
      };
      // The relay runs while the producers do: it publishes each task as soon as its transaction committed.
      const relay = variant === 'outbox' ? tasks.relay(publishChannel, { routingKey: queue, pollMs: 10 }) : undefined;
      relay?.start();
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < ids.length) await produce(ids[next++]!);
        }),
      );
      for (;;) {
        const { rows } = await pool.query<{ handled: string; lost: string }>(
          `SELECT count(*) AS handled, count(*) FILTER (WHERE outcome = 'nothing-to-do') AS lost FROM "${schema}".work WHERE entity_id LIKE $1`,
          [`${variant}-%`],
        );
        if (Number(rows[0]!.handled) >= n) {
          await relay?.stop();
          const lost = Number(rows[0]!.lost);
          options.log?.(`${variant}: ${lost} of ${n} tasks found their entity not ready`);
          return { tasks: n, lost, lost_fraction: Math.round((lost / n) * 1000) / 1000 };
        }
        await sleep(50);
      }
    };
    const naive = await runVariant('naive');
    const outbox = await runVariant('outbox');
    await consumeChannel.deleteQueue(queue);
    return { naive, outbox };
  } finally {
    await conn.close().catch(() => undefined);
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await pool.end();
  }
}
