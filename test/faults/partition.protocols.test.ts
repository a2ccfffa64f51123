/**
 * Scenario 1: a partition while a lock is held. The holder reaches memcached
 * through the fault proxy; the other client connects directly. Each run owns
 * its memcached; both modes run side by side in `before`, the tests assert on
 * their figures (and log a `figures:` line that test/faults/repeat.sh adds up).
 */
import test from 'ava';
import { startMemcached, type MemcachedProcess } from '../helpers/memcached.js';
import { runPartition, type PartitionFigures, type PartitionMode } from './lib/partition.js';
import { trackUnhandled } from '../helpers/unhandled.js';
import { leaseTtlSeconds } from '../../src/protocol.js';

const unhandled = trackUnhandled();

const leaseMs = 3000;
const heartbeatMs = 500;
const timeoutMs = 200;
/** A timer callback runs a little after its due time; a loaded machine makes that worse. */
const TIMER_SLACK_MS = 100;

const modes = ['stall', 'refuse-drop'] as const satisfies readonly PartitionMode[];
const figures = new Map<PartitionMode, PartitionFigures>();
const servers: MemcachedProcess[] = [];

test.before(async () => {
  await Promise.all(
    modes.map(async (mode) => {
      const mc = await startMemcached();
      servers.push(mc);
      figures.set(mode, await runPartition(mc, { mode, leaseMs, heartbeatMs, timeoutMs }));
    }),
  );
});
test.after.always(async () => {
  await Promise.all(servers.map((mc) => mc.stop()));
});

for (const mode of modes) {
  test(`partition while held (${mode}): the holder aborts before the other client can take over, the healed holder leaves the new holder alone`, (t) => {
    const f = figures.get(mode)!;
    t.log(
      `${mode}: aborted ${f.abortAfterMs.toFixed(0)} ms after the partition (${f.kind}), margin to the lease deadline ${f.marginMs.toFixed(1)} ms (strict ${f.strictMarginMs.toFixed(2)} ms); ` +
        `B took over ${f.takeoverAfterMs.toFixed(0)} ms after the partition, ${f.gapMs.toFixed(0)} ms after A's abort; ` +
        `A after the loss: ${f.renewalsAfterLoss} renewals, ${f.deletesAfterLoss} deletes, ${f.appliedAfterLoss} applied`,
    );
    t.log(figuresLine(mode, f));
    t.true(f.kind === 'unreachable' || f.kind === 'deadline', `kind ${f.kind}`);
    if (f.kind === 'unreachable') t.true(f.causeIsUnavailable, 'cause is the MemcacheUnavailableError');
    t.true(f.abortAfterMs >= 0, 'not before the partition');
    // Within a timer tick of the deadline (see the strict test below).
    t.true(f.marginMs >= -TIMER_SLACK_MS, `aborted ${(-f.marginMs).toFixed(1)} ms after the lease deadline`);
    // The other client gets the key once the entry expired (about one TTL after A's last write), never before A knew.
    t.true(f.gapMs >= 0, 'B acquired only after A had been told');
    t.true(
      f.takeoverAfterMs <= leaseTtlSeconds(leaseMs) * 1000 + heartbeatMs + 1500,
      `B waited ${f.takeoverAfterMs.toFixed(0)} ms`,
    );
    // After healing: no renewal, nothing applied, B's entry untouched.
    t.is(f.renewalsAfterLoss, 0, 'the heartbeat stopped at the loss');
    t.is(f.appliedAfterLoss, 0, 'no write or delete of the old holder was applied');
    t.false(f.released, 'release reports that nothing of ours was deleted');
    t.true(f.newHolderIntact, "B's entry keeps B's value and CAS");
  });

  // Found by this suite: the loss used to be scheduled AT sentAt + (n - 1) s, and
  // a timer never fires early, so the signal aborted a little AFTER the lease
  // deadline. leaseDeadline() now keeps a margin (leaseMargin()) before it.
  test(`partition while held (${mode}): the signal aborts no later than last confirmed send + (ceil(lease/1000) - 1) s`, (t) => {
    const f = figures.get(mode)!;
    t.true(f.strictMarginMs >= 0, `aborted ${(-f.strictMarginMs).toFixed(3)} ms after the lease deadline`);
  });
}

/**
 * The counts test/faults/repeat.sh adds up over runs, as one greppable line:
 * toldAfter = B acquired before A's signal aborted (0 or 1), silent = B
 * acquired and A's signal never aborted (0 or 1).
 */
function figuresLine(mode: PartitionMode, f: PartitionFigures): string {
  const bAcquired = !Number.isNaN(f.takeoverAfterMs);
  const told = !Number.isNaN(f.abortAfterMs);
  return (
    `figures: scenario=partition mode=${mode} takeovers=${bAcquired ? 1 : 0} ` +
    `toldAfter=${bAcquired && told && f.gapMs < 0 ? 1 : 0} silent=${bAcquired && !told ? 1 : 0} gapMs=${f.gapMs.toFixed(1)}`
  );
}

test('no unhandled rejection or uncaught exception', (t) => {
  t.deepEqual(unhandled, []);
});
