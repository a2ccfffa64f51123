// The fast tier (`npm run test:unit`): test/unit only, no memcached,
// PostgreSQL or Redis. `npm test` runs it first and the server tiers after
// (ava.servers.config.js), so every file runs once.
export default {
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  files: ['test/unit/**/*.test.ts'],
  timeout: '30s',
  workerThreads: false,
};
