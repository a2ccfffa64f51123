/**
 * `LockClient` over a caller's own memjs client (the `client` option), for
 * apps that already have one. memlock is then a guest on the caller's
 * connections, and behaves like one:
 *
 * - it only uses memjs's public `Server` methods (`write`, `onResponse`,
 *   `onError`, the `authenticated` event) and never patches memjs;
 * - it never calls `error()` or `close()` on the caller's servers and never
 *   touches their sockets: a memlock operation that times out fails alone,
 *   and its late reply, if any, is consumed by memjs's bookkeeping as usual,
 *   so the caller's own requests on the same connection are not disturbed;
 * - requests go straight to the key's server, never through `Client#perform`,
 *   so nothing is re-sent or failed over whatever the client's options;
 * - request ids share the client's counter (`seq`) and stay in 1..2^31-1,
 *   so they never collide with the client's own and never overflow memjs's
 *   32-bit signed field.
 *
 * Limits: memjs speaks the binary protocol only and has no TLS; its own
 * socket timeout (its `timeout` option) still applies to memlock's requests.
 * memjs is not imported: the caller's client object is used as given.
 */
import type { Entry, LockClient, WriteResult } from '../client.js';
import { MemcacheUnavailableError } from '../errors.js';
import { keyRequest, OP_ADD, OP_DELETE, OP_GET, OP_SET, replyStatus, storeRequest } from './binary-codec.js';
import { emptyReply } from './codec.js';
import { HashRing } from './hashring.js';
import { Deadlines, settle, timedOut, unavailable, type Op, type Pending } from './requests.js';

/** The part of a memjs response memlock reads. */
export interface MemjsResponseLike {
  readonly header: { readonly status?: number; readonly cas?: Buffer; readonly opaque?: number };
  readonly val: Buffer;
}

/** The public methods of a memjs `Server` memlock uses (structural: memjs's types are not needed). */
export interface MemjsServerLike {
  readonly host: string;
  readonly port: number | string;
  /** memjs sets it once a connection is up (after SASL). */
  readonly connected?: boolean;
  write(blob: Uint8Array): void;
  onResponse(seq: number, fn: (response: MemjsResponseLike) => void): void;
  onError(seq: number, fn: (error: Error) => void): void;
  on(event: 'authenticated', listener: () => void): unknown;
  removeListener(event: 'authenticated', listener: () => void): unknown;
}

/** A memjs `Client` (memjs >= 1.3), as far as memlock uses it. */
export interface MemjsClientLike {
  readonly servers: readonly MemjsServerLike[];
  /** memjs's request counter, shared so request ids never collide. */
  seq: number;
}

const MAX_SEQ = 0x7fff_ffff;
const LABEL = 'binary via memjs';

/**
 * Per-server state: the caller's server, its name and connection generation.
 * The generation moves on when memjs connects again ('authenticated') and
 * when one of our requests fails with a connection error: memjs's
 * `connected` stays `true` after `Server.error()` until the socket's 'close'
 * event, and a CAS taken over the dead connection must not be used on the
 * next one without the re-read that the restart rule requires.
 */
class Node {
  gen = 0;
  readonly name: string;
  readonly onConnect = (): void => {
    this.gen++;
  };
  readonly onConnectionError = (): void => {
    this.gen++;
  };

  constructor(readonly server: MemjsServerLike) {
    this.name = `${server.host}:${server.port}`;
    server.on('authenticated', this.onConnect);
  }

  isOpen(gen: number): boolean {
    return this.gen === gen && this.server.connected === true;
  }
}

/** `LockClient` on a caller's memjs client; see the module comment. */
export class MemjsClientAdapter implements LockClient {
  readonly #client: MemjsClientLike;
  readonly #nodes: Node[];
  readonly #ring: HashRing;
  readonly #deadlines: Deadlines;
  #closed = false;

