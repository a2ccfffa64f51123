/**
 * Scenario 9, many locks held at once, as a reusable run (the ava test holds
 * 10,000 for a few seconds, the soak runner for minutes): per-lock renewal
 * counts and gaps, heap per lock, heap growth while holding, event-loop
 * delay, and whether timers or listeners grow.
 */
import { getEventListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import {
  Memlock,
  MemcacheLockClient,
  type Entry,
  type Lock,
  type LockClient,
  type WriteResult,
} from '../../../src/index.js';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { guaranteedMs, leaseTtlSeconds } from '../../../src/protocol.js';

const DELAY_RESOLUTION_MS = 10;

/**
 * Event-loop delay: how late a 10 ms interval fires. (perf_hooks'
 * monitorEventLoopDelay cannot leave out the forced GCs of the heap samples,
 * so this one skips the interval in which a sample was taken.)
 */
function delayMonitor(): { skipNext: () => void; stop: () => number[] } {
  const lateness: number[] = [];
  let last = performance.now();
  let skip = false;
  const timer = setInterval(() => {
    const now = performance.now();
    if (!skip) lateness.push(Math.max(0, now - last - DELAY_RESOLUTION_MS));
    skip = false;
    last = now;
  }, DELAY_RESOLUTION_MS);
  timer.unref(); // not counted among the ref'd Timeouts below
  return {
    skipNext: () => {
      skip = true;
    },
    stop: () => {
      clearInterval(timer);
      return lateness.sort((a, b) => a - b);
    },
  };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Forwards to a real transport and tracks, per lock index, its confirmed writes. */
class RenewalCounter implements LockClient {
  readonly lastConfirmed: Float64Array;
  readonly maxGap: Float64Array;
  readonly renewals: Uint32Array;
  failures = 0;
  constructor(
    readonly inner: LockClient,
    readonly prefix: string,
    n: number,
  ) {
    this.lastConfirmed = new Float64Array(n);
    this.maxGap = new Float64Array(n);
    this.renewals = new Uint32Array(n);
  }
  #index(key: string): number {
    return Number(key.slice(this.prefix.length));
  }
  #confirmed(key: string, sentAt: number, renewal: boolean): void {
    const i = this.#index(key);
    if (this.lastConfirmed[i]! > 0) this.maxGap[i] = Math.max(this.maxGap[i]!, sentAt - this.lastConfirmed[i]!);
    this.lastConfirmed[i] = sentAt;
    if (renewal) this.renewals[i]!++;
  }
  async add(key: string, value: Buffer, ttl: number): Promise<WriteResult> {
    const sentAt = performance.now();
    const r = await this.inner.add(key, value, ttl);
    if (r.status === 'ok') this.#confirmed(key, sentAt, false);
    return r;
  }
  async addThenGet(key: string, value: Buffer, ttl: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const sentAt = performance.now();
    const r = await this.inner.addThenGet(key, value, ttl);
    if (r.add.status === 'ok') this.#confirmed(key, sentAt, false);
    return r;
  }
  get(key: string): Promise<Entry | null> {
    return this.inner.get(key);
  }
  async casSet(key: string, value: Buffer, ttl: number, cas: bigint): Promise<WriteResult> {
    const sentAt = performance.now();
    try {
      const r = await this.inner.casSet(key, value, ttl, cas);
      if (r.status === 'ok') this.#confirmed(key, sentAt, true);
      return r;
    } catch (error) {
      this.failures++;
      throw error;
    }
  }
  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    return this.inner.casDelete(key, cas);
  }
  isCurrent(key: string, conn: number): boolean {
    return this.inner.isCurrent(key, conn);
  }
  serverOf(key: string): string {
    return this.inner.serverOf(key);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Counts timers made through the global setTimeout/setInterval while installed, and how many are still pending. */
function timerCensus(): { created: () => number; live: () => number; uninstall: () => void } {
  const original = {
    setTimeout: globalThis.setTimeout,
    clearTimeout: globalThis.clearTimeout,
    setInterval: globalThis.setInterval,
    clearInterval: globalThis.clearInterval,
  };
  const live = new Set<unknown>();
  let created = 0;
  const patched = {
    setTimeout: ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      created++;
      const timer = original.setTimeout(
        (...a: unknown[]) => {
          live.delete(timer);
          fn(...a);
        },
        ms,
        ...args,
      );
      live.add(timer);
      return timer;
    }) as typeof setTimeout,
    clearTimeout: ((timer: NodeJS.Timeout | string | number | undefined) => {
      live.delete(timer);
      original.clearTimeout(timer);
    }) as typeof clearTimeout,
    setInterval: ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      created++;
      const timer = original.setInterval(fn, ms, ...args);
      live.add(timer);
      return timer;
    }) as typeof setInterval,
    clearInterval: ((timer: NodeJS.Timeout | string | number | undefined) => {
      live.delete(timer);
      original.clearInterval(timer);
    }) as typeof clearInterval,
  };
  Object.assign(globalThis, patched);
  return {
    created: () => created,
    live: () => live.size,
    uninstall: () => {
      Object.assign(globalThis, original);
    },
  };
}

