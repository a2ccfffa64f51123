/**
 * `npm run example:tasks -- [--verify [--quick]] [--race]`
 *
 * - no flag: runs a few chains end to end and prints them (the example).
 * - `--verify`: the fault verifier; prints one JSON line, exits 1 if any
 *   effect was lost or applied twice (or a task failed for good), 2 if it
 *   ran out of time without seeing either (`"timed_out":true`, `applied` of
 *   `tasks`, the rest `unfinished`: inconclusive, not lost), 0 if verified.
 *   `--quick`: the short form used by `npm test`. `--details` adds a second
 *   line with the fault and outcome counts. `--hold-after-ms N` turns on
 *   memlock's completed marker in the consumers. `--timeout-s N` gives up
 *   after N s in all (default 600, `--quick` 150); a run with no progress
 *   for 30 s (`--quick` 20 s) gives up sooner.
 * - `--race`: naive publish-before-commit versus the outbox; prints one JSON line.
 */
import { quickVerify, runVerifier, verdict, type VerifyOptions } from './verify.js';
import { runRace } from './race.js';
import { runDemo } from './demo.js';

const argv = process.argv.slice(2);
const args = new Set(argv);
/** The number after `flag`, if given: a finite number >= 0. */
function numberFlag(flag: string, unit: string): number | undefined {
  const index = argv.indexOf(flag);
  if (index < 0) return undefined;
  const value = Number(argv[index + 1]);
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`Expected \`${flag}\` to be a number of ${unit} >= 0`);
  return value;
}
/** `--hold-after-ms N`: the consumers keep a completed marker in memcache for N ms (needs memlock's holdAfterMs). */
const holdAfterMs = numberFlag('--hold-after-ms', 'milliseconds') ?? 0;
const timeoutS = numberFlag('--timeout-s', 'seconds');
const log = (line: string): void => void process.stderr.write(`${line}\n`);

if (args.has('--verify')) {
  const options: VerifyOptions = {
    ...(args.has('--quick') ? quickVerify : {}),
    ...(timeoutS === undefined ? {} : { timeoutMs: timeoutS * 1000 }),
    holdAfterMs,
    log,
  };
  const report = await runVerifier(options);
  const { details, ...summary } = report;
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (args.has('--details')) process.stdout.write(`${JSON.stringify(details)}\n`);
  const outcome = verdict(report);
  if (outcome === 'timed_out')
    log(`timed out: ${report.applied}/${report.tasks} applied, none lost or applied twice so far; try --timeout-s`);
  process.exitCode = { verified: 0, violated: 1, timed_out: 2 }[outcome];
} else if (args.has('--race')) {
  const report = await runRace({ tasks: 200, log });
  process.stdout.write(`${JSON.stringify(report)}\n`);
} else {
  await runDemo(log);
}
