/**
 * The lock protocol: small steps over a `LockClient`, no timers, no hidden state.
 *
 * Invariants:
 * - Ownership: an entry is ours exactly when its value equals the bytes we
 *   wrote. The value holds the clientId, the acquisition time and a random
 *   token, so it is unique per acquisition; "same clientId" is never taken as
 *   "ours" (that is a takeover, which writes a new value).
 * - CAS: every write to an existing entry (takeover, steal, renewal) and every
 *   delete is CAS-checked, so nobody renews or frees someone else's lock. A
 *   CAS is only used on the connection it came from: memcached restarts its
 *   CAS counter at 1 after a restart, so a CAS from before a reconnect is read
 *   back first (value compared, fresh CAS adopted). The common path stays one
 *   round trip.
 * - Ambiguity: a write that timed out or lost its connection may have been
 *   applied. It is never guessed and never re-sent blindly: the entry is read
 *   back and compared.
 * - TTL and memcached's clock: memcached counts expiry in whole seconds on
 *   a clock (`current_time`) that a one-second timer advances. The timer is
 *   re-armed after it runs, so each tick lands a few ms late; when the tick
 *   phase crosses a whole second the clock advances by 2 at once, and a
 *   write processed just before such a tick is stamped almost a second
 *   stale. An entry written with TTL t may therefore expire as soon as
 *   t - 2 s (less the tick's lateness, a few ms) after the request was sent.
 *   So a lease of n = ceil(leaseMs / 1000) s is written with TTL n + 1
 *   (`leaseTtlSeconds`) and confirms the lease only until `sentAt + (n - 1) s`
 *   on the monotonic clock (`leaseDeadline`); the local deadline sits a
 *   margin before that (`leaseMargin`: a fixed part for timer and tick
 *   lateness, plus the recently observed event-loop delay, bounded). A
 *   crashed holder therefore blocks the key for up to n + 1 s.
 * - Late grants: a grant confirmed after its deadline (a reply slower than
 *   the guaranteed lease, a stalled event loop) may already have expired on
 *   the server; the caller never hands it out (memlock.ts `#hold`).
 * - Eviction: memcache may drop the entry at any moment (LRU, flush,
 *   restart). Nothing here can prevent it; the next renewal detects it. This
 *   is a best-effort lock: the real transaction stays the guard.
 * - Entry states: an entry is held (`ml1`), a completed marker left by
 *   `holdAfterMs` (`ml1d`: refuses everyone, never taken over or stolen, ends
 *   by expiry), or a reservation (`ml1r`) a releaser wrote for the head of the
 *   waiter queue (see fleet-queue.ts): only that waiter may take it over by
 *   CAS; it expires after RESERVATION_TTL_SECONDS if that waiter died, and
 *   a waiter that gives up deletes a reservation made for it
 *   (`cancelReservation`).
 */
import { randomBytes } from 'node:crypto';
import type { Entry, LockClient } from './client.js';
import { MemcacheUnavailableError } from './errors.js';

const VALUE_TAG = 'ml1';
const DONE_TAG = 'ml1d';
const RESERVED_TAG = 'ml1r';

/** 96 random bits per process: with the counter, an entry token no other write anywhere carries. */
const TOKEN_PREFIX = randomBytes(12).toString('base64url');
let tokenCount = 0;

/**
 * A fresh entry token: tells our own write apart from any other (an
 * ambiguous add that landed, a same-clientId entry from the same
 * millisecond). Unique per process by the counter and across processes by
 * the random prefix; cheaper than a randomUUID() per lock. No ':' in it
 * (base64url and base 36), which the value format needs.
 */
export function newToken(): string {
  return `${TOKEN_PREFIX}${(tokenCount++).toString(36)}`;
}

/**
 * Expiry of a reservation: the longest a key waits for a reserved waiter that
 * died (memcached may drop it after about 1 s, see "TTL and memcached's
 * clock", and keeps it at most 3 s).
 */
export const RESERVATION_TTL_SECONDS = 3;

/**
 * Seconds by which memcached's clock may run ahead of the time actually
 * elapsed since a write: a stale `current_time` at the write (up to a tick,
 * about 1 s) plus a 2 s jump at the next tick, less the 1 s the TTL count
 * already allows for.
 */
