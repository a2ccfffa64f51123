/**
 * handle() against real PostgreSQL and memcached (deliveries are built by
 * hand; RabbitMQ is exercised in relay.test.ts and the verifier): the
 * sequence check, duplicates, ordering, the row lease and its takeover,
 * the retry cap and the permanent-failure hook.
 */
import test from 'ava';
import diagnostics from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';
import { LockNotAcquiredError, Memlock } from '../../src/index.js';
import {
  Tasks,
  encodeTask,
  type LeaseOverwrittenEvent,
  type PermanentlyFailedEvent,
  type TasksOptions,
  type TaskHandler,
} from '../../src/tasks/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { trackUnhandled } from '../helpers/unhandled.js';
import { createEffects, delivery, recordEffect, testPool, uniqueName } from './helpers.js';

const unhandled = trackUnhandled();
const pool = testPool();
const schema = uniqueName();
let mc: MemcachedProcess;
const memlocks: Memlock[] = [];

function memlockOn(address: string): Memlock {
  const m = new Memlock({ servers: address, prefix: `${schema}:`, leaseMs: 2000, heartbeatMs: 500, timeoutMs: 300 });
  memlocks.push(m);
  return m;
}

function tasksWith(options: Partial<TasksOptions> = {}): Tasks {
  return new Tasks({ pool, memlock: memlockOn(mc.address), schema, retryDelayMs: 0, ...options });
}

test.before(async () => {
  mc = await startMemcached();
  const tasks = tasksWith();
  await tasks.migrate();
  await tasks.migrate(); // idempotent
  await createEffects(pool, schema);
});

test.after.always(async () => {
  await Promise.all(memlocks.map((m) => m.close()));
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await pool.end();
  await mc?.stop();
});

test.afterEach.always((t) => {
  t.deepEqual(unhandled, [], 'no unhandled rejection or uncaught exception');
});

let n = 0;
/** Schedules a task on a fresh entity in its own committed transaction; returns the message body. */
async function issue(
  tasks: Tasks,
  entityId = `e${++n}`,
  name = 'work',
): Promise<{ entityId: string; seq: number; content: Buffer }> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const s = await tasks.schedule(client, { id: entityId, state: { step: 0 } }, { name, payload: { k: 1 } });
    await client.query('COMMIT');
    return { entityId, seq: s.seq, content: encodeTask({ entityId, seq: s.seq, name, payload: { k: 1 } }) };
  } finally {
    client.release();
  }
}

async function effects(entityId: string): Promise<number> {
  const { rows } = await pool.query<{ c: string }>(
    `SELECT count(*) AS c FROM "${schema}".effects WHERE entity_id = $1`,
    [entityId],
  );
  return Number(rows[0]!.c);
}

async function entity(
  entityId: string,
): Promise<{ seq: number; attempts: number; failed: boolean; lease_owner: string | null; state: unknown }> {
  const { rows } = await pool.query<{
    seq: string;
    attempts: number;
    failed: boolean;
    lease_owner: string | null;
    state: unknown;
  }>(
    `SELECT seq, attempts, failed_at IS NOT NULL AS failed, lease_owner, state FROM "${schema}".entities WHERE id = $1`,
    [entityId],
  );
  return { ...rows[0]!, seq: Number(rows[0]!.seq) };
}

const effect: TaskHandler = async ({ tx, task }) => {
  await recordEffect(tx, schema, task.entityId, task.seq);
};

test.serial('applies a task once; the same message again is dropped as stale by the sequence check', async (t) => {
  const tasks = tasksWith();
  const m = await issue(tasks);
  const first = await tasks.handle(delivery(m.content), async (ctx) => {
    await effect(ctx);
    ctx.setState({ step: 1 });
    return 'done';
  });
  t.like(first, {
    status: 'applied',
    reason: 'applied',
    ack: true,
    value: 'done',
    attempt: 1,
    dbTransactions: 2,
    filtered: true,
  });
  const again = await tasks.handle(delivery(m.content), effect);
  t.like(again, { status: 'dropped', reason: 'stale', ack: true, stoppedBy: 'sequence', dbTransactions: 1 });
  t.is(await effects(m.entityId), 1);
  t.like(await entity(m.entityId), { seq: 1, attempts: 0, lease_owner: null, state: { step: 1 } });
});

