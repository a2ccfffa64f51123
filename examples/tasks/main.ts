/**
 * `npm run example:tasks -- [--verify [--quick]] [--race]`
 *
 * - no flag: runs a few chains end to end and prints them (the example).
 * - `--verify`: the fault verifier; prints one JSON line, exits 1 if any
 *   effect was lost or applied twice (or the run did not complete).
 *   `--quick`: the short form used by `npm test`. `--details` adds a second
 *   line with the fault and outcome counts. `--hold-after-ms N` turns on
 *   memlock's completed marker in the consumers.
 * - `--race`: naive publish-before-commit versus the outbox; prints one JSON line.
 */
import { quickVerify, runVerifier, verified } from './verify.js';
import { runRace } from './race.js';
import { runDemo } from './demo.js';

const argv = process.argv.slice(2);
const args = new Set(argv);
/** `--hold-after-ms N`: the consumers keep a completed marker in memcache for N ms (needs memlock's holdAfterMs). */
const holdIndex = argv.indexOf('--hold-after-ms');
const holdAfterMs = holdIndex >= 0 ? Number(argv[holdIndex + 1]) : 0;
if (!Number.isFinite(holdAfterMs) || holdAfterMs < 0)
  throw new RangeError('Expected `--hold-after-ms` to be a number of milliseconds >= 0');
const log = (line: string): void => void process.stderr.write(`${line}\n`);

if (args.has('--verify')) {
  const report = await runVerifier(args.has('--quick') ? { ...quickVerify, holdAfterMs, log } : { holdAfterMs, log });
  const { details, ...summary } = report;
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (args.has('--details')) process.stdout.write(`${JSON.stringify(details)}\n`);
  process.exitCode = verified(report) ? 0 : 1;
} else if (args.has('--race')) {
  const report = await runRace({ tasks: 200, log });
  process.stdout.write(`${JSON.stringify(report)}\n`);
} else {
  await runDemo(log);
}
