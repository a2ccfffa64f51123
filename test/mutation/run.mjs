#!/usr/bin/env node
/**
 * StrykerJS's command (stryker.config.mjs): runs the fast-tier files that
 * exercise the source file of the active mutant, so a mutation run fits in
 * minutes instead of re-running every file per mutant. Stryker names the
 * active mutant in `__STRYKER_ACTIVE_MUTANT__` and the instrumented sources
 * in the sandbox call `stryMutAct_9fa48("<id>")` where each mutant sits; the
 * file holding that call picks the tests below. Without an active mutant
 * (Stryker's dry run) every file of the fast tier runs.
 *
 * The selection only ever leaves tests out, so it can make the score lower,
 * never higher. test/unit/core-standin.test.ts (real-time waits of seconds,
 * the same suite as against memcached) is left out; the behaviour it checks
 * is covered on fake timers by memlock.test.ts and heartbeat.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import process from 'node:process';

const unit = (...names) => names.map((name) => `test/unit/${name}.test.ts`);

/** Source file -> fast-tier files that exercise it. */
const testsFor = {
  'errors.ts': unit('small-modules', 'memlock'),
  'keys.ts': unit('small-modules'),
  'diagnostics.ts': unit('small-modules', 'memlock'),
  'options.ts': unit('small-modules', 'memlock'),
  'heartbeat.ts': unit('heartbeat'),
  'hashring.ts': unit('hashring'),
  'local-queue.ts': unit('local-queue', 'memlock'),
  'protocol.ts': unit('protocol', 'heartbeat', 'memlock'),
  'lock.ts': unit('lock', 'heartbeat', 'memlock'),
  'memlock.ts': unit('memlock', 'lock', 'local-queue', 'heartbeat'),
  'waiter-queue.ts': unit('waiter-queue', 'memlock', 'local-queue'),
  'testing.ts': unit('testing', 'protocol'),
};

const all = ['test/unit/**/*.test.ts', '!test/unit/core-standin.test.ts'];
let stages = [all];
const id = process.env.__STRYKER_ACTIVE_MUTANT__;
if (id !== undefined && id !== '') {
  const call = new RegExp(`stryMutAct_9fa48\\((["'])${id}\\1\\)`);
  for (const name of readdirSync('src')) {
    if (!name.endsWith('.ts')) continue;
    if (call.test(readFileSync(`src/${name}`, 'utf8'))) {
      const [first, ...rest] = testsFor[name] ?? all;
      // The file written for this source first: most mutants die there, and
      // the others only run when it survives.
      stages = rest.length === 0 ? [[first]] : [[first], rest];
      break;
    }
  }
}
for (const files of stages) {
  const ava = spawnSync(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', '--config', 'ava.mutation.config.js', ...files], { stdio: 'inherit' });
  if (ava.status !== 0) process.exit(ava.status ?? 1);
}
