/**
 * examples/ run as users run them (`node examples/x.js`, importing `memlock`
 * through the package's own exports, so against the build) or, where a test
 * needs to reach inside, imported; against real memcached, PostgreSQL and
 * RabbitMQ. Each example stays under 80 lines.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import amqp from 'amqplib';
import pg from 'pg';
import { Memlock, LockLostError } from '../../src/index.js';
import { root } from '../helpers/package.js';
import { waitFor } from '../helpers/resources.js';
import { sharedServer } from '../helpers/shared.js';

const shared = sharedServer(test);
const examples = path.join(root, 'examples');
const PG = {
  host: process.env.PGHOST ?? '127.0.0.1',
  user: process.env.PGUSER ?? 'root',
  database: process.env.PGDATABASE ?? 'test',
};
const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1';

/** A running example: its output so far, and its exit. */
interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function start(file: string, env: NodeJS.ProcessEnv): Running {
  const child = spawn(process.execPath, [path.join(examples, file)], {
    cwd: root,
    env: { ...process.env, NODE_OPTIONS: '', MEMCACHE_SERVERS: shared.mc.address, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    err += c;
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return { child, stdout: () => out, stderr: () => err, exited };
}

test('every example is under 80 lines and is exercised here', (t) => {
  const files = readdirSync(examples)
    .filter((f) => f.endsWith('.js'))
    .sort();
  t.deepEqual(files, ['cron-job.js', 'http-hot-handler.js', 'pg-prefilter.js', 'rabbitmq-consumer.js']);
  for (const file of files) {
    const lines = readFileSync(path.join(examples, file), 'utf8').trimEnd().split('\n').length;
    t.true(lines < 80, `${file}: ${lines} lines`);
  }
});

test('http-hot-handler: concurrent requests build once (409 for the other), a client abort cancels and frees the key, failOpen serves without memcache, SIGTERM closes', async (t) => {
  const app = start('http-hot-handler.js', { PORT: '0' });
  t.teardown(() => app.child.kill('SIGKILL'));
  await waitFor(() => /listening on /.test(app.stdout()), 10_000);
  const base = /listening on (\S+)/.exec(app.stdout())?.[1] ?? '';
  const first = fetch(`${base}/reports/7?ms=1500`);
  const observer = shared.memlock({}, 'memlock:');
  await waitFor(async () => (await observer.inspect('report:7')) !== null, 5000); // the first request holds it
  const second = await fetch(`${base}/reports/7`);
  t.is(second.status, 409);
  t.is((await first).status, 200);
  t.like(await (await first).json(), { id: '7', rows: 1000 });
  t.is((await fetch(`${base}/reports/7?ms=10`)).status, 200, 'free again after the first finished');

  // The client goes away: the build is aborted and the lock released at once.
  await t.throwsAsync(fetch(`${base}/reports/8?ms=30000`, { signal: AbortSignal.timeout(300) }), {
    any: true,
    name: 'TimeoutError',
  });
  await waitFor(() => /aborted 8: client went away/.test(app.stdout()), 5000);
  t.is((await fetch(`${base}/reports/8?ms=10`)).status, 200, 'the aborted call released its lock');

  // memcache unreachable: failOpen runs the handler anyway and says so.
  const open = start('http-hot-handler.js', { PORT: '0', MEMCACHE_SERVERS: '127.0.0.1:1' });
  t.teardown(() => open.child.kill('SIGKILL'));
  await waitFor(() => /listening on /.test(open.stdout()), 10_000);
  const openBase = /listening on (\S+)/.exec(open.stdout())?.[1] ?? '';
  t.is((await fetch(`${openBase}/reports/9?ms=10`)).status, 200);
  t.regex(open.stderr(), /fail-open report:9/);

  for (const running of [app, open]) running.child.kill('SIGTERM');
  t.is(await app.exited, 0, app.stderr());
  t.is(await open.exited, 0, open.stderr());
  t.regex(app.stdout(), /closed/);
});

interface PgExample {
  payInvoice(memlock: Memlock, pool: pg.Pool, id: number, options?: { workMs?: number }): Promise<string>;
  setUp(pool: pg.Pool, invoices: number): Promise<void>;
}

test.serial('pg-prefilter: 40 overlapping deliveries of 10 jobs pay each invoice exactly once', async (t) => {
  const table = `memlock_example_${randomUUID().slice(0, 8)}`;
  const pool = new pg.Pool(PG);
  t.teardown(async () => {
    await pool.query(`DROP TABLE IF EXISTS ${table}`);
    await pool.end();
  });
  const run = start('pg-prefilter.js', {
    EXAMPLE_TABLE: table,
    PGHOST: PG.host,
    PGUSER: PG.user,
    PGDATABASE: PG.database,
  });
  t.is(await run.exited, 0, run.stderr());
  const result = JSON.parse(run.stdout()) as { outcomes: Record<string, number>; paid: number; payments: number };
  t.is(result.paid, 10);
  t.is(result.payments, 10, 'no invoice paid twice');
  t.is(result.outcomes.paid, 10);
  t.is((result.outcomes.paid ?? 0) + (result.outcomes.busy ?? 0) + (result.outcomes['already-paid'] ?? 0), 40);
});

test.serial(
  'pg-prefilter: a lock lost during the transaction rolls it back (signal checked before COMMIT)',
  async (t) => {
    const table = `memlock_example_${randomUUID().slice(0, 8)}`;
    process.env.EXAMPLE_TABLE = table;
    const example = (await import(pathToFileURL(path.join(examples, 'pg-prefilter.js')).href)) as PgExample;
    const pool = new pg.Pool(PG);
    t.teardown(async () => {
      await pool.query(`DROP TABLE IF EXISTS ${table}`);
      await pool.end();
    });
    await example.setUp(pool, 2);
    const prefix = `pg${randomUUID().slice(0, 6)}:`;
    const memlock = shared.memlock({ leaseMs: 2000, heartbeatMs: 50 }, prefix);
    const paying = example.payInvoice(memlock, pool, 1, { workMs: 1000 });
    await waitFor(async () => (await memlock.inspect('invoice:1')) !== null, 2000);
    await shared.mc.rawDelete(`${prefix}invoice:1`); // evicted, flushed, or broken by an operator
    const error = await t.throwsAsync(paying, { instanceOf: LockLostError });
    t.is(error?.kind, 'gone');
    const { rows } = await pool.query<{ paid: boolean; payments: number }>(
      `SELECT paid, payments FROM ${table} WHERE id = 1`,
    );
    t.deepEqual(rows[0], { paid: false, payments: 0 }, 'rolled back, not committed');
    t.is(await example.payInvoice(memlock, pool, 1, { workMs: 10 }), 'paid', 'a retry pays it');
    t.is(await example.payInvoice(memlock, pool, 1, { workMs: 10 }), 'already-paid');
  },
);

interface AmqpExample {
  startConsumer(options: {
    url: string;
    queue: string;
    memlock: Memlock;
    handle: (content: Buffer, signal: AbortSignal) => Promise<void>;
    prefetch?: number;
  }): Promise<{ close(): Promise<void> }>;
}

test('rabbitmq-consumer: two consumers, every message delivered 3 times, each handled once', async (t) => {
  const example = (await import(pathToFileURL(path.join(examples, 'rabbitmq-consumer.js')).href)) as AmqpExample;
  const queue = `memlock-example-${randomUUID().slice(0, 8)}`;
  const prefix = `mq${randomUUID().slice(0, 6)}:`;
  const handled: string[] = [];
  const handle = async (content: Buffer, signal: AbortSignal): Promise<void> => {
    await sleep(100, undefined, { signal });
    handled.push(content.toString());
  };
  const consumers = await Promise.all(
    [1, 2].map(() => example.startConsumer({ url: AMQP_URL, queue, memlock: shared.memlock({}, prefix), handle })),
  );
  const connection = await amqp.connect(AMQP_URL);
  t.teardown(async () => {
    await Promise.all(consumers.map((c) => c.close()));
    const channel = await connection.createChannel();
    await channel.deleteQueue(queue);
    await channel.deleteQueue(`${queue}.no-message-id`);
    await connection.close();
  });
  const channel = await connection.createConfirmChannel();
  for (let copy = 0; copy < 3; copy++) {
    for (let id = 0; id < 10; id++) channel.sendToQueue(queue, Buffer.from(`job-${id}`), { messageId: `job-${id}` });
  }
  await channel.waitForConfirms();
  await waitFor(async () => handled.length >= 10 && (await channel.checkQueue(queue)).messageCount === 0, 10_000);
  await sleep(500); // any late duplicate would be handled by now
  t.deepEqual([...handled].sort(), Array.from({ length: 10 }, (_, i) => `job-${i}`).sort());
});

test('cron-job: two instances, one runs each tick and the other skips; SIGTERM aborts the run, releases the lock and exits 0', async (t) => {
  const env = { INTERVAL_MS: '100', JOB_MS: '600' };
  const a = start('cron-job.js', env);
  const b = start('cron-job.js', env);
  t.teardown(() => {
    a.child.kill('SIGKILL');
    b.child.kill('SIGKILL');
  });
  const both = (): string => a.stdout() + b.stdout();
  await waitFor(() => /ran/.test(both()) && /skipped: held by \S+:\d+:/.test(both()), 15_000);
  // Stop both while one of them is running the job.
  const memlock = shared.memlock({}, 'memlock:');
  await waitFor(async () => (await memlock.inspect('cron:nightly-report')) !== null, 5000);
  const stoppedAt = performance.now();
  a.child.kill('SIGTERM');
  b.child.kill('SIGTERM');
  t.is(await a.exited, 0, a.stderr());
  t.is(await b.exited, 0, b.stderr());
  t.true(performance.now() - stoppedAt < 5000, 'exits promptly');
  t.regex(both(), /aborted by shutdown/);
  t.regex(a.stdout(), /stopped/);
  t.regex(b.stdout(), /stopped/);
  t.is(await memlock.inspect('cron:nightly-report'), null, 'the lock was released on the way out');
});

test('rabbitmq-consumer: close() while a message is in hand lets it finish and ack, then closes', async (t) => {
  const example = (await import(pathToFileURL(path.join(examples, 'rabbitmq-consumer.js')).href)) as AmqpExample;
  const queue = `memlock-example-${randomUUID().slice(0, 8)}`;
  let started = false;
  const handled: string[] = [];
  const consumer = await example.startConsumer({
    url: AMQP_URL,
    queue,
    memlock: shared.memlock(),
    handle: async (content, signal) => {
      started = true;
      await sleep(500, undefined, { signal });
      handled.push(content.toString());
    },
  });
  const connection = await amqp.connect(AMQP_URL);
  t.teardown(async () => {
    const channel = await connection.createChannel();
    await channel.deleteQueue(queue);
    await channel.deleteQueue(`${queue}.no-message-id`);
    await connection.close();
  });
  const channel = await connection.createConfirmChannel();
  channel.sendToQueue(queue, Buffer.from('slow'), { messageId: 'slow' });
  await channel.waitForConfirms();
  await waitFor(() => started, 5000);
  await consumer.close();
  t.deepEqual(handled, ['slow'], 'finished before close() resolved');
  const { messageCount } = await channel.checkQueue(queue);
  t.is(messageCount, 0, 'acked, not requeued');
});

test.serial(
  'rabbitmq-consumer: messages without messageId are never acked as duplicates: each is dead-lettered and logged',
  async (t) => {
    const example = (await import(pathToFileURL(path.join(examples, 'rabbitmq-consumer.js')).href)) as AmqpExample;
    const queue = `memlock-example-${randomUUID().slice(0, 8)}`;
    const handled: string[] = [];
    const logged: string[] = [];
    const consoleError = console.error;
    console.error = (...args: unknown[]) => {
      if (String(args[0]).includes(queue)) logged.push(String(args[0]));
      else consoleError(...args);
    };
    t.teardown(() => {
      console.error = consoleError;
    });
    const consumer = await example.startConsumer({
      url: AMQP_URL,
      queue,
      memlock: shared.memlock({}, `mq${randomUUID().slice(0, 6)}:`),
      handle: async (content) => {
        handled.push(content.toString());
      },
    });
    const connection = await amqp.connect(AMQP_URL);
    t.teardown(async () => {
      await consumer.close();
      const channel = await connection.createChannel();
      await channel.deleteQueue(queue);
      await channel.deleteQueue(`${queue}.no-message-id`);
      await connection.close();
    });
    const channel = await connection.createConfirmChannel();
    await channel.assertQueue(`${queue}.no-message-id`, { durable: false }); // as the example declares it
    for (const body of ['a', 'b', 'c']) channel.sendToQueue(queue, Buffer.from(body)); // amqplib sets no messageId
    await channel.waitForConfirms();
    const deadLettered = async (): Promise<number> => (await channel.checkQueue(`${queue}.no-message-id`)).messageCount;
    // On timeout, fall through: the assertions below say what went missing.
    await waitFor(async () => handled.length + (await deadLettered()) >= 3, 10_000).catch(() => undefined);
    await sleep(300); // a late ack or redelivery would show by now
    t.deepEqual(handled, [], 'no unidentifiable message handled (it could not be deduplicated)');
    t.is(await deadLettered(), 3, 'every one kept in the dead-letter queue, none acked unread');
    t.is((await channel.checkQueue(queue)).messageCount, 0);
    t.is(logged.length, 3, 'each one logged');
    t.regex(logged[0] ?? '', /without messageId/);
  },
);
