/**
 * LockClient over memjs's connections. memjs 1.3.2's high-level calls expose
 * no CAS, re-send requests on socket errors (`retries`), move keys to other
 * servers on failure (`failover`), can leave a request pending forever when a
 * server closes the connection without answering, and its request counter
 * throws after 2^31 requests. So this adapter uses memjs only for what it does
 * well (sockets, SASL, framing of responses) and does the rest itself:
 *
 * - builds binary-protocol requests with the CAS field in the header;
 * - writes them on the memjs `Server` directly, never through
 *   `Client#perform`, so nothing is ever re-sent or failed over, whatever
 *   the options of a caller-supplied client;
 * - puts its own deadline on every request (one timer for all of them: the
 *   deadlines are FIFO because every request has the same timeout);
 * - keeps the request id (opaque) in 1..2^31-1, sharing the counter with a
 *   caller-supplied memjs client so ids never collide on a shared connection;
 * - numbers connections (a generation bumped on every (re)connect), so the
 *   protocol can tell a CAS that may predate a server restart;
 * - places keys on a consistent hash ring (see hashring.ts);
 * - on connections it opened itself, frames requests and responses itself
 *   too (memjs's path allocates a closure, a timeout entry and two callback
 *   slots per request, and copies its whole receive buffer per chunk): a
 *   renewal then costs a header patch, one write and one map lookup.
 *   A caller-supplied client's connections stay on memjs's callbacks, which
 *   memjs's own requests on them need.
 */
import memjs from 'memjs';
import type { Client as MemjsClient } from 'memjs';
import type { Socket } from 'node:net';
import { MemcacheUnavailableError } from './errors.js';
import type { Entry, LockClient, WriteResult } from './client.js';
import { HashRing } from './hashring.js';

const OP_GET = 0x00;
const OP_SET = 0x01;
const OP_ADD = 0x02;
const OP_DELETE = 0x04;

const STATUS_OK = 0x00;
const STATUS_NOT_FOUND = 0x01;
const STATUS_EXISTS = 0x02;
const STATUS_NOT_STORED = 0x05;

const MAX_OPAQUE = 0x7fff_ffff;

const MAGIC_RESPONSE = 0x81;
const OP_SASL_LIST = 0x20;
const OP_SASL_AUTH = 0x21;
const STATUS_AUTH_ERROR = 0x20;
const EMPTY = Buffer.alloc(0);

/** The parts of memjs's (untyped) Server internals this adapter relies on. */
interface MemjsServer {
  host: string;
  port: number;
  connected: boolean;
  _socket?: Socket | undefined;
  responseCallbacks: Record<number, unknown>;
  errorCallbacks: Record<number, unknown>;
  onResponse(seq: number, fn: (response: MemjsResponse) => void): void;
  onError(seq: number, fn: (error: unknown) => void): void;
  write(buf: Buffer): void;
  error(error: unknown): void;
  timeoutSet: boolean;
  sock(sasl: boolean, go: (socket: Socket) => void): void;
  responseHandler(data: Buffer): void;
  saslAuth(): void;
  emit(event: 'authenticated'): boolean;
  on(event: 'authenticated', fn: () => void): void;
  removeListener(event: 'authenticated', fn: () => void): void;
}

interface MemjsResponse {
  header: { status: number; opcode: number; cas: Buffer };
  val: Buffer;
}

/** What a request is, to turn its response into a result without a wrapper. */
type Op = 'add' | 'set' | 'delete' | 'get';

interface Pending {
  seq: number;
  node: Node;
  op: Op;
  deadline: number;
  resolve: (result: WriteResult | Entry | null) => void;
  reject: (error: unknown) => void;
  prev: Pending | undefined;
  next: Pending | undefined;
  done: boolean;
}

/** Per-server state: the memjs Server, its name and connection generation. */
class Node {
  gen = 0;
  corked = false;
  /** Requests sent on this node and not settled yet. */
  inFlight = 0;
  readonly name: string;
  readonly onConnect: () => void;

