/**
 * Minimal one-shot memcache clients for tests: each call opens a fresh TCP
 * socket, sends one request, reads the full reply and destroys the socket.
 * They exist so tests can read and tamper with entries behind the library's
 * back without going through memjs (whose behaviour is under test).
 *
 * Two wire formats:
 * - text (ASCII) protocol, used for ordinary test servers;
 * - binary protocol with SASL PLAIN, used for SASL servers (memcached refuses
 *   the ASCII protocol when SASL is enabled).
 */
import net from 'node:net';

/** An entry as stored on the server, CAS included. */
export interface RawEntry {
  value: Buffer;
  cas: bigint;
  flags: number;
}

/** Where to connect. */
export interface RawTarget {
  host: string;
  port: number;
}

/** SASL PLAIN credentials. */
export interface SaslCredentials {
  username: string;
  password: string;
}

/** Options of one raw call. */
export interface RawOptions {
  /** Give up (reject) when no full reply came within this many ms. Default 5000. */
  timeoutMs?: number;
}

/** The operations every raw client offers. */
export interface RawClient {
  get(key: string, options?: RawOptions): Promise<RawEntry | null>;
  set(key: string, value: string | Buffer, ttlSeconds: number, options?: RawOptions): Promise<void>;
  delete(key: string, options?: RawOptions): Promise<boolean>;
  flush(options?: RawOptions): Promise<void>;
  stats(options?: RawOptions): Promise<Record<string, string>>;
}

const DEFAULT_TIMEOUT_MS = 5000;

/** Thrown when the server answers with an error or something unexpected. */
export class RawProtocolError extends Error {
  override name = 'RawProtocolError';
}

/**
 * Sends `request` on a fresh socket and feeds the accumulated reply to
 * `parse` after every chunk until it returns something other than undefined.
 */
