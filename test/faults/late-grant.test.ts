/**
 * A grant confirmed after its lease deadline (issue 16, finding 2; API.md
 * semantics 14): the add reached memcached, but by the time its reply is
 * handled the lease counted from the add's send time could have run out.
 * Such a lock must never be handed to `fn` or returned from `acquire()`:
 * the call fails as a loss (LockLostError, kind 'deadline') and the entry
 * is released by CAS.
 *
 * Two ways to get there: the event loop stalls right after the add is sent
 * (the reply waits in the socket buffer), and the reply itself is slower
 * than the lease (fault proxy, replies delayed, with a large timeoutMs).
 * Each test owns its memcached.
 */
import test, { type ExecutionContext } from 'ava';
import {
  LockLostError,
  MemcacheLockClient,
  Memlock,
  type Entry,
  type Lock,
  type WriteResult,
} from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { testProtocol } from '../helpers/protocol.js';
import { startProxy, type FaultProxy } from '../helpers/proxy.js';
import { waitFor } from '../helpers/resources.js';
import { failOnUnhandled } from '../helpers/unhandled.js';
import { RecordingClient } from './lib/recording.js';

failOnUnhandled(test);

const leaseMs = 2000;
const heartbeatMs = 500;
/**
 * How long an entry written with TTL ceil(lease / 1000) surely lives, were
 * memcached's clock regular: the lease deadline is at most this long after
 * the add was sent. The stall and the slow reply go 300 ms past it.
 */
const GUARANTEED_MS = (Math.ceil(leaseMs / 1000) - 1) * 1000;
const LATE_MS = GUARANTEED_MS + 300;
const prefix = 'lg:';

/** Blocks this thread (the event loop with it) for `ms`, without spinning. */
function blockEventLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Records like RecordingClient; when armed, stalls the event loop right
 * after the next add has been written. The stall runs on the next tick: the
 * transport may cork a write until the end of the current tick, and a tick
 * queued after the add's runs after that uncork.
 */
class StallAfterAdd extends RecordingClient {
  stallMs = 0;

  override add(key: string, value: Buffer, ttlSeconds: number): Promise<WriteResult> {
    const result = super.add(key, value, ttlSeconds);
    this.#stallOnce();
    return result;
  }

  override addThenGet(
    key: string,
    value: Buffer,
    ttlSeconds: number,
  ): Promise<{ add: WriteResult; entry: Entry | null }> {
    const result = super.addThenGet(key, value, ttlSeconds);
    this.#stallOnce();
    return result;
  }

  #stallOnce(): void {
    const ms = this.stallMs;
    if (ms <= 0) return;
    this.stallMs = 0;
    process.nextTick(blockEventLoop, ms);
  }
}

interface Setup {
  readonly mc: MemcachedProcess;
  readonly proxy: FaultProxy | undefined;
  readonly recorder: StallAfterAdd;
  readonly memlock: Memlock;
}

/** A memcached, and a Memlock talking to it directly or through a fault proxy, with per-operation `timeoutMs`. */
async function setup(t: ExecutionContext, options: { via: 'direct' | 'proxy'; timeoutMs: number }): Promise<Setup> {
  const { timeoutMs } = options;
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const proxy = options.via === 'proxy' ? await startProxy(mc) : undefined;
  if (proxy) t.teardown(() => proxy.close());
  const recorder = new StallAfterAdd(
    new MemcacheLockClient({ servers: [proxy?.address ?? mc.address], timeoutMs, protocol: testProtocol }),
  );
  const memlock = new Memlock({ lockClient: recorder, prefix, leaseMs, heartbeatMs, timeoutMs });
  t.teardown(async () => {
    await memlock.close();
    await recorder.close();
  });
  await memlock.inspect('warm-up'); // the connection is open: the add is written at once
  return { mc, proxy, recorder, memlock };
}

/** Settles `call`: its rejection, or undefined when it resolved. */
function failure(call: Promise<unknown>): Promise<unknown> {
  return call.then(
    () => undefined,
    (error: unknown) => error,
  );
}

