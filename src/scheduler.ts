/**
 * One timer for every held lock of a Memlock instance. Each lock is a node in
 * an indexed binary min-heap keyed by its next due time (`performance.now()`),
 * and a single unref'd one-shot timer is armed for the earliest. 10,000 held
 * locks therefore cost one heap entry each and one timer in all; a tick fires
 * every node due within `COALESCE_MS` so renewals batch instead of waking the
 * loop 10,000 times per interval. Timers are unref'd: held locks never keep a
 * process alive on their own.
 *
 * The scheduler also knows how late its timers may fire: it samples the
 * event-loop delay (loop-delay.ts) from the first schedule until `stop()`,
 * and leases widen their safety margin by it (`loopDelayMs`).
 */
import { LoopDelay, type LoopDelaySource } from './loop-delay.js';

/** Something the scheduler can fire. `heapIndex` is owned by the scheduler. */
export interface Scheduled {
  due: number;
  heapIndex: number;
  /** Called when due; must not throw (the scheduler guards anyway). */
  fire(now: number): void;
}

/** Nodes due this close together fire in the same tick. */
export const COALESCE_MS = 4;

/** A min-heap of scheduled nodes driven by one timer. */
export class Scheduler {
  readonly #heap: Scheduled[] = [];
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #onError: (error: unknown) => void;
  readonly #loopDelay: LoopDelaySource & { start(now: number): void; stop(): void };
  #sampling = false;

  constructor(
    onError: (error: unknown) => void = () => {},
    loopDelay: LoopDelaySource & { start(now: number): void; stop(): void } = new LoopDelay(),
  ) {
    this.#onError = onError;
    this.#loopDelay = loopDelay;
  }

  /** The recent p99 event-loop delay in ms (0 before anything was scheduled). */
  loopDelayMs(now: number): number {
    return this.#loopDelay.p99Ms(now);
  }

  /** Number of scheduled nodes. */
  get size(): number {
    return this.#heap.length;
  }

  /** Whether a timer is armed (for leak tests). */
  get armed(): boolean {
    return this.#timer !== undefined;
  }

  /** Schedules (or reschedules) `node` at `due`. */
  schedule(node: Scheduled, due: number): void {
    if (!this.#sampling) {
      // Started once and kept until stop(): a lock/unlock loop must not
      // create a histogram per cycle.
      this.#sampling = true;
      this.#loopDelay.start(performance.now());
    }
    node.due = due;
    if (node.heapIndex === -1) {
      node.heapIndex = this.#heap.length;
      this.#heap.push(node);
      this.#up(node.heapIndex);
    } else {
      this.#up(node.heapIndex);
      this.#down(node.heapIndex);
    }
    this.#arm();
  }

  /** Removes `node` if scheduled. */
  cancel(node: Scheduled): void {
    const index = node.heapIndex;
    if (index === -1) return;
    const last = this.#heap.pop() as Scheduled;
    node.heapIndex = -1;
    if (last !== node) {
      this.#heap[index] = last;
      last.heapIndex = index;
      this.#up(index);
      this.#down(last.heapIndex);
    }
    // The timer is left armed even when the heap empties: it is unref'd, and
    // a lock/unlock loop would otherwise create and clear a timer per cycle.
  }

  /** Cancels everything and the timer. */
  stop(): void {
    for (const node of this.#heap) node.heapIndex = -1;
    this.#heap.length = 0;
    this.#disarm();
    this.#sampling = false;
    this.#loopDelay.stop();
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }

  #arm(): void {
    const top = this.#heap[0];
    if (top === undefined) return this.#disarm();
    // Re-arm only when the earliest due moved earlier; a timer that fires
    // early just finds nothing due and re-arms.
    if (this.#timer !== undefined && this.#timerAt <= top.due) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = top.due;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, top.due - performance.now()));
    this.#timer.unref();
  }

  #tick(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    // Take the whole due batch first: a node that reschedules itself inside
    // the coalescing window must wait for the next tick, not loop here.
    const batch: Scheduled[] = [];
    let top = this.#heap[0];
    while (top !== undefined && top.due <= now + COALESCE_MS) {
      this.cancel(top);
      batch.push(top);
      top = this.#heap[0];
    }
    for (const node of batch) {
      try {
        node.fire(now);
      } catch (error) {
        this.#onError(error);
      }
    }
    this.#arm();
  }

  #up(index: number): void {
    const heap = this.#heap;
    const node = heap[index] as Scheduled;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = heap[parentIndex] as Scheduled;
      if (parent.due <= node.due) break;
      heap[index] = parent;
      parent.heapIndex = index;
      index = parentIndex;
    }
    heap[index] = node;
    node.heapIndex = index;
  }

  #down(index: number): void {
    const heap = this.#heap;
    const length = heap.length;
    const node = heap[index] as Scheduled;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= length) break;
      const right = left + 1;
      let child = left;
      if (right < length && (heap[right] as Scheduled).due < (heap[left] as Scheduled).due) child = right;
      const childNode = heap[child] as Scheduled;
      if (childNode.due >= node.due) break;
      heap[index] = childNode;
      childNode.heapIndex = index;
      index = child;
    }
    heap[index] = node;
    node.heapIndex = index;
  }
}
