/**
 * Waiting for a key and letting it go, for one `Memlock` instance: the local
 * waiters of each key (local-waiters.ts), this instance's place in the
 * key's cross-process waiter queue (fleet-queue.ts), what recent refusals
 * say about who else wants a key, and how a release hands the key on. The
 * sleeps between looks come from pacing.ts. memcache stays the only
 * authority on who holds a key: everything here only decides when to ask.
 */
import type { LockClient } from './client.js';
import { LockNotAcquiredError, quoteId } from './errors.js';
import {
  joined,
  liveOthers,
  readQueue,
  updateQueue,
  without,
  type QueuedWaiter,
  type QueueState,
} from './fleet-queue.js';
import { queueKeyOf } from './keys.js';
import { LocalKey, UNKNOWN_POSITION, type Ticket, type TurnBounds } from './local-waiters.js';
import { letGo, type Handoff, type HeldLock } from './lock.js';
import type { ResolvedLockOptions } from './options.js';
import { nextDelay } from './pacing.js';
import {
  cancelReservation,
  releaseEntry,
  transferEntry,
  type AcquireHow,
  type AcquireMode,
  type Held,
  type Holder,
} from './protocol.js';
import { linkedSignal } from './signals.js';

/** Keys refused recently: their next attempt pipelines the read with the add. */
const CONTESTED_LIMIT = 4096;
/** A key counts as wanted by other processes this long after the last sign of it. */
const REMOTE_WINDOW_MS = 10_000;
/** A key whose queue had other waiters this recently: a new waiter queues up before its first attempt. */
const QUEUED_WINDOW_MS = 1000;
/** How often a queued waiter refreshes its liveness in the waiter queue (under a third of QUEUE_ALIVE_MS). */
const QUEUE_REFRESH_MS = 3000;
/**
 * Longest a released entry stays parked for a caller of this process that
 * comes right back (a worker loop calling again as soon as its call
 * resolves), within the turn's bounds. Short: other processes wait meanwhile.
 */
export const PARK_MS = 1;

/** An entry released during a turn and kept for a moment for this process's next caller. */
interface Parked {
  readonly held: Held;
  readonly timer: NodeJS.Timeout;
}

/** @internal One call's acquisition: what every attempt, wait and hold of it needs. */
export interface Attempt {
  /** The caller's key. */
  readonly key: string;
  readonly memcacheKey: string;
  readonly clientId: string;
  readonly call: ResolvedLockOptions;
  /** Stops the attempt (a native signal: the caller's, linked with `close()` while waiting). */
  readonly signal: AbortSignal | undefined;
}

/** @internal An entry just acquired (or handed over): what holding it starts from. */
export interface Acquired {
  readonly held: Held;
  readonly how: AcquireHow;
  /** The entry it replaced (a takeover or steal), for diagnostics. */
  readonly previous: Holder | null;
}

/** @internal What waiting needs from its `Memlock`. */
export interface WaitingHost {
  readonly client: LockClient;
  /** The instance's key prefix. */
  readonly prefix: string;
  /** This instance's token in waiter queues: it stands for all of its local waiters. */
  readonly token: string;
  /** Aborted by `close()`: stops waiting calls. */
  readonly closed: AbortSignal;
  /** Work `close()` must let finish first (queue updates, deletes of entries handed to a call giving up). */
  readonly track: (work: Promise<unknown>) => void;
  /** One attempt; rejects with `LockNotAcquiredError` when refused. */
  readonly once: (attempt: Attempt, mode: AcquireMode) => Promise<HeldLock>;
  /** Bounds of this instance's turn with a contested key (the `turn` option). */
  readonly turn: TurnBounds;
  /** Turns an acquired entry into a held lock. */
  readonly hold: (attempt: Attempt, acquired: Acquired, started: number) => HeldLock | Promise<HeldLock>;
}

/** @internal The waiting state and machinery of one `Memlock` instance. */
export class Waiting {
  readonly #host: WaitingHost;
  readonly #local = new Map<string, LocalKey<HeldLock, Held>>();
  readonly #contested = new Map<string, true>();
  /** Keys other processes wanted recently (refusals, queued waiters): `performance.now()` of the last sign. */
  readonly #remote = new Map<string, number>();
  /** Entries parked by a release during a turn (see PARK_MS). */
  readonly #parked = new Map<string, Parked>();

