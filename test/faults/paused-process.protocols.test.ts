/**
 * Scenario 5: a paused holder process. A child process holds a lock; the test
 * SIGSTOPs it for longer than the lease, another client takes the key, then
 * the child is continued. It must learn at once that it lost the lock and
 * must neither renew nor delete over the new holder. Owns its memcached.
 */
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { Memlock } from '../../src/index.js';
import { testProtocol } from '../helpers/protocol.js';
import { startMemcached } from '../helpers/memcached.js';
import { waitFor } from '../helpers/resources.js';
import { signalAndWait, startFixture } from './lib/child.js';

interface OpSeen {
  op: string;
  outcome: string;
  sentAt: number;
}

test('holder process paused (SIGSTOP) past its lease: on SIGCONT its signal aborts first thing and it leaves the new holder alone', async (t) => {
  const mc = await startMemcached();
  t.teardown(() => mc.stop());
  const leaseMs = 3000;
  const heartbeatMs = 500;
  const prefix = 'pp:';
  const holder = startFixture('paused-holder.mts', {
    MEMCACHE_SERVERS: mc.address,
    HOLDER_KEY: 'job',
    PREFIX: prefix,
    LEASE_MS: String(leaseMs),
    HEARTBEAT_MS: String(heartbeatMs),
    TIMEOUT_MS: '300',
  });
  t.teardown(() => holder.kill());
  await holder.next('acquired', 15_000);
  await sleep(heartbeatMs * 2); // a few renewals
  const held = await mc.rawGet(`${prefix}job`);
  t.regex(held!.value.toString(), /:paused-holder$/);

  await signalAndWait(holder.pid, 'SIGSTOP');
  const pausedAt = performance.now();
  // The entry expires on the server while the holder sleeps.
  await waitFor(async () => (await mc.rawGet(`${prefix}job`)) === null, leaseMs + 2000, 100, 'entry expired');
  const b = new Memlock({ servers: mc.address, protocol: testProtocol, prefix, leaseMs: 30_000, heartbeatMs: 12_000 });
  t.teardown(() => b.close());
  const bLock = await b.acquire('job', 'B', { wait: { timeoutMs: 5000 } });
  const bEntry = (await mc.rawGet(`${prefix}job`))!;
  t.regex(bEntry.value.toString(), /:B$/);
  // Keep it stopped for longer than the whole lease.
  await sleep(Math.max(0, pausedAt + leaseMs + heartbeatMs - performance.now()));
  const pausedMs = performance.now() - pausedAt;

  await signalAndWait(holder.pid, 'SIGCONT');
  const aborted = await holder.next('aborted', 10_000);
  const released = await holder.next('released', 10_000);
  const resumed = holder.messages.find((m) => m.event === 'resumed');
  const ops = released.opsAfterPause as OpSeen[];
  t.log(
    `paused ${pausedMs.toFixed(0)} ms; on resume: lost (${String(aborted.kind)}), ` +
      `ops sent after the pause: ${ops.map((o) => `${o.op}=${o.outcome}`).join(', ') || 'none'}; release -> ${String(released.released)}`,
  );
  t.truthy(resumed, 'the child noticed its pause');
  t.true(aborted.kind === 'deadline' || aborted.kind === 'unreachable', `kind ${String(aborted.kind)}`);
  // The abort is the first thing after the resume: no renewal was sent before it.
  t.false(
    ops.some((o) => o.op === 'casSet' && o.sentAt < (aborted.at as number)),
    'no renewal before the abort',
  );
  t.false(
    ops.some((o) => o.op === 'casSet'),
    'no renewal at all after the pause',
  );
  t.false(
    ops.some((o) => (o.op === 'casSet' || o.op === 'casDelete') && o.outcome === 'ok'),
    'nothing of the old holder applied',
  );
  t.false(released.released as boolean, 'its release deleted nothing');
  const after = (await mc.rawGet(`${prefix}job`))!;
  t.is(after.cas, bEntry.cas, "B's CAS unchanged");
  t.true(after.value.equals(bEntry.value), "B's value unchanged");
  t.is(await holder.exited, 0, 'the child exits cleanly');
  t.true(await bLock.release());
});
