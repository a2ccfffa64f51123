/**
 * What a wire protocol (binary, meta or classic text) provides to a
 * connection: request encoders for the four operations the lock protocol
 * uses, and an in-place parser that reads one reply at a time into a reused
 * `Reply`, so framing a response allocates nothing but the value it carries.
 */

/** The wire protocols memlock speaks on its own connections. */
export type ProtocolName = 'binary' | 'meta' | 'text';

/**
 * What a request is: tells a parser which replies may answer it (the text
 * protocol's replies do not say) and turns a reply into a result.
 */
export type Op = 'add' | 'set' | 'delete' | 'get';

/** A reply's outcome, common to both protocols. */
export type ReplyStatus =
  /** Stored / deleted / found (a hit carries `value`). */
  | 'ok'
  /** Not stored because the key exists (add) or the CAS differs (CAS write/delete). */
  | 'exists'
  /** Key missing (a get miss, or a CAS write/delete on a missing key). */
  | 'not_found'
  /** The server answered with an error (not applied). */
  | 'error';

/** One parsed reply; a codec overwrites the same object for every reply. */
export interface Reply {
  status: ReplyStatus;
  cas: bigint;
  /** The value of a hit, else empty. Never a view into the socket's buffer. */
  value: Buffer;
  /** Request id echoed by the server (binary opaque), or -1 when the protocol has none. */
  seq: number;
  /** Server error text, for `error`. */
  message: string;
  /** Server status code (binary) for `error`, else 0. */
  code: number;
  /**
   * After this error the byte stream can no longer be trusted to line up
   * with the requests (meta `CLIENT_ERROR`/`ERROR`): drop the connection.
   */
  fatal: boolean;
  /** A SASL reply (binary), handled by the connection's handshake. */
  sasl: boolean;
  /**
   * For `error`: the request may still have been applied. A classic-protocol
   * proxy (twemproxy) answers `SERVER_ERROR` when its connection to memcached
   * failed after it forwarded the request.
   */
  mayHaveApplied: boolean;
}

/** A fresh `Reply` to be filled by `Codec.parse`. */
export function emptyReply(): Reply {
  return {
    status: 'ok',
    cas: 0n,
    value: EMPTY,
    seq: -1,
    message: '',
    code: 0,
    fatal: false,
    sasl: false,
    mayHaveApplied: false,
  };
}

export const EMPTY = Buffer.alloc(0);

/** Encoders and the parser of one wire protocol. */
export interface Codec {
  readonly name: ProtocolName;
  /**
   * Whether a stored reply carries the item's new CAS. When not (the classic
   * text protocol), the client reads the entry back in the same round trip.
   */
  readonly writeReturnsCas: boolean;
  /** `add` with expiry in seconds; the reply carries the new CAS. */
  add(key: string, value: Buffer, ttlSeconds: number, seq: number): Buffer;
  /** Read with CAS. */
  get(key: string, seq: number): Buffer;
  /** Write checked against `cas`; the reply carries the new CAS. */
  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint, seq: number): Buffer;
  /** Delete checked against `cas`. */
  casDelete(key: string, cas: bigint, seq: number): Buffer;
  /** SASL PLAIN authentication request, or `undefined` when the protocol has no SASL. */
  saslPlain(username: string, password: string): Buffer | undefined;
  /**
   * Parses one reply starting at `offset` into `reply`. Returns the offset
   * just past it, or -1 when `buf` does not hold the whole reply yet.
   * Throws on bytes that are not a reply of this protocol, or (when `op`,
   * the request it answers, is given) not a reply to that request.
   */
  parse(buf: Buffer, offset: number, reply: Reply, op?: Op): number;
}

/** Thrown by a parser on bytes that cannot be a reply (wrong protocol, corrupt stream). */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}
