// The server tiers (`npm run test:servers`): every test file of package.json's
// ava config except test/unit, which `npm test` runs first, on its own
// (ava.unit.config.js), so a broken build fails in seconds and the fast tier
// runs once. The suites named *.protocols.test.ts run again over the meta
// protocol (`npm run test:meta`, see test/helpers/protocol.ts).
import pkg from './package.json' with { type: 'json' };

export default {
  ...pkg.ava,
  files: [...pkg.ava.files, '!test/unit/**'],
};
