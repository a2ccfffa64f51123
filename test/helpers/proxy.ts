/**
 * A fault-injecting TCP proxy on loopback, put between the library and a
 * memcached to simulate slow networks, partitions and dropped connections
 * without touching the server process.
 *
 * Modes can be switched at any time and apply to existing connections:
 * - latency: every chunk is delayed by the configured ms, order preserved
 *   (both directions, or only requests ('up') or only replies ('down'));
 * - stall: connections stay open, bytes are read and DISCARDED in both
 *   directions, nothing is answered (a partition or a hung middlebox).
 *   {@link FaultProxy.heal} does not replay discarded bytes: a healed
 *   connection behaves like the far end of a partition that lost whatever
 *   was in flight, so a client must time out / reconnect as it would in
 *   production;
 * - refuse: new connections are closed right after accept (the TCP handshake
 *   still succeeds, so the client sees connect then EOF, not ECONNREFUSED);
 *   existing ones live;
 * - drop: destroys all current connections once (mode unchanged);
 * - cut: the first N bytes of the next server-to-client chunk are handed
 *   on (N chosen by a function of the chunk), then every connection is
 *   destroyed (a reply that arrives, and the one pipelined
 *   after it that never does);
 * - fragment: server-to-client bytes are handed on 1..N bytes at a time, a
 *   loop turn apart, so every response straddles reads (latency is ignored
 *   for them while fragmenting).
 *
 * Sockets are closed with destroy() (FIN), never resetAndDestroy(): with RST
 * on the client side this proxy made Node 20.20 spin at 100% CPU in its exit
 * handle cleanup (a TCP handle whose close never completed).
 * Backpressure is not propagated (fine for memcache-sized test traffic).
 */
import net from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Traffic direction through the proxy: 'up' = client to server, 'down' = server to client. */
export type Direction = 'up' | 'down';

interface Pipe {
  client: net.Socket;
  upstream: net.Socket;
  /** Chunks waiting for their delivery time, per direction. */
  queues: Record<Direction, { due: number; chunk: Buffer }[]>;
  timers: Record<Direction, NodeJS.Timeout | undefined>;
  /** Fragmented server-to-client delivery, in order. */
  trickle: Promise<void>;
  closed: boolean;
}

/** Handle of a running proxy; see the module comment for the modes. */
export interface FaultProxy {
  /** Always '127.0.0.1'. */
  readonly host: string;
  readonly port: number;
  /** '127.0.0.1:PORT', to give to the client under test. */
  readonly address: string;
  /** Client connections currently open through the proxy. */
  readonly connections: number;
  /** Client connections accepted (and not refused) since start. */
  readonly accepted: number;
  /**
   * Delays every chunk by `ms` (0 = none) in `direction`: 'both' (default),
   * 'up' (client to server) or 'down' (server to client: the request is
   * applied at once, its reply arrives late). Chunks already queued keep
   * their delivery time.
   */
  setLatency(ms: number, direction?: Direction | 'both'): void;
  /** Keeps connections open but forwards and answers nothing (bytes are discarded). */
  stall(): void;
  /** Destroys every current connection now (the client sees EOF/close). */
  drop(): void;
  /** New connections are closed right after accept; existing ones keep working. */
  refuse(): void;
  /** Forwards the first `keep(chunk)` bytes of the next server-to-client chunk, then destroys every connection (once). */
  cutAfter(keep: (chunk: Buffer) => number): void;
  /** Hands server-to-client bytes on in pieces of 1..maxBytes, a loop turn apart (0 = whole chunks). */
  fragment(maxBytes: number): void;
  /** Back to plain forwarding: no latency, not stalled, accepting. */
  heal(): void;
  /** Closes the listener and every socket; leaves no handles behind. */
  close(): Promise<void>;
}

const HOST = '127.0.0.1';

