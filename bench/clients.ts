// Client factories with the settings every scenario wants, and a Resources
// bag so each scenario closes exactly what it opened, even when it fails.

import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { Client as MemjsClient } from 'memjs';
import type { Redis } from 'ioredis';
import { Redlock, type Settings as RedlockSettings } from '@sesamecare-oss/redlock';
import pg from 'pg';
import type { MemlockInstance, MemlockModule, MemlockOptions } from './lib.js';
import { newRedis, parseServers } from './servers.js';
import { makePki, startTlsMemcached } from '../test/helpers/tls.js';

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
export async function redlockSection(
  redlock: Redlock,
  resource: string,
  ttlMs: number,
  fn: () => Promise<void>,
): Promise<void> {
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

  /** The raw-socket floor client (see `RawSocketClient`), connected. */
  async rawSocket(servers: string): Promise<RawSocketClient> {
    const client = await RawSocketClient.connect(servers);
    this.defer(() => client.close());
    return client;
  }

  /**
   * A private `memcached -Z` with a throwaway CA (the TLS test harness), for
   * the `memlock (tls)` rows: its address and the CA to trust.
   */
  async tlsMemcached(): Promise<{ servers: string; ca: Buffer }> {
    const pki = await makePki();
    this.defer(() => pki.remove());
    const server = await startTlsMemcached(pki);
    this.defer(() => server.stop());
    return { servers: server.address, ca: pki.ca };
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
export async function repeatableRead<T>(
  client: pg.PoolClient,
  counters: TxCounters,
  body: (c: pg.PoolClient) => Promise<T>,
): Promise<T> {
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

// ------------------------------------------------------------ raw-socket floor

/**
 * The floor a memcache lock client can reach in Node.js: one `net.Socket`
 * (Nagle off), binary-protocol requests built by hand, writes corked per
 * tick while others are in flight, replies matched first-in first-out. No deadlines, no generation
 * tracking, no error recovery: nothing a real client could do without.
 */
export class RawSocketClient {
  readonly #socket: net.Socket;
  readonly #waiting: Array<(status: number) => void> = [];
  #head = 0;
  #partial: Buffer | undefined;
  #corked = false;
  #seq = 0;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (data: Buffer) => this.#onData(data));
    socket.on('error', () => undefined);
  }

  static connect(servers: string): Promise<RawSocketClient> {
    const [target] = parseServers(servers);
    if (target === undefined) return Promise.reject(new Error(`no server in '${servers}'`));
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: target.host, port: target.port, noDelay: true }, () =>
        resolve(new RawSocketClient(socket)),
      );
      socket.once('error', reject);
    });
  }

  /** add with flags 0; resolves with the binary status (0 = stored). */
  add(key: string, value: string, ttlSeconds: number): Promise<number> {
    const k = Buffer.byteLength(key);
    const v = Buffer.byteLength(value);
    const buf = this.#header(0x02, k, 8, 8 + k + v);
    buf.writeUInt32BE(0, 24);
    buf.writeUInt32BE(ttlSeconds, 28);
    buf.write(key, 32);
    buf.write(value, 32 + k);
    return this.#send(buf);
  }

  /** delete; resolves with the binary status. */
  delete(key: string): Promise<number> {
    return this.#keyOnly(0x04, key);
  }

  /** get; resolves with the binary status (1 = not found). */
  get(key: string): Promise<number> {
    return this.#keyOnly(0x00, key);
  }

  close(): void {
    this.#socket.destroy();
  }

  #keyOnly(opcode: number, key: string): Promise<number> {
    const k = Buffer.byteLength(key);
    const buf = this.#header(opcode, k, 0, k);
    buf.write(key, 24);
    return this.#send(buf);
  }

  #header(opcode: number, keyLength: number, extras: number, body: number): Buffer {
    const buf = Buffer.allocUnsafe(24 + body);
    buf.fill(0, 0, 24);
    buf[0] = 0x80;
    buf[1] = opcode;
    buf.writeUInt16BE(keyLength, 2);
    buf[4] = extras;
    buf.writeUInt32BE(body, 8);
    this.#seq = (this.#seq + 1) & 0x7fff_ffff;
    buf.writeUInt32BE(this.#seq, 12);
    return buf;
  }

  #send(buf: Buffer): Promise<number> {
    return new Promise((resolve) => {
      this.#waiting.push(resolve);
      // A lone request goes out at once; with others in flight, the writes of
      // this tick are corked into one writev.
      if (!this.#corked && this.#waiting.length - this.#head > 1) {
        this.#corked = true;
        this.#socket.cork();
        process.nextTick(() => {
          this.#corked = false;
          this.#socket.uncork();
        });
      }
      this.#socket.write(buf);
    });
  }

  #onData(data: Buffer): void {
    const buf = this.#partial === undefined ? data : Buffer.concat([this.#partial, data]);
    this.#partial = undefined;
    let offset = 0;
    while (buf.length - offset >= 24) {
      const end = offset + 24 + buf.readUInt32BE(offset + 8);
      if (end > buf.length) break;
      const resolve = this.#waiting[this.#head++];
      if (this.#head === this.#waiting.length) {
        this.#waiting.length = 0;
        this.#head = 0;
      }
      resolve?.(buf.readUInt16BE(offset + 6));
      offset = end;
    }
    if (offset < buf.length) this.#partial = Buffer.from(buf.subarray(offset));
  }
}
