/**
 * `LockClient` over memlock's own connections: one `Connection` per server,
 * keys placed on a consistent hash ring (no failover: a lock key never moves
 * to another server while its own is down), one deadline timer for all
 * requests, and the binary or meta codec.
 */
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import type { Entry, LockClient, WriteResult } from '../client.js';
import { MemcacheUnavailableError } from '../errors.js';
import { BinaryCodec } from './binary-codec.js';
import type { Codec, ProtocolName, Reply } from './codec.js';
import { Connection, type ConnectionSink } from './connection.js';
import { HashRing } from './hashring.js';
import { MetaCodec } from './meta-codec.js';
import { Deadlines, settle, timedOut, unavailable, type Op, type Pending } from './requests.js';
import { parseServer, tlsFor } from './servers.js';

const MAX_SEQ = 0x7fff_ffff;

/** Options of `MemcacheLockClient`. */
export interface MemcacheLockClientOptions {
  /** 'host:port' or 'user:pass@host:port' names. */
  readonly servers: readonly string[];
  /** Wire protocol. @default 'binary' */
  readonly protocol?: ProtocolName | undefined;
  /** TLS: `true` = system CAs, servername = host; an object goes to `tls.connect`. @default false */
  readonly tls?: boolean | TlsConnectionOptions | undefined;
  /** SASL PLAIN username (binary protocol only). */
  readonly username?: string | undefined;
  /** SASL PLAIN password (binary protocol only). */
  readonly password?: string | undefined;
  /** Deadline of each operation, and of each connect. */
  readonly timeoutMs: number;
  /** Whether idle connections keep the process alive. @default true */
  readonly ref?: boolean | undefined;
}

/** `LockClient` on memlock's own `net`/`tls` connections (binary or meta protocol). */
export class MemcacheLockClient implements LockClient {
  readonly #connections: Connection[];
  readonly #ring: HashRing;
  readonly #codec: Codec;
  readonly #deadlines: Deadlines;
  #seq = 0;
  #closed = false;

