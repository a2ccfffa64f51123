/**
 * Self-tests of the fault scenarios' oracles (test/faults/lib): the in-process
 * SectionMonitor, the PostgreSQL overlap sweep of scenario 8, and the
 * RecordingClient. An oracle that cannot see a planted violation would let a
 * fault test pass on an empty list: each must report a planted overlap, a
 * planted late signal, and a clean run as clean.
 */
import test from 'ava';
import { LockLostError } from '../../src/index.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { SectionMonitor, learnedAt } from '../faults/lib/monitor.js';
import { sweepOverlaps, type Row } from '../faults/lib/exclusion.js';
import { RecordingClient } from '../faults/lib/recording.js';
import { fakeTime } from '../helpers/clock.js';

const lost = (controller: AbortController, kind: 'gone' | 'taken' | 'unreachable' = 'gone'): void =>
  controller.abort(new LockLostError('k', kind));

test.serial('monitor: a clean run (sections one after another, other keys in parallel) is clean', (t) => {
  const clock = fakeTime(t, { toFake: ['performance'] });
  const monitor = new SectionMonitor();
  for (let i = 0; i < 5; i++) {
    const a = monitor.enter('k', `w${i}`, new AbortController().signal);
    const b = monitor.enter(`other${i}`, `v${i}`, new AbortController().signal);
    clock.tick(10);
    monitor.exit(a);
    monitor.exit(b);
    monitor.released(a, true);
  }
  t.is(monitor.sections.length, 10);
  t.deepEqual(monitor.overlaps, []);
  t.deepEqual(monitor.silent(), []);
  t.deepEqual(monitor.late(), []);
  t.is(monitor.maxLagMs(), 0);
});

test.serial('monitor: a planted overlap whose earlier holder is never told is reported as silent', (t) => {
  const clock = fakeTime(t, { toFake: ['performance'] });
  const monitor = new SectionMonitor();
  const first = monitor.enter('k', 'A', new AbortController().signal);
  clock.tick(5);
  const second = monitor.enter('k', 'B', new AbortController().signal);
  t.is(monitor.overlaps.length, 1);
  const [overlap] = monitor.overlaps;
  t.is(overlap?.earlier, first);
  t.is(overlap?.later, second);
  t.false(overlap?.signalledBefore);
  t.deepEqual(
    monitor.silent().map((o) => o.key),
    ['k'],
  );
  t.deepEqual(monitor.late(), [], 'never told is silent, not late');
  t.true(Number.isNaN(learnedAt(first)));
  // A caller's own abort is not a loss signal.
  const caller = new AbortController();
  const third = monitor.enter('j', 'C', caller.signal);
  caller.abort(new Error('caller gave up'));
  monitor.enter('j', 'D', new AbortController().signal);
  t.true(Number.isNaN(third.lostAt));
  t.deepEqual(
    monitor.silent().map((o) => o.key),
    ['k', 'j'],
  );
});

test.serial(
  'monitor: a planted late signal (told after the other holder started) is reported late, with its lag',
  (t) => {
    const clock = fakeTime(t, { toFake: ['performance'] });
    const monitor = new SectionMonitor();
    const controller = new AbortController();
    const first = monitor.enter('k', 'A', controller.signal);
    clock.tick(10);
    monitor.enter('k', 'B', new AbortController().signal);
    clock.tick(40);
    lost(controller, 'unreachable');
    t.is(first.lostKind, 'unreachable');
    t.deepEqual(monitor.silent(), []);
    t.deepEqual(
      monitor.late().map((o) => o.earlier.holder),
      ['A'],
    );
    t.is(monitor.maxLagMs(), 40);
  },
);

test.serial(
  'monitor: told before the overlap is neither silent nor late; told by a failed release is not silent',
  (t) => {
    const clock = fakeTime(t, { toFake: ['performance'] });
    const monitor = new SectionMonitor();
    const controller = new AbortController();
    const first = monitor.enter('k', 'A', controller.signal);
    lost(controller, 'gone');
    clock.tick(5);
    monitor.enter('k', 'B', new AbortController().signal);
    t.true(monitor.overlaps[0]?.signalledBefore);
    t.deepEqual(monitor.silent(), []);
    t.deepEqual(monitor.late(), []);
    t.is(monitor.maxLagMs(), 0);
    t.is(learnedAt(first), first.lostAt);

    const short = monitor.enter('s', 'C', new AbortController().signal);
    clock.tick(1);
    monitor.enter('s', 'D', new AbortController().signal);
    clock.tick(7);
    monitor.exit(short);
    monitor.released(short, false);
    t.is(learnedAt(short), short.releaseFailedAt);
    t.deepEqual(monitor.silent(), []);
    t.deepEqual(
      monitor.late().map((o) => o.key),
      ['s'],
    );
    t.is(monitor.maxLagMs(), 7);
    // An already aborted signal at entry counts at once.
    const pre = new AbortController();
    lost(pre, 'taken');
    t.is(monitor.enter('p', 'E', pre.signal).lostKind, 'taken');
  },
);

