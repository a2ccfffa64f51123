/**
 * The outbox relay: publishes committed outbox rows to RabbitMQ and marks
 * them sent. At least once: a batch is marked sent only after the broker
 * confirmed every message of it, in the same transaction that locked the
 * rows; a relay killed between the broker's confirm and that commit leaves
 * the rows unsent, so they are published again (the sequence check makes the
 * copies harmless). `FOR UPDATE SKIP LOCKED` lets several relays share one
 * outbox without publishing the same row at the same time.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeTask, type Json } from './schedule.js';
import { publish, taskChannels } from './hooks.js';
import type { ConfirmChannelLike, PoolLike } from './ports.js';
import type { Tables } from './schema.js';

/** Options of `tasks.relay()`. */
export interface RelayOptions {
  /** Exchange to publish to. @default '' (the default exchange: `routingKey` names the queue) */
  readonly exchange?: string;
  /** Routing key (with the default exchange, the queue name). */
  readonly routingKey: string;
  /** Rows per batch (one transaction, one confirm wait). 1..10000. @default 100 */
  readonly batchSize?: number;
  /** Pause between polls when the outbox is empty. @default 100 */
  readonly pollMs?: number;
  /** Pause after a failed batch. @default 1000 */
  readonly errorDelayMs?: number;
  /**
   * Called after the broker confirmed a batch and before it is marked sent
   * (fault injection in tests: a crash here is the case the outbox must survive).
   */
  readonly afterPublish?: ((rows: readonly RelayedRow[]) => void | Promise<void>) | undefined;
}

/** A row as published. */
export interface RelayedRow {
  readonly outboxId: string;
  readonly entityId: string;
  readonly seq: number;
  readonly name: string;
  readonly payload: Json;
  /** The message body that was published. */
  readonly content: Buffer;
}

function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value))
    throw new TypeError(`Expected \`${name}\` to be an integer, got ${typeof value}`);
  if (value < min || value > max)
    throw new RangeError(`Expected \`${name}\` to be between ${min} and ${max}, got ${value}`);
  return value;
}

/**
 * Publishes outbox rows after commit; see the module comment. It does not
 * reconnect: when its channel closes, batches fail (and are retried, on
 * `memlock:tasks:relay-error`) until you stop it and start one on a new channel.
 */
export class Relay {
  readonly #pool: PoolLike;
  readonly #t: Tables;
  readonly #channel: ConfirmChannelLike;
  readonly #exchange: string;
  readonly #routingKey: string;
  readonly #batchSize: number;
  readonly #pollMs: number;
  readonly #errorDelayMs: number;
  readonly #afterPublish: RelayOptions['afterPublish'];
  #stop: AbortController | undefined;
  #loop: Promise<void> | undefined;

  /** @internal use `tasks.relay()`. */
  constructor(pool: PoolLike, t: Tables, channel: ConfirmChannelLike, options: RelayOptions) {
    if (typeof channel?.publish !== 'function' || typeof channel.waitForConfirms !== 'function') {
      throw new TypeError('Expected `channel` to be a confirm channel (amqplib createConfirmChannel())');
    }
    if (typeof options?.routingKey !== 'string') throw new TypeError('Expected `routingKey` to be a string');
    const exchange = options.exchange ?? '';
    if (typeof exchange !== 'string') throw new TypeError('Expected `exchange` to be a string');
    this.#batchSize = checkInt('batchSize', options.batchSize ?? 100, 1, 10_000);
    this.#pollMs = checkInt('pollMs', options.pollMs ?? 100, 1, 3_600_000);
    this.#errorDelayMs = checkInt('errorDelayMs', options.errorDelayMs ?? 1000, 0, 3_600_000);
    this.#pool = pool;
    this.#t = t;
    this.#channel = channel;
    this.#exchange = exchange;
    this.#routingKey = options.routingKey;
    this.#afterPublish = options.afterPublish;
  }

  /**
   * Publishes one batch of unsent rows and marks them sent. Resolves with the
   * number of rows published (0: nothing to do); rejects when the database or
   * the broker fails (the rows stay unsent).
   */
  async runOnce(): Promise<number> {
    const client = await this.#pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const { rows } = await client.query<{ id: string; entity_id: string; seq: string; name: string; payload: Json }>(
        `SELECT id, entity_id, seq, name, payload FROM ${this.#t.outbox}
         WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [this.#batchSize],
      );
      if (rows.length === 0) {
        await client.query('COMMIT');
        return 0;
      }
      const published: RelayedRow[] = rows.map((r) => {
        const task = { entityId: r.entity_id, seq: Number(r.seq), name: r.name, payload: r.payload };
        return { outboxId: r.id, ...task, content: encodeTask(task) };
      });
      for (const row of published) {
        this.#channel.publish(this.#exchange, this.#routingKey, row.content, {
          persistent: true,
          contentType: 'application/json',
          messageId: `${row.entityId}:${row.seq}`,
        });
      }
      // Rejects if the broker nacked any of them: the transaction rolls back, the rows stay unsent.
      await this.#channel.waitForConfirms();
      await this.#afterPublish?.(published);
      await client.query(`UPDATE ${this.#t.outbox} SET sent_at = now() WHERE id = ANY($1::bigint[])`, [
        published.map((r) => r.outboxId),
      ]);
      await client.query('COMMIT');
      return published.length;
    } catch (err) {
      await client.query('ROLLBACK').catch((rollbackError: unknown) => {
        broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
      });
      throw err;
    } finally {
      // A connection whose ROLLBACK failed is discarded, not handed back for reuse.
      client.release(broken);
    }
  }

  /** Starts publishing in the background until `stop()`. Errors are published on `memlock:tasks:relay-error` and retried. */
  start(): void {
    if (this.#loop !== undefined) return;
    const stop = new AbortController();
    this.#stop = stop;
    this.#loop = this.#run(stop.signal);
  }

  async #run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let delay = 0;
      try {
        const n = await this.runOnce();
        if (n < this.#batchSize) delay = this.#pollMs;
      } catch (error) {
        publish(taskChannels.relayError, () => ({ error }));
        delay = this.#errorDelayMs;
      }
      if (delay > 0) await sleep(delay, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Stops the background loop; resolves once the batch in flight (if any) finished. */
  async stop(): Promise<void> {
    this.#stop?.abort();
    await this.#loop;
    this.#loop = undefined;
  }
}
