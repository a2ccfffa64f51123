/**
 * The narrow memcache client the lock protocol runs on. Only the five
 * operations the protocol needs, each returning the CAS and the identity of
 * the connection it came over, so the protocol can tell when a CAS may be
 * stale (memcached restarts its CAS counter at 1 after a restart).
 *
 * Implementations must never re-send a request on their own (an add or a CAS
 * write that is re-sent can be applied twice), must put a deadline on every
 * operation, and throw `MemcacheUnavailableError` (with `cause`) for any
 * transport failure or unexpected server status.
 *
 * The "may have been applied" contract: every `MemcacheUnavailableError` a
 * `LockClient` throws says, in `mayHaveApplied`, whether the server may have
 * executed the request. It must be `true` whenever the request (or any byte
 * of it) was handed to a socket and no answer was parsed (timeout, connection
 * lost or dropped after the write), and may be `false` only when that is
 * certain: the server answered with an error status, or the request was never
 * written (connect refused or timed out, TLS or SASL handshake failed, client
 * closed). The lock protocol reads the entry back after a write that may have
 * been applied and trusts a `false` as "not applied".
 */

/** An entry as read with its CAS. */
export interface Entry {
  readonly value: Buffer;
  readonly cas: bigint;
  /** Connection generation the read came over (see `LockClient.isCurrent`). */
  readonly conn: number;
}

/**
 * Outcome of a write the server answered. For `ok`, `conn` is the connection
 * generation the new CAS came over. A client that could not learn the new
 * CAS (the text protocol, when the read-back after the write found another
 * value or failed) gives a generation no connection has: `isCurrent` is
 * false, so the lock protocol reads the entry back before it uses that CAS.
 */
export type WriteResult =
  | { readonly status: 'ok'; readonly cas: bigint; readonly conn: number }
  | { readonly status: 'exists' }
  | { readonly status: 'not_found' };

/** What the lock protocol needs from memcache. */
export interface LockClient {
  /** memcache `add`: `exists` when the key is present. */
  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult>;
  /**
   * `add` and `get` pipelined on one connection (one round trip). `entry` is
   * the read's outcome: `null` (missing) or the entry. A granted add stands
   * whatever became of the read (`entry` is then `null` if the read failed):
   * failing the call would leave the caller's own entry blocking the key.
   * A refused add whose read failed rejects with the read's error.
   */
  addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }>;
  /** `get` with CAS; `null` when missing. */
  get(key: string): Promise<Entry | null>;
  /** `set` checked against `cas`: `exists` when the CAS differs, `not_found` when the key is gone. */
  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult>;
  /** `delete` checked against `cas`. */
  casDelete(key: string, cas: bigint): Promise<WriteResult>;
  /**
   * True when the connection that produced generation `conn` for `key`'s
   * server is still the open one: a CAS from it cannot predate a restart.
   */
  isCurrent(key: string, conn: number): boolean;
  /** Name ('host:port') of the server `key` maps to, for errors and diagnostics. */
  serverOf(key: string): string;
  /** Fails pending operations and closes connections this client opened. */
  close(): Promise<void>;
}
