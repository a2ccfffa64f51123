/**
 * Scenario 6, variants of the event-loop stall that test/integration/restart.protocols.test.ts does
 * not cover (it covers a synchronous busy loop longer than the lease):
 * - an async fn that never yields to the event loop (a microtask-only loop of
 *   awaits): timers and sockets starve just like in a synchronous stall;
 * - an async fn that is CPU-heavy but yields between slices (setImmediate):
 *   the heartbeat must keep the lock, with no false loss.
 * Owns its memcached.
 */
import test from 'ava';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { Memlock, LockLostError } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { waitFor } from '../helpers/resources.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

let mc: MemcachedProcess;
test.before(async () => {
  mc = await startMemcached();
});
test.after.always(() => mc?.stop());

function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    /* burn CPU */
  }
}

test.serial(
  'async fn starving the event loop with microtasks past the lease: aborts with kind deadline as soon as the loop turns; the new holder is left alone',
  async (t) => {
    const leaseMs = 2000;
    const a = new Memlock({ servers: mc.address, prefix: 'st1:', leaseMs, heartbeatMs: 500 });
    const b = new Memlock({ servers: mc.address, prefix: 'st1:', leaseMs: 30_000, heartbeatMs: 12_000 });
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const result = await a.tryWithLock('k', 'A', async (signal) => {
      const until = performance.now() + leaseMs + 600;
      let awaits = 0;
      // Every await resolves in the microtask queue: no timer, no socket runs meanwhile.
      while (performance.now() < until) {
        await Promise.resolve();
        awaits++;
      }
      const abortedInside = signal.aborted; // nothing could have told it yet
      const resumed = performance.now();
      await waitFor(() => signal.aborted, leaseMs, 1, 'aborted after the stall');
      const lateMs = performance.now() - resumed;
      // Someone else takes the key once the entry expired.
      const bLock = await b.acquire('k', 'B', { wait: { timeoutMs: leaseMs + 3000, minDelayMs: 5, maxDelayMs: 50 } });
      return { awaits, abortedInside, lateMs, reason: signal.reason as LockLostError, bLock };
    });
    t.log(
      `${result.awaits} awaits without yielding; aborted ${result.lateMs.toFixed(0)} ms after the loop was free again (${result.reason.kind})`,
    );
    t.false(result.abortedInside, 'documented: a stalled loop cannot be told; check the signal after long sections');
    t.is(result.reason.kind, 'deadline');
    t.true(result.lateMs < 500, 'told on the first turns of the loop');
    // tryWithLock has released A: B's entry must still be B's.
    const entry = await mc.rawGet('st1:k');
    t.regex(entry!.value.toString(), /:B$/);
    t.true(await result.bLock.release());
  },
);

test.serial('CPU-heavy async fn that yields between 40 ms slices keeps its lock for several leases', async (t) => {
  const leaseMs = 2000;
  const a = new Memlock({ servers: mc.address, prefix: 'st2:', leaseMs, heartbeatMs: 500 });
  t.teardown(() => a.close());
  const casSeen = new Set<bigint>();
  const outcome = await a.tryWithLock('k', 'A', async (signal) => {
    const until = performance.now() + leaseMs * 2;
    let slices = 0;
    while (performance.now() < until && !signal.aborted) {
      busy(40);
      slices++;
      await yieldToLoop(); // timers and I/O get their turn here
      if (slices % 10 === 0) {
        const entry = await mc.rawGet('st2:k');
        if (entry) casSeen.add(entry.cas);
      }
    }
    return { slices, aborted: signal.aborted };
  });
  t.log(`${outcome.slices} slices of 40 ms; ${casSeen.size} distinct CAS values seen (renewals went through)`);
  t.false(outcome.aborted, 'no false loss');
  t.true(casSeen.size >= 2, 'the entry was renewed while fn ran');
  t.is(await mc.rawGet('st2:k'), null, 'released afterwards');
});

test.serial(
  'a stall shorter than the guaranteed lease does not lose the lock: renewals resume and carry it past the lease',
  async (t) => {
    const leaseMs = 4000; // guaranteed 3 s; the deadline is 2.9 s after the last confirmed write
    const a = new Memlock({ servers: mc.address, prefix: 'st3:', leaseMs, heartbeatMs: 500 });
    t.teardown(() => a.close());
    const outcome = await a.tryWithLock('k', 'A', async (signal) => {
      const first = (await mc.rawGet('st3:k'))!.cas;
      busy(1500); // well inside the guaranteed 3 s
      // Then run on past the lease: without renewals after the stall the signal aborts at 2.9 s.
      await sleep(leaseMs);
      const last = (await mc.rawGet('st3:k'))?.cas;
      return { aborted: signal.aborted, renewed: last !== undefined && last !== first };
    });
    t.false(outcome.aborted);
    t.true(outcome.renewed, 'the entry was renewed after the stall');
  },
);
