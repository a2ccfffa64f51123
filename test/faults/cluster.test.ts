/**
 * Scenario 7: three memcached servers on a consistent hash ring. Killing one
 * fails exactly its keys (MemcacheUnavailableError naming it); the others
 * keep working and no key moves while it is down. Adding a fourth server
 * moves about a quarter of the keys, all of them to the new server. Owns its
 * memcached processes.
 */
import test from 'ava';
import { Memlock, MemcacheLockClient, MemcacheUnavailableError, LockLostError } from '../../src/index.js';
import { startMemcached } from '../helpers/memcached.js';
import { waitFor } from '../helpers/resources.js';
import { failOnUnhandled } from '../helpers/unhandled.js';

failOnUnhandled(test);

const prefix = 'c:';
const KEYS = 120;
const keys = Array.from({ length: KEYS }, (_, i) => `key-${i}`);

/** Where the library routes each key (its own ring, via MemcacheLockClient.serverOf). */
function routing(servers: string[], names: readonly string[]): Map<string, string> {
  const client = new MemcacheLockClient({ servers, timeoutMs: 500 });
  const map = new Map(names.map((k) => [k, client.serverOf(prefix + k)]));
  void client.close(); // opened nothing
  return map;
}

test('one of three servers down: its keys fail with MemcacheUnavailableError, the rest work, nothing moves', async (t) => {
  const servers = await Promise.all([0, 1, 2].map(() => startMemcached()));
  t.teardown(() => Promise.all(servers.map((s) => s.stop())));
  const byAddress = new Map(servers.map((s) => [s.address, s]));
  const addresses = servers.map((s) => s.address);
  const route = routing(addresses, keys);
  const perServer = addresses.map((a) => keys.filter((k) => route.get(k) === a).length);
  t.log(`keys per server: ${perServer.join(' / ')}`);
  for (const n of perServer) t.true(n > 0, 'every server owns keys');

  const m = new Memlock({ servers: addresses, prefix, leaseMs: 3000, heartbeatMs: 250, timeoutMs: 200 });
  t.teardown(() => m.close());
  // Entries land where the routing says, and only there.
  const held = await Promise.all(keys.map((k) => m.acquire(k, 'holder')));
  for (const k of keys) {
    for (const s of servers) {
      const entry = await s.rawGet(prefix + k);
      t.is(entry !== null, s.address === route.get(k), `${k} on ${s.address}`);
    }
  }
  await Promise.all(held.map((l) => l.release()));

  // A lock held on the victim while it dies, to see what its holder is told.
  const victim = servers[1]!;
  const victimKeys = keys.filter((k) => route.get(k) === victim.address);
  const otherKeys = keys.filter((k) => route.get(k) !== victim.address);
  const doomed = await m.acquire(victimKeys[0]!, 'doomed');
  const survivor = await m.acquire(otherKeys[0]!, 'survivor');
  await victim.kill();

  let called = 0;
  for (const k of victimKeys) {
    const error = await t.throwsAsync(
      m.tryWithLock(k, 'during', () => {
        called++;
      }),
      { instanceOf: MemcacheUnavailableError },
    );
    t.is(error?.server, victim.address, 'the error names the dead server');
    t.truthy(error?.cause);
  }
  t.is(called, 0);
  for (const k of otherKeys.slice(1)) t.is(await m.tryWithLock(k, 'during', () => k), k);
  // No key moved: the live servers got no entry for the dead server's keys.
  for (const k of victimKeys) {
    for (const s of servers)
      if (s !== victim) t.is(await s.rawGet(prefix + k), null, `${k} did not move to ${s.address}`);
  }
  await waitFor(() => doomed.signal.aborted, 3000, 10, 'the holder on the dead server is told');
  t.is((doomed.signal.reason as LockLostError).kind, 'unreachable');
  t.false(survivor.signal.aborted, 'a lock on a live server is not disturbed');
  t.true(await survivor.release());
  t.false(await doomed.release());

  // Back up (empty): its keys work again, on it.
  await victim.restart();
  await waitFor(
    async () => m.tryWithLock(victimKeys[0]!, 'after', () => true).catch(() => false),
    3000,
    50,
    'victim usable again',
  );
  for (const k of victimKeys) {
    const lock = await m.acquire(k, 'after');
    t.truthy(await byAddress.get(victim.address)!.rawGet(prefix + k));
    await lock.release();
  }
});

test('adding a fourth server moves about a quarter of the keys, only to the new server (end to end)', async (t) => {
  const servers = await Promise.all([0, 1, 2, 3].map(() => startMemcached()));
  t.teardown(() => Promise.all(servers.map((s) => s.stop())));
  const three = servers.slice(0, 3).map((s) => s.address);
  const four = servers.map((s) => s.address);
  const sample = Array.from({ length: 20_000 }, (_, i) => `k${i}`);
  const before = routing(three, sample);
  const after = routing(four, sample);
  let moved = 0;
  let movedElsewhere = 0;
  for (const k of sample) {
    if (before.get(k) === after.get(k)) continue;
    moved++;
    if (after.get(k) !== four[3]) movedElsewhere++;
  }
  const share = moved / sample.length;
  t.log(
    `adding a 4th server moved ${moved}/${sample.length} keys (${(share * 100).toFixed(1)} %; ideal 25 %); moved between old servers: ${movedElsewhere}`,
  );
  t.true(share > 0.18 && share < 0.32, `moved ${(share * 100).toFixed(1)} %`);
  t.is(movedElsewhere, 0);

  // End to end: a 4-server Memlock writes each key where its ring says.
  const m = new Memlock({ servers: four, prefix });
  t.teardown(() => m.close());
  const check = keys.slice(0, 60);
  const route = routing(four, check);
  for (const k of check) {
    await m.tryWithLock(k, 'A', async () => {
      for (const s of servers) t.is((await s.rawGet(prefix + k)) !== null, s.address === route.get(k));
    });
  }
});
