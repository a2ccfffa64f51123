/**
 * The life of one held lock: heartbeat, loss detection, release.
 *
 * Renewals happen every `heartbeatMs`, or more often when the whole-second
 * TTL leaves a guaranteed lease shorter than two heartbeats (renewing at half
 * the guaranteed lease at the latest). The lease deadline is tracked on the
 * monotonic clock from the send time of the last confirmed write; when it
 * passes without a newer confirmation (server down, slow, event loop
 * stalled) the signal aborts, even while a renewal is still in flight.
 */
import type { LockClient } from './client.js';
import { onAbort } from './abort-listeners.js';
import { channels, publish } from './diagnostics.js';
import { LockLostError, type LockLostKind } from './errors.js';
import { reasonOf } from './options.js';
import type { Scheduled, Scheduler } from './scheduler.js';
import {
  leaseDeadline,
  releaseEntry,
  renewEntry,
  replaceEntry,
  RESERVATION_TTL_SECONDS,
  transferEntry,
  type AcquireHow,
  type Held,
} from './protocol.js';

/** A held lock, as returned by `memlock.acquire()`. */
export interface Lock {
  /** The caller's key. */
  readonly key: string;
  readonly clientId: string;
  /** Aborts with a `LockLostError` when the lock is lost, or with the caller's reason when the caller aborts. */
  readonly signal: AbortSignal;
  /**
   * Stops the heartbeat and deletes the entry (CAS-checked). Resolves `true`
   * when our entry was deleted, `false` when it was already gone, taken, or
   * memcache failed (reported on `memlock:release-failed`). Never rejects;
   * calling it again returns the same promise.
   */
  release(): Promise<boolean>;
  /** Same as `release()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * How a release hands the key on: reserve it for the head of the remote
 * waiter queue, transfer it to a local waiter (one CAS write of that
 * waiter's value; it adopts the entry without a round trip of its own), or
 * park it for a moment of this process's turn.
 */
export type Handoff =
  | {
      readonly kind: 'remote';
      /** Queue token of the waiter the key is reserved for. */
      readonly token: string;
      /** Called after the reservation is written: updates the queue. Never rejects. */
      readonly reserved: () => Promise<void>;
    }
  | {
      readonly kind: 'local';
      readonly clientId: string;
      readonly ttlSeconds: number;
      /** Hands the transferred entry over; `false` when the waiter left meanwhile. */
      readonly give: (held: Held) => boolean;
    }
  | {
      /**
       * Keep the entry, unchanged, for a caller of this process that may come
       * right back (a worker loop) during the turn; waiting.ts lets it go
       * (reserve, hand on or delete) when nobody takes it.
       */
      readonly kind: 'park';
      readonly park: (held: Held) => void;
    };

/** @internal What a lock needs from its Memlock. */
export interface LockContext {
  readonly client: LockClient;
  readonly scheduler: Scheduler;
  /** Called once when the lock stops holding (lost or released). */
  readonly onDone: (lock: HeldLock) => void;
  /** Decides whether a release reserves the key for a remote waiter. Never rejects. */
  readonly planRelease: (lock: HeldLock) => Handoff | Promise<Handoff | undefined> | undefined;
}

/**
 * A host or VM suspend stops `performance.now()` (CLOCK_MONOTONIC) but not
 * memcached's clock: the wall clock running ahead of the monotonic clock by
 * more than this (plus a thousandth of the time elapsed, for NTP slewing) is
 * taken as a suspend, and the lease deadline moves earlier by that much.
 */
export const SUSPEND_GAP_MS = 100;

/** Delay before retrying a failed renewal (bounded by the lease deadline). */
const RETRY_MS = 100;
/**
 * `memlock:heartbeat-error` is published for the first failure of a streak,
 * then at most once per this interval per lock (with the streak's count): an
 * outage must not flood subscribers with one message per retry per lock.
 */
export const HEARTBEAT_ERROR_INTERVAL_MS = 1000;

/** @internal Implementation of `Lock`, scheduled on the instance's heartbeat scheduler. */
export class HeldLock implements Lock, Scheduled {
  readonly key: string;
  readonly clientId: string;
  readonly signal: AbortSignal;
  due = 0;
  heapIndex = -1;

  readonly #ctx: LockContext;
  readonly #held: Held;
  readonly #heartbeatMs: number;
  readonly #controller = new AbortController();
  readonly #acquiredAt: number;
  #deadline: number;
  #inFlight: Promise<void> | undefined;
  #lastError: unknown;
  #lost: LockLostKind | undefined;
  #release: Promise<boolean> | undefined;
  #done = false;
  /** Stops following the caller's signal (shared listener, abort-listeners.ts). */
  #unfollow: (() => void) | undefined;
  readonly #holdTtlSeconds: number;
  #failures = 0;
  #errorPublishedAt = -Infinity;
  /** Wall and monotonic clocks at the last suspend check. */
  #wallAt = Date.now();
  #monoAt: number;
  /** How this lock was acquired. */
  readonly how: AcquireHow;
  /** Acquired by a waiting call: its release checks the waiter queue. */
  waited = false;

