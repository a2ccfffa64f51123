/**
 * How long a waiter sleeps before it looks again: a pure function of what it
 * knows (its place in the waiter queue, how long the current hold has lasted,
 * the observed handoff interval, the caller's delays and deadline). No
 * clock, no I/O: the wait loop (waiting.ts) gathers the state and sleeps.
 *
 * A releaser reserves the key for the head of the queue, so only the first
 * two places need to watch the lock entry: the head closes in on when the
 * hold should end, the next one polls at half the observed handoff interval
 * (it sees the head get served and moves up); places further back re-read
 * the queue about when they expect to move up.
 */
import { UNKNOWN_POSITION } from './local-waiters.js';

/** The first two places poll the entry at least this often: a reservation lives at least 1 s. */
export const MAX_WATCH_MS = 500;

/** What a waiter knows when it picks its next delay. */
export interface PaceState {
  /**
   * Our place among live remote waiters: 0 is the head; -1 means read and
   * absent; `UNKNOWN_POSITION` (-2) means unknown (not read, or the queue failed).
   */
  readonly position: number;
  /** A queue read just moved us to the head, or showed us taken out: the key may be reserved for us already. */
  readonly promoted: boolean;
  /** How long the entry our polls see has been the same (ms): the hold in progress. */
  readonly heldMs: number;
  /** Estimated ms between handoffs to other processes. */
  readonly cycleMs: number;
  /** The caller's `wait.minDelayMs`. */
  readonly minDelayMs: number;
  /** The caller's `wait.maxDelayMs`. */
  readonly maxDelayMs: number;
  /** Time left until the caller's wait deadline (ms). */
  readonly remainingMs: number;
}

/**
 * The next delay (ms) before the waiter looks again. Never more than
 * `maxDelayMs` or `remainingMs`; 0 when the key may be ours already.
 */
export function nextDelay(state: PaceState): number {
  return Math.min(pace(state), state.maxDelayMs, state.remainingMs);
}

function pace({ position, promoted, heldMs, cycleMs, minDelayMs }: PaceState): number {
  // Not in the queue (-1): reserved for us (the releaser took us out), or our
  // entry expired: look at the entry at once.
  if (position === -1 || promoted) return 0;
  // The head halves the distance to when the hold should end, then polls
  // every minDelayMs; a hold far longer than usual slows polls to an eighth
  // of its length. The first two places never sleep past a reservation's
  // guaranteed second; without a queue (UNKNOWN_POSITION: it failed)
  // everyone polls like a head.
  if (position === 0 || position === UNKNOWN_POSITION)
    return Math.min(Math.max(minDelayMs, (cycleMs - heldMs) / 2, heldMs / 8), MAX_WATCH_MS);
  if (position === 1) return Math.min(Math.max(minDelayMs, cycleMs / 2, heldMs / 8), MAX_WATCH_MS);
  // A little early (3/4): arriving late costs a handoff, early one read. A
  // long hold slows these reads too (an eighth of it, at most MAX_WATCH_MS):
  // places further back must not read the queue every few ms for the whole
  // of a hold that takes seconds.
  return Math.max(minDelayMs, (position - 1) * cycleMs * 0.75, Math.min(heldMs / 8, MAX_WATCH_MS));
}
