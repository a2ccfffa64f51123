/**
 * A `LockClient` wrapper that records every operation the lock protocol sends
 * (what, on which key, when it was sent, how it ended), so a test can check
 * from the outside what the library did: the send time of the last confirmed
 * renewal (the lease deadline the signal must beat), whether an old holder
 * wrote anything after it lost the lock, and how many operations reached the
 * wire (to compare with the server's own counters).
 *
 * It forwards to a real transport (`MemjsLockClient`) and changes nothing.
 */
import { MemcacheLockClient, type Entry, type LockClient, type WriteResult } from '../../../src/index.js';

export type OpName = 'add' | 'addThenGet' | 'get' | 'casSet' | 'casDelete';

/** One operation as the protocol sent it. */
export interface OpRecord {
  readonly op: OpName;
  readonly key: string;
  /** `performance.now()` when the call was made (the request left right after). */
  readonly sentAt: number;
  /** `performance.now()` when it settled. */
  doneAt: number;
  /** 'ok' | 'exists' | 'not_found' for writes; 'hit' | 'miss' for reads; 'error' when it threw. */
  outcome: 'pending' | 'ok' | 'exists' | 'not_found' | 'hit' | 'miss' | 'error';
}

/** Records operations; `keep` decides which ones are stored (all by default). */
export class RecordingClient implements LockClient {
  readonly ops: OpRecord[] = [];
  /** Count of requests written per operation (addThenGet counts as one add and one get). */
  readonly sent = { add: 0, get: 0, casSet: 0, casDelete: 0 };
  /**
   * Requests written as memcached counts them (`cmd_set`, `cmd_get`,
   * `delete_hits + delete_misses`): over the text protocol an add and a CAS
   * write go out with a read of their key (for the new CAS), and a delete is
   * a CAS write.
   */
  readonly wire = { set: 0, get: 0, del: 0 };
  readonly #text: boolean;

  constructor(
    readonly inner: LockClient,
    private readonly keep: (op: OpName, key: string) => boolean = () => true,
  ) {
    this.#text = inner instanceof MemcacheLockClient && inner.label.startsWith('text');
  }

  async #track<T>(
    op: OpName,
    key: string,
    call: () => Promise<T>,
    outcome: (value: T) => OpRecord['outcome'],
  ): Promise<T> {
    const record: OpRecord = { op, key, sentAt: performance.now(), doneAt: Number.NaN, outcome: 'pending' };
    if (this.keep(op, key)) this.ops.push(record);
    try {
      const value = await call();
      record.outcome = outcome(value);
      return value;
    } catch (error) {
      record.outcome = 'error';
      throw error;
    } finally {
      record.doneAt = performance.now();
    }
  }

  add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    this.sent.add++;
    this.wire.set++;
    if (this.#text) this.wire.get++;
    return this.#track(
      'add',
      key,
      () => this.inner.add(key, value, ttlSeconds),
      (r) => r.status,
    );
  }

  addThenGet(key: string, value: Buffer, ttlSeconds: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    this.sent.add++;
    this.sent.get++;
    this.wire.set++;
    this.wire.get++;
    return this.#track(
      'addThenGet',
      key,
      () => this.inner.addThenGet(key, value, ttlSeconds),
      (r) => r.add.status,
    );
  }

  get(key: string): Promise<Entry | null> {
    this.sent.get++;
    this.wire.get++;
    return this.#track(
      'get',
      key,
      () => this.inner.get(key),
      (r) => (r === null ? 'miss' : 'hit'),
    );
  }

  casSet(key: string, value: Buffer, ttlSeconds: number, cas: bigint): Promise<WriteResult> {
    this.sent.casSet++;
    this.wire.set++;
    if (this.#text) this.wire.get++;
    return this.#track(
      'casSet',
      key,
      () => this.inner.casSet(key, value, ttlSeconds, cas),
      (r) => r.status,
    );
  }

  casDelete(key: string, cas: bigint): Promise<WriteResult> {
    this.sent.casDelete++;
    if (this.#text) this.wire.set++;
    else this.wire.del++;
    return this.#track(
      'casDelete',
      key,
      () => this.inner.casDelete(key, cas),
      (r) => r.status,
    );
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

  /** Operations on `key` that were sent at or after `since`. */
  opsOn(key: string, since = -Infinity): OpRecord[] {
    return this.ops.filter((r) => r.key === key && r.sentAt >= since);
  }

  /**
   * Send time of the last write on `key` that the server confirmed as ours
   * (an add or a CAS-checked set answered 'ok'), settled before `before`.
   * This is what the lease deadline counts from.
   */
  lastConfirmedWrite(key: string, before = Infinity): number {
    let last = -Infinity;
    for (const r of this.ops) {
      if (r.key !== key || r.outcome !== 'ok' || r.doneAt > before) continue;
      if (r.op === 'add' || r.op === 'addThenGet' || r.op === 'casSet') last = Math.max(last, r.sentAt);
    }
    return last;
  }
}
