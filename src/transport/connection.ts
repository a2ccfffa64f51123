/**
 * One connection to one memcached over `net` or `tls`, opened on first use
 * and re-opened after a failure, never re-sending anything:
 *
 * - connect deadline: a connect (TCP, TLS handshake, SASL) that takes longer
 *   than the operation timeout fails what waits on it;
 * - keep-alive on, Nagle off; writes made in the same tick while others are
 *   in flight are corked into one writev;
 * - a generation number, bumped on every (re)connect: a CAS read over an
 *   older generation may predate a server restart (memcached restarts its
 *   CAS counter), which is what `LockClient.isCurrent` reports;
 * - replies are matched to requests first-in first-out (memcached answers in
 *   order; the binary opaque is checked too). Any failure fails every
 *   request on the connection and closes it; requests written to the socket
 *   fail as "may have been applied", requests still waiting for the
 *   connection as "not applied".
 */
import net, { type Socket } from 'node:net';
import tls from 'node:tls';
import { emptyReply, ProtocolError, type Codec, type Reply } from './codec.js';
import type { Pending } from './requests.js';

/** Where a connection reports replies and failures. */
export interface ConnectionSink {
  reply(pending: Pending, reply: Reply, conn: number): void;
  fail(pending: Pending, cause: unknown, mayHaveApplied: boolean): void;
}

/** Settings of one connection. */
export interface ConnectionOptions {
  readonly host: string;
  readonly port: number;
  readonly codec: Codec;
  /** TLS options (already resolved), or `undefined` for plain TCP. */
  readonly tls: tls.ConnectionOptions | undefined;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly connectTimeoutMs: number;
  /** Whether an idle open socket keeps the process alive. */
  readonly ref: boolean;
}

/** A lazily (re)opened connection; see the module comment. */
export class Connection {
  /** Generation of the current (or last) ready connection. */
  gen = 0;
  /** 'host:port'. */
  readonly name: string;
  /** Protocol and transport, e.g. 'binary' or 'meta+tls', for errors and diagnostics. */
  readonly label: string;
  #socket: Socket | undefined;
  #ready = false;
  #authenticating = false;
  /** Requests in order: the written ones first, then those waiting for the connection (`buf` set). */
  #queue: Array<Pending | undefined> = [];
  #head = 0;
  #partial: Buffer | undefined;
  #corked = false;
  #connectTimer: NodeJS.Timeout | undefined;
  readonly #sockets = new Set<Socket>();
  readonly #reply = emptyReply();
  readonly #auth: Buffer | undefined;

  constructor(
    private readonly options: ConnectionOptions,
    private readonly sink: ConnectionSink,
  ) {
    this.name = `${options.host}:${options.port}`;
    this.label = options.codec.name + (options.tls === undefined ? '' : '+tls');
    this.#auth =
      options.username === undefined ? undefined : options.codec.saslPlain(options.username, options.password ?? '');
  }

  /** Requests written or waiting on this connection and not answered yet. */
  get inFlight(): number {
    return this.#queue.length - this.#head;
  }

  /** Whether a request written now goes out on the connection of generation `gen`. */
  isOpen(gen: number): boolean {
    return this.#ready && this.gen === gen;
  }

