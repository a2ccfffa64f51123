/**
 * The heartbeat at scale, on fake timers against the `memlock/testing`
 * stand-in: 10,000 held locks share one timer and each renews exactly once
 * per interval. Its own file because it is the slowest test of the fast tier
 * (about 0.8 s): mutation runs (tools/mutation/run.mjs) run it for mutants of
 * the heartbeat and the lock, not for every mutant of memlock.ts.
 */
import test from 'ava';
import { Memlock } from '../../src/index.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { RecordingClient } from '../faults/lib/recording.js';
import { fakeTime } from '../helpers/clock.js';

test.serial('10,000 held locks: exactly one renewal each per interval, on one timer', async (t) => {
  const clock = fakeTime(t);
  const recorder = new RecordingClient(new MemcacheStandIn().client());
  const memlock = new Memlock({ leaseMs: 10_000, heartbeatMs: 200, lockClient: recorder });
  const locks = await Promise.all(Array.from({ length: 10_000 }, (_, i) => memlock.acquire(`k${i}`, 'A')));
  recorder.ops.length = 0;
  t.is(clock.countTimers(), 1);
  await clock.tickAsync(1000);
  const sets = recorder.ops.filter((r) => r.op === 'casSet');
  t.is(sets.length, 10_000 * 5);
  t.true(locks.every((lock) => !lock.signal.aborted));
  await Promise.all(locks.map((lock) => lock.release()));
  t.is(memlock.heldCount, 0);
  await memlock.close();
});
