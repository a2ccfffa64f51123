#!/usr/bin/env node
/**
 * StrykerJS's buildCommand (stryker.config.mjs): compiles the instrumented
 * sources and the fast tier to JavaScript once per sandbox, into
 * `.mutation-build/` (same layout, so relative imports hold). Each mutant's
 * test command then runs plain JavaScript in ava worker threads instead of
 * transpiling TypeScript in a fresh child process per test file: about 40%
 * less CPU per mutant, which is most of what a run costs on two cores.
 * esbuild only strips types; the TypeScript checker (a separate Stryker
 * plugin) still type-checks every mutant.
 */
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';

const OUT = '.mutation-build';
const walk = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return walk(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [path] : [];
  });

rmSync(OUT, { recursive: true, force: true });
await build({
  entryPoints: [...walk('src'), ...walk('test/unit'), ...walk('test/helpers'), ...walk('test/faults/lib')],
  outdir: OUT,
  outbase: '.',
  format: 'esm',
  platform: 'node',
  target: 'node20',
  logLevel: 'warning',
});

// The compiled tests import `ava`; inside .mutation-build/ that resolves to
// the in-process shim (tools/mutation/ava-shim.mjs says why), everything else
// to the project's node_modules.
mkdirSync(`${OUT}/node_modules/ava`, { recursive: true });
writeFileSync(
  `${OUT}/node_modules/ava/package.json`,
  JSON.stringify({ name: 'ava', type: 'module', exports: './index.mjs' }),
);
copyFileSync('tools/mutation/ava-shim.mjs', `${OUT}/node_modules/ava/index.mjs`);