  /** Queues `pending` and writes `buf` (or keeps it until the connection is ready). */
  send(pending: Pending, buf: Buffer): void {
    this.#queue.push(pending);
    if (this.#ready) {
      this.#write(buf);
      pending.sent = true;
      return;
    }
    pending.buf = buf;
    if (this.#socket === undefined) this.#connect();
  }

  /** Corks the socket until the end of this tick, so the next writes leave together. */
  batch(): void {
    const socket = this.#socket;
    if (!this.#ready || socket === undefined || this.#corked) return;
    this.#corked = true;
    socket.cork();
    process.nextTick(uncork, this, socket);
  }

  #write(buf: Buffer): void {
    const socket = this.#socket as Socket;
    // Cork only when other requests are in flight: a lone request goes out at once.
    if (!this.#corked && this.#queue.length - this.#head > 1) {
      this.#corked = true;
      socket.cork();
      process.nextTick(uncork, this, socket);
    }
    socket.write(buf);
  }

  /** @internal */
  uncorked(socket: Socket): void {
    this.#corked = false;
    socket.uncork();
  }

  #connect(): void {
    const { host, port } = this.options;
    const secure = this.options.tls;
    const socket = secure === undefined ? net.connect({ host, port }) : tls.connect({ ...secure, host, port });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    if (!this.options.ref) socket.unref();
    this.#socket = socket;
    this.#sockets.add(socket);
    this.#partial = undefined;
    this.#corked = false;
    this.#connectTimer = setTimeout(() => {
      this.#fail(
        socket,
        Object.assign(new Error(`connect timed out after ${this.options.connectTimeoutMs} ms`), { code: 'ETIMEDOUT' }),
      );
    }, this.options.connectTimeoutMs);
    this.#connectTimer.unref();
    socket.once(secure === undefined ? 'connect' : 'secureConnect', () => this.#connected(socket));
    socket.on('data', (data: Buffer) => {
      if (socket === this.#socket) this.#onData(socket, data);
    });
    socket.on('error', (error) => this.#fail(socket, error));
    socket.on('close', () => {
      this.#sockets.delete(socket);
      this.#fail(socket, Object.assign(new Error('connection closed by the server'), { code: 'ECONNRESET' }));
    });
  }

  #connected(socket: Socket): void {
    if (socket !== this.#socket) return;
    if (this.#auth !== undefined) {
      // SASL PLAIN first; requests wait until the server accepts it.
      this.#authenticating = true;
      socket.write(this.#auth);
      return;
    }
    this.#becomeReady(socket);
  }

  #becomeReady(socket: Socket): void {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = undefined;
    this.#ready = true;
    this.gen++;
    socket.cork();
    for (let i = this.#head; i < this.#queue.length; i++) {
      const pending = this.#queue[i] as Pending;
      const buf = pending.buf;
      if (buf === undefined) continue;
      pending.buf = undefined;
      // A request that expired while connecting is not sent at all.
      if (pending.done) continue;
      socket.write(buf);
      pending.sent = true;
    }
    socket.uncork();
  }

  #onData(socket: Socket, data: Buffer): void {
    const buf = this.#partial === undefined ? data : Buffer.concat([this.#partial, data]);
    this.#partial = undefined;
    const reply = this.#reply;
    const codec = this.options.codec;
    let offset = 0;
    while (offset < buf.length) {
      let end: number;
      try {
        // The request the next reply answers: a text-protocol reply does not say.
        end = codec.parse(buf, offset, reply, this.#authenticating ? undefined : this.#queue[this.#head]?.op);
      } catch (error) {
        this.#fail(socket, error);
        return;
      }
      if (end === -1) break;
      offset = end;
      if (this.#authenticating) {
        if (reply.status !== 'ok') {
          this.#fail(socket, Object.assign(new Error(`SASL ${reply.message}`), { status: reply.code }));
          return;
        }
        this.#authenticating = false;
        this.#becomeReady(socket);
        continue;
      }
      const pending = this.#queue[this.#head];
      if (pending === undefined || pending.buf !== undefined || (reply.seq !== -1 && reply.seq !== pending.seq)) {
        this.#fail(socket, new ProtocolError('memcache reply does not match the request it answers'));
        return;
      }
      this.#queue[this.#head++] = undefined;
      if (this.#head === this.#queue.length) {
        this.#queue.length = 0;
        this.#head = 0;
      }
      if (!pending.done) this.sink.reply(pending, reply, this.gen);
      if (reply.fatal) {
        this.#fail(socket, new ProtocolError(`connection dropped after the error reply: ${reply.message}`));
        return;
      }
      if (socket !== this.#socket) return;
    }
    if (offset < buf.length) this.#partial = Buffer.from(buf.subarray(offset));
  }

  /** Closes the current socket and fails every request on it. Events of an old socket are ignored. */
  #fail(socket: Socket, cause: unknown): void {
    if (socket !== this.#socket) return;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = undefined;
    this.#socket = undefined;
    this.#ready = false;
    this.#authenticating = false;
    this.#partial = undefined;
    socket.destroy();
    const queue = this.#queue;
    const head = this.#head;
    this.#queue = [];
    this.#head = 0;
    for (let i = head; i < queue.length; i++) {
      const pending = queue[i] as Pending;
      pending.buf = undefined;
      if (!pending.done) this.sink.fail(pending, cause, pending.sent);
    }
  }

  /**
   * Drops the connection (after a request on it went unanswered: a stalled
   * server or a connection closed without answering is suspect), so the next
   * request reconnects and the new generation makes the protocol re-read
   * before it uses a CAS.
   */
  drop(cause: unknown): void {
    if (this.#socket !== undefined) this.#fail(this.#socket, cause);
  }

  /** Fails what is pending and resolves once every socket it opened is closed. */
  async close(cause: unknown): Promise<void> {
    this.drop(cause);
    // A socket leaves the set on its 'close' event (not when `closed` flips,
    // which happens before the handle is released).
    await Promise.all(
      [...this.#sockets].map(
        (socket) =>
          new Promise<void>((resolve) => {
            socket.once('close', () => resolve());
            socket.destroy();
          }),
      ),
    );
  }
}

function uncork(connection: Connection, socket: Socket): void {
  connection.uncorked(socket);
}