/** Listeners on every socket the process holds (memcache connections included). */
function socketListeners(): number {
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  let n = 0;
  for (const h of handles) {
    const s = h as { listenerCount?: (event: string) => number; remoteAddress?: string };
    if (typeof s.listenerCount !== 'function' || s.remoteAddress === undefined) continue;
    for (const event of ['data', 'close', 'error', 'end', 'timeout', 'drain', 'connect']) n += s.listenerCount(event);
  }
  return n;
}

function heap(): { used: number; external: number } {
  gc();
  gc();
  const m = process.memoryUsage();
  return { used: m.heapUsed, external: m.external + m.arrayBuffers };
}

export interface LoadOptions {
  readonly locks: number;
  readonly holdMs: number;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  /** Heap sample interval while holding. @default 1000 */
  readonly sampleEveryMs?: number;
}

export interface LoadFigures {
  readonly locks: number;
  readonly holdMs: number;
  readonly acquireMs: number;
  readonly heapPerLockBytes: number;
  readonly externalPerLockBytes: number;
  /**
   * Heap growth while holding, per lock: the lowest heap (after GC) of the
   * second half of the samples minus the lowest of the first half, skipping
   * the first renewal round (JIT and first-use allocations). A sample taken
   * while a renewal batch is in flight holds its promises, hence the minimum.
   */
  readonly heapGrowthPerLockBytes: number;
  readonly renewals: number;
  readonly renewalsPerSecond: number;
  /** Renewals every lock should have had at least (hold / renewal interval, minus one for phase). */
  readonly expectedMinPerLock: number;
  readonly minRenewalsPerLock: number;
  /** Longest time between two confirmed writes of one lock (ms), and the guaranteed lease it must stay under. */
  readonly maxGapMs: number;
  readonly guaranteedLeaseMs: number;
  readonly renewalFailures: number;
  readonly lost: number;
  /** Event-loop delay while holding, beyond the 10 ms sampling interval (forced GCs excluded). */
  readonly eventLoopDelayP50Ms: number;
  readonly eventLoopDelayP99Ms: number;
  readonly eventLoopDelayMaxMs: number;
  /** Timers created through setTimeout while holding, and pending timers at the start and the end of the hold. */
  readonly timersCreated: number;
  readonly timersLiveStart: number;
  readonly timersLiveEnd: number;
  /** Ref'd `Timeout` resources (process.getActiveResourcesInfo) at the start and the end of the hold. */
  readonly activeTimeoutsStart: number;
  readonly activeTimeoutsEnd: number;
  readonly signalListenersStart: number;
  readonly signalListenersEnd: number;
  readonly signalListenersAfterRelease: number;
  readonly socketListenersStart: number;
  readonly socketListenersEnd: number;
  readonly released: number;
  readonly releaseMs: number;
  readonly heldAfterRelease: number;
  /** Heap samples (MB, after GC) taken while holding. */
  readonly heapSamplesMb: number[];
}

