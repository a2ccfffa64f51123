// @ts-check
/**
 * Mutation testing (npm run test:mutation): StrykerJS mutates src/ and runs
 * the fast tier (test/unit, ava.mutation.config.js: fail-fast) against each
 * mutant through the command runner; the TypeScript checker drops mutants
 * that do not compile. The transport's socket code is left out: the fast
 * tier does not open sockets (test/transport*.test.ts cover it against real
 * servers). Reports go to reports/mutation/ (git-ignored). Not run in CI.
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: 'command',
  commandRunner: { command: 'node test/mutation/run.mjs' },
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  mutate: [
    'src/**/*.ts',
    '!src/index.ts', // re-exports only
    '!src/memjs-adapter.ts', // transport socket code
    '!src/transport/**', // transport socket code (the transport rewrite)
  ],
  coverageAnalysis: 'off', // the command runner cannot map tests to mutants
  concurrency: 3, // one TypeScript checker and two test runners
  timeoutMS: 10_000,
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/index.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
};