export const CLOCK_SLACK_SECONDS = 1;

/**
 * memcached reads an expiry above 30 days as an absolute unix time: a lease
 * TTL is capped here so it stays relative (the deadline follows the cap).
 */
export const MAX_RELATIVE_TTL_SECONDS = 30 * 24 * 3600;

/** The TTL written for a lease of `leaseMs`: whole seconds rounded up, plus the clock slack. */
export function leaseTtlSeconds(leaseMs: number): number {
  return Math.min(Math.ceil(leaseMs / 1000) + CLOCK_SLACK_SECONDS, MAX_RELATIVE_TTL_SECONDS);
}

/**
 * The TTL written for a completed marker that must block the key for at
 * least `holdAfterMs`: rounded up, plus memcached's full 2 s clock jump
 * (a marker is not renewed, so nothing else covers it); 0 means none.
 */
export function holdTtlSeconds(holdAfterMs: number): number {
  if (holdAfterMs <= 0) return 0;
  return Math.min(Math.ceil(holdAfterMs / 1000) + 2 * CLOCK_SLACK_SECONDS, MAX_RELATIVE_TTL_SECONDS);
}

/** What an entry is: held by a client, a completed marker, or reserved for a queued waiter. */
export type EntryState = 'held' | 'done' | 'reserved';

/** Who holds an entry, decoded from its value. */
export interface Holder {
  /** The holder's clientId (who completed it, for `done`; the waiter's queue token, for `reserved`). */
  readonly clientId: string;
  /** Wall-clock ms of the (first) acquisition, the completion, or the reservation. */
  readonly acquiredAt: number;
  readonly token: string;
  readonly state: EntryState;
}

/** What we know about an entry we hold; mutated by renewals. */
export interface Held {
  readonly memcacheKey: string;
  readonly value: Buffer;
  readonly ttlSeconds: number;
  cas: bigint;
  /** Connection generation the CAS came over. */
  conn: number;
  /** `performance.now()` when the last confirmed write was sent. */
  sentAt: number;
  /** Set after an ambiguous write: the CAS may be stale, read back first. */
  verify: boolean;
}

/** How an acquisition happened. */
export type AcquireHow = 'added' | 'takeover' | 'stolen' | 'recovered' | 'handoff';

/** Outcome of one acquisition attempt. */
export type AcquireOutcome =
  | { readonly acquired: true; readonly held: Held; readonly how: AcquireHow; readonly previous: Holder | null }
  | { readonly acquired: false; readonly holder: Holder | null };

/** Encodes a value: `ml1:<acquiredAt>:<token>:<clientId>` (clientId last: it may hold ':'). */
export function encodeValue(
  clientId: string,
  acquiredAt: number,
  token: string = newToken(),
  state: EntryState = 'held',
): Buffer {
  const tag = state === 'held' ? VALUE_TAG : state === 'done' ? DONE_TAG : RESERVED_TAG;
  return Buffer.from(`${tag}:${acquiredAt}:${token}:${clientId}`);
}

/** Decodes a value written by `encodeValue`; `null` for anything else. */
export function decodeValue(value: Buffer): Holder | null {
  const text = value.toString('utf8');
  const a = text.indexOf(':');
  const b = text.indexOf(':', a + 1);
  const c = text.indexOf(':', b + 1);
  if (a === -1 || b === -1 || c === -1) return null;
  const tag = text.slice(0, a);
  const state: EntryState | undefined =
    tag === VALUE_TAG ? 'held' : tag === DONE_TAG ? 'done' : tag === RESERVED_TAG ? 'reserved' : undefined;
  if (state === undefined) return null;
  const acquiredAt = Number(text.slice(a + 1, b));
  if (!Number.isFinite(acquiredAt)) return null;
  return { acquiredAt, token: text.slice(b + 1, c), clientId: text.slice(c + 1), state };
}

/** Milliseconds a write with TTL `ttlSeconds` keeps the entry alive for sure, counted from its send time. */
export function guaranteedMs(ttlSeconds: number): number {
  return (ttlSeconds - 1 - CLOCK_SLACK_SECONDS) * 1000;
}

