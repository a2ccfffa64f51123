/**
 * Scenario 4, one round of eviction under memory pressure, reusable by the
 * test and the soak runner: hold `locks` locks (acquired over one heartbeat,
 * so their renewals are spread), churn same-size entries through a small
 * memcached until about `churnEntries` were written, give every holder one
 * more renewal, then classify every lock.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock, LockLostError, type Lock } from '../../../src/index.js';
import { testProtocol } from '../../helpers/protocol.js';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { waitFor } from '../../helpers/resources.js';
import { startChurn } from './churn.js';

export interface EvictionOptions {
  readonly locks: number;
  readonly heartbeatMs: number;
  readonly leaseMs: number;
  readonly timeoutMs: number;
  /** Entries to write (a 2 MB server holds about 13,800 lock-sized entries). */
  readonly churnEntries: number;
  readonly churnPerSecond: number;
  readonly prefix?: string;
}

export interface EvictionFigures {
  readonly locks: number;
  readonly churned: number;
  readonly churnMs: number;
  readonly evictions: number;
  /** Signalled, by LockLostError kind. */
  readonly lost: Record<string, number>;
  /** Unsignalled locks whose entry is missing or not theirs: silent losses (must be 0). */
  readonly silent: number;
  /** Signalled locks whose release still reported success (must be 0). */
  readonly releasedAfterLoss: number;
  /** Unsignalled locks whose release failed (must be 0). */
  readonly survivorsNotReleased: number;
}

const keyOf = (i: number): string => `lock-${String(i).padStart(4, '0')}`;

export async function runEvictionRound(mc: MemcachedProcess, options: EvictionOptions): Promise<EvictionFigures> {
  const { locks: n, heartbeatMs, leaseMs, timeoutMs } = options;
  const prefix = options.prefix ?? 'ev:';
  const m = new Memlock({ servers: mc.address, protocol: testProtocol, prefix, leaseMs, heartbeatMs, timeoutMs });
  try {
    const evictionsBefore = Number((await mc.stats()).evictions);
    const held: Lock[] = [];
    const batches = 20;
    for (let b = 0; b < batches; b++) {
      const from = Math.floor((b * n) / batches);
      const to = Math.floor(((b + 1) * n) / batches);
      held.push(
        ...(await Promise.all(
          Array.from({ length: to - from }, (_, j) => m.acquire(keyOf(from + j), `client-${from + j}`)),
        )),
      );
      await sleep(heartbeatMs / batches);
    }
    const sample = (await mc.rawGet(prefix + keyOf(0)))!;
    const churn = await startChurn(mc, (prefix + keyOf(0)).length, sample.value.length, options.churnPerSecond);
    const start = performance.now();
    await waitFor(() => churn.written >= options.churnEntries, 60_000, 5);
    await churn.stop();
    const churnMs = performance.now() - start;
    // Every holder renews at least once more: a missing entry must be noticed by now.
    await sleep(heartbeatMs * 2 + timeoutMs);
    const lost: Record<string, number> = {};
    let silent = 0;
    for (const [i, lock] of held.entries()) {
      if (lock.signal.aborted) {
        const kind = lock.signal.reason instanceof LockLostError ? lock.signal.reason.kind : 'other';
        lost[kind] = (lost[kind] ?? 0) + 1;
        continue;
      }
      const entry = await mc.rawGet(prefix + keyOf(i));
      if (entry === null || !entry.value.toString().endsWith(`:client-${i}`)) silent++;
    }
    const aborted = held.map((l) => l.signal.aborted);
    const released = await Promise.all(held.map((l) => l.release()));
    return {
      locks: n,
      churned: churn.written,
      churnMs,
      evictions: Number((await mc.stats()).evictions) - evictionsBefore,
      lost,
      silent,
      releasedAfterLoss: released.filter((r, i) => r && aborted[i]).length,
      survivorsNotReleased: released.filter((r, i) => !r && !aborted[i]).length,
    };
  } finally {
    await m.close();
  }
}
