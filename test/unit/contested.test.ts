/**
 * Memlock's bounded memory of contested keys: thousands of refusals, so it
 * sits in its own file (mutation runs reach it only for mutants that
 * survive the quicker memlock.test.ts and waiting.test.ts).
 */
import test from 'ava';
import { encodeValue } from '../../src/protocol.js';
import { MemcacheStandIn } from '../../src/testing.js';

test('contested keys: a refused key’s next attempt only reads; the memory of refusals is bounded (4096 keys, oldest forgotten first)', async (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  t.teardown(() => memlock.close());
  for (let i = 0; i <= 4096; i++) memcache.set(`memlock:k${i}`, encodeValue('B', 1, `t${i}`), 100);
  let refused = 0;
  for (let i = 0; i <= 4096; i++) await memlock.acquire(`k${i}`, 'A').catch(() => refused++);
  t.is(refused, 4097);
  const ops = { ...memcache.ops };
  await t.throwsAsync(memlock.acquire('k4096', 'A'));
  t.deepEqual(memcache.ops, { ...ops, get: ops.get + 1 }, 'remembered: a read only');
  await t.throwsAsync(memlock.acquire('k0', 'A'));
  t.deepEqual(
    memcache.ops,
    { ...ops, get: ops.get + 2, add: ops.add + 1 },
    'the oldest was forgotten: an add and a read',
  );
  await t.throwsAsync(memlock.acquire('k4096', 'A'));
  t.is(memcache.ops.add, ops.add + 1, 'the newest is still remembered');
  await t.throwsAsync(memlock.acquire('k1', 'A'));
  t.is(memcache.ops.add, ops.add + 2, 'k0 coming back pushed out k1, now the oldest');
});