  constructor(host: WaitingHost) {
    this.#host = host;
  }

  /**
   * Whether an attempt on `memcacheKey` will probably be refused (refused recently,
   * or held by this instance): then the attempt reads first (or, while
   * waiting, sends the read with the add), so a refusal costs one round trip.
   */
  expectRefusal(memcacheKey: string): boolean {
    return this.#contested.has(memcacheKey) || (this.#local.get(memcacheKey)?.holders.size ?? 0) > 0;
  }

  /** An attempt on `memcacheKey` succeeded: the next one need not expect a refusal. */
  acquired(memcacheKey: string): void {
    this.#contested.delete(memcacheKey);
  }

  /** An attempt on `memcacheKey` was refused by `holder` (the entry it saw). */
  refused(memcacheKey: string, holder: Holder | null): void {
    const local = this.#local.get(memcacheKey);
    // A refusal by our own local holder says nothing about other processes.
    this.#markContested(memcacheKey, (local?.holders.size ?? 0) === 0);
    local?.sawEntry(
      holder?.token,
      performance.now(),
      holder?.state === 'reserved' && holder.clientId !== this.#host.token,
    );
  }

  /** `lock` now holds its key here; our own earlier holders of a taken-over entry learn now, not at their next renewal. */
  addHolder(lock: HeldLock, how: AcquireHow): void {
    const local = this.#localKey(lock.memcacheKey);
    const earlier = how === 'takeover' || how === 'stolen' ? [...local.holders] : [];
    // Added first: the local key must not look idle (and be dropped) while the earlier holders finish.
    local.holders.add(lock);
    for (const other of earlier) other.lose('taken', undefined);
  }

  /** `lock` stopped holding its key (lost or released): wake the next local waiter. */
  holderDone(lock: HeldLock): void {
    const local = this.#local.get(lock.memcacheKey);
    if (local === undefined) return;
    local.holderDone(lock);
    this.#forget(lock.memcacheKey, local);
  }

