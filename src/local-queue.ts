/**
 * Same-process waiters for one key queue here, so only the head of the queue
 * asks memcache, and it asks only when no lock of this process holds the key.
 * When a local holder lets go, the head is woken at once: a handoff inside a
 * process costs one delete and one add instead of a poll storm.
 *
 * The local queue is bounded by the cross-process queue (waiter-queue.ts):
 * while other processes wait, a process hands the key to its own waiters at
 * most `batch` times per turn (the waiters it had when its turn began, capped
 * at MAX_BATCH), then reserves the key for the remote head and queues up
 * again. memcache stays the only authority on who holds the key.
 */

/** Most local handoffs per turn while remote waiters exist. */
export const MAX_BATCH = 8;

interface Ticket {
  wake: (() => void) | undefined;
}

/** Per-key local state: which local locks hold it, who waits, and our place in the remote queue. */
export class LocalKey<L = unknown> {
  readonly holders = new Set<L>();
  /** Local handoffs left in this process's current turn. */
  batch = 0;
  /** Our token is (probably) in the remote waiter queue. */
  queued = false;
  /** `performance.now()` of our last queue write (liveness refresh). */
  queuedAt = 0;
  /** Our last known position among live remote waiters (0 = head). */
  position = -1;
  /** The current release hands the key to a local waiter: its acquisition continues the turn. */
  handingOff = false;
  readonly #waiters: Ticket[] = [];

  get idle(): boolean {
    return this.holders.size === 0 && this.#waiters.length === 0;
  }

  /** Number of local waiters. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Starts a turn: the waiters present now may be served locally, up to MAX_BATCH. */
  startTurn(): void {
    this.batch = Math.min(Math.max(0, this.#waiters.length - 1), MAX_BATCH);
  }

  /** Joins the queue. */
  join(): Ticket {
    const ticket: Ticket = { wake: undefined };
    this.#waiters.push(ticket);
    return ticket;
  }

  /** Leaves the queue (acquired, gave up or aborted) and wakes the next head if free. */
  leave(ticket: Ticket): void {
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
  async turn(ticket: Ticket, signal: AbortSignal | undefined, timeoutMs: number, nap = false): Promise<boolean> {
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
