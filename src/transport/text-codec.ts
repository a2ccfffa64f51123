/**
 * memcached's classic text protocol, the one every memcache proxy speaks
 * (twemproxy/nutcracker, mcrouter's ASCII side):
 *
 * - add:        `add <key> 0 <ttl> <len>` + data            -> `STORED` | `NOT_STORED`
 * - get:        `gets <key>`                                -> `VALUE <key> <flags> <len> <cas>` + data + `END` | `END`
 * - CAS write:  `cas <key> 0 <ttl> <len> <cas>` + data      -> `STORED` | `EXISTS` | `NOT_FOUND`
 * - CAS delete: `cas <key> 0 2592001 0 <cas>` + empty data  -> `STORED` | `EXISTS` | `NOT_FOUND`
 *
 * The classic protocol has no CAS-checked delete (`delete` takes no CAS), so
 * a release is a CAS write whose expiry lies in the past: memcached reads an
 * expiry above 30 days as an absolute unix time, and 2592001 (one second past
 * 30 days after the epoch) is before any server started, so the item is
 * stored already expired and the next read misses. A negative expiry would do
 * the same on memcached, but twemproxy drops the connection on it.
 *
 * A stored reply carries no CAS (`writeReturnsCas` is false): the client
 * reads the entry back with a `gets` in the same round trip.
 *
 * Replies carry no request id and do not say which command they answer, so
 * a connection matches them first-in first-out and tells the parser which
 * request it expects (`op`); a reply that cannot answer it is a protocol
 * error. To add a command (e.g. `incr`/`decr`, which answer with the number
 * itself or `NOT_FOUND`), add an `Op`, its encoder and its line in `ANSWERS`.
 */
import { EMPTY, ProtocolError, type Codec, type Op, type Reply, type ReplyStatus } from './codec.js';

/** Bytes the text protocol cannot carry in a key (it splits commands on spaces and ends them at CRLF). */
// eslint-disable-next-line no-control-regex
const UNSAFE_KEY = /[\x00-\x20\x7f]/;
/** memcached's key limit. */
const MAX_KEY = 250;
/** Longest reply line memlock can get (error text included), to catch a stream that is not text protocol. */
const MAX_LINE = 8192;
/**
 * An absolute expiry in the past: above 30 days (2592000 s), so an absolute
 * unix time, and one second past it, long before any server started.
 */
export const PAST_EXPIRY = 2_592_001;

/** The reply lines that answer each request, and what they mean (a hit is `VALUE`, see `parse`). */
const ANSWERS: Readonly<Record<Op, ReadonlyMap<string, ReplyStatus>>> = {
  add: new Map([
    ['STORED', 'ok'],
    ['NOT_STORED', 'exists'],
  ]),
  // NOT_STORED: memcached never answers a `cas` with it, but a proxy may; not applied either way.
  set: new Map([
    ['STORED', 'ok'],
    ['EXISTS', 'exists'],
    ['NOT_FOUND', 'not_found'],
    ['NOT_STORED', 'exists'],
  ]),
  delete: new Map([
    ['STORED', 'ok'],
    ['EXISTS', 'exists'],
    ['NOT_FOUND', 'not_found'],
    ['NOT_STORED', 'exists'],
  ]),
  get: new Map([['END', 'not_found']]),
};

/** Any answer, for a reply parsed without knowing its request. */
const ANY: ReadonlyMap<string, ReplyStatus> = new Map(Object.values(ANSWERS).flatMap((answers) => [...answers]));

const END = Buffer.from('END\r\n');

/** The key as it goes on the wire; throws a RangeError for one the text protocol cannot carry. */
export function textKey(key: string): string {
  if (UNSAFE_KEY.test(key)) {
    throw new RangeError('memcache key holds whitespace or control characters, which the text protocol cannot carry');
  }
  if (Buffer.byteLength(key) > MAX_KEY) throw new RangeError(`memcache key is longer than ${MAX_KEY} bytes`);
  return key;
}

function checkTtl(ttlSeconds: number): number {
  // A negative expiry would make twemproxy drop the connection.
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 0) {
    throw new RangeError(`memcache expiry must be a whole number of seconds >= 0, got ${ttlSeconds}`);
  }
  return ttlSeconds;
}

/** A storage command: its line, then the data block and its CRLF. */
function storage(line: string, value: Buffer): Buffer {
  const lineLength = Buffer.byteLength(line);
  const buf = Buffer.allocUnsafe(lineLength + value.length + 2);
  buf.write(line, 0, 'utf8');
  value.copy(buf, lineLength);
  buf[lineLength + value.length] = 13;
  buf[lineLength + value.length + 1] = 10;
  return buf;
}