test.serial(
  'concurrent copies of one task: exactly one applies, memlock stops copies before the database',
  async (t) => {
    const tasks = tasksWith();
    const m = await issue(tasks);
    const results = await Promise.all(
      Array.from({ length: 12 }, () =>
        tasks.handle(delivery(m.content), async (ctx) => {
          await sleep(200); // long enough for every copy to arrive while the first holds the lock
          await effect(ctx);
        }),
      ),
    );
    t.is(results.filter((r) => r.status === 'applied').length, 1);
    const locked = results.filter((r) => r.reason === 'locked');
    t.true(locked.length >= 1, 'some copies were refused by memlock');
    for (const r of locked) t.like(r, { status: 'deferred', ack: false, stoppedBy: 'memlock', dbTransactions: 0 });
    t.is(await effects(m.entityId), 1);
    // The refused copies come back (requeued) and are then stale.
    const later = await tasks.handle(delivery(m.content), effect);
    t.like(later, { status: 'dropped', reason: 'stale' });
    t.is(await effects(m.entityId), 1);
  },
);

test.serial('tasks of one entity run in the order issued: a later one is deferred as early', async (t) => {
  const tasks = tasksWith();
  const a = await issue(tasks);
  const b = await issue(tasks, a.entityId);
  t.is(b.seq, a.seq + 1);
  t.like(await tasks.handle(delivery(b.content), effect), { status: 'deferred', reason: 'early', ack: false });
  t.like(await tasks.handle(delivery(a.content), effect), { status: 'applied' });
  t.like(await tasks.handle(delivery(b.content), effect), { status: 'applied' });
  t.is(await effects(a.entityId), 2);
});

test.serial('a handler that throws rolls its writes back and is retried; the attempt count survives', async (t) => {
  const tasks = tasksWith({ maxAttempts: 3 });
  const m = await issue(tasks);
  const r1 = await tasks.handle(delivery(m.content), async (ctx) => {
    await effect(ctx);
    throw new Error('boom');
  });
  t.like(r1, { status: 'deferred', reason: 'failed', ack: false, attempt: 1, dbTransactions: 3 });
  t.is((r1.error as Error).message, 'boom');
  t.is(await effects(m.entityId), 0, 'the failed attempt wrote nothing');
  t.like(await entity(m.entityId), { seq: 0, attempts: 1, lease_owner: null });
  t.like(await tasks.handle(delivery(m.content), effect), { status: 'applied', attempt: 2 });
  t.is(await effects(m.entityId), 1);
});

test.serial(
  'retry cap: after maxAttempts failures the permanently-failed hook and channel fire once; copies and successors are dropped; retryFailed re-issues',
  async (t) => {
    const hookEvents: PermanentlyFailedEvent[] = [];
    const channelEvents: unknown[] = [];
    const onChannel = (m: unknown): void => void channelEvents.push(m);
    diagnostics.subscribe('memlock:tasks:permanently-failed', onChannel);
    t.teardown(() => diagnostics.unsubscribe('memlock:tasks:permanently-failed', onChannel));
    const tasks = tasksWith({ maxAttempts: 3, hooks: { onPermanentlyFailed: (e) => void hookEvents.push(e) } });
    const m = await issue(tasks, undefined, 'poison');
    const next = await issue(tasks, m.entityId);
    const boom: TaskHandler = () => {
      throw new Error('poison');
    };
    t.like(await tasks.handle(delivery(m.content), boom), { status: 'deferred', reason: 'failed', attempt: 1 });
    t.like(await tasks.handle(delivery(m.content), boom), { status: 'deferred', reason: 'failed', attempt: 2 });
    t.deepEqual(hookEvents, []);
    const last = await tasks.handle(delivery(m.content), boom);
    t.like(last, { status: 'dropped', reason: 'permanently-failed', ack: true, attempt: 3 });
    t.is(hookEvents.length, 1);
    t.like(hookEvents[0], { entityId: m.entityId, seq: m.seq, name: 'poison', attempts: 3 });
    t.is((hookEvents[0]!.error as Error).message, 'poison');
    t.is(channelEvents.length, 1);
    t.like(await tasks.handle(delivery(m.content), effect), { status: 'dropped', reason: 'permanently-failed' });
    t.like(await tasks.handle(delivery(next.content), effect), { status: 'dropped', reason: 'blocked' });
    t.is(hookEvents.length, 1, 'the hook fires once per failure, not per copy');
    // An operator re-issues: both pending tasks go back to the outbox, unsent.
    await pool.query(`UPDATE "${schema}".outbox SET sent_at = now() WHERE entity_id = $1`, [m.entityId]);
    t.is(await tasks.retryFailed(pool, m.entityId), 2);
    const { rows } = await pool.query<{ seq: string }>(
      `SELECT seq FROM "${schema}".outbox WHERE entity_id = $1 AND sent_at IS NULL ORDER BY seq`,
      [m.entityId],
    );
    t.deepEqual(
      rows.map((r) => Number(r.seq)),
      [m.seq, next.seq],
    );
    t.like(await tasks.handle(delivery(m.content), effect), { status: 'applied', attempt: 1 });
    t.like(await tasks.handle(delivery(next.content), effect), { status: 'applied' });
    t.is(await tasks.retryFailed(pool, m.entityId), 0, 'nothing to re-issue once it ran');
  },
);

