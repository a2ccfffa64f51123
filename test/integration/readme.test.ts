/**
 * Every ```ts block of README.md compiles against the built package, in a
 * temp consumer project under the strict settings users run with:
 * `strict`, `exactOptionalPropertyTypes`, `noUncheckedIndexedAccess`,
 * `skipLibCheck: false`, module `nodenext`. Each block is its own module.
 * Names a block uses for the reader's own app (`db`, `mailer`, ...) are
 * declared in test/readme/app.d.ts (see the convention there); the settings
 * are never weakened and blocks need no casts.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { root, sh, tempDir, tscBin, writeFiles } from '../helpers/package.js';

interface Block {
  readonly line: number;
  readonly code: string;
}

/** The ```ts blocks of a markdown text, with the README line each starts on. */
function tsBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i] ?? '')) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end] ?? '')) end++;
    blocks.push({ line: start + 1, code: lines.slice(start, end).join('\n') });
    i = end;
  }
  return blocks;
}

const compilerOptions = {
  target: 'ES2022',
  module: 'nodenext',
  moduleResolution: 'nodenext',
  strict: true,
  exactOptionalPropertyTypes: true,
  noUncheckedIndexedAccess: true,
  skipLibCheck: false,
  noEmit: true,
  types: ['node'],
};

test('every ts code block of README.md compiles against the built package under strict settings', async (t) => {
  const blocks = tsBlocks(readFileSync(path.join(root, 'README.md'), 'utf8'));
  t.true(blocks.length >= 5, `found ${blocks.length} blocks`);
  const tmp = tempDir('readme');
  t.teardown(tmp.remove);
  const dir = tmp.dir;
  // node_modules: this package (as `memlock`, resolved through its exports to
  // dist/) and the repository's installed packages (typings, pg, ...).
  mkdirSync(path.join(dir, 'node_modules'));
  symlinkSync(root, path.join(dir, 'node_modules', 'memlock'), 'dir');
  for (const name of readdirSync(path.join(root, 'node_modules'))) {
    if (name.startsWith('.') || name === 'memlock') continue;
    symlinkSync(path.join(root, 'node_modules', name), path.join(dir, 'node_modules', name), 'dir');
  }
  copyFileSync(path.join(root, 'test', 'readme', 'app.d.ts'), path.join(dir, 'app.d.ts'));
  const files: Record<string, string> = {
    'package.json': JSON.stringify({ name: 'readme-consumer', private: true, type: 'module' }),
    'tsconfig.json': JSON.stringify({ compilerOptions, include: ['*.ts'] }),
  };
  for (const block of blocks) {
    // `export {}` makes a block without imports a module too (top-level await, own scope).
    files[`block-${block.line}.ts`] = `${block.code}\nexport {};\n`;
  }
  writeFiles(dir, files);
  const result = await sh(process.execPath, [tscBin, '-p', '.', '--pretty', 'false'], { cwd: dir }).then(
    () => '',
    (error: Error) => error.message,
  );
  // Name the README line of each failing block.
  const failing = [...result.matchAll(/^block-(\d+)\.ts\((\d+),\d+\): (error .*)$/gm)].map(
    ([, start, line, message]) => `README.md:${Number(start) + Number(line) - 1}: ${message}`,
  );
  t.deepEqual(failing, [], `failing README blocks:\n${failing.join('\n')}`);
  t.is(result, '', result);
});
