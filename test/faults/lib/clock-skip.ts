/**
 * A partitioned holder across a skip of memcached's clock (issue 16, finding
 * 1), as a reusable run. Holder A (through the fault proxy) acquires a key
 * just before memcached's clock is made to skip a second (lib/memcached-clock.ts),
 * then the proxy stalls, so none of A's renewals arrive. B, on a direct
 * connection, polls `add` on the key every few ms. Next to it a plain entry
 * with TTL 2, written at the same moment, shows what the skip does to an
 * entry by itself.
 *
 * Every time here is on monoMs() (CLOCK_MONOTONIC, one process).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { LockLostError, Memlock, type Lock } from '../../../src/index.js';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { testProtocol } from '../../helpers/protocol.js';
import { startProxy, type FaultProxy } from '../../helpers/proxy.js';
import { Miss, TextConnection, monoMs, skipSecond, type SkipOutcome } from './memcached-clock.js';

export interface ClockSkipOptions {
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  /** Attempts whose timing missed are repeated, up to this many attempts in all. */
  readonly attempts: number;
  /** No new attempt starts later than this many ms after the first. */
  readonly budgetMs: number;
  readonly log?: (line: string) => void;
}

export interface ClockSkipFigures {
  /** Attempts made; `misses` says why the ones before the last did not count. */
  readonly attempts: number;
  readonly misses: readonly string[];
  /** The last attempt's pauses; undefined if every attempt missed before pausing. */
  readonly outcome: SkipOutcome | undefined;
  /** The plain TTL-2 entry: ms from its write to the first read that missed it (NaN: never within the watch). */
  readonly plainDiedAfterMs: number;
  /** ms from A's add (sent) to A's signal aborting (NaN: never). */
  readonly aAbortAfterMs: number;
  /** A's LockLostError kind. */
  readonly aKind: string | undefined;
  /** ms from A's add (sent) to the reply that granted B the key (NaN: never). */
  readonly bGrantedAfterMs: number;
  /** B's grant minus A's abort: >= 0 means B never held the key while A's signal was live. */
  readonly gapMs: number;
  /** `add`s B sent. */
  readonly bPolls: number;
  /** How long the whole run took (ms). */
  readonly elapsedMs: number;
}

/** How long B keeps polling after A's signal aborted (the entry is gone by then, whatever the TTL). */
const B_AFTER_ABORT_MS = 4000;

interface Attempt {
  readonly outcome: SkipOutcome;
  readonly plainDiedAfterMs: number;
  readonly aAbortAfterMs: number;
  readonly aKind: string | undefined;
  readonly bGrantedAfterMs: number;
  readonly bPolls: number;
}

