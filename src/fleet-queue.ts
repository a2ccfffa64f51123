/**
 * The cross-process waiter queue: protocol steps over a `LockClient`, no
 * timers. It makes waiting fair between processes; the lock entry stays the
 * only authority on who holds a key.
 *
 * Invariants:
 * - One queue entry per lock key (`queueKey`), holding an ordered list of
 *   waiting Memlock instances (a random token each, standing for all of that
 *   instance's local waiters), with the wall-clock time each joined and
 *   until when it counts as alive. Every change is a CAS write (or an add
 *   when the queue is missing), retried a few times on conflict, so
 *   concurrent joins never drop each other.
 * - Liveness: a waiter refreshes its `expiresAt` while it waits; releasers
 *   skip (and drop) expired waiters, so a crashed waiter leaves the queue
 *   within QUEUE_ALIVE_MS. The queue entry itself expires after
 *   QUEUE_TTL_SECONDS without a write; a waiter that finds itself missing
 *   joins again (at the tail: best effort).
 * - Handoff: a releaser that finds live remote waiters replaces the lock
 *   entry (CAS) with a reservation for the head and then removes the head
 *   from the queue. Only the reserved waiter may take the reservation over;
 *   if it died, the reservation expires (RESERVATION_TTL_SECONDS). A crash
 *   between the two writes leaves the head queued although reserved: it
 *   takes the reservation and leaves the queue itself.
 * - Eviction or a restart loses the queue: waiters rejoin on their next
 *   read, and the lock entry still decides who holds the key.
 * - Ambiguity: a queue write that failed is never assumed applied; the next
 *   read shows the truth. Queue errors never fail a lock call: waiting falls
 *   back to polling.
 */
import type { Entry, LockClient } from './client.js';

const QUEUE_TAG = 'mq1';

/**
 * A waiter counts as alive this long after its last refresh. A dead waiter
 * costs the key at most one reservation expiry when it reaches the head (it
 * is taken out when reserved); expiry only keeps the queue clean.
 */
export const QUEUE_ALIVE_MS = 10_000;
/** Expiry of the queue entry itself (refreshed by every write). */
export const QUEUE_TTL_SECONDS = 30;
/** CAS conflicts tolerated per queue change before giving up (polling still works). */
const MAX_ROUNDS = 8;

/** One queued waiter. */
export interface QueuedWaiter {
  readonly token: string;
  /** Wall-clock ms when it joined (order is the list order). */
  readonly joinedAt: number;
  /** Wall-clock ms until which it counts as alive. */
  readonly expiresAt: number;
}

/** A queue as read, with the CAS to change it. */
export interface QueueState {
  readonly waiters: readonly QueuedWaiter[];
  readonly entry: Entry | null;
}

/** Encodes `mq1|token,joinedAt,expiresAt|…`. Tokens are base64url, so no separator can occur in them. */
export function encodeQueue(waiters: readonly QueuedWaiter[]): Buffer {
  let text = QUEUE_TAG;
  for (const w of waiters) text += `|${w.token},${w.joinedAt},${w.expiresAt}`;
  return Buffer.from(text);
}

/** Decodes a queue value; anything unreadable is an empty queue. */
export function decodeQueue(value: Buffer): QueuedWaiter[] {
  const parts = value.toString('latin1').split('|');
  if (parts[0] !== QUEUE_TAG) return [];
  const waiters: QueuedWaiter[] = [];
  for (let i = 1; i < parts.length; i++) {
    const [token, joinedAt, expiresAt] = (parts[i] as string).split(',');
    const joined = Number(joinedAt);
    const expires = Number(expiresAt);
    if (token === undefined || token === '' || !Number.isFinite(joined) || !Number.isFinite(expires)) continue;
    waiters.push({ token, joinedAt: joined, expiresAt: expires });
  }
  return waiters;
}

/** Live waiters other than `self`, in queue order. */
export function liveOthers(waiters: readonly QueuedWaiter[], self: string, now: number): QueuedWaiter[] {
  return waiters.filter((w) => w.token !== self && w.expiresAt > now);
}

/** Reads the queue. */
export async function readQueue(client: LockClient, queueKey: string): Promise<QueueState> {
  const entry = await client.get(queueKey);
  return { entry, waiters: entry === null ? [] : decodeQueue(entry.value) };
}

/**
 * Applies `change` to the queue with CAS, re-reading on conflict. `change`
 * returns the new list, or `undefined` to leave the queue as it is. Starts
 * from `state` when given (a read the caller already made). Resolves with
 * the list written (or left), `undefined` if conflicts persisted.
 */
export async function updateQueue(
  client: LockClient,
  queueKey: string,
  change: (waiters: readonly QueuedWaiter[]) => readonly QueuedWaiter[] | undefined,
  state?: QueueState,
): Promise<readonly QueuedWaiter[] | undefined> {
  let current = state ?? (await readQueue(client, queueKey));
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const next = change(current.waiters);
    if (next === undefined) return current.waiters;
    const entry = current.entry;
    let status: 'ok' | 'exists' | 'not_found';
    if (entry === null) {
      if (next.length === 0) return next;
      status = (await client.add(queueKey, encodeQueue(next), QUEUE_TTL_SECONDS)).status;
    } else if (!client.isCurrent(queueKey, entry.conn)) {
      // The CAS came over a connection since replaced: it may predate a
      // restart (memcached counts CAS from 1 again). Read afresh instead.
      status = 'exists';
    } else if (next.length === 0) {
      status = (await client.casDelete(queueKey, entry.cas)).status;
    } else {
      status = (await client.casSet(queueKey, encodeQueue(next), QUEUE_TTL_SECONDS, entry.cas)).status;
    }
    if (status === 'ok') return next;
    current = await readQueue(client, queueKey);
  }
  return undefined;
}

/** Adds `token` at the tail (or refreshes its liveness in place); drops expired waiters. */
export function joined(token: string, now: number): (waiters: readonly QueuedWaiter[]) => readonly QueuedWaiter[] {
  return (waiters) => {
    const expiresAt = now + QUEUE_ALIVE_MS;
    let found = false;
    const next: QueuedWaiter[] = [];
    for (const w of waiters) {
      if (w.token === token) {
        found = true;
        next.push({ token, joinedAt: w.joinedAt, expiresAt });
      } else if (w.expiresAt > now) {
        next.push(w);
      }
    }
    if (!found) next.push({ token, joinedAt: now, expiresAt });
    return next;
  };
}

/** Removes `tokens` (and expired waiters); `undefined` when nothing changes. */
export function without(
  tokens: readonly string[],
  now: number,
): (waiters: readonly QueuedWaiter[]) => readonly QueuedWaiter[] | undefined {
  return (waiters) => {
    const next = waiters.filter((w) => !tokens.includes(w.token) && w.expiresAt > now);
    return next.length === waiters.length ? undefined : next;
  };
}