/**
 * `performance.now()` at which a lease confirmed by a write sent at `sentAt`
 * is treated as run out: the guaranteed time less `leaseMargin`.
 */
export function leaseDeadline(sentAt: number, ttlSeconds: number, loopDelayMs = 0): number {
  return sentAt + guaranteedMs(ttlSeconds) - leaseMargin(ttlSeconds, loopDelayMs);
}

/**
 * How long before the last safe moment a lease is treated as run out. Two
 * parts: a fixed one (at most 100 ms, and a tenth of the guaranteed lease)
 * for a timer that fires a few ms late and memcached's late tick; and the
 * event-loop delay observed recently (`loopDelayMs`, the p99 of
 * loop-delay.ts), at most a quarter of the guaranteed lease: a loop that has
 * been stalling fires the deadline timer late by about as much. A single
 * stall longer than the whole margin across the deadline still aborts late;
 * README "Guarantees" says so.
 */
export function leaseMargin(ttlSeconds: number, loopDelayMs = 0): number {
  const guaranteed = guaranteedMs(ttlSeconds);
  return Math.min(100, guaranteed / 10) + Math.min(Math.max(0, loopDelayMs), guaranteed / 4);
}

/**
 * How an attempt starts:
 * - `add`: the add alone (an uncontended key: one round trip, one operation);
 * - `pipelined`: add and read in one round trip (a refusal costs one round
 *   trip instead of two; used while waiting, where a handoff must be fast);
 * - `probe`: read first, add only if the key is free (a key refused recently:
 *   a refusal costs one round trip and one operation, like a plain get).
 */
export type AcquireMode = 'add' | 'pipelined' | 'probe';

/**
 * One acquisition attempt: `add`; on "exists", one read decides between a
 * takeover (same clientId), a steal (holder older than `stealAfterMs`) and a
 * refusal.
 */
export async function acquireEntry(
  client: LockClient,
  memcacheKey: string,
  clientId: string,
  ttlSeconds: number,
  stealAfterMs: number | undefined,
  mode: AcquireMode,
  queueToken?: string,
): Promise<AcquireOutcome> {
  // Built lazily: a probe that finds the key held never needs it.
  let encoded: Buffer | undefined;
  const valueOf = (): Buffer => (encoded ??= encodeValue(clientId, Date.now()));
  // Two rounds at most: the second covers an entry that vanished between the
  // add and the read, or a CAS write that lost a race.
  let lastHolder: Holder | null = null;
  for (let round = 0; round < 2; round++) {
    let entry: Entry | null | undefined;
    if (mode === 'probe' && round === 0) {
      // A read is safe to repeat and changes nothing: its errors need no recovery.
      entry = await client.get(memcacheKey);
    }
    const sentAt = performance.now();
    const value = entry != null ? undefined : valueOf();
    try {
      if (value === undefined) {
        // Held: skip the add, decide below.
      } else if (mode === 'pipelined') {
        const both = await client.addThenGet(memcacheKey, value, ttlSeconds);
        if (both.add.status === 'ok') return added(memcacheKey, value, ttlSeconds, both.add.cas, both.add.conn, sentAt);
        entry = both.entry;
      } else {
        const add = await client.add(memcacheKey, value, ttlSeconds);
        if (add.status === 'ok') return added(memcacheKey, value, ttlSeconds, add.cas, add.conn, sentAt);
      }
    } catch (error) {
      return recover(client, memcacheKey, value as Buffer, ttlSeconds, sentAt, error);
    }
    entry ??= await client.get(memcacheKey);
    if (entry === null) continue;
    if (value !== undefined && entry.value.equals(value)) {
      // Only possible if an earlier ambiguous add of ours landed late.
      return {
        acquired: true,
        held: held(memcacheKey, value, ttlSeconds, entry.cas, entry.conn, sentAt),
        how: 'recovered',
        previous: null,
      };
    }
    const holder = decodeValue(entry.value);
    lastHolder = holder;
    let how: AcquireHow | undefined;
    if (holder === null || holder.state === 'done') how = undefined;
    else if (holder.state === 'reserved')
      how = queueToken !== undefined && holder.clientId === queueToken ? 'handoff' : undefined;
    else if (holder.clientId === clientId) how = 'takeover';
    else if (stealAfterMs !== undefined && Date.now() - holder.acquiredAt > stealAfterMs) how = 'stolen';
    if (how === undefined) return { acquired: false, holder };
    // A CAS from a connection that has since been replaced may predate a restart.
    if (!client.isCurrent(memcacheKey, entry.conn)) continue;
    const casSentAt = performance.now();
    const casValue = valueOf();
    let result;
    try {
      result = await client.casSet(memcacheKey, casValue, ttlSeconds, entry.cas);
    } catch (error) {
      return recover(client, memcacheKey, casValue, ttlSeconds, casSentAt, error);
    }
    if (result.status === 'ok') {
      return {
        acquired: true,
        held: held(memcacheKey, casValue, ttlSeconds, result.cas, result.conn, casSentAt),
        how,
        previous: how === 'handoff' ? null : holder,
      };
    }
  }
  return { acquired: false, holder: lastHolder };
}

