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
import { isInverted, sweepOverlaps, tallyOverlaps, type Row } from '../faults/lib/exclusion.js';
import { LossStamps, type LossStamp } from '../faults/lib/sections.js';
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

/**
 * A history as the workers write it: each event stamped on a manual clock,
 * loss rows written through a store whose INSERT waits `insertMs` for a
 * connection (the clock moves on meanwhile, as it does while a pool is busy).
 */
function slowHistory(insertMs: number): {
  clock: { now: number };
  rows: Row[];
  stored: LossStamp[];
  grant: (id: string, key: string) => void;
  stamps: LossStamps;
} {
  const clock = { now: 0 };
  const rows: Row[] = [];
  const stored: LossStamp[] = [];
  const stamps = new LossStamps(
    async (stamp) => {
      await Promise.resolve();
      clock.now += insertMs;
      stored.push(stamp);
    },
    (error) => {
      throw error;
    },
    () => clock.now,
  );
  const grant = (id: string, key: string): void => {
    rows.push({ id, key, proc: rows.length, started: clock.now, ended: Infinity });
  };
  return { clock, rows, stored, grant, stamps };
}

test('exclusion oracle: an abort told 50 ms after another holder was granted is reported as toldAfter, with its lag', async (t) => {
  const h = slowHistory(0);
  h.grant('A', 'k');
  h.clock.now += 10;
  h.grant('B', 'k');
  h.clock.now += 50;
  h.stamps.told('A', 'unreachable');
  await h.stamps.settled();
  const tally = tallyOverlaps(h.rows, h.stored);
  t.like(tally, { overlaps: 1, toldBefore: 0, toldAfter: 1, silent: 0, toldByRelease: 0, maxSignalLagMs: 50 });
});

test('exclusion oracle: an abort told in time but written 300 ms later (slow INSERT) is not late', async (t) => {
  const h = slowHistory(300);
  h.grant('A', 'k');
  h.clock.now += 10;
  h.stamps.told('A', 'unreachable');
  h.clock.now += 20;
  h.grant('B', 'k');
  h.grant('C', 'other');
  h.clock.now += 5;
  h.stamps.told('C', 'gone');
  await h.stamps.settled();
  t.true(h.clock.now >= 600, 'both INSERTs ran long after the events');
  t.deepEqual(
    h.stored.map((s) => [s.id, s.at]),
    [
      ['A', 10],
      ['C', 35],
    ],
    'stamped when told, not when written',
  );
  const tally = tallyOverlaps(h.rows, h.stored);
  t.like(tally, { overlaps: 1, toldBefore: 1, toldAfter: 0, silent: 0, maxSignalLagMs: 0 });
  t.is(tally.sample[0]?.lagMs, -20);
  // The earliest loss of a section counts, whatever order the rows come back in.
  const again = tallyOverlaps(h.rows, [{ id: 'A', kind: 'release', at: 900 }, ...h.stored]);
  t.like(again, { toldBefore: 1, toldAfter: 0, toldByRelease: 0 });
});

test('exclusion oracle: an untold earlier holder whose later one was told "taken" is counted as stamped out of order, not silent', (t) => {
  const row = (id: string, key: string, started: number, ended: number): Row => ({ id, key, proc: 0, started, ended });
  // g/h: h was granted first in truth (stamped late), lost its entry, g took the key, h was told 'taken'.
  // i/j: j told only by its failed release: that stays silent (a release may have deleted j's entry).
  const sections = [row('g', 'k1', 0, 100), row('h', 'k1', 10, 60), row('i', 'k2', 0, 100), row('j', 'k2', 10, 60)];
  const tally = tallyOverlaps(sections, [
    { id: 'h', kind: 'taken', at: 50 },
    { id: 'j', kind: 'release', at: 61 },
  ]);
  t.like(tally, { overlaps: 2, silent: 1, inverted: 1, toldAfter: 0, toldBefore: 0 });
  t.deepEqual(
    tally.sample.map((o) => [o.earlier, isInverted(o)]),
    [
      ['i', false],
      ['g', true],
    ],
  );
});

test('exclusion oracle: the sample shows the worst overlaps first (silent, then late), how long each lasted, and whether the later holder was told', (t) => {
  const row = (id: string, key: string, started: number, ended: number): Row => ({ id, key, proc: 0, started, ended });
  const sections = [
    row('a', 'k1', 0, 50),
    row('b', 'k1', 10, 20), // a/b: a told before b
    row('c', 'k2', 0, 40),
    row('d', 'k2', 30, 100), // c/d: c told 5 ms late
    row('e', 'k3', 0, 12),
    row('f', 'k3', 9, 30), // e/f: e never told, f told at its release
  ];
  const tally = tallyOverlaps(sections, [
    { id: 'a', kind: 'gone', at: 5 },
    { id: 'c', kind: 'unreachable', at: 35 },
    { id: 'f', kind: 'release', at: 31 },
  ]);
  t.deepEqual(
    tally.sample.map((o) => [o.earlier, o.toldBy, o.overlapMs, o.laterToldBy]),
    [
      ['e', undefined, 3, 'release'],
      ['c', 'unreachable', 10, undefined],
      ['a', 'gone', 10, undefined],
    ],
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
