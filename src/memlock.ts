/**
 * The public `Memlock` class: validation, acquisition (with waiting), the
 * `tryWithLock` / `acquire` / `wrap` / `inspect` / `close` surface, and the
 * shared default instance.
 */
import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import pRetry from 'p-retry';
import type { LockClient } from './client.js';
import { channels, publish } from './diagnostics.js';
import { LockNotAcquiredError, MemlockError, notAcquired } from './errors.js';
import { Scheduler } from './heartbeat.js';
import { memcacheKey } from './keys.js';
import { LocalKey } from './local-queue.js';
import { HeldLock, type Lock, type LockContext } from './lock.js';
import { MemcacheLockClient } from './transport/cluster.js';
import { MemjsClientAdapter } from './transport/memjs-client.js';
import {
  checkCallArgs, reasonOf, resolveLockOptions, resolveMemlockOptions,
  type LockOptions, type MemlockOptions, type ResolvedLockOptions, type ResolvedMemlockOptions,
} from './options.js';
import { acquireEntry, readHolder, type AcquireMode, type Holder } from './protocol.js';

/** Keys refused recently: their next attempt pipelines the read with the add. */
const CONTESTED_LIMIT = 4096;

/** Options of `memlock.wrap()`. */
export interface WrapOptions<A extends unknown[], R> extends Omit<LockOptions, 'signal'> {
  /** Derives the lock key from the handler's arguments. */
  readonly key: (...args: A) => string;
  /** The holder's id; a function of the arguments, or a fixed string. @default a random id per call */
  readonly clientId?: string | ((...args: A) => string);
  /**
   * Called instead of rejecting when the lock is held elsewhere; its result
   * becomes the wrapped call's result. @default undefined (reject with `LockNotAcquiredError`)
   */
  readonly onNotAcquired?: (error: LockNotAcquiredError, ...args: A) => R | Promise<R>;
}

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
  readonly #local = new Map<string, LocalKey>();
  readonly #contested = new Map<string, true>();
  readonly #context: LockContext;
  /** Per-call settings when a call passes no options (the common case: resolved once). */
  readonly #defaultLockOptions: ResolvedLockOptions;
  /** Aborted by `close()`: stops calls that are waiting for a lock. */
  readonly #closed = new AbortController();
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
      this.#client = options.client !== undefined
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
    this.#context = {
      client: this.#client,
      scheduler: this.#scheduler,
      onDone: (lock) => {
        this.#locks.delete(lock);
        const mkey = lock.mkey;
        const local = this.#local.get(mkey);
        if (local === undefined) return;
        local.holderDone();
        if (local.idle) this.#local.delete(mkey);
      },
    };
  }

  /** Number of locks this instance holds (for diagnostics and tests). */
  get heldCount(): number {
    return this.#locks.size;
  }

  /**
   * Runs `fn` while holding `key`. Resolves with what `fn` resolves, rejects
   * with what it throws; the lock is released afterwards (a failed release is
   * reported on `memlock:release-failed`, never thrown over the result).
   */
  async tryWithLock<T>(key: string, clientId: string, fn: (signal: AbortSignal) => T | Promise<T>, options?: LockOptions): Promise<T> {
    checkCallArgs(key, clientId);
    if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${fn === null ? 'null' : typeof fn}`);
    const lock = await this.acquire(key, clientId, options);
    try {
      return await fn(lock.signal);
    } finally {
      await lock.release();
    }
  }

  /** Acquires `key` and returns a handle; the caller must `release()` it (or `await using`). */
  async acquire(key: string, clientId: string, options?: LockOptions): Promise<Lock> {
    checkCallArgs(key, clientId);
    const opts = options === undefined ? this.#defaultLockOptions : resolveLockOptions(options, this.#options);
    this.#checkOpen();
    const { signal, dispose } = linkedSignal(opts.signal);
    try {
      signal?.throwIfAborted();
      const mkey = memcacheKey(this.#options.prefix, key);
      return opts.wait === undefined
        ? await this.#once(key, mkey, clientId, opts, signal, this.#expectRefusal(mkey) ? 'probe' : 'add')
        : await this.#waitFor(key, mkey, clientId, opts, signal);
    } finally {
      dispose();
    }
  }

  /** One attempt; `LockNotAcquiredError` when refused. */
  async #once(key: string, mkey: string, clientId: string, opts: ResolvedLockOptions, signal: AbortSignal | undefined, mode: AcquireMode): Promise<HeldLock> {
    signal?.throwIfAborted();
    this.#checkOpen();
    const started = performance.now();
    const outcome = await acquireEntry(this.#client, mkey, clientId, opts.ttlSeconds, opts.stealAfterMs, mode);
    if (!outcome.acquired) {
      this.#markContested(mkey);
      const holder = outcome.holder?.clientId;
      publish(channels.refused, () => ({ key, clientId, holder, server: this.#client.serverOf(mkey) }));
      signal?.throwIfAborted();
      throw notAcquired(key, holder);
    }
    this.#contested.delete(mkey);
    let local = this.#local.get(mkey);
    if (local === undefined) {
      local = new LocalKey();
      this.#local.set(mkey, local);
    }
    local.holders++;
    // The lock listens to the caller's own signal (a polyfilled one too): the
    // native mirror used while acquiring is disposed when acquire() returns.
    const lock = new HeldLock(this.#context, key, clientId, outcome.held, opts.heartbeatMs, opts.signal);
    this.#locks.add(lock);
    if (this.#closing !== undefined || signal?.aborted === true) {
      await lock.release();
      this.#checkOpen();
      signal?.throwIfAborted();
    }
    publish(channels.acquired, () => ({ key, clientId, how: outcome.how, server: this.#client.serverOf(mkey), durationMs: performance.now() - started }));
    if (outcome.how === 'takeover' || outcome.how === 'stolen') {
      const previous = outcome.previous as Holder;
      publish(channels.stolen, () => ({ key, clientId, how: outcome.how as 'takeover' | 'stolen', previousClientId: previous.clientId, previousAcquiredAt: new Date(previous.acquiredAt) }));
    }
    return lock;
  }

  async #waitFor(key: string, mkey: string, clientId: string, opts: ResolvedLockOptions, signal: AbortSignal | undefined): Promise<HeldLock> {
    const wait = opts.wait as NonNullable<ResolvedLockOptions['wait']>;
    const start = performance.now();
    let local = this.#local.get(mkey);
    if (local === undefined) {
      local = new LocalKey();
      this.#local.set(mkey, local);
    }
    const ticket = local.join();
    let acquired: HeldLock | undefined;
    // Waiting stops on the caller's signal (its reason, unchanged) or on
    // close() (ERR_MEMLOCK_CLOSED), whichever comes first.
    const { signal: stop, dispose } = linkedSignal(signal, this.#closed.signal);
    try {
      if (!await local.turn(ticket, stop, wait.timeoutMs)) {
        throw new LockNotAcquiredError(key, undefined, { message: `Timed out after ${wait.timeoutMs} ms waiting for lock "${key}"` });
      }
      const remaining = Math.max(0, wait.timeoutMs - (performance.now() - start));
      return await pRetry(async (attempt) => {
        acquired = await this.#once(key, mkey, clientId, opts, stop, attempt > 1 || this.#expectRefusal(mkey) ? 'pipelined' : 'add');
        return acquired;
      }, {
        retries: Number.POSITIVE_INFINITY,
        factor: 2,
        minTimeout: wait.minDelayMs,
        maxTimeout: wait.maxDelayMs,
        randomize: true,
        maxRetryTime: remaining,
        signal: stop,
        shouldRetry: ({ error }) => error instanceof LockNotAcquiredError && this.#closing === undefined,
      });
    } catch (error) {
      // p-retry checks the signal after a successful attempt: do not leak that lock.
      if (acquired !== undefined) await acquired.release();
      throw error;
    } finally {
      dispose();
      local.leave(ticket);
      if (local.idle) this.#local.delete(mkey);
    }
  }

  /**
   * Wraps a handler so each call runs under a lock whose key comes from its
   * arguments. The handler receives the lock's signal as an extra last argument.
   */
  wrap<A extends unknown[], R>(fn: (...args: [...A, AbortSignal]) => R | Promise<R>, options: WrapOptions<A, R>): (...args: A) => Promise<R> {
    if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
    if (options === null || typeof options !== 'object') throw new TypeError('Expected `options` to be an object with a `key` function');
    if (typeof options.key !== 'function') throw new TypeError(`Expected \`key\` to be a function, got ${typeof options.key}`);
    const { key, clientId, onNotAcquired, ...lockOptions } = options;
    if (clientId !== undefined && typeof clientId !== 'string' && typeof clientId !== 'function') {
      throw new TypeError(`Expected \`clientId\` to be a string or a function, got ${typeof clientId}`);
    }
    if (onNotAcquired !== undefined && typeof onNotAcquired !== 'function') {
      throw new TypeError(`Expected \`onNotAcquired\` to be a function, got ${typeof onNotAcquired}`);
    }
    // Validate the lock options once, up front.
    resolveLockOptions(lockOptions, this.#options);
    return async (...args: A): Promise<R> => {
      const id = typeof clientId === 'function' ? clientId(...args) : clientId ?? randomUUID();
      try {
        return await this.tryWithLock(key(...args), id, (signal) => fn(...args, signal), lockOptions);
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
    const holder = await readHolder(this.#client, memcacheKey(this.#options.prefix, key));
    return holder === null ? null : { clientId: holder.clientId, acquiredAt: new Date(holder.acquiredAt) };
  }

  /**
   * Releases every held lock (their signals abort with `LockLostError`,
   * kind `closed`), stops the heartbeat timer and closes the connections this
   * instance opened. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) this.#closed.abort(closedError());
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const locks = [...this.#locks];
    for (const lock of locks) lock.lose('closed', undefined);
    await Promise.all(locks.map((lock) => lock.release()));
    this.#scheduler.stop();
    if (this.#ownsClient) await this.#client.close();
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw closedError();
  }

  /**
   * Whether an attempt on `mkey` will probably be refused (refused recently,
   * or held by this instance): then the attempt reads first (or, while
   * waiting, sends the read with the add), so a refusal costs one round trip.
   */
  #expectRefusal(mkey: string): boolean {
    return this.#contested.has(mkey) || (this.#local.get(mkey)?.holders ?? 0) > 0;
  }

  #markContested(mkey: string): void {
    if (this.#contested.has(mkey)) return;
    if (this.#contested.size >= CONTESTED_LIMIT) {
      const oldest = this.#contested.keys().next().value;
      if (oldest !== undefined) this.#contested.delete(oldest);
    }
    this.#contested.set(mkey, true);
  }
}

/**
 * A native signal that aborts with the reason of the first of `sources` to
 * abort (an AbortError DOMException for a polyfilled signal without
 * `reason`). p-retry and our own checks need a native signal's
 * `throwIfAborted()`, which signals from the `abort-controller` package lack,
 * and a waiting call must also stop on `close()`. One native source is
 * returned as it is; listeners are removed by `dispose()`.
 */
function linkedSignal(...sources: Array<AbortSignal | undefined>): { signal: AbortSignal | undefined; dispose: () => void } {
  const inputs = sources.filter((s): s is AbortSignal => s !== undefined);
  const only = inputs[0];
  if (inputs.length === 0 || (inputs.length === 1 && only instanceof AbortSignal)) return { signal: only, dispose: noop };
  const controller = new AbortController();
  const aborted = inputs.find((s) => s.aborted);
  if (aborted !== undefined) {
    controller.abort(reasonOf(aborted));
    return { signal: controller.signal, dispose: noop };
  }
  const listeners = inputs.map((source) => {
    const onAbort = (): void => controller.abort(reasonOf(source));
    source.addEventListener('abort', onAbort, { once: true });
    return () => source.removeEventListener('abort', onAbort);
  });
  return { signal: controller.signal, dispose: () => listeners.forEach((remove) => remove()) };
}

function noop(): void {}

function closedError(): MemlockError {
  return new MemlockError('This Memlock instance is closed', 'ERR_MEMLOCK_CLOSED');
}

let defaultInstance: Memlock | undefined;

/** The shared instance behind the top-level `tryWithLock` (servers from `MEMCACHE_SERVERS`). */
export function defaultMemlock(): Memlock {
  defaultInstance ??= new Memlock({ ref: false });
  return defaultInstance;
}

/** `tryWithLock` on a shared default instance built from the environment. */
export function tryWithLock<T>(key: string, clientId: string, fn: (signal: AbortSignal) => T | Promise<T>, options?: LockOptions): Promise<T> {
  return defaultMemlock().tryWithLock(key, clientId, fn, options);
}

