/**
 * `Tasks`: the entry point of `memlock/tasks`. Holds the resolved options
 * and hands out the parts: `schedule()` (in the caller's transaction), the
 * outbox `relay()`, `handle()` for one delivery and `consume()` for a queue.
 */
import { Memlock, type LockOptions } from '../index.js';
import { handleDelivery, type HandleConfig, type HandleResult, type TaskHandler } from './handle.js';
import type { TaskHooks } from './hooks.js';
import { Relay, type RelayOptions } from './relay.js';
import { retryFailedTasks, scheduleTask, type EntityInput, type ScheduledTask, type TaskInput } from './schedule.js';
import { checkSchemaName, dropSchema, migrate, tables, type Tables } from './schema.js';
import type { ChannelLike, ConfirmChannelLike, MessageLike, PoolLike, Queryable } from './ports.js';

/** Options of `new Tasks()`. */
export interface TasksOptions {
  /** PostgreSQL pool (`pg.Pool`) for the relay, `handle()` and `migrate()`. */
  readonly pool: PoolLike;
  /**
   * The memlock instance used as the pre-filter of `handle()`. Optional: a
   * process that only schedules or relays needs none, and without it every
   * delivery goes to PostgreSQL (still exactly once, at a database
   * transaction per copy).
   */
  readonly memlock?: Memlock | undefined;
  /** PostgreSQL schema holding the tables. @default 'memlock_tasks' */
  readonly schema?: string;
  /**
   * Row lease: how long a worker may run a task before another delivery may
   * take it over (then `onLeaseOverwritten` fires). Longer than any task
   * should run. 100 ms to 1 day. @default 60000
   */
  readonly leaseMs?: number;
  /** Attempts per task (failures and crashed workers) before it is permanently failed. 1..1000. @default 5 */
  readonly maxAttempts?: number;
  /** `consume()`: how long a deferred delivery waits before it is requeued. 0..1 hour. @default 500 */
  readonly retryDelayMs?: number;
  /**
   * Keep a task's memlock key blocked this long after it applied (memlock's
   * `holdAfterMs`), so late copies are stopped in memcache instead of the
   * database. 0 disables it. Needs a memlock version with `holdAfterMs`;
   * older ones ignore it (the sequence check stops those copies). @default 0
   */
  readonly holdAfterMs?: number;
  /** Prefix of the memlock keys (after memlock's own prefix). @default 'tasks:' */
  readonly keyPrefix?: string;
  /** Extra per-call memlock options (e.g. `leaseMs`, `heartbeatMs`). `wait` is not allowed: a refused copy is handed back instead. */
  readonly lockOptions?: Omit<LockOptions, 'wait' | 'signal'>;
  /** Alert hooks. */
  readonly hooks?: TaskHooks;
}

/** Options of `consume()`. */
export interface ConsumeOptions<T> {
  /** Unacknowledged deliveries per consumer (channel prefetch). 1..65535. @default 16 */
  readonly prefetch?: number;
  /** Called with every delivery's outcome (metrics). */
  readonly onResult?: ((result: HandleResult<T>) => void) | undefined;
}

/** A running consumer. */
export interface Consumer {
  readonly consumerTag: string;
  /** Cancels the consumer, waits for deliveries in flight, and requeues deferred ones at once. */
  stop(): Promise<void>;
}

function checkNumber(name: string, value: unknown, min: number, max: number, integer = false): number {
  if (typeof value !== 'number' || Number.isNaN(value))
    throw new TypeError(`Expected \`${name}\` to be a number, got ${typeof value}`);
  if (integer && !Number.isInteger(value)) throw new RangeError(`Expected \`${name}\` to be an integer, got ${value}`);
  if (value < min || value > max)
    throw new RangeError(`Expected \`${name}\` to be between ${min} and ${max}, got ${value}`);
  return value;
}

/** Exactly-once tasks on PostgreSQL + RabbitMQ with memlock in front; see docs/tasks.md. */
export class Tasks {
  /** The schema's table names. */
  readonly tables: Tables;
  readonly #pool: PoolLike;
  readonly #cfg: HandleConfig;
  readonly #retryDelayMs: number;

