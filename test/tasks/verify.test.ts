/**
 * The short form of the fault verifier (`npm run example:tasks -- --verify
 * --quick`): chained tasks through 4 consumer processes with duplicate
 * publishes, nack/requeue, killed connections, SIGKILLed consumers, a
 * memcached restart and a relay killed between confirm and marking sent.
 */
import test from 'ava';
import { quickVerify, runVerifier, verified } from '../../examples/tasks/verify.js';

test('every chained task takes effect exactly once under duplicates, redelivery, SIGKILLs, a memcached restart and relay crashes', async (t) => {
  t.timeout(55_000);
  const report = await runVerifier(quickVerify);
  t.log(JSON.stringify(report));
  t.is(report.lost, 0, 'no effect lost');
  t.is(report.applied_twice, 0, 'no effect applied twice');
  t.is(report.effects, report.tasks);
  t.is(report.chains_completed, quickVerify.chains, 'every chain completed');
  t.is(report.details.permanently_failed, 0);
  t.true(report.details.completed, 'the run drained within its deadline');
  t.true(verified(report));
  // The faults really happened, and both guards really stopped copies.
  t.is(report.details.memcached_restarts, 1);
  t.true(report.details.consumer_sigkills + report.details.consumer_self_kills >= 1, 'consumers were killed');
  t.true(report.details.connection_kills >= 1, 'connections were killed');
  t.true(report.details.relay_kills >= 1, 'the relay was killed between confirm and marking sent');
  t.true(report.details.published_copies > report.tasks, 'messages were duplicated');
  t.true(report.stopped_by_memlock > 0, 'memlock stopped concurrent copies');
  t.true(report.stopped_by_sequence > 0, 'the sequence check stopped late copies');
});