  /**
   * Waits for the key, fairly across processes (fleet-queue.ts). The local
   * head speaks for this instance; once refused, the instance queues up in
   * the key's waiter queue, and sleeps between looks as pacing.ts says.
   */
  async waitFor(attempt: Attempt): Promise<HeldLock> {
    const { key, memcacheKey, clientId, call } = attempt;
    const wait = call.wait as NonNullable<ResolvedLockOptions['wait']>;
    const deadline = performance.now() + wait.timeoutMs;
    const parked = await this.takeParked(attempt);
    if (parked !== undefined) return parked;
    // Our own clientId holds it here: that is a takeover (re-entry), not a reason to queue behind ourselves.
    if ([...(this.#local.get(memcacheKey)?.holders ?? [])].some((held) => held.clientId === clientId)) {
      try {
        return await this.#host.once(attempt, 'probe');
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
    const { signal: stop, dispose } = linkedSignal(attempt.signal, this.#host.closed);
    const waiting: Attempt = { ...attempt, signal: stop };
    let mode: AcquireMode = this.expectRefusal(memcacheKey) ? 'probe' : 'pipelined';
    let holder: string | undefined;
    let gaveUp = false;
    try {
      // Other processes queue for this key: go to the back of the queue
      // rather than race them for it (the queue's head is about to get it).
      let tryNow = !this.#queued(memcacheKey);
      if (!tryNow) mode = 'probe';
      for (;;) {
        if (!(await local.turn(ticket, stop, deadline - performance.now())))
          throw waitTimeout(key, wait.timeoutMs, holder ?? first(local.holders)?.clientId);
        if (ticket.granted !== undefined) return await this.#adopt(waiting, ticket, started);
        if (tryNow) {
          try {
            const lock = await this.#host.once(waiting, mode);
            local.startTurn(performance.now());
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
        const now = performance.now();
        if (now >= deadline) throw waitTimeout(key, wait.timeoutMs, holder);
        const delay = nextDelay({
          position: local.position,
          // Just moved up to the head by a queue read: the key may be reserved for us already.
          promoted: (local.position === 0 && before !== 0) || lookNow,
          heldMs: now - local.holderSince,
          cycleMs: local.cycleMs,
          minDelayMs: wait.minDelayMs,
          maxDelayMs: wait.maxDelayMs,
          remainingMs: deadline - now,
        });
        tryNow = local.position <= 1 || lookNow;
        await local.turn(ticket, stop, delay, true);
        if (ticket.granted !== undefined) return await this.#adopt(waiting, ticket, started);
      }
    } catch (error) {
      gaveUp = true;
      if (ticket.granted !== undefined) await this.#dropGranted(ticket);
      throw error;
    } finally {
      dispose();
      this.#leave(local, ticket, memcacheKey, gaveUp);
    }
  }

  /**
   * Handed the entry while giving up (timeout, abort, close): let go of it
   * (tracked, so close() waits for this delete before closing sockets).
   */
  async #dropGranted(ticket: Ticket<Held>): Promise<void> {
    const granted = ticket.granted as Held;
    ticket.granted = undefined;
    const drop = releaseEntry(this.#host.client, granted).catch(noop);
    this.#host.track(drop);
    await drop;
  }

  /**
   * A waiting call is done (acquired, or gave up: `gaveUp`): leave the local
   * queue, and the remote one with the last waiter.
   */
  #leave(local: LocalKey<HeldLock, Held>, ticket: Ticket<Held>, memcacheKey: string, gaveUp: boolean): void {
    local.leave(ticket);
    if (local.waiting === 0) {
      // A releaser may have reserved the key for us (only a queued waiter
      // can be reserved for): the last local waiter to give up deletes
      // that reservation, so the key is not blocked until it expires.
      if (gaveUp && local.queued) this.#cancelReservation(memcacheKey);
      if (local.queued) this.#dequeue(local, memcacheKey);
    }
    this.#forget(memcacheKey, local);
  }

  /** A local releaser transferred the entry to us: hold it (no round trip), continuing this turn. */
  #adopt(attempt: Attempt, ticket: Ticket<Held>, started: number): Promise<HeldLock> {
    const held = ticket.granted as Held;
    ticket.granted = undefined;
    const adopted = Promise.resolve(this.#host.hold(attempt, { held, how: 'handoff', previous: null }, started));
    this.#host.track(adopted);
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
    const { client, token } = this.#host;
    const queueKey = queueKeyOf(this.#host.prefix, memcacheKey);
    const now = performance.now();
    const believed = local.queued;
    let missing = false;
    const work = (async (): Promise<void> => {
      let list: readonly { token: string; expiresAt: number }[] | undefined;
      if (!local.queued || now - local.queuedAt >= QUEUE_REFRESH_MS) {
        const join = joined(token, Date.now());
        list = await updateQueue(client, queueKey, (waiters) => {
          missing = !waiters.some((w) => w.token === token);
          return join(waiters);
        });
        local.queued = list !== undefined;
        local.queuedAt = now;
      } else {
        list = (await readQueue(client, queueKey)).waiters;
      }
      if (list === undefined) {
        // CAS conflicts persisted: we do not know our place; poll like a head.
        local.position = UNKNOWN_POSITION;
        return;
      }
      const wall = Date.now();
      local.observe(
        list.filter((w) => w.expiresAt > wall).findIndex((w) => w.token === token),
        performance.now(),
      );
      // Missing (reserved for us, or the queue expired or was evicted): look now, join again next time.
      if (local.position === -1) local.queuedAt = -Infinity;
    })();
    this.#host.track(work);
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
    const work = cancelReservation(this.#host.client, memcacheKey, this.#host.token);
    this.#host.track(work);
    work.catch(noop);
  }

  /** Leaves the waiter queue in the background (no local waiter is left). */
  #dequeue(local: LocalKey<HeldLock, Held>, memcacheKey: string): void {
    local.queued = false;
    local.position = UNKNOWN_POSITION;
    const work = updateQueue(
      this.#host.client,
      queueKeyOf(this.#host.prefix, memcacheKey),
      without([this.#host.token], Date.now()),
    );
    this.#host.track(work);
    work.catch(noop);
  }

  /**
   * How a release lets go (lock.ts asks): hand the key to a local waiter
   * while this process's turn lasts (bounded in time and handoffs, waiters
   * that arrived during the turn included); otherwise, when other processes
   * queue for it, reserve it for the queue's head; else delete it.
   */
  planRelease(lock: HeldLock): Handoff | Promise<Handoff | undefined> | undefined {
    const memcacheKey = lock.memcacheKey;
    const local = this.#local.get(memcacheKey);
    const localWaiters = local?.waiting ?? 0;
    if (local !== undefined && localWaiters > 0 && local.takeTurnHandoff(performance.now(), this.#host.turn))
      return localHandoff(local);
    const seen = this.#remote.get(memcacheKey);
    const remote = seen !== undefined && performance.now() - seen < REMOTE_WINDOW_MS;
    // Nobody else seems to want it: delete, decided synchronously (the uncontended path).
    if (localWaiters === 0 && !remote && !lock.waited && local?.queued !== true) return undefined;
    // Others want it, but our turn is not over: keep it a moment for a
    // worker of ours that calls again at once (it takes it with one CAS).
    if (
      local !== undefined &&
      localWaiters === 0 &&
      remote &&
      !this.#host.closed.aborted &&
      !this.#parked.has(memcacheKey) &&
      local.takeTurnHandoff(performance.now(), this.#host.turn)
    )
      return { kind: 'park', park: (held) => this.#park(memcacheKey, held) };
    return this.#planRemote(memcacheKey, local, localWaiters);
  }

  /** Keeps `held` for this process's next caller until the turn ends (at most PARK_MS); then lets it go. */
  #park(memcacheKey: string, held: Held): void {
    const local = this.#local.get(memcacheKey);
    const left =
      local?.turnStartedAt === undefined ? 0 : local.turnStartedAt + this.#host.turn.maxMs - performance.now();
    const timer = setTimeout(() => this.#unpark(memcacheKey), Math.max(0, Math.min(PARK_MS, left)));
    this.#parked.set(memcacheKey, { held, timer });
    if (this.#host.closed.aborted) this.#unpark(memcacheKey);
  }

  /**
   * A caller of this process takes the entry parked for `memcacheKey`, if
   * any, with one CAS write of its own value (the turn goes on). Resolves
   * `undefined` when nothing is parked or the entry is no longer ours.
   */
  takeParked(attempt: Attempt): Promise<HeldLock | undefined> | undefined {
    const parked = this.#parked.get(attempt.memcacheKey);
    if (parked === undefined) return undefined;
    this.#parked.delete(attempt.memcacheKey);
    clearTimeout(parked.timer);
    const started = performance.now();
    const work = (async (): Promise<HeldLock | undefined> => {
      const { clientId, call } = attempt;
      let next;
      try {
        next = await transferEntry(this.#host.client, parked.held, clientId, call.ttlSeconds);
      } catch {
        // Unknown whether it landed: the entry is not trusted; acquire as usual (it expires at worst).
        return undefined;
      }
      if (typeof next === 'string') return undefined;
      const lock = await this.#host.hold(attempt, { held: next, how: 'handoff', previous: null }, started);
      lock.waited = true;
      return lock;
    })();
    this.#host.track(work);
    return work;
  }

  /** Nobody took the parked entry in time (or close()): let it go as a release would. Never rejects. */
  #unpark(memcacheKey: string): void {
    const parked = this.#parked.get(memcacheKey);
    if (parked === undefined) return;
    this.#parked.delete(memcacheKey);
    clearTimeout(parked.timer);
    const local = this.#local.get(memcacheKey);
    const work = (async (): Promise<void> => {
      const plan = this.#host.closed.aborted
        ? undefined
        : await this.#planRemote(memcacheKey, local, local?.waiting ?? 0);
      await letGo(this.#host.client, parked.held, plan?.kind === 'park' ? undefined : plan);
    })()
      .catch(noop)
      .finally(() => {
        if (local !== undefined) this.#forget(memcacheKey, local);
      });
    this.#host.track(work);
  }

  /** close(): lets every parked entry go now. */
  flushParked(): void {
    for (const memcacheKey of [...this.#parked.keys()]) this.#unpark(memcacheKey);
  }

  /** Reads the waiter queue: reserve for its head, or hand to a local waiter, or delete. Never rejects. */
  async #planRemote(
    memcacheKey: string,
    local: LocalKey<HeldLock, Held> | undefined,
    localWaiters: number,
  ): Promise<Handoff | undefined> {
    const queueKey = queueKeyOf(this.#host.prefix, memcacheKey);
    let state: QueueState;
    try {
      state = await readQueue(this.#host.client, queueKey);
    } catch {
      return undefined;
    }
    const head = liveOthers(state.waiters, this.#host.token, Date.now())[0];
    if (head === undefined) {
      if (local === undefined || localWaiters === 0) return undefined;
      // Nobody else waits: a new turn starts now, so the next local releases
      // need not read the queue until it ends.
      local.startTurn(performance.now());
      return localHandoff(local);
    }
    this.#sawRemote(memcacheKey);
    return {
      kind: 'remote',
      token: head.token,
      reserved: () =>
        this.#reserved({ local: local ?? this.#localKey(memcacheKey), memcacheKey, queueKey, state, head: head.token }),
    };
  }

  /**
   * After reserving the key for `head`: take it out of the queue, and put
   * ourselves at the tail if calls of ours still wait, in the same write.
   * Then let the local state go once nothing uses it. Never rejects.
   */
  async #reserved({ local, memcacheKey, queueKey, state, head }: Reservation): Promise<void> {
    const token = this.#host.token;
    const now = Date.now();
    // Out with the head, and with us wherever we stood; back in at the tail
    // only if calls of ours still wait. (Queuing up "in case a worker loop
    // comes back" was tried: a fast releaser elsewhere could reserve the key
    // for us before we left again, and nobody took it for a second or two.)
    const requeue = local.waiting > 0;
    const change = (waiters: readonly QueuedWaiter[]): readonly QueuedWaiter[] => {
      const rest = without([head, token], now)(waiters) ?? waiters;
      return requeue ? joined(token, now)(rest) : rest;
    };
    local.endTurn();
    try {
      const list = await updateQueue(this.#host.client, queueKey, change, state);
      local.queued = requeue && list !== undefined;
      local.queuedAt = performance.now();
      local.position = UNKNOWN_POSITION;
      if (list !== undefined)
        local.observe(
          list.filter((w) => w.expiresAt > now).findIndex((w) => w.token === token),
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
    this.#host.track(check);
  }

  /** Drops `local` from the map once nothing uses it (and only if it is still the map's entry). */
  #forget(memcacheKey: string, local: LocalKey<HeldLock, Held>): void {
    if (local.idle && !local.queued && !this.#parked.has(memcacheKey) && this.#local.get(memcacheKey) === local)
      this.#local.delete(memcacheKey);
  }

  #localKey(memcacheKey: string): LocalKey<HeldLock, Held> {
    let local = this.#local.get(memcacheKey);
    if (local === undefined) {
      local = new LocalKey<HeldLock, Held>();
      this.#local.set(memcacheKey, local);
    }
    return local;
  }

  /** Whether other processes queued for `memcacheKey` recently: a new waiter then queues up before its first attempt. */
  #queued(memcacheKey: string): boolean {
    const seen = this.#remote.get(memcacheKey);
    return seen !== undefined && performance.now() - seen < QUEUED_WINDOW_MS;
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

/** A reservation just written for the remote queue's head: what updating the queue after it needs. */
interface Reservation {
  readonly local: LocalKey<HeldLock, Held>;
  readonly memcacheKey: string;
  readonly queueKey: string;
  /** The queue as read before reserving (its CAS starts the update). */
  readonly state: QueueState;
  /** The head's queue token. */
  readonly head: string;
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

function first<T>(items: Iterable<T>): T | undefined {
  for (const item of items) return item;
  return undefined;
}

function waitTimeout(key: string, timeoutMs: number, holder: string | undefined): LockNotAcquiredError {
  const last = holder === undefined ? '' : ` (last held by ${quoteId(holder)})`;
  return new LockNotAcquiredError(key, holder, {
    message: `Timed out after ${timeoutMs} ms waiting for lock ${JSON.stringify(key)}${last}`,
  });
}

function noop(): void {}
