/**
 * The outbox relay and consume() against real PostgreSQL, RabbitMQ and
 * memcached: publish only after commit, at least once across a crash
 * between confirm and marking sent, and consume() end to end.
 */
import test from 'ava';
import amqp from 'amqplib';
import type pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock } from '../../src/index.js';
import {
  Tasks,
  decodeTask,
  type ChannelLike,
  type ConfirmChannelLike,
  type HandleResult,
  type MessageLike,
  type PoolLike,
  type TaskHandler,
} from '../../src/tasks/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { trackUnhandled } from '../helpers/unhandled.js';
import { amqpUrl, createEffects, recordEffect, testPool, uniqueName } from './helpers.js';

// The real driver types fit the structural ports (a compile-time check).
const fitsPool: (p: pg.Pool) => PoolLike = (p) => p;
const fitsChannel: (c: amqp.Channel) => ChannelLike = (c) => c;
const fitsConfirm: (c: amqp.ConfirmChannel) => ConfirmChannelLike = (c) => c;
const fitsMessage: (m: amqp.ConsumeMessage) => MessageLike = (m) => m;
void [fitsPool, fitsChannel, fitsConfirm, fitsMessage];

const unhandled = trackUnhandled();
const pool = testPool();
const schema = uniqueName();
const queue = uniqueName('memlock-tasks');
let mc: MemcachedProcess;
let memlock: Memlock;
let tasks: Tasks;
let conn: amqp.ChannelModel;
let channel: amqp.Channel;
let confirm: amqp.ConfirmChannel;

test.before(async () => {
  mc = await startMemcached();
  memlock = new Memlock({ servers: mc.address, prefix: `${schema}:` });
  tasks = new Tasks({ pool, memlock, schema, retryDelayMs: 50 });
  await tasks.migrate();
  await createEffects(pool, schema);
  conn = await amqp.connect(amqpUrl);
  channel = await conn.createChannel();
  confirm = await conn.createConfirmChannel();
  await channel.assertQueue(queue, { durable: false });
});

test.after.always(async () => {
  await channel?.deleteQueue(queue).catch(() => undefined);
  await conn?.close();
  await tasks?.dropSchema();
  await pool.end();
  await memlock?.close();
  await mc?.stop();
});

test.afterEach.always((t) => {
  t.deepEqual(unhandled, [], 'no unhandled rejection or uncaught exception');
});

async function drain(): Promise<amqp.GetMessage[]> {
  const got: amqp.GetMessage[] = [];
  for (;;) {
    const m = await channel.get(queue, { noAck: true });
    if (m === false) return got;
    got.push(m);
  }
}

const effect: TaskHandler = async ({ tx, task }) => recordEffect(tx, schema, task.entityId, task.seq);

test.serial('publishes only after commit, never after rollback, and marks rows sent', async (t) => {
  const relay = tasks.relay(confirm, { routingKey: queue });
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await tasks.schedule(client, { id: 'r1', state: { v: 1 } }, { name: 'go', payload: { x: 1 } });
    t.is(await relay.runOnce(), 0, 'an uncommitted row is invisible to the relay');
    await client.query('COMMIT');
    await client.query('BEGIN');
    await tasks.schedule(client, { id: 'r-rolled-back' }, { name: 'go' });
    await client.query('ROLLBACK');
  } finally {
    client.release();
  }
  t.is(await relay.runOnce(), 1);
  t.is(await relay.runOnce(), 0, 'sent rows are not published again');
  const got = await drain();
  t.is(got.length, 1);
  t.deepEqual(decodeTask(got[0]!.content), { entityId: 'r1', seq: 0, name: 'go', payload: { x: 1 } });
  t.is(got[0]!.properties.messageId, 'r1:0');
  const { rows } = await pool.query<{ sent: boolean }>(
    `SELECT sent_at IS NOT NULL AS sent FROM "${schema}".outbox WHERE entity_id = 'r1'`,
  );
  t.deepEqual(rows, [{ sent: true }]);
});