test.serial(
  'a live row lease defers other deliveries; an expired one is taken over with the overwrite hook and channel',
  async (t) => {
    const hookEvents: LeaseOverwrittenEvent[] = [];
    const channelEvents: LeaseOverwrittenEvent[] = [];
    const onChannel = (m: unknown): void => void channelEvents.push(m as LeaseOverwrittenEvent);
    diagnostics.subscribe('memlock:tasks:lease-overwritten', onChannel);
    t.teardown(() => diagnostics.unsubscribe('memlock:tasks:lease-overwritten', onChannel));
    const tasks = tasksWith({ leaseMs: 1500, hooks: { onLeaseOverwritten: (e) => void hookEvents.push(e) } });
    const m = await issue(tasks);
    // A worker took the lease (committed) and died: its memlock entry is gone with its process,
    // its PostgreSQL transaction was rolled back, the lease row stays. Reproduce exactly that state.
    await pool.query(
      `UPDATE "${schema}".entities SET lease_owner = 'dead-worker', lease_until = clock_timestamp() + interval '1500 milliseconds', attempts = 1 WHERE id = $1`,
      [m.entityId],
    );
    t.like(await tasks.handle(delivery(m.content), effect), {
      status: 'deferred',
      reason: 'leased',
      ack: false,
      stoppedBy: undefined,
    });
    t.is(await effects(m.entityId), 0);
    await sleep(1600);
    const taken = await tasks.handle(delivery(m.content), effect);
    t.like(taken, { status: 'applied', attempt: 2 });
    t.is(hookEvents.length, 1);
    t.like(hookEvents[0], { entityId: m.entityId, seq: m.seq, previousOwner: 'dead-worker', attempt: 2 });
    t.true(hookEvents[0]!.expiredAt instanceof Date);
    t.deepEqual(channelEvents, hookEvents);
    t.is(await effects(m.entityId), 1);
  },
);

test.serial(
  'a worker whose expired lease was taken over cannot commit (lease-lost, or stale once the taker applied); a live transaction defers takers',
  async (t) => {
    // Worker A's effect transaction is held back (its row-locking query waits on a gate) until its
    // row lease has expired and worker B has taken it over. B uses another memlock key prefix: the
    // case where memlock no longer separates them (lock lost, memcache restarted).
    let gate: Promise<void> = Promise.resolve();
    const slowPool = {
      query: pool.query.bind(pool),
      async connect() {
        const client = await pool.connect();
        return {
          release: (err?: Error | boolean) => client.release(err),
          async query(text: string, values?: unknown[]) {
            if (/SELECT seq, lease_owner, state/.test(text)) await gate;
            return client.query(text, values);
          },
        };
      },
    } as unknown as typeof pool;
    const a = new Tasks({ pool: slowPool, memlock: memlockOn(mc.address), schema, leaseMs: 300, retryDelayMs: 0 });
    const b = new Tasks({
      pool,
      memlock: memlockOn(mc.address),
      schema,
      keyPrefix: 'b:',
      leaseMs: 300,
      retryDelayMs: 0,
    });

    // 1. B takes over and fails: A finds the lease no longer its own.
    const m1 = await issue(a);
    let open!: () => void;
    gate = new Promise<void>((resolve) => (open = resolve));
    const pendingA = a.handle(delivery(m1.content), effect);
    await sleep(450);
    t.like(
      await b.handle(delivery(m1.content), () => {
        throw new Error('B fails');
      }),
      { status: 'deferred', reason: 'failed', attempt: 2 },
    );
    open();
    t.like(await pendingA, { status: 'dropped', reason: 'lease-lost', ack: true });
    t.is(await effects(m1.entityId), 0);

    // 2. B takes over and applies: A finds the sequence advanced.
    const m2 = await issue(a);
    gate = new Promise<void>((resolve) => (open = resolve));
    const pendingA2 = a.handle(delivery(m2.content), effect);
    await sleep(450);
    t.like(await b.handle(delivery(m2.content), effect), { status: 'applied', attempt: 2 });
    open();
    t.like(await pendingA2, { status: 'dropped', reason: 'stale', stoppedBy: 'sequence' });
    t.is(await effects(m2.entityId), 1);

    // 3. A's effect transaction is running (row locked) when its lease expires: B is deferred, not blocked.
    gate = Promise.resolve();
    const m3 = await issue(a);
    const [ra, rb] = await Promise.all([
      a.handle(delivery(m3.content), async (ctx) => {
        await sleep(600);
        await effect(ctx);
      }),
      sleep(450).then(() => b.handle(delivery(m3.content), effect)),
    ]);
    t.like(ra, { status: 'applied' });
    t.like(rb, { status: 'deferred', reason: 'leased' });
    t.is(await effects(m3.entityId), 1);
  },
);