  /** Every socket this node's server opened and that is not closed yet. */
  readonly sockets = new Set<Socket>();
  /**
   * Own framing (servers this adapter created): pending requests by opaque.
   * `undefined` on a caller's client, whose requests go through memjs's callbacks.
   */
  readonly waiting: Map<number, Pending> | undefined;
  /** An incomplete response left over from the last chunk (own framing). */
  #partial: Buffer | undefined;

  constructor(readonly server: MemjsServer, ref: boolean, owned: boolean, settled: (pending: Pending) => void) {
    this.name = `${server.host}:${server.port}`;
    if (owned) {
      this.#guardSockets();
      const waiting = new Map<number, Pending>();
      this.waiting = waiting;
      server.responseHandler = (data) => this.#onData(data, waiting, settled);
      const memjsError = server.error.bind(server);
      server.error = (error) => {
        this.#partial = undefined;
        memjsError(error);
        // memjs has no callbacks of ours: fail what was pending on this connection.
        for (const pending of waiting.values()) {
          settled(pending);
          pending.reject(unavailable(this, 'memcache connection failed', error));
        }
        waiting.clear();
      };
    }
    this.onConnect = () => {
      this.gen++;
      if (!ref) this.server._socket?.unref();
      // memjs leaves Nagle on; a lock's round trips are tiny, pipelined writes.
      // (Nagle stays on: see write(), which corks writes per tick.)
    };
    server.on('authenticated', this.onConnect);
  }

  /**
   * memjs's socket 'close' and 'error' handlers act on `server._socket`,
   * whatever socket fired them. A socket destroyed after a timeout closes a
   * tick later, and by then a new request may have opened a new socket: the
   * old socket's 'close' then orphans the new one (left open forever, outside
   * close()'s reach) and an old 'error' fails the new socket's requests. So,
   * on servers this adapter created, each new socket's handlers are replaced
   * by ones that only act when the socket is still the current one.
   */
  #guardSockets(): void {
    const server = this.server;
    const sock = server.sock.bind(server);
    server.sock = (sasl, go) => {
      const before = server._socket;
      sock(sasl, go);
      const socket = server._socket;
      if (socket === undefined || socket === before) return;
      // A new connection starts a new byte stream.
      this.#partial = undefined;
      this.sockets.add(socket);
      socket.removeAllListeners('close');
      socket.removeAllListeners('error');
      socket.on('error', (error) => {
        if (server._socket === socket) server.error(error);
      });
      socket.on('close', () => {
        this.sockets.delete(socket);
        if (server._socket !== socket) return;
        server.connected = false;
        if (server.timeoutSet) {
          socket.setTimeout(0);
          server.timeoutSet = false;
        }
        server._socket = undefined;
      });
    };
  }

  /**
   * Writes a request. Writes made in the same tick are corked into one
   * writev: with many locks in flight this halves the syscalls, and unlike
   * Nagle it never holds a lone request back.
   */
  write(buf: Buffer): void {
    const server = this.server;
    const socket = server._socket;
    const ready = socket !== undefined && server.connected;
    // Cork only when other requests are in flight: a lone request goes out at once.
    if (this.inFlight > 1 && ready && !this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(uncork, this, socket);
    }
    if (this.waiting === undefined) server.write(buf);
    // Own framing: straight to the socket, without memjs's per-request
    // timeout bookkeeping (our own deadline covers every request).
    else if (ready) socket.write(buf);
    else server.sock(false, (s) => s.write(buf));
  }

  /**
   * memjs's response handler, replaced on servers this adapter created:
   * parses binary-protocol frames in place and settles the pending request
   * by its opaque. SASL frames are handled as memjs does.
   */
  #onData(data: Buffer, waiting: Map<number, Pending>, settled: (pending: Pending) => void): void {
    const buf = this.#partial === undefined ? data : Buffer.concat([this.#partial, data]);
    this.#partial = undefined;
    const server = this.server;
    let offset = 0;
    while (buf.length - offset >= 24) {
      if (buf[offset] !== MAGIC_RESPONSE) {
        server.error(new Error('memlock: malformed response from memcached'));
        return;
      }
      const end = offset + 24 + buf.readUInt32BE(offset + 8);
      if (end > buf.length) break;
      const opcode = buf[offset + 1];
      const status = buf.readUInt16BE(offset + 6);
      if (opcode === OP_SASL_LIST) {
        server.saslAuth();
      } else if (status === STATUS_AUTH_ERROR) {
        server.error('Memcached server authentication failed!');
        return;
      } else if (opcode === OP_SASL_AUTH) {
        server.emit('authenticated');
      } else {
        const seq = buf.readUInt32BE(offset + 12);
        const pending = waiting.get(seq);
        if (pending !== undefined) {
          waiting.delete(seq);
          settled(pending);
          const valueAt = offset + 24 + (buf[offset + 4] as number) + buf.readUInt16BE(offset + 2);
          // Copied: a value must not pin the socket's whole chunk.
          const value = valueAt < end ? Buffer.from(buf.subarray(valueAt, end)) : EMPTY;
          settle(pending, status, buf.readBigUInt64BE(offset + 16), value, this.gen);
        }
      }
      offset = end;
    }
    if (offset < buf.length) this.#partial = Buffer.from(buf.subarray(offset));
  }

  /** Whether a request written now goes out on the connection of generation `gen`. */
  isOpen(gen: number): boolean {
    return this.gen === gen && this.server.connected && this.server._socket !== undefined;
  }
}