function held(memcacheKey: string, value: Buffer, ttlSeconds: number, cas: bigint, conn: number, sentAt: number): Held {
  return { memcacheKey, value, ttlSeconds, cas, conn, sentAt, verify: false };
}

function added(
  memcacheKey: string,
  value: Buffer,
  ttlSeconds: number,
  cas: bigint,
  conn: number,
  sentAt: number,
): AcquireOutcome {
  return {
    acquired: true,
    held: held(memcacheKey, value, ttlSeconds, cas, conn, sentAt),
    how: 'added',
    previous: null,
  };
}

/**
 * A write whose outcome is unknown: read the entry back. Ours: acquired (the
 * lease counts from the original send). Someone else's: refused. Missing or
 * unreadable: unknown, so the original error is thrown; a late-applied add
 * then simply expires after the lease.
 */
async function recover(
  client: LockClient,
  memcacheKey: string,
  value: Buffer,
  ttlSeconds: number,
  sentAt: number,
  error: unknown,
): Promise<AcquireOutcome> {
  if (!isAmbiguous(error)) throw error;
  let entry: Entry | null;
  try {
    entry = await client.get(memcacheKey);
  } catch {
    throw error;
  }
  if (entry === null) throw error;
  if (entry.value.equals(value)) {
    return {
      acquired: true,
      held: held(memcacheKey, value, ttlSeconds, entry.cas, entry.conn, sentAt),
      how: 'recovered',
      previous: null,
    };
  }
  return { acquired: false, holder: decodeValue(entry.value) };
}

/** Whether a failed write may still have been applied by the server (see `MemcacheUnavailableError.mayHaveApplied`). */
export function isAmbiguous(error: unknown): boolean {
  return error instanceof MemcacheUnavailableError && error.mayHaveApplied;
}

/** Makes sure `held.cas` is usable: re-reads when the connection changed or a write was ambiguous. */
async function freshCas(client: LockClient, held: Held): Promise<'ok' | 'gone' | 'taken'> {
  if (!held.verify && client.isCurrent(held.memcacheKey, held.conn)) return 'ok';
  const entry = await client.get(held.memcacheKey);
  if (entry === null) return 'gone';
  if (!entry.value.equals(held.value)) return 'taken';
  held.cas = entry.cas;
  held.conn = entry.conn;
  held.verify = false;
  if (!client.isCurrent(held.memcacheKey, held.conn)) {
    throw new MemcacheUnavailableError('memcache connection changed during a renewal', {
      server: client.serverOf(held.memcacheKey),
    });
  }
  return 'ok';
}

/** Renews a held entry with one CAS-checked write (plus a read after a reconnect). */
export async function renewEntry(client: LockClient, held: Held): Promise<'renewed' | 'gone' | 'taken'> {
  // The common case checks synchronously: no extra promise per renewal.
  if (held.verify || !client.isCurrent(held.memcacheKey, held.conn)) {
    const fresh = await freshCas(client, held);
    if (fresh !== 'ok') return fresh;
  }
  const sentAt = performance.now();
  let result;
  try {
    result = await client.casSet(held.memcacheKey, held.value, held.ttlSeconds, held.cas);
  } catch (error) {
    held.verify = true;
    throw error;
  }
  if (result.status === 'ok') {
    held.cas = result.cas;
    held.conn = result.conn;
    held.sentAt = sentAt;
    return 'renewed';
  }
  return result.status === 'not_found' ? 'gone' : 'taken';
}

