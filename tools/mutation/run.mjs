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
 * tools/mutation/build.mjs (Stryker's buildCommand), each file in a worker
 * thread of its own under tools/mutation/ava-shim.mjs (ava's API, without
 * ava's start-up cost). Stages run in order, stopping at the first failure.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import process from 'node:process';
import { clearTimeout, setTimeout } from 'node:timers';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

/**
 * Longest a test file may go without starting a test (each test has
 * TEST_TIMEOUT_MS, 10 s, in ava-shim.mjs); the variable is for the runner's
 * own tests (tools/mutation/runner.test.ts).
 */
const FILE_DEADLINE_MS = Number(process.env.MEMLOCK_MUTATION_FILE_DEADLINE_MS ?? 15_000);

// Captured before a test file installs fake timers.
const realSetImmediate = globalThis.setImmediate;

const unit = (...names) => names.map((name) => `.mutation-build/test/unit/${name}.test.js`);

/**
 * Source file (relative to src/) -> stages of fast-tier files: the first
 * stage holds the files written for that source (most mutants die there);
 * the next runs only when the mutant survived it.
 */
const testsFor = {
  'abort-listeners.ts': [unit('abort-listeners'), unit('lock', 'memlock')],
  'errors.ts': [unit('small-modules'), unit('memlock', 'diagnostics')],
  'keys.ts': [unit('small-modules')],
  'diagnostics.ts': [unit('diagnostics', 'small-modules'), unit('memlock')],
  'options.ts': [unit('small-modules'), unit('memlock')],
  'scheduler.ts': [unit('scheduler', 'scheduler-scale')],
  'local-waiters.ts': [unit('local-waiters'), unit('waiting', 'memlock')],
  'protocol.ts': [unit('protocol'), unit('scheduler', 'memlock')],
  'lock.ts': [unit('lock'), unit('scheduler', 'memlock', 'scheduler-scale')],
  'memlock.ts': [unit('memlock', 'waiting'), unit('contested', 'lock', 'local-waiters', 'scheduler')],
  'waiting.ts': [unit('waiting', 'memlock'), unit('contested', 'lock', 'local-waiters', 'fleet-queue')],
  'pacing.ts': [unit('pacing'), unit('waiting')],
  'signals.ts': [unit('abort-listeners', 'memlock'), unit('waiting', 'local-waiters')],
  'fleet-queue.ts': [unit('fleet-queue'), unit('waiting', 'memlock')],
  'testing.ts': [unit('testing'), unit('protocol', 'memlock')],
  'transport/hashring.ts': [unit('hashring')],
  'transport/codec.ts': [unit('codecs')],
  'transport/binary-codec.ts': [unit('codecs')],
  'transport/meta-codec.ts': [unit('codecs')],
  'transport/text-codec.ts': [unit('text-codec')],
};

// Without an active mutant (Stryker's dry run): the whole fast tier, less
// three files. core-standin.test waits seconds of real time (the same
// behaviour is covered on fake timers by memlock.test and scheduler.test);
// readme-testing.test compares its own TypeScript source with docs/testing.md;
// mutation-runner.test tests this runner (from the checkout, not a sandbox).
const LEFT_OUT = new Set(['core-standin', 'readme-testing', 'mutation-runner']);
const all = readdirSync('.mutation-build/test/unit')
  .filter((name) => name.endsWith('.test.js') && !LEFT_OUT.has(name.slice(0, -'.test.js'.length)))
  .map((name) => `.mutation-build/test/unit/${name}`);

if (isMainThread) {
  // By hand: `node tools/mutation/run.mjs memlock waiting` runs those files.
  let stages = process.argv.length > 2 ? [unit(...process.argv.slice(2))] : [all];
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
  // One worker thread per file, one after another, stopping at the first
  // failure (ava's workerThreads and failFast); the exit code is Stryker's verdict.
  for (const file of stages.flat()) {
    const failure = await runFile(file);
    if (failure !== undefined) {
      process.stderr.write(`${file}: ${failure}\n`);
      process.exit(1);
    }
  }
  process.exit(0);
} else {
  await runInWorker(workerData.file);
}

/**
 * Runs one test file in a fresh worker; resolves to a failure text or
 * undefined. A worker that exits without a result had a test pending with
 * nothing left to run (ava: "Promise returned by test never resolved"); one
 * that starts no test for FILE_DEADLINE_MS is stuck in synchronous code (an
 * infinite loop), where its own per-test timer cannot fire. Both are failures, so
 * Stryker's own timeout (stryker.config.mjs) stays a safety net that a
 * merely slow run on a loaded machine never reaches.
 */
function runFile(file) {
  return new Promise((resolve) => {
    const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { file } });
    let result = 'the worker exited with a test pending and nothing left to run';
    // Restarted whenever a test starts: only a file that stops making progress
    // (a loop in synchronous code, where its per-test timer cannot fire) hits it.
    let deadline;
    const arm = () => {
      clearTimeout(deadline);
      deadline = setTimeout(() => {
        result = `no progress for ${FILE_DEADLINE_MS} ms (stuck in synchronous code)`;
        void worker.terminate();
      }, FILE_DEADLINE_MS);
    };
    arm();
    worker.on('message', (message) => {
      if (message?.started !== undefined) {
        arm();
        return;
      }
      result = message;
      // The tests are done: whatever handles a mutant left open must not keep us waiting.
      void worker.terminate();
    });
    worker.on('error', (error) => {
      result = `worker error: ${error?.stack ?? String(error)}`;
    });
    worker.on('exit', () => {
      clearTimeout(deadline);
      resolve(result ?? undefined);
    });
  });
}

/** Worker side: the shim stands in for ava (build.mjs installs it as `ava`). */
async function runInWorker(file) {
  // As ava's worker: an uncaught exception fails the file at once; a
  // rejection fails it if it is still unhandled once every test has run.
  const uncaught = [];
  const unhandled = new Map();
  process.on('uncaughtException', (error) => uncaught.push(error));
  process.on('unhandledRejection', (reason, promise) => unhandled.set(promise, reason));
  process.on('rejectionHandled', (promise) => unhandled.delete(promise));
  const shim = await import(pathToFileURL(resolve('.mutation-build/node_modules/ava/index.mjs')).href);
  let failed;
  try {
    await import(pathToFileURL(resolve(file)).href);
  } catch (error) {
    failed = { title: 'loading the file', error };
  }
  failed ??= await shim.runRegistered(uncaught, (title) => parentPort.postMessage({ started: title }));
  // Node reports unhandled rejections once the microtask queue drains.
  await new Promise((done) => realSetImmediate(done));
  if (failed === undefined && uncaught.length > 0) failed = { title: 'uncaught exception', error: uncaught[0] };
  if (failed === undefined && unhandled.size > 0)
    failed = { title: 'unhandled rejection', error: [...unhandled.values()][0] };
  parentPort.postMessage(
    failed === undefined ? null : `${failed.title}: ${failed.error?.stack ?? String(failed.error)}`,
  );
}
