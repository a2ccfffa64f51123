/**
 * The public `Memlock` class: validation, acquisition (with waiting), the
 * `tryWithLock` / `acquire` / `wrap` / `inspect` / `close` surface, and the
 * shared default instance.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { hostname } from 'node:os';
import type { LockClient } from './client.js';
import { channels, publish } from './diagnostics.js';
import { LockLostError, LockNotAcquiredError, MemcacheUnavailableError, MemlockError, notAcquired } from './errors.js';
import { Scheduler } from './scheduler.js';
import { memcacheKeyOf, queueKeyOf } from './keys.js';
import { LocalKey, UNKNOWN_POSITION, type Ticket } from './local-waiters.js';
import { HeldLock, type Handoff, type Lock, type LockContext } from './lock.js';
import { MemcacheLockClient } from './transport/memcache-lock-client.js';
import { MemjsClientAdapter } from './transport/memjs-client.js';
import {
  checkCallArgs,
  isSignalLike,
  reasonOf,
  resolveLockOptions,
  resolveMemlockOptions,
  type LockOptions,
  type MemlockOptions,
  type ResolvedLockOptions,
  type ResolvedMemlockOptions,
} from './options.js';
import {
  acquireEntry,
  cancelReservation,
  readHolder,
  releaseEntry,
  type AcquireHow,
  type AcquireMode,
  type Held,
  type Holder,
} from './protocol.js';
import {
  joined,
  liveOthers,
  readQueue,
  updateQueue,
  without,
  type QueuedWaiter,
  type QueueState,
} from './fleet-queue.js';

/** Keys refused recently: their next attempt pipelines the read with the add. */
const CONTESTED_LIMIT = 4096;
/** A key counts as wanted by other processes this long after the last sign of it. */
const REMOTE_WINDOW_MS = 10_000;
/** A key whose queue had other waiters this recently: a new waiter queues up before its first attempt. */
const QUEUED_WINDOW_MS = 1000;
/** Our place in the waiter queue is unknown (not read yet, or the queue failed); -1 means read and absent. */
/** The first two places poll the entry at least this often: a reservation lives at least 1 s. */
const MAX_WATCH_MS = 500;
/** How often a queued waiter refreshes its liveness in the waiter queue (under a third of QUEUE_ALIVE_MS). */
const QUEUE_REFRESH_MS = 3000;

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
  readonly #local = new Map<string, LocalKey<HeldLock, Held>>();
  readonly #contested = new Map<string, true>();
  /** Keys other processes wanted recently (refusals, queued waiters): `performance.now()` of the last sign. */
  readonly #remote = new Map<string, number>();
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
    this.#context = {
      client: this.#client,
      scheduler: this.#scheduler,
      onDone: (lock) => {
        this.#locks.delete(lock);
        const local = this.#local.get(lock.memcacheKey);
        if (local === undefined) return;
        local.holderDone(lock);
        this.#forget(lock.memcacheKey, local);
      },
      planRelease: (lock) => this.#planRelease(lock),
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
  async tryWithLock<T>(
    key: string,
    clientId: string,
    fn: (signal: AbortSignal) => T | Promise<T>,
    options?: LockOptions,
  ): Promise<T> {
    checkCallArgs(key, clientId);
    if (typeof fn !== 'function')
      throw new TypeError(`Expected \`fn\` to be a function, got ${fn === null ? 'null' : typeof fn}`);
    return this.#run(key, clientId, fn, this.#resolve(options));
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

  async #acquire(key: string, clientId: string, call: ResolvedLockOptions): Promise<HeldLock> {
    this.#checkOpen();
    const { signal, dispose } = linkedSignal(call.signal);
    try {
      signal?.throwIfAborted();
      const memcacheKey = memcacheKeyOf(this.#options.prefix, key);
      if (call.wait === undefined)
        return await this.#once(
          key,
          memcacheKey,
          clientId,
          call,
          signal,
          this.#expectRefusal(memcacheKey) ? 'probe' : 'add',
        );
      // Tracked: close() stops waiting calls and lets each finish its cleanup
      // (leaving the waiter queue, deleting an entry handed to it) first.
      const waiting = this.#waitFor(key, memcacheKey, clientId, call, signal);
      this.#track(waiting);
      return await waiting;
    } finally {
      dispose();
    }
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
  async #once(
    key: string,
    memcacheKey: string,
    clientId: string,
    call: ResolvedLockOptions,
    signal: AbortSignal | undefined,
    mode: AcquireMode,
  ): Promise<HeldLock> {
    signal?.throwIfAborted();
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
          clientId,
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
      if (!outcome.acquired) throw this.#refused(key, memcacheKey, clientId, outcome.holder, signal);
      this.#contested.delete(memcacheKey);
      const lock = this.#hold(
        key,
        memcacheKey,
        clientId,
        call,
        signal,
        outcome.held,
        outcome.how,
        outcome.previous,
        started,
      );
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
  #refused(
    key: string,
    memcacheKey: string,
    clientId: string,
    holder: Holder | null,
    signal: AbortSignal | undefined,
  ): LockNotAcquiredError {
    const local = this.#local.get(memcacheKey);
    // A refusal by our own local holder says nothing about other processes.
    this.#markContested(memcacheKey, (local?.holders.size ?? 0) === 0);
    local?.sawEntry(holder?.token, performance.now(), holder?.state === 'reserved' && holder.clientId !== this.#token);
    const done = holder?.state === 'done';
    const holderId = holder?.state === 'reserved' ? undefined : holder?.clientId;
    publish(channels.refused, () => ({ key, clientId, holder: holderId, server: this.#client.serverOf(memcacheKey) }));
    this.#checkOpen();
    signal?.throwIfAborted();
    return notAcquired(key, holderId, done ? { done } : undefined);
  }

  /**
   * Turns an acquired entry into a held lock (heartbeat, local bookkeeping,
   * diagnostics). Synchronous on the common path; a promise only when the
   * call is giving up (closed or aborted meanwhile) and must delete it first.
   */
  #hold(
    key: string,
    memcacheKey: string,
    clientId: string,
    call: ResolvedLockOptions,
    signal: AbortSignal | undefined,
    held: Held,
    how: AcquireHow,
    previous: Holder | null,
    started: number,
  ): HeldLock | Promise<HeldLock> {
    const local = this.#localKey(memcacheKey);
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
    const earlier = how === 'takeover' || how === 'stolen' ? [...local.holders] : [];
    // Added first: the local key must not look idle (and be dropped) while the earlier holders finish.
    local.holders.add(lock);
    // Our own earlier holders of this entry learn now, not at their next renewal.
    for (const other of earlier) other.lose('taken', undefined);
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

  /** Drops `local` from the map once nothing uses it (and only if it is still the map's entry). */
  #forget(memcacheKey: string, local: LocalKey<HeldLock, Held>): void {
    if (local.idle && !local.queued && this.#local.get(memcacheKey) === local) this.#local.delete(memcacheKey);
  }

  #localKey(memcacheKey: string): LocalKey<HeldLock, Held> {
    let local = this.#local.get(memcacheKey);
    if (local === undefined) {
      local = new LocalKey<HeldLock, Held>();
      this.#local.set(memcacheKey, local);
    }
    return local;
  }

  /**
   * Waits for `key`, fairly across processes (fleet-queue.ts). The local
   * head speaks for this instance; once refused, the instance queues up in
   * the key's waiter queue. A releaser reserves the key for the queue's head,
   * so only the first two places need to watch the lock entry: the head
   * closes in on when the hold should end, the next one polls at half the
   * observed handoff interval (it sees the head get served and moves up);
   * places further back re-read the queue about when they expect to move up.
   */
  async #waitFor(
    key: string,
    memcacheKey: string,
    clientId: string,
    call: ResolvedLockOptions,
    signal: AbortSignal | undefined,
  ): Promise<HeldLock> {
    const wait = call.wait as NonNullable<ResolvedLockOptions['wait']>;
    const deadline = performance.now() + wait.timeoutMs;
    // Our own clientId holds it here: that is a takeover (re-entry), not a reason to queue behind ourselves.
    if ([...(this.#local.get(memcacheKey)?.holders ?? [])].some((held) => held.clientId === clientId)) {
      try {
        return await this.#once(key, memcacheKey, clientId, call, signal, 'probe');
      } catch (error) {
        // Taken by someone else meanwhile: wait like anyone else.
        if (!(error instanceof LockNotAcquiredError) || error.done) throw error;
      }
    }
    // Looked up after any await: the map entry may have been replaced meanwhile.
    const local = this.#localKey(memcacheKey);
    const ticket = local.join(clientId, call.ttlSeconds);
    const started = performance.now();
    // Waiting stops on the caller's signal (its reason, unchanged) or on
    // close() (ERR_MEMLOCK_CLOSED), whichever comes first.
    const { signal: stop, dispose } = linkedSignal(signal, this.#closed.signal);
    let mode: AcquireMode = this.#expectRefusal(memcacheKey) ? 'probe' : 'pipelined';
    let holder: string | undefined;
    let gaveUp = false;
    try {
      // Other processes queue for this key: go to the back of the queue
      // rather than race them for it (the queue's head is about to get it).
      let attempt = !this.#queued(memcacheKey);
      if (!attempt) mode = 'probe';
      for (;;) {
        if (!(await local.turn(ticket, stop, deadline - performance.now())))
          throw waitTimeout(key, wait.timeoutMs, holder ?? first(local.holders)?.clientId);
        if (ticket.granted !== undefined)
          return await this.#adopt(key, memcacheKey, clientId, call, stop, ticket, started);
        if (attempt) {
          try {
            const lock = await this.#once(key, memcacheKey, clientId, call, stop, mode);
            local.startTurn();
            local.position = UNKNOWN_POSITION;
            // The releaser that reserved the key for us took us out of the queue
            // (if it died between its two writes, our entry expires or is
            // reserved once more: best effort).
            if (lock.how === 'handoff') local.queued = false;
            // A waiting caller expects company: its release reads the waiter
            // queue (one get), even when it was never refused: a worker loop
            // that re-takes a free key at once would otherwise never see the
            // processes queued behind it.
            lock.waited = true;
            return lock;
          } catch (error) {
            if (!(error instanceof LockNotAcquiredError) || error.done) throw error;
            holder = error.holder;
          }
          mode = 'probe';
        }
        const before = local.position;
        let lookNow = false;
        if (local.position < 0 || local.position > 1 || performance.now() - local.queuedAt >= QUEUE_REFRESH_MS) {
          // Taken out of the queue behind our back (and joined again): maybe reserved for us.
          lookNow = await this.#queueUp(local, memcacheKey);
        }
        // Just moved up to the head by a queue read: the key may be reserved for us already.
        const promoted = (local.position === 0 && before !== 0) || lookNow;
        const now = performance.now();
        if (now >= deadline) throw waitTimeout(key, wait.timeoutMs, holder);
        const held = now - local.holderSince;
        const cycle = local.cycleMs;
        // Not in the queue (-1): reserved for us (the releaser took us out), or
        // our entry expired: look at the entry at once. The head halves the
        // distance to when the hold should end, then polls every minDelayMs;
        // a hold far longer than usual slows polls to an eighth of its length.
        // The first two places never sleep past a reservation's guaranteed
        // second; without a queue (UNKNOWN_POSITION: it failed) everyone polls like a head.
        const pace =
          local.position === -1 || promoted
            ? 0
            : local.position === 0 || local.position === UNKNOWN_POSITION
              ? Math.min(Math.max(wait.minDelayMs, (cycle - held) / 2, held / 8), MAX_WATCH_MS)
              : local.position === 1
                ? Math.min(Math.max(wait.minDelayMs, cycle / 2, held / 8), MAX_WATCH_MS)
                : // A little early (3/4): arriving late costs a handoff, early one read.
                  // A long hold slows these reads too (an eighth of it, at most
                  // MAX_WATCH_MS): places further back must not read the queue
                  // every few ms for the whole of a hold that takes seconds.
                  Math.max(wait.minDelayMs, (local.position - 1) * cycle * 0.75, Math.min(held / 8, MAX_WATCH_MS));
        attempt = local.position <= 1 || lookNow;
        await local.turn(ticket, stop, Math.min(pace, wait.maxDelayMs, deadline - now), true);
        if (ticket.granted !== undefined)
          return await this.#adopt(key, memcacheKey, clientId, call, stop, ticket, started);
      }
    } catch (error) {
      gaveUp = true;
      // Handed the entry while giving up (timeout, abort, close): let go of it
      // (tracked, so close() waits for this delete before closing sockets).
      const granted = ticket.granted;
      if (granted !== undefined) {
        ticket.granted = undefined;
        const drop = releaseEntry(this.#client, granted).catch(noop);
        this.#track(drop);
        await drop;
      }
      throw error;
    } finally {
      dispose();
      local.leave(ticket);
      if (local.waiting === 0) {
        // The turn's waiters are gone: a later waiter starts a new turn.
        local.batch = 0;
        // A releaser may have reserved the key for us (only a queued waiter
        // can be reserved for): the last local waiter to give up deletes
        // that reservation, so the key is not blocked until it expires.
        if (gaveUp && local.queued) this.#cancelReservation(memcacheKey);
        if (local.queued) this.#dequeue(local, memcacheKey);
      }
      this.#forget(memcacheKey, local);
    }
  }

  /** A local releaser transferred the entry to us: hold it (no round trip), continuing this turn. */
  #adopt(
    key: string,
    memcacheKey: string,
    clientId: string,
    call: ResolvedLockOptions,
    signal: AbortSignal | undefined,
    ticket: Ticket<Held>,
    started: number,
  ): Promise<HeldLock> {
    const held = ticket.granted as Held;
    ticket.granted = undefined;
    const adopted = Promise.resolve(
      this.#hold(key, memcacheKey, clientId, call, signal, held, 'handoff', null, started),
    );
    this.#track(adopted);
    return adopted.then((lock) => {
      lock.waited = true;
      return lock;
    });
  }

  /**
   * Joins (or refreshes our place in) the key's waiter queue and learns our
   * position. Resolves `true` when we believed we were queued but were not
   * there any more: a releaser may have taken us out to reserve the key for
   * us, so the caller must look at the entry now, wherever the join put us.
   * Never rejects.
   */
  async #queueUp(local: LocalKey<HeldLock, Held>, memcacheKey: string): Promise<boolean> {
    const queueKey = queueKeyOf(this.#options.prefix, memcacheKey);
    const now = performance.now();
    const believed = local.queued;
    let missing = false;
    const work = (async (): Promise<void> => {
      let list: readonly { token: string; expiresAt: number }[] | undefined;
      if (!local.queued || now - local.queuedAt >= QUEUE_REFRESH_MS) {
        const join = joined(this.#token, Date.now());
        list = await updateQueue(this.#client, queueKey, (waiters) => {
          missing = !waiters.some((w) => w.token === this.#token);
          return join(waiters);
        });
        local.queued = list !== undefined;
        local.queuedAt = now;
      } else {
        list = (await readQueue(this.#client, queueKey)).waiters;
      }
      if (list === undefined) {
        // CAS conflicts persisted: we do not know our place; poll like a head.
        local.position = UNKNOWN_POSITION;
        return;
      }
      const wall = Date.now();
      local.observe(
        list.filter((w) => w.expiresAt > wall).findIndex((w) => w.token === this.#token),
        performance.now(),
      );
      // Missing (reserved for us, or the queue expired or was evicted): look now, join again next time.
      if (local.position === -1) local.queuedAt = -Infinity;
    })();
    this.#track(work);
    try {
      await work;
    } catch {
      // The queue is a fairness aid: without it, waiting degrades to polling.
      local.position = UNKNOWN_POSITION;
    }
    return believed && missing;
  }

  /** Deletes a reservation made for this instance, in the background (tracked: close() waits for it). */
  #cancelReservation(memcacheKey: string): void {
    const work = cancelReservation(this.#client, memcacheKey, this.#token);
    this.#track(work);
    work.catch(noop);
  }

  /** Leaves the waiter queue in the background (no local waiter is left). */
  #dequeue(local: LocalKey<HeldLock, Held>, memcacheKey: string): void {
    local.queued = false;
    local.position = UNKNOWN_POSITION;
    const work = updateQueue(
      this.#client,
      queueKeyOf(this.#options.prefix, memcacheKey),
      without([this.#token], Date.now()),
    );
    this.#track(work);
    work.catch(noop);
  }

  /**
   * How a release lets go (lock.ts asks): hand the key to a local waiter
   * while this turn's batch lasts; otherwise, when other processes queue for
   * it, reserve it for the queue's head; else delete it.
   */
  #planRelease(lock: HeldLock): Handoff | Promise<Handoff | undefined> | undefined {
    const memcacheKey = lock.memcacheKey;
    const local = this.#local.get(memcacheKey);
    const localWaiters = local?.waiting ?? 0;
    if (local !== undefined && localWaiters > 0 && local.batch > 0) {
      local.batch--;
      return localHandoff(local);
    }
    const seen = this.#remote.get(memcacheKey);
    const remote = seen !== undefined && performance.now() - seen < REMOTE_WINDOW_MS;
    // Nobody else seems to want it: delete, decided synchronously (the uncontended path).
    if (localWaiters === 0 && !remote && !lock.waited && local?.queued !== true) return undefined;
    return this.#planRemote(memcacheKey, local, localWaiters);
  }

  /** Reads the waiter queue: reserve for its head, or hand to a local waiter, or delete. Never rejects. */
  async #planRemote(
    memcacheKey: string,
    local: LocalKey<HeldLock, Held> | undefined,
    localWaiters: number,
  ): Promise<Handoff | undefined> {
    const queueKey = queueKeyOf(this.#options.prefix, memcacheKey);
    let state: QueueState;
    try {
      state = await readQueue(this.#client, queueKey);
    } catch {
      return undefined;
    }
    const head = liveOthers(state.waiters, this.#token, Date.now())[0];
    if (head === undefined) return local !== undefined && localWaiters > 0 ? localHandoff(local) : undefined;
    this.#sawRemote(memcacheKey);
    return {
      kind: 'remote',
      token: head.token,
      reserved: () => this.#reserved(local ?? this.#localKey(memcacheKey), memcacheKey, queueKey, state, head.token),
    };
  }

  /**
   * After reserving the key for `head`: take it out of the queue, and put
   * ourselves at the tail if calls of ours still wait, in the same write.
   * Then let the local state go once nothing uses it. Never rejects.
   */
  async #reserved(
    local: LocalKey<HeldLock, Held>,
    memcacheKey: string,
    queueKey: string,
    state: QueueState,
    head: string,
  ): Promise<void> {
    const now = Date.now();
    // Out with the head, and with us wherever we stood; back in at the tail
    // only if calls of ours still wait. (Queuing up "in case a worker loop
    // comes back" was tried: a fast releaser elsewhere could reserve the key
    // for us before we left again, and nobody took it for a second or two.)
    const requeue = local.waiting > 0;
    const change = (waiters: readonly QueuedWaiter[]): readonly QueuedWaiter[] => {
      const rest = without([head, this.#token], now)(waiters) ?? waiters;
      return requeue ? joined(this.#token, now)(rest) : rest;
    };
    local.batch = 0;
    try {
      const list = await updateQueue(this.#client, queueKey, change, state);
      local.queued = requeue && list !== undefined;
      local.queuedAt = performance.now();
      local.position = UNKNOWN_POSITION;
      if (list !== undefined)
        local.observe(
          list.filter((w) => w.expiresAt > now).findIndex((w) => w.token === this.#token),
          performance.now(),
        );
    } catch {
      // The head still finds its reservation; a stale queue heals by expiry.
    }
    // Whatever the write did: if no call of ours waits by the next turn of the
    // event loop, leave the queue and let the local state go.
    const check = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      if (local.waiting === 0 && local.queued) this.#dequeue(local, memcacheKey);
      this.#forget(memcacheKey, local);
    });
    this.#track(check);
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

  /** Whether other processes queued for `memcacheKey` recently: a new waiter then queues up before its first attempt. */
  #queued(memcacheKey: string): boolean {
    const seen = this.#remote.get(memcacheKey);
    return seen !== undefined && performance.now() - seen < QUEUED_WINDOW_MS;
  }

  /**
   * Whether an attempt on `memcacheKey` will probably be refused (refused recently,
   * or held by this instance): then the attempt reads first (or, while
   * waiting, sends the read with the add), so a refusal costs one round trip.
   */
  #expectRefusal(memcacheKey: string): boolean {
    return this.#contested.has(memcacheKey) || (this.#local.get(memcacheKey)?.holders.size ?? 0) > 0;
  }

  /** Other processes want `memcacheKey` (a refusal, a queue with others in it). Bounded like #contested. */
  #sawRemote(memcacheKey: string): void {
    this.#remote.delete(memcacheKey);
    this.#remote.set(memcacheKey, performance.now());
    if (this.#remote.size > CONTESTED_LIMIT) {
      const oldest = this.#remote.keys().next().value;
      if (oldest !== undefined) this.#remote.delete(oldest);
    }
  }

  #markContested(memcacheKey: string, remote: boolean): void {
    // A refusal by our own local holder says nothing about other processes.
    if (remote) this.#sawRemote(memcacheKey);
    if (this.#contested.has(memcacheKey)) return;
    if (this.#contested.size >= CONTESTED_LIMIT) {
      const oldest = this.#contested.keys().next().value;
      if (oldest !== undefined) this.#contested.delete(oldest);
    }
    this.#contested.set(memcacheKey, true);
  }
}

/** Transfer to the head of the local queue (lock.ts writes its value by CAS, then gives it the entry). */
function localHandoff(local: LocalKey<HeldLock, Held>): Handoff | undefined {
  const ticket = local.head;
  if (ticket === undefined) return undefined;
  return {
    kind: 'local',
    clientId: ticket.clientId,
    ttlSeconds: ticket.ttlSeconds,
    give: (held) => local.give(ticket, held),
  };
}

/** `wrap()`'s default clientId: host and process, plus a random part so every call is its own holder. */
function defaultClientId(): string {
  defaultIdPrefix ??= `${hostname()}:${process.pid}:`;
  return defaultIdPrefix + randomUUID();
}

function first<T>(items: Iterable<T>): T | undefined {
  for (const item of items) return item;
  return undefined;
}

function waitTimeout(key: string, timeoutMs: number, holder: string | undefined): LockNotAcquiredError {
  return new LockNotAcquiredError(key, holder, {
    message: `Timed out after ${timeoutMs} ms waiting for lock "${key}"`,
  });
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

/**
 * A native signal that aborts with the reason of the first of `sources` to
 * abort (an AbortError DOMException for a polyfilled signal without
 * `reason`). Our own checks need a native signal's
 * `throwIfAborted()`, which signals from the `abort-controller` package lack,
 * and a waiting call must also stop on `close()`. One native source is
 * returned as it is; listeners are removed by `dispose()`.
 */
function linkedSignal(...sources: Array<AbortSignal | undefined>): {
  signal: AbortSignal | undefined;
  dispose: () => void;
} {
  const inputs = sources.filter((s): s is AbortSignal => s !== undefined);
  const only = inputs[0];
  if (inputs.length === 0 || (inputs.length === 1 && only instanceof AbortSignal))
    return { signal: only, dispose: noop };
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