export async function holdMany(mc: MemcachedProcess, options: LoadOptions): Promise<LoadFigures> {
  const { locks: n, holdMs, leaseMs, heartbeatMs, timeoutMs } = options;
  const prefix = 'load:';
  const counter = new RenewalCounter(new MemcacheLockClient({ servers: [mc.address], timeoutMs }), prefix, n);
  const memlock = new Memlock({ lockClient: counter, prefix, leaseMs, heartbeatMs, timeoutMs });
  const caller = new AbortController(); // one caller signal shared by every lock (they share one listener on it)
  const countActiveTimeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  try {
    await memlock.tryWithLock('warm', 'W', () => undefined); // open the connection before measuring
    const before = heap();
    const acquireStart = performance.now();
    const held: Lock[] = new Array<Lock>(n);
    for (let from = 0; from < n; from += 1000) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(1000, n - from) }, (_, j) =>
          memlock.acquire(String(from + j), `c${from + j}`, { signal: caller.signal }),
        ),
      );
      for (const [j, lock] of batch.entries()) held[from + j] = lock;
    }
    const acquireMs = performance.now() - acquireStart;
    const withLocks = heap();
    counter.renewals.fill(0);
    counter.maxGap.fill(0);
    const delay = delayMonitor(); // before the census: its own timer is not counted
    const census = timerCensus();
    const timersLiveStart = census.live();
    const activeTimeoutsStart = countActiveTimeouts();
    const signalListenersStart = getEventListeners(caller.signal, 'abort').length;
    const socketListenersStart = socketListeners();
    const holdStart = performance.now();
    const heapSamples: number[] = [];
    const sampleEvery = options.sampleEveryMs ?? 1000;
    while (performance.now() - holdStart < holdMs) {
      await sleep(Math.min(sampleEvery, holdMs - (performance.now() - holdStart)));
      heapSamples.push(heap().used);
      // The forced full GC blocked the loop: keep it out of the event-loop delay figures.
      delay.skipNext();
    }
    const steady = heapSamples.slice(1);
    const half = Math.max(1, Math.floor(steady.length / 2));
    const growth =
      steady.length >= 2 ? Math.min(...steady.slice(half)) - Math.min(...steady.slice(0, half)) : Number.NaN;
    const heldFor = performance.now() - holdStart;
    const timersCreated = census.created();
    const timersLiveEnd = census.live();
    census.uninstall();
    const lateness = delay.stop();
    const activeTimeoutsEnd = countActiveTimeouts();
    const signalListenersEnd = getEventListeners(caller.signal, 'abort').length;
    const socketListenersEnd = socketListeners();
    const lost = held.filter((l) => l.signal.aborted).length;
    const releaseStart = performance.now();
    const results = await Promise.all(held.map((l) => l.release()));
    const releaseMs = performance.now() - releaseStart;

    const guaranteedLeaseMs = guaranteedMs(leaseTtlSeconds(leaseMs));
    const interval = Math.min(heartbeatMs, guaranteedLeaseMs / 2);
    let renewals = 0;
    let minRenewals = Infinity;
    let maxGap = 0;
    for (let i = 0; i < n; i++) {
      renewals += counter.renewals[i]!;
      minRenewals = Math.min(minRenewals, counter.renewals[i]!);
      maxGap = Math.max(maxGap, counter.maxGap[i]!);
    }
    return {
      locks: n,
      holdMs: heldFor,
      acquireMs,
      heapPerLockBytes: (withLocks.used - before.used) / n,
      externalPerLockBytes: (withLocks.external - before.external) / n,
      heapGrowthPerLockBytes: growth / n,
      renewals,
      renewalsPerSecond: renewals / (heldFor / 1000),
      expectedMinPerLock: Math.floor(heldFor / interval) - 1,
      minRenewalsPerLock: minRenewals,
      maxGapMs: maxGap,
      guaranteedLeaseMs,
      renewalFailures: counter.failures,
      lost,
      eventLoopDelayP50Ms: percentile(lateness, 50),
      eventLoopDelayP99Ms: percentile(lateness, 99),
      eventLoopDelayMaxMs: lateness.at(-1) ?? Number.NaN,
      timersCreated,
      timersLiveStart,
      timersLiveEnd,
      activeTimeoutsStart,
      activeTimeoutsEnd,
      signalListenersStart,
      signalListenersEnd,
      signalListenersAfterRelease: getEventListeners(caller.signal, 'abort').length,
      socketListenersStart,
      socketListenersEnd,
      released: results.filter(Boolean).length,
      releaseMs,
      heldAfterRelease: memlock.heldCount,
      heapSamplesMb: heapSamples.map((b) => b / 2 ** 20),
    };
  } finally {
    await memlock.close();
    await counter.close();
  }
}
