/**
 * memcached's binary protocol: 24-byte headers, CAS in the header, request
 * ids (opaque) echoed back, SASL PLAIN. Deprecated by memcached since 1.6
 * but the only one memcached accepts with SASL, and what memjs speaks.
 */
import { EMPTY, ProtocolError, type Codec, type Reply } from './codec.js';

const MAGIC_REQUEST = 0x80;
const MAGIC_RESPONSE = 0x81;
export const OP_GET = 0x00;
export const OP_SET = 0x01;
export const OP_ADD = 0x02;
export const OP_DELETE = 0x04;
export const OP_SASL_AUTH = 0x21;

export const STATUS_OK = 0x00;
export const STATUS_NOT_FOUND = 0x01;
export const STATUS_EXISTS = 0x02;
export const STATUS_NOT_STORED = 0x05;
export const STATUS_AUTH_ERROR = 0x20;

function header(
  buf: Buffer,
  opcode: number,
  keyLength: number,
  extrasLength: number,
  bodyLength: number,
  seq: number,
  cas: bigint,
): void {
  buf[0] = MAGIC_REQUEST;
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
export function storeRequest(
  opcode: number,
  key: string,
  value: Buffer,
  ttlSeconds: number,
  cas: bigint,
  seq: number,
): Buffer {
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
export function keyRequest(opcode: number, key: string, cas: bigint, seq: number): Buffer {
  const keyLength = Buffer.byteLength(key);
  const buf = Buffer.allocUnsafe(24 + keyLength);
  header(buf, opcode, keyLength, 0, keyLength, seq, cas);
  buf.write(key, 24);
  return buf;
}

/** Maps a binary status to the common reply status. */
export function replyStatus(status: number): Reply['status'] {
  switch (status) {
    case STATUS_OK:
      return 'ok';
    case STATUS_NOT_FOUND:
      return 'not_found';
    case STATUS_EXISTS:
    case STATUS_NOT_STORED:
      return 'exists';
    default:
      return 'error';
  }
}

/** The binary protocol. One instance per client: it caches renewal requests. */
export class BinaryCodec implements Codec {
  readonly name = 'binary' as const;
  readonly writeReturnsCas = true;
  /** Renewal requests by the value they write (see casSet). */
  readonly #renewals = new WeakMap<Buffer, Buffer>();

  add(key: string, value: Buffer, ttlSeconds: number, seq: number): Buffer {
    return storeRequest(OP_ADD, key, value, ttlSeconds, 0n, seq);
  }

  get(key: string, seq: number): Buffer {
    return keyRequest(OP_GET, key, 0n, seq);
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint, seq: number): Buffer {
    // A held lock renews the same key and value again and again: reuse its
    // request and patch the header. Safe because a lock never has two writes
    // in flight, and a write is handed to the socket before its reply comes.
    let buf = this.#renewals.get(value);
    if (buf === undefined || buf.length !== 32 + Buffer.byteLength(key) + value.length) {
      buf = storeRequest(OP_SET, key, value, ttlSeconds, cas, seq);
      this.#renewals.set(value, buf);
    } else {
      buf.writeUInt32BE(seq, 12);
      buf.writeBigUInt64BE(cas, 16);
      buf.writeUInt32BE(ttlSeconds, 28);
    }
    return buf;
  }

  casDelete(key: string, cas: bigint, seq: number): Buffer {
    return keyRequest(OP_DELETE, key, cas, seq);
  }

  saslPlain(username: string, password: string): Buffer {
    const mech = 'PLAIN';
    const value = Buffer.from(`\0${username}\0${password}`);
    const buf = Buffer.allocUnsafe(24 + mech.length + value.length);
    header(buf, OP_SASL_AUTH, mech.length, 0, mech.length + value.length, 0, 0n);
    buf.write(mech, 24, 'latin1');
    value.copy(buf, 24 + mech.length);
    return buf;
  }

  parse(buf: Buffer, offset: number, reply: Reply): number {
    if (buf.length - offset < 24) return -1;
    if (buf[offset] !== MAGIC_RESPONSE) throw new ProtocolError('malformed binary-protocol response from memcached');
    const end = offset + 24 + buf.readUInt32BE(offset + 8);
    if (end > buf.length) return -1;
    const status = buf.readUInt16BE(offset + 6);
    const valueAt = offset + 24 + (buf[offset + 4] as number) + buf.readUInt16BE(offset + 2);
    // Copied: a value must not pin the socket's whole chunk.
    const value = valueAt < end ? Buffer.from(buf.subarray(valueAt, end)) : EMPTY;
    reply.status = replyStatus(status);
    reply.cas = buf.readBigUInt64BE(offset + 16);
    reply.seq = buf.readUInt32BE(offset + 12);
    reply.sasl = buf[offset + 1] === OP_SASL_AUTH;
    reply.fatal = false;
    reply.mayHaveApplied = false;
    reply.code = reply.status === 'error' ? status : 0;
    reply.message = reply.status === 'error' ? errorText(status, value) : '';
    reply.value = reply.status === 'ok' ? value : EMPTY;
    return end;
  }
}

function errorText(status: number, value: Buffer): string {
  const text = value.toString('utf8', 0, Math.min(value.length, 200));
  if (status === STATUS_AUTH_ERROR) return `authentication failed (status 0x20)${text ? `: ${text}` : ''}`;
  return text || `status 0x${status.toString(16)}`;
}
