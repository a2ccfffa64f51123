/**
 * A recording TCP proxy on loopback: forwards bytes unchanged both ways and
 * parses what clients send into memcache commands (classic text, meta or
 * binary), so a test can see exactly what went on the wire:
 *
 * - `commands`: every command in order, with the connection it came on and
 *   its flight: the client-to-server chunk it arrived in. Requests a client
 *   pipelines leave in one write and arrive as one chunk, and a client waits
 *   for the answer before its next flight, so the number of distinct flights
 *   of a sequential client is its number of round trips;
 * - `violations`: commands that are not classic text protocol (meta
 *   commands `mg`/`ms`/`md`/`ma`/`mn`/`me`, anything starting with the
 *   binary magic byte 0x80, unknown commands). With `classicOnly`, a
 *   violation also closes that connection, as twemproxy does, and is handed
 *   to `onViolation`.
 */
import net from 'node:net';

/** One parsed client command. */
export interface WireCommand {
  /** Command name (`add`, `gets`, `mg`, ...), or `binary:0xNN` with the opcode. */
  readonly name: string;
  /** Which client connection (1, 2, ... in accept order). */
  readonly connection: number;
  /** The client-to-server chunk it arrived in (1, 2, ... over all connections). */
  readonly flight: number;
  /** The command line (text) without its data block, or `binary`. */
  readonly line: string;
}

/** Options of {@link startRecordingProxy}. */
export interface RecordingProxyOptions {
  /** Close a connection that sends anything but classic text commands. @default false */
  readonly classicOnly?: boolean;
  /** Called with a description of each violation (after it is recorded). */
  readonly onViolation?: (violation: string) => void;
  /** Whether the proxy's listener and sockets keep the process alive. @default true */
  readonly ref?: boolean;
}

/** Handle of a running recording proxy. */
export interface RecordingProxy {
  readonly host: string;
  readonly port: number;
  /** '127.0.0.1:PORT'. */
  readonly address: string;
  /** Every command since start (or the last `reset()`). */
  readonly commands: readonly WireCommand[];
  /** Violations of the classic protocol since start (or the last `reset()`). */
  readonly violations: readonly string[];
  /** Distinct flights among `commands`: round trips of a sequential client. */
  readonly flights: number;
  /** Forgets what was recorded so far. */
  reset(): void;
  /** Closes the listener and every connection. */
  close(): Promise<void>;
}

/** The classic text protocol's commands (memcached protocol.txt, before meta). */
const CLASSIC = new Set([
  'get',
  'gets',
  'gat',
  'gats',
  'set',
  'add',
  'replace',
  'append',
  'prepend',
  'cas',
  'delete',
  'incr',
  'decr',
  'touch',
  'stats',
  'flush_all',
  'version',
  'verbosity',
  'quit',
]);
/** Classic storage commands: `<cmd> <key> <flags> <exptime> <bytes> ...` followed by a data block. */
const STORAGE = new Set(['set', 'add', 'replace', 'append', 'prepend', 'cas']);
const META = new Set(['mg', 'ms', 'md', 'ma', 'mn', 'me']);
const BINARY_MAGIC = 0x80;

/** Splits one connection's client-to-server bytes into commands. */
class CommandParser {
  #buf: Buffer = Buffer.alloc(0);
  /** Bytes of a data block still to skip. */
  #skip = 0;
  /** Parsing gave up (a stream it cannot follow); bytes are still forwarded. */
  #lost = false;

  /** Commands that start in `chunk` (or complete with it). */
  push(chunk: Buffer): Array<{ name: string; line: string; violation?: string }> {
    if (this.#lost) return [];
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: Array<{ name: string; line: string; violation?: string }> = [];
    for (;;) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, this.#buf.length);
        this.#buf = this.#buf.subarray(n);
        this.#skip -= n;
        if (this.#skip > 0) return out;
      }
      if (this.#buf.length === 0) return out;
      if (this.#buf[0] === BINARY_MAGIC) {
        if (this.#buf.length < 24) return out;
        const total = 24 + this.#buf.readUInt32BE(8);
        const opcode = this.#buf[1] as number;
        this.#skip = total;
        const name = `binary:0x${opcode.toString(16).padStart(2, '0')}`;
        out.push({ name, line: 'binary', violation: `binary protocol request (magic 0x80, opcode ${name})` });
        continue;
      }
      const nl = this.#buf.indexOf(10);
      if (nl === -1) return out;
      const line = this.#buf.toString('latin1', 0, nl).replace(/\r$/, '');
      this.#buf = this.#buf.subarray(nl + 1);
      const fields = line.split(' ');
      const name = fields[0] ?? '';
      if (STORAGE.has(name)) this.#skip = dataBlock(fields[4]);
      else if (name === 'ms') this.#skip = dataBlock(fields[2]);
      if (Number.isNaN(this.#skip)) {
        this.#lost = true;
        out.push({ name, line, violation: `unparsable storage command: ${line.slice(0, 80)}` });
        return out;
      }
      if (META.has(name)) out.push({ name, line, violation: `meta command: ${line.slice(0, 80)}` });
      else if (!CLASSIC.has(name)) out.push({ name, line, violation: `not a classic command: ${line.slice(0, 80)}` });
      else out.push({ name, line });
    }
  }
}

/** Length of a data block with its CRLF, from the command's byte count (NaN when not a count). */
function dataBlock(bytes: string | undefined): number {
  return bytes !== undefined && /^\d+$/.test(bytes) ? Number(bytes) + 2 : Number.NaN;
}

/** Starts a recording proxy on 127.0.0.1 (free port) forwarding to `target`. */
export async function startRecordingProxy(
  target: { host: string; port: number },
  options: RecordingProxyOptions = {},
): Promise<RecordingProxy> {
  const commands: WireCommand[] = [];
  const violations: string[] = [];
  const sockets = new Set<net.Socket>();
  const ref = options.ref ?? true;
  let connections = 0;
  let flights = 0;

  const server = net.createServer((client) => {
    const connection = ++connections;
    const upstream = net.connect({ host: target.host, port: target.port });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      if (!ref) socket.unref();
      socket.on('error', () => undefined);
      // Either side closing closes the pair, like a real hop.
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    const parser = new CommandParser();
    client.on('data', (chunk: Buffer) => {
      const flight = ++flights;
      let violated = false;
      for (const command of parser.push(chunk)) {
        commands.push({ name: command.name, line: command.line, connection, flight });
        if (command.violation !== undefined) {
          violations.push(command.violation);
          violated = true;
          options.onViolation?.(command.violation);
        }
      }
      if (violated && options.classicOnly === true) {
        client.destroy();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  if (!ref) server.unref();
  const address = server.address();
  if (address === null || typeof address !== 'object') throw new Error('recording proxy: no listening address');
  const port = address.port;

  return {
    host: '127.0.0.1',
    port,
    address: `127.0.0.1:${port}`,
    commands,
    violations,
    get flights() {
      return new Set(commands.map((c) => c.flight)).size;
    },
    reset() {
      commands.length = 0;
      violations.length = 0;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