test.serial(
  'a relay that dies between the broker confirm and marking sent publishes again; the copy is dropped as stale',
  async (t) => {
    await tasks.schedule(pool, { id: 'r2' }, { name: 'go' });
    const crashing = tasks.relay(confirm, {
      routingKey: queue,
      afterPublish: () => {
        throw new Error('killed before marking sent');
      },
    });
    await t.throwsAsync(() => crashing.runOnce(), { message: /killed/ });
    const relay = tasks.relay(confirm, { routingKey: queue });
    t.is(await relay.runOnce(), 1, 'the row was still unsent');
    const got = await drain();
    t.is(got.length, 2, 'published twice (at least once)');
    const results: HandleResult[] = [];
    for (const m of got) results.push(await tasks.handle(m, effect));
    t.deepEqual(
      results.map((r) => r.reason),
      ['applied', 'stale'],
    );
    const { rows } = await pool.query<{ c: string }>(
      `SELECT count(*) AS c FROM "${schema}".effects WHERE entity_id = 'r2'`,
    );
    t.is(Number(rows[0]!.c), 1);
  },
);

test.serial(
  'relay in the background + consume(): tasks of one entity apply in order, an early one is requeued and runs later',
  async (t) => {
    const relay = tasks.relay(confirm, { routingKey: queue, pollMs: 20 });
    const order: number[] = [];
    const results: HandleResult[] = [];
    const consumer = await tasks.consume(
      channel,
      queue,
      async (ctx) => {
        order.push(ctx.task.seq);
        await effect(ctx);
      },
      { onResult: (r) => results.push(r) },
    );
    // Publish seq 1 before seq 0 by hand (out of order), then let the relay publish both.
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await tasks.schedule(client, { id: 'r3' }, { name: 'a' });
      await tasks.schedule(client, { id: 'r3' }, { name: 'b' });
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    confirm.publish('', queue, Buffer.from(JSON.stringify({ v: 1, e: 'r3', s: 1, n: 'b', p: null })));
    await confirm.waitForConfirms();
    await sleep(100);
    relay.start();
    const deadline = performance.now() + 10_000;
    while (order.length < 2 && performance.now() < deadline) await sleep(20);
    await sleep(300); // let the remaining copy arrive and be dropped
    await consumer.stop();
    await relay.stop();
    t.deepEqual(order, [0, 1]);
    t.true(
      results.some((r) => r.reason === 'early'),
      'the out-of-order copy was deferred',
    );
    t.is(results.filter((r) => r.status === 'applied').length, 2);
  },
);

test.serial('relay options are validated before anything is touched', (t) => {
  t.throws(() => tasks.relay({} as never, { routingKey: queue }), { instanceOf: TypeError, message: /channel/ });
  t.throws(() => tasks.relay(confirm, {} as never), { instanceOf: TypeError, message: /routingKey/ });
  t.throws(() => tasks.relay(confirm, { routingKey: queue, batchSize: 0 }), {
    instanceOf: RangeError,
    message: /batchSize/,
  });
  t.throws(() => tasks.relay(confirm, { routingKey: queue, pollMs: 1.5 }), {
    instanceOf: TypeError,
    message: /pollMs/,
  });
});

test.serial('two relays side by side publish every row once (FOR UPDATE SKIP LOCKED)', async (t) => {
  await drain();
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    for (let i = 0; i < 40; i++) await tasks.schedule(client, { id: `side-${i}` }, { name: 'go' });
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  const other = await conn.createConfirmChannel();
  t.teardown(() => other.close().catch(() => undefined));
  const a = tasks.relay(confirm, { routingKey: queue, batchSize: 5 });
  const b = tasks.relay(other, { routingKey: queue, batchSize: 5 });
  const counts = [0, 0];
  await Promise.all(
    [a, b].map(async (relay, i) => {
      for (;;) {
        const n = await relay.runOnce();
        if (n === 0) return;
        counts[i] = counts[i]! + n;
      }
    }),
  );
  t.is(counts[0]! + counts[1]!, 40);
  const ids = (await drain()).map((m) => decodeTask(m.content)!.entityId).sort();
  t.is(ids.length, 40);
  t.is(new Set(ids).size, 40, 'no row published twice');
});