test.serial(
  'memcache unavailable, or no memlock: the delivery goes to the database unfiltered and still applies once',
  async (t) => {
    const dead = await startMemcached();
    const address = dead.address;
    await dead.kill();
    const tasks = new Tasks({ pool, memlock: memlockOn(address), schema, retryDelayMs: 0 });
    const m = await issue(tasks);
    const r = await tasks.handle(delivery(m.content), effect);
    t.like(r, { status: 'applied', filtered: false });
    t.like(await tasks.handle(delivery(m.content), effect), { status: 'dropped', reason: 'stale', filtered: false });
    t.is(await effects(m.entityId), 1);
    // Without a memlock at all (a deployment without memcache): the same guarantees, every copy at the database.
    const bare = new Tasks({ pool, schema, retryDelayMs: 0 });
    const m2 = await issue(bare);
    const both = await Promise.all([
      bare.handle(delivery(m2.content), effect),
      bare.handle(delivery(m2.content), effect),
    ]);
    t.is(both.filter((r) => r.status === 'applied').length, 1);
    t.true(both.every((r) => !r.filtered && r.stoppedBy !== 'memlock'));
    t.is(await effects(m2.entityId), 1);
  },
);

test.serial('a chain step schedules the next step in its own transaction: issued only if it commits', async (t) => {
  const tasks = tasksWith();
  const m = await issue(tasks, undefined, 'step');
  const outbox = async (): Promise<number[]> =>
    (
      await pool.query<{ seq: string }>(`SELECT seq FROM "${schema}".outbox WHERE entity_id = $1 ORDER BY seq`, [
        m.entityId,
      ])
    ).rows.map((r) => Number(r.seq));
  const failing = await tasks.handle(delivery(m.content), async (ctx) => {
    await ctx.schedule({ id: ctx.task.entityId }, { name: 'step', payload: { n: 2 } });
    throw new Error('after scheduling');
  });
  t.like(failing, { status: 'deferred', reason: 'failed' });
  t.deepEqual(await outbox(), [m.seq], 'the rolled-back step issued nothing');
  const ok = await tasks.handle(delivery(m.content), async (ctx) => {
    const next = await ctx.schedule({ id: ctx.task.entityId }, { name: 'step', payload: { n: 2 } });
    return next.seq;
  });
  t.like(ok, { status: 'applied', value: m.seq + 1 });
  t.deepEqual(await outbox(), [m.seq, m.seq + 1]);
  t.like(await entity(m.entityId), { seq: m.seq + 1 });
});

test.serial('holdAfterMs: a failed attempt never leaves a completed marker that would drop its retry', async (t) => {
  const tasks = tasksWith({ holdAfterMs: 5000 });
  const m = await issue(tasks);
  t.like(
    await tasks.handle(delivery(m.content), () => {
      throw new Error('transient');
    }),
    { status: 'deferred', reason: 'failed' },
  );
  t.like(await tasks.handle(delivery(m.content), effect), { status: 'applied' });
  const late = await tasks.handle(delivery(m.content), effect);
  // With a memlock that has holdAfterMs, the late copy meets the completed marker in memcache;
  // with one that ignores the option, the sequence check stops it.
  const markerSupported = 'done' in new LockNotAcquiredError('k');
  t.like(
    late,
    markerSupported
      ? { status: 'dropped', reason: 'duplicate', stoppedBy: 'memlock', dbTransactions: 0 }
      : { status: 'dropped', reason: 'stale', stoppedBy: 'sequence' },
  );
  t.is(await effects(m.entityId), 1);
});

