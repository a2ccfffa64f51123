// The fast tier (`npm run test:unit`): test/unit only, no memcached,
// PostgreSQL or Redis. `npm test` runs these files too, once, with the rest
// (package.json's ava config).
export default {
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  files: ['test/unit/**/*.test.ts'],
  timeout: '30s',
  workerThreads: false,
};
