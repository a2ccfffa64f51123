/**
 * A verifier consumer (child process): consumes the task queue with
 * `tasks.handle()` and the chain step, and injects faults: nack/requeue
 * before handling, its AMQP connection destroyed at random times, and
 * SIGKILL of itself inside a step. The verifier SIGKILLs it from outside too.
 */
import amqp from 'amqplib';
import diagnostics from 'node:diagnostics_channel';
import { Memlock } from '../../src/index.js';
import { Tasks, type MessageLike } from '../../src/tasks/index.js';
import { chainStep } from './chain.js';
import { amqpUrl, between, childConfig, examplePool, sendToParent } from './env.js';

const cfg = childConfig();
const send = sendToParent;
const pool = examplePool(8);
const memlock = new Memlock({
  servers: cfg.memcached,
  prefix: `${cfg.schema}:`,
  leaseMs: 2000,
  heartbeatMs: 500,
  timeoutMs: 300,
});
const tasks = new Tasks({
  pool,
  memlock,
  schema: cfg.schema,
  leaseMs: cfg.leaseMs,
  maxAttempts: cfg.maxAttempts,
  holdAfterMs: cfg.holdAfterMs,
});
diagnostics.subscribe('memlock:tasks:lease-overwritten', () => send({ type: 'lease-overwritten' }));

const step = chainStep({
  schema: cfg.schema,
  steps: cfg.steps,
  workMs: cfg.workMs,
  inside: () => {
    if (Math.random() < cfg.crashProbability) {
      // Mid-task: the lease is committed, the effect is written but not committed.
      send({ type: 'crash' }, () => process.kill(process.pid, 'SIGKILL'));
      return new Promise<void>(() => undefined);
    }
  },
});

async function connectAndConsume(): Promise<void> {
  const conn = await amqp.connect(amqpUrl);
  conn.on('error', () => undefined);
  const channel = await conn.createChannel();
  channel.on('error', () => undefined);
  let closed = false;
  const reconnect = (): void => {
    if (closed) return;
    closed = true;
    setTimeout(() => void connectAndConsume().catch(() => process.exit(3)), 100);
  };
  conn.on('close', reconnect);
  await channel.prefetch(8);
  const settle = (m: MessageLike, ack: boolean): void => {
    try {
      if (ack) channel.ack(m as amqp.Message);
      else channel.nack(m as amqp.Message, false, true);
    } catch {} // channel gone: the broker redelivers
  };
  await channel.consume(cfg.queue, (msg) => {
    if (msg === null) return;
    if (Math.random() < cfg.nackProbability) {
      send({ type: 'nacked' });
      return settle(msg, false);
    }
    void tasks.handle(msg, step).then((r) => {
      send({
        type: 'result',
        status: r.status,
        reason: r.reason,
        stoppedBy: r.stoppedBy ?? null,
        tx: r.dbTransactions,
        filtered: r.filtered,
      });
      if (r.ack) settle(msg, true);
      else setTimeout(() => settle(msg, false), 150);
    });
  });
  const [lo, hi] = cfg.connectionKillMs;
  if (hi > 0) {
    setTimeout(
      () => {
        send({ type: 'connection-killed' });
        // Abrupt, like a network failure: no channel/connection close handshake, unacked deliveries go back to the queue.
        (conn.connection as unknown as { stream: { destroy(): void } }).stream.destroy();
      },
      between(lo, hi),
    );
  }
}

process.on('disconnect', () => process.exit(0));
await connectAndConsume();
