/**
 * The same-process waiter queue (src/local-waiters.ts) and what it buys through
 * the public API: same-process waiters take turns in arrival order and do not
 * poll memcache while a local holder has the key.
 */
import test from 'ava';
import { getEventListeners } from 'node:events';
import { LocalKey, UNKNOWN_POSITION } from '../../src/local-waiters.js';
import { MemcacheStandIn } from '../../src/testing.js';
import { fakeTime } from '../helpers/clock.js';

test('turn: the head with no local holder goes at once; others wait to be woken, in order', async (t) => {
  const local = new LocalKey<string>();
  t.true(local.idle);
  const a = local.join('c', 2);
  const b = local.join('c', 2);
  const c = local.join('c', 2);
  t.is(local.waiting, 3);
  t.false(local.idle);
  t.true(await local.turn(a, undefined, 1000));
  local.holders.add('lock-a');
  local.leave(a);
  const order: string[] = [];
  const tb = local.turn(b, undefined, Infinity).then((ok) => {
    order.push(`b:${ok}`);
  });
  const tc = local.turn(c, undefined, Infinity).then((ok) => {
    order.push(`c:${ok}`);
  });
  await Promise.resolve();
  t.deepEqual(order, []);
  local.holderDone('lock-a');
  await tb;
  t.deepEqual(order, ['b:true'], 'only the head is woken');
  local.leave(b);
  await tc;
  t.deepEqual(order, ['b:true', 'c:true']);
  local.leave(c);
  t.true(local.idle);
});

test.serial('turn with nap waits to be woken even at the head', async (t) => {
  const local = new LocalKey();
  const a = local.join('c', 2);
  const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout'] });
  const napping = local.turn(a, undefined, 50, true);
  await clock.tickAsync(49);
  let done: boolean | undefined;
  void napping.then((ok) => {
    done = ok;
  });
  await Promise.resolve();
  t.is(done, undefined);
  await clock.tickAsync(1);
  t.false(await napping, 'the nap timed out');
});

test.serial(
  'turn: times out with false; the caller’s signal rejects with its reason; listeners and timers are removed',
  async (t) => {
    const clock = fakeTime(t, { toFake: ['setTimeout', 'clearTimeout'] });
    const local = new LocalKey<string>();
    local.holders.add('x');
    const a = local.join('c', 2);
    const p = local.turn(a, undefined, 100);
    await clock.tickAsync(99);
    t.is(clock.countTimers(), 1);
    await clock.tickAsync(1);
    t.false(await p);
    t.is(clock.countTimers(), 0);
    const controller = new AbortController();
    const q = local.turn(a, controller.signal, 1000);
    controller.abort(new Error('stop'));
    await t.throwsAsync(q, { message: 'stop' });
    t.is(clock.countTimers(), 0, 'the timeout timer is cleared');
    const aborted = new AbortController();
    aborted.abort(new Error('before'));
    await t.throwsAsync(local.turn(a, aborted.signal, 1000), { message: 'before' });
    t.is(clock.countTimers(), 0);
  },
);

test('a turn allows local handoffs until its time bound or its handoff bound, whichever comes first', (t) => {
  const local = new LocalKey();
  const bounds = { maxMs: 5, maxHandoffs: 3 };
  t.false(local.takeTurnHandoff(0, bounds), 'no turn: no local handoff while others wait');
  local.startTurn(100);
  t.true(local.takeTurnHandoff(100, bounds));
  t.true(local.takeTurnHandoff(104.9, bounds));
  t.false(local.takeTurnHandoff(105, bounds), 'the time bound ends the turn');
  local.startTurn(200);
  t.is(local.turnHandoffs, 0, 'a new turn starts counting afresh');
  t.deepEqual(
    [1, 2, 3, 4].map(() => local.takeTurnHandoff(201, bounds)),
    [true, true, true, false],
    'the handoff bound ends the turn',
  );
  local.startTurn(300);
  local.endTurn();
  t.false(local.takeTurnHandoff(300, bounds), 'an ended turn allows nothing');
  local.startTurn(400);
  t.false(local.takeTurnHandoff(400, { maxMs: 0, maxHandoffs: 16 }), 'maxMs 0: strict handoffs');
  t.false(local.takeTurnHandoff(400, { maxMs: 5, maxHandoffs: 0 }), 'maxHandoffs 0: strict handoffs');
});

test('leave: leaving twice is harmless', (t) => {
  const local = new LocalKey();
  const tickets = Array.from({ length: 3 }, () => local.join('c', 2));
  for (const ticket of tickets) local.leave(ticket);
  t.is(local.waiting, 0);
  local.leave(tickets[0]!);
  t.is(local.waiting, 0);
});

test('same-process waiters run one at a time in arrival order, without polling memcache while they wait', async (t) => {
  const memcache = new MemcacheStandIn();
  const m = memcache.memlock();
  t.teardown(() => m.close());
  let inside = 0;
  let maxInside = 0;
  const order: number[] = [];
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      m.tryWithLock(
        'queue',
        `w${i}`,
        async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await new Promise((resolve) => setTimeout(resolve, 5));
          order.push(i);
          inside--;
        },
        { wait: { timeoutMs: 10_000 } },
      ),
    ),
  );
  t.is(maxInside, 1);
  t.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7], 'first come, first served');
  // One add, then each release hands the entry to the next waiter with one CAS
  // write: no refused attempt, no delete + add per handoff, no polling.
  t.is(memcache.ops.add, 1);
  t.is(memcache.ops.set, 7);
  t.is(memcache.ops.delete, 1);
});

