/**
 * memcached's meta text protocol (memcached >= 1.6; the protocol of
 * memcached's proxy, mcrouter and ElastiCache Serverless):
 *
 * - add:        `ms <key> <len> T<ttl> c ME`      -> `HD c<cas>` | `NS`
 * - get:        `mg <key> v c`                    -> `VA <len> c<cas>` + data | `EN`
 * - CAS write:  `ms <key> <len> T<ttl> c C<cas>`  -> `HD c<cas>` | `EX` | `NF`
 * - CAS delete: `md <key> C<cas>`                 -> `HD` | `EX` | `NF`
 *
 * Replies come back in request order and carry no request id, so a
 * connection matches them first-in first-out. A key the text protocol cannot
 * carry (whitespace or control bytes) is sent base64-encoded with the `b`
 * flag, which names the same item as the raw bytes would.
 */
import { EMPTY, ProtocolError, type Codec, type Reply } from './codec.js';

/** Bytes the text protocol cannot carry in a key. */
// eslint-disable-next-line no-control-regex
const UNSAFE_KEY = /[\x00-\x20\x7f]/;
/** memcached's key limit, which applies to the key as sent (base64 included). */
const MAX_KEY = 250;
/** Longest reply line memlock can get (error text included), to catch a stream that is not meta. */
const MAX_LINE = 8192;

/**
 * The key as it goes on the wire, followed by the `b` flag when it is sent
 * base64-encoded. Every meta command takes flags after the key, except `ms`,
 * whose data length comes first: see `storeKey`.
 */
export function wireKey(key: string): string {
  const encoded = encodeKey(key);
  return encoded === undefined ? key : `${encoded} b`;
}

/** `ms <key> <datalen> [b]`: the head of a meta set. */
function storeKey(key: string, length: number): string {
  const encoded = encodeKey(key);
  return encoded === undefined ? `ms ${key} ${length}` : `ms ${encoded} ${length} b`;
}

/** The base64 form of a key the text protocol cannot carry, else `undefined`. */
function encodeKey(key: string): string | undefined {
  if (!UNSAFE_KEY.test(key)) return undefined;
  const encoded = Buffer.from(key).toString('base64');
  if (encoded.length > MAX_KEY) {
    throw new RangeError(`memcache key needs base64 for the meta protocol and is then longer than ${MAX_KEY} bytes`);
  }
  return encoded;
}

function store(head: string, value: Buffer): Buffer {
  const headLength = Buffer.byteLength(head);
  const buf = Buffer.allocUnsafe(headLength + value.length + 2);
  buf.write(head, 0, 'utf8');
  value.copy(buf, headLength);
  buf[headLength + value.length] = 13;
  buf[headLength + value.length + 1] = 10;
  return buf;
}

/** Parses the `c<cas>` flag of a reply line (0 when absent). */
function casOf(line: string): bigint {
  const at = line.indexOf(' c');
  if (at === -1) return 0n;
  const end = line.indexOf(' ', at + 2);
  return BigInt(line.slice(at + 2, end === -1 ? undefined : end));
}

/** The meta protocol. Stateless. */
export class MetaCodec implements Codec {
  readonly name = 'meta' as const;
  readonly writeReturnsCas = true;

  add(key: string, value: Buffer, ttlSeconds: number): Buffer {
    return store(`${storeKey(key, value.length)} T${ttlSeconds} c ME\r\n`, value);
  }

  get(key: string): Buffer {
    return Buffer.from(`mg ${wireKey(key)} v c\r\n`);
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Buffer {
    return store(`${storeKey(key, value.length)} T${ttlSeconds} c C${cas}\r\n`, value);
  }

  casDelete(key: string, cas: bigint): Buffer {
    return Buffer.from(`md ${wireKey(key)} C${cas}\r\n`);
  }

  saslPlain(): undefined {
    return undefined;
  }

  parse(buf: Buffer, offset: number, reply: Reply): number {
    const nl = buf.indexOf(10, offset);
    if (nl === -1) {
      if (buf.length - offset > MAX_LINE) throw new ProtocolError('meta-protocol reply line too long');
      return -1;
    }
    if (nl === offset || buf[nl - 1] !== 13) throw new ProtocolError('malformed meta-protocol reply from memcached');
    const line = buf.toString('latin1', offset, nl - 1);
    reply.seq = -1;
    reply.sasl = false;
    reply.fatal = false;
    reply.mayHaveApplied = false;
    reply.code = 0;
    reply.message = '';
    reply.value = EMPTY;
    reply.cas = 0n;
    const code = line.slice(0, 2);
    switch (code) {
      case 'VA': {
        const sizeEnd = line.indexOf(' ', 3);
        const size = Number(line.slice(3, sizeEnd === -1 ? undefined : sizeEnd));
        if (!Number.isInteger(size) || size < 0)
          throw new ProtocolError(`malformed meta-protocol reply: ${line.slice(0, 80)}`);
        const dataAt = nl + 1;
        const end = dataAt + size + 2;
        if (end > buf.length) return -1;
        if (buf[end - 2] !== 13 || buf[end - 1] !== 10)
          throw new ProtocolError('meta-protocol value not terminated by CRLF');
        reply.status = 'ok';
        reply.cas = casOf(line);
        // Copied: a value must not pin the socket's whole chunk.
        reply.value = size === 0 ? EMPTY : Buffer.from(buf.subarray(dataAt, dataAt + size));
        return end;
      }
      case 'HD':
        reply.status = 'ok';
        reply.cas = casOf(line);
        return nl + 1;
      case 'NS':
      case 'EX':
        reply.status = 'exists';
        return nl + 1;
      case 'NF':
      case 'EN':
        reply.status = 'not_found';
        return nl + 1;
      default:
        break;
    }
    reply.status = 'error';
    reply.message = line.slice(0, 200);
    if (line.startsWith('SERVER_ERROR')) return nl + 1;
    if (line.startsWith('CLIENT_ERROR') || line === 'ERROR') {
      // memcached may now read the rest of the request as a new command:
      // what follows no longer lines up with our requests.
      reply.fatal = true;
      return nl + 1;
    }
    throw new ProtocolError(`unexpected meta-protocol reply: ${line.slice(0, 80)}`);
  }
}
