/**
 * `memlock/testing` as users import it: the package's own `exports` map
 * (self-reference, built `dist/`: `npm test` builds first).
 */
import test from 'ava';
import { existsSync } from 'node:fs';

test('import "memlock/testing" resolves to the built stand-in, and it works with the built Memlock', async (t) => {
  t.true(existsSync(new URL('../../dist/testing.js', import.meta.url)), 'dist/testing.js is built (npm run build)');
  // Specifiers in variables: type-checking must not need dist/ (npm test type-checks before it builds).
  const testing = 'memlock/testing';
  const main = 'memlock';
  const { MemcacheStandIn } = (await import(testing)) as typeof import('../../src/testing.js');
  const { Memlock, LockNotAcquiredError } = (await import(main)) as typeof import('../../src/index.js');
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  t.true(memlock instanceof Memlock);
  const other = new Memlock({ lockClient: memcache.client() });
  t.teardown(() => Promise.all([memlock.close(), other.close()]));
  const held = await memlock.acquire('k', 'A');
  await t.throwsAsync(other.acquire('k', 'B'), { instanceOf: LockNotAcquiredError });
  t.true(await held.release());
  t.deepEqual(memcache.keys(), []);
});
