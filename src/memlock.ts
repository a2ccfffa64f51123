/**
 * The public `Memlock` class: validation, acquisition attempts, the
 * `tryWithLock` / `acquire` / `wrap` / `inspect` / `close` surface, and the
 * shared default instance. Waiting, and how a release hands a key on, live
 * in waiting.ts (an instance owns one `Waiting`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { hostname } from 'node:os';
import type { LockClient } from './client.js';
import { channels, publish } from './diagnostics.js';
import { LockLostError, LockNotAcquiredError, MemcacheUnavailableError, MemlockError } from './errors.js';
import { Scheduler } from './scheduler.js';
import { memcacheKeyOf } from './keys.js';
import { HeldLock, type Lock, type LockContext } from './lock.js';
import { MemcacheLockClient } from './transport/memcache-lock-client.js';
import { MemjsClientAdapter } from './transport/memjs-client.js';
import {
  checkCallArgs,
  checkKnownOptions,
  LOCK_OPTION_NAMES,
  isSignalLike,
  resolveLockOptions,
  resolveMemlockOptions,
  type LockOptions,
  type MemlockOptions,
  type ResolvedLockOptions,
  type ResolvedMemlockOptions,
} from './options.js';
import { acquireEntry, readHolder, type AcquireMode, type Holder } from './protocol.js';
import { linkedSignal } from './signals.js';
import { Waiting, type Acquired, type Attempt } from './waiting.js';

/** Prefix of `wrap()`'s default clientIds: names the host and process. */
let defaultIdPrefix: string | undefined;

/** Options of `memlock.wrap()`. */
export interface WrapOptions<A extends unknown[], N = never> extends Omit<LockOptions, 'signal'> {
  /** Derives the lock key from the handler's arguments. */
  readonly key: (...args: A) => string;
  /**
   * The holder's id; a function of the arguments, or a fixed string (then
   * concurrent calls with one key take the lock over from each other: use it
   * only when calls never overlap). @default `${hostname}:${pid}:${random}` per call
   */
  readonly clientId?: string | ((...args: A) => string) | undefined;
  /**
   * The caller's signal for one call, from its arguments (e.g. an HTTP
   * request's abort): it cancels waiting and aborts the handler's signal
   * with its reason. @default undefined (no caller cancellation)
   */
  readonly signal?: ((...args: A) => AbortSignal | undefined) | undefined;
  /**
   * Called instead of rejecting when the lock is held elsewhere; its result
   * becomes the wrapped call's result. @default undefined (reject with `LockNotAcquiredError`)
   */
  readonly onNotAcquired?: ((error: LockNotAcquiredError, ...args: A) => N | Promise<N>) | undefined;
}

/** Every option name of `wrap()`: the per-call ones and its own. */
const WRAP_OPTION_NAMES: Readonly<Record<keyof WrapOptions<unknown[], unknown>, true>> = {
  ...LOCK_OPTION_NAMES,
  key: true,
  clientId: true,
  signal: true,
  onNotAcquired: true,
};

/** What `inspect()` reports about a held key. */
export interface LockInfo {
  readonly clientId: string;
  /** When the holder first acquired it (holder's wall clock). */
  readonly acquiredAt: Date;
}

