// The fast tier as StrykerJS's command runner runs it (npm run test:mutation,
// test/mutation/run.mjs): the JavaScript test/mutation/build.mjs compiled into
// the sandbox's .mutation-build/, in worker threads (no TypeScript loader to
// start per file), stopping at the first failure (a killed mutant needs no
// more). The per-test timeout is short: these tests run on fake timers or
// finish in well under a second, so a mutant that hangs one fails it quickly
// instead of costing Stryker's own, much longer, timeout.
export default {
  files: [
    '.mutation-build/test/unit/**/*.test.js',
    // Real-time waits of seconds (the same suite as against memcached): its
    // behaviour is covered on fake timers by memlock.test and heartbeat.test.
    '!.mutation-build/test/unit/core-standin.test.js',
    // Compares its own TypeScript source with README.md (not library code).
    '!.mutation-build/test/unit/readme-testing.test.js',
  ],
  workerThreads: true,
  failFast: true,
  timeout: '5s',
};
