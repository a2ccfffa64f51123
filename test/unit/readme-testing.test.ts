/**
 * The example of docs/testing.md ("Testing your code"), run as a test. The
 * code between the markers is that page's code block with its imports pointed
 * at src/; the last tests check that the page still shows exactly this code,
 * and the ava configuration it tells readers to use is the one this project
 * runs it with.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';

// README example: begin
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { Memlock, LockLostError } from '../../src/index.js';
import { MemcacheStandIn } from '../../src/testing.js';

// The code under test: charges an invoice while holding its lock, and must
// not report success when the lock was lost halfway.
async function chargeInvoice(
  memlock: Memlock,
  id: string,
  charge: (signal: AbortSignal) => Promise<void>,
): Promise<'charged' | 'lost'> {
  try {
    const clientId = `${hostname()}:${process.pid}:${randomUUID()}`; // one per call
    await memlock.tryWithLock(`invoice:${id}`, clientId, charge);
    return 'charged';
  } catch (error) {
    if (error instanceof LockLostError) return 'lost';
    throw error;
  }
}

test('a charge whose lock is lost reports it', async (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock({ leaseMs: 4000, heartbeatMs: 100 });
  t.teardown(() => memlock.close());
  const outcome = await chargeInvoice(memlock, '42', async (signal) => {
    memcache.evict('memlock:invoice:42'); // memcached dropped the entry
    await new Promise((resolve) => signal.addEventListener('abort', resolve));
    signal.throwIfAborted(); // what a driver given the signal does
  });
  t.is(outcome, 'lost');
});

test('a charge that keeps its lock succeeds; memcache down fails it', async (t) => {
  const memcache = new MemcacheStandIn();
  const memlock = memcache.memlock();
  t.teardown(() => memlock.close());
  t.is(await chargeInvoice(memlock, '7', async () => {}), 'charged');
  memcache.unreachable(true);
  await t.throwsAsync(
    chargeInvoice(memlock, '7', async () => {}),
    { code: 'ERR_MEMLOCK_UNAVAILABLE' },
  );
});
// README example: end

const docs = readFileSync(new URL('../../docs/testing.md', import.meta.url), 'utf8');

test('docs/testing.md shows this example', (t) => {
  const source = readFileSync(new URL(import.meta.url), 'utf8');
  const example = source
    .slice(source.indexOf('// README example: begin\n') + 25, source.indexOf('// README example: end'))
    .replace("'../../src/index.js'", "'memlock'")
    .replace("'../../src/testing.js'", "'memlock/testing'");
  const block = /```ts\n([\s\S]*?)```/.exec(docs.slice(docs.indexOf('## An example')))?.[1];
  t.is(block, `import test from 'ava';\n${example}`);
});

test('docs/testing.md shows the ava configuration this example runs with', (t) => {
  const block = /```json\n([\s\S]*?)```/.exec(docs)?.[1];
  t.truthy(block, 'a json block');
  const shown = (JSON.parse(block ?? '{}') as { ava?: Record<string, unknown> }).ava;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    ava: Record<string, unknown>;
  };
  t.deepEqual(shown, {
    extensions: pkg.ava['extensions'],
    nodeArguments: pkg.ava['nodeArguments'],
    workerThreads: pkg.ava['workerThreads'],
  });
});