/** A memcache-backed lock service. */
export class Memlock {
  readonly #options: ResolvedMemlockOptions;
  readonly #client: LockClient;
  readonly #ownsClient: boolean;
  readonly #scheduler: Scheduler;
  readonly #locks = new Set<HeldLock>();
  /** Waiting calls, local waiters and the waiter queue, release planning. */
  readonly #waiting: Waiting;
  readonly #context: LockContext;
  /** This instance's token in waiter queues: it stands for all of its local waiters. */
  readonly #token = randomBytes(12).toString('base64url');
  /** Per-call settings when a call passes no options (the common case: resolved once). */
  readonly #defaultLockOptions: ResolvedLockOptions;
  /** Aborted by `close()`: stops calls that are waiting for a lock. */
  readonly #closed = new AbortController();
  /** Acquisition attempts and queue updates in flight: `close()` lets them finish first. */
  readonly #pending = new Set<Promise<unknown>>();
  /** Acquisition attempts in flight, and who waits for them to reach zero (close()). */
  #attempts = 0;
  #settled: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  /**
   * @throws {TypeError | RangeError} on invalid options, naming the option. Nothing is opened.
   */
  constructor(options: MemlockOptions = {}) {
    this.#options = resolveMemlockOptions(options);
    if (options.lockClient !== undefined) {
      this.#client = options.lockClient;
      this.#ownsClient = false;
    } else {
      this.#client =
        options.client !== undefined
          ? new MemjsClientAdapter(options.client, { timeoutMs: this.#options.timeoutMs })
          : new MemcacheLockClient({
              servers: this.#options.servers,
              protocol: this.#options.protocol,
              tls: this.#options.tls,
              username: this.#options.username,
              password: this.#options.password,
              timeoutMs: this.#options.timeoutMs,
              ref: this.#options.ref,
            });
      this.#ownsClient = true;
    }
    this.#scheduler = new Scheduler();
    this.#defaultLockOptions = resolveLockOptions(undefined, this.#options);
    // Every waiting call listens to #closed: any number of waiters is normal.
    setMaxListeners(0, this.#closed.signal);
    this.#waiting = new Waiting({
      client: this.#client,
      prefix: this.#options.prefix,
      token: this.#token,
      turn: this.#options.turn,
      closed: this.#closed.signal,
      track: (work) => this.#track(work),
      once: (attempt, mode) => this.#once(attempt, mode),
      hold: (attempt, acquired, started) => this.#hold(attempt, acquired, started),
    });
    this.#context = {
      client: this.#client,
      scheduler: this.#scheduler,
      onDone: (lock) => {
        this.#locks.delete(lock);
        this.#waiting.holderDone(lock);
      },
      planRelease: (lock) => this.#waiting.planRelease(lock),
    };
  }

  /** Number of locks this instance holds (for diagnostics and tests). */
  get heldCount(): number {
    return this.#locks.size;
  }

  /**
   * Runs `fn` while holding `key`. Resolves with what `fn` resolves, rejects
   * with what it throws (with the `LockLostError` when the lock was lost
   * before `fn` rejected); the lock is released afterwards (a failed release
   * is reported on `memlock:release-failed`, never thrown over the result).
   */
  tryWithLock<T>(
    key: string,
    clientId: string,
    fn: (signal: AbortSignal) => T | Promise<T>,
    options?: LockOptions,
  ): Promise<T> {
    // Not async: #run's promise is returned as it is, without another
    // promise and the ticks of resolving one with it (the per-lock hot path).
    // Bad arguments still reject, never throw.
    try {
      checkCallArgs(key, clientId);
      if (typeof fn !== 'function')
        throw new TypeError(`Expected \`fn\` to be a function, got ${fn === null ? 'null' : typeof fn}`);
      return this.#run(key, clientId, fn, this.#resolve(options));
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  async #run<T>(
    key: string,
    clientId: string,
    fn: (signal: AbortSignal) => T | Promise<T>,
    call: ResolvedLockOptions,
  ): Promise<T> {
    let lock: HeldLock;
    try {
      lock = await this.#acquire(key, clientId, call);
    } catch (error) {
      if (call.failOpen && error instanceof MemcacheUnavailableError)
        return this.#runUnlocked(key, clientId, fn, call, error);
      throw error;
    }
    let result: T;
    try {
      result = await fn(lock.signal);
    } catch (error) {
      // Decided before the release: a close() during the release is not a loss fn saw.
      const rejection = lostAtCallSite(lock.signal, error);
      await lock.release();
      throw rejection;
    }
    await lock.complete();
    return result;
  }

  /** Acquires `key` and returns a handle; the caller must `release()` it (or `await using`). */
  async acquire(key: string, clientId: string, options?: LockOptions): Promise<Lock> {
    checkCallArgs(key, clientId);
    const call = this.#resolve(options);
    // Both need fn's outcome, which only tryWithLock and wrap see.
    if (call.holdTtlSeconds > 0)
      throw new TypeError(
        'Expected `holdAfterMs` only with tryWithLock or wrap (acquire() has no fn whose success it could mark)',
      );
    if (call.failOpen)
      throw new TypeError(
        'Expected `failOpen` only with tryWithLock or wrap (acquire() cannot hand out a lock it does not have)',
      );
    return this.#acquire(key, clientId, call);
  }

  #resolve(options: LockOptions | undefined): ResolvedLockOptions {
    return options === undefined ? this.#defaultLockOptions : resolveLockOptions(options, this.#options);
  }

