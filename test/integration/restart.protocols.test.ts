/**
 * Server death and restart while a lock is held. Each test owns its
 * memcached: these tests kill and restart it.
 */
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock, LockLostError, MemcacheUnavailableError } from '../../src/index.js';
import { startMemcached } from '../helpers/memcached.js';
import { testProtocol, viaTwemproxy } from '../helpers/protocol.js';
import { waitFor } from '../helpers/resources.js';
import { trackUnhandled } from '../helpers/unhandled.js';

const unhandled = trackUnhandled();

/**
 * Through twemproxy (MEMLOCK_TEST_VIA=twemproxy) memlock's connection is to
 * the proxy, which hides a memcached restart: these tests of restart
 * detection do not apply there. That cost (the README's restart ABA) is
 * shown in test/integration/text.test.ts.
 */
const restartDetection = viaTwemproxy ? test.serial.skip : test.serial;

test.afterEach.always((t) => {
  t.deepEqual(unhandled, [], 'no unhandled rejection or uncaught exception');
});

restartDetection(
  'restart, then another client acquires: the old holder neither deletes nor renews over it (CAS restarts at 1)',
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    // A long heartbeat keeps A's CAS at the one its add got on the fresh server.
    const a = new Memlock({
      protocol: testProtocol,
      servers: mc.address,
      prefix: 'r:',
      leaseMs: 30_000,
      heartbeatMs: 10_000,
    });
    const b = new Memlock({ protocol: testProtocol, servers: mc.address, prefix: 'r:' });
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const held = await a.acquire('k', 'A');
    const casA = (await mc.rawGet('r:k'))!.cas;
    await mc.restart();
    const heldB = await b.acquire('k', 'B');
    const entryB = (await mc.rawGet('r:k'))!;
    // The hazard is real: B's entry carries the very CAS A saved before the restart.
    t.is(entryB.cas, casA);
    t.false(await held.release(), 'A reports that it did not delete');
    const after = await mc.rawGet('r:k');
    t.truthy(after, "B's entry survives A's release");
    t.regex(after!.value.toString(), /:B$/);
    t.true(await heldB.release());
  },
);

restartDetection(
  'restart while held: the next heartbeat finds the entry gone/taken and aborts the signal',
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    const a = new Memlock({
      protocol: testProtocol,
      servers: mc.address,
      prefix: 'r2:',
      leaseMs: 4000,
      heartbeatMs: 300,
    });
    const b = new Memlock({ protocol: testProtocol, servers: mc.address, prefix: 'r2:' });
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const held = await a.acquire('k', 'A');
    const casA = (await mc.rawGet('r2:k'))!.cas;
    await mc.restart();
    const heldB = await b.acquire('k', 'B');
    t.true((await mc.rawGet('r2:k'))!.cas <= casA + 5n);
    await waitFor(() => held.signal.aborted, 3000, 10, 'A aborted');
    t.is((held.signal.reason as LockLostError).kind, 'taken');
    await sleep(700); // several of A's heartbeat periods
    t.regex((await mc.rawGet('r2:k'))!.value.toString(), /:B$/, 'A never renewed over B');
    t.false(await held.release());
    t.regex((await mc.rawGet('r2:k'))!.value.toString(), /:B$/);
    t.true(await heldB.release());
  },
);

test.serial('server killed while held: signal aborts before the lease could end, the call settles', async (t) => {
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const leaseMs = 3000;
  const heartbeatMs = 500;
  const a = new Memlock({ protocol: testProtocol, servers: mc.address, leaseMs, heartbeatMs, timeoutMs: 200 });
  t.teardown(() => a.close());
  let killedAt = 0;
  const outcome = await a.tryWithLock('k', 'A', async (signal) => {
    await sleep(100);
    killedAt = performance.now();
    await mc.kill();
    await waitFor(() => signal.aborted, leaseMs, 5, 'signal aborted');
    return { reason: signal.reason as LockLostError, after: performance.now() - killedAt };
  });
  t.true(outcome.reason instanceof LockLostError);
  t.is(outcome.reason.kind, 'unreachable');
  t.true(outcome.reason.cause instanceof MemcacheUnavailableError);
  // The last confirmed write was at most one heartbeat before the kill; the
  // server may expire the entry (ttl - 1) s after that write was sent.
  const guaranteed = (Math.ceil(leaseMs / 1000) - 1) * 1000;
  t.true(outcome.after <= guaranteed + 50, `aborted ${outcome.after.toFixed(0)} ms after the kill`);
});

test.serial(
  'event-loop stall longer than the lease: the signal aborts (deadline) as soon as the loop runs',
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    const a = new Memlock({ protocol: testProtocol, servers: mc.address, leaseMs: 2000, heartbeatMs: 500 });
    const b = new Memlock({ protocol: testProtocol, servers: mc.address });
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const reason = await a.tryWithLock('k', 'A', async (signal) => {
      const until = performance.now() + 2600;
      while (performance.now() < until) {
        /* stall the event loop past the lease */
      }
      const resumed = performance.now();
      await waitFor(() => signal.aborted, 1000, 1, 'aborted after the stall');
      t.true(performance.now() - resumed < 500);
      return signal.reason as LockLostError;
    });
    t.is(reason.kind, 'deadline');
    // Whoever got it in between is not disturbed by A's release.
    t.is(await b.tryWithLock('k', 'B', () => 'B'), 'B');
  },
);

test.serial('short lease: renewals keep a 2 s lease alive for several seconds', async (t) => {
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const a = new Memlock({ protocol: testProtocol, servers: mc.address, leaseMs: 2000, heartbeatMs: 1000 });
  t.teardown(() => a.close());
  const aborted = await a.tryWithLock('k', 'A', async (signal) => {
    await sleep(4500);
    return signal.aborted;
  });
  t.false(aborted);
});

test.serial(
  'connection dropped (no restart) while held: the lock survives by reading back, and renewals go on past the lease',
  async (t) => {
    const mc = await startMemcached();
    t.teardown(() => mc.stop());
    const { startProxy } = await import('../helpers/proxy.js');
    const proxy = await startProxy(mc.endpoint);
    t.teardown(() => proxy.close());
    const leaseMs = 2000; // guaranteed 1 s after each confirmed write
    const a = new Memlock({ protocol: testProtocol, servers: proxy.address, leaseMs, heartbeatMs: 200 });
    t.teardown(() => a.close());
    const lock = await a.acquire('k', 'A');
    const before = (await mc.rawGet('memlock:k'))!;
    proxy.drop();
    // Longer than the lease: only renewals (after a read-back on the new connection) keep it.
    await sleep(leaseMs + 500);
    t.false(lock.signal.aborted, 'a dropped connection alone does not lose the lock');
    const after = await mc.rawGet('memlock:k');
    t.truthy(after, 'the entry outlived its lease');
    t.true(after!.value.equals(before.value), 'still our entry');
    t.not(after!.cas, before.cas, 'renewed since the drop');
    t.true(await lock.release());
    t.is(await mc.rawGet('memlock:k'), null);
  },
);
