/**
 * The verifier's relay (child process): the outbox relay, plus the
 * duplicate-publishing fault (every message 2-32 times, some copies at
 * once, some late) and the crash between the broker's confirm and marking
 * the batch sent (SIGKILL of itself in `afterPublish`).
 */
import amqp from 'amqplib';
import { Tasks } from '../../src/tasks/index.js';
import { amqpUrl, between, childConfig, examplePool, sendToParent } from './env.js';

const cfg = childConfig();
const send = sendToParent;
const startedAt = performance.now();
const pool = examplePool(2);
// A relay-only process needs no memlock.
const tasks = new Tasks({ pool, schema: cfg.schema });
const conn = await amqp.connect(amqpUrl);
conn.on('error', () => undefined);
conn.on('close', () => process.exit(4));
const channel = await conn.createConfirmChannel();
let pendingLate = 0;

const relay = tasks.relay(channel, {
  routingKey: cfg.queue,
  batchSize: 50,
  pollMs: 20,
  afterPublish: async (rows) => {
    let copies = rows.length;
    for (const row of rows) {
      const extra = between(cfg.copies[0], cfg.copies[1]) - 1;
      for (let i = 0; i < extra; i++) {
        const publish = (): void => {
          channel.publish('', cfg.queue, row.content, { persistent: true });
        };
        if (Math.random() < cfg.lateShare) {
          // Counted when published: a relay killed before a late copy was due takes it with it.
          pendingLate++;
          setTimeout(
            () => {
              pendingLate--;
              publish();
              send({ type: 'published', rows: 0, copies: 1, pendingLate });
            },
            between(cfg.lateMs[0], cfg.lateMs[1]),
          );
        } else {
          publish();
          copies++;
        }
      }
    }
    await channel.waitForConfirms();
    send({ type: 'published', rows: rows.length, copies, pendingLate });
    if (performance.now() - startedAt > cfg.relayMinLifeMs && Math.random() < cfg.relayKillProbability) {
      // Published and confirmed, not yet marked sent: the rows must be published again by the next relay.
      await new Promise<void>((resolve) => send({ type: 'relay-kill' }, resolve));
      process.kill(process.pid, 'SIGKILL');
      await new Promise<void>(() => undefined);
    }
  },
});
relay.start();
setInterval(() => send({ type: 'published', rows: 0, copies: 0, pendingLate }), 250);
process.on('disconnect', () => process.exit(0));
