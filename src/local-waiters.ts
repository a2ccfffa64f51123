/**
 * Same-process waiters for one key queue here, so only the head of the queue
 * asks memcache, and it asks only when no lock of this process holds the key.
 * When a local holder lets go, the head is woken at once: a handoff inside a
 * process costs one delete and one add instead of a poll storm.
 *
 * The local queue is bounded by the cross-process queue (fleet-queue.ts):
 * while other processes wait, a process hands the key to its own waiters,
 * including ones that arrive during its turn, only while the turn lasts
 * (bounded in time and in handoffs: the `turn` option), then reserves the
 * key for the remote head and queues up again. memcache stays the only
 * authority on who holds the key.
 */

/** A turn's bounds (the resolved `turn` option). */
export interface TurnBounds {
  readonly maxMs: number;
  readonly maxHandoffs: number;
}
/** `position` when our place in the waiter queue is unknown (not read yet, or the queue failed); -1 means read and absent. */
export const UNKNOWN_POSITION = -2;
/** First guess of the handoff interval, before the queue was seen to move. */
const INITIAL_CYCLE_MS = 10;

/** A local waiter. `G` is what a releaser hands it directly (the held entry). */
export interface Ticket<G = unknown> {
  wake: (() => void) | undefined;
  /** Set by a releaser that transferred the entry to this waiter (one CAS write, no add). */
  granted: G | undefined;
  /** The waiter's clientId and lease (whole seconds): what a transfer writes. */
  readonly clientId: string;
  readonly ttlSeconds: number;
}

/** Per-key local state: which local locks hold it, who waits, and our place in the remote queue. */
export class LocalKey<L = unknown, G = unknown> {
  readonly holders = new Set<L>();
  /** `performance.now()` when this process's current turn began (it got the key from memcache); undefined: no turn. */
  turnStartedAt: number | undefined = undefined;
  /** Local handoffs made in the current turn. */
  turnHandoffs = 0;
  /** Our token is (probably) in the remote waiter queue. */
  queued = false;
  /** `performance.now()` of our last queue write (liveness refresh). */
  queuedAt = 0;
  /** Our last known position among live remote waiters (0 = head, -1 = unknown). */
  position = -1;
  /** `performance.now()` when `position` was last read. */
  #positionAt = 0;
  /** Estimated ms between handoffs to other processes (EMA of observed queue movement). */
  cycleMs = INITIAL_CYCLE_MS;
  readonly #waiters: Array<Ticket<G>> = [];

  get idle(): boolean {
    return this.holders.size === 0 && this.#waiters.length === 0;
  }

  /** Number of local waiters. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** `performance.now()` since when the entry seen by our polls has been the same. */
  holderSince = performance.now();
  #seen: string | undefined;

  /**
   * Records the entry a refused poll saw (its token). A change means the key
   * moved on: the handoff interval is re-estimated, and the waiter next in
   * line (place 1) knows the head was served and is now the head itself.
   */
  sawEntry(token: string | undefined, now: number, reservedForOther: boolean): void {
    if (token === this.#seen) return;
    if (this.#seen !== undefined) this.cycleMs += (now - this.holderSince - this.cycleMs) / 4;
    this.#seen = token;
    this.holderSince = now;
    if (this.position === 1) this.position = 0;
    // We thought we were the head, yet the key was reserved for someone else:
    // our place was stale. Read the queue again rather than poll as a head.
    else if (this.position === 0 && reservedForOther) this.position = UNKNOWN_POSITION;
  }

  /** Records a queue read: our position, and how fast the queue moved since the last read. */
  observe(position: number, now: number): void {
    if (this.position > 0 && position >= 0 && position < this.position) {
      const perPlace = (now - this.#positionAt) / (this.position - position);
      this.cycleMs += (perPlace - this.cycleMs) / 4;
    }
    // Moved up to the first two places: the hold in progress is news to us (we did not poll the entry).
    if (position >= 0 && position <= 1 && (this.position < 0 || this.position > 1)) this.holderSince = now;
    this.position = position;
    this.#positionAt = now;
  }

  /** Starts a turn at `now`: local waiters, present or arriving, may be served locally within `TurnBounds`. */
  startTurn(now: number): void {
    this.turnStartedAt = now;
    this.turnHandoffs = 0;
  }

  /** Ends the turn (the key went to another process). */
  endTurn(): void {
    this.turnStartedAt = undefined;
  }

  /**
   * Whether a release at `now` may hand the key to a local waiter while
   * other processes wait: the turn is under both bounds. Counts the handoff
   * when it says yes.
   */
  takeTurnHandoff(now: number, bounds: TurnBounds): boolean {
    const started = this.turnStartedAt;
    if (started === undefined || now - started >= bounds.maxMs || this.turnHandoffs >= bounds.maxHandoffs) return false;
    this.turnHandoffs++;
    return true;
  }

  /** Joins the queue. */
  join(clientId: string, ttlSeconds: number): Ticket<G> {
    const ticket: Ticket<G> = { wake: undefined, granted: undefined, clientId, ttlSeconds };
    this.#waiters.push(ticket);
    return ticket;
  }

  /** Leaves the queue (acquired, gave up or aborted) and wakes the next head if free. */
  /** The waiter a local handoff goes to: the head of the queue. */
  get head(): Ticket<G> | undefined {
    return this.#waiters[0];
  }

  /**
   * Hands `grant` to `ticket` if it still waits; `false` if it left meanwhile
   * (then the releaser must let go of what it meant to hand over).
   */
  give(ticket: Ticket<G>, grant: G): boolean {
    if (!this.#waiters.includes(ticket)) return false;
    ticket.granted = grant;
    ticket.wake?.();
    return true;
  }

  leave(ticket: Ticket<G>): void {
    const index = this.#waiters.indexOf(ticket);
    if (index !== -1) this.#waiters.splice(index, 1);
    ticket.wake = undefined;
    this.#pump();
  }

  /** A local lock on this key stopped holding it. */
  holderDone(lock: L): void {
    this.holders.delete(lock);
    this.#pump();
  }

  #pump(): void {
    if (this.holders.size === 0) this.#waiters[0]?.wake?.();
  }

  /**
   * Resolves `true` when `ticket` heads the queue and no local lock holds the
   * key (at once if that is so already, unless `nap`: then only when woken).
   * Resolves `false` if `timeoutMs` passes first; rejects with `signal.reason`.
   */
  async turn(ticket: Ticket<G>, signal: AbortSignal | undefined, timeoutMs: number, nap = false): Promise<boolean> {
    if (ticket.granted !== undefined) return true;
    if (!nap && this.#waiters[0] === ticket && this.holders.size === 0) return true;
    signal?.throwIfAborted();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      return await new Promise<boolean>((resolve, reject) => {
        ticket.wake = () => resolve(true);
        if (Number.isFinite(timeoutMs)) timer = setTimeout(() => resolve(false), Math.max(0, timeoutMs));
        if (signal !== undefined) {
          onAbort = () => reject(signal.reason);
          // Stryker disable next-line ObjectLiteral,BooleanLiteral: equivalent, the finally below removes the listener either way
          signal.addEventListener('abort', onAbort, { once: true });
        }
      });
    } finally {
      ticket.wake = undefined;
      if (timer !== undefined) clearTimeout(timer);
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }
  }
}
