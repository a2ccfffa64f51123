/**
 * Framing of every codec against a real memcached whose bytes reach the
 * client 1-7 bytes at a time (the fault proxy's fragment mode), so every
 * reply header, reply line and value straddles 'data' events, and many
 * replies arrive back to back.
 */
import test from 'ava';
import { MemcacheLockClient, type ProtocolName } from '../../src/index.js';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { startProxy } from '../helpers/proxy.js';

let mc: MemcachedProcess;
test.before(async () => {
  mc = await startMemcached();
});
test.after.always(() => mc?.stop());

for (const protocol of ['binary', 'meta', 'text'] as ProtocolName[]) {
  test(`${protocol}: replies split into 1-7-byte pieces and batched many per chunk are framed right`, async (t) => {
    const proxy = await startProxy(mc);
    proxy.fragment(7);
    const split = new MemcacheLockClient({ servers: [proxy.address], protocol, timeoutMs: 5000 });
    const direct = new MemcacheLockClient({ servers: [mc.address], protocol, timeoutMs: 1000 });
    t.teardown(async () => {
      await split.close();
      await direct.close();
      await proxy.close();
    });
    const key = (i: number): string => `frame-${protocol}:${i}`;
    // Values that look like replies, to catch a parser that scans the data.
    const value = (i: number): Buffer =>
      Buffer.from(`HD c${i}\r\nVA 3 c1\r\nEND\r\nVALUE k 0 3 ${i}\r\nSTORED\r\n`.padEnd(300 + i, 'x'));
    const added = await Promise.all(Array.from({ length: 50 }, (_, i) => split.add(key(i), value(i), 30)));
    t.true(added.every((r) => r.status === 'ok'));
    const entries = await Promise.all(Array.from({ length: 50 }, (_, i) => split.get(key(i))));
    for (const [i, entry] of entries.entries()) {
      t.true(entry?.value.equals(value(i)), `value ${i} intact`);
      t.is(entry?.cas, added[i]?.status === 'ok' ? added[i].cas : undefined, `CAS ${i} intact`);
    }
    const both = await split.addThenGet(key(0), Buffer.from('other'), 30);
    t.is(both.add.status, 'exists');
    t.true(both.entry?.value.equals(value(0)));
    const renewed = await Promise.all(entries.map((entry, i) => split.casSet(key(i), value(i), 30, entry!.cas)));
    t.true(renewed.every((r) => r.status === 'ok'));
    t.is((await split.casSet(key(1), value(1), 30, entries[1]!.cas)).status, 'exists', 'the old CAS no longer matches');
    const deleted = await Promise.all(renewed.map((r, i) => split.casDelete(key(i), r.status === 'ok' ? r.cas : 0n)));
    t.true(deleted.every((r) => r.status === 'ok'));
    t.is(await direct.get(key(7)), null, 'deleted on the server');
    t.is(proxy.accepted, 1, 'all of it on one connection: nothing was dropped or re-sent');
  });
}
