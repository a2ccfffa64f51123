/**
 * `LockClient` over memlock's own connections: one `Connection` per server,
 * keys placed on a consistent hash ring (no failover: a lock key never moves
 * to another server while its own is down), one deadline timer for all
 * requests, and the binary, meta or classic text codec.
 *
 * The text protocol's stored replies carry no CAS, so there an add or a CAS
 * write goes out with a `gets` of the same key in one write: still one round
 * trip, and the read, answered after the write, yields the new CAS when it
 * finds the value just written.
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
import { TextCodec } from './text-codec.js';

const MAX_SEQ = 0x7fff_ffff;

/**
 * Connection generation of a write whose new CAS is unknown (text protocol:
 * the read-back found another value, or none). No connection ever has it,
 * so `isCurrent` is false and the lock protocol reads the entry back before
 * it uses that CAS.
 */
export const UNKNOWN_CAS_CONN = -1;

function codecFor(protocol: ProtocolName): Codec {
  if (protocol === 'meta') return new MetaCodec();
  if (protocol === 'text') return new TextCodec();
  return new BinaryCodec();
}

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

/** `LockClient` on memlock's own `net`/`tls` connections (binary, meta or text protocol). */
export class MemcacheLockClient implements LockClient {
  readonly #connections: Connection[];
  readonly #ring: HashRing;
  readonly #codec: Codec;
  readonly #deadlines: Deadlines;
  #seq = 0;
  #closed = false;

  /** @throws {RangeError} on a bad server spec, or SASL credentials with the meta or text protocol. */
  constructor(options: MemcacheLockClientOptions) {
    const protocol = options.protocol ?? 'binary';
    this.#codec = codecFor(protocol);
    this.#deadlines = new Deadlines(options.timeoutMs, (expired) => this.#expire(expired));
    const sink: ConnectionSink = {
      reply: (pending, reply, conn) => this.#reply(pending, reply, conn),
      fail: (pending, cause, mayHaveApplied) => this.#fail(pending, cause, mayHaveApplied),
    };
    const specs = options.servers.map(parseServer);
    if (specs.length === 0) throw new RangeError('Expected at least one memcache server');
    this.#connections = specs.map((spec) => {
      const username = spec.username ?? options.username;
      if (username !== undefined && protocol !== 'binary') {
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

  /** Wire protocol and transport, e.g. 'binary', 'meta+tls' or 'text'. */
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

  /**
   * A write and a read of its key, in one write on one connection (one
   * round trip), answered in order. Settled results: the write's error must
   * win over the read's, so neither is thrown here.
   */
  async #writeThenGet(
    connection: Connection,
    op: Op,
    key: string,
    encode: (seq: number) => Buffer,
  ): Promise<[PromiseSettledResult<WriteResult>, PromiseSettledResult<Entry | null>]> {
    const writeSeq = this.#nextSeq();
    const getSeq = this.#nextSeq();
    const writeBuf = encode(writeSeq);
    const getBuf = this.#codec.get(key, getSeq);
    connection.batch();
    const write = this.#send(connection, op, writeSeq, writeBuf) as Promise<WriteResult>;
    const read = this.#send(connection, 'get', getSeq, getBuf) as Promise<Entry | null>;
    return Promise.allSettled([write, read]);
  }

  /**
   * Text protocol: a write with its CAS taken from the read that followed
   * it. The read found the value just written (values are unique per
   * acquisition): that entry's CAS is the write's, unless it is `previous`,
   * the CAS the write replaced (a proxy that ran the read first). Otherwise
   * (another value, none, a failed read) the write stands with its CAS unknown.
   */
  async #writeWithCas(
    connection: Connection,
    op: Op,
    key: string,
    value: Buffer,
    previous: bigint | undefined,
    encode: (seq: number) => Buffer,
  ): Promise<WriteResult> {
    const [write, read] = await this.#writeThenGet(connection, op, key, encode);
    if (write.status === 'rejected') throw write.reason;
    return withReadCas(write.value, read, value, previous);
  }

  // add, get, casSet and casDelete are not async: each is one request on the
  // hot path, and returning #send's promise saves a promise and a tick.
  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    if (!this.#codec.writeReturnsCas) {
      return this.#writeWithCas(connection, 'add', key, value, undefined, (seq) =>
        this.#codec.add(key, value, ttlSeconds, seq),
      );
    }
    const seq = this.#nextSeq();
    return this.#send(connection, 'add', seq, this.#codec.add(key, value, ttlSeconds, seq)) as Promise<WriteResult>;
  }

  async addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const connection = this.#connection(key);
    if (this.#closed) return this.#closedError(connection);
    const [add, entry] = await this.#writeThenGet(connection, 'add', key, (seq) =>
      this.#codec.add(key, value, ttlSeconds, seq),
    );
    if (add.status === 'rejected') throw add.reason;
    // A granted add stands whatever became of the read (it only matters
    // when the add is refused): throwing here would leave our own entry
    // blocking the key for a whole lease. The text protocol takes the add's
    // CAS from that read (unknown when the read failed).
    if (add.value.status === 'ok') {
      const granted = this.#codec.writeReturnsCas ? add.value : withReadCas(add.value, entry, value, undefined);
      return { add: granted, entry: fulfilled(entry) };
    }
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
    if (!this.#codec.writeReturnsCas) {
      return this.#writeWithCas(connection, 'set', key, value, cas, (seq) =>
        this.#codec.casSet(key, value, ttlSeconds, cas, seq),
      );
    }
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

/** A stored write's result with the CAS of the read that followed it (see `#writeWithCas`). */
function withReadCas(
  write: WriteResult,
  read: PromiseSettledResult<Entry | null>,
  value: Buffer,
  previous: bigint | undefined,
): WriteResult {
  if (write.status !== 'ok') return write;
  const entry = fulfilled(read);
  if (entry !== null && entry.cas !== previous && entry.value.equals(value)) {
    return { status: 'ok', cas: entry.cas, conn: entry.conn };
  }
  return { status: 'ok', cas: 0n, conn: UNKNOWN_CAS_CONN };
}

function fulfilled(read: PromiseSettledResult<Entry | null>): Entry | null {
  return read.status === 'fulfilled' ? read.value : null;
}