test('exclusion sweep: a clean run has no overlaps; a planted overlap, a late signal and a silent one are each found', (t) => {
  const row = (id: string, key: string, started: number, ended: number): Row => ({ id, key, proc: 0, started, ended });
  const clean = [row('a', 'k1', 0, 10), row('b', 'k1', 10, 20), row('c', 'k1', 25, 30), row('d', 'k2', 0, 30)];
  t.deepEqual(sweepOverlaps(clean, new Map()), [], 'touching sections (end == next start) do not overlap');
  const planted = [
    row('a', 'k1', 0, 50),
    row('b', 'k1', 10, 20),
    row('c', 'k1', 30, Infinity),
    row('d', 'k2', 0, 10),
    row('e', 'k2', 5, 6),
  ];
  const told = new Map([
    ['a', { kind: 'gone', at: 5 }],
    ['d', { kind: 'unreachable', at: 8 }],
  ]);
  const overlaps = sweepOverlaps(planted, told);
  t.deepEqual(
    overlaps.map((o) => [o.key, o.earlier, o.later, o.toldBy, o.lagMs]),
    [
      ['k1', 'a', 'b', 'gone', -5], // told before: negative lag
      ['k1', 'a', 'c', 'gone', -25],
      ['k2', 'd', 'e', 'unreachable', 3], // told 3 ms after the other holder started: late
    ],
  );
  const silent = sweepOverlaps([row('x', 'k', 0, 10), row('y', 'k', 5, 8)], new Map());
  t.is(silent.length, 1);
  t.is(silent[0]?.toldBy, undefined);
  t.true(Number.isNaN(silent[0]?.lagMs));
});

test('exclusion sweep: the holder memcached granted first (lower grant CAS) is the one that must be told, whatever order the grants were stamped in', (t) => {
  const row = (id: string, started: number, ended: number, grantCas?: bigint): Row => ({
    id,
    key: 'k',
    proc: 0,
    started,
    ended,
    grantCas,
  });
  // y's write landed first (CAS 7) but its grant was stamped after x's (CAS 9): y must be told.
  const flipped = [row('x', 0, 50, 9n), row('y', 5, 30, 7n)];
  const told = new Map([['y', { kind: 'gone', at: 25 }]]);
  t.deepEqual(
    sweepOverlaps(flipped, told).map((o) => [o.earlier, o.later, o.toldBy, o.lagMs]),
    [['y', 'x', 'gone', 20]],
  );
  t.deepEqual(
    sweepOverlaps([row('x', 0, 50, 7n), row('y', 5, 30, 9n)], told).map((o) => [o.earlier, o.toldBy]),
    [['x', undefined]],
    'in CAS order: the first-started holder must be told',
  );
  t.deepEqual(
    sweepOverlaps([row('x', 0, 50, 9n), row('y', 5, 30)], told).map((o) => [o.earlier, o.toldBy]),
    [['x', undefined]],
    'a CAS unknown: start order',
  );
  t.deepEqual(
    sweepOverlaps([row('x', 0, 50, 9n), row('y', 5, 30, null as never)], told).map((o) => o.earlier),
    ['x'],
  );
});

test('recording client: records what was sent, how it ended, and the last confirmed write', async (t) => {
  const memcache = new MemcacheStandIn();
  const recorder = new RecordingClient(memcache.client(), (op) => op !== 'get');
  t.is((await recorder.add('k', Buffer.from('v'), 10)).status, 'ok');
  t.is((await recorder.add('k', Buffer.from('v'), 10)).status, 'exists');
  await recorder.get('k');
  const entry = await memcache.client().get('k');
  t.is((await recorder.casSet('k', Buffer.from('w'), 10, entry!.cas)).status, 'ok');
  t.is((await recorder.casSet('k', Buffer.from('w'), 10, 999n)).status, 'exists');
  await recorder.addThenGet('j', Buffer.from('v'), 10);
  memcache.unreachable(true);
  await t.throwsAsync(recorder.casDelete('k', 1n));
  memcache.unreachable(false);
  t.deepEqual(
    recorder.ops.map((r) => `${r.op}:${r.outcome}`),
    ['add:ok', 'add:exists', 'casSet:ok', 'casSet:exists', 'addThenGet:ok', 'casDelete:error'],
    'gets filtered out by keep',
  );
  t.deepEqual(recorder.sent, { add: 3, get: 2, casSet: 2, casDelete: 1 });
  t.true(recorder.ops.every((r) => r.doneAt >= r.sentAt));
  const okSet = recorder.ops[2]!;
  t.is(recorder.lastConfirmedWrite('k'), okSet.sentAt);
  t.is(
    recorder.lastConfirmedWrite('k', recorder.ops[0]!.doneAt),
    recorder.ops[0]!.sentAt,
    'only writes settled before `before`',
  );
  t.is(recorder.lastConfirmedWrite('none'), -Infinity);
  t.deepEqual(
    recorder.opsOn('j').map((r) => r.op),
    ['addThenGet'],
  );
  t.is(recorder.serverOf('k'), 'stand-in:11211');
});