test.serial(
  'malformed messages are dropped without database work; bad options and arguments throw typed errors',
  async (t) => {
    const tasks = tasksWith();
    t.like(await tasks.handle(delivery(Buffer.from('not json')), effect), {
      status: 'dropped',
      reason: 'malformed',
      ack: true,
      dbTransactions: 0,
    });
    t.like(await tasks.handle(delivery(Buffer.from('{"v":1,"e":"x","s":-1,"n":"a"}')), effect), {
      reason: 'malformed',
    });
    const memlock = memlockOn(mc.address);
    t.throws(() => new Tasks({ pool, memlock, schema: 'Bad-Name' }), { instanceOf: RangeError, message: /schema/ });
    t.throws(() => new Tasks({ pool, memlock, maxAttempts: 0 }), { instanceOf: RangeError, message: /maxAttempts/ });
    t.throws(() => new Tasks({ pool, memlock, leaseMs: 'x' as never }), { instanceOf: TypeError, message: /leaseMs/ });
    t.throws(() => new Tasks({ pool: {} as never, memlock }), { instanceOf: TypeError, message: /pool/ });
    t.throws(() => new Tasks({ pool, memlock: {} as never }), { instanceOf: TypeError, message: /memlock/ });
    t.throws(() => new Tasks({ pool, memlock, lockOptions: { wait: true } as never }), {
      instanceOf: RangeError,
      message: /wait/,
    });
    await t.throwsAsync(() => tasks.schedule(pool, { id: '' }, { name: 'x' }), {
      instanceOf: TypeError,
      message: /entity\.id/,
    });
    await t.throwsAsync(() => tasks.schedule(pool, { id: 'x' }, { name: '' }), {
      instanceOf: TypeError,
      message: /task\.name/,
    });
    await t.throwsAsync(() => tasks.handle(delivery(Buffer.from('{}')), 'x' as never), {
      instanceOf: TypeError,
      message: /fn/,
    });
    await t.throwsAsync(() => tasks.handle({ content: Buffer.from('{}') } as never, effect), {
      instanceOf: TypeError,
      message: /message/,
    });
    const { rows } = await pool.query<{ c: string }>(
      `SELECT count(*) AS c FROM "${schema}".entities WHERE id IN ('', 'x')`,
    );
    t.is(Number(rows[0]!.c), 0, 'bad input touched nothing');
  },
);

test.serial(
  'attempts used up by crashed workers: the next delivery fails the task permanently instead of running it again',
  async (t) => {
    const hookEvents: PermanentlyFailedEvent[] = [];
    const tasks = tasksWith({
      maxAttempts: 2,
      leaseMs: 200,
      hooks: { onPermanentlyFailed: (e) => void hookEvents.push(e) },
    });
    const m = await issue(tasks);
    // Two workers claimed it and died (lease left, attempts counted at claim time).
    await pool.query(
      `UPDATE "${schema}".entities SET lease_owner = 'dead-2', lease_until = clock_timestamp() - interval '1 second', attempts = 2 WHERE id = $1`,
      [m.entityId],
    );
    let ran = false;
    t.like(
      await tasks.handle(delivery(m.content), () => {
        ran = true;
      }),
      { status: 'dropped', reason: 'permanently-failed', ack: true },
    );
    t.false(ran);
    t.is(hookEvents.length, 1);
    t.like(hookEvents[0], { entityId: m.entityId, attempts: 2, error: undefined });
    t.like(await entity(m.entityId), { failed: true, lease_owner: null });
  },
);

test.serial('a throwing hook never reaches the task path; it is published on memlock:tasks:hook-error', async (t) => {
  const hookErrors: unknown[] = [];
  const onChannel = (m: unknown): void => void hookErrors.push(m);
  diagnostics.subscribe('memlock:tasks:hook-error', onChannel);
  t.teardown(() => diagnostics.unsubscribe('memlock:tasks:hook-error', onChannel));
  const tasks = tasksWith({
    maxAttempts: 1,
    hooks: {
      onPermanentlyFailed: () => {
        throw new Error('pager is down');
      },
    },
  });
  const m = await issue(tasks);
  const r = await tasks.handle(delivery(m.content), () => {
    throw new Error('task failed');
  });
  t.like(r, { status: 'dropped', reason: 'permanently-failed' });
  t.is(hookErrors.length, 1);
  t.like(hookErrors[0], { hook: 'onPermanentlyFailed' });
});