async function attempt(
  mc: MemcachedProcess,
  clock: TextConnection,
  n: number,
  options: ClockSkipOptions,
): Promise<Attempt> {
  const key = `job-${n}`;
  const prefix = 'cs:';
  const plainKey = `plain-${n}`;
  let proxy: FaultProxy | undefined;
  const conns: TextConnection[] = [];
  let a: Memlock | undefined;
  let lock: Lock | undefined;
  let stopB = false;
  let bLoop: Promise<void> = Promise.resolve();
  try {
    proxy = await startProxy({ host: mc.host, port: mc.port });
    a = new Memlock({
      servers: proxy.address,
      protocol: testProtocol,
      prefix,
      leaseMs: options.leaseMs,
      heartbeatMs: options.heartbeatMs,
      timeoutMs: options.timeoutMs,
    });
    await a.inspect('warm-up'); // A's connection is open: its add is one round trip
    const plain = await TextConnection.open(mc);
    const b = await TextConnection.open(mc);
    conns.push(plain, b);

    let addSentAt = Number.NaN;
    let abortAt = Number.NaN;
    let plainSetAt = Number.NaN;
    let bGrantedAt = Number.NaN;
    let bPolls = 0;
    const pollB = async (): Promise<void> => {
      while (!stopB) {
        bPolls++;
        // A request sent while memcached is paused is answered after the resume.
        if (await b.add(prefix + key, 'B', 10, 10_000)) {
          bGrantedAt = monoMs();
          return;
        }
        if (!Number.isNaN(abortAt) && monoMs() > abortAt + B_AFTER_ABORT_MS) return;
        await sleep(2);
      }
    };

    const outcome = await skipSecond(mc, clock, {
      beforePause: async () => {
        addSentAt = monoMs();
        lock = await a!.acquire(key, 'A');
        // From now on none of A's renewals arrive.
        proxy!.stall();
        const held = lock;
        const onAbort = (): void => {
          abortAt = monoMs();
        };
        if (held.signal.aborted) onAbort();
        else held.signal.addEventListener('abort', onAbort, { once: true });
        plainSetAt = monoMs();
        await plain.set(plainKey, 'x', 2);
        bLoop = pollB();
      },
    });

    // The plain entry: read until it is gone (it lives at most 2 s).
    let plainGoneAt = Number.NaN;
    while (monoMs() < plainSetAt + 3000) {
      if (!(await plain.has(plainKey))) {
        plainGoneAt = monoMs();
        break;
      }
      await sleep(2);
    }
    // A is told at its deadline at the latest; B polls on until granted.
    while (Number.isNaN(abortAt) && monoMs() < addSentAt + options.leaseMs + 2000) await sleep(5);
    if (Number.isNaN(abortAt)) stopB = true;
    await bLoop;
    const reason: unknown = lock?.signal.reason;
    return {
      outcome,
      plainDiedAfterMs: plainGoneAt - plainSetAt,
      aAbortAfterMs: abortAt - addSentAt,
      aKind: reason instanceof LockLostError ? reason.kind : undefined,
      bGrantedAfterMs: bGrantedAt - addSentAt,
      bPolls,
    };
  } finally {
    stopB = true;
    await bLoop.catch(() => undefined);
    proxy?.heal();
    await lock?.release().catch(() => undefined);
    await a?.close();
    await proxy?.close();
    await Promise.all(conns.map((c) => c.close()));
  }
}

/**
 * Runs the scenario until the skip is provoked (or attempts and budget run
 * out: then `outcome?.skipped` is false and the caller must fail).
 */
export async function runClockSkip(mc: MemcachedProcess, options: ClockSkipOptions): Promise<ClockSkipFigures> {
  const log = options.log ?? (() => undefined);
  const clock = await TextConnection.open(mc);
  const started = monoMs();
  const misses: string[] = [];
  let last: Attempt | undefined;
  let n = 0;
  try {
    while (n < options.attempts && monoMs() - started < options.budgetMs) {
      n++;
      try {
        last = await attempt(mc, clock, n, options);
      } catch (error) {
        if (!(error instanceof Miss)) throw error;
        misses.push(`attempt ${n}: ${error.message}`);
        log(`attempt ${n} missed: ${error.message}`);
        continue;
      }
      if (last.outcome.skipped) break;
      misses.push(`attempt ${n}: no skip (time +${last.outcome.skip.delta})`);
      log(`attempt ${n}: the clock did not skip (time +${last.outcome.skip.delta})`);
    }
  } finally {
    await clock.close();
  }
  return {
    attempts: n,
    misses,
    outcome: last?.outcome,
    plainDiedAfterMs: last?.plainDiedAfterMs ?? Number.NaN,
    aAbortAfterMs: last?.aAbortAfterMs ?? Number.NaN,
    aKind: last?.aKind,
    bGrantedAfterMs: last?.bGrantedAfterMs ?? Number.NaN,
    gapMs: (last?.bGrantedAfterMs ?? Number.NaN) - (last?.aAbortAfterMs ?? Number.NaN),
    bPolls: last?.bPolls ?? 0,
    elapsedMs: monoMs() - started,
  };
}
