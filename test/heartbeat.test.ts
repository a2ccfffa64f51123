/**
 * Unit tests of the heartbeat scheduler and the renewal schedule, with an
 * in-memory LockClient (extra to, not instead of, the real-server tests).
 */
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { Scheduler, type Scheduled } from '../src/heartbeat.js';
import { waitFor } from './helpers/resources.js';
import { Memlock, type LockClient, type Entry, type WriteResult } from '../src/index.js';

function node(onFire: (now: number) => void): Scheduled {
  return { due: 0, heapIndex: -1, fire: onFire };
}

test('fires every node once, with one timer for all of them', async (t) => {
  const scheduler = new Scheduler();
  const fired: number[] = [];
  const base = performance.now();
  const nodes = Array.from({ length: 10_000 }, (_, i) => node(() => fired.push(i)));
  // Schedule in reverse so the heap has work to do.
  for (let i = nodes.length - 1; i >= 0; i--) scheduler.schedule(nodes[i]!, base + 20 + (i % 50));
  t.is(scheduler.size, 10_000);
  t.true(scheduler.armed);
  await waitFor(() => fired.length >= 10_000, 5000);
  t.is(fired.length, 10_000);
  t.is(new Set(fired).size, 10_000);
  t.is(scheduler.size, 0);
  scheduler.stop();
  t.false(scheduler.armed);
});

test('cancel and reschedule', async (t) => {
  const scheduler = new Scheduler();
  const fired: string[] = [];
  const a = node(() => fired.push('a'));
  const b = node(() => fired.push('b'));
  const c = node(() => fired.push('c'));
  const now = performance.now();
  scheduler.schedule(a, now + 30);
  scheduler.schedule(b, now + 10);
  scheduler.schedule(c, now + 20);
  scheduler.cancel(c);
  scheduler.schedule(a, now + 5); // earlier
  await waitFor(() => fired.length >= 2, 2000);
  await sleep(30);
  t.deepEqual(fired, ['a', 'b']);
  scheduler.stop();
});

test('a node throwing does not stop the others', async (t) => {
  const errors: unknown[] = [];
  const scheduler = new Scheduler((error) => errors.push(error));
  let ran = false;
  scheduler.schedule(node(() => { throw new Error('x'); }), performance.now());
  scheduler.schedule(node(() => { ran = true; }), performance.now());
  await waitFor(() => ran, 2000);
  t.true(ran);
  t.is(errors.length, 1);
  scheduler.stop();
});

/** In-memory LockClient that counts operations; one generation forever. */
class FakeClient implements LockClient {
  readonly store = new Map<string, { value: Buffer; cas: bigint }>();
  cas = 0n;
  readonly ops: string[] = [];
  async add(key: string, value: Buffer): Promise<WriteResult> {
    this.ops.push('add');
    if (this.store.has(key)) return { status: 'exists' };
    this.store.set(key, { value, cas: ++this.cas });
    return { status: 'ok', cas: this.cas, conn: 1 };
  }
  async addThenGet(key: string, value: Buffer, _ttl: number): Promise<{ add: WriteResult; entry: Entry | null }> {
    const add = await this.add(key, value);
    return { add, entry: await this.get(key) };
  }
  async get(key: string): Promise<Entry | null> {
    this.ops.push('get');
    const e = this.store.get(key);
    return e === undefined ? null : { ...e, conn: 1 };
  }
  async casSet(key: string, value: Buffer, _ttl: number, cas: bigint): Promise<WriteResult> {
    this.ops.push('set');
    const e = this.store.get(key);
    if (e === undefined) return { status: 'not_found' };
    if (e.cas !== cas) return { status: 'exists' };
    this.store.set(key, { value, cas: ++this.cas });
    return { status: 'ok', cas: this.cas, conn: 1 };
  }
  async casDelete(key: string, cas: bigint): Promise<WriteResult> {
    this.ops.push('delete');
    const e = this.store.get(key);
    if (e === undefined) return { status: 'not_found' };
    if (e.cas !== cas) return { status: 'exists' };
    this.store.delete(key);
    return { status: 'ok', cas: 0n, conn: 1 };
  }
  isCurrent(): boolean { return true; }
  serverOf(): string { return 'fake:0'; }
  async close(): Promise<void> {}
}

test('renews once per heartbeat: 1 add + ~N sets + 1 delete, no reads on the common path', async (t) => {
  const client = new FakeClient();
  const m = new Memlock({ lockClient: client, leaseMs: 10_000, heartbeatMs: 100 });
  await m.tryWithLock('k', 'A', () => sleep(1050));
  await m.close();
  const sets = client.ops.filter((op) => op === 'set').length;
  t.is(client.ops[0], 'add');
  t.is(client.ops.at(-1), 'delete');
  t.false(client.ops.includes('get'));
  // ~10 expected; generous bounds because CI shares two cores with other test files.
  t.true(sets >= 5 && sets <= 11, `${sets} renewals in ~1 s at 100 ms`);
});

test('a 2 s lease (1 s guaranteed) renews at least every 500 ms, whatever heartbeatMs says', async (t) => {
  const client = new FakeClient();
  const m = new Memlock({ lockClient: client, leaseMs: 2000, heartbeatMs: 1000 });
  await m.tryWithLock('k', 'A', () => sleep(1600));
  await m.close();
  const sets = client.ops.filter((op) => op === 'set').length;
  t.true(sets >= 2 && sets <= 4, `${sets} renewals in 1.6 s`);
});

test('10,000 held locks: one renewal each per interval, one heap entry each', async (t) => {
  const client = new FakeClient();
  const m = new Memlock({ lockClient: client, leaseMs: 10_000, heartbeatMs: 200 });
  const locks = await Promise.all(Array.from({ length: 10_000 }, (_, i) => m.acquire(`k${i}`, 'A')));
  client.ops.length = 0;
  await sleep(1000);
  const sets = client.ops.filter((op) => op === 'set').length;
  // ~5 intervals of 200 ms in 1 s; never more than one renewal per lock per
  // interval, and (generously, on a loaded machine) at least 2.
  t.true(sets >= 10_000 * 2 && sets <= 10_000 * 5 + 100, `${sets} renewals`);
  t.true(locks.every((lock) => !lock.signal.aborted));
  await Promise.all(locks.map((lock) => lock.release()));
  t.is(m.heldCount, 0);
  await m.close();
});
