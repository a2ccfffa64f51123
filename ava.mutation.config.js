// The fast tier as StrykerJS's command runner runs it (npm run test:mutation):
// same files as ava.unit.config.js, but stop at the first failure (a killed
// mutant needs no more).
import unit from './ava.unit.config.js';

export default {
  ...unit,
  failFast: true,
  timeout: '20s',
};