  constructor(
    ctx: LockContext,
    key: string,
    clientId: string,
    held: Held,
    heartbeatMs: number,
    callerSignal: AbortSignal | undefined,
    holdTtlSeconds = 0,
    how: AcquireHow = 'added',
  ) {
    this.#ctx = ctx;
    this.#holdTtlSeconds = holdTtlSeconds;
    this.how = how;
    this.key = key;
    this.clientId = clientId;
    this.#held = held;
    this.#heartbeatMs = heartbeatMs;
    this.signal = this.#controller.signal;
    // One clock read for all three (each costs ~50 ns, per lock).
    const now = performance.now();
    this.#acquiredAt = now;
    this.#monoAt = now;
    this.#deadline = this.#leaseDeadline(now);
    if (callerSignal !== undefined) {
      if (callerSignal.aborted) this.#controller.abort(reasonOf(callerSignal));
      else this.#unfollow = onAbort(callerSignal, (reason) => this.#controller.abort(reason));
    }
    this.#scheduleBeat();
  }

  /** The deadline of the last confirmed write, widened by the event-loop delay seen lately. */
  #leaseDeadline(now: number): number {
    const held = this.#held;
    return leaseDeadline(held.sentAt, held.ttlSeconds, this.#ctx.scheduler.loopDelayMs(now));
  }

  /**
   * How far the wall clock ran ahead of the monotonic clock since the last
   * check, when that looks like a suspend (see SUSPEND_GAP_MS); else 0.
   */
  #suspendedMs(now: number): number {
    const wall = Date.now();
    const elapsed = now - this.#monoAt;
    const gap = wall - this.#wallAt - elapsed;
    this.#wallAt = wall;
    this.#monoAt = now;
    return gap > SUSPEND_GAP_MS + elapsed / 1000 ? gap : 0;
  }

  /** The memcache key. */
  get memcacheKey(): string {
    return this.#held.memcacheKey;
  }

  /** `performance.now()` until which the lease is confirmed. */
  get deadline(): number {
    return this.#deadline;
  }

  /** Why the lock was lost, if it was. */
  get lostKind(): LockLostKind | undefined {
    return this.#lost;
  }

  #scheduleBeat(): void {
    const base = this.#held.sentAt;
    const due = Math.min(base + this.#heartbeatMs, base + (this.#deadline - base) / 2);
    this.#ctx.scheduler.schedule(this, due);
  }

