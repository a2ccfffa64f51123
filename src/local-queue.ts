/**
 * Same-process waiters for one key queue here, so only the head of the queue
 * asks memcache, and it asks only when no lock of this process holds the key.
 * When a local holder lets go, the head is woken at once: a handoff inside a
 * process costs one add and one delete instead of a poll storm. Waiters in
 * other processes still poll with backoff; this is an optimisation, not the
 * lock (memcache stays the only authority).
 */

interface Ticket {
  wake: (() => void) | undefined;
}

/** Per-key local state: how many local locks hold it, and who waits. */
export class LocalKey {
  holders = 0;
  readonly #waiters: Ticket[] = [];

  get idle(): boolean {
    return this.holders === 0 && this.#waiters.length === 0;
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
  holderDone(): void {
    this.holders--;
    this.#pump();
  }

  #pump(): void {
    if (this.holders === 0) this.#waiters[0]?.wake?.();
  }

  /**
   * Resolves when `ticket` heads the queue and no local lock holds the key.
   * Resolves `false` if `timeoutMs` passes first; rejects with `signal.reason`.
   */
  async turn(ticket: Ticket, signal: AbortSignal | undefined, timeoutMs: number): Promise<boolean> {
    if (this.#waiters[0] === ticket && this.holders === 0) return true;
    signal?.throwIfAborted();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      return await new Promise<boolean>((resolve, reject) => {
        ticket.wake = () => resolve(true);
        if (Number.isFinite(timeoutMs)) timer = setTimeout(() => resolve(false), Math.max(0, timeoutMs));
        if (signal !== undefined) {
          onAbort = () => reject(signal.reason);
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