/**
 * Replaces a held entry, CAS-checked, with a completed marker (`holdAfterMs`)
 * or a reservation for a queued waiter; `ttlSeconds` is the new entry's expiry.
 */
export async function replaceEntry(
  client: LockClient,
  held: Held,
  state: 'done' | 'reserved',
  clientId: string,
  ttlSeconds: number,
): Promise<'replaced' | 'gone' | 'taken'> {
  const fresh = await freshCas(client, held);
  if (fresh !== 'ok') return fresh;
  let result;
  try {
    result = await client.casSet(
      held.memcacheKey,
      encodeValue(clientId, Date.now(), newToken(), state),
      ttlSeconds,
      held.cas,
    );
  } catch (error) {
    held.verify = true;
    throw error;
  }
  if (result.status === 'ok') return 'replaced';
  return result.status === 'not_found' ? 'gone' : 'taken';
}

/**
 * Transfers a held entry to another acquisition (a local waiter's clientId)
 * with one CAS write: resolves with the new holder's `Held`, or why not.
 */
export async function transferEntry(
  client: LockClient,
  held: Held,
  clientId: string,
  ttlSeconds: number,
): Promise<Held | 'gone' | 'taken'> {
  const fresh = await freshCas(client, held);
  if (fresh !== 'ok') return fresh;
  const value = encodeValue(clientId, Date.now());
  const sentAt = performance.now();
  let result;
  try {
    result = await client.casSet(held.memcacheKey, value, ttlSeconds, held.cas);
  } catch (error) {
    held.verify = true;
    // The write may have landed: read back, so the new holder's entry is never left orphaned.
    if (!isAmbiguous(error)) throw error;
    const entry = await client.get(held.memcacheKey).catch(() => null);
    if (entry === null || !entry.value.equals(value)) throw error;
    return {
      memcacheKey: held.memcacheKey,
      value,
      ttlSeconds,
      cas: entry.cas,
      conn: entry.conn,
      sentAt,
      verify: false,
    };
  }
  if (result.status === 'ok')
    return {
      memcacheKey: held.memcacheKey,
      value,
      ttlSeconds,
      cas: result.cas,
      conn: result.conn,
      sentAt,
      verify: false,
    };
  return result.status === 'not_found' ? 'gone' : 'taken';
}

/** Deletes a held entry with a CAS-checked delete: never removes another holder's entry. */
export async function releaseEntry(client: LockClient, held: Held): Promise<'released' | 'gone' | 'taken'> {
  // The common case checks synchronously: no extra promise per release.
  if (held.verify || !client.isCurrent(held.memcacheKey, held.conn)) {
    const fresh = await freshCas(client, held);
    if (fresh !== 'ok') return fresh;
  }
  let result;
  try {
    result = await client.casDelete(held.memcacheKey, held.cas);
  } catch (error) {
    held.verify = true;
    throw error;
  }
  if (result.status === 'ok') return 'released';
  return result.status === 'not_found' ? 'gone' : 'taken';
}

/**
 * A waiter that gives up deletes a reservation made for it (`token`, its
 * instance's queue token), so the key is not blocked until the reservation
 * expires. CAS-checked: a reservation for someone else, or one already
 * taken over, is left alone. Resolves whether one was deleted.
 */
export async function cancelReservation(client: LockClient, memcacheKey: string, token: string): Promise<boolean> {
  const entry = await client.get(memcacheKey);
  if (entry === null) return false;
  const holder = decodeValue(entry.value);
  if (holder?.state !== 'reserved' || holder.clientId !== token) return false;
  if (!client.isCurrent(memcacheKey, entry.conn)) return false;
  return (await client.casDelete(memcacheKey, entry.cas)).status === 'ok';
}

/** Reads who holds `memcacheKey`; `null` when free (or held by something memlock did not write). */
export async function readHolder(client: LockClient, memcacheKey: string): Promise<Holder | null> {
  const entry = await client.get(memcacheKey);
  return entry === null ? null : decodeValue(entry.value);
}
