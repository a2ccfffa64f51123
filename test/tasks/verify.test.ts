/**
 * The short form of the fault verifier (`npm run example:tasks -- --verify
 * --quick`): chained tasks through 4 consumer processes with duplicate
 * publishes, nack/requeue, killed connections, SIGKILLed consumers, a
 * memcached restart and a relay killed between confirm and marking sent.
 */
import test from 'ava';
import { createEffectsTable } from '../../examples/tasks/chain.js';
import { countEffects, quickVerify, runVerifier, verdict, verified } from '../../examples/tasks/verify.js';
import { migrate } from '../../src/tasks/schema.js';
import { testPool, uniqueName } from './helpers.js';

test.serial(
  'every chained task takes effect exactly once under duplicates, redelivery, SIGKILLs, a memcached restart and relay crashes',
  async (t) => {
    // Its own deadline first (a timed-out run reports itself), then ava's.
    t.timeout(quickVerify.timeoutMs + 30_000);
    const report = await runVerifier(quickVerify);
    t.log(JSON.stringify(report));
    t.false(report.timed_out, 'the run drained within its deadline (a loaded machine: rerun)');
    t.is(report.lost, 0, 'no effect lost');
    t.is(report.applied_twice, 0, 'no effect applied twice');
    t.is(report.effects, report.tasks);
    t.is(report.chains_completed, quickVerify.chains, 'every chain completed');
    t.is(report.details.permanently_failed, 0);
    t.true(report.details.completed, 'the run drained within its deadline');
    t.is(report.applied, report.tasks);
    t.is(report.unfinished, 0);
    t.true(verified(report));
    // The faults really happened, and both guards really stopped copies.
    t.is(report.details.memcached_restarts, 1);
    t.true(report.details.consumer_sigkills + report.details.consumer_self_kills >= 1, 'consumers were killed');
    t.true(report.details.connection_kills >= 1, 'connections were killed');
    t.true(report.details.relay_kills >= 1, 'the relay was killed between confirm and marking sent');
    t.true(report.details.published_copies > report.tasks, 'messages were duplicated');
    t.true(report.stopped_by_memlock > 0, 'memlock stopped concurrent copies');
    t.true(report.stopped_by_sequence > 0, 'the sequence check stopped late copies');
  },
);

test.serial(
  'a run that runs out of time says so: timed_out, applied of tasks, the rest unfinished, not lost',
  async (t) => {
    // 2 s from the first publish: a chain of 4 steps cannot finish and drain
    // (the drain alone waits 1.5 s of quiet after the last late copy).
    const report = await runVerifier({ ...quickVerify, timeoutMs: 2000 });
    t.log(JSON.stringify(report));
    t.true(report.timed_out);
    t.false(report.details.completed);
    t.true(report.applied < report.tasks);
    t.is(report.lost, 0, 'unfinished work is not lost work');
    t.is(report.unfinished, report.tasks - report.applied);
    t.is(report.applied_twice, 0);
    t.false(verified(report));
    t.is(verdict(report), 'timed_out');
  },
);

test('lost means lost: a step its chain moved past without an effect; a step not reached yet is unfinished', async (t) => {
  const pool = testPool(2);
  const schema = uniqueName();
  t.teardown(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await pool.end();
  });
  await migrate(pool, schema);
  await createEffectsTable(pool, schema);
  // 4 chains of 3 steps. chain-0: done; chain-1: at step 2 (steps 0 and 1
  // applied); chain-2: seq 2 but step 1's effect is missing (lost), step 0
  // applied twice; chain-3: never started (no entity row yet).
  await pool.query(
    `INSERT INTO "${schema}".entities (id, seq, scheduled) VALUES ('chain-0', 3, 3), ('chain-1', 2, 3), ('chain-2', 2, 3)`,
  );
  const effects: Array<[string, number]> = [
    ['chain-0', 0],
    ['chain-0', 1],
    ['chain-0', 2],
    ['chain-1', 0],
    ['chain-1', 1],
    ['chain-2', 0],
    ['chain-2', 0],
  ];
  for (const [entity, step] of effects)
    await pool.query(`INSERT INTO "${schema}".effects (entity_id, step, seq) VALUES ($1, $2, $3)`, [
      entity,
      step,
      step + 1,
    ]);
  const counts = await countEffects(pool, schema, 4, 3);
  t.deepEqual(counts, { effects: 7, applied: 6, lost: 1, twice: 1, completed: 1, failed: 0 });
  t.is(4 * 3 - counts.applied - counts.lost, 5, 'unfinished: chain-1 step 2, chain-2 step 2, chain-3 steps 0-2');
});
