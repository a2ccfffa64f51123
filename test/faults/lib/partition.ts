/**
 * Scenario 1, partition while held, as a reusable run (the ava test asserts
 * on one run, the soak runner loops it): holder A talks to memcached through
 * the fault proxy, B talks to it directly. A holds a key, the proxy
 * partitions A (stall, or refuse + drop), B waits for the entry to expire and
 * takes the key, the partition heals, A releases.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock, MemcacheLockClient, LockLostError, MemcacheUnavailableError } from '../../../src/index.js';
import { testProtocol } from '../../helpers/protocol.js';
import type { MemcachedProcess } from '../../helpers/memcached.js';
import { startProxy } from '../../helpers/proxy.js';
import { guaranteedMs, leaseMargin, leaseTtlSeconds } from '../../../src/protocol.js';
import { RecordingClient } from './recording.js';

export type PartitionMode = 'stall' | 'refuse-drop';

export interface PartitionOptions {
  readonly mode: PartitionMode;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  readonly key?: string;
}

export interface PartitionFigures {
  readonly mode: PartitionMode;
  /** A's LockLostError kind, or undefined if its signal never aborted. */
  readonly kind: string | undefined;
  readonly causeIsUnavailable: boolean;
  /** ms from the partition to A's abort. */
  readonly abortAfterMs: number;
  /**
   * Lease deadline (last confirmed write's send time + (ceil(lease/1000) - 1) s,
   * send time as recorded at the transport) minus A's abort time: >= 0 means in time.
   */
  readonly marginMs: number;
  /**
   * The same, with the earlier of that deadline and the one the library computed
   * itself (HeldLock#deadline plus its safety margin, from its own send
   * timestamp): the strict figure.
   */
  readonly strictMarginMs: number;
  /** ms from the partition to B's acquisition (NaN if B never got it). */
  readonly takeoverAfterMs: number;
  /** B's acquisition minus A's abort: >= 0 means no overlap. */
  readonly gapMs: number;
  /** Renewals (CAS writes) A sent after its signal aborted. */
  readonly renewalsAfterLoss: number;
  /** Deletes A sent after its signal aborted. */
  readonly deletesAfterLoss: number;
  /** Writes or deletes of A after the loss that the server applied. */
  readonly appliedAfterLoss: number;
  readonly released: boolean;
  /** B's entry (value and CAS) is exactly what B wrote, after A released. */
  readonly newHolderIntact: boolean;
}

export async function runPartition(mc: MemcachedProcess, options: PartitionOptions): Promise<PartitionFigures> {
  const { mode, leaseMs, heartbeatMs, timeoutMs } = options;
  const key = options.key ?? `partition-${mode}`;
  const prefix = 'p:';
  const memcacheKey = prefix + key;
  const proxy = await startProxy(mc.endpoint);
  const recorder = new RecordingClient(
    new MemcacheLockClient({ servers: [proxy.address], timeoutMs, protocol: testProtocol }),
    (_op, k) => k === memcacheKey,
  );
  const a = new Memlock({ lockClient: recorder, prefix, leaseMs, heartbeatMs, timeoutMs });
  // B renews rarely, so its CAS stays put while we check that A leaves it alone.
  const b = new Memlock({
    servers: mc.address,
    protocol: testProtocol,
    prefix,
    leaseMs: 30_000,
    heartbeatMs: 12_000,
    timeoutMs,
  });
  try {
    const lock = await a.acquire(key, 'A');
    let abortAt = Number.NaN;
    let libraryDeadline = Number.NaN;
    lock.signal.addEventListener(
      'abort',
      () => {
        abortAt = performance.now();
        // Not part of the Lock interface: the implementation's own deadline, for the strict figure.
        libraryDeadline = (lock as unknown as { deadline?: number }).deadline ?? Number.NaN;
      },
      { once: true },
    );
    await sleep(heartbeatMs * 2 + 50); // a few confirmed renewals first

    const partitionAt = performance.now();
    if (mode === 'stall') {
      proxy.stall();
    } else {
      proxy.refuse();
      proxy.drop();
    }
    const ttlSeconds = leaseTtlSeconds(leaseMs);
    const bLock = await b.acquire(key, 'B', { wait: { timeoutMs: leaseMs + 5000, minDelayMs: 5, maxDelayMs: 50 } });
    const bAt = performance.now();
    const bEntry = await mc.rawGet(memcacheKey);
    // The loss must already be known; allow the deadline to pass in case it has not (the figures tell).
    const waitUntil = performance.now() + leaseMs;
    while (Number.isNaN(abortAt) && performance.now() < waitUntil) await sleep(5);

    proxy.heal();
    await sleep(heartbeatMs * 3); // A's heartbeat, if it were still running, would renew now
    const released = await lock.release();
    await sleep(heartbeatMs);
    const after = await mc.rawGet(memcacheKey);
    const newHolderIntact =
      bEntry !== null &&
      after !== null &&
      after.cas === bEntry.cas &&
      after.value.equals(bEntry.value) &&
      bEntry.value.toString().endsWith(':B');

    const reason: unknown = lock.signal.reason;
    const lastConfirmed = recorder.lastConfirmedWrite(memcacheKey, abortAt);
    // The last moment the server surely kept the entry (TTL n + 1, clock jumps of 2 s).
    const deadline = lastConfirmed + guaranteedMs(ttlSeconds);
    const afterLoss = Number.isNaN(abortAt) ? recorder.ops : recorder.opsOn(memcacheKey, abortAt);
    const figures: PartitionFigures = {
      mode,
      kind: reason instanceof LockLostError ? reason.kind : undefined,
      causeIsUnavailable: reason instanceof LockLostError && reason.cause instanceof MemcacheUnavailableError,
      abortAfterMs: abortAt - partitionAt,
      marginMs: deadline - abortAt,
      // HeldLock#deadline sits a safety margin before the last safe moment: add it back.
      strictMarginMs:
        (Number.isNaN(libraryDeadline) ? deadline : Math.min(deadline, libraryDeadline + leaseMargin(ttlSeconds))) -
        abortAt,
      takeoverAfterMs: bAt - partitionAt,
      gapMs: bAt - abortAt,
      renewalsAfterLoss: afterLoss.filter((r) => r.op === 'casSet').length,
      deletesAfterLoss: afterLoss.filter((r) => r.op === 'casDelete').length,
      appliedAfterLoss: afterLoss.filter((r) => (r.op === 'casSet' || r.op === 'casDelete') && r.outcome === 'ok')
        .length,
      released,
      newHolderIntact,
    };
    await bLock.release();
    return figures;
  } finally {
    await Promise.all([a.close(), b.close()]);
    await recorder.close();
    await proxy.close();
  }
}
