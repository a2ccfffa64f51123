// @ts-check
/**
 * Mutation testing (npm run test:mutation): StrykerJS mutates the library's
 * logic and runs the fast tier against each mutant through the command
 * runner (tools/mutation/run.mjs picks the test files of the mutated source);
 * a TypeScript checker drops mutants that do not compile. Once per sandbox,
 * tools/mutation/build.mjs compiles sources and tests to JavaScript, so each
 * mutant costs one Node.js process running plain JavaScript test files in
 * worker threads under an in-process stand-in for ava's API
 * (tools/mutation/ava-shim.mjs), not an ava start. The checker is our own
 * plugin (tools/mutation/ts-checker.mjs): the same type check as
 * @stryker-mutator/typescript-checker at a fifth of the CPU. Reports:
 * reports/mutation/ (git-ignored). See tools/mutation/README.md for times,
 * scores and what each piece is checked against.
 *
 * Left out, each for a reason the fast tier cannot change:
 * - the transport's socket code (connection, cluster, requests, servers,
 *   memjs-client): tested against real memcached, TLS and fault proxies;
 * - src/tasks/: needs PostgreSQL and RabbitMQ (test/tasks/);
 * - src/cli.ts: a process with argv, exit codes and a terminal (test/integration/cli.test.ts);
 * - src/index.ts, src/client.ts: re-exports and types only.
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: 'command',
  commandRunner: { command: 'node tools/mutation/run.mjs' },
  buildCommand: 'node tools/mutation/build.mjs',
  plugins: ['@stryker-mutator/*', './tools/mutation/ts-checker.mjs'],
  checkers: ['memlock-typescript'],
  tsconfigFile: 'tsconfig.mutation.json',
  mutate: [
    'src/*.ts',
    '!src/index.ts',
    '!src/client.ts',
    '!src/cli.ts',
    'src/transport/hashring.ts',
    'src/transport/codec.ts',
    'src/transport/binary-codec.ts',
    'src/transport/meta-codec.ts',
    'src/transport/text-codec.ts',
  ],
  coverageAnalysis: 'off', // the command runner cannot map tests to mutants
  // Four processes on two cores: checks are short, so runners get most of it.
  concurrency: 4,
  // run.mjs fails a hanging test itself (a per-test timeout, a drained event
  // loop, a per-file deadline for synchronous loops), so a hang is a kill it
  // reports. Stryker's own timeout is only a safety net, far above what a
  // run takes on a loaded machine: a surviving mutant must never be counted
  // as "Timeout" (detected) because two cores were busy.
  timeoutMS: 60_000,
  timeoutFactor: 1,
  // .ci/run runs this: a score over all mutated files below 80% fails it.
  thresholds: { high: 90, low: 80, break: 80 },
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/index.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  // Not copied into sandboxes: a stale local build (build.mjs makes a fresh
  // one in each sandbox) and scratch directories of the test suites.
  ignorePatterns: ['/.mutation-build', '/.tmp'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
};