test('idle only with no holder and no waiter; leave() removes exactly the ticket it is given', (t) => {
  const local = new LocalKey<string>();
  local.holders.add('x');
  t.false(local.idle, 'a holder keeps it busy');
  local.holders.delete('x');
  const a = local.join('c', 2);
  const b = local.join('c', 2);
  const c = local.join('c', 2);
  local.leave(b); // index 1
  t.is(local.waiting, 2);
  local.leave(b); // not queued any more: nobody else leaves
  t.is(local.waiting, 2);
  local.leave(c);
  local.leave(a);
  t.true(local.idle);
});

test('turn: an infinite timeout never times out; no abort listener is left on the caller’s signal', async (t) => {
  const local = new LocalKey<string>();
  local.holders.add('x');
  const ticket = local.join('c', 2);
  const controller = new AbortController();
  let settled = false;
  const waiting = local.turn(ticket, controller.signal, Infinity).then((ok) => {
    settled = true;
    return ok;
  });
  t.is(getEventListeners(controller.signal, 'abort').length, 1);
  await new Promise((resolve) => setTimeout(resolve, 30));
  t.false(settled, 'still waiting');
  local.holderDone('x');
  t.true(await waiting);
  t.is(getEventListeners(controller.signal, 'abort').length, 0);
  local.leave(ticket);
});

test('sawEntry: a new entry token re-estimates the handoff interval (EMA, a quarter step) and moves place 1 up to the head', (t) => {
  const local = new LocalKey();
  t.is(local.position, -1, 'not read yet: absent');
  t.is(local.cycleMs, 10, 'first guess');
  t.true(UNKNOWN_POSITION < 0 && (UNKNOWN_POSITION as number) !== -1, 'unknown is neither a place nor absent');
  local.sawEntry('a', 100, false);
  t.is(local.holderSince, 100);
  t.is(local.cycleMs, 10, 'the first token seen says nothing about intervals');
  local.sawEntry('a', 150, false);
  t.is(local.holderSince, 100, 'the same token: nothing changes');
  local.position = 1;
  local.sawEntry('b', 190, false);
  t.is(local.cycleMs, 10 + (190 - 100 - 10) / 4);
  t.is(local.holderSince, 190);
  t.is(local.position, 0, 'the head was served: we are the head now');
  local.sawEntry('c', 200, false);
  t.is(local.position, 0, 'a head stays the head when the key moves on unreserved');
  local.sawEntry('d', 210, true);
  t.is(
    local.position,
    UNKNOWN_POSITION,
    'reserved for someone else while we thought we were the head: our place is stale',
  );
  local.position = 3;
  local.sawEntry('e', 220, true);
  t.is(local.position, 3, 'further back: a handoff does not move us (the queue read does)');
  local.sawEntry(undefined, 230, false);
  t.is(local.holderSince, 230, 'the key became free: that is news too');
});

test('observe: moving up re-estimates the interval per place; reaching the first two places restarts the hold clock', (t) => {
  const local = new LocalKey();
  local.holderSince = 5;
  local.observe(4, 1000);
  t.is(local.position, 4);
  t.is(local.cycleMs, 10, 'from absent: no estimate');
  t.is(local.holderSince, 5, 'place 4 does not watch the entry');
  local.observe(2, 1400);
  t.is(local.cycleMs, 10 + ((1400 - 1000) / 2 - 10) / 4, '400 ms for 2 places');
  t.is(local.holderSince, 5);
  const cycle = local.cycleMs;
  local.observe(2, 1500);
  t.is(local.cycleMs, cycle, 'not moved: no estimate');
  local.observe(3, 1600);
  t.is(local.cycleMs, cycle, 'moved back (re-joined): no estimate');
  local.observe(1, 1700);
  t.is(local.holderSince, 1700, 'now among the first two: the hold in progress is news');
  t.is(local.cycleMs, cycle + ((1700 - 1600) / 2 - cycle) / 4);
  const again = local.cycleMs;
  local.observe(0, 1800);
  t.is(local.holderSince, 1700, 'from 1 to 0: we were watching already');
  t.is(local.cycleMs, again + ((1800 - 1700) / 1 - again) / 4);
  local.observe(-1, 1900);
  t.is(local.position, -1);
  t.is(local.cycleMs, again + ((1800 - 1700) / 1 - again) / 4, 'absent: no estimate');
  local.observe(1, 2000);
  t.is(local.holderSince, 2000, 'from absent to place 1: news');
  local.position = UNKNOWN_POSITION;
  local.observe(0, 2100);
  t.is(local.holderSince, 2100, 'from unknown to the head: news');
});

test('give: hands a grant to a ticket still waiting (and wakes it); a ticket that left gets nothing; a granted ticket’s turn comes at once', async (t) => {
  const local = new LocalKey<string, string>();
  local.holders.add('holder');
  const first = local.join('A', 5);
  const second = local.join('B', 5);
  let woken = false;
  const waiting = local.turn(second, undefined, Infinity, true).then((turn) => {
    woken = true;
    return turn;
  });
  t.true(local.give(second, 'entry'));
  t.is(second.granted, 'entry');
  t.true(await waiting);
  t.true(woken);
  t.true(await local.turn(second, undefined, 0, true), 'granted: its turn, nap or not, not at the head');
  local.leave(first);
  t.false(local.give(first, 'entry2'), 'it left');
  t.is(first.granted, undefined);
});