/** The premise (the add settled after the lease could have run out), then what the call did about it. */
async function checkLateGrant(
  t: ExecutionContext,
  s: Setup,
  key: string,
  outcome: { readonly error: unknown; readonly ran: boolean },
): Promise<void> {
  const add = s.recorder.opsOn(prefix + key).find((r) => r.op === 'add' || r.op === 'addThenGet');
  t.truthy(add, 'an add was sent');
  if (add === undefined) return;
  const lateBy = add.doneAt - add.sentAt;
  // 'error' when the transport's timeout fired first (the stall held the reply past it): the
  // library then reads the entry back and finds its own, which confirms the grant just as late.
  t.log(`add settled ${lateBy.toFixed(0)} ms after it was sent (${add.outcome}); guaranteed lease ${GUARANTEED_MS} ms`);
  t.true(lateBy >= GUARANTEED_MS, `premise: the add settled ${lateBy.toFixed(0)} ms after it was sent`);

  t.false(outcome.ran, 'fn never ran / no Lock was handed out');
  t.true(outcome.error instanceof LockLostError, `rejected with ${String(outcome.error)}`);
  if (outcome.error instanceof LockLostError) {
    t.is(outcome.error.code, 'ERR_MEMLOCK_LOST');
    t.is(outcome.error.kind, 'deadline');
  }
  // Released by the call (a CAS-checked delete that found our entry), not expired.
  const deletes = s.recorder.opsOn(prefix + key).filter((r) => r.op === 'casDelete');
  t.deepEqual(
    deletes.map((r) => r.outcome),
    ['ok'],
    'the entry was released by CAS',
  );
  t.is(await s.mc.rawGet(prefix + key), null, 'the entry is gone after the call');
}

test.serial(
  'event loop stalled right after the add past the lease deadline (the add times out, the read-back finds it): fn never runs, the call fails as a loss (deadline), the entry is released',
  async (t) => {
    // timeoutMs below the stall: the add's timeout fires before its reply is read.
    const s = await setup(t, { via: 'direct', timeoutMs: 500 });
    s.recorder.stallMs = LATE_MS;
    let ran = false;
    const error = await failure(
      s.memlock.tryWithLock('job', 'A', () => {
        ran = true;
        return 'ran';
      }),
    );
    await checkLateGrant(t, s, 'job', { error, ran });
  },
);

test.serial(
  'event loop stalled right after the add past the lease deadline (its reply is read): acquire() rejects as a loss (deadline) and returns no lock; the entry is released',
  async (t) => {
    // timeoutMs above the stall: the add's own reply confirms the grant.
    const s = await setup(t, { via: 'direct', timeoutMs: LATE_MS + 500 });
    s.recorder.stallMs = LATE_MS;
    let lock: Lock | undefined;
    const error = await failure(
      s.memlock.acquire('job', 'A').then((l) => {
        lock = l;
      }),
    );
    const handedOut = lock as Lock | undefined;
    const signalLive = handedOut !== undefined && !handedOut.signal.aborted;
    await handedOut?.release();
    t.false(signalLive, 'no lock with a live signal was handed out');
    await checkLateGrant(t, s, 'job', { error, ran: handedOut !== undefined });
  },
);

test.serial(
  'add reply slower than the lease (timeoutMs larger than the lease): fn never runs, the call fails as a loss (deadline), the entry is released',
  async (t) => {
    const s = await setup(t, { via: 'proxy', timeoutMs: LATE_MS + 500 });
    // Replies only: the add is applied at once, its reply arrives LATE_MS later.
    s.proxy!.setLatency(LATE_MS, 'down');
    let ran = false;
    const call = failure(
      s.memlock.tryWithLock('job', 'A', () => {
        ran = true;
        return 'ran';
      }),
    );
    // Once the add is on the server its reply is queued in the proxy; later replies (the release's) go straight through.
    await waitFor(
      async () => (await s.mc.rawGet(prefix + 'job')) !== null,
      GUARANTEED_MS / 2,
      5,
      'the add reached memcached at once',
    );
    s.proxy!.setLatency(0, 'down');
    await checkLateGrant(t, s, 'job', { error: await call, ran });
  },
);