/** Starts a proxy on 127.0.0.1 (free port) forwarding to `target`. */
export async function startProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const pipes = new Set<Pipe>();
  const latencyMs: Record<Direction, number> = { up: 0, down: 0 };
  let stalled = false;
  let refusing = false;
  let fragmentBytes = 0;
  let cutAfterBytes: ((chunk: Buffer) => number) | undefined;
  let accepted = 0;

  const clearQueues = (p: Pipe): void => {
    for (const d of ['up', 'down'] as const) {
      clearTimeout(p.timers[d]);
      p.timers[d] = undefined;
      p.queues[d].length = 0;
    }
  };

  const destroyPipe = (p: Pipe): void => {
    if (p.closed) return;
    p.closed = true;
    pipes.delete(p);
    clearQueues(p);
    p.client.destroy();
    p.upstream.destroy();
  };

  /** Writes due chunks of one direction in order, then re-arms for the next. */
  const flushQueue = (p: Pipe, d: Direction): void => {
    p.timers[d] = undefined;
    const q = p.queues[d];
    const dest = d === 'up' ? p.upstream : p.client;
    const now = Date.now();
    while (q.length > 0 && (q[0]?.due ?? Infinity) <= now) {
      const item = q.shift();
      if (item && !p.closed && !dest.destroyed) dest.write(item.chunk);
    }
    const next = q[0];
    if (next && !p.closed) p.timers[d] = setTimeout(() => flushQueue(p, d), Math.max(0, next.due - Date.now()));
  };

  const trickle = async (p: Pipe, chunk: Buffer, maxBytes: number): Promise<void> => {
    for (let i = 0; i < chunk.length;) {
      if (p.closed || p.client.destroyed) return;
      const n = 1 + Math.floor(Math.random() * maxBytes);
      p.client.write(chunk.subarray(i, i + n));
      i += n;
      await nextTurn();
    }
  };

  const forward = (p: Pipe, d: Direction, chunk: Buffer): void => {
    if (p.closed || stalled) return; // stall: read and discard
    if (d === 'down' && cutAfterBytes !== undefined) {
      const n = cutAfterBytes(chunk);
      cutAfterBytes = undefined;
      if (n > 0) p.client.write(chunk.subarray(0, n));
      // After the write is flushed: the client reads the bytes, then EOF.
      p.client.end(() => {
        for (const each of [...pipes]) destroyPipe(each);
      });
      return;
    }
    if (d === 'down' && fragmentBytes > 0) {
      const maxBytes = fragmentBytes;
      p.trickle = p.trickle.then(() => trickle(p, chunk, maxBytes));
      return;
    }
    const q = p.queues[d];
    const dest = d === 'up' ? p.upstream : p.client;
    if (latencyMs[d] <= 0 && q.length === 0) {
      dest.write(chunk);
      return;
    }
    const last = q[q.length - 1];
    const due = Math.max(Date.now() + latencyMs[d], last?.due ?? 0); // never overtake
    q.push({ due, chunk });
    if (!p.timers[d]) p.timers[d] = setTimeout(() => flushQueue(p, d), Math.max(0, (q[0]?.due ?? due) - Date.now()));
  };

  const server = net.createServer((client) => {
    client.on('error', () => undefined);
    if (refusing) {
      client.destroy();
      return;
    }
    accepted++;
    const upstream = net.connect({ host: target.host, port: target.port });
    upstream.on('error', () => undefined);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const p: Pipe = {
      client,
      upstream,
      queues: { up: [], down: [] },
      timers: { up: undefined, down: undefined },
      trickle: Promise.resolve(),
      closed: false,
    };
    pipes.add(p);
    // Bytes written before upstream connects are buffered by the socket itself.
    client.on('data', (c: Buffer) => forward(p, 'up', c));
    upstream.on('data', (c: Buffer) => forward(p, 'down', c));
    // Either side closing (or failing) closes the pair, like a real hop would.
    client.on('close', () => destroyPipe(p));
    upstream.on('close', () => destroyPipe(p));
  });
  server.on('error', () => undefined);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  if (!addr || typeof addr !== 'object') throw new Error('proxy: no listening address');
  const port = addr.port;

  return {
    host: HOST,
    port,
    address: `${HOST}:${port}`,
    get connections() {
      return pipes.size;
    },
    get accepted() {
      return accepted;
    },
    setLatency(ms: number, direction: Direction | 'both' = 'both') {
      if (!(ms >= 0)) throw new RangeError(`latency must be >= 0, got ${ms}`);
      if (direction !== 'both' && direction !== 'up' && direction !== 'down')
        throw new RangeError(`direction must be 'both', 'up' or 'down', got ${String(direction)}`);
      if (direction !== 'down') latencyMs.up = ms;
      if (direction !== 'up') latencyMs.down = ms;
    },
    stall() {
      stalled = true;
      for (const p of pipes) clearQueues(p); // in-flight delayed bytes are lost too
    },
    drop() {
      for (const p of [...pipes]) destroyPipe(p);
    },
    refuse() {
      refusing = true;
    },
    cutAfter(keep: (chunk: Buffer) => number) {
      cutAfterBytes = keep;
    },
    fragment(maxBytes: number) {
      if (!(Number.isInteger(maxBytes) && maxBytes >= 0))
        throw new RangeError(`fragment size must be an integer >= 0, got ${maxBytes}`);
      fragmentBytes = maxBytes;
    },
    heal() {
      fragmentBytes = 0;
      latencyMs.up = 0;
      latencyMs.down = 0;
      stalled = false;
      refusing = false;
    },
    async close() {
      refusing = true;
      for (const p of [...pipes]) destroyPipe(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
