/**
 * Scenario 4: eviction under memory pressure. A memcached with 2 MB of item
 * memory and a writer churning entries of the same size as the lock entries
 * (same slab class): held entries fall off the LRU. Each test owns its memcached.
 */
import test from 'ava';
import { Memlock, LockLostError, MemcacheUnavailableError } from '../../src/index.js';
import { testProtocol } from '../helpers/protocol.js';
import { startMemcached } from '../helpers/memcached.js';
import { waitFor } from '../helpers/resources.js';
import { startChurn } from './lib/churn.js';
import { runEvictionRound } from './lib/eviction.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

test('LRU eviction of held entries: every lost lock is signalled with kind gone, every unsignalled one still has its entry', async (t) => {
  const mc = await startMemcached({ memoryMb: 2 });
  t.teardown(() => mc.stop());
  // About 1.5 times the server's capacity, written at about three capacities per
  // heartbeat: holders lose their entries one after another, not all at once.
  const f = await runEvictionRound(mc, {
    locks: 200,
    heartbeatMs: 500,
    leaseMs: 4000,
    timeoutMs: 500,
    churnEntries: 21_000,
    churnPerSecond: 60_000,
  });
  const lost = Object.values(f.lost).reduce((a, b) => a + b, 0);
  t.log(
    `churned ${f.churned} entries in ${f.churnMs.toFixed(0)} ms, memcached evicted ${f.evictions}; ` +
      `locks lost ${lost}/${f.locks} (${Object.entries(f.lost)
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')}), silent ${f.silent}`,
  );
  t.true(f.evictions > 0, 'memcached evicted entries');
  t.true(lost > 0, 'some held entries were evicted');
  t.deepEqual(Object.keys(f.lost), ['gone'], 'every loss is reported as gone');
  t.is(f.silent, 0, 'every lock still believed held has its own entry');
  t.is(f.releasedAfterLoss, 0, 'a lost lock releases nothing');
  t.is(f.survivorsNotReleased, 0, 'survivors kept renewing and release cleanly');
});

test('out of memory without eviction (-M): acquire fails with MemcacheUnavailableError carrying the status; a holder whose renewal fails is signalled', async (t) => {
  const mc = await startMemcached({ memoryMb: 2, extraArgs: ['-M'] });
  t.teardown(() => mc.stop());
  const m = new Memlock({
    servers: mc.address,
    protocol: testProtocol,
    prefix: 'oom:',
    leaseMs: 3000,
    heartbeatMs: 500,
  });
  t.teardown(() => m.close());
  const held = await m.acquire('held-0000', 'client-0');
  const sample = (await mc.rawGet('oom:held-0000'))!;
  const churn = await startChurn(mc, 'oom:held-0000'.length, sample.value.length);
  await waitFor(() => churn.written > 100_000, 5000, 10); // several times the 2 MB
  await churn.stop();
  let called = false;
  const error = await t.throwsAsync(
    m.tryWithLock('fresh-0000', 'client-1', () => {
      called = true;
    }),
    { instanceOf: MemcacheUnavailableError },
  );
  t.false(called);
  t.regex(error!.message, /0x82|memory/i);
  // The binary protocol's status code, or the text protocols' error line.
  t.is(
    (error!.cause as { status?: unknown }).status,
    testProtocol === 'binary' ? 0x82 : 'SERVER_ERROR out of memory storing object',
  );
  // memcached unlinks an entry whose SET failed for lack of memory, so the
  // renewal's failure is followed by "gone"; either way the holder is told
  // before the lease could end.
  await waitFor(() => held.signal.aborted, 4000, 10, 'holder signalled');
  const reason = held.signal.reason as LockLostError;
  t.log(`holder lost the lock: ${reason.kind}`);
  t.true(reason.kind === 'gone' || reason.kind === 'unreachable', reason.kind);
  if (testProtocol === 'text') {
    // A text `cas` that failed for lack of memory leaves the entry (memcached
    // unlinks only after a failed set): still ours, so the release may delete it.
    await held.release();
    t.is(await mc.rawGet('oom:held-0000'), null);
  } else t.false(await held.release());
});
