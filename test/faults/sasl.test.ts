/**
 * Scenario 11: memcached with SASL. Right credentials work (options,
 * `user:pass@host:port`, and the environment as memjs reads it); wrong or
 * missing ones fail with a MemcacheUnavailableError carrying the cause —
 * never LockNotAcquiredError, never a hang, fn never called. Owns its memcached.
 */
import test from 'ava';
import { Memlock, MemcacheUnavailableError, LockNotAcquiredError } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

const username = 'memlock';
const password = 's3cret-pw';
let mc: MemcachedProcess;
test.before(async () => {
  mc = await startMemcached({ sasl: { username, password } });
});
test.after.always(() => mc?.stop());

test.serial('right credentials: locks work and the entry is on the server', async (t) => {
  const m = new Memlock({ servers: mc.address, username, password, prefix: 'sasl:' });
  t.teardown(() => m.close());
  const result = await m.tryWithLock('k', 'A', async () => {
    const entry = await mc.rawGet('sasl:k');
    t.regex(entry!.value.toString(), /:A$/);
    t.is((await m.inspect('k'))?.clientId, 'A');
    return 'done';
  });
  t.is(result, 'done');
  t.is(await mc.rawGet('sasl:k'), null, 'released');
  // Refusal still means refusal: a second authenticated client is refused, not "unavailable".
  const other = new Memlock({ servers: `${username}:${password}@${mc.address}`, prefix: 'sasl:' });
  t.teardown(() => other.close());
  const held = await m.acquire('k', 'A');
  await t.throwsAsync(
    other.tryWithLock('k', 'B', () => 1),
    { instanceOf: LockNotAcquiredError },
  );
  await held.release();
  t.is(await other.tryWithLock('k', 'B', () => 'via user:pass@host'), 'via user:pass@host');
});

test.serial('credentials from MEMCACHE_USERNAME / MEMCACHE_PASSWORD (as memjs reads them) work', async (t) => {
  const saved = { u: process.env.MEMCACHE_USERNAME, p: process.env.MEMCACHE_PASSWORD };
  process.env.MEMCACHE_USERNAME = username;
  process.env.MEMCACHE_PASSWORD = password;
  const m = new Memlock({ servers: mc.address, prefix: 'sasl-env:' });
  t.teardown(async () => {
    await m.close();
    if (saved.u === undefined) delete process.env.MEMCACHE_USERNAME;
    else process.env.MEMCACHE_USERNAME = saved.u;
    if (saved.p === undefined) delete process.env.MEMCACHE_PASSWORD;
    else process.env.MEMCACHE_PASSWORD = saved.p;
  });
  t.is(await m.tryWithLock('k', 'A', () => 'env ok'), 'env ok');
});

const wrong: Array<[string, { username?: string; password?: string }]> = [
  ['wrong password', { username, password: 'nope' }],
  ['unknown user', { username: 'mallory', password }],
  ['no credentials', {}],
];
for (const [title, creds] of wrong) {
  test.serial(
    `${title}: MemcacheUnavailableError with the cause, in bounded time, never LockNotAcquiredError`,
    async (t) => {
      const timeoutMs = 500;
      const m = new Memlock({ servers: mc.address, prefix: 'sasl-bad:', timeoutMs, ...creds });
      t.teardown(() => m.close());
      let called = false;
      for (const options of [undefined, { wait: { timeoutMs: 2000 } }]) {
        const start = performance.now();
        const error = await t.throwsAsync(
          m.tryWithLock(
            'k',
            'A',
            () => {
              called = true;
            },
            options,
          ),
        );
        const ms = performance.now() - start;
        t.log(
          `${title}${options ? ' (wait)' : ''}: ${error?.constructor.name}: ${error?.message} <- cause: ${String((error?.cause as Error | undefined)?.message)} (${ms.toFixed(0)} ms)`,
        );
        t.true(error instanceof MemcacheUnavailableError, `got ${error?.constructor.name}`);
        t.false(error instanceof LockNotAcquiredError);
        t.truthy(error?.cause, 'cause set');
        t.is((error as MemcacheUnavailableError).server, mc.address);
        t.true(ms < timeoutMs * 4 + 1000, 'not a hang');
      }
      await t.throwsAsync(m.inspect('k'), { instanceOf: MemcacheUnavailableError });
      t.false(called, 'fn never ran');
      t.is(await mc.rawGet('sasl-bad:k'), null, 'nothing written');
    },
  );
}
