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
 * never higher. The tests run as JavaScript compiled into the sandbox by
 * test/mutation/build.mjs (Stryker's buildCommand); ava.mutation.config.js
 * says which fast-tier files are left out of mutation runs and why.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import process from 'node:process';

const unit = (...names) => names.map((name) => `.mutation-build/test/unit/${name}.test.js`);

/**
 * Source file (relative to src/) -> stages of fast-tier files: the first
 * stage holds the files written for that source (most mutants die there);
 * the next runs only when the mutant survived it.
 */
const testsFor = {
  'errors.ts': [unit('small-modules'), unit('memlock', 'diagnostics')],
  'keys.ts': [unit('small-modules')],
  'diagnostics.ts': [unit('diagnostics', 'small-modules'), unit('memlock')],
  'options.ts': [unit('small-modules'), unit('memlock')],
  'heartbeat.ts': [unit('heartbeat')],
  'local-queue.ts': [unit('local-queue'), unit('waiting', 'memlock')],
  'protocol.ts': [unit('protocol'), unit('heartbeat', 'memlock')],
  'lock.ts': [unit('lock'), unit('heartbeat', 'memlock')],
  'memlock.ts': [unit('memlock', 'waiting'), unit('contested', 'lock', 'local-queue', 'heartbeat')],
  'waiter-queue.ts': [unit('waiter-queue'), unit('waiting', 'memlock')],
  'testing.ts': [unit('testing'), unit('protocol', 'memlock')],
  'transport/hashring.ts': [unit('hashring')],
  'transport/codec.ts': [unit('codecs')],
  'transport/binary-codec.ts': [unit('codecs')],
  'transport/meta-codec.ts': [unit('codecs')],
};

// No file names: ava.mutation.config.js's list (the whole compiled fast tier).
let stages = [[]];
const id = process.env.__STRYKER_ACTIVE_MUTANT__;
if (id !== undefined && id !== '') {
  const call = new RegExp(`stryMutAct_9fa48\\((["'])${id}\\1\\)`);
  for (const name of readdirSync('src', { recursive: true })) {
    if (!name.endsWith('.ts')) continue;
    if (call.test(readFileSync(`src/${name}`, 'utf8'))) {
      stages = testsFor[name] ?? stages;
      break;
    }
  }
}
// Node 22.1+ caches compiled code across the thousands of ava starts (older Nodes ignore it).
const env = { ...process.env, NODE_COMPILE_CACHE: '.mutation-build/.compile-cache' };
for (const files of stages) {
  const ava = spawnSync(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', '--config', 'ava.mutation.config.js', ...files], { stdio: 'inherit', env });
  if (ava.status !== 0) process.exit(ava.status ?? 1);
}
