/**
 * The type tests in test/types/ compile under the strict settings users run
 * with (see test/types/tsconfig.json). expect-type assertions are compile-time:
 * a wrong public type makes `tsc` fail, which fails this test.
 */
import test from 'ava';
import path from 'node:path';
import { root, sh, tscBin } from '../helpers/package.js';

test('public API types (test/types/*.ts, against the built package) compile under strict, exactOptionalPropertyTypes, noUncheckedIndexedAccess', async (t) => {
  const { stdout } = await sh(process.execPath, [tscBin, '-p', path.join(root, 'test', 'types')], { cwd: root });
  t.is(stdout.trim(), '');
});