/** Options of `MemjsLockClient`. */
export interface MemjsLockClientOptions {
  /** 'host:port' names; ignored when `client` is given. */
  readonly servers?: readonly string[];
  /** A caller's memjs client: its servers are used, it is never closed. */
  readonly client?: MemjsClient | undefined;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  /** Deadline of each operation. */
  readonly timeoutMs: number;
  /** Whether idle connections keep the process alive. @default true */
  readonly ref?: boolean | undefined;
}

/** `LockClient` implemented on memjs's `Server` connections. */
export class MemjsLockClient implements LockClient {
  readonly #nodes: Node[];
  readonly #ring: HashRing;
  readonly #owned: boolean;
  readonly #timeoutMs: number;
  // The opaque counter lives on the memjs client when there is one, so our ids
  // and memjs's own never collide on a shared connection.
  readonly #counter: { seq: number };
  #head: Pending | undefined;
  #tail: Pending | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Renewal requests by the value they write (see casSet). */
  readonly #renewals = new WeakMap<Buffer, Buffer>();

  constructor(options: MemjsLockClientOptions) {
    this.#timeoutMs = options.timeoutMs;
    let servers: MemjsServer[];
    if (options.client !== undefined) {
      servers = (options.client as unknown as { servers: MemjsServer[] }).servers;
      this.#counter = options.client as unknown as { seq: number };
      this.#owned = false;
    } else {
      const timeout = options.timeoutMs / 1000;
      servers = (options.servers ?? []).map((spec) => {
        const { host, port, username, password } = parseServer(spec);
        return new memjs.Server(host, port, username ?? options.username, password ?? options.password, {
          timeout,
          conntimeout: timeout,
          keepAlive: true,
          keepAliveDelay: 30,
        }) as unknown as MemjsServer;
      });
      this.#counter = { seq: 0 };
      this.#owned = true;
    }
    if (servers.length === 0) throw new RangeError('Expected at least one memcache server');
    const settled = (pending: Pending): void => this.#unlink(pending);
    this.#nodes = servers.map((server) => new Node(server, options.ref ?? true, this.#owned, settled));
    this.#ring = new HashRing(this.#nodes.map((n) => n.name));
  }