  constructor(options: TasksOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError('Expected `options` to be an object');
    const { pool, memlock } = options;
    if (typeof pool?.query !== 'function' || typeof pool.connect !== 'function')
      throw new TypeError('Expected `pool` to be a pg Pool');
    if (memlock !== undefined && !(memlock instanceof Memlock))
      throw new TypeError('Expected `memlock` to be a Memlock');
    this.tables = tables(checkSchemaName(options.schema ?? 'memlock_tasks'));
    const keyPrefix = options.keyPrefix ?? 'tasks:';
    if (typeof keyPrefix !== 'string') throw new TypeError('Expected `keyPrefix` to be a string');
    const lockOptions = options.lockOptions ?? {};
    if ('wait' in lockOptions)
      throw new RangeError('`lockOptions.wait` is not supported: a refused copy is handed back, not waited for');
    this.#pool = pool;
    this.#retryDelayMs = checkNumber('retryDelayMs', options.retryDelayMs ?? 500, 0, 3_600_000);
    this.#cfg = {
      pool,
      memlock,
      t: this.tables,
      keyPrefix,
      lockOptions,
      leaseMs: checkNumber('leaseMs', options.leaseMs ?? 60_000, 100, 86_400_000, true),
      maxAttempts: checkNumber('maxAttempts', options.maxAttempts ?? 5, 1, 1000, true),
      holdAfterMs: checkNumber('holdAfterMs', options.holdAfterMs ?? 0, 0, 30 * 86_400_000),
      hooks: options.hooks ?? {},
    };
  }

  /** Creates the schema and tables (idempotent, safe to run concurrently). */
  migrate(): Promise<void> {
    return migrate(this.#pool, this.tables.schema);
  }

  /** Drops the schema and everything in it. */
  dropSchema(): Promise<void> {
    return dropSchema(this.#pool, this.tables.schema);
  }

  /**
   * Writes `entity` and an outbox row for `task` with `tx`, a connection in
   * the caller's open transaction: the task is published after that
   * transaction commits, and never if it rolls back.
   */
  schedule(tx: Queryable, entity: EntityInput, task: TaskInput): Promise<ScheduledTask> {
    return scheduleTask(this.tables, tx, entity, task);
  }

  /**
   * Re-issues a permanently failed entity's task and its successors (run it
   * in a transaction, or pass the pool for a single statement pair).
   */
  retryFailed(tx: Queryable, entityId: string): Promise<number> {
    if (typeof entityId !== 'string' || entityId === '')
      throw new TypeError('Expected `entityId` to be a non-empty string');
    return retryFailedTasks(this.tables, tx, entityId);
  }

  /** An outbox relay publishing on `channel` (a confirm channel). Call `start()` on it, or `runOnce()`. */
  relay(channel: ConfirmChannelLike, options: RelayOptions): Relay {
    return new Relay(this.#pool, this.tables, channel, options);
  }

  /**
   * Handles one delivery (does not acknowledge it): memlock pre-filter, then
   * sequence check, row lease, `fn` and sequence advance in PostgreSQL.
   * Resolves with the outcome; `ack` says whether to acknowledge the message
   * or requeue it. Never rejects for task or infrastructure failures.
   */
  handle<T>(message: MessageLike, fn: TaskHandler<T>): Promise<HandleResult<T>> {
    return handleDelivery(this.#cfg, message, fn);
  }

  /**
   * Consumes `queue` on `channel`: `handle()`s every delivery, acknowledges
   * applied and dropped ones, and requeues deferred ones after `retryDelayMs`.
   */
  async consume<T>(
    channel: ChannelLike,
    queue: string,
    fn: TaskHandler<T>,
    options: ConsumeOptions<T> = {},
  ): Promise<Consumer> {
    if (typeof fn !== 'function') throw new TypeError('Expected `fn` to be a function');
    const prefetch = checkNumber('prefetch', options.prefetch ?? 16, 1, 65_535, true);
    const inFlight = new Set<Promise<void>>();
    const waiting = new Map<NodeJS.Timeout, MessageLike>();
    // A closed channel throws on ack/nack; the broker redelivers those messages anyway.
    const settle = (message: MessageLike, ack: boolean): void => {
      try {
        if (ack) channel.ack(message);
        else channel.nack(message, false, true);
      } catch {}
    };
    const deliver = async (message: MessageLike): Promise<void> => {
      const r = await this.handle(message, fn);
      try {
        options.onResult?.(r);
      } catch {}
      if (r.ack || this.#retryDelayMs === 0) return settle(message, r.ack);
      const timer = setTimeout(() => {
        waiting.delete(timer);
        settle(message, false);
      }, this.#retryDelayMs);
      waiting.set(timer, message);
    };
    await channel.prefetch(prefetch);
    const { consumerTag } = await channel.consume(queue, (message) => {
      if (message === null) return; // cancelled by the broker
      const p = deliver(message).catch(() => settle(message, false));
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
    });
    return {
      consumerTag,
      async stop() {
        await channel.cancel(consumerTag).catch(() => undefined);
        await Promise.all(inFlight);
        for (const [timer, message] of waiting) {
          clearTimeout(timer);
          settle(message, false);
        }
        waiting.clear();
      },
    };
  }
}