function exchange<T>(
  target: RawTarget,
  request: Buffer,
  parse: (reply: Buffer) => T | undefined,
  what: string,
  timeoutMs: number,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let reply = Buffer.alloc(0);
    let settled = false;
    const socket = net.connect({ host: target.host, port: target.port });
    socket.setNoDelay(true);
    // Settle only once the socket is fully closed, so a resolved raw call
    // leaves no handle behind (leak checks may run right after it).
    const finish = (err: Error | null, value?: T): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const settle = (): void => (err ? reject(err) : resolve(value as T));
      if (socket.closed) settle();
      else {
        socket.once('close', settle);
        socket.destroy();
      }
    };
    const timer = setTimeout(() => {
      finish(new Error(`${what}: no complete reply from ${target.host}:${target.port} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      reply = Buffer.concat([reply, chunk]);
      try {
        const value = parse(reply);
        if (value !== undefined) finish(null, value);
      } catch (err) {
        finish(err instanceof Error ? err : new Error(String(err)));
      }
    });
    socket.on('error', (err) => finish(new Error(`${what}: ${err.message}`, { cause: err })));
    socket.on('close', () =>
      finish(new Error(`${what}: connection to ${target.host}:${target.port} closed before a complete reply`)),
    );
  });
}

function checkKey(key: string): void {
  const len = Buffer.byteLength(key);
  // eslint-disable-next-line no-control-regex
  if (len === 0 || len > 250 || /[\s\x00-\x1f\x7f]/.test(key)) {
    throw new RangeError(`invalid memcache key ${JSON.stringify(key)} (1..250 bytes, no whitespace/control chars)`);
  }
}

// ---------------------------------------------------------------- text ----

const CRLF = '\r\n';

/** Splits complete CRLF-terminated lines off `buf` starting at `from`. */
function readLine(buf: Buffer, from: number): { line: string; next: number } | undefined {
  const end = buf.indexOf(CRLF, from);
  if (end < 0) return undefined;
  return { line: buf.toString('latin1', from, end), next: end + 2 };
}

function throwIfError(line: string, what: string): void {
  if (line === 'ERROR' || line.startsWith('CLIENT_ERROR') || line.startsWith('SERVER_ERROR')) {
    throw new RawProtocolError(`${what}: server replied ${JSON.stringify(line)}`);
  }
}

/** Parses a reply that is one status line, mapping expected lines to values. */
function oneLine<T>(expected: Record<string, T>, what: string): (reply: Buffer) => T | undefined {
  return (reply) => {
    const first = readLine(reply, 0);
    if (!first) return undefined;
    throwIfError(first.line, what);
    if (Object.hasOwn(expected, first.line)) return expected[first.line];
    throw new RawProtocolError(`${what}: unexpected reply ${JSON.stringify(first.line)}`);
  };
}

/** A raw client speaking the memcache text protocol. */
export function textClient(target: RawTarget): RawClient {
  const run = <T>(req: Buffer, parse: (r: Buffer) => T | undefined, what: string, options?: RawOptions) =>
    exchange(target, req, parse, what, options?.timeoutMs ?? DEFAULT_TIMEOUT_MS);

  return {
    async get(key, options) {
      checkKey(key);
      const what = `gets ${key}`;
      return run(
        Buffer.from(`gets ${key}${CRLF}`),
        (reply): RawEntry | null | undefined => {
          const head = readLine(reply, 0);
          if (!head) return undefined;
          throwIfError(head.line, what);
          if (head.line === 'END') return null;
          const m = /^VALUE (\S+) (\d+) (\d+) (\d+)$/.exec(head.line);
          if (!m) throw new RawProtocolError(`${what}: unexpected reply ${JSON.stringify(head.line)}`);
          const bytes = Number(m[3]);
          const dataEnd = head.next + bytes;
          const tail = `${CRLF}END${CRLF}`;
          if (reply.length < dataEnd + tail.length) return undefined;
          if (reply.toString('latin1', dataEnd, dataEnd + tail.length) !== tail) {
            throw new RawProtocolError(`${what}: malformed value block`);
          }
          return {
            value: Buffer.from(reply.subarray(head.next, dataEnd)),
            cas: BigInt(m[4] ?? '0'),
            flags: Number(m[2]),
          };
        },
        what,
        options,
      );
    },

    async set(key, value, ttlSeconds, options) {
      checkKey(key);
      const data = typeof value === 'string' ? Buffer.from(value) : value;
      const req = Buffer.concat([
        Buffer.from(`set ${key} 0 ${ttlSeconds} ${data.length}${CRLF}`),
        data,
        Buffer.from(CRLF),
      ]);
      await run(req, oneLine({ STORED: true }, `set ${key}`), `set ${key}`, options);
    },

    async delete(key, options) {
      checkKey(key);
      return run(
        Buffer.from(`delete ${key}${CRLF}`),
        oneLine({ DELETED: true, NOT_FOUND: false }, `delete ${key}`),
        `delete ${key}`,
        options,
      );
    },

    async flush(options) {
      await run(Buffer.from(`flush_all${CRLF}`), oneLine({ OK: true }, 'flush_all'), 'flush_all', options);
    },

    async stats(options) {
      return run(
        Buffer.from(`stats${CRLF}`),
        (reply) => {
          const out: Record<string, string> = {};
          let pos = 0;
          for (;;) {
            const l = readLine(reply, pos);
            if (!l) return undefined;
            pos = l.next;
            throwIfError(l.line, 'stats');
            if (l.line === 'END') return out;
            const m = /^STAT (\S+) (.*)$/.exec(l.line);
            if (!m) throw new RawProtocolError(`stats: unexpected line ${JSON.stringify(l.line)}`);
            out[m[1] ?? ''] = m[2] ?? '';
          }
        },
        'stats',
        options,
      );
    },
  };
}

// -------------------------------------------------------------- binary ----

const OP = { get: 0x00, set: 0x01, delete: 0x04, flush: 0x08, stat: 0x10, saslAuth: 0x21 } as const;
const STATUS_OK = 0x0000;
const STATUS_KEY_NOT_FOUND = 0x0001;
const STATUS_AUTH_ERROR = 0x0020;

interface BinPacket {
  opcode: number;
  status: number;
  opaque: number;
  cas: bigint;
  extras: Buffer;
  key: Buffer;
  value: Buffer;
}

function binRequest(
  opcode: number,
  opaque: number,
  key: Buffer,
  extras: Buffer = Buffer.alloc(0),
  value: Buffer = Buffer.alloc(0),
): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt8(0x80, 0);
  header.writeUInt8(opcode, 1);
  header.writeUInt16BE(key.length, 2);
  header.writeUInt8(extras.length, 4);
  header.writeUInt32BE(extras.length + key.length + value.length, 8);
  header.writeUInt32BE(opaque, 12);
  return Buffer.concat([header, extras, key, value]);
}

/** Splits all complete response packets off the reply. */
function binPackets(reply: Buffer): BinPacket[] {
  const out: BinPacket[] = [];
  let pos = 0;
  while (reply.length - pos >= 24) {
    if (reply.readUInt8(pos) !== 0x81) throw new RawProtocolError('binary protocol: bad response magic');
    const keyLen = reply.readUInt16BE(pos + 2);
    const extLen = reply.readUInt8(pos + 4);
    const bodyLen = reply.readUInt32BE(pos + 8);
    if (reply.length - pos < 24 + bodyLen) break;
    const body = pos + 24;
    out.push({
      opcode: reply.readUInt8(pos + 1),
      status: reply.readUInt16BE(pos + 6),
      opaque: reply.readUInt32BE(pos + 12),
      cas: reply.readBigUInt64BE(pos + 16),
      extras: reply.subarray(body, body + extLen),
      key: reply.subarray(body + extLen, body + extLen + keyLen),
      value: Buffer.from(reply.subarray(body + extLen + keyLen, body + bodyLen)),
    });
    pos = body + bodyLen;
  }
  return out;
}

/**
 * A raw client speaking the binary protocol, authenticating each fresh
 * connection with SASL PLAIN first (pipelined with the actual request).
 */
export function binarySaslClient(target: RawTarget, creds: SaslCredentials): RawClient {
  const AUTH_OPAQUE = 1;
  const OP_OPAQUE = 2;
  const auth = binRequest(
    OP.saslAuth,
    AUTH_OPAQUE,
    Buffer.from('PLAIN'),
    undefined,
    Buffer.from(`\0${creds.username}\0${creds.password}`),
  );

  /** Runs one request; `done` sees the packets answering it (auth reply removed). */
  const run = <T>(req: Buffer, done: (pkts: BinPacket[]) => T | undefined, what: string, options?: RawOptions) =>
    exchange(
      target,
      Buffer.concat([auth, req]),
      (reply) => {
        const pkts = binPackets(reply);
        const first = pkts[0];
        if (!first) return undefined;
        if (first.opaque !== AUTH_OPAQUE) throw new RawProtocolError(`${what}: expected SASL reply first`);
        if (first.status !== STATUS_OK) {
          throw new RawProtocolError(
            `${what}: SASL authentication failed (status 0x${first.status.toString(16)}${first.status === STATUS_AUTH_ERROR ? ', auth error' : ''})`,
          );
        }
        const rest = pkts.slice(1);
        return rest.length === 0 ? undefined : done(rest);
      },
      what,
      options?.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    );

  const fail = (what: string, p: BinPacket): never => {
    throw new RawProtocolError(`${what}: status 0x${p.status.toString(16)} ${p.value.toString()}`);
  };

  return {
    async get(key, options) {
      checkKey(key);
      const what = `get ${key}`;
      return run(
        binRequest(OP.get, OP_OPAQUE, Buffer.from(key)),
        ([p]) => {
          if (!p) return undefined;
          if (p.status === STATUS_KEY_NOT_FOUND) return null;
          if (p.status !== STATUS_OK) return fail(what, p);
          return { value: p.value, cas: p.cas, flags: p.extras.length >= 4 ? p.extras.readUInt32BE(0) : 0 };
        },
        what,
        options,
      );
    },

    async set(key, value, ttlSeconds, options) {
      checkKey(key);
      const what = `set ${key}`;
      const extras = Buffer.alloc(8);
      extras.writeUInt32BE(ttlSeconds, 4);
      const data = typeof value === 'string' ? Buffer.from(value) : value;
      await run(
        binRequest(OP.set, OP_OPAQUE, Buffer.from(key), extras, data),
        ([p]) => {
          if (!p) return undefined;
          return p.status === STATUS_OK ? true : fail(what, p);
        },
        what,
        options,
      );
    },

    async delete(key, options) {
      checkKey(key);
      const what = `delete ${key}`;
      return run(
        binRequest(OP.delete, OP_OPAQUE, Buffer.from(key)),
        ([p]) => {
          if (!p) return undefined;
          if (p.status === STATUS_KEY_NOT_FOUND) return false;
          return p.status === STATUS_OK ? true : fail(what, p);
        },
        what,
        options,
      );
    },

    async flush(options) {
      await run(
        binRequest(OP.flush, OP_OPAQUE, Buffer.alloc(0)),
        ([p]) => {
          if (!p) return undefined;
          return p.status === STATUS_OK ? true : fail('flush', p);
        },
        'flush',
        options,
      );
    },

    async stats(options) {
      return run(
        binRequest(OP.stat, OP_OPAQUE, Buffer.alloc(0)),
        (pkts) => {
          const out: Record<string, string> = {};
          for (const p of pkts) {
            if (p.status !== STATUS_OK) return fail('stats', p);
            if (p.key.length === 0) return out; // terminator packet
            out[p.key.toString()] = p.value.toString();
          }
          return undefined;
        },
        'stats',
        options,
      );
    },
  };
}
