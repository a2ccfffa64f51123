// @ts-check
/**
 * Mutation testing (npm run test:mutation): StrykerJS mutates the library's
 * logic and runs the fast tier against each mutant through the command
 * runner (test/mutation/run.mjs picks the test files of the mutated source);
 * the TypeScript checker drops mutants that do not compile. Once per sandbox,
 * test/mutation/build.mjs compiles sources and tests to JavaScript, so each
 * mutant costs one ava start in worker threads, not a TypeScript loader per
 * file. Reports: reports/mutation/ (git-ignored). Not run in CI (about
 * 27 minutes on two idle cores with Node 24; see test/mutation/README.md).
 *
 * Left out, each for a reason the fast tier cannot change:
 * - the transport's socket code (connection, cluster, requests, servers,
 *   memjs-client): tested against real memcached, TLS and fault proxies;
 * - src/tasks/: needs PostgreSQL and RabbitMQ (test/tasks/);
 * - src/cli.ts: a process with argv, exit codes and a terminal (test/cli.test.ts);
 * - src/index.ts, src/client.ts: re-exports and types only.
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: 'command',
  commandRunner: { command: 'node test/mutation/run.mjs' },
  buildCommand: 'node test/mutation/build.mjs',
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.mutation.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  mutate: [
    'src/*.ts',
    '!src/index.ts',
    '!src/client.ts',
    '!src/cli.ts',
    'src/transport/hashring.ts',
    'src/transport/codec.ts',
    'src/transport/binary-codec.ts',
    'src/transport/meta-codec.ts',
  ],
  coverageAnalysis: 'off', // the command runner cannot map tests to mutants
  // Two TypeScript checkers and two test runners (four once checking is
  // done) on two cores: the checkers are about half of the CPU work.
  concurrency: 4,
  // A hanging test fails on ava's own 5 s timeout (ava.mutation.config.js);
  // this only catches a test command that cannot stop at all.
  timeoutMS: 8000,
  timeoutFactor: 1,
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/index.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
};
