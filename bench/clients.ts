// Client factories with the settings every scenario wants, and a Resources
// bag so each scenario closes exactly what it opened, even when it fails.

import { randomBytes } from 'node:crypto';
import { Client as MemjsClient } from 'memjs';
import type { Redis } from 'ioredis';
import { Redlock, type Settings as RedlockSettings } from '@sesamecare-oss/redlock';
import pg from 'pg';
import type { MemlockInstance, MemlockModule, MemlockOptions } from './lib.js';
import { newRedis } from './servers.js';

const silent = { log: (): void => undefined };

/**
 * A raw memjs client, configured like a lock transport must be: no blind
 * re-sends (retries: 0), a deadline per operation, no failover.
 */
export function newMemjs(servers: string): MemjsClient {
  return MemjsClient.create(servers, { retries: 0, timeout: 0.5, failover: false, logger: silent });
}

/** A value of the size memlock stores (client id, token, time), so the raw baseline moves the same bytes. */
export function lockValue(clientId: string): string {
  return `${clientId}:${randomBytes(12).toString('hex')}:${Date.now()}`;
}

/** Runs `fn` holding `resource` through redlock: acquire, run, release (a plain section, without using()'s automatic extension). */
export async function redlockSection(redlock: Redlock, resource: string, ttlMs: number, fn: () => Promise<void>): Promise<void> {
  const lock = await redlock.acquire([resource], ttlMs);
  try {
    await fn();
  } finally {
    await lock.release();
  }
}

export class Resources {
  private readonly closers: (() => Promise<unknown> | unknown)[] = [];

  defer(close: () => Promise<unknown> | unknown): void {
    this.closers.push(close);
  }

  memjs(servers: string): MemjsClient {
    const client = newMemjs(servers);
    this.defer(() => client.close());
    return client;
  }

  memlock(mod: MemlockModule, options: MemlockOptions): MemlockInstance {
    const instance = new mod.Memlock(options);
    this.defer(() => instance.close());
    return instance;
  }

  async redis(url: string): Promise<Redis> {
    const client = newRedis(url);
    client.on('error', () => undefined);
    this.defer(() => client.quit().catch(() => client.disconnect()));
    await client.connect();
    return client;
  }

  /**
   * redlock on one Redis. It emits 'error' for every refused or failed vote;
   * an EventEmitter 'error' without a listener throws, which inside redlock
   * becomes an unhandled rejection, so a listener is always attached.
   */
  async redlock(url: string, settings: RedlockSettings = {}): Promise<{ redlock: Redlock; client: Redis }> {
    const client = await this.redis(url);
    const redlock = new Redlock([client], settings);
    redlock.on('error', () => undefined);
    return { redlock, client };
  }

  pool(config: pg.PoolConfig, max: number): pg.Pool {
    const pool = new pg.Pool({ ...config, max });
    // An idle client's error (server restart) is emitted on the pool; it must not crash the run.
    pool.on('error', () => undefined);
    this.defer(() => pool.end());
    return pool;
  }

  /** Closes in reverse order of creation; close errors are irrelevant to the figures. */
  async close(): Promise<void> {
    while (this.closers.length > 0) {
      const close = this.closers.pop();
      try {
        await close?.();
      } catch {
        // already closed or server gone
      }
    }
  }
}

// --------------------------------------------------------------- PostgreSQL

export interface TxCounters {
  /** Every BEGIN sent: committed and aborted transactions alike. */
  dbTx: number;
  /** Transactions rolled back on a serialization failure (SQLSTATE 40001) and retried. */
  aborts: number;
}

// Bounds the retry loop: a transaction that loses this often counts as a failed operation.
const MAX_TX_ATTEMPTS = 1000;

/**
 * Runs `body` in a REPEATABLE READ transaction, retrying on serialization
 * failure as an application must; counts every attempt.
 */
export async function repeatableRead<T>(client: pg.PoolClient, counters: TxCounters, body: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    counters.dbTx++;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const out = await body(client);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      if ((err as { code?: unknown }).code !== '40001') throw err;
      counters.aborts++;
      if (attempt >= MAX_TX_ATTEMPTS) throw err;
    }
  }
}