  #node(key: string): Node {
    return this.#nodes[this.#ring.lookup(key)] as Node;
  }

  #nextSeq(): number {
    let seq = this.#counter.seq + 1;
    if (!(seq >= 1 && seq <= MAX_OPAQUE)) seq = 1;
    this.#counter.seq = seq;
    return seq;
  }

  /** Registers callbacks and a deadline for `seq`; returns the promise of its response. */
  #expect(node: Node, seq: number, op: Op): Promise<WriteResult | Entry | null> {
    return new Promise((resolve, reject) => {
      const pending: Pending = {
        seq, node, op, deadline: performance.now() + this.#timeoutMs,
        resolve, reject, prev: this.#tail, next: undefined, done: false,
      };
      node.inFlight++;
      if (this.#tail) this.#tail.next = pending;
      else this.#head = pending;
      this.#tail = pending;
      if (this.#timer === undefined) this.#arm();
      else this.#timer.ref();
      if (node.waiting !== undefined) {
        node.waiting.set(seq, pending);
        return;
      }
      node.server.onResponse(seq, (response) => {
        if (pending.done) return;
        this.#unlink(pending);
        settle(pending, response.header.status, response.header.cas.readBigUInt64BE(0), response.val, node.gen);
      });
      node.server.onError(seq, (error) => {
        if (pending.done) return;
        this.#unlink(pending);
        reject(unavailable(node, 'memcache connection failed', error));
      });
    });
  }

  #unlink(pending: Pending): void {
    pending.done = true;
    pending.node.inFlight--;
    if (pending.prev) pending.prev.next = pending.next;
    else this.#head = pending.next;
    if (pending.next) pending.next.prev = pending.prev;
    else this.#tail = pending.prev;
    pending.prev = pending.next = undefined;
    // Nothing pending: the deadline timer stays armed (re-arming per request
    // costs more) but must not keep the process alive.
    if (this.#head === undefined) this.#timer?.unref();
  }

  #arm(): void {
    const head = this.#head;
    if (head === undefined) {
      this.#timer = undefined;
      return;
    }
    // Ref'd while requests are pending: they must settle before the process may exit.
    this.#timer = setTimeout(() => this.#expire(), Math.max(1, head.deadline - performance.now()));
  }

  #expire(): void {
    const now = performance.now();
    const broken = new Set<Node>();
    while (this.#head !== undefined && this.#head.deadline <= now) {
      const pending = this.#head;
      this.#unlink(pending);
      forget(pending);
      broken.add(pending.node);
      pending.reject(unavailable(pending.node, `memcache operation timed out after ${this.#timeoutMs} ms`,
        Object.assign(new Error('operation timed out'), { code: 'ETIMEDOUT' })));
    }
    // A connection that left a request unanswered is suspect (stalled server,
    // or closed without answering): drop it, so the next request reconnects
    // and the new generation makes the protocol re-read before using a CAS.
    for (const node of broken) {
      if (node.server._socket !== undefined) node.server.error(new Error('memlock: connection dropped after a timeout'));
    }
    this.#arm();
  }

  #send(node: Node, buf: Buffer, seq: number, op: Op): Promise<WriteResult | Entry | null> {
    if (this.#closed) return Promise.reject(new MemcacheUnavailableError('memlock client is closed', { server: node.name }));
    const promise = this.#expect(node, seq, op);
    try {
      node.write(buf);
    } catch (error) {
      node.server.error(error);
    }
    return promise;
  }

  // add, get, casSet and casDelete are not async: each is one request on the
  // hot path, and returning #send's promise saves a promise and a tick.
  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    const node = this.#node(key);
    const seq = this.#nextSeq();
    return this.#send(node, storeRequest(OP_ADD, key, value, ttlSeconds, 0n, seq), seq, 'add') as Promise<WriteResult>;
  }

  async addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const node = this.#node(key);
    if (this.#closed) throw new MemcacheUnavailableError('memlock client is closed', { server: node.name });
    const addSeq = this.#nextSeq();
    const getSeq = this.#nextSeq();
    const addP = this.#expect(node, addSeq, 'add') as Promise<WriteResult>;
    const getP = this.#expect(node, getSeq, 'get') as Promise<Entry | null>;
    // One write: both requests leave in one segment, answered in order.
    const buf = Buffer.concat([storeRequest(OP_ADD, key, value, ttlSeconds, 0n, addSeq), keyRequest(OP_GET, key, 0n, getSeq)]);
    try {
      node.write(buf);
    } catch (error) {
      node.server.error(error);
    }
    const [add, entry] = await Promise.allSettled([addP, getP]);
    if (add.status === 'rejected') throw add.reason;
    if (entry.status === 'rejected') throw entry.reason;
    return { add: add.value, entry: entry.value };
  }

  get(key: string): Promise<Entry | null> {
    const node = this.#node(key);
    const seq = this.#nextSeq();
    return this.#send(node, keyRequest(OP_GET, key, 0n, seq), seq, 'get') as Promise<Entry | null>;
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult> {
    const node = this.#node(key);
    const seq = this.#nextSeq();
    // A held lock renews the same key and value again and again: reuse its
    // request and patch the header. Safe because a lock never has two writes
    // in flight, and a write has left the socket long before its reply.
    let buf = this.#renewals.get(value);
    if (buf === undefined || buf.length !== 32 + Buffer.byteLength(key) + value.length) {
      buf = storeRequest(OP_SET, key, value, ttlSeconds, cas, seq);
      this.#renewals.set(value, buf);
    } else {
      buf.writeUInt32BE(seq, 12);
      buf.writeBigUInt64BE(cas, 16);
      buf.writeUInt32BE(ttlSeconds, 28);
    }
    return this.#send(node, buf, seq, 'set') as Promise<WriteResult>;
  }

  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    const node = this.#node(key);
    const seq = this.#nextSeq();
    return this.#send(node, keyRequest(OP_DELETE, key, cas, seq), seq, 'delete') as Promise<WriteResult>;
  }

  isCurrent(key: string, conn: number): boolean {
    return this.#node(key).isOpen(conn);
  }

  serverOf(key: string): string {
    return this.#node(key).name;
  }

  /** Fails what is pending, removes listeners; closes the connections it opened. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing: Array<Promise<void>> = [];
    for (const node of this.#nodes) {
      node.server.removeListener('authenticated', node.onConnect);
      if (this.#owned) {
        // error() destroys the current socket and fails memjs's pending callbacks.
        if (node.server._socket !== undefined) node.server.error(new Error('memlock client closed'));
        // Resolve only once every handle is really gone, so close() leaves no socket behind.
        // A socket leaves the set on its 'close' event (not when `closed` flips,
        // which happens before the handle is released).
        for (const socket of node.sockets) {
          closing.push(new Promise((resolve) => socket.once('close', () => resolve())));
          socket.destroy();
        }
      }
    }
    // Anything still pending (on a caller's client) fails now rather than at its deadline.
    while (this.#head !== undefined) {
      const pending = this.#head;
      this.#unlink(pending);
      forget(pending);
      pending.reject(new MemcacheUnavailableError('memlock client closed', { server: pending.node.name }));
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await Promise.all(closing);
  }
}

/** Parses '[user:pass@]host[:port]' the way memjs does. */
export function parseServer(spec: string): { host: string; port: number; username?: string; password?: string } {
  const at = spec.lastIndexOf('@');
  const auth = at === -1 ? undefined : spec.slice(0, at);
  const hostPort = at === -1 ? spec : spec.slice(at + 1);
  let host = hostPort;
  let port = 11_211;
  const bracket = /^\[(.+)\](?::(\d+))?$/.exec(hostPort);
  if (bracket) {
    host = bracket[1] as string;
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else {
    const colon = hostPort.lastIndexOf(':');
    if (colon !== -1) {
      host = hostPort.slice(0, colon);
      port = Number(hostPort.slice(colon + 1));
    }
  }
  if (host === '' || !Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new RangeError(`Expected \`servers\` entries to look like 'host:port', got ${JSON.stringify(spec)}`);
  }
  if (auth === undefined) return { host, port };
  const colon = auth.indexOf(':');
  return colon === -1 ? { host, port, username: auth } : { host, port, username: auth.slice(0, colon), password: auth.slice(colon + 1) };
}

/** Drops a settled-elsewhere request's response slot (a late reply is then ignored). */
function forget(pending: Pending): void {
  const { node, seq } = pending;
  if (node.waiting !== undefined) {
    node.waiting.delete(seq);
    return;
  }
  delete node.server.responseCallbacks[seq];
  delete node.server.errorCallbacks[seq];
}

function uncork(node: Node, socket: Socket): void {
  node.corked = false;
  socket.uncork();
}

function header(buf: Buffer, opcode: number, keyLength: number, extrasLength: number, bodyLength: number, seq: number, cas: bigint): void {
  buf[0] = 0x80;
  buf[1] = opcode;
  buf.writeUInt16BE(keyLength, 2);
  buf[4] = extrasLength;
  buf[5] = 0;
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(bodyLength, 8);
  buf.writeUInt32BE(seq, 12);
  buf.writeBigUInt64BE(cas, 16);
}

/** SET/ADD request: extras are flags (0) and expiry in seconds. */
function storeRequest(opcode: number, key: string, value: Buffer, ttlSeconds: number, cas: bigint, seq: number): Buffer {
  const keyLength = Buffer.byteLength(key);
  const buf = Buffer.allocUnsafe(24 + 8 + keyLength + value.length);
  header(buf, opcode, keyLength, 8, 8 + keyLength + value.length, seq, cas);
  buf.writeUInt32BE(0, 24);
  buf.writeUInt32BE(ttlSeconds, 28);
  buf.write(key, 32);
  value.copy(buf, 32 + keyLength);
  return buf;
}

/** GET/DELETE request: key only. */
function keyRequest(opcode: number, key: string, cas: bigint, seq: number): Buffer {
  const keyLength = Buffer.byteLength(key);
  const buf = Buffer.allocUnsafe(24 + keyLength);
  header(buf, opcode, keyLength, 0, keyLength, seq, cas);
  buf.write(key, 24);
  return buf;
}

const EXISTS: WriteResult = Object.freeze({ status: 'exists' });
const NOT_FOUND: WriteResult = Object.freeze({ status: 'not_found' });

/** Settles a request with its response, mapped to what the operation returns. */
function settle(pending: Pending, status: number, cas: bigint, value: Buffer, conn: number): void {
  if (pending.op === 'get') {
    if (status === STATUS_NOT_FOUND) pending.resolve(null);
    else if (status === STATUS_OK) pending.resolve({ value, cas, conn });
    else pending.reject(badStatus(pending.node, 'get', status, value));
    return;
  }
  switch (status) {
    case STATUS_OK: pending.resolve({ status: 'ok', cas, conn }); break;
    case STATUS_EXISTS:
    case STATUS_NOT_STORED: pending.resolve(EXISTS); break;
    case STATUS_NOT_FOUND: pending.resolve(NOT_FOUND); break;
    default: pending.reject(badStatus(pending.node, pending.op, status, value));
  }
}

function badStatus(node: Node, op: string, status: number, value: Buffer): MemcacheUnavailableError {
  const text = value.toString('utf8', 0, Math.min(value.length, 200));
  return unavailable(node, `memcache ${op} failed with status 0x${status.toString(16)}`,
    Object.assign(new Error(text || `status 0x${status.toString(16)}`), { status }));
}

function unavailable(node: Node, message: string, cause: unknown): MemcacheUnavailableError {
  // memjs reports SASL failures as a bare string.
  const error = cause instanceof Error ? cause : new Error(String(cause));
  return new MemcacheUnavailableError(`${message} (${node.name}): ${error.message}`, { cause: error, server: node.name });
}