  /** Scheduler callback: lose at the deadline, else renew (or watch an in-flight renewal). */
  fire(now: number): void {
    if (this.#release !== undefined || this.#lost !== undefined) return;
    this.#deadline -= this.#suspendedMs(now);
    if (now >= this.#deadline) {
      this.lose(this.#lastError === undefined ? 'deadline' : 'unreachable', this.#lastError);
      return;
    }
    if (this.#inFlight !== undefined) {
      // A renewal is still out: make sure the deadline is watched meanwhile.
      this.#ctx.scheduler.schedule(this, this.#deadline);
      return;
    }
    this.#ctx.scheduler.schedule(this, this.#deadline);
    this.#inFlight = this.#beat();
  }

  /** One renewal; never rejects. Clears `#inFlight` itself (cheaper than `.finally()` per beat). */
  async #beat(): Promise<void> {
    let result: 'renewed' | 'gone' | 'taken';
    try {
      result = await renewEntry(this.#ctx.client, this.#held);
    } catch (error) {
      this.#inFlight = undefined;
      this.#lastError = error;
      const failures = ++this.#failures;
      const now = performance.now();
      if (failures === 1 || now - this.#errorPublishedAt >= HEARTBEAT_ERROR_INTERVAL_MS) {
        this.#errorPublishedAt = now;
        publish(channels.heartbeatError, () => ({
          key: this.key,
          clientId: this.clientId,
          error: error as Error,
          failures,
        }));
      }
      if (this.#release === undefined && this.#lost === undefined) {
        const now = performance.now();
        if (now >= this.#deadline) this.lose('unreachable', error);
        else this.#ctx.scheduler.schedule(this, Math.min(now + Math.min(RETRY_MS, this.#heartbeatMs), this.#deadline));
      }
      return;
    }
    this.#inFlight = undefined;
    if (this.#release !== undefined || this.#lost !== undefined) return;
    if (result === 'renewed') {
      this.#lastError = undefined;
      this.#failures = 0;
      const now = performance.now();
      // A suspend while the renewal was out: its send time on the monotonic
      // clock understates how much of the lease the server has counted.
      this.#deadline = this.#leaseDeadline(now) - this.#suspendedMs(now);
      if (now >= this.#deadline) this.lose('deadline', undefined);
      else this.#scheduleBeat();
    } else {
      this.lose(result, undefined);
    }
    // Nothing above can throw (abort listeners and diagnostics subscribers
    // report their own errors), so this promise never rejects: no unhandled
    // rejection can come from a heartbeat.
  }

  /** Marks the lock lost and aborts the signal (once). */
  lose(kind: LockLostKind, cause: unknown): void {
    if (this.#lost !== undefined) return;
    this.#lost = kind;
    this.#ctx.scheduler.cancel(this);
    const error = new LockLostError(this.key, kind, cause === undefined ? undefined : { cause });
    this.#controller.abort(error);
    publish(channels.lost, () => ({ key: this.key, clientId: this.clientId, kind, error }));
    this.#finish();
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.#unfollow?.();
    this.#ctx.onDone(this);
  }

  release(): Promise<boolean> {
    this.#release ??= this.#doRelease(false, true);
    return this.#release;
  }

  /** @internal Release without handing the key on (the acquiring call gives up). Same promise as `release()`. */
  drop(): Promise<boolean> {
    this.#release ??= this.#doRelease(false, false);
    return this.#release;
  }

  /**
   * Release after a successful run: with `holdAfterMs`, the entry becomes a
   * completed marker instead of being deleted. Same promise as `release()`.
   */
  complete(): Promise<boolean> {
    this.#release ??= this.#doRelease(true, true);
    return this.#release;
  }

  async #doRelease(completed: boolean, handOn: boolean): Promise<boolean> {
    this.#ctx.scheduler.cancel(this);
    // Stopping waits for the in-flight renewal so its CAS is the one we delete with.
    if (this.#inFlight !== undefined) await this.#inFlight;
    const lost = this.#lost;
    let ok = false;
    // Gone or taken: there is nothing of ours to delete; skip the round trip.
    if (lost === 'gone' || lost === 'taken') {
      publish(channels.releaseFailed, () => ({
        key: this.key,
        clientId: this.clientId,
        reason: lost,
        error: undefined,
      }));
    } else {
      try {
        // fn succeeded: mark it done even if the lease ran out locally (deadline,
        // unreachable): the entry may well still be ours, and the CAS keeps it safe.
        const hold = completed && lost !== 'closed' && this.#holdTtlSeconds > 0;
        // A completed marker blocks everyone, waiters included: no handoff then.
        // Usually decided synchronously (nobody else wants the key): no await then.
        const plan = hold || !handOn || lost !== undefined ? undefined : this.#ctx.planRelease(this);
        const handoff = plan instanceof Promise ? await plan : plan;
        let result;
        if (hold) {
          result = await replaceEntry(this.#ctx.client, this.#held, 'done', this.clientId, this.#holdTtlSeconds);
        } else {
          result = await letGo(this.#ctx.client, this.#held, handoff);
        }
        if (result === 'replaced') result = 'released';
        ok = result === 'released';
        if (ok)
          publish(channels.released, () => ({
            key: this.key,
            clientId: this.clientId,
            heldMs: performance.now() - this.#acquiredAt,
          }));
        else
          publish(channels.releaseFailed, () => ({
            key: this.key,
            clientId: this.clientId,
            reason: result as 'gone' | 'taken',
            error: undefined,
          }));
      } catch (error) {
        publish(channels.releaseFailed, () => ({
          key: this.key,
          clientId: this.clientId,
          reason: 'error' as const,
          error: error as Error,
        }));
      }
    }
    this.#finish();
    return ok;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/**
 * Lets go of a held entry as `handoff` says: reserve it for a remote waiter,
 * transfer it to a local one, park it (no round trip), or delete it.
 */
export async function letGo(
  client: LockClient,
  held: Held,
  handoff: Handoff | undefined,
): Promise<'released' | 'replaced' | 'gone' | 'taken'> {
  if (handoff?.kind === 'remote') {
    const result = await replaceEntry(client, held, 'reserved', handoff.token, RESERVATION_TTL_SECONDS);
    if (result === 'replaced') await handoff.reserved();
    return result;
  }
  if (handoff?.kind === 'local') {
    const next = await transferEntry(client, held, handoff.clientId, handoff.ttlSeconds);
    if (typeof next === 'string') return next;
    if (handoff.give(next)) return 'released';
    // The waiter gave up while the write was out: let go of its entry.
    return releaseEntry(client, next);
  }
  if (handoff?.kind === 'park') {
    handoff.park(held);
    return 'released';
  }
  return releaseEntry(client, held);
}
