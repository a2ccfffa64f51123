/**
 * Error classes. One base class with a stable `code`, like undici: callers
 * branch on `code` (or `instanceof`), never on messages. Contention
 * (`LockNotAcquiredError`), backend failure (`MemcacheUnavailableError`) and
 * loss (`LockLostError`) are distinct so a caller can tell "someone else has
 * it" from "we cannot know" from "we had it and lost it".
 */

/** The stable `code` of every error memlock creates (see the README's Errors table). */
export type MemlockErrorCode =
  | 'ERR_MEMLOCK_NOT_ACQUIRED'
  | 'ERR_MEMLOCK_EMPTY_CLIENT_ID'
  | 'ERR_MEMLOCK_LOST'
  | 'ERR_MEMLOCK_UNAVAILABLE'
  | 'ERR_MEMLOCK_CLOSED';

/** Base class of every error memlock creates. */
export class MemlockError extends Error {
  /** Stable machine-readable code, e.g. `ERR_MEMLOCK_LOST`. */
  readonly code: MemlockErrorCode;

  constructor(message: string, code: MemlockErrorCode, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * The key is held by another client (or the wait timed out). `fn` was not
 * called. The message names the holder when it could be read, and says
 * `done` (a completed run's `holdAfterMs` marker) apart from a run in progress.
 *
 * It has a stack trace, like every error: an uncaught one must say where it
 * came from. On the hot path of refusals that costs a few microseconds of CPU
 * per refused attempt (measured on Node 20: see the commit that restored it).
 */
export class LockNotAcquiredError extends MemlockError {
  declare readonly code: 'ERR_MEMLOCK_NOT_ACQUIRED';
  /** The memlock key (as passed by the caller). */
  readonly key: string;
  /** The holder's clientId when it could be read, else `undefined`. With `done`, who completed the run. */
  readonly holder: string | undefined;
  /**
   * `true` when the key is blocked by a completed run's `holdAfterMs` marker
   * (the work is done, not in progress); `false` otherwise.
   */
  readonly done: boolean;

  constructor(key: string, holder?: string, options?: { cause?: unknown; message?: string; done?: boolean }) {
    const done = options?.done === true;
    super(options?.message ?? refusalText(key, holder, done), 'ERR_MEMLOCK_NOT_ACQUIRED', options);
    this.key = key;
    this.holder = holder;
    this.done = done;
  }
}

/** A clientId quoted for a message; an id can be up to 4 KB, a message line should not. @internal */
export function quoteId(id: string): string {
  return JSON.stringify(id.length > 200 ? `${id.slice(0, 200)}…` : id);
}

/** `Lock "k" is held by "host:1:abc"`, or `... was completed by ... (holdAfterMs)` for a `done` marker. */
function refusalText(key: string, holder: string | undefined, done: boolean): string {
  const lock = `Lock ${JSON.stringify(key)}`;
  if (done)
    return holder === undefined
      ? `${lock} was completed recently (holdAfterMs)`
      : `${lock} was completed by ${quoteId(holder)} (holdAfterMs)`;
  return holder === undefined ? `${lock} is held by another client` : `${lock} is held by ${quoteId(holder)}`;
}

/** `clientId` was the empty string. Checked before any memcache traffic. */
export class EmptyClientIdError extends MemlockError {
  declare readonly code: 'ERR_MEMLOCK_EMPTY_CLIENT_ID';
  constructor() {
    super('clientId must be a non-empty string', 'ERR_MEMLOCK_EMPTY_CLIENT_ID');
  }
}

/**
 * Why a held lock was lost:
 * - `gone`: the entry disappeared (evicted, flushed, expired, deleted).
 * - `taken`: the entry now holds another acquisition (another client, or a
 *   takeover by the same clientId).
 * - `unreachable`: renewals failed (server down or slow) until the lease could
 *   have run out on the server.
 * - `deadline`: no renewal was confirmed before the lease could have run out,
 *   without a transport error (typically an event-loop stall).
 * - `closed`: `memlock.close()` was called while the lock was held; the
 *   entry was released.
 */
export type LockLostKind = 'gone' | 'taken' | 'unreachable' | 'deadline' | 'closed';

/**
 * Set as `signal.reason` on the signal handed to `fn` when the lock is lost.
 * `kind` says which way; `cause` carries the transport error for `unreachable`.
 */
export class LockLostError extends MemlockError {
  declare readonly code: 'ERR_MEMLOCK_LOST';
  readonly key: string;
  readonly kind: LockLostKind;
  /**
   * What `fn` rejected with after the lock was lost, when that was not this
   * error itself (an `AbortError` from a driver, say). `tryWithLock` rejects
   * with this `LockLostError` so `instanceof` works at the call site; the
   * original error stays reachable here. `undefined` otherwise.
   */
  fnError: unknown = undefined;

  constructor(key: string, kind: LockLostKind, options?: { cause?: unknown }) {
    super(`Lock "${key}" was lost: ${lostText[kind]}`, 'ERR_MEMLOCK_LOST', options);
    this.key = key;
    this.kind = kind;
  }
}

const lostText: Record<LockLostKind, string> = {
  gone: 'the entry is gone (evicted, flushed or deleted)',
  taken: 'the entry was taken by another acquisition',
  unreachable: 'memcache was unreachable until the lease could have expired',
  deadline: 'no renewal was confirmed before the lease could have expired (event loop stalled?)',
  closed: 'memlock.close() was called while it was held',
};

/**
 * memcache could not be reached, timed out, or answered with an error. The
 * outcome is unknown or failed; `cause` holds the underlying error.
 */
export class MemcacheUnavailableError extends MemlockError {
  declare readonly code: 'ERR_MEMLOCK_UNAVAILABLE';
  /** The server ('host:port') the operation was routed to, when known. */
  readonly server: string | undefined;
  /**
   * Whether the failed request may still have been applied by the server:
   * `true` when it was sent and no answer came (timeout, connection lost),
   * `false` when the server answered with an error or the request never left
   * (connection refused, TLS or SASL failure, client closed). A write that
   * may have been applied is read back, never re-sent. Unknown means `true`.
   */
  readonly mayHaveApplied: boolean;

  constructor(message: string, options?: { cause?: unknown; server?: string; mayHaveApplied?: boolean }) {
    super(message, 'ERR_MEMLOCK_UNAVAILABLE', options);
    this.server = options?.server;
    this.mayHaveApplied = options?.mayHaveApplied ?? true;
  }
}