/** Resets every field a reply may carry from an earlier one. */
function clear(reply: Reply): void {
  reply.seq = -1;
  reply.sasl = false;
  reply.fatal = false;
  reply.mayHaveApplied = false;
  reply.code = 0;
  reply.message = '';
  reply.value = EMPTY;
  reply.cas = 0n;
}

/** The classic text protocol. Stateless. */
export class TextCodec implements Codec {
  readonly name = 'text' as const;
  readonly writeReturnsCas = false;

  add(key: string, value: Buffer, ttlSeconds: number): Buffer {
    return storage(`add ${textKey(key)} 0 ${checkTtl(ttlSeconds)} ${value.length}\r\n`, value);
  }

  get(key: string): Buffer {
    return Buffer.from(`gets ${textKey(key)}\r\n`);
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Buffer {
    return storage(`cas ${textKey(key)} 0 ${checkTtl(ttlSeconds)} ${value.length} ${cas}\r\n`, value);
  }

  casDelete(key: string, cas: bigint): Buffer {
    return storage(`cas ${textKey(key)} 0 ${PAST_EXPIRY} 0 ${cas}\r\n`, EMPTY);
  }

  saslPlain(): undefined {
    return undefined;
  }

  parse(buf: Buffer, offset: number, reply: Reply, op?: Op): number {
    const nl = buf.indexOf(10, offset);
    if (nl === -1) {
      if (buf.length - offset > MAX_LINE) throw new ProtocolError('text-protocol reply line too long');
      return -1;
    }
    if (nl === offset || buf[nl - 1] !== 13) throw new ProtocolError('malformed text-protocol reply from memcached');
    const line = buf.toString('latin1', offset, nl - 1);
    clear(reply);
    if (line.startsWith('VALUE ') && (op === undefined || op === 'get')) return parseHit(buf, line, nl + 1, reply);
    const status = (op === undefined ? ANY : ANSWERS[op]).get(line);
    if (status !== undefined) {
      reply.status = status;
      return nl + 1;
    }
    reply.status = 'error';
    reply.message = line.slice(0, 200);
    if (line.startsWith('SERVER_ERROR')) {
      // memcached's own SERVER_ERRORs (object too large, out of memory) are
      // not applied, but a proxy answers SERVER_ERROR when its connection to
      // memcached failed after forwarding the request, which then may have
      // been applied. Dropping the connection after it makes the lock
      // protocol read an entry back before it uses a CAS again (memcached
      // behind the proxy may have restarted).
      reply.mayHaveApplied = true;
      reply.fatal = true;
      return nl + 1;
    }
    if (line.startsWith('CLIENT_ERROR') || line === 'ERROR' || line.startsWith('ERROR ')) {
      // memcached may now read the rest of the request as a new command:
      // what follows no longer lines up with our requests.
      reply.fatal = true;
      return nl + 1;
    }
    throw new ProtocolError(
      `unexpected text-protocol reply${op === undefined ? '' : ` to ${op}`}: ${line.slice(0, 80)}`,
    );
  }
}

/** A hit: `VALUE <key> <flags> <bytes> <cas>`, the data, then `END` (a single-key `gets`). */
function parseHit(buf: Buffer, line: string, dataAt: number, reply: Reply): number {
  const fields = line.split(' ');
  const size = Number(fields[3]);
  const cas = fields[4];
  if (fields.length !== 5 || !Number.isInteger(size) || size < 0 || cas === undefined || !/^\d+$/.test(cas)) {
    throw new ProtocolError(`malformed text-protocol reply (gets with CAS expected): ${line.slice(0, 80)}`);
  }
  const dataEnd = dataAt + size;
  if (dataEnd + 2 > buf.length) return -1;
  if (buf[dataEnd] !== 13 || buf[dataEnd + 1] !== 10)
    throw new ProtocolError('text-protocol value not terminated by CRLF');
  // One item per request: what follows must be END (or the start of it).
  const tail = buf.subarray(dataEnd + 2, dataEnd + 2 + END.length);
  if (!END.subarray(0, tail.length).equals(tail)) {
    throw new ProtocolError('text-protocol value not followed by END');
  }
  if (tail.length < END.length) return -1;
  reply.status = 'ok';
  reply.cas = BigInt(cas);
  // Copied: a value must not pin the socket's whole chunk.
  reply.value = size === 0 ? EMPTY : Buffer.from(buf.subarray(dataAt, dataEnd));
  return dataEnd + 2 + END.length;
}