  /** @throws {RangeError} on a bad server spec, or SASL credentials with the meta protocol. */
  constructor(options: MemcacheLockClientOptions) {
    const protocol = options.protocol ?? 'binary';
    this.#codec = protocol === 'meta' ? new MetaCodec() : new BinaryCodec();
    this.#deadlines = new Deadlines(options.timeoutMs, (expired) => this.#expire(expired));
    const sink: ConnectionSink = {
      reply: (pending, reply, conn) => this.#reply(pending, reply, conn),
      fail: (pending, cause, mayHaveApplied) => this.#fail(pending, cause, mayHaveApplied),
    };
    const specs = options.servers.map(parseServer);
    if (specs.length === 0) throw new RangeError('Expected at least one memcache server');
    this.#connections = specs.map((spec) => {
      const username = spec.username ?? options.username;
      if (username !== undefined && protocol === 'meta') {
        throw new RangeError(
          "Expected `protocol` to be 'binary' with SASL credentials (memcached has SASL only on the binary protocol)",
        );
      }
      return new Connection(
        {
          host: spec.host,
          port: spec.port,
          codec: this.#codec,
          tls: tlsFor(spec.host, options.tls),
          username,
          password: spec.password ?? options.password,
          connectTimeoutMs: options.timeoutMs,
          ref: options.ref ?? true,
        },
        sink,
      );
    });
    this.#ring = new HashRing(this.#connections.map((c) => c.name));
  }

  /** Wire protocol and transport, e.g. 'binary' or 'meta+tls'. */
  get label(): string {
    return (this.#connections[0] as Connection).label;
  }

  #connection(key: string): Connection {
    return this.#connections[this.#ring.lookup(key)] as Connection;
  }

  #nextSeq(): number {
    const seq = this.#seq >= MAX_SEQ ? 1 : this.#seq + 1;
    this.#seq = seq;
    return seq;
  }

  #reply(pending: Pending, reply: Reply, conn: number): void {
    const connection = pending.owner as Connection;
    this.#deadlines.finish(pending);
    settle(pending, reply, conn, () => ({ server: connection.name, label: connection.label }));
  }

  #fail(pending: Pending, cause: unknown, mayHaveApplied: boolean): void {
    const connection = pending.owner as Connection;
    this.#deadlines.finish(pending);
    pending.reject(unavailable('memcache connection failed', connection.name, connection.label, cause, mayHaveApplied));
  }

  #expire(expired: Pending[]): void {
    const broken = new Set<Connection>();
    for (const pending of expired) {
      const connection = pending.owner as Connection;
      broken.add(connection);
      pending.reject(
        unavailable(
          `memcache operation timed out after ${this.#deadlines.timeoutMs} ms`,
          connection.name,
          connection.label,
          timedOut(),
          pending.sent,
        ),
      );
    }
    for (const connection of broken) connection.drop(new Error('connection dropped after a request on it timed out'));
  }

  /** One request: a pending entry with its deadline, then the write. */
  #send(connection: Connection, op: Op, seq: number, buf: Buffer): Promise<WriteResult | Entry | null> {
    return new Promise((resolve, reject) => {
      const pending = this.#deadlines.create(op, seq, connection, resolve, reject);
      connection.send(pending, buf);
    });
  }

  #closedError(connection: Connection): Promise<never> {
    return Promise.reject(
      new MemcacheUnavailableError('memlock client is closed', { server: connection.name, mayHaveApplied: false }),
    );
  }

  // add, get, casSet and casDelete are not async: each is one request on the
  // hot path, and returning #send's promise saves a promise and a tick.
  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const seq = this.#nextSeq();
    return this.#send(connection, 'add', seq, this.#codec.add(key, value, ttlSeconds, seq)) as Promise<WriteResult>;
  }

  async addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const addSeq = this.#nextSeq();
    const getSeq = this.#nextSeq();
    const addBuf = this.#codec.add(key, value, ttlSeconds, addSeq);
    const getBuf = this.#codec.get(key, getSeq);
    // Both requests leave in one write, answered in order.
    connection.batch();
    const addP = this.#send(connection, 'add', addSeq, addBuf) as Promise<WriteResult>;
    const getP = this.#send(connection, 'get', getSeq, getBuf) as Promise<Entry | null>;
    const [add, entry] = await Promise.allSettled([addP, getP]);
    if (add.status === 'rejected') throw add.reason;
    // A granted add stands whatever became of the read (it only matters
    // when the add is refused): throwing here would leave our own entry
    // blocking the key for a whole lease.
    if (add.value.status === 'ok') return { add: add.value, entry: entry.status === 'fulfilled' ? entry.value : null };
    if (entry.status === 'rejected') throw entry.reason;
    return { add: add.value, entry: entry.value };
  }

  get(key: string): Promise<Entry | null> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const seq = this.#nextSeq();
    return this.#send(connection, 'get', seq, this.#codec.get(key, seq)) as Promise<Entry | null>;
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const seq = this.#nextSeq();
    return this.#send(
      connection,
      'set',
      seq,
      this.#codec.casSet(key, value, ttlSeconds, cas, seq),
    ) as Promise<WriteResult>;
  }

  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const seq = this.#nextSeq();
    return this.#send(connection, 'delete', seq, this.#codec.casDelete(key, cas, seq)) as Promise<WriteResult>;
  }

  isCurrent(key: string, conn: number): boolean {
    return this.#connection(key).isOpen(conn);
  }

  serverOf(key: string): string {
    return this.#connection(key).name;
  }

  /** Fails what is pending and closes every connection; resolves once the sockets are gone. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#connections.map((c) => c.close(new Error('memlock client closed'))));
    for (const pending of this.#deadlines.drain()) {
      pending.reject(
        new MemcacheUnavailableError('memlock client closed', {
          server: (pending.owner as Connection).name,
          mayHaveApplied: pending.sent,
        }),
      );
    }
  }
}