  constructor(client: MemjsClientLike, options: { readonly timeoutMs: number }) {
    this.#client = client;
    if (client.servers.length === 0) throw new RangeError('Expected the memjs `client` to have at least one server');
    this.#nodes = client.servers.map((server) => new Node(server));
    this.#ring = new HashRing(this.#nodes.map((n) => n.name));
    this.#deadlines = new Deadlines(options.timeoutMs, (expired) => {
      for (const pending of expired) {
        const node = pending.owner as Node;
        // Only this request fails. The caller's connection is left alone:
        // memjs's own timeout decides about it, as for the caller's requests.
        pending.reject(
          unavailable(`memcache operation timed out after ${options.timeoutMs} ms`, node.name, LABEL, timedOut(), true),
        );
      }
    });
  }

  #node(key: string): Node {
    return this.#nodes[this.#ring.lookup(key)] as Node;
  }

  #nextSeq(): number {
    const current = this.#client.seq;
    const seq = current >= 0 && current < MAX_SEQ ? current + 1 : 1;
    this.#client.seq = seq;
    return seq;
  }

  #send(key: string, op: Op, build: (seq: number) => Buffer): Promise<WriteResult | Entry | null> {
    const node = this.#node(key);
    if (this.#closed) {
      return Promise.reject(
        new MemcacheUnavailableError('memlock client is closed', { server: node.name, mayHaveApplied: false }),
      );
    }
    const seq = this.#nextSeq();
    const buf = build(seq);
    return new Promise((resolve, reject) => {
      const pending = this.#deadlines.create(op, seq, node, resolve, reject);
      // memjs keeps these callbacks until the reply (or its own error) comes,
      // even after a timeout here: its timeout bookkeeping needs them.
      node.server.onResponse(seq, (response) => this.#reply(pending, response, node));
      node.server.onError(seq, (error) => {
        // memjs fails every pending request of a connection it drops: from
        // here on, a CAS read over that connection is stale.
        node.onConnectionError();
        if (pending.done) return;
        this.#deadlines.finish(pending);
        reject(unavailable('memcache connection failed', node.name, LABEL, error, true));
      });
      pending.sent = true;
      node.server.write(buf);
    });
  }

  #reply(pending: Pending, response: MemjsResponseLike, node: Node): void {
    if (pending.done) return;
    this.#deadlines.finish(pending);
    const reply = emptyReply();
    const status = response.header.status ?? 0;
    reply.status = replyStatus(status);
    reply.cas = response.header.cas?.readBigUInt64BE(0) ?? 0n;
    reply.code = reply.status === 'error' ? status : 0;
    reply.message =
      reply.status === 'error' ? response.val.toString('utf8', 0, 200) || `status 0x${status.toString(16)}` : '';
    // memjs hands out a slice of its receive buffer: copy what is kept.
    reply.value = reply.status === 'ok' && response.val.length > 0 ? Buffer.from(response.val) : reply.value;
    settle(pending, reply, node.gen, () => ({ server: node.name, label: LABEL }));
  }

  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    return this.#send(key, 'add', (seq) =>
      storeRequest(OP_ADD, key, value, ttlSeconds, 0n, seq),
    ) as Promise<WriteResult>;
  }

  async addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const addP = this.add(key, value, ttlSeconds);
    const getP = this.get(key);
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
    return this.#send(key, 'get', (seq) => keyRequest(OP_GET, key, 0n, seq)) as Promise<Entry | null>;
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult> {
    return this.#send(key, 'set', (seq) =>
      storeRequest(OP_SET, key, value, ttlSeconds, cas, seq),
    ) as Promise<WriteResult>;
  }

  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    return this.#send(key, 'delete', (seq) => keyRequest(OP_DELETE, key, cas, seq)) as Promise<WriteResult>;
  }

  isCurrent(key: string, conn: number): boolean {
    return this.#node(key).isOpen(conn);
  }

  serverOf(key: string): string {
    return this.#node(key).name;
  }

  /** Fails memlock's pending requests and removes its listeners; the caller's client stays open. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    for (const node of this.#nodes) node.server.removeListener('authenticated', node.onConnect);
    for (const pending of this.#deadlines.drain()) {
      pending.reject(
        new MemcacheUnavailableError('memlock client closed', {
          server: (pending.owner as Node).name,
          mayHaveApplied: true,
        }),
      );
    }
    return Promise.resolve();
  }
}