  /**
   * Acquires for a call. Without a caller signal there is nothing to link
   * or dispose: the attempt's promise is returned as it is (the common,
   * per-lock hot path). A synchronous throw here reaches the callers, #run
   * and acquire(), inside their own try or async body: a rejection all the same.
   */
  #acquire(key: string, clientId: string, call: ResolvedLockOptions): Promise<HeldLock> {
    if (call.signal !== undefined) return this.#acquireLinked(key, clientId, call);
    this.#checkOpen();
    return this.#attempt(key, clientId, call, undefined);
  }

  /** #acquire with a caller signal: a native mirror of it (polyfilled signals too), disposed when the attempt settles. */
  async #acquireLinked(key: string, clientId: string, call: ResolvedLockOptions): Promise<HeldLock> {
    this.#checkOpen();
    const { signal, dispose } = linkedSignal(call.signal);
    try {
      signal?.throwIfAborted();
      return await this.#attempt(key, clientId, call, signal);
    } finally {
      dispose();
    }
  }

  #attempt(
    key: string,
    clientId: string,
    call: ResolvedLockOptions,
    signal: AbortSignal | undefined,
  ): Promise<HeldLock> {
    const memcacheKey = memcacheKeyOf(this.#options.prefix, key);
    const attempt: Attempt = { key, memcacheKey, clientId, call, signal };
    if (call.wait === undefined) {
      // Parked by our own release moments ago, during a turn: take it with one
      // CAS (synchronously undefined when nothing is parked: no extra hop).
      const parked = this.#waiting.takeParked(attempt);
      if (parked !== undefined) return this.#parkedOrOnce(parked, attempt);
      return this.#once(attempt, this.#waiting.expectRefusal(memcacheKey) ? 'probe' : 'add');
    }
    // Tracked: close() stops waiting calls and lets each finish its cleanup
    // (leaving the waiter queue, deleting an entry handed to it) first.
    const waiting = this.#waiting.waitFor(attempt);
    this.#track(waiting);
    return waiting;
  }

  /** The parked entry if the CAS took it, else an ordinary attempt. */
  async #parkedOrOnce(parked: Promise<HeldLock | undefined>, attempt: Attempt): Promise<HeldLock> {
    const lock = await parked;
    if (lock !== undefined) return lock;
    return this.#once(attempt, this.#waiting.expectRefusal(attempt.memcacheKey) ? 'probe' : 'add');
  }

  /** `fn` without a lock (`failOpen`): its signal follows only the caller's signal. */
  async #runUnlocked<T>(
    key: string,
    clientId: string,
    fn: (signal: AbortSignal) => T | Promise<T>,
    call: ResolvedLockOptions,
    error: MemcacheUnavailableError,
  ): Promise<T> {
    publish(channels.failOpen, () => ({ key, clientId, error }));
    // A native signal for fn even when the caller's is polyfilled, or absent.
    const controller = new AbortController();
    const { signal: caller, dispose } = linkedSignal(call.signal, controller.signal);
    try {
      return await fn(caller ?? controller.signal);
    } finally {
      dispose();
    }
  }

  /** One attempt; `LockNotAcquiredError` when refused. Counted so `close()` can let it finish. */
  async #once(attempt: Attempt, mode: AcquireMode): Promise<HeldLock> {
    const { memcacheKey, call } = attempt;
    attempt.signal?.throwIfAborted();
    this.#checkOpen();
    // A counter, not a promise per attempt: this is the hot path.
    this.#attempts++;
    try {
      const started = performance.now();
      let outcome;
      try {
        outcome = await acquireEntry(
          this.#client,
          memcacheKey,
          attempt.clientId,
          call.ttlSeconds,
          call.stealAfterMs,
          mode,
          this.#token,
        );
      } catch (error) {
        // close() waits for this attempt; a failure meanwhile is the close's doing.
        if (this.#closing !== undefined) throw closedError(error);
        throw error;
      }
      if (!outcome.acquired) throw this.#refused(attempt, outcome.holder);
      this.#waiting.acquired(memcacheKey);
      const lock = this.#hold(attempt, outcome, started);
      return lock instanceof HeldLock ? lock : await lock;
    } finally {
      if (--this.#attempts === 0) this.#settled?.();
    }
  }

  #track(work: Promise<unknown>): void {
    this.#pending.add(work);
    const done = (): void => {
      this.#pending.delete(work);
    };
    work.then(done, done);
  }

  /** A refused attempt: bookkeeping, diagnostics, and the error to throw. */
  #refused({ key, memcacheKey, clientId, signal }: Attempt, holder: Holder | null): LockNotAcquiredError {
    this.#waiting.refused(memcacheKey, holder);
    const done = holder?.state === 'done';
    const holderId = holder?.state === 'reserved' ? undefined : holder?.clientId;
    publish(channels.refused, () => ({ key, clientId, holder: holderId, server: this.#client.serverOf(memcacheKey) }));
    this.#checkOpen();
    signal?.throwIfAborted();
    return new LockNotAcquiredError(key, holderId, done ? { done } : undefined);
  }

  /**
   * Turns an acquired entry into a held lock (heartbeat, local bookkeeping,
   * diagnostics). Synchronous on the common path; a promise only when the
   * call is giving up (closed or aborted meanwhile) and must delete it first.
   */
  #hold(attempt: Attempt, { held, how, previous }: Acquired, started: number): HeldLock | Promise<HeldLock> {
    const { key, memcacheKey, clientId, call, signal } = attempt;
    // The lock listens to the caller's own signal (a polyfilled one too): the
    // native mirror used while acquiring is disposed when acquire() returns.
    const lock = new HeldLock(
      this.#context,
      key,
      clientId,
      held,
      call.heartbeatMs,
      call.signal,
      call.holdTtlSeconds,
      how,
    );
    this.#waiting.addHolder(lock, how);
    this.#locks.add(lock);
    if (this.#closing !== undefined || signal?.aborted === true) return this.#giveUp(lock, signal);
    // Confirmed after its deadline (a slow reply, a stalled event loop): the
    // server may have let the entry expire and granted it again already.
    // Never handed out: it fails as a loss, and the entry is deleted (CAS).
    if (performance.now() >= lock.deadline) {
      lock.lose('deadline', undefined);
      return this.#giveUp(lock, signal);
    }
    publish(channels.acquired, () => ({
      key,
      clientId,
      how,
      server: this.#client.serverOf(memcacheKey),
      durationMs: performance.now() - started,
    }));
    if ((how === 'takeover' || how === 'stolen') && previous !== null) {
      publish(channels.stolen, () => ({
        key,
        clientId,
        how,
        previousClientId: previous.clientId,
        previousAcquiredAt: new Date(previous.acquiredAt),
      }));
    }
    return lock;
  }

  /**
   * Giving up an entry just acquired (closed, aborted, or confirmed too
   * late): delete it, never hand it on (our own ticket may still head the
   * local queue), and reject with the reason.
   */
  async #giveUp(lock: HeldLock, signal: AbortSignal | undefined): Promise<never> {
    await lock.drop();
    this.#checkOpen();
    signal?.throwIfAborted();
    throw lock.signal.reason;
  }

  /**
   * Wraps a handler so each call runs under a lock whose key comes from its
   * arguments. The handler receives the lock's signal as an extra last argument.
   */
  wrap<A extends unknown[], R, N = never>(
    fn: (...args: [...A, AbortSignal]) => R | Promise<R>,
    options: WrapOptions<A, N>,
  ): (...args: A) => Promise<R | N> {
    if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
    if (options === null || typeof options !== 'object')
      throw new TypeError('Expected `options` to be an object with a `key` function');
    checkKnownOptions(options, WRAP_OPTION_NAMES, 'wrap options');
    if (typeof options.key !== 'function')
      throw new TypeError(`Expected \`key\` to be a function, got ${typeof options.key}`);
    const { key, clientId, onNotAcquired, signal, ...lockOptions } = options;
    if (clientId !== undefined && typeof clientId !== 'function') checkCallArgs('key', clientId);
    if (onNotAcquired !== undefined && typeof onNotAcquired !== 'function') {
      throw new TypeError(`Expected \`onNotAcquired\` to be a function, got ${typeof onNotAcquired}`);
    }
    if (signal !== undefined && typeof signal !== 'function') {
      throw new TypeError(`Expected \`signal\` to be a function returning an AbortSignal, got ${typeof signal}`);
    }
    // Validate the lock options once, up front.
    const resolved = resolveLockOptions(lockOptions, this.#options);
    return async (...args: A): Promise<R | N> => {
      const id = typeof clientId === 'function' ? clientId(...args) : (clientId ?? defaultClientId());
      const callSignal = signal?.(...args);
      const k = key(...args);
      checkCallArgs(k, id);
      if (callSignal !== undefined && !isSignalLike(callSignal))
        throw new TypeError('Expected `signal` to return an AbortSignal or undefined');
      try {
        return await this.#run(
          k,
          id,
          (lockSignal) => fn(...args, lockSignal),
          callSignal === undefined ? resolved : { ...resolved, signal: callSignal },
        );
      } catch (error) {
        if (onNotAcquired !== undefined && error instanceof LockNotAcquiredError) return onNotAcquired(error, ...args);
        throw error;
      }
    };
  }

  /** Who holds `key` and since when; `null` when free (or held by an entry memlock did not write). */
  async inspect(key: string): Promise<LockInfo | null> {
    if (typeof key !== 'string') throw new TypeError(`Expected \`key\` to be a string, got ${typeof key}`);
    if (key === '') throw new TypeError('Expected `key` to be a non-empty string');
    this.#checkOpen();
    const holder = await readHolder(this.#client, memcacheKeyOf(this.#options.prefix, key));
    return holder === null || holder.state === 'reserved'
      ? null
      : { clientId: holder.clientId, acquiredAt: new Date(holder.acquiredAt) };
  }

  /**
   * Releases every held lock (their signals abort with `LockLostError`,
   * kind `closed`), stops waiting calls, lets acquisitions in flight finish
   * (an entry granted meanwhile is deleted, and that call rejects with
   * `ERR_MEMLOCK_CLOSED`), stops the heartbeat timer and closes the
   * connections this instance opened. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) this.#closed.abort(closedError());
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#waiting.flushParked();
    const locks = [...this.#locks];
    for (const lock of locks) lock.lose('closed', undefined);
    await Promise.all(locks.map((lock) => lock.release()));
    // Attempts in flight release what they got (they see #closing); new ones cannot start.
    while (this.#attempts > 0 || this.#pending.size > 0) {
      if (this.#attempts > 0) await new Promise<void>((resolve) => (this.#settled = resolve));
      else await Promise.allSettled([...this.#pending]);
    }
    this.#settled = undefined;
    this.#scheduler.stop();
    if (this.#ownsClient) await this.#client.close();
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw closedError();
  }
}

/** `wrap()`'s default clientId: host and process, plus a random part so every call is its own holder. */
function defaultClientId(): string {
  defaultIdPrefix ??= `${hostname()}:${process.pid}:`;
  return defaultIdPrefix + randomUUID();
}

/**
 * `fn` rejected: if its lock had been lost, reject with that `LockLostError`
 * (so `instanceof` works at the call site) and keep fn's own error on it.
 */
function lostAtCallSite(signal: AbortSignal, error: unknown): unknown {
  const reason: unknown = signal.reason;
  if (!(reason instanceof LockLostError) || error === reason) return error;
  reason.fnError ??= error;
  return reason;
}

function closedError(cause?: unknown): MemlockError {
  return new MemlockError(
    'This Memlock instance is closed',
    'ERR_MEMLOCK_CLOSED',
    cause === undefined ? undefined : { cause },
  );
}

let defaultInstance: Memlock | undefined;

/** The shared instance behind the top-level `tryWithLock` (servers from `MEMCACHE_SERVERS`). */
export function defaultMemlock(): Memlock {
  defaultInstance ??= new Memlock({ ref: false });
  return defaultInstance;
}

/** `tryWithLock` on a shared default instance built from the environment. */
export function tryWithLock<T>(
  key: string,
  clientId: string,
  fn: (signal: AbortSignal) => T | Promise<T>,
  options?: LockOptions,
): Promise<T> {
  return defaultMemlock().tryWithLock(key, clientId, fn, options);
}
